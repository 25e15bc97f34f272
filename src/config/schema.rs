//! The keys of the routing file, section by section: the one place that names each key, its
//! type, its default and what it means. The section readers take their key lists and their
//! defaults from here (a default is YAML text, read by the key's own reader as if the file
//! held it, so it is checked like any value); a test holds docs/routing.md to the same keys,
//! types and defaults.

use super::yaml::{Ctx, Fields, Node};

/// One key of a section.
pub(super) struct Key {
    pub(super) name: &'static str,
    /// The type, as docs/routing.md writes it.
    pub(super) kind: &'static str,
    pub(super) default: Default,
    pub(super) meaning: &'static str,
}

/// What holds when a key is not in the file.
pub(super) enum Default {
    /// This value, as YAML text.
    Value(&'static str),
    /// Something that is not a value of the key (a required key, a section that is off),
    /// in docs/routing.md's words.
    Otherwise(&'static str),
}

/// The keys a section accepts, for its unknown-key errors.
pub(super) fn names(keys: &[Key]) -> Vec<&'static str> {
    keys.iter().map(|key| key.name).collect()
}

/// A key's node in the file, or its default's.
pub(super) enum Value<'n> {
    Given(&'n Node),
    Default(Node),
}

impl std::ops::Deref for Value<'_> {
    type Target = Node;

    fn deref(&self) -> &Node {
        match self {
            Value::Given(node) => node,
            Value::Default(node) => node,
        }
    }
}

/// The node of key `name` of `keys` in `section`, or its default; `None` when the key is
/// absent and has no default value.
pub(super) fn value<'n>(
    ctx: &mut Ctx,
    section: &Fields<'n>,
    keys: &[Key],
    name: &str,
) -> Option<Value<'n>> {
    if let Some(node) = section.get(name) {
        return Some(Value::Given(node));
    }
    let key = keys.iter().find(|key| key.name == name)?;
    match key.default {
        // The tables' defaults are valid YAML (a test reads every one).
        Default::Value(text) => ctx.load_tree(text).ok().map(Value::Default),
        Default::Otherwise(_) => None,
    }
}

/// Every section as text: its heading, then one line per key.
pub(super) fn reference() -> String {
    let mut out = String::new();
    for (heading, keys) in SECTIONS {
        let title = heading.trim_start_matches('#').trim().replace('`', "");
        out.push_str(&format!("{title}\n"));
        for key in *keys {
            let default = match key.default {
                Default::Value(text) => format!("default {text}"),
                Default::Otherwise(text) => text.replace('`', ""),
            };
            out.push_str(&format!(
                "  {}: {} ({}): {}\n",
                key.name,
                key.kind.replace('`', ""),
                default,
                key.meaning
            ));
        }
    }
    out
}

pub(super) const TOP: &[Key] = &[
    Key {
        name: "listen",
        kind: "`IP:PORT`",
        default: Default::Value("127.0.0.1:8080"),
        meaning: "the HTTP and WebSocket address",
    },
    Key {
        name: "redis",
        kind: "mapping",
        default: Default::Otherwise("see below"),
        meaning: "the Redis connection",
    },
    Key {
        name: "websocket",
        kind: "mapping",
        default: Default::Otherwise("see below"),
        meaning: "client limits and behaviour",
    },
    Key {
        name: "auth",
        kind: "mapping",
        default: Default::Otherwise("absent: `mode: none`"),
        meaning: "who connections are",
    },
    Key {
        name: "admin",
        kind: "mapping",
        default: Default::Otherwise("absent: nobody"),
        meaning: "who may use /ws/stats and /api/publish",
    },
    Key {
        name: "shutdown_grace",
        kind: "duration",
        default: Default::Value("10s"),
        meaning: "how long a graceful shutdown may take",
    },
    Key {
        name: "trusted_proxies",
        kind: "list of addresses or networks (a single string is a list of one)",
        default: Default::Value("[]"),
        meaning: "reverse proxies whose X-Forwarded-For is believed",
    },
    Key {
        name: "console",
        kind: "boolean",
        default: Default::Value("true"),
        meaning: "whether GET / serves the console page",
    },
    Key {
        name: "instance",
        kind: "string",
        default: Default::Otherwise("the host name"),
        meaning: "this bridge's name among several behind one load balancer",
    },
    Key {
        name: "routes",
        kind: "list",
        default: Default::Otherwise("required, at least one"),
        meaning: "the routes",
    },
    Key {
        name: "history_max_bytes",
        kind: "integer ≥ 1",
        default: Default::Value("67108864"),
        meaning: "the most bytes the frames retained by `history` take in the whole process",
    },
    Key {
        name: "inbound",
        kind: "list",
        default: Default::Value("[]"),
        meaning: "client frames published to Redis",
    },
];

