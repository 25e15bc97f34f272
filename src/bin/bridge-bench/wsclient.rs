//! A minimal WebSocket client, just what a load generator needs: the opening handshake from a
//! chosen source address, masked text frames out, and a frame parser that works on borrowed
//! bytes so that an idle connection holds no buffer at all. It is cheaper per received frame
//! than a general-purpose library, which matters when the tool shares a core with Redis.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    Io(io::Error),
    /// The server answered the upgrade with this HTTP status instead of 101.
    Status(u16),
    Timeout,
    Protocol,
}

impl ConnectError {
    /// A short label for counting failures by kind.
    pub fn label(&self) -> String {
        match self {
            ConnectError::Io(err) => match err.raw_os_error() {
                Some(code) => format!("io:{}", io_name(code)),
                None => format!("io:{:?}", err.kind()),
            },
            ConnectError::Status(status) => format!("http:{status}"),
            ConnectError::Timeout => "timeout".into(),
            ConnectError::Protocol => "bad_handshake".into(),
        }
    }
}

fn io_name(code: i32) -> &'static str {
    match code {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EPIPE => "EPIPE",
        _ => "other",
    }
}

impl From<io::Error> for ConnectError {
    fn from(err: io::Error) -> Self {
        ConnectError::Io(err)
    }
}

/// An open WebSocket: the stream and whatever bytes followed the 101 response.
pub struct Opened {
    pub stream: TcpStream,
    pub leftover: Vec<u8>,
}

/// Opens a TCP connection from `source` (port chosen by the kernel) and upgrades it.
pub async fn connect(
    server: SocketAddr,
    source: Option<Ipv4Addr>,
    host: &str,
    path: &str,
    timeout: Duration,
    nonce: u64,
) -> Result<Opened, ConnectError> {
    tokio::time::timeout(timeout, open(server, source, host, path, nonce))
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn open(
    server: SocketAddr,
    source: Option<Ipv4Addr>,
    host: &str,
    path: &str,
    nonce: u64,
) -> Result<Opened, ConnectError> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::from((ip, 0)))?;
    }
    let mut stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&nonce.to_le_bytes());
    key[8..].copy_from_slice(&crate::stats::mix(nonce).to_le_bytes());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        base64(&key, false)
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buffer = Vec::with_capacity(512);
    let end = loop {
        let mut chunk = [0u8; 1024];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(ConnectError::Protocol);
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > 16 * 1024 {
            return Err(ConnectError::Protocol);
        }
    };
    // "HTTP/1.1 101 Switching Protocols"
    let status = std::str::from_utf8(buffer.get(9..12).ok_or(ConnectError::Protocol)?)
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(ConnectError::Protocol)?;
    if status != 101 {
        return Err(ConnectError::Status(status));
    }
    let leftover = buffer.split_off(end);
    Ok(Opened { stream, leftover })
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(offset) = haystack[from..].iter().position(|b| *b == first) {
        let at = from + offset;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame parsed from the receive buffer (server frames are not masked).
#[derive(Debug, PartialEq)]
pub struct Frame<'a> {
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// Parses the frame at the start of `buffer`: the frame and the bytes it took, or None when
/// the frame is not complete yet. A masked frame (not sent by servers) is skipped as opcode
/// 0xFF.
pub fn parse(buffer: &[u8]) -> Option<(Frame<'_>, usize)> {
    if buffer.len() < 2 {
        return None;
    }
    let opcode = buffer[0] & 0x0F;
    let masked = buffer[1] & 0x80 != 0;
    let (length, mut at): (usize, usize) = match buffer[1] & 0x7F {
        126 => (
            u16::from_be_bytes(buffer.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buffer.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        short => (short as usize, 2),
    };
    if masked {
        at += 4;
    }
    let end = at.checked_add(length)?;
    let payload = buffer.get(at..end)?;
    let opcode = if masked { 0xFF } else { opcode };
    Some((Frame { opcode, payload }, end))
}

/// A complete, masked client frame.
pub fn encode(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4]),
    );
    frame
}

/// Standard (or, with `url`, URL-safe unpadded) base64.
pub fn base64(bytes: &[u8], url: bool) -> String {
    let alphabet: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b"", false), "");
        assert_eq!(base64(b"f", false), "Zg==");
        assert_eq!(base64(b"fo", false), "Zm8=");
        assert_eq!(base64(b"foobar", false), "Zm9vYmFy");
        assert_eq!(base64(b"fo", true), "Zm8");
        assert_eq!(base64(&[0xfb, 0xff], true), "-_8");
    }

    #[test]
    fn parses_frames_and_waits_for_more() {
        let mut bytes = vec![0x81, 5];
        bytes.extend_from_slice(b"hello");
        bytes.extend_from_slice(&[0x89, 0]);
        let (frame, used) = parse(&bytes).unwrap();
        assert_eq!(
            (frame.opcode, frame.payload, used),
            (OP_TEXT, &b"hello"[..], 7)
        );
        let (frame, used) = parse(&bytes[7..]).unwrap();
        assert_eq!((frame.opcode, used), (OP_PING, 2));
        assert!(parse(&bytes[..6]).is_none());
        let mut long = vec![0x81, 126, 1, 0];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(parse(&long).unwrap().1, 260);
        assert!(parse(&long[..100]).is_none());
    }

    #[test]
    fn encodes_masked_frames() {
        let frame = encode(OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        // RFC 6455 §5.7, "A single-frame masked text message".
        assert_eq!(
            frame,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
    }

    #[test]
    fn finds_needles() {
        assert_eq!(find(b"abc\r\n\r\nxyz", b"\r\n\r\n"), Some(3));
        assert_eq!(find(b"aaab", b"ab"), Some(2));
        assert_eq!(find(b"abc", b"abd"), None);
    }
}
