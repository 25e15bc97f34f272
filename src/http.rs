//! The HTTP side: the accept loop, the endpoints, and the WebSocket upgrade.
//!
//! The upgrade is done by hand rather than with warp's `ws()` filter, because that one gives
//! every connection tungstenite's default 128 KiB read buffer: after the 101 the session takes
//! the bare TCP socket back from hyper and speaks WebSocket itself (`wsframe`), holding no
//! buffer at all while the connection is idle. Rejections (400/401/403/503) are real
//! HTTP answers given before any upgrade: the credential is verified here, so a session only
//! ever starts with an identity.
//!
//! Credentials are never logged, and neither is a request's query string (`?token=`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};
use hyper::body::Incoming as Body;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service as _;
use warp::Filter;
use warp::reply::{Reply, Response};

use crate::assets::Assets;
use crate::auth::{self, Authenticator, Credential, Identity, Rejection};
use crate::config::{AuthMode, Config};
use crate::deflate::{self, Agreed};
use crate::hub::Connection;
use crate::metrics::RejectReason;
use crate::outbox::{self, Outbox};
use crate::protocol::{self, Since};
use crate::proxy::ClientAddr;
use crate::pubsub;
use crate::session::{self, Peer};
use crate::state::{Full, Shared, Slot, SlotRequest};

/// The most a request's head may take; a larger one is refused (431) without growing the
/// buffer further, so a request costs at most this much memory before it is checked.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The peer of the TCP connection a request came on.
#[derive(Debug, Clone, Copy)]
struct PeerAddr(SocketAddr);

/// The client's address for logs: the TCP peer, or what `X-Forwarded-For` says when the peer
/// is one of `trusted_proxies` (nginx in front of the bridge).
fn client_address(config: &Config, peer: PeerAddr, headers: &HeaderMap) -> ClientAddr {
    // Read lossily: a client can put bytes that are not text into the header, and nginx
    // appends the address it saw to the same value; skipping the whole value would make every
    // such client look like the proxy itself (sharing its per-address limits).
    let forwarded: Vec<_> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()))
        .collect();
    config
        .trusted_proxies
        .client(peer.0, forwarded.iter().map(|value| value.as_ref()))
}

/// Serves HTTP on `listener` until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let filter = routes(shared.clone());
    let service = warp::service(filter);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let shutdown = shared.shutdown.clone();
        let handshake_timeout = shared.config().websocket.handshake_timeout;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: http::Request<Body>| {
                request.extensions_mut().insert(PeerAddr(peer));
                // HEAD is answered wherever GET is, by GET itself: hyper remembers the method
                // it parsed and sends the headers without the body. Never an upgrade, which
                // RFC 6455 allows on GET only.
                if request.method() == http::Method::HEAD {
                    *request.method_mut() = http::Method::GET;
                    request.extensions_mut().remove::<OnUpgrade>();
                }
                service.clone().call(request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = &mut connection => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
        });
    }
}

fn with_shared(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (Arc<Shared>,), Error = Infallible> + Clone {
    warp::any().map(move || shared.clone())
}

fn routes(shared: Arc<Shared>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let ws_path = shared.config().websocket.path.clone();
    let assets = assets(shared.clone(), Assets::new(&ws_path));
    let websocket = websocket(shared.clone(), ws_path);
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_shared(shared.clone()))
        .map(readyz);
    let stats = warp::path!("ws" / "stats")
        .and(warp::get())
        .and(admin(shared.clone()))
        .and(with_shared(shared.clone()))
        .map(|_admin: Arc<str>, shared: Arc<Shared>| stats(shared));
    let publish = warp::path!("api" / "publish")
        .and(warp::post())
        .and(admin(shared.clone()))
        .and(warp::body::content_length_limit(MAX_PUBLISH_BODY))
        .and(warp::body::bytes())
        .and(with_shared(shared.clone()))
        .then(publish);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_shared(shared))
        .map(|shared: Arc<Shared>| {
            let mut response = Response::new(shared.metrics.render().into());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        });
    websocket
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(stats)
        .unify()
        .or(publish)
        .unify()
        .or(metrics)
        .unify()
        .or(assets)
        .unify()
        .recover(answer_rejection)
        .unify()
}

