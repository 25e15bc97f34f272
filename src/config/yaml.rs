//! The raw layer of the routing file: YAML parsed into a tree that keeps the line and
//! column of every key and value, with `${VAR}` already replaced in string values, and the
//! helpers that read typed values out of it while collecting every problem found.
//!
//! The file is read into this tree rather than straight into `#[derive(Deserialize)]`
//! structs so that every error (unknown key, wrong type, bad value) carries its key path and
//! location, and so that one load reports all problems instead of stopping at the first.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter as _, Spanned};

use super::{ConfigError, Input};

/// A YAML node with its position (1-based line and column).
pub(super) struct Node {
    pub(super) kind: Kind,
    pub(super) line: u64,
    pub(super) column: u64,
}

pub(super) enum Kind {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
    /// A value whose error was already reported (e.g. a missing environment variable):
    /// readers skip it silently so that one mistake gives one message.
    Invalid,
}

/// A mapping entry: the key (with its own position) and the value.
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) line: u64,
    pub(super) column: u64,
    pub(super) value: Node,
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "nothing (null)",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Invalid => "an invalid value",
        }
    }
}

/// The serde-facing tree: what serde-saphyr fills in, spans included.
enum RawNode {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<String>, Spanned<RawNode>)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawNodeVisitor)
    }
}

struct RawNodeVisitor;

impl<'de> Visitor<'de> for RawNodeVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_none<E>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawNode, D::Error> {
        RawNode::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
        Ok(RawNode::UInt(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(RawNode::Map(entries))
    }
}

/// A YAML syntax (or structure) error: the parser's message and location.
pub(super) struct SyntaxError {
    pub(super) message: String,
    pub(super) line: Option<u64>,
    pub(super) column: Option<u64>,
}

/// Parses the YAML text (one document). Parser budgets (depth 64, node and size limits)
/// bound the work and the recursion of everything below.
fn parse(text: &str) -> Result<Spanned<RawNode>, SyntaxError> {
    let mut options = serde_saphyr::Options::default();
    // YAML 1.2 readings: `on`/`yes` stay strings, `007` stays the string `007`.
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|error| {
        let location = error.location().filter(|l| l.line() > 0);
        let message = serde_saphyr::UserMessageFormatter.format_message(error.without_snippet());
        SyntaxError {
            message: message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
            line: location.map(|l| l.line()),
            column: location.map(|l| l.column()),
        }
    })
}

/// The reading context: where errors go and how `${VAR}` is looked up.
pub(super) struct Ctx<'a> {
    file: &'a Path,
    env: &'a dyn Fn(&str) -> Option<OsString>,
    pub(super) errors: Vec<ConfigError>,
    /// The files read besides the routing file (see [`Ctx::read`]).
    pub(super) inputs: Vec<Input>,
    /// Whether a key, secret or token file that does not exist is noted in `absent` rather
    /// than an error: `check` only, whose configuration is never run.
    pub(super) tolerate_absent: bool,
    /// The files found absent under `tolerate_absent`, each with how to make it.
    pub(super) absent: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(file: &'a Path, env: &'a dyn Fn(&str) -> Option<OsString>) -> Self {
        Ctx {
            file,
            env,
            errors: Vec::new(),
            inputs: Vec::new(),
            tolerate_absent: false,
            absent: Vec::new(),
        }
    }

    /// Reads a file the configuration is built from (a key or token file) and records its
    /// digest, so that a reload notices when the file changes.
    pub(super) fn read(&mut self, file: &Path) -> std::io::Result<Vec<u8>> {
        let bytes = std::fs::read(file)?;
        self.inputs.push(Input::new(file, &bytes));
        Ok(bytes)
    }

    /// Where a relative path in the file (a key or secret file) is taken from: the routing
    /// file's directory, so that a file and its secrets can move together, whatever the
    /// daemon's working directory (`/` under systemd).
    pub(super) fn resolve(&self, path: &str) -> std::path::PathBuf {
        match self.file.parent() {
            Some(dir) => dir.join(path),
            None => Path::new(path).to_path_buf(),
        }
    }

    /// Records an error at a line and column.
    pub(super) fn error_at(
        &mut self,
        line: u64,
        column: u64,
        key: &str,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Records an error about a value.
    pub(super) fn error(&mut self, node: &Node, key: &str, message: impl Into<String>) {
        self.error_at(node.line, node.column, key, message);
    }

    /// Parses `text` into a tree, replacing `${VAR}` in string values.
    pub(super) fn load_tree(&mut self, text: &str) -> Result<Node, SyntaxError> {
        let raw = parse(text)?;
        Ok(self.convert(raw, ""))
    }

    fn convert(&mut self, raw: Spanned<RawNode>, path: &str) -> Node {
        let line = raw.referenced.line();
        let column = raw.referenced.column();
        let kind = match raw.value {
            RawNode::Null => Kind::Null,
            RawNode::Bool(b) => Kind::Bool(b),
            RawNode::Int(n) => Kind::Number(n.into()),
            RawNode::UInt(n) => Kind::Number(n.into()),
            RawNode::Float(f) => match serde_json::Number::from_f64(f) {
                Some(n) => Kind::Number(n),
                None => {
                    self.error_at(line, column, path, "not a finite number");
                    Kind::Invalid
                }
            },
            RawNode::Str(s) => match interpolate(&s, self.env) {
                Ok(Cow::Borrowed(_)) => Kind::Str(s),
                Ok(Cow::Owned(replaced)) => Kind::Str(replaced),
                Err(message) => {
                    self.error_at(line, column, path, message);
                    Kind::Invalid
                }
            },
            RawNode::Seq(items) => Kind::Seq(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.convert(item, &index(path, i)))
                    .collect(),
            ),
            RawNode::Map(entries) => Kind::Map(
                entries
                    .into_iter()
                    .map(|(key, value)| Entry {
                        line: key.referenced.line(),
                        column: key.referenced.column(),
                        value: self.convert(value, &join(path, &key.value)),
                        key: key.value,
                    })
                    .collect(),
            ),
        };
        Node { kind, line, column }
    }
}

