//! The `redis` section: the server's URL, the TLS files a `rediss://` URL is verified and
//! authenticated with, and the subscription watchdog's timing.

use std::fmt;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::schema;
use super::yaml::{self, Ctx, Kind, Node, fields};

/// The `redis` section.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL (may hold a password: do not log it).
    pub url: String,
    /// What a `rediss://` connection trusts and presents (`tls`; absent: the system roots,
    /// no client certificate).
    pub tls: Option<RedisTls>,
    /// Where to ask for the master (`sentinel`); `url` then gives the scheme, credentials
    /// and database, not the host.
    pub sentinel: Option<Sentinel>,
    /// The nodes of a Redis Cluster (`cluster.nodes`), tried in order: classic PUBLISH
    /// reaches the subscribers of every node, so one node is enough.
    pub cluster: Option<Vec<String>>,
    /// How often the subscription watchdog publishes a heartbeat to itself
    /// (`heartbeat_interval`, default 5s).
    pub heartbeat_interval: Duration,
    /// How long without any heartbeat back before the subscriber connection counts as
    /// stalled and is replaced (`heartbeat_timeout`, default 15s).
    pub heartbeat_timeout: Duration,
}

impl RedisSettings {
    /// Whether a connection made with `self` would reach the same server in the same way as
    /// one made with `other` (the watchdog's timing aside).
    pub fn same_server(&self, other: &RedisSettings) -> bool {
        self.url == other.url
            && self.tls == other.tls
            && self.sentinel == other.sentinel
            && self.cluster == other.cluster
    }
}

/// The `redis.sentinel` section.
#[derive(Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// The master's name in the sentinels' configuration.
    pub master: String,
    /// `redis://HOST:PORT` or `rediss://HOST:PORT` of each sentinel, asked in this order.
    pub nodes: Vec<String>,
    /// The sentinels' own password (`requirepass` of the sentinels), if any.
    pub password: Option<String>,
}

impl fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinel")
            .field("master", &self.master)
            .field("nodes", &self.nodes)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for RedisSettings {
    fn default() -> RedisSettings {
        RedisSettings {
            url: DEFAULT_REDIS_URL.to_owned(),
            tls: None,
            sentinel: None,
            cluster: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
        }
    }
}