pub(super) const REDIS: &[Key] = &[
    Key {
        name: "url",
        kind: "string",
        default: Default::Value("redis://127.0.0.1:6379/0"),
        meaning: "redis:// or rediss://, with an ACL user and password if needed; never logged with the password",
    },
    Key {
        name: "sentinel",
        kind: "mapping",
        default: Default::Otherwise("none"),
        meaning: "ask these sentinels for the master",
    },
    Key {
        name: "cluster",
        kind: "mapping",
        default: Default::Otherwise("none"),
        meaning: "the nodes of a Redis Cluster; excludes sentinel",
    },
    Key {
        name: "tls",
        kind: "mapping",
        default: Default::Otherwise("none"),
        meaning: "what a rediss:// connection trusts and presents",
    },
    Key {
        name: "heartbeat_interval",
        kind: "duration > 0",
        default: Default::Value("5s"),
        meaning: "how often the bridge publishes a heartbeat to itself",
    },
    Key {
        name: "heartbeat_timeout",
        kind: "duration > `heartbeat_interval`",
        default: Default::Value("15s"),
        meaning: "no heartbeat back for this long: the subscription is replaced",
    },
];

pub(super) const SENTINEL: &[Key] = &[
    Key {
        name: "master",
        kind: "string",
        default: Default::Otherwise("required"),
        meaning: "the master's name in the sentinels' monitor line",
    },
    Key {
        name: "nodes",
        kind: "list",
        default: Default::Otherwise("required, at least one"),
        meaning: "redis://HOST:PORT of each sentinel, asked in order",
    },
    Key {
        name: "password",
        kind: "string",
        default: Default::Otherwise("none"),
        meaning: "the sentinels' own password",
    },
];

pub(super) const CLUSTER: &[Key] = &[Key {
    name: "nodes",
    kind: "list",
    default: Default::Otherwise("required, at least one"),
    meaning: "redis://HOST:PORT of each node, tried in order",
}];

pub(super) const TLS: &[Key] = &[
    Key {
        name: "ca_file",
        kind: "path",
        default: Default::Otherwise("the system roots"),
        meaning: "PEM certificates the server's chain must lead to",
    },
    Key {
        name: "cert_file",
        kind: "path",
        default: Default::Otherwise("none"),
        meaning: "the client certificate for mutual TLS",
    },
    Key {
        name: "key_file",
        kind: "path",
        default: Default::Otherwise("none"),
        meaning: "the client certificate's private key",
    },
];

pub(super) const WEBSOCKET: &[Key] = &[
    Key {
        name: "path",
        kind: "string starting with `/`, without `?`, `#` or spaces",
        default: Default::Value("/ws"),
        meaning: "the WebSocket endpoint",
    },
    Key {
        name: "allowed_origins",
        kind: "list of strings",
        default: Default::Value("[]"),
        meaning: "exact Origin values allowed to connect (empty: any)",
    },
    Key {
        name: "max_connections",
        kind: "integer ≥ 1",
        default: Default::Value("10000"),
        meaning: "open connections above which upgrades get 503",
    },
    Key {
        name: "max_connections_per_user",
        kind: "integer ≥ 1",
        default: Default::Value("100"),
        meaning: "open connections of one user above which upgrades get 429",
    },
    Key {
        name: "max_connections_per_ip",
        kind: "integer ≥ 1",
        default: Default::Value("1000"),
        meaning: "open connections from one address (IPv6: its /64) above which upgrades get 429",
    },
    Key {
        name: "max_frame_bytes",
        kind: "integer ≥ 128",
        default: Default::Value("65536"),
        meaning: "the largest inbound message; above it, close 1009",
    },
    Key {
        name: "max_subscriptions",
        kind: "integer ≥ 1",
        default: Default::Value("1000"),
        meaning: "topics one connection may hold",
    },
    Key {
        name: "send_queue",
        kind: "integer ≥ 1",
        default: Default::Value("256"),
        meaning: "route frames queued per connection while its socket is full",
    },
    Key {
        name: "slow_client",
        kind: "`disconnect` or `drop_oldest`",
        default: Default::Value("disconnect"),
        meaning: "what a full queue does",
    },
    Key {
        name: "ping_interval",
        kind: "duration > 0",
        default: Default::Value("30s"),
        meaning: "how often the bridge pings each client",
    },
    Key {
        name: "idle_timeout",
        kind: "duration > `ping_interval`",
        default: Default::Value("120s"),
        meaning: "nothing received for this long: close 1001",
    },
    Key {
        name: "client_rate",
        kind: "rate",
        default: Default::Value("20/s"),
        meaning: "commands per connection",
    },
    Key {
        name: "connect_rate_per_ip",
        kind: "rate",
        default: Default::Otherwise("absent: no limit"),
        meaning: "new connections per client address",
    },
    Key {
        name: "handshake_timeout",
        kind: "duration > 0",
        default: Default::Value("10s"),
        meaning: "how long a client may take to send its request head",
    },
    Key {
        name: "welcome",
        kind: "`native` or a JSON template",
        default: Default::Value("native"),
        meaning: "the first frame of a connection",
    },
    Key {
        name: "compression",
        kind: "mapping",
        default: Default::Otherwise("see below"),
        meaning: "permessage-deflate (RFC 7692)",
    },
];

