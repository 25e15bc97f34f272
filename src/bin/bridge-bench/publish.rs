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

/// The JSON payload: `{"__bseq":N,"__bts":NS,"pad":"…"}`, `bytes` long at least.
pub fn payload(seq: u64, sent_ns: u64, bytes: usize) -> Vec<u8> {
    let head = format!("{{\"__bseq\":{seq},\"__bts\":{sent_ns},\"pad\":\"");
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut payload = Vec::with_capacity(head.len() + pad + 2);
    payload.extend_from_slice(head.as_bytes());
    payload.resize(payload.len() + pad, b'x');
    payload.extend_from_slice(b"\"}");
    payload
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
            let stream = TcpStream::connect(address)
                .await
                .map_err(|e| format!("{target}: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            Ok(Publisher::Http(HttpPublisher {
                stream,
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
    host: String,
    /// The path and query, with `{channel}` replaced per message.
    path: String,
    buffer: Vec<u8>,
}

impl HttpPublisher {
    async fn publish(&mut self, batch: &[Outgoing]) -> Result<(), String> {
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
        self.stream
            .write_all(&requests)
            .await
            .map_err(|e| e.to_string())?;
        let mut failed = 0;
        for _ in batch {
            let status = self.read_response().await?;
            if !(200..300).contains(&status) {
                failed += 1;
            }
        }
        if failed > 0 {
            return Err(format!("{failed} publish request(s) refused"));
        }
        Ok(())
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