/// The `redis.tls` section: PEM bytes as read (and checked) at load.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// The certificates the server's chain must lead to, instead of the system roots
    /// (`ca_file`).
    pub ca: Option<Vec<u8>>,
    /// The client's certificate chain and private key, for mutual TLS (`cert_file`,
    /// `key_file`).
    pub client: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl fmt::Debug for RedisTls {
    /// Which files were given, never their bytes: one of them is a private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.as_ref().map(|_| "<pem>"))
            .field("client", &self.client.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub(super) const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads the `redis` section.
pub(super) fn compile(ctx: &mut Ctx, node: &Node) -> Option<RedisSettings> {
    let section = fields(ctx, node, "redis", &schema::names(schema::REDIS))?;
    let url = match section.get("url") {
        None => Some(DEFAULT_REDIS_URL.to_owned()),
        Some(url_node) => url(ctx, url_node),
    };
    let tls = match (section.get("tls"), &url) {
        (None, _) => Some(None),
        (Some(tls_node), Some(url)) if !url.starts_with("rediss://") => {
            ctx.error(
                tls_node,
                "redis.tls",
                "applies to TLS connections only: the url must start with rediss://",
            );
            None
        }
        (Some(tls_node), _) => tls(ctx, tls_node).map(Some),
    };
    let sentinel = match section.get("sentinel") {
        None => Some(None),
        Some(sentinel_node) => sentinel(ctx, sentinel_node).map(Some),
    };
    let cluster = match (section.get("cluster"), section.get("sentinel")) {
        (None, _) => Some(None),
        (Some(cluster_node), Some(_)) => {
            let message =
                "`sentinel` and `cluster` exclude each other: a Redis is one or the other";
            ctx.error(cluster_node, "redis.cluster", message);
            None
        }
        (Some(cluster_node), None) => cluster(ctx, cluster_node, url.as_deref()).map(Some),
    };
    let positive = |ctx: &mut Ctx, key: &str, default: Duration| match section.get(key) {
        None => Some(default),
        Some(node) => {
            let path = format!("redis.{key}");
            match yaml::duration(ctx, node, &path)? {
                Duration::ZERO => {
                    ctx.error(node, &path, "must be longer than 0s");
                    None
                }
                value => Some(value),
            }
        }
    };
    let heartbeat_interval = positive(ctx, "heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL);
    let heartbeat_timeout = positive(ctx, "heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT);
    if let (Some(interval), Some(timeout)) = (heartbeat_interval, heartbeat_timeout)
        && timeout <= interval
    {
        let node = section
            .get("heartbeat_timeout")
            .or_else(|| section.get("heartbeat_interval"))
            .unwrap_or(node);
        ctx.error(
            node,
            "redis.heartbeat_timeout",
            format!(
                "must be longer than heartbeat_interval ({}), else every interval counts as a stall",
                humantime::format_duration(interval)
            ),
        );
        return None;
    }
    Some(RedisSettings {
        url: url?,
        tls: tls?,
        sentinel: sentinel?,
        cluster: cluster?,
        heartbeat_interval: heartbeat_interval?,
        heartbeat_timeout: heartbeat_timeout?,
    })
}

fn url(ctx: &mut Ctx, url_node: &Node) -> Option<String> {
    let url = yaml::string(ctx, url_node, "redis.url")?;
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"));
    match rest {
        // The URL is not quoted back: it may hold a password.
        None => {
            ctx.error(
                url_node,
                "redis.url",
                "must start with redis:// or rediss://",
            );
            None
        }
        Some("") => {
            ctx.error(url_node, "redis.url", "has no host after the scheme");
            None
        }
        Some(_) => Some(url),
    }
}

/// Reads `redis.sentinel`.
fn sentinel(ctx: &mut Ctx, node: &Node) -> Option<Sentinel> {
    let section = fields(
        ctx,
        node,
        "redis.sentinel",
        &schema::names(schema::SENTINEL),
    )?;
    let master = match section.get("master") {
        None => {
            ctx.error(
                node,
                "redis.sentinel.master",
                "missing key `master`: the master's name in the sentinels' configuration",
            );
            None
        }
        Some(master_node) => match yaml::string(ctx, master_node, "redis.sentinel.master")? {
            name if name.is_empty() => {
                ctx.error(master_node, "redis.sentinel.master", "must not be empty");
                None
            }
            name => Some(name),
        },
    };
    let nodes = match section.get("nodes") {
        None => {
            ctx.error(
                node,
                "redis.sentinel.nodes",
                "missing key `nodes`: the sentinels' addresses",
            );
            None
        }
        Some(nodes_node) => node_list(ctx, nodes_node, "redis.sentinel.nodes"),
    };
    let password = match section.get("password") {
        None => Some(None),
        Some(password_node) => {
            yaml::string(ctx, password_node, "redis.sentinel.password").map(Some)
        }
    };
    Some(Sentinel {
        master: master?,
        nodes: nodes?,
        password: password?,
    })
}

/// Reads `redis.cluster`. Every node is reached with the scheme of `url` (and its
/// credentials and TLS settings), so a node written with the other scheme is an error rather
/// than a TLS node silently spoken to in plain text.
fn cluster(ctx: &mut Ctx, node: &Node, url: Option<&str>) -> Option<Vec<String>> {
    let section = fields(ctx, node, "redis.cluster", &schema::names(schema::CLUSTER))?;
    let Some(list) = section.get("nodes") else {
        ctx.error(
            node,
            "redis.cluster.nodes",
            "missing key `nodes`: the cluster's nodes",
        );
        return None;
    };
    let nodes = node_list(ctx, list, "redis.cluster.nodes")?;
    let scheme = url.and_then(|url| url.split_once("://")).map(|(s, _)| s);
    let (Some(scheme), Kind::Seq(items)) = (scheme, &list.kind) else {
        return Some(nodes);
    };
    let mut valid = true;
    for (i, (item, node_url)) in items.iter().zip(&nodes).enumerate() {
        if !node_url.starts_with(&format!("{scheme}://")) {
            let message = format!(
                "`{node_url}` does not match redis.url's scheme ({scheme}://): every node is reached with the url's scheme, credentials and TLS settings"
            );
            ctx.error(item, &format!("redis.cluster.nodes[{i}]"), message);
            valid = false;
        }
    }
    valid.then_some(nodes)
}

/// Reads the URLs of sentinels or cluster nodes: `redis://HOST:PORT` or `rediss://HOST:PORT`,
/// port required (neither a sentinel's usual port, 26379, nor a cluster's are Redis's
/// default, so leaving it out is a mistake).
fn node_list(ctx: &mut Ctx, node: &Node, key: &str) -> Option<Vec<String>> {
    let Kind::Seq(items) = &node.kind else {
        ctx.error(node, key, "expected a list of redis://HOST:PORT");
        return None;
    };
    if items.is_empty() {
        ctx.error(node, key, "must list at least one node");
        return None;
    }
    let mut nodes = Vec::with_capacity(items.len());
    let mut valid = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("{key}[{i}]");
        let Some(url) = yaml::string(ctx, item, &path) else {
            valid = false;
            continue;
        };
        let address = url
            .strip_prefix("redis://")
            .or_else(|| url.strip_prefix("rediss://"));
        let port = address
            .and_then(|a| a.rsplit_once(':'))
            .map(|(host, port)| (host, port.parse::<u16>()));
        match (address, port) {
            (None, _) => {
                ctx.error(
                    item,
                    &path,
                    format!("`{url}` must start with redis:// or rediss://"),
                );
                valid = false;
            }
            (Some(_), Some((host, Ok(port))))
                if !host.is_empty() && port > 0 && !host.contains(['/', '@']) =>
            {
                nodes.push(url);
            }
            (Some(_), _) => {
                let message = format!(
                    "`{url}` must be redis://HOST:PORT (with the port, e.g. 26379, and nothing after it)"
                );
                ctx.error(item, &path, message);
                valid = false;
            }
        }
    }
    valid.then_some(nodes)
}

/// Reads `redis.tls`. Every file is read and parsed here, as the TLS stack will parse it, so
/// that a wrong file is an error with its line and column rather than a connection that
/// fails at run time. Unlike key files of `auth`, a missing file is an error for `check` too:
/// without it no connection to Redis is possible at all.
fn tls(ctx: &mut Ctx, node: &Node) -> Option<RedisTls> {
    let section = fields(ctx, node, "redis.tls", &schema::names(schema::TLS))?;
    let ca = match section.get("ca_file") {
        None => Some(None),
        Some(file_node) => certificates(ctx, file_node, "redis.tls.ca_file", true).map(Some),
    };
    let client = match (section.get("cert_file"), section.get("key_file")) {
        (None, None) => Some(None),
        (Some(cert_node), Some(key_node)) => identity(ctx, cert_node, key_node).map(Some),
        (Some(_), None) => {
            let message =
                "`cert_file` needs `key_file` too: the private key of the client certificate";
            ctx.error(node, "redis.tls.key_file", message);
            None
        }
        (None, Some(_)) => {
            let message = "`key_file` needs `cert_file` too: the client certificate it signs for";
            ctx.error(node, "redis.tls.cert_file", message);
            None
        }
    };
    Some(RedisTls {
        ca: ca?,
        client: client?,
    })
}

/// Reads PEM certificates; `as_roots`: each must serve as a trust anchor.
fn certificates(ctx: &mut Ctx, node: &Node, path: &str, as_roots: bool) -> Option<Vec<u8>> {
    let pem = yaml::file(ctx, node, path)?;
    let parsed: Result<Vec<CertificateDer>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certificates = match parsed {
        Ok(certificates) if !certificates.is_empty() => certificates,
        Ok(_) => {
            let message = "expected PEM certificates (-----BEGIN CERTIFICATE-----), found none";
            ctx.error(node, path, message);
            return None;
        }
        Err(e) => {
            ctx.error(node, path, format!("expected PEM certificates: {e}"));
            return None;
        }
    };
    if as_roots {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates {
            if let Err(e) = roots.add(certificate) {
                ctx.error(node, path, format!("not a usable CA certificate: {e}"));
                return None;
            }
        }
    }
    Some(pem)
}

/// Reads the client certificate and its key, and checks that they belong together.
fn identity(ctx: &mut Ctx, cert_node: &Node, key_node: &Node) -> Option<ClientIdentity> {
    let cert = certificates(ctx, cert_node, "redis.tls.cert_file", false);
    let key_path = "redis.tls.key_file";
    let key = yaml::file(ctx, key_node, key_path);
    let (cert, key) = (cert?, key?);
    let parsed_key = match PrivateKeyDer::from_pem_slice(&key) {
        Ok(parsed) => parsed,
        Err(e) => {
            let message = format!("expected a PEM private key (-----BEGIN PRIVATE KEY-----): {e}");
            ctx.error(key_node, key_path, message);
            return None;
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .filter_map(Result::ok)
        .collect();
    let provider = rustls::crypto::ring::default_provider();
    if let Err(e) = rustls::sign::CertifiedKey::from_der(chain, parsed_key, &provider) {
        let message = format!("does not go with `cert_file`: {e}");
        ctx.error(key_node, key_path, message);
        return None;
    }
    Some(ClientIdentity { cert, key })
}
