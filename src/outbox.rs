//! The bounded queue between the hub and one connection's writer.
//!
//! The hub pushes without ever waiting; the writer drains everything queued in one go so
//! that a backlog leaves in few socket writes. Capacity counts route frames only: the
//! answers to a client's own commands are bounded by its rate limit instead.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::config::SlowClient;

/// What `push_frame` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued after discarding the oldest frame (`slow_client: drop_oldest`).
    DroppedOldest,
    /// The queue was full under `slow_client: disconnect`: the connection is now closing.
    Overflowed,
    /// The connection is already closing; the frame was discarded.
    Closed,
}

/// Why the writer must close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: &'static str,
}

/// One frame waiting to be written, with the instant its Redis message arrived (for the
/// delivery-time histogram) when it is a route frame.
#[derive(Debug)]
pub struct Outgoing {
    pub message: Message,
    pub received_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outgoing>,
    route_frames: usize,
    closing: Option<Closing>,
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
    policy: SlowClient,
}

impl Outbox {
    pub fn new(capacity: usize, policy: SlowClient) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity,
            policy,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a route frame, applying the slow-client policy when full.
    pub fn push_frame(&self, message: Message, received_at: Instant) -> Pushed {
        let mut state = self.lock();
        if state.closing.is_some() {
            return Pushed::Closed;
        }
        let mut outcome = Pushed::Queued;
        if state.route_frames >= self.capacity {
            match self.policy {
                SlowClient::Disconnect => {
                    state.closing = Some(Closing {
                        code: 4000,
                        reason: "slow client",
                    });
                    state.items.clear();
                    state.route_frames = 0;
                    drop(state);
                    self.ready.notify_one();
                    return Pushed::Overflowed;
                }
                SlowClient::DropOldest => {
                    if let Some(index) = state
                        .items
                        .iter()
                        .position(|item| item.received_at.is_some())
                    {
                        state.items.remove(index);
                        state.route_frames -= 1;
                    }
                    outcome = Pushed::DroppedOldest;
                }
            }
        }
        state.items.push_back(Outgoing {
            message,
            received_at: Some(received_at),
        });
        state.route_frames += 1;
        let was_idle = state.items.len() == 1;
        drop(state);
        if was_idle {
            self.ready.notify_one();
        }
        outcome
    }

    /// Queues a frame of the server's own (an answer, a notice, a ping).
    pub fn push_reply(&self, message: Message) {
        let mut state = self.lock();
        if state.closing.is_some() {
            return;
        }
        state.items.push_back(Outgoing {
            message,
            received_at: None,
        });
        drop(state);
        self.ready.notify_one();
    }

    /// Asks the writer to close after what is already queued (the first reason wins).
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.closing = Some(Closing { code, reason });
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Moves everything queued into `batch`; returns the close request, if any.
    pub fn drain(&self, batch: &mut Vec<Outgoing>) -> Option<Closing> {
        let mut state = self.lock();
        batch.extend(state.items.drain(..));
        state.route_frames = 0;
        if state.items.capacity() > 4 * self.capacity.max(16) {
            // A burst must not pin its peak memory for the connection's lifetime.
            state.items.shrink_to(self.capacity);
        }
        state.closing.clone()
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing.is_some()
    }

    /// Resolves when something was pushed or a close was requested since the last drain.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Message {
        Message::text(n.to_string())
    }

    #[test]
    fn disconnect_policy_closes_on_overflow_and_discards_the_backlog() {
        let outbox = Outbox::new(2, SlowClient::Disconnect);
        let now = Instant::now();
        assert_eq!(outbox.push_frame(text(1), now), Pushed::Queued);
        assert_eq!(outbox.push_frame(text(2), now), Pushed::Queued);
        assert_eq!(outbox.push_frame(text(3), now), Pushed::Overflowed);
        assert_eq!(outbox.push_frame(text(4), now), Pushed::Closed);
        let mut batch = Vec::new();
        let closing = outbox.drain(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(
            closing,
            Some(Closing {
                code: 4000,
                reason: "slow client"
            })
        );
    }

    #[test]
    fn drop_oldest_keeps_the_newest_frames_and_replies() {
        let outbox = Outbox::new(2, SlowClient::DropOldest);
        let now = Instant::now();
        outbox.push_reply(Message::text("hello"));
        outbox.push_frame(text(1), now);
        outbox.push_frame(text(2), now);
        assert_eq!(outbox.push_frame(text(3), now), Pushed::DroppedOldest);
        let mut batch = Vec::new();
        assert_eq!(outbox.drain(&mut batch), None);
        let texts: Vec<_> = batch
            .iter()
            .map(|o| o.message.to_text().unwrap().to_owned())
            .collect();
        assert_eq!(texts, ["hello", "2", "3"]);
    }
}