/// `websocket.path`: the upgrade.
fn websocket(
    shared: Arc<Shared>,
    ws_path: String,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::path::full())
        .and_then(move |path: warp::path::FullPath| {
            let matches = path.as_str() == ws_path;
            async move {
                if matches {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        })
        .untuple_one()
        .and(with_shared(shared))
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::get::<PeerAddr>())
        .and(query_string())
        .map(upgrade)
}

/// The answer to a request no endpoint took, or that an endpoint's filters refused.
async fn answer_rejection(rejection: warp::Rejection) -> Result<Response, Infallible> {
    if let Some(denied) = rejection.find::<Denied>() {
        return Ok(denied.response());
    }
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "Not Found")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is larger than 1 MiB",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required",
        )
    } else {
        (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
    };
    Ok(json_reply(status, &json!({"error": message})))
}

/// The console page and the client library. The page names the path the listener serves (a
/// reload does not move it); `console` is read per request, so a reload switches the page on
/// or off at once.
fn assets(
    shared: Arc<Shared>,
    assets: Assets,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let assets = Arc::new(assets);
    warp::get()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("if-none-match"))
        .and(with_shared(shared))
        .and_then(
            move |path: warp::path::FullPath,
                  if_none_match: Option<String>,
                  shared: Arc<Shared>| {
                let served = assets
                    .get(path.as_str(), shared.config().console)
                    .map(|asset| asset.reply(if_none_match.as_deref()));
                async move { served.ok_or_else(warp::reject::not_found) }
            },
        )
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn readyz(shared: Arc<Shared>) -> Response {
    if shared.redis_ready.load(Ordering::Acquire) {
        json_reply(StatusCode::OK, &json!({"status": "ready"}))
    } else {
        json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": "redis is not connected and subscribed"}),
        )
    }
}

fn stats(shared: Arc<Shared>) -> Response {
    let routing = shared.routing.load();
    let (connections, topics, anonymous, by_role) = {
        let hub = shared.hub.read();
        let mut anonymous = 0;
        let mut by_role: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for connection in hub.all() {
            let identity = connection.identity.load();
            if !identity.authenticated {
                anonymous += 1;
            }
            for role in &identity.roles {
                *by_role.entry(role.clone()).or_default() += 1;
            }
        }
        (
            hub.connection_count(),
            hub.topics().count(),
            anonymous,
            by_role,
        )
    };
    let per_user: BTreeMap<Arc<str>, usize> = shared.hub.users().into_iter().collect();
    let routes: Vec<_> = routing
        .config
        .routes
        .iter()
        .map(|route| {
            let counters = shared.metrics.route(&route.name);
            json!({
                "name": &*route.name,
                "messages": counters.messages.get(),
                "delivered": counters.delivered.get(),
                "unroutable": counters.unroutable.get(),
            })
        })
        .collect();
    let status = shared.config_status();
    json_reply(
        StatusCode::OK,
        &json!({
            "connections": connections,
            "users": per_user.len(),
            "anonymous": anonymous,
            "by_role": by_role,
            "connections_per_user": per_user,
            "topics": topics,
            "routes": routes,
            "redis": {
                "connected": shared.redis_ready.load(Ordering::Acquire),
                "reconnects": shared.metrics.redis_reconnects.get(),
            },
            "config": {
                "path": routing.config.source.display().to_string(),
                "loaded_at": humantime::format_rfc3339_seconds(status.loaded_at).to_string(),
                "last_reload_error": status.last_reload_error,
            },
            "epoch": &*shared.history.epoch(),
            "instance": &shared.instance,
        }),
    )
}

fn reject(shared: &Shared, status: StatusCode, reason: RejectReason, message: &str) -> Response {
    shared.metrics.rejected(reason);
    json_reply(status, &json!({"error": message}))
}

