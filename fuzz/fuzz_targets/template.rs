//! The template engine: compile any text, then render it against a payload and match it
//! against a topic, both taken from the same input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_ws_bridge::template::{Allowed, JsonTemplate, Scope, Template};

const EVERYTHING: Allowed = Allowed {
    captures: 9,
    channel: true,
    payload: true,
    claims: true,
    topic: true,
    seq: true,
    now: true,
    connection_id: true,
    epoch: true,
    user: true,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Input: template, then a line with a topic to match, then a JSON payload.
    let mut parts = text.splitn(3, '\n');
    let source = parts.next().unwrap_or("");
    let topic = parts.next().unwrap_or("");
    let payload: Option<serde_json::Value> = parts.next().and_then(|p| serde_json::from_str(p).ok());
    let captures = ["a", "b:c", "", "ü", "5", "6", "7", "8", "9"];
    let scope = Scope {
        channel: "job:a",
        captures: &captures,
        payload: payload.as_ref(),
        claims: payload.as_ref(),
        topic: Some(topic),
        seq: Some(7),
        now: Some("2026-11-25T00:00:00.000Z"),
        connection_id: Some("c"),
        epoch: Some("e"),
        user: Some("u"),
    };
    if let Ok(template) = Template::compile(source, &EVERYTHING) {
        let _ = template.render(&scope);
        let _ = template.render_value(&scope);
        let _ = template.match_topic(topic);
    }
    if let Some(value) = payload.as_ref() {
        if let Ok(template) = JsonTemplate::compile(value, &EVERYTHING) {
            let _ = template.render_to_vec(&scope);
        }
    }
});