/// `parent.key` (or `key` at the top).
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub(super) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Replaces `${VAR}` and `${VAR:-default}` (default used when VAR is unset or empty);
/// `$${` is a literal `${`. A `${` not followed by a variable name is left as it is, so
/// template text such as `${payload.price}` (a dollar sign before a placeholder) is kept.
fn interpolate<'s>(
    text: &'s str,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Cow<'s, str>, String> {
    if !text.contains("${") {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let name_len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        let name = &body[..name_len];
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        let after_name = &body[name_len..];
        if !valid_name {
            out.push('$');
            rest = &tail[1..];
            continue;
        }
        let (default, after) = if let Some(after) = after_name.strip_prefix('}') {
            (None, after)
        } else if let Some(default_and_rest) = after_name.strip_prefix(":-") {
            match default_and_rest.split_once('}') {
                Some((default, after)) => (Some(default), after),
                None => return Err(format!("unclosed `${{{name}:-` (expected `}}`)")),
            }
        } else if after_name.is_empty() {
            return Err(format!("unclosed `${{{name}` (expected `}}`)"));
        } else {
            // `${NAME` followed by something else: not a variable reference.
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let value = match env(name) {
            Some(value) => match value.into_string() {
                Ok(value) => Some(value),
                Err(_) => return Err(format!("environment variable `{name}` is not valid UTF-8")),
            },
            None => None,
        };
        match (value, default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(format!("environment variable `{name}` is not set")),
        }
        rest = after;
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// The known keys of a mapping that were present.
pub(super) struct Fields<'n> {
    entries: Vec<&'n Entry>,
}

impl<'n> Fields<'n> {
    /// The value of `key`, if present.
    pub(super) fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|entry| entry.key == key)
            .map(|entry| &entry.value)
    }

    /// The entry of `key` (its value and the key's own position), if present.
    pub(super) fn entry(&self, key: &str) -> Option<&'n Entry> {
        self.entries.iter().copied().find(|entry| entry.key == key)
    }

    /// How many known keys were present.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Reads a mapping whose keys must be among `known`: an unknown key is an error at that key
/// (the known ones are still returned, so their values are checked too). `null` (an empty
/// section such as `websocket:`) reads as an empty mapping. `None` when `node` is not a mapping.
pub(super) fn fields<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    path: &str,
    known: &[&str],
) -> Option<Fields<'n>> {
    let entries = match &node.kind {
        Kind::Map(entries) => entries,
        Kind::Null => {
            return Some(Fields {
                entries: Vec::new(),
            });
        }
        Kind::Invalid => return None,
        other => {
            let message = format!("expected a mapping, found {}", other.describe());
            ctx.error(node, path, message);
            return None;
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        if known.contains(&entry.key.as_str()) {
            found.push(entry);
        } else {
            let message = unknown_key_message(&entry.key, known);
            ctx.error_at(entry.line, entry.column, &join(path, &entry.key), message);
        }
    }
    Some(Fields { entries: found })
}

fn unknown_key_message(key: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance);
    match closest {
        Some((_, candidate)) => format!("unknown key `{key}` (did you mean `{candidate}`?)"),
        None => format!(
            "unknown key `{key}` (expected one of: {})",
            known.join(", ")
        ),
    }
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            let deletion = previous[j + 1] + 1;
            let insertion = current[j] + 1;
            current.push(substitution.min(deletion).min(insertion));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Reads a string; a number or boolean is taken as its text.
/// The file a key names (relative to the routing file) and the outcome of reading it;
/// `None` after an error at `node` (not a string, or empty).
pub(super) fn named_file(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
) -> Option<(std::path::PathBuf, std::io::Result<Vec<u8>>)> {
    let name = string(ctx, node, path)?;
    if name.is_empty() {
        ctx.error(node, path, "expected a file path");
        return None;
    }
    let file = ctx.resolve(&name);
    let read = ctx.read(&file);
    Some((file, read))
}