/// The raw query string, when the request has one.
fn query_string() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The credential a request carries: `?token=` (when `query` is given: browsers cannot set
/// headers on a WebSocket), `Authorization: Bearer`, or `X-API-Key`. An empty value counts as
/// absent (`?token=` from a page that has no token yet); more than one is refused, as
/// choosing one would be a guess.
fn presented(headers: &HeaderMap, query: Option<&str>) -> Result<Option<Credential>, Rejection> {
    let mut found = Vec::new();
    if let Some(query) = query {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key == "token" && !value.is_empty() {
                found.push(Credential::Token(value.into_owned()));
            }
        }
    }
    for value in headers.get_all(http::header::AUTHORIZATION) {
        let text = value
            .to_str()
            .map_err(|_| Rejection::UnsupportedScheme)?
            .trim();
        let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Rejection::UnsupportedScheme);
        }
        let token = token.trim();
        if !token.is_empty() {
            found.push(Credential::Token(token.to_owned()));
        }
    }
    for value in headers.get_all("x-api-key") {
        let key = value.to_str().map_err(|_| Rejection::UnknownApiKey)?.trim();
        if !key.is_empty() {
            found.push(Credential::ApiKey(key.to_owned()));
        }
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(Rejection::Ambiguous),
    }
}

/// Who a WebSocket connection will be, under `auth.mode`, and the credential it showed.
fn connection_identity(
    config: &Config,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(Identity, Option<Credential>), Rejection> {
    if config.auth.mode == AuthMode::None {
        return Ok((Identity::anonymous(), None));
    }
    match presented(headers, query)? {
        Some(credential) => {
            let identity = Authenticator::new(&config.auth).verify(&credential)?;
            Ok((identity, Some(credential)))
        }
        None if config.auth.mode == AuthMode::Optional => Ok((Identity::anonymous(), None)),
        None => Err(Rejection::Missing),
    }
}

/// HTTP 401 with the reason, as JSON.
fn unauthorized(rejection: &Rejection) -> Response {
    let mut response = json_reply(
        StatusCode::UNAUTHORIZED,
        &json!({"error": rejection.message(), "reason": rejection.code()}),
    );
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// An admin endpoint refused: 401 without a valid credential, 403 with a valid one that is
/// not an administrator's.
#[derive(Debug)]
struct Denied {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl warp::reject::Reject for Denied {}

impl Denied {
    fn response(&self) -> Response {
        let body = json!({"error": self.message, "reason": self.reason});
        let mut response = json_reply(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Passes administrators only (the `admin` section), before any body is read; extracts who
/// it is, for the audit log.
fn admin(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (Arc<str>,), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and(with_shared(shared))
        .and_then(|headers: HeaderMap, shared: Arc<Shared>| async move {
            admin_check(&shared.config(), &headers).map_err(warp::reject::custom)
        })
}

/// The static admin token, or a JWT / API key with an admin role. Admin credentials come in
/// headers only, never in the URL, where proxies log them.
fn admin_check(config: &Config, headers: &HeaderMap) -> Result<Arc<str>, Denied> {
    let unauthorized = |rejection: Rejection| Denied {
        status: StatusCode::UNAUTHORIZED,
        reason: rejection.code(),
        message: rejection.message(),
    };
    let credential = presented(headers, None)
        .map_err(unauthorized)?
        .ok_or_else(|| unauthorized(Rejection::Missing))?;
    if let Credential::Token(token) = &credential
        && auth::is_admin_token(&config.admin, token)
    {
        return Ok(Arc::from("admin.token"));
    }
    let identity = Authenticator::new(&config.auth)
        .verify(&credential)
        .map_err(unauthorized)?;
    if auth::is_admin(&config.admin, &identity) {
        Ok(identity.user.unwrap_or_else(|| Arc::from("-")))
    } else {
        Err(Denied {
            status: StatusCode::FORBIDDEN,
            reason: "not_admin",
            message: "this credential has none of the admin.roles".to_owned(),
        })
    }
}

/// Largest `/api/publish` body.
const MAX_PUBLISH_BODY: u64 = 1024 * 1024;

/// How long `/api/publish` waits for Redis before answering 503.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// `POST /api/publish`: `{"channel": "...", "payload": <JSON or string>}` → PUBLISH, so the
/// message is routed by every bridge like any other. A string payload is published as its
/// text, anything else as its JSON.
async fn publish(admin: Arc<str>, body: bytes::Bytes, shared: Arc<Shared>) -> Response {
    let (channel, payload) = match publish_request(&body) {
        Ok(request) => request,
        Err(message) => return json_reply(StatusCode::BAD_REQUEST, &json!({"error": message})),
    };
    let redis = shared.config().redis.clone();
    let published =
        tokio::time::timeout(PUBLISH_TIMEOUT, pubsub::publish(&redis, &channel, &payload)).await;
    match published {
        Ok(Ok(receivers)) => {
            tracing::info!(%admin, channel, bytes = payload.len(), receivers, "published through /api/publish");
            json_reply(StatusCode::OK, &json!({"receivers": receivers}))
        }
        Ok(Err(err)) if err.is_io_error() || err.is_connection_refusal() || err.is_timeout() => {
            tracing::warn!(error = %err, "/api/publish: redis unavailable");
            json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "redis is unavailable"}),
            )
        }
        Ok(Err(err)) => {
            tracing::warn!(channel, error = %err, "/api/publish: redis refused the PUBLISH");
            json_reply(
                StatusCode::BAD_GATEWAY,
                &json!({"error": format!("redis refused the PUBLISH: {err}")}),
            )
        }
        Err(_) => {
            tracing::warn!("/api/publish: redis did not answer in time");
            json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "redis did not answer in time"}),
            )
        }
    }
}

