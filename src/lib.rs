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

pub mod assets;
pub mod audience;
pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dispatch;
pub mod glob;
pub mod http;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod proxy;
pub mod pubsub;
pub mod rate;
pub mod reload;
pub mod router;
pub mod session;
pub mod state;
pub mod systemd;
pub mod template;
pub mod wsframe;
