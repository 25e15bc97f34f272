//! End-to-end tests: a real `redis-server`, the real `redis-ws-bridge` binary, real
//! WebSocket clients. One test binary (modules below) keeps link time low.
//!
//! - `cli`: `check`, `--version`, start-up errors with file:line:column.
//! - `routing`: routes, topics, formats, templates, audiences of delivery, filters, dedupe.
//! - `protocol`: the client protocol: commands, errors, limits, pings, idle timeout.
//! - `resilience`: slow clients, Redis outages, graceful shutdown.
//! - `auth`: credentials refused before the upgrade, the audience leak matrix, subscribe
//!   authorization, token expiry and refresh, the welcome template, the client rate limit,
//!   credentials kept out of logs.
//! - `admin`: `/ws/stats` and `/api/publish`: who may use them, what they answer.
//! - `reload`: live reload: triggers, validation, the lossless switch, Redis subscriptions by
//!   difference, `route_removed`, limits.
//! - `ops`: systemd notifications, `/metrics` through the Prometheus parser, trusted proxies.
//! - `nginx`: wss through a real nginx running the shipped site file; three bridges balanced
//!   by it (least_conn) sharing one Redis, every log line naming its instance.
//! - `monitoring`: the Prometheus alert rules (promtool, then a real Prometheus scraping a
//!   real bridge) and the Grafana dashboard's queries against the metrics exported.
//! - `packaging`: the systemd unit (systemd-analyze) and the Debian package.
//! - `cluster`: a 3-master Redis Cluster, plain and over TLS: the bridge subscribes on one
//!   node and moves to the next when it is killed.
//! - `redis_acl`: the bridge under README's least ACL user; a denied command or channel and a
//!   wrong password named in the log.
//! - `redis_tls`: `rediss://` to a real TLS redis-server: a CA file, mutual TLS, an unknown
//!   CA, a wrong host name and an expired server certificate (not ready, logged once with
//!   what to do, counted, retried with backoff, fixed without a restart).
//! - `sentinel`: three sentinels, a master and a replica: the bridge follows SENTINEL
//!   FAILOVER and a killed master under a publish load, nothing got twice, losses in gaps;
//!   sentinels and master over TLS; one sentinel of three down.
//! - `watchdog`: a black-holed subscription detected and replaced, Redis restarted again and
//!   again, `gap` notices.
//! - `abuse`: slow loris, oversized heads, garbage, bad keys, subscribe and command floods,
//!   the per-address connection rate, and memory (RSS) bounded under floods.
//! - `security`: one bounded answer per command, tokens with absurd expiries, restricted
//!   origins, connection caps per user and address, what the welcome frame reveals, tokens
//!   posing as API-key users.
//! - `console`: the console page and `/client.js` as served, the `console` switch, and
//!   the client library run under Node (reconnect, restored subscriptions, refresh).
//! - `browser`: Debian's Chromium driven by playwright-core: the console against the daemon,
//!   the client library through nginx across expiry, cuts and restarts; the client package
//!   (`npm pack`, the generated ES module, `tsc` on its declarations).
//! - `client_resume`: the client library's resume under Node: a cut connection gets
//!   exactly the frames it missed (subscribed and `auto`), a short history and a restart
//!   reach the application as `gap` events.
//! - `compat`: the five existing backends of README.md's "Migrating an existing backend",
//!   each run from its `examples/` file with its workers' payloads sent by a real Python
//!   (redis-py) or Node (node-redis) publisher.
//! - `compression`: permessage-deflate: the negotiation matrix, one message compressed once
//!   for its compressed recipients and plain for the others, `min_bytes` and the client's
//!   window, compressed commands, a deflate bomb (1009, memory bounded), the switch reloaded,
//!   Python `websockets` and Node `ws` (also through the nginx wss site) as clients.
//! - `history`: topics with memory: `last` and `since` replays byte-identical to the live
//!   frames, the seam with the live stream under a publish storm, audiences and filters
//!   checked again at replay, epochs across a restart, gaps, `ttl`, `history_max_bytes`,
//!   reloads, conflation for a client that does not read, `auto` routes resumed from the URL.
//! - `conformance`: RFC 6455 from the client's side, after Autobahn|Testsuite's server case
//!   groups 1-7 and 9 (docs/conformance.md), with frames built byte by byte.
//!
//! Every test starts its own Redis and bridge on free ports, so they run in parallel.
//! Absence is proven with a marker: publish what must not arrive, then a marker that must,
//! and assert the next frame is the marker (one Redis connection delivers in order).

mod abuse;
mod admin;
mod auth;
mod browser;
mod cli;
mod client_resume;
mod cluster;
mod compat;
mod compression;
mod conformance;
mod console;
mod history;
mod inbound;
mod monitoring;
mod nginx;
mod ops;
mod packaging;
mod presence;
mod protocol;
mod redis_acl;
mod redis_tls;
mod reload;
mod resilience;
mod routing;
mod security;
mod sentinel;
mod support;
mod watchdog;
