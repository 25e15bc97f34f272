//! String and JSON templates of the routing file: `job:{1}`, `{payload.event|job_update}`,
//! `{ "type": "x", "data": "{payload.data}" }`.
//!
//! A template is compiled once, when the routing file is loaded (unknown placeholders and
//! placeholders that are not available where the template appears are load errors), and
//! rendered once per message on the hot path. Rendering does no I/O and never panics: a
//! placeholder without a value makes the whole render return `None`, and the caller skips
//! the message for that route.
//!
//! Syntax (docs/routing.md, "Templates"):
//! - `{1}` … `{9}`, `{channel}`, `{payload}`, `{payload.a.b}`, `{claims}`, `{claims.a.b}`,
//!   `{topic}`, `{seq}`, `{now}`, `{connection_id}`, `{epoch}`;
//! - a path segment made of digits (`items.0`) is an array index on arrays and a key on objects;
//! - `{a|b|text}`: alternatives tried left to right. The first one must be a placeholder name;
//!   each later one is resolved when it is a placeholder name and is literal text otherwise.
//!   A later alternative in single or double quotes (`{payload.n|'3'}`) is always literal
//!   text, which is how to write a default that looks like a placeholder name;
//! - `{{` and `}}` are literal braces.
//!
//! A resolved JSON string is inserted as its text, a number or boolean as its JSON text, an
//! object or array as its compact JSON text; JSON `null` counts as no value.

use std::fmt;
use std::io::Write as _;

use serde_json::Value;

/// One step of a dot path into a JSON value (`items.0` is `Key("items"), Index(0)`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// An object key.
    Key(String),
    /// A segment written in canonical decimal digits: an index into an array, or the same
    /// digits as a key of an object.
    Index(usize),
}

/// A placeholder source, resolved against a [`Scope`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// `{1}` … `{9}`: the text matched by the n-th `*` of the route's pattern (1-based).
    Capture(usize),
    /// `{channel}`: the whole Redis channel name.
    Channel,
    /// `{payload…}`: a field of the payload parsed as JSON (an empty path is the whole payload).
    Payload(Vec<PathSegment>),
    /// `{claims…}`: a claim of the connection's token (an empty path is every claim).
    Claims(Vec<PathSegment>),
    /// `{topic}`: the topic the frame is sent on.
    Topic,
    /// `{seq}`: the per-topic sequence number of the frame.
    Seq,
    /// `{now}`: the current time, RFC 3339 UTC with milliseconds.
    Now,
    /// `{connection_id}`: the id of the connection (welcome frame).
    ConnectionId,
    /// `{epoch}`: the epoch positions are valid in (welcome frame), for clients that resume.
    Epoch,
    /// `{user}`: the connection's verified user (inbound channels).
    User,
}

impl fmt::Display for Placeholder {
    /// The placeholder's name as written inside the braces, e.g. `payload.items.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Capture(n) => write!(f, "{n}"),
            Placeholder::Channel => f.write_str("channel"),
            Placeholder::Payload(path) => write_rooted_path(f, "payload", path),
            Placeholder::Claims(path) => write_rooted_path(f, "claims", path),
            Placeholder::Topic => f.write_str("topic"),
            Placeholder::Seq => f.write_str("seq"),
            Placeholder::Now => f.write_str("now"),
            Placeholder::ConnectionId => f.write_str("connection_id"),
            Placeholder::Epoch => f.write_str("epoch"),
            Placeholder::User => f.write_str("user"),
        }
    }
}

fn write_rooted_path(f: &mut fmt::Formatter<'_>, root: &str, path: &[PathSegment]) -> fmt::Result {
    f.write_str(root)?;
    for segment in path {
        f.write_str(".")?;
        write_segment(f, segment)?;
    }
    Ok(())
}

fn write_segment(f: &mut impl fmt::Write, segment: &PathSegment) -> fmt::Result {
    match segment {
        PathSegment::Key(key) => f.write_str(key),
        PathSegment::Index(index) => write!(f, "{index}"),
    }
}

/// The dot-path text of `path`, e.g. `items.0` (for summaries and messages).
pub(crate) fn path_text(path: &[PathSegment]) -> String {
    let mut out = String::new();
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        // Writing into a String cannot fail.
        let _ = write_segment(&mut out, segment);
    }
    out
}

/// Parses a dot path such as `a.b.0`; every segment must be non-empty.
pub(crate) fn parse_path(text: &str) -> Result<Vec<PathSegment>, TemplateError> {
    text.split('.')
        .map(|segment| {
            if segment.is_empty() {
                Err(TemplateError::BadPath(text.to_owned()))
            } else {
                Ok(parse_segment(segment))
            }
        })
        .collect()
}

fn parse_segment(segment: &str) -> PathSegment {
    // Only canonical decimal numbers become indexes, so that `007` stays the key `007`
    // and an index turned back into text is the segment as written.
    let canonical = segment.bytes().all(|b| b.is_ascii_digit())
        && (segment == "0" || !segment.starts_with('0'));
    match segment.parse::<usize>() {
        Ok(index) if canonical => PathSegment::Index(index),
        _ => PathSegment::Key(segment.to_owned()),
    }
}

/// Which placeholders a template may use where it appears.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allowed {
    /// The number of `*` in the route's pattern (0 for channel routes): `{1}` … `{captures}`.
    pub captures: usize,
    /// `{channel}`.
    pub channel: bool,
    /// `{payload…}`.
    pub payload: bool,
    /// `{claims…}`.
    pub claims: bool,
    /// `{topic}`.
    pub topic: bool,
    /// `{seq}`.
    pub seq: bool,
    /// `{now}`.
    pub now: bool,
    /// `{connection_id}`.
    pub connection_id: bool,
    /// `{epoch}`.
    pub epoch: bool,
    /// `{user}`.
    pub user: bool,
}

