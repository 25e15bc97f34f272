//! The client protocol's JSON: commands parsed from clients and the frames the server
//! writes of its own (not route frames). Pure: no I/O, no state.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wsframe;

/// A command after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Subscribe {
        topics: Vec<String>,
        filter: Option<Filter>,
        /// Retained frames to send first (`last`, `since`).
        replay: Replay,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
    Ping,
    Refresh {
        token: String,
    },
    /// Who is subscribed to `topic` (a route with `presence`).
    Presence {
        topic: String,
    },
}

/// What a subscribe asks to be replayed: `last` frames of each topic, and for the topics of
/// `since`, every frame after a position.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Replay {
    pub last: Option<usize>,
    pub since: Option<Since>,
}

/// Positions in one epoch: the `seq` of the last frame received, per topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Since {
    pub epoch: String,
    pub seq: BTreeMap<String, u64>,
}

/// The most frames `last` asks for per topic (a route retains at most as many).
pub const MAX_LAST: u64 = 10_000;

/// Longest `since.epoch`: an epoch is a UUID, perhaps with a suffix.
pub const MAX_EPOCH_BYTES: usize = 128;

/// A parsed command with the `id` the client wants echoed.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub command: Command,
}

/// A rejected command: the `id` when it could be read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub id: Option<Value>,
    pub message: String,
}

/// Payload dot paths and the values each may take for a frame to pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    conditions: Vec<(Vec<String>, Vec<Value>)>,
}