/// The channel and payload bytes of a publish body, or why it is not one.
fn publish_request(body: &[u8]) -> Result<(String, Vec<u8>), String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err("expected an object {\"channel\": ..., \"payload\": ...}".to_owned());
    };
    if let Some(unknown) = fields
        .keys()
        .find(|key| !["channel", "payload"].contains(&key.as_str()))
    {
        return Err(format!(
            "unknown field `{unknown}` (expected channel and payload)"
        ));
    }
    let channel = match fields.remove("channel") {
        Some(serde_json::Value::String(channel)) if !channel.is_empty() => channel,
        Some(_) => return Err("`channel` must be a non-empty string".to_owned()),
        None => return Err("`channel` is required".to_owned()),
    };
    let payload = match fields.remove("payload") {
        Some(serde_json::Value::String(text)) => text.into_bytes(),
        Some(value) => value.to_string().into_bytes(),
        None => return Err("`payload` is required (JSON or a string)".to_owned()),
    };
    Ok((channel, payload))
}

/// The WebSocket endpoint: admission, then 101 and a session; or the refusal's answer.
fn upgrade(
    shared: Arc<Shared>,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    peer: PeerAddr,
    query: Option<String>,
) -> Response {
    let request = UpgradeRequest {
        shared: &shared,
        headers: &headers,
        peer,
        query: query.as_deref(),
    };
    match request.admit(on_upgrade) {
        Ok(response) => response,
        Err(refused) => *refused,
    }
}

/// The HTTP answer of a refused upgrade (boxed: a response is large, and most requests are
/// admitted).
type Refused = Box<Response>;

/// A request to `websocket.path`, on its way through admission.
struct UpgradeRequest<'a> {
    shared: &'a Arc<Shared>,
    headers: &'a HeaderMap,
    peer: PeerAddr,
    query: Option<&'a str>,
}

/// An admitted connection, before its session starts.
struct Admitted {
    identity: Identity,
    credential: Option<Credential>,
    client: ClientAddr,
    slot: Slot,
    /// permessage-deflate, when offered and enabled.
    deflate: Option<Agreed>,
    /// The positions of `auto` topics to resume (`?since=`).
    since: Option<Since>,
}

