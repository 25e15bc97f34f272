//! The inbound inflate path: a client's compressed message, inflated with a bound, directly
//! and through the frame decoder of a connection that negotiated permessage-deflate.
//!
//! Input: byte 0 picks the limit, the rest is the compressed payload of one message (as a
//! client sends it, without the final `00 00 ff ff`).
//!
//! Beyond "no panic", what must hold:
//! - `inflate` returns at most the limit, or TooBig, or Corrupt; never more output;
//! - the decoder delivers exactly what `inflate` returns (as text when it is UTF-8), in one
//!   frame or fragmented at any point, and refuses what `inflate` refuses with the same
//!   close code (1009 too big, 1007 corrupt or not UTF-8), holding nothing afterwards;
//! - what the bridge compresses inflates back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_ws_bridge::deflate::{self, InflateError};
use redis_ws_bridge::wsframe::{Decoder, Flow, Frame, Violation};

const LIMITS: [usize; 6] = [0, 1, 125, 1000, 65_536, 1 << 20];
const MASK: [u8; 4] = [0xa1, 0x5c, 0x07, 0xe3];

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        len if len < 126 => out.push(0x80 | len as u8),
        len if len <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// Decodes `stream` on an inflating connection; the message delivered, or the violation.
fn decode(limit: usize, stream: &[u8]) -> Result<Option<Vec<u8>>, Violation> {
    let mut decoder = Decoder::new(limit).inflating();
    let mut delivered = None;
    let mut buffer = stream.to_vec();
    let outcome = decoder.feed(&mut buffer, &mut |frame| {
        assert!(delivered.is_none(), "one message only");
        delivered = Some(match frame {
            Frame::Text(text) => text.as_bytes().to_vec(),
            Frame::Binary(data) => data.to_vec(),
            other => panic!("not a message: {other:?}"),
        });
        Flow::Continue
    });
    assert_eq!(decoder.buffered(), 0);
    outcome.map(|()| delivered)
}

fuzz_target!(|data: &[u8]| {
    let [limit, ref compressed @ ..] = *data else {
        return;
    };
    let limit = LIMITS[usize::from(limit) % LIMITS.len()];
    let inflated = deflate::inflate(compressed, limit);
    if let Ok(bytes) = &inflated {
        assert!(bytes.len() <= limit);
        assert_eq!(
            deflate::inflate(&deflate::compress(bytes, 1), bytes.len()).as_ref(),
            Ok(bytes)
        );
    }
    if compressed.len() > limit {
        // Refused at the header, before any inflation.
        assert_eq!(
            decode(limit, &frame(0xC2, compressed)),
            Err(Violation::TooBig)
        );
        return;
    }
    let expected = match &inflated {
        Ok(bytes) => Ok(Some(bytes.clone())),
        Err(InflateError::TooBig) => Err(Violation::TooBig),
        Err(InflateError::Corrupt) => Err(Violation::Corrupt),
    };
    // Binary: every byte is a message. Then the same payload in two fragments.
    assert_eq!(decode(limit, &frame(0xC2, compressed)), expected);
    let (head, tail) = compressed.split_at(compressed.len() / 2);
    let mut fragmented = frame(0x42, head);
    fragmented.extend(frame(0x80, tail));
    assert_eq!(decode(limit, &fragmented), expected);
    // Text: the same, unless the bytes are not UTF-8.
    let text = match &expected {
        Ok(Some(bytes)) if std::str::from_utf8(bytes).is_err() => Err(Violation::InvalidUtf8),
        other => other.clone(),
    };
    assert_eq!(decode(limit, &frame(0xC1, compressed)), text);
});