impl Filter {
    /// Whether a payload passes: every listed path resolves to one of its allowed values.
    /// A payload that is not JSON passes no filter.
    pub fn admits(&self, payload: Option<&Value>) -> bool {
        let Some(payload) = payload else { return false };
        self.conditions.iter().all(|(path, allowed)| {
            let value = path.iter().try_fold(payload, |node, segment| match node {
                Value::Object(map) => map.get(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            });
            value.is_some_and(|value| allowed.contains(value))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    #[serde(rename = "type")]
    kind: String,
    /// Read before this struct (it is echoed even when the rest is invalid); listed so
    /// that `deny_unknown_fields` accepts it.
    #[serde(default, rename = "id")]
    _id: Option<IgnoredAny>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<BTreeMap<String, OneOrMany>>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    last: Option<Value>,
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    topic: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<Value>),
    One(Value),
}

/// Upper bound of topics in one command, so that one frame cannot make the hub do unbounded work.
pub const MAX_TOPICS_PER_COMMAND: usize = 1000;

/// Longest string `id`: it is echoed in the answer, so it must not make answers large.
pub const MAX_ID_BYTES: usize = 128;

/// Bounds of a subscription's `filter`, which runs for every message of the topic on the
/// dispatcher's thread: one client's filter must not slow everyone's delivery.
pub const MAX_FILTER_PATHS: usize = 16;
/// Dot-separated segments in one filter path.
pub const MAX_FILTER_DEPTH: usize = 8;
/// Allowed values of one filter path.
pub const MAX_FILTER_VALUES: usize = 64;
/// Longest filter path, and longest string among its allowed values.
pub const MAX_FILTER_TEXT: usize = 256;

/// Longest error message quoted back to a client: parser messages can quote the input.
const MAX_MESSAGE_BYTES: usize = 200;

/// The `type`s of the commands above: a frame of any other type may be an inbound route's.
pub const COMMAND_TYPES: &[&str] = &["subscribe", "unsubscribe", "ping", "refresh", "presence"];

/// The `id` of a frame, when it is one that may be echoed (a number or a short string).
pub fn echoable_id(frame: &Value) -> Option<Value> {
    match frame.get("id") {
        Some(Value::Number(n)) => Some(Value::Number(n.clone())),
        Some(Value::String(s)) if s.len() <= MAX_ID_BYTES => Some(Value::String(s.clone())),
        _ => None,
    }
}

/// Parses one text frame from a client.
pub fn parse(text: &str) -> Result<Request, BadRequest> {
    let value: Value = serde_json::from_str(text).map_err(|err| BadRequest {
        id: None,
        message: bounded_message(format!("not JSON: {err}")),
    })?;
    let id = match value.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(Value::Number(n.clone())),
        Some(Value::String(s)) if s.len() <= MAX_ID_BYTES => Some(Value::String(s.clone())),
        Some(_) => {
            return Err(BadRequest {
                id: None,
                message: format!(
                    "`id` must be a number or a string of at most {MAX_ID_BYTES} bytes"
                ),
            });
        }
    };
    let bad = |message: String| BadRequest {
        id: id.clone(),
        message: bounded_message(message),
    };
    let raw: RawCommand = serde_json::from_value(value).map_err(|err| bad(err.to_string()))?;
    let topics = |raw: Option<Vec<String>>| -> Result<Vec<String>, BadRequest> {
        let topics = raw.ok_or_else(|| bad("`topics` is required".into()))?;
        if topics.is_empty() {
            return Err(bad("`topics` is empty".into()));
        }
        if topics.len() > MAX_TOPICS_PER_COMMAND {
            return Err(bad(format!(
                "more than {MAX_TOPICS_PER_COMMAND} topics in one command"
            )));
        }
        if topics.iter().any(String::is_empty) {
            return Err(bad("a topic is empty".into()));
        }
        Ok(topics)
    };
    let unexpected = |field: &str, present: bool| -> Result<(), BadRequest> {
        if present {
            Err(bad(format!("`{field}` is not a field of `{}`", raw.kind)))
        } else {
            Ok(())
        }
    };
    if raw.kind != "subscribe" {
        unexpected("last", raw.last.is_some())?;
        unexpected("since", raw.since.is_some())?;
    }
    let command = match raw.kind.as_str() {
        "presence" => {
            unexpected("topics", raw.topics.is_some())?;
            unexpected("filter", raw.filter.is_some())?;
            unexpected("token", raw.token.is_some())?;
            match raw.topic {
                Some(topic) if !topic.is_empty() => Command::Presence { topic },
                _ => return Err(bad("`topic` is required".into())),
            }
        }
        _ if raw.topic.is_some() => {
            return Err(bad(format!("`topic` is not a field of `{}`", raw.kind)));
        }
        "subscribe" => {
            unexpected("token", raw.token.is_some())?;
            let filter = raw.filter.map(filter).transpose().map_err(bad)?;
            let topics = topics(raw.topics)?;
            let last = raw.last.map(last).transpose().map_err(bad)?;
            let since = raw.since.map(since).transpose().map_err(bad)?;
            if let Some(since) = &since
                && let Some(stray) = since.seq.keys().find(|topic| !topics.contains(topic))
            {
                return Err(bad(format!(
                    "`since.seq` names `{stray}`, which is not in `topics`"
                )));
            }
            Command::Subscribe {
                topics,
                filter,
                replay: Replay { last, since },
            }
        }
        "unsubscribe" => {
            unexpected("token", raw.token.is_some())?;
            unexpected("filter", raw.filter.is_some())?;
            Command::Unsubscribe {
                topics: topics(raw.topics)?,
            }
        }
        "ping" => {
            unexpected("topics", raw.topics.is_some())?;
            unexpected("filter", raw.filter.is_some())?;
            unexpected("token", raw.token.is_some())?;
            Command::Ping
        }
        "refresh" => {
            unexpected("topics", raw.topics.is_some())?;
            unexpected("filter", raw.filter.is_some())?;
            let token = raw.token.ok_or_else(|| bad("`token` is required".into()))?;
            Command::Refresh { token }
        }
        other => return Err(bad(format!("unknown command type `{other}`"))),
    };
    Ok(Request { id, command })
}

/// `last`: how many retained frames of each topic.
fn last(value: Value) -> Result<usize, String> {
    match value.as_u64() {
        Some(n) if n <= MAX_LAST => usize::try_from(n).map_err(|_| String::new()),
        _ => Err(format!("`last` must be an integer from 0 to {MAX_LAST}")),
    }
}

/// `since`: `{"epoch": "…", "seq": {"topic": n, …}}`, on a subscribe or the upgrade URL.
pub fn since(value: Value) -> Result<Since, String> {
    const SHAPE: &str = "`since` must be an object {\"epoch\": \"…\", \"seq\": {\"topic\": n}}";
    let Value::Object(mut fields) = value else {
        return Err(SHAPE.to_owned());
    };
    if let Some(other) = fields.keys().find(|key| *key != "epoch" && *key != "seq") {
        return Err(format!("`{other}` is not a field of `since` (epoch, seq)"));
    }
    let epoch = match fields.remove("epoch") {
        Some(Value::String(epoch)) if epoch.len() <= MAX_EPOCH_BYTES => epoch,
        _ => {
            return Err(format!(
                "`since.epoch` must be a string of at most {MAX_EPOCH_BYTES} bytes"
            ));
        }
    };
    let Some(Value::Object(positions)) = fields.remove("seq") else {
        return Err("`since.seq` must be an object of topics and positions".to_owned());
    };
    if positions.len() > MAX_TOPICS_PER_COMMAND {
        return Err(format!(
            "`since.seq` names more than {MAX_TOPICS_PER_COMMAND} topics"
        ));
    }
    let mut seq = BTreeMap::new();
    for (topic, position) in positions {
        let Some(position) = position.as_u64() else {
            return Err(format!(
                "the position of `{topic}` in `since.seq` must be an integer ≥ 0"
            ));
        };
        seq.insert(topic, position);
    }
    Ok(Since { epoch, seq })
}

/// A subscription's filter, within the bounds that keep its cost per message small.
fn filter(map: BTreeMap<String, OneOrMany>) -> Result<Filter, String> {
    if map.len() > MAX_FILTER_PATHS {
        return Err(format!("a filter has at most {MAX_FILTER_PATHS} paths"));
    }
    let mut conditions = Vec::with_capacity(map.len());
    for (path, allowed) in map {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if path.len() > MAX_FILTER_TEXT
            || segments.len() > MAX_FILTER_DEPTH
            || segments.iter().any(String::is_empty)
        {
            return Err(format!(
                "a filter path is at most {MAX_FILTER_TEXT} bytes and {MAX_FILTER_DEPTH} non-empty dot-separated names"
            ));
        }
        let allowed = match allowed {
            OneOrMany::Many(values) => values,
            OneOrMany::One(value) => vec![value],
        };
        if allowed.is_empty() || allowed.len() > MAX_FILTER_VALUES {
            return Err(format!(
                "a filter path allows 1 to {MAX_FILTER_VALUES} values"
            ));
        }
        let scalar = |value: &Value| match value {
            Value::String(text) => text.len() <= MAX_FILTER_TEXT,
            Value::Array(_) | Value::Object(_) => false,
            Value::Null | Value::Bool(_) | Value::Number(_) => true,
        };
        if !allowed.iter().all(scalar) {
            return Err(format!(
                "filter values are strings of at most {MAX_FILTER_TEXT} bytes, numbers, booleans or null"
            ));
        }
        conditions.push((segments, allowed));
    }
    Ok(Filter { conditions })
}

/// Cuts a message to [`MAX_MESSAGE_BYTES`] at a character boundary.
fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// Error codes of the `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownTopic,
    Forbidden,
    RateLimited,
    TokenExpired,
    TooManySubscriptions,
    /// Redis did not take a client's frame (or the bridge's queue to it was full).
    Unavailable,
}

/// The `since` that resumes topics from a moment: the epoch, and each topic's last `seq`.
#[derive(Debug, Serialize)]
pub struct Position<'a> {
    pub epoch: &'a str,
    #[serde(serialize_with = "topics_to_seq")]
    pub seq: &'a [(&'a str, u64)],
}