impl UpgradeRequest<'_> {
    /// Admission, cheapest and least revealing checks first: the handshake, the Origin, the
    /// address's connection rate, the credential, a connection slot. Each refusal is an HTTP
    /// answer, counted by reason; an admitted request gets its session and the 101, with
    /// permessage-deflate if it offered it acceptably (an offer it cannot have is declined,
    /// never refused).
    fn admit(&self, on_upgrade: Option<OnUpgrade>) -> Result<Response, Refused> {
        let (on_upgrade, key) = self.handshake(on_upgrade)?;
        let since = self.positions()?;
        let config = self.shared.config();
        self.origin(&config)?;
        let client = client_address(&config, self.peer, self.headers);
        self.connect_rate(&config, &client)?;
        let (identity, credential) = self.authenticate(&config, &client)?;
        let slot = self.slot(&config, &identity, &client)?;
        let admitted = Admitted {
            identity,
            credential,
            client,
            slot,
            deflate: self.compression(&config),
            since,
        };
        let response = switching_protocols(key, admitted.deflate);
        spawn_session(self.shared, &config, admitted, on_upgrade);
        Ok(response)
    }

    /// The permessage-deflate agreement (RFC 7692), when `websocket.compression` is enabled
    /// and the client offered it acceptably.
    fn compression(&self, config: &Config) -> Option<Agreed> {
        if !config.websocket.compression.enabled {
            return None;
        }
        let offers = self
            .headers
            .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|value| value.to_str().ok());
        deflate::negotiate(offers)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn refuse(&self, status: StatusCode, reason: RejectReason, message: &str) -> Refused {
        Box::new(reject(self.shared, status, reason, message))
    }

    /// An HTTP/1.1 upgrade to WebSocket version 13 with a well-formed key.
    fn handshake(&self, on_upgrade: Option<OnUpgrade>) -> Result<(OnUpgrade, &str), Refused> {
        let bad = |message| self.refuse(StatusCode::BAD_REQUEST, RejectReason::BadRequest, message);
        let is_upgrade = self
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
            && self.header("connection").is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
        let Some(on_upgrade) = on_upgrade.filter(|_| is_upgrade) else {
            return Err(bad("expected a WebSocket upgrade"));
        };
        if self.header("sec-websocket-version") != Some("13") {
            let mut response = bad("unsupported Sec-WebSocket-Version");
            response.headers_mut().insert(
                "sec-websocket-version",
                http::HeaderValue::from_static("13"),
            );
            return Err(response);
        }
        match self
            .header("sec-websocket-key")
            .filter(|key| is_valid_key(key))
        {
            Some(key) => Ok((on_upgrade, key)),
            None => Err(bad("missing or malformed Sec-WebSocket-Key")),
        }
    }

    /// `?since=`: the JSON positions of `auto` topics to resume, replayed before any live
    /// frame (a command would come after some).
    fn positions(&self) -> Result<Option<Since>, Refused> {
        let Some(query) = self.query else {
            return Ok(None);
        };
        let Some((_, text)) =
            form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "since")
        else {
            return Ok(None);
        };
        let since = serde_json::from_str(&text)
            .map_err(|err| format!("`since` is not JSON: {err}"))
            .and_then(protocol::since);
        since.map(Some).map_err(|message| {
            self.shared.metrics.rejected(RejectReason::BadRequest);
            Box::new(json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": message, "reason": "bad_since"}),
            ))
        })
    }

    fn origin(&self, config: &Config) -> Result<(), Refused> {
        if origin_allowed(&config.websocket.allowed_origins, self.headers) {
            return Ok(());
        }
        Err(self.refuse(
            StatusCode::FORBIDDEN,
            RejectReason::Origin,
            "origin not allowed",
        ))
    }

    fn connect_rate(&self, config: &Config, client: &ClientAddr) -> Result<(), Refused> {
        let Some(rate) = config.websocket.connect_rate_per_ip else {
            return Ok(());
        };
        let connects = &self.shared.connects_per_ip;
        if connects.try_take(client.limit_key(), rate, Instant::now()) {
            return Ok(());
        }
        Err(self.refuse(
            StatusCode::TOO_MANY_REQUESTS,
            RejectReason::RateLimited,
            "too many new connections from this address",
        ))
    }

    fn authenticate(
        &self,
        config: &Config,
        client: &ClientAddr,
    ) -> Result<(Identity, Option<Credential>), Refused> {
        connection_identity(config, self.headers, self.query).map_err(|rejection| {
            tracing::debug!(
                peer = %client,
                reason = rejection.code(),
                "upgrade refused: unauthorized"
            );
            self.shared.metrics.rejected(RejectReason::Unauthorized);
            Box::new(unauthorized(&rejection))
        })
    }

    /// A place under `max_connections` and the user's and the address's caps.
    fn slot(
        &self,
        config: &Config,
        identity: &Identity,
        client: &ClientAddr,
    ) -> Result<Slot, Refused> {
        let settings = &config.websocket;
        let request = SlotRequest {
            max_connections: settings.max_connections,
            user: identity
                .user
                .clone()
                .map(|user| (user, settings.max_connections_per_user)),
            address: (client.limit_key(), settings.max_connections_per_ip),
        };
        self.shared.take_slot(request).map_err(|full| match full {
            Full::Process => self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                RejectReason::Capacity,
                "too many connections",
            ),
            Full::User => self.refuse(
                StatusCode::TOO_MANY_REQUESTS,
                RejectReason::UserLimit,
                "too many connections for this user",
            ),
            Full::Address => self.refuse(
                StatusCode::TOO_MANY_REQUESTS,
                RejectReason::AddressLimit,
                "too many connections from this address",
            ),
        })
    }
}

