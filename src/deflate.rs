//! permessage-deflate (RFC 7692) without a context per connection: the negotiation of the
//! handshake, and the compression and inflation of one whole message at a time.
//!
//! The bridge always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`, so every message is a deflate stream of its own in both
//! directions: a route frame is compressed once and its bytes are valid for every recipient,
//! and a connection keeps no compressor or inflater between messages (an inflater lives for
//! the message it inflates, and a message is bounded by `websocket.max_frame_bytes`).
//!
//! The compressor is miniz_oxide's (pure Rust), whose window is always 32 KiB. A client that
//! asks for a smaller window (`server_max_window_bits`) is honoured by distance alone: no
//! back-reference reaches further than the start of the message, so a message no longer than
//! the client's window is valid for it whatever the compressor's window, and a longer one is
//! sent to it plain.

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

/// The bytes every compressed message ends with once flushed, removed before sending and
/// appended before inflating (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// The largest LZ77 window, 32 KiB: what the client's inflater has without
/// `server_max_window_bits`.
const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window a client may ask for (RFC 7692 §7.1.2).
const MIN_WINDOW_BITS: u8 = 8;

/// Output is grown by at least this much at a time while inflating.
const INFLATE_STEP: usize = 4096;

/// A permessage-deflate agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The LZ77 window the client inflates with (`server_max_window_bits`, 15 when the offer
    /// did not limit it): a message longer than that window goes to this client plain.
    pub window_bits: u8,
    /// Whether the offer limited the window: the answer must then name it.
    limited: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub fn response(&self) -> String {
        let mut answer = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if self.limited {
            answer.push_str(&format!("; server_max_window_bits={}", self.window_bits));
        }
        answer
    }
}

/// Whether a message of `len` bytes may be sent compressed to a client that inflates with a
/// window of `window_bits`: no back-reference may reach further than its window.
pub fn fits(window_bits: u8, len: usize) -> bool {
    window_bits >= MAX_WINDOW_BITS || len <= 1 << window_bits
}

/// The first acceptable permessage-deflate offer among the values of the request's
/// `Sec-WebSocket-Extensions` headers, in the client's order of preference. An offer with an
/// unknown, repeated or malformed parameter is not acceptable (RFC 7692 §5: decline it and
/// look at the next); offers of other extensions are ignored.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    values
        .into_iter()
        .flat_map(split_outside_quotes)
        .find_map(|offer| accept(offer.trim()))
}

/// Splits a header value at the commas that are not inside a quoted string.
fn split_outside_quotes(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&value[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// The agreement to one offer (`permessage-deflate; param[=value]; …`), if acceptable.
fn accept(offer: &str) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_window = None;
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (part, None),
        };
        if !is_token(name) {
            return None;
        }
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(value)) => server_window = Some(window_bits(&value)?),
            // The client's own window needs nothing from us: its messages are inflated with a
            // full window, which reads any smaller one.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(value)) => {
                window_bits(&value)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(Agreed {
        window_bits: server_window.unwrap_or(MAX_WINDOW_BITS),
        limited: server_window.is_some(),
    })
}

/// A window size: 8 to 15, in digits without a leading zero (RFC 7692 §7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value
        .parse()
        .ok()
        .filter(|bits| (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(bits))
}

/// A parameter's value: a token, or a quoted string whose content is a token (RFC 7692
/// §5.1); `None` when it is neither.
fn unquote(value: &str) -> Option<String> {
    let text = match value.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut text = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => text.push(chars.next()?),
                    '"' => return None,
                    c => text.push(c),
                }
            }
            text
        }
        None => value.to_owned(),
    };
    is_token(&text).then_some(text)
}

/// An HTTP token (RFC 7230 §3.2.6).
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `payload` as one raw deflate stream at `level` (0-9), flushed and without its final
/// `00 00 ff ff`: the payload of a compressed message (RFC 7692 §7.2.1).
pub fn compress(payload: &[u8], level: u32) -> Vec<u8> {
    let mut compressor = Compress::new(flate2::Compression::new(level), false);
    // Deflate never grows data by more than a few bytes per 16 KiB block.
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 1024 + 64);
    loop {
        let consumed = usize::try_from(compressor.total_in()).unwrap_or(usize::MAX);
        let rest = payload.get(consumed..).unwrap_or_default();
        if out.len() == out.capacity() {
            out.reserve(INFLATE_STEP);
        }
        // Compression into memory cannot fail: flate2 reports no error for it.
        let _ = compressor.compress_vec(rest, &mut out, FlushCompress::Sync);
        let done = usize::try_from(compressor.total_in()).unwrap_or(usize::MAX) >= payload.len();
        if done && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out.shrink_to_fit();
    out
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit: the inflation stopped there.
    TooBig,
    /// It is not a deflate stream.
    Corrupt,
}

