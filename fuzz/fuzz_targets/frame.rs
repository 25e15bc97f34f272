//! The client frame decoder: the input's stream, fed as two or three reads cut where the input
//! says, must decode exactly as when fed in one read.
//!
//! Input: byte 0 picks the message limit, bytes 1 and 2 the cut points (as fractions of the
//! stream; byte 2 even means a single cut), the rest is the stream of client bytes.
//!
//! Beyond "no panic", what must hold:
//! - the frames delivered and the outcome (Ok or the violation) do not depend on the cuts;
//! - between reads the decoder holds at most the limit plus a frame header (14 bytes), or plus
//!   a whole control frame (6 + 125 bytes), which may arrive in the middle of a fragmented
//!   message that is already at the limit;
//! - messages are within the limit, control payloads within 125 bytes;
//! - after Stop (returned on Close, as the daemon does) or a violation, nothing more is
//!   delivered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_ws_bridge::wsframe::{Decoder, Flow, Frame, Violation};

const LIMITS: [usize; 8] = [0, 1, 3, 125, 126, 1000, 65_536, 1 << 20];
/// A masked control frame: 2 header bytes, the mask, at most 125 payload bytes.
const SLACK: usize = 2 + 4 + 125;

fn check(limit: usize, frame: &Frame<'_>) {
    match *frame {
        Frame::Text(text) => assert!(text.len() <= limit),
        Frame::Binary(data) => assert!(data.len() <= limit),
        Frame::Ping(data) | Frame::Pong(data) => assert!(data.len() <= limit.min(125)),
        Frame::Close(Some((_, reason))) => assert!(reason.len() <= limit.min(123)),
        Frame::Close(None) => {}
    }
}

/// Feeds `reads` in turn; returns the frames (as their Debug text) and the first violation.
fn run(limit: usize, reads: &[&[u8]]) -> (Vec<String>, Result<(), Violation>) {
    let mut decoder = Decoder::new(limit);
    let mut frames = Vec::new();
    let mut outcome = Ok(());
    let mut ended = false;
    for read in reads {
        let mut buffer = read.to_vec();
        let result = decoder.feed(&mut buffer, &mut |frame| {
            assert!(!ended, "frame after Stop or a violation: {frame:?}");
            check(limit, &frame);
            let flow = if matches!(frame, Frame::Close(_)) {
                Flow::Stop
            } else {
                Flow::Continue
            };
            ended = flow == Flow::Stop;
            frames.push(format!("{frame:?}"));
            flow
        });
        assert!(
            decoder.buffered() <= limit + SLACK,
            "holds {} with a limit of {limit}",
            decoder.buffered()
        );
        if let Err(violation) = result {
            assert!(outcome.is_ok(), "a second violation after {outcome:?}");
            outcome = Err(violation);
            ended = true;
        }
        if ended {
            assert_eq!(decoder.buffered(), 0);
        }
    }
    (frames, outcome)
}

fuzz_target!(|data: &[u8]| {
    let [limit, first, second, ref stream @ ..] = *data else { return };
    let limit = LIMITS[usize::from(limit) % LIMITS.len()];
    let cut = |at: u8| stream.len() * usize::from(at) / usize::from(u8::MAX);
    let (a, b) = if second % 2 == 0 {
        (cut(first), stream.len())
    } else {
        (cut(first).min(cut(second)), cut(first).max(cut(second)))
    };
    let whole = run(limit, &[stream]);
    let split = run(limit, &[&stream[..a], &stream[a..b], &stream[b..]]);
    assert_eq!(whole, split, "cut at {a} and {b}");
});