/// Runs the session once hyper has switched protocols and handed the socket back.
fn spawn_session(shared: &Arc<Shared>, config: &Config, admitted: Admitted, on_upgrade: OnUpgrade) {
    let settings = &config.websocket;
    let (send_queue, slow_client, max_frame_bytes) = (
        settings.send_queue,
        settings.slow_client,
        settings.max_frame_bytes,
    );
    let task_shared = shared.clone();
    shared.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        // `serve` gives hyper the bare socket, so this is what comes back.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            tracing::error!("upgraded connection is not a TCP socket");
            return;
        };
        let outbox = Outbox::new(
            parts.io.into_inner(),
            send_queue,
            slow_client,
            outbox::reply_limit(max_frame_bytes),
        );
        let connection = Arc::new(Connection::new(
            task_shared.next_connection_id(),
            uuid::Uuid::new_v4().to_string(),
            admitted.identity,
            admitted.credential,
            outbox,
            admitted.deflate.map(|agreed| agreed.window_bits),
        ));
        let start = session::Start {
            connection,
            peer: Peer {
                address: admitted.client.to_string(),
            },
            slot: admitted.slot,
            max_frame_bytes,
            early_input: parts.read_buf,
            since: admitted.since,
        };
        session::run(task_shared, start).await;
    });
}

/// The 101 answer to a handshake with `key`, accepting permessage-deflate as `deflate` says.
fn switching_protocols(key: &str, deflate: Option<Agreed>) -> Response {
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = http::HeaderValue::from_str(&accept_key(key)) {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(extensions) =
        deflate.and_then(|agreed| http::HeaderValue::from_str(&agreed.response()).ok())
    {
        headers.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, extensions);
    }
    response
}

/// Whether the request's `Origin` is one of `allowed` (empty: any origin). Browsers always
/// send Origin; other clients may omit it (and could forge it anyway), so a request without
/// one passes. One that is present but unreadable, or repeated, is refused: it is either
/// not a browser's or an attempt to slip a second origin past the check.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let mut origins = headers.get_all(http::header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => true,
        (Some(origin), None) => origin
            .to_str()
            .is_ok_and(|origin| allowed.iter().any(|allowed| allowed == origin)),
        (Some(_), Some(_)) => false,
    }
}

/// `Sec-WebSocket-Accept`: the base64 of SHA-1(key + the protocol's GUID), RFC 6455 §4.2.2.
fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    use sha1::{Digest, Sha1};
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// A key is the base64 of 16 bytes: 22 significant characters and `==`.
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

#[cfg(test)]
mod tests {
    use super::{PeerAddr, accept_key, client_address, is_valid_key, origin_allowed};
    use crate::config::Config;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn a_forwarded_value_with_bytes_that_are_not_text_still_names_the_client() {
        let config = Config::from_str(
            "trusted_proxies: [127.0.0.1]\nroutes:\n  - name: r\n    channel: c\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        // What nginx sends when the client wrote junk: the junk, then the address it saw.
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.7").unwrap(),
        );
        let peer = PeerAddr("127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            client_address(&config, peer, &headers).ip(),
            "198.51.100.7".parse::<std::net::IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_restricted_origin_must_be_one_readable_allowed_value() {
        let allowed = vec!["https://app.example.com".to_owned()];
        let with = |values: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append("origin", HeaderValue::from_bytes(value).unwrap());
            }
            origin_allowed(&allowed, &headers)
        };
        assert!(with(&[]));
        assert!(with(&[b"https://app.example.com"]));
        assert!(!with(&[b"https://evil.example"]));
        assert!(!with(&[
            b"https://app.example.com",
            b"https://evil.example"
        ]));
        assert!(!with(&[
            b"https://app.example.com",
            b"https://app.example.com"
        ]));
        assert!(!with(&[b"https://app.example.com\xff"]));
        let mut headers = HeaderMap::new();
        headers.append("origin", HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(origin_allowed(&[], &headers));
    }

    #[test]
    fn derives_the_accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepts_only_well_formed_keys() {
        assert!(is_valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key("not a key at all!!!!!!=="));
        assert!(!is_valid_key(""));
    }
}