impl Allowed {
    fn check(&self, placeholder: &Placeholder) -> Result<(), TemplateError> {
        let available = match placeholder {
            Placeholder::Capture(index) if self.captures == 0 => {
                return Err(TemplateError::NoCaptures(*index));
            }
            Placeholder::Capture(index) if *index > self.captures => {
                return Err(TemplateError::CaptureOutOfRange {
                    index: *index,
                    captures: self.captures,
                });
            }
            Placeholder::Capture(_) => true,
            Placeholder::Channel => self.channel,
            Placeholder::Payload(_) => self.payload,
            Placeholder::Claims(_) => self.claims,
            Placeholder::Topic => self.topic,
            Placeholder::Seq => self.seq,
            Placeholder::Now => self.now,
            Placeholder::ConnectionId => self.connection_id,
            Placeholder::Epoch => self.epoch,
            Placeholder::User => self.user,
        };
        if available {
            Ok(())
        } else {
            Err(TemplateError::NotAvailable(placeholder.to_string()))
        }
    }
}

/// The values placeholders resolve to; `None` (and an index past `captures`) means "no value".
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope<'a> {
    /// The Redis channel the message came from.
    pub channel: &'a str,
    /// The texts matched by the pattern's `*`, in order (`captures[0]` is `{1}`).
    pub captures: &'a [&'a str],
    /// The payload parsed as JSON; `None` when it is not JSON (or was not parsed).
    pub payload: Option<&'a Value>,
    /// The connection's token claims.
    pub claims: Option<&'a Value>,
    /// The topic being rendered for.
    pub topic: Option<&'a str>,
    /// The frame's sequence number on its topic.
    pub seq: Option<u64>,
    /// The current time, already formatted.
    pub now: Option<&'a str>,
    /// The connection's id.
    pub connection_id: Option<&'a str>,
    /// The epoch positions are valid in.
    pub epoch: Option<&'a str>,
    /// The connection's verified user.
    pub user: Option<&'a str>,
}

/// A resolved placeholder value, borrowed from the scope or the template.
enum Resolved<'a> {
    Text(&'a str),
    Json(&'a Value),
    Number(u64),
}

impl Resolved<'_> {
    fn push_to(&self, out: &mut String) -> Option<()> {
        use std::fmt::Write as _;
        match self {
            Resolved::Text(text) => out.push_str(text),
            Resolved::Json(Value::String(text)) => out.push_str(text),
            Resolved::Json(value) => write!(out, "{value}").ok()?,
            Resolved::Number(n) => write!(out, "{n}").ok()?,
        }
        Some(())
    }

    fn to_value(&self) -> Value {
        match self {
            Resolved::Text(text) => Value::String((*text).to_owned()),
            Resolved::Json(value) => (*value).clone(),
            Resolved::Number(n) => Value::from(*n),
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) -> Option<()> {
        match self {
            Resolved::Text(text) => write_json_string(out, text),
            Resolved::Json(value) => serde_json::to_writer(&mut *out, value).ok()?,
            Resolved::Number(n) => write!(out, "{n}").ok()?,
        }
        Some(())
    }
}

fn resolve<'a>(placeholder: &Placeholder, scope: &Scope<'a>) -> Option<Resolved<'a>> {
    match placeholder {
        Placeholder::Capture(index) => scope
            .captures
            .get(index.checked_sub(1)?)
            .map(|text| Resolved::Text(text)),
        Placeholder::Channel => Some(Resolved::Text(scope.channel)),
        Placeholder::Payload(path) => lookup(scope.payload?, path).map(Resolved::Json),
        Placeholder::Claims(path) => lookup(scope.claims?, path).map(Resolved::Json),
        Placeholder::Topic => scope.topic.map(Resolved::Text),
        Placeholder::Seq => scope.seq.map(Resolved::Number),
        Placeholder::Now => scope.now.map(Resolved::Text),
        Placeholder::ConnectionId => scope.connection_id.map(Resolved::Text),
        Placeholder::Epoch => scope.epoch.map(Resolved::Text),
        Placeholder::User => scope.user.map(Resolved::Text),
    }
}

/// Follows `path` into `root`; `None` when a step is missing or the value found is `null`.
pub(crate) fn lookup<'a>(root: &'a Value, path: &[PathSegment]) -> Option<&'a Value> {
    let mut value = root;
    for segment in path {
        value = match (segment, value) {
            (PathSegment::Key(key), Value::Object(map)) => map.get(key)?,
            (PathSegment::Index(index), Value::Array(items)) => items.get(*index)?,
            (PathSegment::Index(index), Value::Object(map)) => map.get(&index.to_string())?,
            _ => return None,
        };
    }
    (!value.is_null()).then_some(value)
}

/// One alternative of a `{a|b|text}` expression.
#[derive(Clone, Debug)]
enum Alternative {
    Placeholder(Placeholder),
    Text(String),
}

/// A piece of a compiled template.
#[derive(Clone, Debug)]
enum Part {
    Literal(String),
    /// A `{...}` expression: its alternatives, tried in order (never empty; the first one is
    /// always a placeholder).
    Expr(Vec<Alternative>),
}