fn topics_to_seq<S: serde::Serializer>(
    seq: &&[(&str, u64)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(seq.iter().map(|(topic, seq)| (topic, seq)))
}

/// The frames the server sends of its own accord or in answer to a command.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
    Connected {
        connection_id: &'a str,
        user: Option<&'a str>,
        roles: &'a [std::sync::Arc<str>],
        topics: &'a [String],
        epoch: &'a str,
        /// Where the retained `topics` start for this connection.
        #[serde(skip_serializing_if = "Option::is_none")]
        position: Option<Position<'a>>,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        topics: &'a [String],
        /// The topics of the same command that were not subscribed, and why.
        #[serde(skip_serializing_if = "<[Refusal]>::is_empty")]
        refused: &'a [Refusal],
        /// Where the live stream of the retained topics starts for this subscription.
        #[serde(skip_serializing_if = "Option::is_none")]
        position: Option<Position<'a>>,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        topics: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        expires_at: Option<u64>,
    },
    /// A client's frame that Redis took (an inbound route with `ack`).
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    /// Who is subscribed to a topic, over every bridge.
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        topic: &'a str,
        /// The number of users.
        count: usize,
        users: &'a [PresentUser],
    },
    /// A user's first connection subscribed to `topic`.
    Join { topic: &'a str, user: &'a str },
    /// A user's last connection left `topic`.
    Leave { topic: &'a str, user: &'a str },
    /// Messages may have been lost (Redis was unreachable): refetch state.
    Gap {
        reason: &'a str,
        since: &'a str,
        topics: &'a [&'a str],
    },
    /// Topics of a `since` that cannot be resumed: refetch their state.
    #[serde(rename = "gap")]
    ResumeGap {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        reason: &'a str,
        topics: &'a [String],
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        /// Every topic a subscribe refused, when it refused them all and more than one.
        #[serde(skip_serializing_if = "<[Refusal]>::is_empty")]
        refused: &'a [Refusal],
    },
}

/// One user of a `presence` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresentUser {
    pub user: String,
    pub connections: usize,
}

