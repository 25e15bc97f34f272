//! Redis glob matching with captures, on a pattern and a channel name split from one input at
//! its first NUL byte. Both sides are attacker-controlled in production (patterns come from
//! the routing file, channel names and payload fields from publishers), so matching must stay
//! polynomial: the fuzz run's per-input time limit catches exponential backtracking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_ws_bridge::glob;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, channel) = text.split_once('\0').unwrap_or((text, ""));
    assert_eq!(
        glob::captures(pattern, channel).is_some(),
        glob::matches(pattern, channel)
    );
    if let Some(found) = glob::captures(pattern, channel) {
        // Fewer only when a star's text would split a character.
        assert!(found.len() <= glob::capture_count(pattern));
        if channel.is_ascii() {
            assert_eq!(found.len(), glob::capture_count(pattern));
        }
        assert!(found.iter().all(|capture| channel.contains(capture)));
    }
});