/// Resolves the first alternative that has a value.
fn first_resolved<'a>(alternatives: &'a [Alternative], scope: &Scope<'a>) -> Option<Resolved<'a>> {
    alternatives
        .iter()
        .find_map(|alternative| match alternative {
            Alternative::Placeholder(placeholder) => resolve(placeholder, scope),
            Alternative::Text(text) => Some(Resolved::Text(text)),
        })
}

/// A compiled string template like `job:{1}` or `{payload.event|job_update}`.
#[derive(Clone, Debug)]
pub struct Template {
    /// The text as written in the routing file.
    source: String,
    /// Literal text and expressions, adjacent literals merged.
    parts: Vec<Part>,
}

impl Template {
    /// Compiles `source`, checking every placeholder against `allowed`.
    pub fn compile(source: &str, allowed: &Allowed) -> Result<Template, TemplateError> {
        Ok(Template {
            source: source.to_owned(),
            parts: parse(source, allowed)?,
        })
    }

    /// A template that renders `text` as it is (braces included).
    pub(crate) fn literal(text: &str) -> Template {
        let parts = if text.is_empty() {
            Vec::new()
        } else {
            vec![Part::Literal(text.to_owned())]
        };
        Template {
            source: text.replace('{', "{{").replace('}', "}}"),
            parts,
        }
    }

    /// The text as written in the routing file (for `check` output and logs).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether some placeholder reads the payload.
    pub fn needs_payload(&self) -> bool {
        self.placeholders()
            .any(|placeholder| matches!(placeholder, Placeholder::Payload(_)))
    }

    /// Whether some placeholder reads the connection's claims.
    pub fn needs_claims(&self) -> bool {
        self.placeholders()
            .any(|placeholder| matches!(placeholder, Placeholder::Claims(_)))
    }

    /// Every placeholder the template reads, alternatives included.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Expr(alternatives) => Some(alternatives),
                Part::Literal(_) => None,
            })
            .flatten()
            .filter_map(|alternative| match alternative {
                Alternative::Placeholder(placeholder) => Some(placeholder),
                Alternative::Text(_) => None,
            })
    }

    /// The rendered text when the template has no placeholder (for fast paths).
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// The literal text every rendering starts with (before the first placeholder).
    pub fn leading_literal(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(text)) => text,
            _ => "",
        }
    }

    /// Interpolates; `None` when some placeholder has no value and no alternative has one.
    pub fn render(&self, scope: &Scope) -> Option<String> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Expr(alternatives) => {
                    first_resolved(alternatives, scope)?.push_to(&mut out)?
                }
            }
        }
        Some(out)
    }

    /// The resolved JSON value, with its type, when the template is exactly one `{...}`
    /// expression (a literal alternative gives a JSON string); `None` otherwise or when
    /// nothing resolves.
    pub fn render_value(&self, scope: &Scope) -> Option<Value> {
        match self.parts.as_slice() {
            [Part::Expr(alternatives)] => Some(first_resolved(alternatives, scope)?.to_value()),
            _ => None,
        }
    }

    /// The exactly-one-expression case of [`Template::render_value`], written as JSON.
    fn write_typed(&self, scope: &Scope, out: &mut Vec<u8>) -> Option<()> {
        match self.parts.as_slice() {
            [Part::Expr(alternatives)] => first_resolved(alternatives, scope)?.write_json(out),
            _ => None,
        }
    }

    fn is_single_expr(&self) -> bool {
        matches!(self.parts.as_slice(), [Part::Expr(_)])
    }

    /// Matches a topic against this (topic) template, in reverse.
    ///
    /// Literal parts must match exactly and each `{...}` expression matches a non-empty run
    /// of text. Literal parts are placed leftmost (as a glob matcher does), so
    /// `a:{1}:{2}` against `a:x:y:z` gives `{1}` = `x` and `{2}` = `y:z`; several
    /// expressions side by side (`{1}{2}`) take one character each except the last.
    /// This finds a match whenever one exists, in time linear in the topic per literal.
    ///
    /// An expression made of one placeholder binds it (captures also go to `captures`; the
    /// same capture twice must match the same text). An expression with alternatives matches
    /// any text but binds nothing, since which alternative produced the text is unknown.
    pub fn match_topic(&self, topic: &str) -> Option<TopicMatch> {
        let mut matched = TopicMatch {
            captures: vec![None; 9],
            bound: Vec::new(),
        };
        let parts = &self.parts;
        let mut pos = 0;
        let mut i = 0;
        while i < parts.len() {
            let start = i;
            while let Some(Part::Expr(_)) = parts.get(i) {
                i += 1;
            }
            let run = &parts[start..i];
            if run.is_empty() {
                // A literal with no expression before it: anchored at `pos`.
                if let Some(Part::Literal(literal)) = parts.get(i) {
                    if !topic.get(pos..)?.starts_with(literal.as_str()) {
                        return None;
                    }
                    pos += literal.len();
                }
                i += 1;
                continue;
            }
            // Each expression of the run needs at least one character.
            let min_end = advance_chars(topic, pos, run.len())?;
            let end = match parts.get(i) {
                None => topic.len(),
                Some(Part::Literal(literal)) if i + 1 == parts.len() => {
                    // The last literal is anchored at the end of the topic.
                    let literal_start = topic.len().checked_sub(literal.len())?;
                    if literal_start < min_end || topic.get(literal_start..)? != literal {
                        return None;
                    }
                    literal_start
                }
                Some(Part::Literal(literal)) => {
                    min_end + topic.get(min_end..)?.find(literal.as_str())?
                }
                Some(Part::Expr(_)) => return None,
            };
            bind_run(run, topic.get(pos..end)?, &mut matched)?;
            pos = end;
        }
        (pos == topic.len()).then_some(matched)
    }
}

