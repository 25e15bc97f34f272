//! Server-side RFC 6455 framing, written for this daemon's two extremes rather than taken from a
//! general-purpose WebSocket stack.
//!
//! Outgoing, one Redis message becomes one frame that is written to thousands of sockets. Server
//! frames are never masked, so the same bytes are valid on every connection: a frame is encoded
//! once, with an exact-size allocation, into a [`Bytes`] whose clones share it.
//!
//! Incoming, the daemon holds 100k+ connections whose clients mostly send nothing but the odd
//! pong or command, so what matters is what a connection costs *between* reads. A [`Decoder`]
//! is a few words and owns no heap memory between frames: frames are unmasked and decoded in
//! place in the caller's read buffer, and only what must outlive a read (the start of a frame
//! the read cut short, or a fragmented message, which clients rarely send) is copied, into
//! buffers that grow only as bytes arrive and are released as soon as the frame or message is
//! complete. Every limit is checked on the header, before any payload is kept, so a client
//! announcing a huge frame is refused without costing memory.
//!
//! The one extension is permessage-deflate without context takeover (`deflate`): a compressed
//! frame is made from a plain one once, for every recipient that negotiated it, and a
//! compressed client message is inflated when it is complete, within the same limit. RSV1 is
//! accepted only from a client that negotiated it, and only on a message's first frame; RSV2
//! and RSV3 never.

use bytes::Bytes;

use crate::deflate::{self, InflateError};

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
/// "Per-message compressed" under permessage-deflate (RFC 7692 §6).
const RSV1: u8 = 0x40;
const OPCODE: u8 = 0x0F;
const MASKED: u8 = 0x80;
const LEN7: u8 = 0x7F;
/// The largest control-frame payload (RFC 6455 §5.5); also the most a 7-bit length can say.
const MAX_CONTROL: usize = 125;
const MASK_LEN: usize = 4;

// Opcodes (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A complete server text frame (FIN set, unmasked): header + payload, ready to write to any
/// socket. The caller guarantees `payload` is UTF-8.
pub fn text(payload: &[u8]) -> Bytes {
    encode(TEXT, &[payload])
}

/// A binary frame: a raw route whose payload is not UTF-8.
pub fn binary(payload: &[u8]) -> Bytes {
    encode(BINARY, &[payload])
}

/// A ping; a payload over 125 bytes is truncated, as a control frame cannot carry more.
pub fn ping(payload: &[u8]) -> Bytes {
    encode(PING, &[control_payload(payload)])
}

/// A pong; a payload over 125 bytes is truncated, as a control frame cannot carry more.
pub fn pong(payload: &[u8]) -> Bytes {
    encode(PONG, &[control_payload(payload)])
}

/// A close frame: `code` big-endian, then `reason` cut at a char boundary to fit the
/// 125 bytes of a control frame (the client validates the reason as UTF-8).
pub fn close(code: u16, reason: &str) -> Bytes {
    let reason = truncate_at_char(reason, MAX_CONTROL - 2);
    encode(CLOSE, &[&code.to_be_bytes(), reason.as_bytes()])
}

/// The payload of a frame made by this module (unmasked, whole).
pub fn payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|second| second & LEN7) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

/// The same message as `frame` (a text or binary frame made by this module), compressed at
/// `level` into a frame with RSV1 set: one deflate stream of its own, valid on every
/// connection that negotiated permessage-deflate.
pub fn deflated(frame: &[u8], level: u32) -> Bytes {
    let opcode = frame.first().map_or(TEXT, |first| first & OPCODE);
    encode(RSV1 | opcode, &[&deflate::compress(payload(frame), level)])
}

/// One frame from its payload's parts, so a close frame needs no intermediate buffer.
/// `opcode` may carry RSV1.
fn encode(opcode: u8, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let extended = if len <= MAX_CONTROL {
        0
    } else if len <= usize::from(u16::MAX) {
        2
    } else {
        8
    };
    // Exact size: the frame may sit in thousands of outboxes, but it is one allocation, and
    // `Bytes::from` keeps it as is.
    let mut frame = Vec::with_capacity(2 + extended + len);
    frame.push(FIN | opcode);
    // The casts cannot truncate: each branch is taken only for lengths that fit.
    match extended {
        0 => frame.push(len as u8),
        2 => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    for part in parts {
        frame.extend_from_slice(part);
    }
    Bytes::from(frame)
}

fn control_payload(payload: &[u8]) -> &[u8] {
    payload.get(..MAX_CONTROL).unwrap_or(payload)
}

fn truncate_at_char(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    // Ends at 0 at the latest, which is always a boundary.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// A message or control frame decoded from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The close code and reason, when the frame had a body.
    Close(Option<(u16, &'a str)>),
}

/// Why the connection must be closed; `close_code()` is what to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A frame or message over the limit: 1009.
    TooBig,
    /// Broken framing (unmasked client frame, reserved bits, unknown opcode, fragmented or
    /// oversized control frame, continuation without a start, a new message inside a fragmented
    /// one, bad close payload/code): 1002.
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8: 1007.
    InvalidUtf8,
    /// A compressed message that is not a deflate stream: 1007.
    Corrupt,
}

impl Violation {
    /// The close code to send (RFC 6455 §7.4.1).
    pub fn close_code(self) -> u16 {
        match self {
            Violation::TooBig => 1009,
            Violation::Protocol(_) => 1002,
            Violation::InvalidUtf8 | Violation::Corrupt => 1007,
        }
    }

    /// Short, for the close frame and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Violation::TooBig => "frame too big",
            Violation::Protocol(reason) => reason,
            Violation::InvalidUtf8 => "invalid UTF-8",
            Violation::Corrupt => "invalid compressed data",
        }
    }
}

