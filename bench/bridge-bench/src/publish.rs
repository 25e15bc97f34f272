//! Publishing: through Redis (`PUBLISH`, pipelined on one connection) or through an HTTP
//! publisher endpoint such as Nchan's (`POST`, pipelined HTTP/1.1 keep-alive). Each payload
//! carries the sequence number and the send time the receivers measure against.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One message to publish.
pub struct Outgoing {
    pub channel: String,
    pub payload: Vec<u8>,
}

/// The JSON payload: `{"__bseq":N,"__bts":NS,"pad":"…"}`, `bytes` long (at least the two
/// numbers' length).
pub fn payload(seq: u64, sent_ns: u64, bytes: usize) -> Vec<u8> {
    let head = format!("{{\"__bseq\":{seq},\"__bts\":{sent_ns},\"pad\":\"");
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut payload = Vec::with_capacity(head.len() + pad + 2);
    payload.extend_from_slice(head.as_bytes());
    payload.resize(payload.len() + pad, b'x');
    payload.extend_from_slice(b"\"}");
    payload
}

/// A payload that compresses like real traffic rather than like padding:
/// `{"__bseq":N,"__bts":NS,"events":[…]}` with analytics events (ids, statuses, durations,
/// metrics; the shape of a workflow platform's execution events) drawn from a fixed
/// pseudo-random sequence of `seq`, until `bytes` long at least.
pub fn events_payload(seq: u64, sent_ns: u64, bytes: usize) -> Vec<u8> {
    const EVENTS: [&str; 4] = [
        "execution_started",
        "execution_progress",
        "execution_completed",
        "execution_failed",
    ];
    const STATUSES: [&str; 4] = ["queued", "running", "completed", "failed"];
    let mut out = format!("{{\"__bseq\":{seq},\"__bts\":{sent_ns},\"events\":[");
    let mut state = crate::stats::mix(seq);
    let mut next = || {
        state = crate::stats::mix(state);
        state
    };
    let mut first = true;
    while out.len() + 2 < bytes {
        let (a, b, c) = (next(), next(), next());
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&format!(
            "{{\"event\":\"{}\",\"workspace_id\":\"ws-{:04x}\",\"workflow_id\":\"wf-{:08x}\",\
             \"execution_id\":\"{:016x}\",\"status\":\"{}\",\"duration_ms\":{},\
             \"metrics\":{{\"cpu\":{}.{:02},\"memory_mb\":{},\"tokens\":{}}},\
             \"timestamp\":\"2026-12-04T{:02}:{:02}:{:02}.{:03}Z\"}}",
            EVENTS[(a % 4) as usize],
            a >> 48,
            (b >> 32) as u32,
            c,
            STATUSES[((a >> 8) % 4) as usize],
            (b % 120_000),
            (c % 100),
            ((c >> 8) % 100),
            128 << ((a >> 16) % 6),
            (b >> 8) % 50_000,
            (a >> 24) % 24,
            (a >> 32) % 60,
            (b >> 40) % 60,
            (c >> 16) % 1000,
        ));
    }
    out.push_str("]}");
    out.into_bytes()
}

/// Where messages go.
pub enum Publisher {
    Redis(redis::aio::MultiplexedConnection),
    Http(HttpPublisher),
}

impl Publisher {
    /// `redis://…` or `http://host:port/path?…{channel}…`.
    pub async fn connect(target: &str) -> Result<Publisher, String> {
        if target.starts_with("redis://") || target.starts_with("rediss://") {
            let client = redis::Client::open(target).map_err(|e| e.to_string())?;
            let connection = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("redis {target}: {e}"))?;
            Ok(Publisher::Redis(connection))
        } else if let Some(rest) = target.strip_prefix("http://") {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let address: SocketAddr = authority
                .parse()
                .map_err(|_| format!("{target}: the HTTP publisher must be http://IP:PORT/…"))?;
            Ok(Publisher::Http(HttpPublisher {
                stream: HttpPublisher::connect(address).await?,
                address,
                host: authority.to_owned(),
                path: if path.is_empty() { "/" } else { path }.to_owned(),
                buffer: Vec::new(),
            }))
        } else {
            Err(format!(
                "{target}: publish target must be redis://… or http://…"
            ))
        }
    }

    /// Sends a batch in one round trip; Err when the connection failed (the batch is then
    /// counted as not published).
    pub async fn publish(&mut self, batch: &[Outgoing]) -> Result<(), String> {
        match self {
            Publisher::Redis(connection) => {
                let mut pipe = redis::pipe();
                for message in batch {
                    pipe.cmd("PUBLISH")
                        .arg(&message.channel)
                        .arg(&message.payload[..])
                        .ignore();
                }
                pipe.query_async::<()>(connection)
                    .await
                    .map_err(|e| e.to_string())
            }
            Publisher::Http(http) => http.publish(batch).await,
        }
    }
}