/// The byte index `count` characters after `pos`, if the text has that many.
fn advance_chars(text: &str, pos: usize, count: usize) -> Option<usize> {
    let rest = text.get(pos..)?;
    let mut indices = rest
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(rest.len()));
    indices.nth(count).map(|i| pos + i)
}

/// Splits `text` over the expressions of `run` (one character each, the rest to the last).
fn bind_run(run: &[Part], text: &str, matched: &mut TopicMatch) -> Option<()> {
    let mut rest = text;
    for (n, part) in run.iter().enumerate() {
        let piece = if n + 1 == run.len() {
            rest
        } else {
            let width = rest.chars().next()?.len_utf8();
            let (piece, tail) = rest.split_at(width);
            rest = tail;
            piece
        };
        if let Part::Expr(alternatives) = part
            && let [Alternative::Placeholder(placeholder)] = alternatives.as_slice()
        {
            if let Placeholder::Capture(index) = placeholder {
                let slot = matched.captures.get_mut(index.checked_sub(1)?)?;
                match slot {
                    Some(previous) if previous != piece => return None,
                    _ => *slot = Some(piece.to_owned()),
                }
            }
            matched.bound.push((placeholder.clone(), piece.to_owned()));
        }
    }
    Some(())
}

/// The result of [`Template::match_topic`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMatch {
    /// Always 9 entries: `captures[0]` is the text of `{1}`, `None` when the template has no
    /// such capture.
    pub captures: Vec<Option<String>>,
    /// Every single-placeholder expression, in order, and the text it matched.
    pub bound: Vec<(Placeholder, String)>,
}

/// Parses a template's text into parts.
fn parse(source: &str, allowed: &Allowed) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = source.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.next_if(|&(_, next)| next == '{').is_some() => literal.push('{'),
            '}' if chars.next_if(|&(_, next)| next == '}').is_some() => literal.push('}'),
            '}' => return Err(TemplateError::UnmatchedClose(source.to_owned())),
            '{' => {
                let start = i + 1;
                let end = loop {
                    match chars.next() {
                        Some((j, '}')) => break j,
                        Some((_, '{')) => return Err(TemplateError::NestedOpen(source.to_owned())),
                        Some(_) => {}
                        None => return Err(TemplateError::Unclosed(source.to_owned())),
                    }
                };
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Expr(parse_expr(&source[start..end], allowed)?));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

/// Parses the inside of `{...}`.
fn parse_expr(inner: &str, allowed: &Allowed) -> Result<Vec<Alternative>, TemplateError> {
    if inner.trim().is_empty() {
        return Err(TemplateError::Empty);
    }
    let mut alternatives = Vec::new();
    for (n, raw) in inner.split('|').enumerate() {
        let text = raw.trim();
        let alternative = match parse_name(text)? {
            Some(placeholder) => {
                allowed.check(&placeholder)?;
                Alternative::Placeholder(placeholder)
            }
            None if n == 0 => return Err(TemplateError::Unknown(text.to_owned())),
            None => Alternative::Text(unquote(text).to_owned()),
        };
        alternatives.push(alternative);
    }
    Ok(alternatives)
}

fn unquote(text: &str) -> &str {
    for quote in ['\'', '"'] {
        if let Some(inner) = text
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner;
        }
    }
    text
}

/// The placeholder named `text`; `Ok(None)` when `text` is not a placeholder name.
fn parse_name(text: &str) -> Result<Option<Placeholder>, TemplateError> {
    let placeholder = match text {
        "channel" => Placeholder::Channel,
        "topic" => Placeholder::Topic,
        "seq" => Placeholder::Seq,
        "now" => Placeholder::Now,
        "connection_id" => Placeholder::ConnectionId,
        "epoch" => Placeholder::Epoch,
        "user" => Placeholder::User,
        "payload" => Placeholder::Payload(Vec::new()),
        "claims" => Placeholder::Claims(Vec::new()),
        _ => {
            let mut digits = text.chars();
            if let (Some(digit @ '1'..='9'), None) = (digits.next(), digits.next()) {
                Placeholder::Capture(digit as usize - '0' as usize)
            } else if let Some(path) = text.strip_prefix("payload.") {
                Placeholder::Payload(parse_path(path).map_err(|_| bad_path(text))?)
            } else if let Some(path) = text.strip_prefix("claims.") {
                Placeholder::Claims(parse_path(path).map_err(|_| bad_path(text))?)
            } else {
                return Ok(None);
            }
        }
    };
    Ok(Some(placeholder))
}

fn bad_path(text: &str) -> TemplateError {
    TemplateError::BadPath(text.to_owned())
}

