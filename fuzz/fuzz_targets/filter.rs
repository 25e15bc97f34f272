//! A subscribe command's filter applied to a payload: the command and the payload are split
//! from one input at its first NUL byte. Filters run for every message on the dispatcher's
//! thread, so the parser must refuse unbounded ones and evaluation must stay cheap: the fuzz
//! run's per-input time limit catches slow cases.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_ws_bridge::protocol::{self, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (command, payload) = text.split_once('\0').unwrap_or((text, ""));
    if let Ok(request) = protocol::parse(command)
        && let Command::Subscribe { filter: Some(filter), .. } = request.command
    {
        let payload: Option<serde_json::Value> = serde_json::from_str(payload).ok();
        let _ = filter.admits(payload.as_ref());
    }
});
