//! The client command parser, and the filter it builds applied to the same input as payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_ws_bridge::protocol::{self, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(request) = protocol::parse(text) {
        if let Command::Subscribe { filter: Some(filter), .. } = request.command {
            let payload: Option<serde_json::Value> = serde_json::from_str(text).ok();
            let _ = filter.admits(payload.as_ref());
        }
    }
});