/// The bytes of the file a key names; `None` after an error at `node`.
pub(super) fn file(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Vec<u8>> {
    let (file, read) = named_file(ctx, node, path)?;
    read.map_err(|e| ctx.error(node, path, format!("cannot read `{}`: {e}", file.display())))
        .ok()
}

pub(super) fn string(ctx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    match &node.kind {
        Kind::Str(s) => Some(s.clone()),
        Kind::Number(n) => Some(n.to_string()),
        Kind::Bool(b) => Some(b.to_string()),
        Kind::Invalid => None,
        other => {
            let message = format!("expected a string, found {}", other.describe());
            ctx.error(node, path, message);
            None
        }
    }
}

/// Reads a list of strings; a single string reads as a list of one.
pub(super) fn string_list(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Vec<String>> {
    match &node.kind {
        Kind::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match string(ctx, item, &index(path, i)) {
                    Some(s) => out.push(s),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        _ => string(ctx, node, path).map(|s| vec![s]),
    }
}

/// Reads a whole number (a string of digits too, as `${VAR}` gives), at least `min`.
pub(super) fn number_at_least(ctx: &mut Ctx, node: &Node, path: &str, min: u64) -> Option<u64> {
    let value = match &node.kind {
        Kind::Number(n) => n.as_u64(),
        Kind::Str(s) => s.trim().parse::<u64>().ok(),
        Kind::Invalid => return None,
        _ => None,
    };
    match value {
        Some(value) if value >= min => Some(value),
        Some(_) => {
            ctx.error(node, path, format!("must be at least {min}"));
            None
        }
        None => {
            let message = format!("expected a whole number, found {}", found_text(node));
            ctx.error(node, path, message);
            None
        }
    }
}

/// Reads `true` or `false` (also as a string, as `${VAR}` gives).
pub(super) fn boolean(ctx: &mut Ctx, node: &Node, path: &str) -> Option<bool> {
    match &node.kind {
        Kind::Bool(b) => Some(*b),
        Kind::Str(s) if s.trim() == "true" => Some(true),
        Kind::Str(s) if s.trim() == "false" => Some(false),
        Kind::Invalid => None,
        _ => {
            let message = format!("expected true or false, found {}", found_text(node));
            ctx.error(node, path, message);
            None
        }
    }
}

/// Reads a duration such as `30s`, `250ms`, `2m`.
pub(super) fn duration(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Duration> {
    let text = string(ctx, node, path)?;
    match humantime::parse_duration(text.trim()) {
        Ok(duration) => Some(duration),
        Err(e) => {
            let message = format!("invalid duration `{text}`: {e} (examples: 30s, 250ms, 2m)");
            ctx.error(node, path, message);
            None
        }
    }
}

/// A short rendering of a scalar for messages, or its kind.
pub(super) fn found_text(node: &Node) -> String {
    match &node.kind {
        Kind::Str(s) => format!("`{s}`"),
        Kind::Number(n) => format!("`{n}`"),
        Kind::Bool(b) => format!("`{b}`"),
        other => other.describe().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<OsString> {
        match name {
            "HOST" => Some("example.org".into()),
            "EMPTY" => Some("".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolation() {
        let run = |text: &str| interpolate(text, &env).map(|s| s.into_owned());
        assert_eq!(
            run("redis://${HOST}:6379").as_deref(),
            Ok("redis://example.org:6379")
        );
        assert_eq!(
            run("${HOST}${HOST}").as_deref(),
            Ok("example.orgexample.org")
        );
        assert_eq!(run("${MISSING:-fallback}").as_deref(), Ok("fallback"));
        assert_eq!(run("${EMPTY:-fallback}").as_deref(), Ok("fallback"));
        assert_eq!(run("${EMPTY}").as_deref(), Ok(""));
        assert_eq!(run("$${HOST} $5 $").as_deref(), Ok("${HOST} $5 $"));
        assert_eq!(
            run("price ${payload.price}").as_deref(),
            Ok("price ${payload.price}")
        );
        assert_eq!(run("${1}").as_deref(), Ok("${1}"));
        assert_eq!(
            run("a ${MISSING} b"),
            Err("environment variable `MISSING` is not set".to_owned())
        );
        assert_eq!(
            run("${HOST"),
            Err("unclosed `${HOST` (expected `}`)".to_owned())
        );
        assert_eq!(
            run("${HOST:-x"),
            Err("unclosed `${HOST:-` (expected `}`)".to_owned())
        );
    }

    #[test]
    fn unknown_key_hints() {
        assert_eq!(
            unknown_key_message("patern", &["channel", "pattern"]),
            "unknown key `patern` (did you mean `pattern`?)"
        );
        assert_eq!(
            unknown_key_message("zzz", &["channel", "pattern"]),
            "unknown key `zzz` (expected one of: channel, pattern)"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