/// What the callback wants after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// The kind of a data message, kept while its fragments arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

/// What a frame is, given the message state it arrives in.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// A data frame: a whole message, its first fragment or a continuation. `fin` ends the
    /// message; `compressed`: the message's first frame had RSV1.
    Data {
        kind: Kind,
        compressed: bool,
        fin: bool,
    },
    Ping,
    Pong,
    Close,
}

/// A validated frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    role: Role,
    mask: [u8; MASK_LEN],
    /// Header bytes, up to and including the mask.
    len: usize,
    /// Header and payload bytes.
    total: usize,
}

/// The result of reading a header from the bytes at hand.
enum Parsed {
    /// The header is at least this many bytes and they have not all arrived.
    Incomplete(usize),
    Header(Header),
}

/// Decodes the client side of one connection.
///
/// After `on_frame` returned [`Flow::Stop`] or `feed` returned an error, the decoder is spent:
/// it releases what it held, and later calls deliver nothing and return `Ok`.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The start of a frame that a read cut short, still masked; never any byte past that frame.
    partial: Vec<u8>,
    /// The unmasked payloads so far of a fragmented message.
    message: Vec<u8>,
    /// The kind of the fragmented message being received, and whether it is compressed.
    fragmented: Option<(Kind, bool)>,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    inflate: bool,
    spent: bool,
}