/// Why a template does not compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed `{{` in `{0}` (write `{{{{` for a literal brace)")]
    Unclosed(String),
    /// A `}` that closes nothing.
    #[error("unmatched `}}` in `{0}` (write `}}}}` for a literal brace)")]
    UnmatchedClose(String),
    /// A `{` inside a placeholder.
    #[error("`{{` inside a placeholder in `{0}`")]
    NestedOpen(String),
    /// `{}`.
    #[error("empty placeholder `{{}}`")]
    Empty,
    /// A name that is not a placeholder where one is required.
    #[error(
        "unknown placeholder `{{{0}}}` (expected 1-9, channel, payload.…, claims.…, topic, seq, now, connection_id, epoch or user)"
    )]
    Unknown(String),
    /// A dot path with an empty segment (`payload..x`, `payload.`).
    #[error("empty segment in the path `{0}`")]
    BadPath(String),
    /// `{n}` with n above the number of `*` of the pattern.
    #[error("capture `{{{index}}}` but the pattern has {captures} `*`")]
    CaptureOutOfRange {
        /// The capture used.
        index: usize,
        /// The number of `*` in the pattern.
        captures: usize,
    },
    /// `{n}` where there is no pattern to capture from.
    #[error("capture `{{{0}}}` is not available here (no `*` pattern to capture from)")]
    NoCaptures(usize),
    /// A placeholder that exists but not where it is used.
    #[error("`{{{0}}}` is not available here")]
    NotAvailable(String),
    /// An error in a string of a JSON template, with the path of that string.
    #[error("at `{path}`: {source}")]
    InJson {
        /// Where in the JSON value, e.g. `data.status` or `items[0]`.
        path: String,
        /// The string's own error.
        source: Box<TemplateError>,
    },
}

/// A JSON value whose strings are compiled templates (the config loader builds it so it
/// can keep the file's key order and point each error at its own string).
pub(crate) enum JsonPart {
    /// `null`, a boolean or a number.
    Scalar(Value),
    /// A string.
    Text(Template),
    /// An array.
    Array(Vec<JsonPart>),
    /// An object, in key order.
    Object(Vec<(String, JsonPart)>),
}

/// One step of writing a [`JsonTemplate`].
#[derive(Clone, Debug)]
enum Op {
    /// JSON text written as it is.
    Raw(Vec<u8>),
    /// A string template, interpolated then written as a JSON string.
    Text(Template),
    /// A string that is exactly one `{...}`: its resolved value with its type.
    Typed(Template),
}

/// A JSON template (a format or the welcome frame): any JSON value whose strings are
/// templates; a string that is exactly one `{...}` becomes the resolved JSON value with
/// its type, other strings are interpolated.
///
/// Compiled into a flat list of literal JSON text and holes, so rendering is a single pass
/// of appends into one buffer.
#[derive(Clone, Debug)]
pub struct JsonTemplate {
    ops: Vec<Op>,
    needs_payload: bool,
}

impl JsonTemplate {
    /// Compiles every string of `value` with `allowed`; object keys are literal.
    pub fn compile(value: &Value, allowed: &Allowed) -> Result<JsonTemplate, TemplateError> {
        Ok(JsonTemplate::from_parts(&part_of(value, allowed, "")?))
    }

    pub(crate) fn from_parts(root: &JsonPart) -> JsonTemplate {
        let mut builder = Builder::default();
        builder.emit(root);
        builder.flush();
        let needs_payload = builder.ops.iter().any(|op| match op {
            Op::Text(template) | Op::Typed(template) => template.needs_payload(),
            Op::Raw(_) => false,
        });
        JsonTemplate {
            ops: builder.ops,
            needs_payload,
        }
    }

    /// Whether some string reads the payload.
    pub fn needs_payload(&self) -> bool {
        self.needs_payload
    }

    /// The rendered value; `None` if some placeholder has no value.
    pub fn render(&self, scope: &Scope) -> Option<Value> {
        serde_json::from_slice(&self.render_to_vec(scope)?).ok()
    }

    /// The rendered value serialised as compact JSON; `None` if some placeholder has no value.
    pub fn render_to_vec(&self, scope: &Scope) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        for op in &self.ops {
            match op {
                Op::Raw(bytes) => out.extend_from_slice(bytes),
                Op::Text(template) => write_json_string(&mut out, &template.render(scope)?),
                Op::Typed(template) => template.write_typed(scope, &mut out)?,
            }
        }
        Some(out)
    }
}

fn part_of(value: &Value, allowed: &Allowed, path: &str) -> Result<JsonPart, TemplateError> {
    Ok(match value {
        Value::String(text) => {
            JsonPart::Text(Template::compile(text, allowed).map_err(|source| {
                TemplateError::InJson {
                    path: if path.is_empty() {
                        ".".to_owned()
                    } else {
                        path.to_owned()
                    },
                    source: Box::new(source),
                }
            })?)
        }
        Value::Array(items) => JsonPart::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| part_of(item, allowed, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => JsonPart::Object(
            map.iter()
                .map(|(key, item)| {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    Ok((key.clone(), part_of(item, allowed, &child)?))
                })
                .collect::<Result<_, TemplateError>>()?,
        ),
        scalar => JsonPart::Scalar(scalar.clone()),
    })
}

/// Turns a [`JsonPart`] tree into [`Op`]s, merging literal JSON text.
#[derive(Default)]
struct Builder {
    ops: Vec<Op>,
    raw: Vec<u8>,
}

impl Builder {
    fn flush(&mut self) {
        if !self.raw.is_empty() {
            self.ops.push(Op::Raw(std::mem::take(&mut self.raw)));
        }
    }

    fn emit(&mut self, part: &JsonPart) {
        match part {
            JsonPart::Scalar(value) => self.raw.extend_from_slice(value.to_string().as_bytes()),
            JsonPart::Text(template) => {
                if let Some(text) = template.as_literal() {
                    write_json_string(&mut self.raw, text);
                } else {
                    self.flush();
                    self.ops.push(if template.is_single_expr() {
                        Op::Typed(template.clone())
                    } else {
                        Op::Text(template.clone())
                    });
                }
            }
            JsonPart::Array(items) => {
                self.raw.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.raw.push(b',');
                    }
                    self.emit(item);
                }
                self.raw.push(b']');
            }
            JsonPart::Object(entries) => {
                self.raw.push(b'{');
                for (i, (key, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.raw.push(b',');
                    }
                    write_json_string(&mut self.raw, key);
                    self.raw.push(b':');
                    self.emit(item);
                }
                self.raw.push(b'}');
            }
        }
    }
}

