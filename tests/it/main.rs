//! End-to-end tests: a real `redis-server`, the real `redis-ws-bridge` binary, real
//! WebSocket clients. One test binary (modules below) keeps link time low.
//!
//! - `cli`: `check`, `--version`, start-up errors with file:line:column.
//! - `routing`: routes, topics, formats, templates, audiences of delivery, filters, dedupe.
//! - `protocol`: the client protocol: commands, errors, limits, pings, idle timeout.
//! - `resilience`: slow clients, Redis outages, graceful shutdown.
//!
//! Every test starts its own Redis and bridge on free ports, so they run in parallel.
//! Absence is proven with a marker: publish what must not arrive, then a marker that must,
//! and assert the next frame is the marker (one Redis connection delivers in order).

mod cli;
mod protocol;
mod resilience;
mod routing;
mod support;
