//! The HTTP side: the accept loop, the endpoints, and the WebSocket upgrade.
//!
//! The upgrade is done by hand rather than with warp's `ws()` filter, because that one gives
//! every connection tungstenite's default 128 KiB read buffer; here the buffers are sized for
//! hundreds of thousands of mostly idle connections. Rejections (400/403/503) are real HTTP
//! answers given before any upgrade.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use hyper::body::Incoming as Body;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tower_service::Service as _;
use warp::Filter;
use warp::reply::{Reply, Response};

use crate::auth::Identity;
use crate::hub::Connection;
use crate::metrics::RejectReason;
use crate::outbox::Outbox;
use crate::session::{self, Peer};
use crate::state::Shared;

/// A client that has not sent its request headers within this time is dropped (slow loris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Socket read buffer of a WebSocket connection; frames larger than this still arrive, the
/// buffer grows for them.
const READ_BUFFER: usize = 4096;

/// Frames are gathered up to this many bytes before a socket write, so that a backlog leaves
/// in few syscalls; a lone frame is still written at once by the flush that follows it.
const WRITE_BUFFER: usize = 8192;

/// The peer of the TCP connection a request came on.
#[derive(Debug, Clone, Copy)]
struct PeerAddr(SocketAddr);

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
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: http::Request<Body>| {
                request.extensions_mut().insert(PeerAddr(peer));
                service.clone().call(request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
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
    let websocket = warp::get()
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
        .and(with_shared(shared.clone()))
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::get::<PeerAddr>())
        .map(upgrade);
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_shared(shared.clone()))
        .map(readyz);
    let stats = warp::path!("ws" / "stats")
        .and(warp::get())
        .and(with_shared(shared.clone()))
        .map(stats);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_shared(shared))
        .map(|shared: Arc<Shared>| {
            let mut response = Response::new(shared.metrics.render().into());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
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
        .or(metrics)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            let status = if rejection.is_not_found() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::METHOD_NOT_ALLOWED
            };
            Ok::<_, Infallible>(json_reply(
                status,
                &json!({"error": status.canonical_reason()}),
            ))
        })
        .unify()
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
    let (connections, topics) = {
        let hub = shared.hub.read();
        (hub.connection_count(), hub.topics().count())
    };
    let routes: Vec<_> = routing
        .config
        .routes
        .iter()
        .map(|route| {
            let counters = shared.metrics.route(&route.name);
            json!({
                "name": &*route.name,
                "messages": counters.messages.load(Ordering::Relaxed),
                "delivered": counters.delivered.load(Ordering::Relaxed),
                "unroutable": counters.unroutable.load(Ordering::Relaxed),
            })
        })
        .collect();
    let status = shared.config_status();
    json_reply(
        StatusCode::OK,
        &json!({
            "connections": connections,
            "topics": topics,
            "routes": routes,
            "redis": {
                "connected": shared.redis_ready.load(Ordering::Acquire),
                "reconnects": shared.metrics.redis_reconnects.load(Ordering::Relaxed),
            },
            "config": {
                "path": routing.config.source.display().to_string(),
                "loaded_at": humantime::format_rfc3339_seconds(status.loaded_at).to_string(),
                "last_reload_error": status.last_reload_error,
            },
            "epoch": &shared.epoch,
        }),
    )
}

fn reject(shared: &Shared, status: StatusCode, reason: RejectReason, message: &str) -> Response {
    shared.metrics.rejected(reason);
    json_reply(status, &json!({"error": message}))
}

/// Checks the handshake, then answers 101 and hands the socket to a session.
fn upgrade(
    shared: Arc<Shared>,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    peer: PeerAddr,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let is_upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && header("connection").is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let Some(on_upgrade) = on_upgrade.filter(|_| is_upgrade) else {
        return reject(
            &shared,
            StatusCode::BAD_REQUEST,
            RejectReason::BadRequest,
            "expected a WebSocket upgrade",
        );
    };
    if header("sec-websocket-version") != Some("13") {
        let mut response = reject(
            &shared,
            StatusCode::BAD_REQUEST,
            RejectReason::BadRequest,
            "unsupported Sec-WebSocket-Version",
        );
        response.headers_mut().insert(
            "sec-websocket-version",
            http::HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = header("sec-websocket-key").filter(|key| is_valid_key(key)) else {
        return reject(
            &shared,
            StatusCode::BAD_REQUEST,
            RejectReason::BadRequest,
            "missing or malformed Sec-WebSocket-Key",
        );
    };
    let config = shared.config();
    let settings = &config.websocket;
    // Browsers always send Origin; other clients may omit it and could forge it anyway.
    if let Some(origin) = header("origin")
        && !settings.allowed_origins.is_empty()
        && !settings
            .allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
    {
        return reject(
            &shared,
            StatusCode::FORBIDDEN,
            RejectReason::Origin,
            "origin not allowed",
        );
    }
    let identity = Identity::anonymous();
    let Some(slot) = shared.take_slot(settings.max_connections) else {
        return reject(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            RejectReason::Capacity,
            "too many connections",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut ws_config = WebSocketConfig::default();
    ws_config.read_buffer_size = READ_BUFFER;
    ws_config.write_buffer_size = WRITE_BUFFER;
    ws_config.max_message_size = Some(settings.max_frame_bytes);
    ws_config.max_frame_size = Some(settings.max_frame_bytes);
    let outbox = Outbox::new(settings.send_queue, settings.slow_client);
    let connection = Arc::new(Connection::new(
        shared.next_connection_id(),
        uuid::Uuid::new_v4().to_string(),
        identity,
        outbox,
    ));
    let peer = Peer {
        address: peer.0.to_string(),
    };
    let task_shared = shared.clone();
    shared.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
                .await;
        session::run(task_shared, socket, connection, peer, slot).await;
    });
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let response_headers = response.headers_mut();
    response_headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    response_headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = http::HeaderValue::from_str(&accept) {
        response_headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
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
    use super::is_valid_key;

    #[test]
    fn accepts_only_well_formed_keys() {
        assert!(is_valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key("not a key at all!!!!!!=="));
        assert!(!is_valid_key(""));
    }
}