/// A topic a subscribe did not take, in its one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub topic: String,
    pub code: ErrorCode,
}

impl Reply<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| String::from(r#"{"type":"error","code":"internal"}"#))
    }

    /// The reply as a WebSocket text frame.
    pub fn to_frame(&self) -> Bytes {
        wsframe::text(self.to_json().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_each_command() {
        let request = parse(r#"{"type":"subscribe","id":1,"topics":["a","b"],"filter":{"status":["running"],"data.kind":"x"}}"#).unwrap();
        assert_eq!(request.id, Some(json!(1)));
        let Command::Subscribe {
            topics,
            filter,
            replay,
        } = request.command
        else {
            panic!()
        };
        assert_eq!(topics, ["a", "b"]);
        assert_eq!(replay, Replay::default());
        let filter = filter.unwrap();
        assert!(filter.admits(Some(&json!({"status":"running","data":{"kind":"x"}}))));
        assert!(!filter.admits(Some(&json!({"status":"failed","data":{"kind":"x"}}))));
        assert!(!filter.admits(Some(&json!({"status":"running"}))));
        assert!(!filter.admits(None));
        assert_eq!(parse(r#"{"type":"ping"}"#).unwrap().command, Command::Ping);
        assert_eq!(
            parse(r#"{"type":"unsubscribe","id":"x","topics":["a"]}"#).unwrap(),
            Request {
                id: Some(json!("x")),
                command: Command::Unsubscribe {
                    topics: vec!["a".into()]
                }
            }
        );
    }

    #[test]
    fn rejects_bad_commands_keeping_the_id() {
        assert_eq!(parse("nope").unwrap_err().id, None);
        assert_eq!(
            parse(r#"{"type":"dance","id":7}"#).unwrap_err().id,
            Some(json!(7))
        );
        assert!(parse(r#"{"type":"subscribe","id":7}"#).is_err());
        assert!(parse(r#"{"type":"subscribe","topics":[]}"#).is_err());
        assert!(parse(r#"{"type":"subscribe","topics":"a"}"#).is_err());
        assert!(parse(r#"{"type":"ping","extra":1}"#).is_err());
        assert!(parse(r#"[1,2]"#).is_err());
        assert!(parse(r#"{"type":"refresh"}"#).is_err());
    }

    #[test]
    fn replays_are_asked_with_last_and_since() {
        let replay = |command: Value| match parse(&command.to_string()) {
            Ok(Request {
                command: Command::Subscribe { replay, .. },
                ..
            }) => Ok(replay),
            Ok(other) => panic!("{other:?}"),
            Err(bad) => Err(bad.message),
        };
        let subscribe = |extra: Value| {
            let mut command = json!({"type": "subscribe", "id": 1, "topics": ["a", "b"]});
            for (key, value) in extra.as_object().unwrap() {
                command[key] = value.clone();
            }
            replay(command)
        };
        assert_eq!(
            subscribe(json!({"last": 3, "since": {"epoch": "e", "seq": {"a": 17, "b": 0}}})),
            Ok(Replay {
                last: Some(3),
                since: Some(Since {
                    epoch: "e".into(),
                    seq: BTreeMap::from([("a".into(), 17), ("b".into(), 0)]),
                }),
            })
        );
        assert_eq!(subscribe(json!({"last": 0})).unwrap().last, Some(0));
        let refused = [
            (
                json!({"last": -1}),
                "`last` must be an integer from 0 to 10000",
            ),
            (
                json!({"last": 10_001}),
                "`last` must be an integer from 0 to 10000",
            ),
            (
                json!({"last": "5"}),
                "`last` must be an integer from 0 to 10000",
            ),
            (
                json!({"last": 1.5}),
                "`last` must be an integer from 0 to 10000",
            ),
            (
                json!({"since": 5}),
                r#"`since` must be an object {"epoch": "…", "seq": {"topic": n}}"#,
            ),
            (
                json!({"since": {"epoch": "e", "seq": {}, "from": 1}}),
                "`from` is not a field of `since` (epoch, seq)",
            ),
            (
                json!({"since": {"seq": {"a": 1}}}),
                "`since.epoch` must be a string of at most 128 bytes",
            ),
            (
                json!({"since": {"epoch": "e".repeat(129), "seq": {}}}),
                "`since.epoch` must be a string of at most 128 bytes",
            ),
            (
                json!({"since": {"epoch": "e", "seq": [1]}}),
                "`since.seq` must be an object of topics and positions",
            ),
            (
                json!({"since": {"epoch": "e", "seq": {"a": -1}}}),
                "the position of `a` in `since.seq` must be an integer ≥ 0",
            ),
            (
                json!({"since": {"epoch": "e", "seq": {"a": "1"}}}),
                "the position of `a` in `since.seq` must be an integer ≥ 0",
            ),
            (
                json!({"since": {"epoch": "e", "seq": {"c": 1}}}),
                "`since.seq` names `c`, which is not in `topics`",
            ),
        ];
        for (extra, message) in refused {
            assert_eq!(subscribe(extra.clone()), Err(message.to_owned()), "{extra}");
        }
        assert_eq!(
            replay(json!({"type": "unsubscribe", "topics": ["a"], "last": 1})),
            Err("`last` is not a field of `unsubscribe`".to_owned())
        );
        assert_eq!(
            replay(json!({"type": "ping", "since": {}})),
            Err("`since` is not a field of `ping`".to_owned())
        );
    }

    #[test]
    fn ids_are_numbers_or_short_strings() {
        assert_eq!(parse(r#"{"type":"ping","id":null}"#).unwrap().id, None);
        let long = "A".repeat(MAX_ID_BYTES + 1);
        for id in [json!(long), json!({"a": 1}), json!([1]), json!(true)] {
            let bad = parse(&json!({"type": "ping", "id": id}).to_string()).unwrap_err();
            assert_eq!(bad.id, None, "{}", bad.message);
        }
        let short = "A".repeat(MAX_ID_BYTES);
        assert_eq!(
            parse(&json!({"type": "ping", "id": short}).to_string())
                .unwrap()
                .id,
            Some(json!(short))
        );
    }

    #[test]
    fn error_messages_do_not_quote_long_input() {
        let field = "x".repeat(10_000);
        let bad = parse(&format!(r#"{{"type":"ping","{field}":1}}"#)).unwrap_err();
        assert!(bad.message.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn filters_are_bounded() {
        let subscribe = |filter: serde_json::Value| {
            parse(&json!({"type": "subscribe", "topics": ["t"], "filter": filter}).to_string())
        };
        assert!(subscribe(json!({"a.b": ["x", 1, true, null]})).is_ok());
        let many_paths: serde_json::Map<String, Value> = (0..=MAX_FILTER_PATHS)
            .map(|i| (format!("p{i}"), json!(1)))
            .collect();
        assert!(subscribe(Value::Object(many_paths)).is_err());
        let deep = ["a"; MAX_FILTER_DEPTH + 1].join(".");
        assert!(subscribe(json!({ deep: 1 })).is_err());
        assert!(subscribe(json!({"a..b": 1})).is_err());
        assert!(subscribe(json!({"a": vec![1; MAX_FILTER_VALUES + 1]})).is_err());
        assert!(subscribe(json!({"a": []})).is_err());
        assert!(subscribe(json!({"a": [{"nested": 1}]})).is_err());
        assert!(subscribe(json!({"a": "x".repeat(MAX_FILTER_TEXT + 1)})).is_err());
    }

    #[test]
    fn replies_serialise_as_documented() {
        let id = json!(3);
        assert_eq!(
            Reply::Pong { id: Some(&id) }.to_json(),
            r#"{"type":"pong","id":3}"#
        );
        let topics = vec!["job:a".to_string()];
        assert_eq!(
            Reply::Unsubscribed {
                id: None,
                topics: &topics,
                reason: Some("route_removed")
            }
            .to_json(),
            r#"{"type":"unsubscribed","topics":["job:a"],"reason":"route_removed"}"#
        );
        assert_eq!(
            Reply::Error {
                id: None,
                code: ErrorCode::UnknownTopic,
                message: "m",
                topic: Some("t"),
                refused: &[],
            }
            .to_json(),
            r#"{"type":"error","code":"unknown_topic","message":"m","topic":"t"}"#
        );
        let refused = [Refusal {
            topic: "b".into(),
            code: ErrorCode::Forbidden,
        }];
        assert_eq!(
            Reply::Subscribed {
                id: Some(&id),
                topics: &topics,
                refused: &refused,
                position: None,
            }
            .to_json(),
            r#"{"type":"subscribed","id":3,"topics":["job:a"],"refused":[{"topic":"b","code":"forbidden"}]}"#
        );
        let topics = ["job:a".to_owned(), "job:b".to_owned()];
        assert_eq!(
            Reply::Subscribed {
                id: None,
                topics: &topics,
                refused: &[],
                position: Some(Position {
                    epoch: "e1",
                    seq: &[("job:a", 7), ("job:b", 0)],
                }),
            }
            .to_json(),
            r#"{"type":"subscribed","topics":["job:a","job:b"],"position":{"epoch":"e1","seq":{"job:a":7,"job:b":0}}}"#
        );
    }
}