/// Inflates the payload of one compressed message (its final `00 00 ff ff` put back), into at
/// most `max` bytes: the work stops as soon as the output passes `max`, so a small message
/// that would inflate to gigabytes (a deflate bomb) costs at most `max` bytes of output.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut inflater = Decompress::new(false);
    let mut out = Vec::new();
    for input in [compressed, &TAIL[..]] {
        let start = inflater.total_in();
        loop {
            let consumed = usize::try_from(inflater.total_in() - start).unwrap_or(usize::MAX);
            let rest = input.get(consumed..).unwrap_or_default();
            if out.len() == out.capacity() {
                // One byte past `max` is room enough to tell that the message is too big.
                let room = max
                    .saturating_add(1)
                    .saturating_sub(out.len())
                    .min(out.len().max(INFLATE_STEP));
                out.reserve_exact(room);
            }
            let (before_in, before_out) = (inflater.total_in(), out.len());
            let status = inflater
                .decompress_vec(rest, &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                // A final block ends the message; the tail after it is not part of it.
                return Ok(out);
            }
            let all_read =
                usize::try_from(inflater.total_in() - start).unwrap_or(usize::MAX) >= input.len();
            if all_read && out.len() < out.capacity() {
                break;
            }
            if inflater.total_in() == before_in
                && out.len() == before_out
                && out.len() < out.capacity()
            {
                // Input left, room left, and nothing moved: not a stream.
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(values: &[&str]) -> Option<Agreed> {
        negotiate(values.iter().copied())
    }

    #[test]
    fn the_plain_offer_is_answered_without_contexts_either_way() {
        let deal = agreed(&["permessage-deflate"]).unwrap();
        assert_eq!(deal.window_bits, 15);
        assert_eq!(
            deal.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // What browsers send.
        let deal = agreed(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(deal.window_bits, 15);
        assert_eq!(agreed(&[]), None);
        assert_eq!(agreed(&["x-webkit-deflate-frame"]), None);
    }

    #[test]
    fn a_limited_window_is_named_in_the_answer() {
        for bits in 8..=15u8 {
            let offer = format!("permessage-deflate; server_max_window_bits={bits}");
            let deal = agreed(&[&offer]).unwrap();
            assert_eq!(deal.window_bits, bits);
            assert!(
                deal.response()
                    .ends_with(&format!("; server_max_window_bits={bits}")),
                "{}",
                deal.response()
            );
        }
        let deal = agreed(&["permessage-deflate; server_max_window_bits=\"10\""]).unwrap();
        assert_eq!(deal.window_bits, 10);
    }

    #[test]
    fn a_bad_offer_falls_back_to_the_next_one() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=20",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate; =10",
        ] {
            assert_eq!(agreed(&[bad]), None, "{bad}");
            // An unterminated quoted string runs to the end of its header.
            let both = format!("{bad}, permessage-deflate; server_max_window_bits=12");
            let open_quote = bad.matches('"').count() % 2 == 1;
            assert_eq!(
                agreed(&[&both]).map(|deal| deal.window_bits),
                (!open_quote).then_some(12),
                "{both}"
            );
            // The same fallback when the offers come in headers of their own.
            assert_eq!(
                agreed(&[bad, "permessage-deflate"]).map(|deal| deal.window_bits),
                Some(15),
                "{bad}"
            );
        }
        // A quoted comma does not split an offer.
        assert_eq!(
            agreed(&["permessage-deflate; x=\"a,b\", permessage-deflate"]),
            Some(Agreed {
                window_bits: 15,
                limited: false
            })
        );
        // The first acceptable one wins.
        assert_eq!(
            agreed(&["foo; bar, permessage-deflate; server_max_window_bits=9, permessage-deflate"])
                .map(|deal| deal.window_bits),
            Some(9)
        );
    }

    #[test]
    fn a_window_fits_the_messages_it_covers() {
        assert!(fits(15, usize::MAX));
        assert!(fits(9, 512));
        assert!(!fits(9, 513));
        assert!(fits(8, 256));
        assert!(!fits(8, 257));
    }

    #[test]
    fn compressed_messages_inflate_to_what_was_compressed() {
        let json: Vec<u8> = (0..5000)
            .flat_map(|i| format!("{{\"n\":{i},\"kind\":\"tick\"}}").into_bytes())
            .collect();
        for payload in [&b""[..], b"x", &json] {
            for level in [0, 1, 6, 9] {
                let compressed = compress(payload, level);
                assert!(!compressed.ends_with(&TAIL));
                assert_eq!(inflate(&compressed, payload.len()).unwrap(), payload);
            }
        }
        assert!(compress(&json, 1).len() * 5 < json.len());
        // A limit one byte short stops it.
        assert_eq!(
            inflate(&compress(&json, 1), json.len() - 1),
            Err(InflateError::TooBig)
        );
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        let bomb = compress(&zeros, 9);
        assert!(bomb.len() < 16 << 10, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 1 << 16), Err(InflateError::TooBig));
    }

    #[test]
    fn garbage_is_refused_or_bounded() {
        assert_eq!(inflate(&[0xff; 64], 1024), Err(InflateError::Corrupt));
        for len in 0..64u8 {
            let junk: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
            if let Ok(out) = inflate(&junk, 100) {
                assert!(out.len() <= 100);
            }
        }
    }

    #[test]
    fn a_message_ending_with_a_final_block_is_read_too() {
        let mut compressor = Compress::new(flate2::Compression::new(6), false);
        let mut out = Vec::with_capacity(256);
        compressor
            .compress_vec(b"final block", &mut out, FlushCompress::Finish)
            .unwrap();
        assert_eq!(inflate(&out, 100).unwrap(), b"final block");
    }
}