impl Decoder {
    /// `max_message`: the largest message (a single frame or the sum of a fragmented message's
    /// frames) accepted. It bounds every frame, control frames included.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            partial: Vec::new(),
            message: Vec::new(),
            fragmented: None,
            inflate: false,
            spent: false,
        }
    }

    /// The decoder of a connection that negotiated permessage-deflate: a message whose first
    /// frame has RSV1 is inflated once complete, to at most `max_message` bytes (past them:
    /// [`Violation::TooBig`], after no more work than that). The compressed bytes count
    /// against `max_message` too, as they arrive.
    pub fn inflating(self) -> Decoder {
        Decoder {
            inflate: true,
            ..self
        }
    }

    /// Decodes every complete frame in `input` (the bytes one read returned; unmasked IN PLACE,
    /// hence &mut), calling `on_frame` for each complete message and each control frame, in
    /// order; an incomplete frame's bytes are kept for the next call. Returns Ok after consuming
    /// all input or when `on_frame` returned Stop (the rest of the input is then discarded and
    /// further calls are ignored); Err at the first violation (nothing after it is delivered,
    /// and further calls are ignored).
    ///
    /// A Close frame does not stop decoding by itself: the callback should return Stop.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        on_frame: &mut dyn FnMut(Frame<'_>) -> Flow,
    ) -> Result<(), Violation> {
        if self.spent {
            return Ok(());
        }
        match self.decode(input, on_frame) {
            Ok(Flow::Continue) => Ok(()),
            outcome => {
                // The connection is ending: nothing held is needed any more.
                *self = Decoder {
                    spent: true,
                    inflate: self.inflate,
                    ..Decoder::new(self.max_message)
                };
                outcome.map(|_| ())
            }
        }
    }

    /// Bytes held between calls (an incomplete frame plus a partly received fragmented
    /// message): for tests and memory accounting.
    ///
    /// At most `max_message` + 131: a fragmented message at the limit, plus a control frame
    /// (6 + 125 bytes) cut short between its fragments; a data frame's header is at most 14.
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.message.len()
    }

    fn decode(
        &mut self,
        input: &mut [u8],
        on_frame: &mut dyn FnMut(Frame<'_>) -> Flow,
    ) -> Result<Flow, Violation> {
        let mut rest = input;
        if !self.partial.is_empty() {
            let Some(header) = self.complete_partial(&mut rest)? else {
                return Ok(Flow::Continue);
            };
            // Taken, so its allocation is freed once the frame is delivered.
            let mut frame = std::mem::take(&mut self.partial);
            if self.deliver(&mut frame, header, on_frame)? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        // The common case: whole frames in the read buffer, decoded where they lie.
        while !rest.is_empty() {
            let header = match self.parse(rest)? {
                Parsed::Header(header) if rest.len() >= header.total => header,
                _ => {
                    self.partial.extend_from_slice(rest);
                    return Ok(Flow::Continue);
                }
            };
            let (frame, tail) = std::mem::take(&mut rest).split_at_mut(header.total);
            rest = tail;
            if self.deliver(frame, header, on_frame)? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// Moves bytes from the head of `input` to `partial` until it holds a whole frame, and
    /// returns that frame's header; `None` when `input` ran out first. Only the bytes the frame
    /// lacks are taken, and the header is checked as soon as it is complete, before its payload
    /// is copied.
    fn complete_partial(&mut self, input: &mut &mut [u8]) -> Result<Option<Header>, Violation> {
        loop {
            let needed = match self.parse(&self.partial)? {
                Parsed::Header(header) if self.partial.len() >= header.total => {
                    return Ok(Some(header));
                }
                Parsed::Header(header) => header.total,
                Parsed::Incomplete(len) => len,
            };
            let available = std::mem::take(input);
            let take = needed
                .saturating_sub(self.partial.len())
                .min(available.len());
            let (head, tail) = available.split_at_mut(take);
            *input = tail;
            if head.is_empty() {
                return Ok(None);
            }
            self.partial.extend_from_slice(head);
        }
    }

    /// What a frame is, from its first byte and its 7-bit length, by the opcode rules of
    /// RFC 6455 (§5.4, §5.5) and RFC 7692 (RSV1 only on a message's first frame).
    fn role(&self, first: u8, len7: u8) -> Result<Role, Violation> {
        let compressed = first & RSV1 != 0;
        let fin = first & FIN != 0;
        let control = |role| {
            if compressed {
                Err(Violation::Protocol("compressed control frame"))
            } else if !fin {
                Err(Violation::Protocol("fragmented control frame"))
            } else if usize::from(len7) > MAX_CONTROL {
                Err(Violation::Protocol("control frame over 125 bytes"))
            } else {
                Ok(role)
            }
        };
        let start = |kind| match self.fragmented {
            Some(_) => Err(Violation::Protocol("new message inside a fragmented one")),
            None => Ok(Role::Data {
                kind,
                compressed,
                fin,
            }),
        };
        match first & OPCODE {
            CONTINUATION if compressed => Err(Violation::Protocol("RSV1 on a continuation frame")),
            CONTINUATION => match self.fragmented {
                Some((kind, compressed)) => Ok(Role::Data {
                    kind,
                    compressed,
                    fin,
                }),
                None => Err(Violation::Protocol("continuation without a start")),
            },
            TEXT => start(Kind::Text),
            BINARY => start(Kind::Binary),
            CLOSE => control(Role::Close),
            PING => control(Role::Ping),
            PONG => control(Role::Pong),
            _ => Err(Violation::Protocol("unknown opcode")),
        }
    }

    /// Reads and checks the header at the start of `bytes`, failing as early as the bytes at
    /// hand allow.
    fn parse(&self, bytes: &[u8]) -> Result<Parsed, Violation> {
        let &[first, second, ref after @ ..] = bytes else {
            return Ok(Parsed::Incomplete(2));
        };
        let compressed = first & RSV1 != 0;
        if first & RSV & !RSV1 != 0 || (compressed && !self.inflate) {
            return Err(Violation::Protocol("reserved bits set"));
        }
        if second & MASKED == 0 {
            return Err(Violation::Protocol("unmasked client frame"));
        }
        let len7 = second & LEN7;
        let role = self.role(first, len7)?;
        // Non-minimal length encodings are accepted: refusing them would protect nothing.
        let (payload, extended) = match len7 {
            126 => match after.first_chunk() {
                Some(&bytes) => (u64::from(u16::from_be_bytes(bytes)), 2),
                None => return Ok(Parsed::Incomplete(2 + 2 + MASK_LEN)),
            },
            127 => match after.first_chunk() {
                Some(&bytes) => (u64::from_be_bytes(bytes), 8),
                None => return Ok(Parsed::Incomplete(2 + 8 + MASK_LEN)),
            },
            short => (u64::from(short), 0),
        };
        if payload >> 63 != 0 {
            return Err(Violation::Protocol("64-bit length with the top bit set"));
        }
        // A continuation (the only data frame allowed while a message is open) counts with what
        // its message already holds, so the limit bounds the whole message and is enforced
        // before the fragment's payload is kept.
        let held = match role {
            Role::Data { .. } if self.fragmented.is_some() => self.message.len(),
            _ => 0,
        };
        let payload = usize::try_from(payload)
            .ok()
            .filter(|&payload| payload <= self.max_message.saturating_sub(held))
            .ok_or(Violation::TooBig)?;
        let len = 2 + extended + MASK_LEN;
        let Some(&mask) = after.get(extended..).and_then(<[u8]>::first_chunk) else {
            return Ok(Parsed::Incomplete(len));
        };
        let total = len.checked_add(payload).ok_or(Violation::TooBig)?;
        Ok(Parsed::Header(Header {
            role,
            mask,
            len,
            total,
        }))
    }

    /// Unmasks one whole frame (header included) in place and hands on what it completes.
    fn deliver(
        &mut self,
        frame: &mut [u8],
        header: Header,
        on_frame: &mut dyn FnMut(Frame<'_>) -> Flow,
    ) -> Result<Flow, Violation> {
        let payload = frame.get_mut(header.len..).unwrap_or_default();
        for chunk in payload.chunks_mut(MASK_LEN) {
            for (byte, key) in chunk.iter_mut().zip(header.mask) {
                *byte ^= key;
            }
        }
        let payload = &*payload;
        match header.role {
            Role::Ping => Ok(on_frame(Frame::Ping(payload))),
            Role::Pong => Ok(on_frame(Frame::Pong(payload))),
            Role::Close => Ok(on_frame(close_frame(payload)?)),
            // A message in one frame (or whose earlier fragments were empty) is delivered from
            // where it lies, without a copy.
            Role::Data {
                kind,
                compressed,
                fin: true,
            } if self.message.is_empty() => {
                self.fragmented = None;
                complete(kind, compressed, payload, self.max_message, on_frame)
            }
            Role::Data {
                kind,
                compressed,
                fin: false,
            } => {
                self.fragmented = Some((kind, compressed));
                self.message.extend_from_slice(payload);
                Ok(Flow::Continue)
            }
            Role::Data {
                kind,
                compressed,
                fin: true,
            } => {
                self.fragmented = None;
                self.message.extend_from_slice(payload);
                // Taken, so its allocation is freed once the message is delivered. A code
                // point may straddle fragments, hence UTF-8 is checked on the whole message.
                let whole = std::mem::take(&mut self.message);
                complete(kind, compressed, &whole, self.max_message, on_frame)
            }
        }
    }
}

/// Hands a whole message on, inflated first if it came compressed; the inflated bytes live
/// only as long as the call.
fn complete(
    kind: Kind,
    compressed: bool,
    payload: &[u8],
    max_message: usize,
    on_frame: &mut dyn FnMut(Frame<'_>) -> Flow,
) -> Result<Flow, Violation> {
    if !compressed {
        return Ok(on_frame(message(kind, payload)?));
    }
    let inflated = deflate::inflate(payload, max_message).map_err(|error| match error {
        InflateError::TooBig => Violation::TooBig,
        InflateError::Corrupt => Violation::Corrupt,
    })?;
    Ok(on_frame(message(kind, &inflated)?))
}

fn message(kind: Kind, payload: &[u8]) -> Result<Frame<'_>, Violation> {
    match kind {
        Kind::Text => std::str::from_utf8(payload)
            .map(Frame::Text)
            .map_err(|_| Violation::InvalidUtf8),
        Kind::Binary => Ok(Frame::Binary(payload)),
    }
}

fn close_frame(payload: &[u8]) -> Result<Frame<'_>, Violation> {
    let &[high, low, ref reason @ ..] = payload else {
        return if payload.is_empty() {
            Ok(Frame::Close(None))
        } else {
            Err(Violation::Protocol("close payload of one byte"))
        };
    };
    let code = u16::from_be_bytes([high, low]);
    // RFC 6455 §7.4: 1004-1006 and 1015 are reserved and must never be sent; codes below 3000
    // are for the RFC and registered extensions, 3000-4999 for libraries and applications.
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(Violation::Protocol("invalid close code"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
    Ok(Frame::Close(Some((code, reason))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A frame as a client sends it: `first` is the whole first byte (FIN, RSV, opcode), the
    /// length in its shortest form, masked with `KEY` unless `masked` is false.
    fn raw(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut frame = vec![first];
        let mask_bit = if masked { MASKED } else { 0 };
        if payload.len() <= MAX_CONTROL {
            frame.push(mask_bit | payload.len() as u8);
        } else if let Ok(len) = u16::try_from(payload.len()) {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&len.to_be_bytes());
        } else {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        if masked {
            frame.extend_from_slice(&KEY);
            frame.extend(payload.iter().zip(KEY.iter().cycle()).map(|(b, k)| b ^ k));
        } else {
            frame.extend_from_slice(payload);
        }
        frame
    }

    /// A masked client frame.
    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        raw(if fin { FIN } else { 0 } | opcode, payload, true)
    }

    fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(reason);
        body
    }

    /// A masked header announcing `len` in the 64-bit form, without its payload.
    fn header64(first: u8, len: u64) -> Vec<u8> {
        let mut header = vec![first, MASKED | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&KEY);
        header
    }

    /// The server frame turned into the client frame carrying the same payload.
    fn masked(server_frame: &[u8]) -> Vec<u8> {
        let (header_len, len) = match server_frame[1] {
            126 => (
                4,
                u16::from_be_bytes([server_frame[2], server_frame[3]]) as usize,
            ),
            127 => (
                10,
                u64::from_be_bytes(server_frame[2..10].try_into().unwrap()) as usize,
            ),
            short => (2, short as usize),
        };
        assert_eq!(server_frame.len(), header_len + len, "frame length");
        let mut frame = server_frame[..header_len].to_vec();
        frame[1] |= MASKED;
        frame.extend_from_slice(&KEY);
        let payload = &server_frame[header_len..];
        frame.extend(payload.iter().zip(KEY.iter().cycle()).map(|(b, k)| b ^ k));
        frame
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    impl From<Frame<'_>> for Owned {
        fn from(frame: Frame<'_>) -> Owned {
            match frame {
                Frame::Text(text) => Owned::Text(text.to_owned()),
                Frame::Binary(data) => Owned::Binary(data.to_vec()),
                Frame::Ping(data) => Owned::Ping(data.to_vec()),
                Frame::Pong(data) => Owned::Pong(data.to_vec()),
                Frame::Close(body) => {
                    Owned::Close(body.map(|(code, reason)| (code, reason.to_owned())))
                }
            }
        }
    }

    /// Feeds each read in turn (stopping at the first error) and returns the frames delivered
    /// and the outcome.
    fn feed_reads(decoder: &mut Decoder, reads: &[&[u8]]) -> (Vec<Owned>, Result<(), Violation>) {
        let mut frames = Vec::new();
        for read in reads {
            let mut buffer = read.to_vec();
            let outcome = decoder.feed(&mut buffer, &mut |frame| {
                frames.push(Owned::from(frame));
                Flow::Continue
            });
            if outcome.is_err() {
                return (frames, outcome);
            }
        }
        (frames, Ok(()))
    }

    fn decode(max_message: usize, stream: &[u8]) -> (Vec<Owned>, Result<(), Violation>) {
        feed_reads(&mut Decoder::new(max_message), &[stream])
    }

    fn assert_nothing_held(decoder: &Decoder) {
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(
            decoder.partial.capacity(),
            0,
            "partial frame buffer retained"
        );
        assert_eq!(decoder.message.capacity(), 0, "message buffer retained");
    }

    #[test]
    fn decoder_is_small() {
        assert!(
            size_of::<Decoder>() <= 64,
            "Decoder is {} bytes",
            size_of::<Decoder>()
        );
    }

    #[test]
    fn text_lengths_at_the_encoding_boundaries_round_trip() {
        let cases: [(usize, &[u8]); 5] = [
            (0, &[0x81, 0]),
            (125, &[0x81, 125]),
            (126, &[0x81, 126, 0, 126]),
            (65535, &[0x81, 126, 0xff, 0xff]),
            (65536, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ];
        for (len, header) in cases {
            let payload: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let frame = text(payload.as_bytes());
            assert_eq!(&frame[..header.len()], header, "header for {len}");
            assert_eq!(
                &frame[header.len()..],
                payload.as_bytes(),
                "payload for {len}"
            );

            let expected = vec![Owned::Text(payload.clone())];
            assert_eq!(decode(len, &masked(&frame)), (expected.clone(), Ok(())));
            // The test-side encoder picks the same length forms.
            assert_eq!(masked(&frame), client(true, TEXT, payload.as_bytes()));
            let mut decoder = Decoder::new(len);
            assert_eq!(
                feed_reads(&mut decoder, &[&client(true, TEXT, payload.as_bytes())]),
                (expected, Ok(()))
            );
            assert_nothing_held(&decoder);
        }
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        let mut frame = header64(FIN | TEXT, 2);
        frame.extend(b"hi".iter().zip(KEY).map(|(b, k)| b ^ k));
        assert_eq!(decode(10, &frame), (vec![Owned::Text("hi".into())], Ok(())));
    }

    #[test]
    fn ping_and_pong_are_truncated_to_125_bytes() {
        let long = [7u8; 200];
        for (encode, opcode) in [(ping as fn(&[u8]) -> Bytes, PING), (pong, PONG)] {
            let frame = encode(&long);
            assert_eq!(frame[0], FIN | opcode);
            assert_eq!(frame[1], 125);
            assert_eq!(&frame[2..], &long[..125]);
            assert_eq!(&encode(b"abc")[..], &[FIN | opcode, 3, b'a', b'b', b'c']);
            assert_eq!(&encode(b"")[..], &[FIN | opcode, 0]);
        }
        assert_eq!(
            decode(125, &masked(&ping(&long))).0,
            vec![Owned::Ping(long[..125].to_vec())]
        );
    }

    #[test]
    fn close_reason_is_truncated_at_a_char_boundary() {
        assert_eq!(&close(1000, "")[..], &[0x88, 2, 0x03, 0xE8]);
        assert_eq!(
            &close(4001, "bye")[..],
            &[0x88, 5, 0x0F, 0xA1, b'b', b'y', b'e']
        );

        // 2-byte chars: 123 bytes would split the 62nd, so 61 are kept.
        let reason = "é".repeat(100);
        let frame = close(1001, &reason);
        assert_eq!(frame.len(), 2 + 2 + 122);
        let kept = "é".repeat(61);
        assert_eq!(
            decode(125, &masked(&frame)).0,
            vec![Owned::Close(Some((1001, kept)))]
        );

        let exact = "x".repeat(123);
        assert_eq!(close(1000, &exact).len(), 2 + 125);
        assert_eq!(close(1000, &"x".repeat(500)), close(1000, &exact));
    }

    #[test]
    fn violations_have_their_close_codes() {
        assert_eq!(Violation::TooBig.close_code(), 1009);
        assert_eq!(Violation::Protocol("x").close_code(), 1002);
        assert_eq!(Violation::InvalidUtf8.close_code(), 1007);
        assert_eq!(Violation::Corrupt.close_code(), 1007);
        assert_eq!(Violation::Protocol("why").reason(), "why");
        for violation in [
            Violation::TooBig,
            Violation::InvalidUtf8,
            Violation::Corrupt,
        ] {
            assert!(!violation.reason().is_empty());
        }
    }

    /// Several frames of every kind, with a fragmented text (a code point split across
    /// fragments, a control frame in between) and a 16-bit length.
    fn stream() -> (Vec<u8>, Vec<Owned>) {
        let long = "ß".repeat(100);
        let parts: [(Vec<u8>, Option<Owned>); 13] = [
            (
                client(true, TEXT, b"hello"),
                Some(Owned::Text("hello".into())),
            ),
            (
                client(true, BINARY, &[0, 1, 2, 255]),
                Some(Owned::Binary(vec![0, 1, 2, 255])),
            ),
            (client(true, PING, b"p"), Some(Owned::Ping(b"p".to_vec()))),
            (client(false, TEXT, "h\u{e9}llo w".as_bytes()), None),
            // "ö" is C3 B6: split across two fragments.
            (client(false, CONTINUATION, b"\xC3"), None),
            (client(true, PONG, b""), Some(Owned::Pong(Vec::new()))),
            (
                client(true, CONTINUATION, b"\xB6rld"),
                Some(Owned::Text("h\u{e9}llo w\u{f6}rld".into())),
            ),
            (client(true, TEXT, b""), Some(Owned::Text(String::new()))),
            (
                client(true, TEXT, long.as_bytes()),
                Some(Owned::Text(long.clone())),
            ),
            (client(false, BINARY, b""), None),
            (
                client(true, CONTINUATION, b"\x01"),
                Some(Owned::Binary(vec![1])),
            ),
            // A new message after one whose earlier fragments were empty.
            (
                client(true, TEXT, b"next"),
                Some(Owned::Text("next".into())),
            ),
            (
                client(true, CLOSE, &close_body(1000, b"bye")),
                Some(Owned::Close(Some((1000, "bye".into())))),
            ),
        ];
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        for (frame, delivered) in parts {
            bytes.extend_from_slice(&frame);
            frames.extend(delivered);
        }
        (bytes, frames)
    }

    #[test]
    fn a_stream_decodes_the_same_however_it_is_split() {
        let (bytes, expected) = stream();
        let mut decoder = Decoder::new(1000);
        assert_eq!(
            feed_reads(&mut decoder, &[&bytes]),
            (expected.clone(), Ok(()))
        );
        assert_nothing_held(&decoder);

        let mut decoder = Decoder::new(1000);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            feed_reads(&mut decoder, &bytewise),
            (expected.clone(), Ok(()))
        );
        assert_nothing_held(&decoder);

        for first in 0..=bytes.len() {
            for second in first..=bytes.len() {
                let reads = [&bytes[..first], &bytes[first..second], &bytes[second..]];
                let mut decoder = Decoder::new(1000);
                assert_eq!(
                    feed_reads(&mut decoder, &reads),
                    (expected.clone(), Ok(())),
                    "cut at {first} and {second}"
                );
                assert_nothing_held(&decoder);
            }
        }
    }

    #[test]
    fn fragmented_text_may_split_a_code_point() {
        // "€" is E2 82 AC, one byte per fragment.
        let mut bytes = client(false, TEXT, b"\xE2");
        bytes.extend(client(false, CONTINUATION, b"\x82"));
        bytes.extend(client(true, CONTINUATION, b"\xAC!"));
        assert_eq!(decode(10, &bytes), (vec![Owned::Text("€!".into())], Ok(())));
    }

    #[test]
    fn control_frames_pass_between_fragments() {
        let mut bytes = client(false, BINARY, b"ab");
        bytes.extend(client(true, PING, b"1"));
        bytes.extend(client(false, CONTINUATION, b"cd"));
        bytes.extend(client(true, CLOSE, b""));
        bytes.extend(client(true, CONTINUATION, b"e"));
        assert_eq!(
            decode(10, &bytes),
            (
                vec![
                    Owned::Ping(b"1".to_vec()),
                    Owned::Close(None),
                    Owned::Binary(b"abcde".to_vec()),
                ],
                Ok(())
            )
        );
    }

    #[test]
    fn a_control_frame_fits_beside_a_full_fragmented_message() {
        // The message is at the limit; a ping in between still gets through, so what is held
        // can exceed the limit by a control frame (header and payload).
        let mut decoder = Decoder::new(10);
        let ping_frame = client(true, PING, &[9; 10]);
        let mut bytes = client(false, TEXT, b"0123456789");
        bytes.extend_from_slice(&ping_frame[..ping_frame.len() - 1]);
        assert_eq!(feed_reads(&mut decoder, &[&bytes]), (Vec::new(), Ok(())));
        assert_eq!(decoder.buffered(), 10 + ping_frame.len() - 1);
        let mut rest = ping_frame[ping_frame.len() - 1..].to_vec();
        rest.extend(client(true, CONTINUATION, b""));
        assert_eq!(
            feed_reads(&mut decoder, &[&rest]),
            (
                vec![Owned::Ping(vec![9; 10]), Owned::Text("0123456789".into())],
                Ok(())
            )
        );
        assert_nothing_held(&decoder);
    }

    #[test]
    fn every_violation_closes_with_its_code() {
        let mut huge_length = vec![FIN | BINARY, MASKED | 127];
        huge_length.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge_length.extend_from_slice(&KEY);
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("unmasked", raw(FIN | TEXT, b"hi", false), 1002),
            ("RSV1", client(true, 0x40 | TEXT, b"hi"), 1002),
            ("RSV2", client(true, 0x20 | TEXT, b"hi"), 1002),
            ("RSV3", client(true, 0x10 | TEXT, b"hi"), 1002),
            ("opcode 3", client(true, 0x3, b""), 1002),
            ("opcode 7", client(true, 0x7, b""), 1002),
            ("opcode B", client(true, 0xB, b""), 1002),
            ("opcode F", client(true, 0xF, b""), 1002),
            ("fragmented ping", client(false, PING, b""), 1002),
            ("fragmented close", client(false, CLOSE, b""), 1002),
            ("ping over 125", client(true, PING, &[0; 126]), 1002),
            ("pong over 125", client(true, PONG, &[0; 126]), 1002),
            ("top length bit", huge_length, 1002),
            ("bare continuation", client(true, CONTINUATION, b"x"), 1002),
            ("close of one byte", client(true, CLOSE, &[3]), 1002),
            ("invalid text", client(true, TEXT, b"\xC3\x28"), 1007),
            (
                "truncated code point",
                client(true, TEXT, b"ab\xE2\x82"),
                1007,
            ),
            (
                "close reason not UTF-8",
                client(true, CLOSE, &close_body(1000, b"\xFF")),
                1007,
            ),
            ("too big", client(true, BINARY, &[0; 11]), 1009),
            ("too big text", client(true, TEXT, &[b'a'; 200]), 1009),
        ];
        for (name, bad, code) in cases {
            check_violation(name, &[], bad, code);
        }

        let open = client(false, TEXT, b"ab");
        check_violation(
            "text inside a message",
            &open,
            client(true, TEXT, b"c"),
            1002,
        );
        check_violation(
            "binary inside a message",
            &open,
            client(false, BINARY, b"c"),
            1002,
        );
        check_violation(
            "message over the limit",
            &open,
            client(true, CONTINUATION, &[b'c'; 9]),
            1009,
        );
        let mut split = client(false, TEXT, b"\xE2\x82");
        split.extend(client(false, CONTINUATION, b"x"));
        check_violation(
            "invalid fragmented text",
            &split,
            client(true, CONTINUATION, b""),
            1007,
        );

        for code in
            (0..=u16::MAX).filter(|code| !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999))
        {
            let body = close_body(code, b"");
            check_violation("close code", &[], client(true, CLOSE, &body), 1002);
        }
        for code in [1000, 1001, 1002, 1003, 1007, 1010, 1014, 3000, 4999] {
            let (frames, outcome) = decode(10, &client(true, CLOSE, &close_body(code, b"ok")));
            assert_eq!(outcome, Ok(()), "code {code}");
            assert_eq!(frames, vec![Owned::Close(Some((code, "ok".into())))]);
        }
    }

    /// `before`, then `bad`, then a valid frame: the frames of `before` that are complete are
    /// delivered, then the violation, and nothing after it.
    fn check_violation(name: &str, before: &[u8], bad: Vec<u8>, code: u16) {
        let (expected, outcome) = decode(10, before);
        assert_eq!(outcome, Ok(()), "{name}: prefix");
        let mut bytes = before.to_vec();
        bytes.extend(bad);
        bytes.extend(client(true, TEXT, b"after"));
        let mut decoder = Decoder::new(10);
        let (frames, outcome) = feed_reads(&mut decoder, &[&bytes]);
        let violation = outcome.expect_err(name);
        assert_eq!(violation.close_code(), code, "{name}: {violation:?}");
        assert!(violation.reason().len() <= MAX_CONTROL - 2, "{name}");
        assert_eq!(frames, expected, "{name}");
        assert_nothing_held(&decoder);
        // Spent: nothing more is delivered.
        assert_eq!(
            feed_reads(&mut decoder, &[&client(true, TEXT, b"x")]),
            (Vec::new(), Ok(())),
            "{name}"
        );
    }

    #[test]
    fn a_huge_length_is_refused_at_the_header() {
        let header = header64(FIN | BINARY, 1 << 62);
        let mut decoder = Decoder::new(1 << 20);
        assert_eq!(
            feed_reads(&mut decoder, &[&header[..5]]),
            (Vec::new(), Ok(()))
        );
        assert_eq!(decoder.buffered(), 5);
        assert_eq!(
            feed_reads(&mut decoder, &[&header[5..10]]),
            (Vec::new(), Err(Violation::TooBig))
        );
        assert_nothing_held(&decoder);

        // In one read the mask and payload need not even be there.
        for prefix in [10, header.len()] {
            let mut decoder = Decoder::new(1 << 20);
            let outcome = feed_reads(&mut decoder, &[&header[..prefix]]);
            assert_eq!(outcome, (Vec::new(), Err(Violation::TooBig)));
            assert_nothing_held(&decoder);
        }
    }

    #[test]
    fn the_limit_is_inclusive_and_counts_the_whole_message() {
        assert_eq!(decode(4, &client(true, BINARY, b"abcd")).1, Ok(()));
        assert_eq!(
            decode(3, &client(true, BINARY, b"abcd")).1,
            Err(Violation::TooBig)
        );
        assert_eq!(decode(0, &client(true, TEXT, b"")).1, Ok(()));
        assert_eq!(
            decode(0, &client(true, PING, b"x")).1,
            Err(Violation::TooBig)
        );

        let mut bytes = client(false, BINARY, b"ab");
        bytes.extend(client(true, CONTINUATION, b"cd"));
        assert_eq!(
            decode(4, &bytes),
            (vec![Owned::Binary(b"abcd".to_vec())], Ok(()))
        );

        // The fragment pushing the message over is refused on its header alone.
        let mut decoder = Decoder::new(3);
        let mut bytes = client(false, BINARY, b"ab");
        bytes.extend_from_slice(&client(true, CONTINUATION, b"cd")[..2]);
        assert_eq!(
            feed_reads(&mut decoder, &[&bytes]),
            (Vec::new(), Err(Violation::TooBig))
        );
    }

    #[test]
    fn stop_discards_the_rest() {
        let mut bytes = client(true, TEXT, b"one");
        bytes.extend(client(true, CLOSE, b""));
        bytes.extend(client(true, TEXT, b"three"));
        bytes.extend_from_slice(&client(true, TEXT, b"partial")[..3]);
        let mut decoder = Decoder::new(100);
        let mut seen = Vec::new();
        let outcome = decoder.feed(&mut bytes, &mut |frame| {
            let stop = matches!(frame, Frame::Close(_));
            seen.push(Owned::from(frame));
            if stop { Flow::Stop } else { Flow::Continue }
        });
        assert_eq!(outcome, Ok(()));
        assert_eq!(seen, vec![Owned::Text("one".into()), Owned::Close(None)]);
        assert_nothing_held(&decoder);
        assert_eq!(
            feed_reads(&mut decoder, &[&client(true, TEXT, b"four")]),
            (Vec::new(), Ok(()))
        );
    }

    #[test]
    fn stop_on_a_frame_completed_from_a_previous_read() {
        let frame = client(true, PING, b"ab");
        let mut decoder = Decoder::new(100);
        assert_eq!(
            feed_reads(&mut decoder, &[&frame[..3]]),
            (Vec::new(), Ok(()))
        );
        let mut rest = frame[3..].to_vec();
        rest.extend(client(true, TEXT, b"x"));
        let mut calls = 0;
        let outcome = decoder.feed(&mut rest, &mut |_| {
            calls += 1;
            Flow::Stop
        });
        assert_eq!((outcome, calls), (Ok(()), 1));
        assert_nothing_held(&decoder);
    }

    fn inflating(max_message: usize, stream: &[u8]) -> (Vec<Owned>, Result<(), Violation>) {
        feed_reads(&mut Decoder::new(max_message).inflating(), &[stream])
    }

    #[test]
    fn a_deflated_frame_is_the_plain_one_compressed() {
        let text_payload = "{\"n\":1,\"kind\":\"tick\"}".repeat(100);
        let plain = text(text_payload.as_bytes());
        assert_eq!(payload(&plain), text_payload.as_bytes());
        let compressed = deflated(&plain, 1);
        assert_eq!(compressed[0], FIN | RSV1 | TEXT);
        assert!(compressed.len() < plain.len() / 5);
        assert_eq!(
            deflate::inflate(payload(&compressed), text_payload.len()).unwrap(),
            text_payload.as_bytes()
        );
        let raw = binary(&[0xff; 300]);
        assert_eq!(deflated(&raw, 1)[0], FIN | RSV1 | BINARY);
        for len in [0, 125, 126, 65535, 65536] {
            assert_eq!(payload(&binary(&vec![7; len])).len(), len);
        }
    }

    #[test]
    fn compressed_messages_are_inflated_only_when_negotiated() {
        let long = "compressed ".repeat(50);
        let squeezed = deflate::compress(long.as_bytes(), 6);
        let frame = client(true, RSV1 | TEXT, &squeezed);
        assert_eq!(
            inflating(1000, &frame),
            (vec![Owned::Text(long.clone())], Ok(()))
        );
        assert_eq!(
            decode(1000, &frame).1,
            Err(Violation::Protocol("reserved bits set"))
        );
        // A plain message still passes on a compressed connection.
        assert_eq!(
            inflating(1000, &client(true, TEXT, b"plain")),
            (vec![Owned::Text("plain".into())], Ok(()))
        );

        // Fragmented: RSV1 on the first frame only, a ping in between, cut anywhere.
        let (head, tail) = squeezed.split_at(squeezed.len() / 2);
        let mut bytes = client(false, RSV1 | TEXT, head);
        bytes.extend(client(true, PING, b"p"));
        bytes.extend(client(true, CONTINUATION, tail));
        let expected = vec![Owned::Ping(b"p".to_vec()), Owned::Text(long.clone())];
        for cut in 0..=bytes.len() {
            let mut decoder = Decoder::new(1000).inflating();
            assert_eq!(
                feed_reads(&mut decoder, &[&bytes[..cut], &bytes[cut..]]),
                (expected.clone(), Ok(())),
                "cut at {cut}"
            );
            assert_nothing_held(&decoder);
        }
    }

    #[test]
    fn compression_violations_close_with_their_codes() {
        let squeezed = deflate::compress(b"hello hello hello", 6);
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("compressed ping", client(true, RSV1 | PING, b""), 1002),
            ("compressed close", client(true, RSV1 | CLOSE, b""), 1002),
            ("RSV2", client(true, 0x20 | TEXT, &squeezed), 1002),
            ("not deflate", client(true, RSV1 | TEXT, &[0xff; 8]), 1007),
            (
                "inflates to invalid UTF-8",
                client(true, RSV1 | TEXT, &deflate::compress(b"\xC3\x28", 1)),
                1007,
            ),
        ];
        for (name, bad, code) in cases {
            let (frames, outcome) = inflating(100, &bad);
            assert_eq!(frames, Vec::new(), "{name}");
            assert_eq!(outcome.map_err(Violation::close_code), Err(code), "{name}");
        }
        let mut continued = client(false, RSV1 | TEXT, &squeezed[..4]);
        continued.extend(client(true, RSV1 | CONTINUATION, &squeezed[4..]));
        assert_eq!(
            inflating(100, &continued).1,
            Err(Violation::Protocol("RSV1 on a continuation frame"))
        );
    }

    #[test]
    fn a_deflate_bomb_is_too_big_and_leaves_nothing_held() {
        let bomb = deflate::compress(&vec![b'a'; 2 << 20], 9);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let mut decoder = Decoder::new(20_000).inflating();
        assert_eq!(
            feed_reads(&mut decoder, &[&client(true, RSV1 | TEXT, &bomb)]),
            (Vec::new(), Err(Violation::TooBig))
        );
        assert_nothing_held(&decoder);
        // Exactly at the limit is fine.
        let full = deflate::compress(&[b'a'; 20_000], 9);
        assert_eq!(
            inflating(20_000, &client(true, RSV1 | TEXT, &full)),
            (vec![Owned::Text("a".repeat(20_000))], Ok(()))
        );
    }

    #[test]
    fn no_heap_is_retained_between_frames() {
        let mut decoder = Decoder::new(1000);
        assert_nothing_held(&decoder);

        // A frame cut across reads is held, then released once complete.
        let frame = client(true, TEXT, &[b'a'; 300]);
        feed_reads(&mut decoder, &[&frame[..100]]).1.unwrap();
        assert_eq!(decoder.buffered(), 100);
        assert!(decoder.partial.capacity() >= 100);
        feed_reads(&mut decoder, &[&frame[100..]]).1.unwrap();
        assert_nothing_held(&decoder);

        // A fragmented message is held, then released once delivered.
        feed_reads(&mut decoder, &[&client(false, BINARY, &[1; 50])])
            .1
            .unwrap();
        assert_eq!(decoder.buffered(), 50);
        assert!(decoder.message.capacity() >= 50);
        assert_eq!(decoder.partial.capacity(), 0);
        feed_reads(&mut decoder, &[&client(true, CONTINUATION, &[2; 50])])
            .1
            .unwrap();
        assert_nothing_held(&decoder);
    }

    #[test]
    fn whole_frames_are_decoded_in_place() {
        let mut bytes = client(true, TEXT, b"in place");
        let range = bytes.as_ptr_range();
        let mut decoder = Decoder::new(100);
        let mut inside = false;
        decoder
            .feed(&mut bytes, &mut |frame| {
                if let Frame::Text(text) = frame {
                    inside = range.contains(&text.as_ptr());
                }
                Flow::Continue
            })
            .unwrap();
        assert!(inside);
        assert_nothing_held(&decoder);
    }
}