/// Writes `text` as a JSON string literal.
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all() -> Allowed {
        Allowed {
            captures: 3,
            channel: true,
            payload: true,
            claims: true,
            topic: true,
            seq: true,
            now: true,
            connection_id: true,
            epoch: true,
            user: true,
        }
    }

    fn compile(source: &str) -> Template {
        match Template::compile(source, &all()) {
            Ok(template) => template,
            Err(e) => panic!("`{source}` should compile: {e}"),
        }
    }

    fn compile_err(source: &str, allowed: &Allowed) -> String {
        match Template::compile(source, allowed) {
            Ok(template) => panic!("`{source}` should not compile: {template:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn renders_captures_channel_and_literals() {
        let scope = Scope {
            channel: "job:abc:7",
            captures: &["abc", "7"],
            ..Scope::default()
        };
        assert_eq!(
            compile("job:{1}").render(&scope).as_deref(),
            Some("job:abc")
        );
        assert_eq!(compile("{2}-{1}").render(&scope).as_deref(), Some("7-abc"));
        assert_eq!(
            compile("on {channel}").render(&scope).as_deref(),
            Some("on job:abc:7")
        );
        assert_eq!(
            compile("{{x}} {1}").render(&scope).as_deref(),
            Some("{x} abc")
        );
        // A capture the message does not have (the scope holds 2) has no value.
        assert_eq!(compile("{3}").render(&scope), None);
    }

    #[test]
    fn renders_payload_paths_with_array_index() {
        let payload = json!({
            "event": "done",
            "items": [{"id": "first"}, {"id": "second"}],
            "n": 3,
            "ok": true,
            "obj": {"a": 1, "b": [1, 2]},
            "map": {"0": "zero-key"},
            "s": "x\"y",
        });
        let scope = Scope {
            payload: Some(&payload),
            ..Scope::default()
        };
        let render = |source: &str| compile(source).render(&scope);
        assert_eq!(render("{payload.event}").as_deref(), Some("done"));
        assert_eq!(render("{payload.items.1.id}").as_deref(), Some("second"));
        assert_eq!(render("{payload.items.2.id}"), None);
        assert_eq!(render("{payload.map.0}").as_deref(), Some("zero-key"));
        assert_eq!(
            render("n={payload.n} ok={payload.ok}").as_deref(),
            Some("n=3 ok=true")
        );
        assert_eq!(
            render("{payload.obj}").as_deref(),
            Some(r#"{"a":1,"b":[1,2]}"#)
        );
        assert_eq!(render("{payload.s}").as_deref(), Some("x\"y"));
        assert_eq!(render("{payload.event.deeper}"), None);
        // Not JSON: every payload placeholder is unresolvable.
        let no_json = Scope::default();
        assert_eq!(compile("{payload.event}").render(&no_json), None);
    }

    #[test]
    fn alternatives_fall_through_missing_and_null_values() {
        let payload = json!({"status": null, "data": {"status": "running"}, "kind": ""});
        let scope = Scope {
            payload: Some(&payload),
            captures: &["c1"],
            ..Scope::default()
        };
        let render = |source: &str| compile(source).render(&scope);
        assert_eq!(
            render("{payload.event|job_update}").as_deref(),
            Some("job_update")
        );
        assert_eq!(
            render("{payload.status|payload.data.status}").as_deref(),
            Some("running")
        );
        assert_eq!(render("{payload.status}"), None);
        assert_eq!(render("{payload.missing|1}").as_deref(), Some("c1"));
        assert_eq!(render("{payload.n|'1'}").as_deref(), Some("1"));
        assert_eq!(
            render("{payload.n | unknown user }").as_deref(),
            Some("unknown user")
        );
        assert_eq!(render("{payload.n|}").as_deref(), Some(""));
        // An empty string is a value, not a missing one.
        assert_eq!(render("{payload.kind|fallback}").as_deref(), Some(""));
        assert_eq!(render("{payload.a|payload.b}"), None);
    }

    #[test]
    fn render_value_keeps_types() {
        let payload = json!({"n": 3, "obj": {"a": [1]}, "s": "x"});
        let scope = Scope {
            payload: Some(&payload),
            captures: &["c1"],
            seq: Some(42),
            ..Scope::default()
        };
        let value = |source: &str| compile(source).render_value(&scope);
        assert_eq!(value("{payload.n}"), Some(json!(3)));
        assert_eq!(value("{payload.obj}"), Some(json!({"a": [1]})));
        assert_eq!(value("{payload.none|fallback}"), Some(json!("fallback")));
        assert_eq!(value("{1}"), Some(json!("c1")));
        assert_eq!(value("{seq}"), Some(json!(42)));
        assert_eq!(value("n={payload.n}"), None);
        assert_eq!(value("{payload.none}"), None);
    }

    #[test]
    fn literal_templates() {
        assert_eq!(compile("jobs").as_literal(), Some("jobs"));
        assert_eq!(compile("").as_literal(), Some(""));
        assert_eq!(compile("{{a}}").as_literal(), Some("{a}"));
        assert_eq!(compile("job:{1}").as_literal(), None);
        let literal = Template::literal("odd{name}");
        assert_eq!(literal.as_literal(), Some("odd{name}"));
        assert_eq!(literal.source(), "odd{{name}}");
        assert_eq!(compile(literal.source()).as_literal(), Some("odd{name}"));
        assert_eq!(compile("x{1}").source(), "x{1}");
    }

    #[test]
    fn needs_payload_and_claims() {
        assert!(compile("{payload.x}").needs_payload());
        assert!(compile("{1|payload.x}").needs_payload());
        assert!(!compile("{1}").needs_payload());
        assert!(compile("{claims.sub}").needs_claims());
        assert!(!compile("{payload.sub}").needs_claims());
    }

    #[test]
    fn compile_errors() {
        let pattern2 = Allowed {
            captures: 2,
            channel: true,
            payload: true,
            ..Allowed::default()
        };
        assert_eq!(
            compile_err("{foo}", &pattern2),
            compile_err("{foo|bar}", &pattern2)
        );
        assert!(compile_err("{foo}", &pattern2).starts_with("unknown placeholder `{foo}`"));
        assert_eq!(
            compile_err("job:{3}", &pattern2),
            "capture `{3}` but the pattern has 2 `*`"
        );
        assert_eq!(
            compile_err("{payload.x|3}", &pattern2),
            "capture `{3}` but the pattern has 2 `*`"
        );
        assert_eq!(
            compile_err("{1}", &Allowed::default()),
            "capture `{1}` is not available here (no `*` pattern to capture from)"
        );
        assert_eq!(
            compile_err("job:{1", &pattern2),
            "unclosed `{` in `job:{1` (write `{{` for a literal brace)"
        );
        assert_eq!(
            compile_err("a}b", &pattern2),
            "unmatched `}` in `a}b` (write `}}` for a literal brace)"
        );
        assert_eq!(
            compile_err("{a{b}", &pattern2),
            "`{` inside a placeholder in `{a{b}`"
        );
        assert_eq!(compile_err("{}", &pattern2), "empty placeholder `{}`");
        assert_eq!(compile_err("{ }", &pattern2), "empty placeholder `{}`");
        assert_eq!(
            compile_err("{payload..x}", &pattern2),
            "empty segment in the path `payload..x`"
        );
        assert_eq!(
            compile_err("{payload.}", &pattern2),
            "empty segment in the path `payload.`"
        );
        assert_eq!(
            compile_err("{claims.sub}", &pattern2),
            "`{claims.sub}` is not available here"
        );
        assert_eq!(
            compile_err("{seq}", &pattern2),
            "`{seq}` is not available here"
        );
        assert_eq!(
            compile_err("{topic}", &pattern2),
            "`{topic}` is not available here"
        );
        let welcome = Allowed {
            claims: true,
            connection_id: true,
            epoch: true,
            now: true,
            ..Allowed::default()
        };
        assert_eq!(
            compile_err("{payload.x}", &welcome),
            "`{payload.x}` is not available here"
        );
        assert_eq!(
            compile_err("{channel}", &welcome),
            "`{channel}` is not available here"
        );
        assert!(Template::compile("{claims.sub}{connection_id}{now}{epoch}", &welcome).is_ok());
        assert_eq!(
            compile_err("{epoch}", &pattern2),
            "`{epoch}` is not available here"
        );
    }

    #[test]
    fn placeholder_names_and_paths() {
        let Part::Expr(alternatives) = &compile("{payload.items.0.007.x}").parts[0] else {
            panic!("expected an expression");
        };
        let [Alternative::Placeholder(placeholder)] = alternatives.as_slice() else {
            panic!("expected one placeholder");
        };
        assert_eq!(
            placeholder,
            &Placeholder::Payload(vec![
                PathSegment::Key("items".into()),
                PathSegment::Index(0),
                PathSegment::Key("007".into()),
                PathSegment::Key("x".into()),
            ])
        );
        assert_eq!(placeholder.to_string(), "payload.items.0.007.x");
        assert_eq!(path_text(&parse_path("a.1.b").unwrap_or_default()), "a.1.b");
        assert!(parse_path("a..b").is_err());
    }

    #[test]
    fn match_topic_cases() {
        let captures = |m: &TopicMatch| -> Vec<Option<String>> {
            m.captures.iter().take(3).cloned().collect()
        };
        let job = compile("job:{1}");
        let m = job.match_topic("job:abc").expect("job:abc matches");
        assert_eq!(captures(&m), vec![Some("abc".into()), None, None]);
        assert_eq!(m.captures.len(), 9);
        assert_eq!(m.bound, vec![(Placeholder::Capture(1), "abc".to_owned())]);
        assert_eq!(job.match_topic("user:1"), None);
        assert_eq!(job.match_topic("job:"), None);

        let jobs = compile("jobs");
        let m = jobs.match_topic("jobs").expect("literal matches");
        assert!(m.bound.is_empty());
        assert!(m.captures.iter().all(Option::is_none));
        assert_eq!(jobs.match_topic("jobs2"), None);
        assert_eq!(jobs.match_topic("job"), None);

        let two = compile("a:{1}:{2}");
        let m = two.match_topic("a:x:y").expect("two captures");
        assert_eq!(captures(&m), vec![Some("x".into()), Some("y".into()), None]);
        let m = two
            .match_topic("a:x:y:z")
            .expect("the last capture takes the rest");
        assert_eq!(
            captures(&m),
            vec![Some("x".into()), Some("y:z".into()), None]
        );
        assert_eq!(two.match_topic("a:x:"), None);
        assert_eq!(two.match_topic("a::y"), None);

        let suffix = compile("{1}.{2}.done");
        let m = suffix.match_topic("a.b.c.done").expect("anchored suffix");
        assert_eq!(
            captures(&m),
            vec![Some("a".into()), Some("b.c".into()), None]
        );
        assert_eq!(suffix.match_topic("a.b.donex"), None);

        let payload = compile("user:{payload.user_id}/{channel}");
        let m = payload
            .match_topic("user:42/ch")
            .expect("non-capture placeholders");
        assert_eq!(
            m.bound,
            vec![
                (
                    Placeholder::Payload(vec![PathSegment::Key("user_id".into())]),
                    "42".to_owned()
                ),
                (Placeholder::Channel, "ch".to_owned()),
            ]
        );

        let alternatives = compile("t:{payload.id|1}");
        let m = alternatives
            .match_topic("t:x")
            .expect("alternatives match any text");
        assert!(m.bound.is_empty());

        let same = compile("{1}-{1}");
        assert!(same.match_topic("a-a").is_some());
        assert_eq!(same.match_topic("a-b"), None);

        let adjacent = compile("{1}{2}");
        let m = adjacent
            .match_topic("héllo")
            .expect("adjacent placeholders");
        assert_eq!(
            captures(&m),
            vec![Some("h".into()), Some("éllo".into()), None]
        );
        assert_eq!(adjacent.match_topic("é"), None);

        // Long hostile input stays linear.
        let many = compile("{1}a{2}a{3}b");
        let long = "a".repeat(200_000);
        assert_eq!(many.match_topic(&long), None);
    }

    #[test]
    fn json_template_typed_substitution() {
        let allowed = all();
        let value = json!({
            "type": "{payload.event|job_update}",
            "job_id": "{payload.job_id}",
            "status": "{payload.data.status}",
            "data": "{payload.data}",
            "label": "job {payload.job_id} is {payload.data.status}",
            "n": 1.5,
            "list": ["{seq}", "{{lit}}", null, true],
            "topic": "{topic}",
        });
        let template = match JsonTemplate::compile(&value, &allowed) {
            Ok(template) => template,
            Err(e) => panic!("compiles: {e}"),
        };
        assert!(template.needs_payload());
        let payload = json!({"job_id": 7, "data": {"status": "running", "pct": 50}});
        let scope = Scope {
            payload: Some(&payload),
            topic: Some("job:7"),
            seq: Some(3),
            ..Scope::default()
        };
        let expected = json!({
            "type": "job_update",
            "job_id": 7,
            "status": "running",
            "data": {"status": "running", "pct": 50},
            "label": "job 7 is running",
            "n": 1.5,
            "list": [3, "{lit}", null, true],
            "topic": "job:7",
        });
        assert_eq!(template.render(&scope), Some(expected.clone()));
        let bytes = template.render_to_vec(&scope).unwrap_or_default();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).ok(), Some(expected));

        // A missing field without fallback makes the whole frame unresolvable.
        let partial = json!({"data": {"status": "x"}});
        let scope = Scope {
            payload: Some(&partial),
            ..scope
        };
        assert_eq!(template.render(&scope), None);
        assert_eq!(template.render_to_vec(&scope), None);
    }

    #[test]
    fn json_template_escapes_and_orders() {
        let part = JsonPart::Object(vec![
            ("z".to_owned(), JsonPart::Text(compile("{payload.s}"))),
            ("a\"\n".to_owned(), JsonPart::Text(compile("<{payload.s}>"))),
            ("c".to_owned(), JsonPart::Scalar(json!(null))),
        ]);
        let template = JsonTemplate::from_parts(&part);
        assert!(template.needs_payload());
        let payload = json!({"s": "q\"\\\u{1}é"});
        let scope = Scope {
            payload: Some(&payload),
            ..Scope::default()
        };
        let bytes = template.render_to_vec(&scope).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            r#"{"z":"q\"\\\u0001é","a\"\n":"<q\"\\\u0001é>","c":null}"#
        );
        let literal = JsonTemplate::from_parts(&JsonPart::Text(compile("plain")));
        assert!(!literal.needs_payload());
        assert_eq!(literal.render(&Scope::default()), Some(json!("plain")));
    }

    #[test]
    fn json_template_errors_name_the_path() {
        let allowed = Allowed {
            payload: true,
            ..Allowed::default()
        };
        let error = JsonTemplate::compile(
            &json!({"data": {"items": ["ok", "{claims.sub}"]}}),
            &allowed,
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("at `data.items[1]`: `{claims.sub}` is not available here")
        );
        let error = JsonTemplate::compile(&json!("{nope}"), &allowed)
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.starts_with("at `.`: unknown placeholder `{nope}`")));
    }

    #[test]
    fn claims_and_welcome_scope() {
        let claims = json!({"sub": "42", "roles": ["a", "b"]});
        let scope = Scope {
            claims: Some(&claims),
            connection_id: Some("c-1"),
            epoch: Some("e-1"),
            now: Some("2026-01-01T00:00:00.000Z"),
            ..Scope::default()
        };
        let template = match JsonTemplate::compile(
            &json!({"user": "{claims.sub}", "roles": "{claims.roles}", "id": "{connection_id}", "epoch": "{epoch}", "at": "{now}"}),
            &all(),
        ) {
            Ok(template) => template,
            Err(e) => panic!("compiles: {e}"),
        };
        assert_eq!(
            template.render(&scope),
            Some(
                json!({"user": "42", "roles": ["a", "b"], "id": "c-1", "epoch": "e-1", "at": "2026-01-01T00:00:00.000Z"})
            )
        );
        assert_eq!(
            compile("{claims.roles.1}").render(&scope).as_deref(),
            Some("b")
        );
    }
}