pub(super) const COMPRESSION: &[Key] = &[
    Key {
        name: "enabled",
        kind: "boolean",
        default: Default::Value("true"),
        meaning: "accept a client's permessage-deflate offer",
    },
    Key {
        name: "min_bytes",
        kind: "integer ≥ 0",
        default: Default::Value("512"),
        meaning: "route frames with a shorter payload go plain",
    },
    Key {
        name: "level",
        kind: "integer 0–9",
        default: Default::Value("1"),
        meaning: "the deflate level",
    },
];

pub(super) const AUTH: &[Key] = &[
    Key {
        name: "mode",
        kind: "`required`, `optional` or `none`",
        default: Default::Otherwise("required when the section is there"),
        meaning: "whether a credential is needed",
    },
    Key {
        name: "jwt",
        kind: "mapping",
        default: Default::Otherwise("absent: JWTs are refused"),
        meaning: "how tokens are verified",
    },
    Key {
        name: "user_claim",
        kind: "claim name or dot path",
        default: Default::Value("sub"),
        meaning: "the claim naming the user",
    },
    Key {
        name: "roles_claim",
        kind: "claim name or dot path",
        default: Default::Value("roles"),
        meaning: "the claim with the roles",
    },
    Key {
        name: "api_keys",
        kind: "list of `{sha256, user, roles}`",
        default: Default::Value("[]"),
        meaning: "keys for services (X-API-Key)",
    },
];

pub(super) const JWT: &[Key] = &[
    Key {
        name: "algorithms",
        kind: "list (or one) of `HS256` `HS384` `HS512` `RS256` `RS384` `RS512` `PS256` `PS384` `PS512` `ES256` `ES384` `EdDSA`",
        default: Default::Otherwise("required"),
        meaning: "accepted alg values, all of one key family",
    },
    Key {
        name: "secret",
        kind: "string",
        default: Default::Otherwise("—"),
        meaning: "the HMAC secret for HS*",
    },
    Key {
        name: "secret_file",
        kind: "path",
        default: Default::Otherwise("—"),
        meaning: "the HMAC secret, from a file",
    },
    Key {
        name: "public_key_file",
        kind: "path",
        default: Default::Otherwise("—"),
        meaning: "the issuer's PEM public key for RS*/PS*/ES*/EdDSA",
    },
    Key {
        name: "issuer",
        kind: "string, list or `null`",
        default: Default::Value("null"),
        meaning: "when set, the token's iss must be one of them",
    },
    Key {
        name: "audience",
        kind: "string, list or `null`",
        default: Default::Value("null"),
        meaning: "when set, the token's aud must name one of them",
    },
    Key {
        name: "leeway",
        kind: "duration",
        default: Default::Value("30s"),
        meaning: "clock skew tolerated on exp and nbf",
    },
];

pub(super) const API_KEY: &[Key] = &[
    Key {
        name: "sha256",
        kind: "64 hex digits",
        default: Default::Otherwise("required"),
        meaning: "the SHA-256 of the key",
    },
    Key {
        name: "user",
        kind: "non-empty string",
        default: Default::Otherwise("required"),
        meaning: "the user the key authenticates as",
    },
    Key {
        name: "roles",
        kind: "list of strings",
        default: Default::Value("[]"),
        meaning: "its roles",
    },
];

pub(super) const ADMIN: &[Key] = &[
    Key {
        name: "roles",
        kind: "list of strings",
        default: Default::Value("[]"),
        meaning: "a credential with one of these roles is an administrator",
    },
    Key {
        name: "token",
        kind: "string, at least 16 bytes",
        default: Default::Otherwise("—"),
        meaning: "a static bearer token for scripts",
    },
    Key {
        name: "token_file",
        kind: "path",
        default: Default::Otherwise("—"),
        meaning: "the static bearer token, from a file",
    },
];

