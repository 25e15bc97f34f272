//! redis-ws-bridge: Redis pub/sub in, WebSocket frames out, routed and authorised by one YAML
//! file.
//!
//! The flow of a message: [`pubsub`] receives it from Redis and hands it to [`dispatch`],
//! which asks [`router`] (pure) for each matching route's topics, audience and frame, looks
//! the recipients up in [`hub`], checks each against the audience ([`audience`], pure) and
//! queues the frame, encoded once ([`wsframe`]), into each recipient's [`outbox`], which
//! writes it to the socket at once when it can; each connection's [`session`] reads its
//! client's frames and writes what a full socket held back. [`http`] accepts connections and serves the
//! endpoints; [`config`] turns the routing file into validated, compiled values (templates
//! in [`template`]) before anything else sees it. ARCHITECTURE.md has the whole map and the
//! invariants.

// What the binary runs.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod logging;

// The pure layers the fuzz targets drive directly.
pub mod audience;
pub mod auth;
pub mod deflate;
pub mod glob;
pub mod protocol;
pub mod template;
pub mod wsframe;

// The daemon's insides.
mod assets;
mod dispatch;
mod history;
mod http;
mod hub;
mod inbound;
mod metrics;
mod outbox;
mod presence;
mod proxy;
mod pubsub;
mod rate;
mod reload;
mod router;
mod session;
mod state;
mod systemd;
