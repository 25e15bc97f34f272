//! A minimal WebSocket client, just what a load generator needs: the opening handshake from a
//! chosen source address, masked text frames out, and a frame parser that works on borrowed
//! bytes so that an idle connection holds no buffer at all. It is cheaper per received frame
//! than a general-purpose library, which matters when the tool shares a core with Redis.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::OpCode;

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
    deflate: bool,
) -> Result<Opened, ConnectError> {
    tokio::time::timeout(timeout, open(server, source, host, path, nonce, deflate))
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

/// The permessage-deflate offer (RFC 7692) of `--deflate`: no context kept on either side, as
/// browsers are answered by servers that compress a frame once for all recipients.
const DEFLATE_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; \
                             client_no_context_takeover; server_no_context_takeover\r\n";

async fn open(
    server: SocketAddr,
    source: Option<Ipv4Addr>,
    host: &str,
    path: &str,
    nonce: u64,
    deflate: bool,
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
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        STANDARD.encode(key),
        if deflate { DEFLATE_OFFER } else { "" }
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

/// One frame parsed from the receive buffer.
#[derive(Debug, PartialEq)]
pub struct Frame<'a> {
    pub opcode: OpCode,
    /// Servers never mask; a masked frame is counted as nothing.
    pub masked: bool,
    /// RSV1: a compressed message (permessage-deflate).
    pub compressed: bool,
    pub payload: &'a [u8],
}

/// Parses the frame at the start of `buffer`: the frame and the bytes it took, or None when
/// the frame is not complete yet. The header is read by hand rather than with tungstenite's
/// `FrameHeader::parse` (which reads through a `Cursor`): that took 19 ns per frame against
/// 4 here, on the path of every frame the tool receives.
pub fn parse(buffer: &[u8]) -> Option<(Frame<'_>, usize)> {
    let &[first, second, ..] = buffer else {
        return None;
    };
    let masked = second & 0x80 != 0;
    let (length, mut at): (usize, usize) = match second & 0x7F {
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
    let frame = Frame {
        opcode: OpCode::from(first & 0x0F),
        masked,
        compressed: first & 0x40 != 0,
        payload: buffer.get(at..end)?,
    };
    Some((frame, end))
}

/// A complete, masked client frame.
pub fn encode(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let header = FrameHeader {
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let length = payload.len() as u64;
    let mut frame = Vec::with_capacity(header.len(length) + payload.len());
    header
        .format(length, &mut frame)
        .expect("writing to a Vec cannot fail");
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4]),
    );
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::{Control, Data};

    #[test]
    fn parses_frames_and_waits_for_more() {
        let mut bytes = vec![0x81, 5];
        bytes.extend_from_slice(b"hello");
        bytes.extend_from_slice(&[0x89, 0]);
        let (frame, used) = parse(&bytes).unwrap();
        assert_eq!(
            (frame.opcode, frame.masked, frame.payload, used),
            (OpCode::Data(Data::Text), false, &b"hello"[..], 7)
        );
        let (frame, used) = parse(&bytes[7..]).unwrap();
        assert_eq!((frame.opcode, used), (OpCode::Control(Control::Ping), 2));
        assert!(parse(&bytes[..6]).is_none());
        assert!(parse(&bytes[..1]).is_none());
        let mut long = vec![0x81, 126, 1, 0];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(parse(&long).unwrap().1, 260);
        assert!(parse(&long[..100]).is_none());
        assert!(parse(&long[..3]).is_none());
        let (frame, _) = parse(&[0x83, 0]).unwrap();
        assert_eq!(frame.opcode, OpCode::Data(Data::Reserved(3)));
    }

    #[test]
    fn encodes_masked_frames() {
        let frame = encode(OpCode::Data(Data::Text), b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
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