pub(super) const ROUTE: &[Key] = &[
    Key {
        name: "name",
        kind: "non-empty string, unique",
        default: Default::Otherwise("required"),
        meaning: "used in logs and metric labels",
    },
    Key {
        name: "channel",
        kind: "string without `*`",
        default: Default::Otherwise("one of `channel`/`pattern`"),
        meaning: "SUBSCRIBE to this exact channel",
    },
    Key {
        name: "pattern",
        kind: "Redis glob",
        default: Default::Otherwise("one of `channel`/`pattern`"),
        meaning: "PSUBSCRIBE; each * is a capture",
    },
    Key {
        name: "match",
        kind: "mapping of payload dot paths to a glob or a list of globs",
        default: Default::Otherwise("absent: every message"),
        meaning: "the messages the route takes",
    },
    Key {
        name: "topic",
        kind: "template, or a non-empty list of distinct templates",
        default: Default::Otherwise("the route name"),
        meaning: "the topics a message is sent on",
    },
    Key {
        name: "delivery",
        kind: "`subscribe` or `auto`",
        default: Default::Value("subscribe"),
        meaning: "to subscribed connections, or to every admitted one",
    },
    Key {
        name: "audience",
        kind: "audience",
        default: Default::Value("all"),
        meaning: "who may receive the route's frames",
    },
    Key {
        name: "format",
        kind: "`envelope`, `raw` or a JSON template",
        default: Default::Value("envelope"),
        meaning: "what the frame looks like",
    },
    Key {
        name: "type",
        kind: "template",
        default: Default::Otherwise("the route name"),
        meaning: "the envelope's type",
    },
    Key {
        name: "history",
        kind: "mapping",
        default: Default::Otherwise("absent: nothing retained"),
        meaning: "the recent frames kept per topic for replays",
    },
    Key {
        name: "conflate",
        kind: "boolean",
        default: Default::Value("false"),
        meaning: "a connection's queue holds at most one unsent frame per topic, the newest",
    },
    Key {
        name: "presence",
        kind: "mapping",
        default: Default::Otherwise("absent: no presence"),
        meaning: "who subscribes to the route's topics, over every bridge",
    },
];

pub(super) const HISTORY: &[Key] = &[
    Key {
        name: "size",
        kind: "integer 1–10000",
        default: Default::Otherwise("required"),
        meaning: "the frames kept per topic, the newest",
    },
    Key {
        name: "ttl",
        kind: "duration > 0",
        default: Default::Otherwise("absent: no age limit"),
        meaning: "frames older than this are dropped",
    },
];

pub(super) const PRESENCE: &[Key] = &[
    Key {
        name: "visible_to",
        kind: "audience",
        default: Default::Value("authenticated"),
        meaning: "who may query the presence and receive its events",
    },
    Key {
        name: "events",
        kind: "boolean",
        default: Default::Value("false"),
        meaning: "subscribers get join and leave frames",
    },
];

/// Every section's table, with the heading docs/routing.md gives it.
pub(super) const INBOUND: &[Key] = &[
    Key {
        name: "name",
        kind: "non-empty string, unique among inbound routes",
        default: Default::Otherwise("required"),
        meaning: "the envelope's route and the metrics' label",
    },
    Key {
        name: "match",
        kind: "mapping of frame dot paths to a glob or a list of globs",
        default: Default::Otherwise("absent: every frame that is not a command"),
        meaning: "the client frames the route takes",
    },
    Key {
        name: "channel",
        kind: "template",
        default: Default::Otherwise("required"),
        meaning: "where the frame is PUBLISHed",
    },
    Key {
        name: "allow",
        kind: "audience",
        default: Default::Value("authenticated"),
        meaning: "who may send through the route",
    },
    Key {
        name: "rate",
        kind: "`N/s` or `N/m`",
        default: Default::Otherwise("absent: only `websocket.client_rate`"),
        meaning: "frames per connection through this route",
    },
    Key {
        name: "ack",
        kind: "boolean",
        default: Default::Value("false"),
        meaning: "answer `published` once Redis took the frame",
    },
];

pub(super) const SECTIONS: &[(&str, &[Key])] = &[
    ("## Top level", TOP),
    ("## `redis`", REDIS),
    ("### `redis.sentinel`", SENTINEL),
    ("### `redis.tls`", TLS),
    ("## `websocket`", WEBSOCKET),
    ("### `websocket.compression`", COMPRESSION),
    ("## `auth`", AUTH),
    ("### `auth.jwt`", JWT),
    ("### `auth.api_keys`", API_KEY),
    ("## `admin`", ADMIN),
    ("## `routes`", ROUTE),
    ("### `routes[].history`", HISTORY),
    ("### `presence`", PRESENCE),
    ("## `inbound`", INBOUND),
];
