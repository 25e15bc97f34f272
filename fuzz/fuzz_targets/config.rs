//! The routing-file loader: any text is a valid configuration or a list of located errors.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use redis_ws_bridge::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = Config::from_str(text, Path::new("fuzz.yaml")) {
            // Rendering the errors is part of the user-facing path.
            let _ = errors.to_string();
        }
    }
});