/// A pipelined HTTP/1.1 publisher: one write for the batch, then its answers in order.
pub struct HttpPublisher {
    stream: TcpStream,
    address: SocketAddr,
    host: String,
    /// The path and query, with `{channel}` replaced per message.
    path: String,
    buffer: Vec<u8>,
}

impl HttpPublisher {
    async fn connect(address: SocketAddr) -> Result<TcpStream, String> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("http publisher {address}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(stream)
    }

    async fn publish(&mut self, batch: &[Outgoing]) -> Result<(), String> {
        let mut failed = 0;
        let mut done = 0;
        let mut reconnects = 0;
        while done < batch.len() {
            match self.send(&batch[done..]).await {
                Ok((answered, refused)) => {
                    done += answered;
                    failed += refused;
                }
                Err((answered, refused, err)) => {
                    // nginx closes a keep-alive connection after `keepalive_requests`: open
                    // a new one and send what was not answered again.
                    done += answered;
                    failed += refused;
                    reconnects += 1;
                    if reconnects > 3 {
                        return Err(err);
                    }
                    self.buffer.clear();
                    self.stream = HttpPublisher::connect(self.address).await?;
                }
            }
        }
        if failed > 0 {
            return Err(format!("{failed} publish request(s) refused"));
        }
        Ok(())
    }

    /// Writes the requests, then reads their answers: (answered, refused) or, when the
    /// connection fails, the same counts so far and the error.
    async fn send(&mut self, batch: &[Outgoing]) -> Result<(usize, usize), (usize, usize, String)> {
        let mut requests = Vec::with_capacity(batch.len() * 200);
        for message in batch {
            let path = self.path.replace("{channel}", &message.channel);
            requests.extend_from_slice(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                     Accept: text/plain\r\nContent-Length: {}\r\n\r\n",
                    self.host,
                    message.payload.len()
                )
                .as_bytes(),
            );
            requests.extend_from_slice(&message.payload);
        }
        if let Err(err) = self.stream.write_all(&requests).await {
            return Err((0, 0, err.to_string()));
        }
        let mut refused = 0;
        for answered in 0..batch.len() {
            match self.read_response().await {
                Ok(status) if (200..300).contains(&status) => {}
                Ok(_) => refused += 1,
                Err(err) => return Err((answered, refused, err)),
            }
        }
        Ok((batch.len(), refused))
    }

    /// Reads one response (headers and a Content-Length or chunked body); returns its status.
    async fn read_response(&mut self) -> Result<u16, String> {
        loop {
            if let Some((status, used)) = parse_response(&self.buffer)? {
                self.buffer.drain(..used);
                return Ok(status);
            }
            let mut chunk = [0u8; 8192];
            let read = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("publisher connection closed".into());
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// A complete response at the start of `buffer`: its status and length; None if incomplete.
fn parse_response(buffer: &[u8]) -> Result<Option<(u16, usize)>, String> {
    let Some(head_end) = crate::wsclient::find(buffer, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..head_end]).map_err(|e| e.to_string())?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad HTTP response: {head}"))?;
    let body_start = head_end + 4;
    let mut content_length = None;
    let mut chunked = false;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        // Chunks until the zero-size one; no trailers expected.
        let mut at = body_start;
        loop {
            let Some(line_end) = crate::wsclient::find(&buffer[at..], b"\r\n") else {
                return Ok(None);
            };
            let size_text = std::str::from_utf8(&buffer[at..at + line_end]).unwrap_or("");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "bad chunk size".to_string())?;
            at += line_end + 2 + size + 2;
            if at > buffer.len() {
                return Ok(None);
            }
            if size == 0 {
                return Ok(Some((status, at)));
            }
        }
    }
    let end = body_start + content_length.unwrap_or(0);
    if end > buffer.len() {
        return Ok(None);
    }
    Ok(Some((status, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size_and_fields() {
        let payload = payload(7, 123, 100);
        assert_eq!(payload.len(), 100);
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(value["__bseq"], 7);
        assert_eq!(value["__bts"], 123);
    }

    #[test]
    fn events_payloads_are_json_of_the_requested_size_and_compress_like_json() {
        let payload = events_payload(7, 123, 16 * 1024);
        assert!(
            (16 * 1024..17 * 1024).contains(&payload.len()),
            "{}",
            payload.len()
        );
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(value["__bseq"], 7);
        assert!(value["events"].as_array().unwrap().len() > 40);
        assert_ne!(events_payload(8, 123, 1024), events_payload(7, 123, 1024));
    }

    #[test]
    fn parses_responses() {
        let two = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (status, used) = parse_response(two).unwrap().unwrap();
        assert_eq!(status, 201);
        assert_eq!(&two[used - 3..used], b"abc");
        let (status, rest) = parse_response(&two[used..]).unwrap().unwrap();
        assert_eq!(status, 202);
        assert_eq!(used + rest, two.len());
        assert_eq!(parse_response(&two[used..used + 20]).unwrap(), None);
        assert_eq!(parse_response(&two[used..two.len() - 2]).unwrap(), None);
    }
}
