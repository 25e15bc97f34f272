//! What the layers below `pubsub` ask of Redis through `Shared::redis_requests`: the client
//! frames of inbound routes, PUBLISHed in the order they were taken, many per round trip.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::metrics::InboundRefusal;
use crate::protocol::{ErrorCode, Reply};
use crate::state::{Outgoing, RedisRequest, Shared};

/// Requests waiting for Redis: past this, a client's frame is refused (`unavailable`) rather
/// than held, so a slow or absent Redis costs bounded memory.
const QUEUE: usize = 4096;

/// The most PUBLISHes sent in one pipeline.
const BATCH: usize = 256;

/// How long one pipeline may take before its frames count as not published.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the task that serves the requests, and opens `Shared::redis_requests` to it.
pub(super) fn spawn(shared: Arc<Shared>) {
    let (sender, requests) = mpsc::channel(QUEUE);
    if shared.redis_requests.set(sender).is_ok() {
        tokio::spawn(serve(shared, requests));
    }
}

/// A connection to the server in force, and the URL it was made for (a reload may change it).
struct Link {
    url: String,
    connection: redis::aio::MultiplexedConnection,
}

async fn serve(shared: Arc<Shared>, mut requests: mpsc::Receiver<RedisRequest>) {
    let mut link: Option<Link> = None;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            received = requests.recv_many(&mut batch, BATCH) => received,
        };
        if received == 0 {
            return;
        }
        let published: Vec<Outgoing> = batch
            .drain(..)
            .map(|request| match request {
                RedisRequest::Publish(outgoing) => outgoing,
            })
            .collect();
        let results = publish(&shared, &mut link, &published).await;
        answer(&shared, published, results);
    }
}

/// PUBLISHes `batch` in one pipeline; one result per PUBLISH (each may be refused on its own,
/// by an ACL that allows some channels only).
async fn publish(
    shared: &Shared,
    link: &mut Option<Link>,
    batch: &[Outgoing],
) -> Vec<Result<(), String>> {
    let settings = shared.config().redis.clone();
    if link.as_ref().is_some_and(|link| link.url != settings.url) {
        *link = None;
    }
    if link.is_none() {
        let connected = connect(&settings).await;
        match connected {
            Ok(connection) => {
                *link = Some(Link {
                    url: settings.url.clone(),
                    connection,
                })
            }
            Err(err) => return vec![Err(err); batch.len()],
        }
    }
    let Some(Link { connection, .. }) = link.as_mut() else {
        return vec![Err("no connection to redis".to_owned()); batch.len()];
    };
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for outgoing in batch {
        pipe.cmd("PUBLISH")
            .arg(&outgoing.channel)
            .arg(&outgoing.payload);
    }
    match tokio::time::timeout(
        TIMEOUT,
        pipe.query_async::<Vec<redis::RedisResult<i64>>>(connection),
    )
    .await
    {
        Ok(Ok(results)) => results
            .into_iter()
            .map(|result| result.map(drop).map_err(|err| err.to_string()))
            .collect(),
        Ok(Err(err)) => {
            *link = None;
            vec![Err(err.to_string()); batch.len()]
        }
        Err(_) => {
            *link = None;
            vec![Err("redis did not answer in time".to_owned()); batch.len()]
        }
    }
}

/// A connection for commands to the server `settings` name now (the master, with Sentinel).
pub(super) async fn connect(
    settings: &crate::config::RedisSettings,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let connected = tokio::time::timeout(TIMEOUT, async {
        let server = super::resolve(settings)
            .await
            .map_err(|failure| failure.message)?;
        let client = super::client(&server).map_err(|err| err.to_string())?;
        client
            .get_multiplexed_async_connection()
            .await
            .map_err(|err| err.to_string())
    })
    .await;
    connected.unwrap_or_else(|_| Err("connecting to redis timed out".to_owned()))
}

/// Counts each frame, and answers those whose route asked for an `ack`.
fn answer(shared: &Shared, batch: Vec<Outgoing>, results: Vec<Result<(), String>>) {
    // One line per batch: a Redis that is down must not write a line per client frame.
    let mut logged = false;
    for (outgoing, result) in batch.into_iter().zip(results) {
        let frame = match &result {
            Ok(()) => {
                shared.metrics.inbound_published(&outgoing.route);
                outgoing
                    .ack
                    .as_ref()
                    .map(|(_, id)| Reply::Published { id: id.as_ref() }.to_frame())
            }
            Err(err) => {
                shared.metrics.inbound_refused(InboundRefusal::Unavailable);
                if !logged {
                    logged = true;
                    tracing::warn!(route = %outgoing.route, channel = %outgoing.channel, error = %err, "inbound frame not published");
                }
                outgoing.ack.as_ref().map(|(_, id)| {
                    Reply::Error {
                        id: id.as_ref(),
                        code: ErrorCode::Unavailable,
                        message: "redis did not take the frame; try again later",
                        topic: None,
                        refused: &[],
                    }
                    .to_frame()
                })
            }
        };
        if let (Some(frame), Some((connection, _))) = (frame, &outgoing.ack) {
            connection.outbox.send(frame, &shared.metrics);
        }
    }
}
