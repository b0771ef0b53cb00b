//! Acknowledgements in bulk. Messages finish out of order (each waits for its
//! own claim, SMTP transaction and outcome commit), but one `basic.ack` with
//! `multiple` settles every delivery up to its tag, and on a quorum queue
//! every ack frame is a settle command in the queue's Raft log. So finished
//! messages are acked as a run: whatever finished while the previous ack was
//! being sent goes in the next one, and a lone message is acked at once
//! (there is no timer).
//!
//! A multiple ack must never cover a delivery that is still being worked on
//! (that would settle a message whose outcome is not committed), nor one
//! already settled by its own frame (RabbitMQ closes the channel on an ack of
//! an unknown tag if it is the named one). So the window acks only up to the
//! highest finished tag below the oldest unfinished one; finished messages
//! held behind a slow one are acked one by one once `hold_max` of them wait,
//! so a slow send never ties up the prefetch window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::sync::Notify;

#[derive(Debug)]
enum Slot<A> {
    /// Delivered, not finished: nothing at or above it may be multiple-acked.
    Working,
    /// Finished; its ack is still to be sent.
    Ack(A),
    /// Settled by its own frame (a nack): only skipped over.
    Settled,
}

/// The acks to send now: one multiple ack (the acker of its highest tag),
/// and single acks for finished messages held back too long.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Flush<A> {
    pub multiple: Option<A>,
    pub single: Vec<A>,
}

/// Which deliveries of one channel are in hand and which may be acked.
#[derive(Debug)]
pub(crate) struct Window<A> {
    slots: BTreeMap<u64, Slot<A>>,
    hold_max: usize,
}

impl<A> Window<A> {
    pub(crate) fn new(hold_max: usize) -> Self {
        Self {
            slots: BTreeMap::new(),
            hold_max: hold_max.max(1),
        }
    }

    /// A delivery arrived; deliveries arrive in tag order.
    pub(crate) fn open(&mut self, tag: u64) {
        self.slots.insert(tag, Slot::Working);
    }

    /// The outcome is committed: the delivery may be acked.
    pub(crate) fn finished(&mut self, tag: u64, acker: A) {
        if let Some(slot) = self.slots.get_mut(&tag) {
            *slot = Slot::Ack(acker);
        }
    }

    /// The delivery was settled by a frame of its own (nack) that is
    /// already sent.
    pub(crate) fn settled(&mut self, tag: u64) {
        if let Some(slot) = self.slots.get_mut(&tag) {
            *slot = Slot::Settled;
        }
    }

    /// What to send now. `everything`: also every finished message held
    /// behind an unfinished one (the session is ending).
    pub(crate) fn take(&mut self, everything: bool) -> Flush<A> {
        let mut multiple = None;
        while let Some(entry) = self.slots.first_entry() {
            if matches!(entry.get(), Slot::Working) {
                break;
            }
            if let Slot::Ack(acker) = entry.remove() {
                multiple = Some(acker);
            }
        }
        let held: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Ack(_)))
            .map(|(tag, _)| *tag)
            .collect();
        let mut single = Vec::new();
        if !held.is_empty() && (everything || held.len() >= self.hold_max) {
            for tag in held {
                if let Some(Slot::Ack(acker)) = self.slots.remove(&tag) {
                    single.push(acker);
                }
            }
        }
        Flush { multiple, single }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// A channel's window plus the task that sends its acks.
pub struct Acks {
    window: Mutex<Window<Acker>>,
    closing: AtomicBool,
    wake: Notify,
}

impl Acks {
    pub fn new(hold_max: usize) -> Self {
        Self {
            window: Mutex::new(Window::new(hold_max)),
            closing: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    pub fn open(&self, tag: u64) {
        self.lock().open(tag);
    }

    pub fn finished(&self, tag: u64, acker: Acker) {
        self.lock().finished(tag, acker);
        self.wake.notify_one();
    }

    pub fn settled(&self, tag: u64) {
        self.lock().settled(tag);
        self.wake.notify_one();
    }

    /// Sends acks until `close`; then everything finished, and returns.
    /// One sender per channel, one send at a time: a later multiple ack is
    /// never sent before an earlier single ack below it.
    pub async fn send_until_closed(&self) {
        loop {
            self.wake.notified().await;
            let closing = self.closing.load(Ordering::Acquire);
            let flush = self.lock().take(closing);
            for acker in flush.single {
                ack(&acker, false).await;
            }
            if let Some(acker) = flush.multiple {
                ack(&acker, true).await;
            }
            if closing {
                return;
            }
        }
    }

    /// Asks the sender to send what is finished and stop.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The lock guards only map updates, never an await.
    fn lock(&self) -> MutexGuard<'_, Window<Acker>> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn ack(acker: &Acker, multiple: bool) {
    // A failed ack (the channel is gone) leaves the messages unacked: the
    // broker delivers them again, and the claim finds them finished.
    if let Err(error) = acker.ack(BasicAckOptions { multiple }).await {
        tracing::warn!(error = %error, "ack failed; the broker will deliver again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Flush<u64> {
        Flush {
            multiple: None,
            single: vec![],
        }
    }

    fn window(tags: std::ops::RangeInclusive<u64>, hold_max: usize) -> Window<u64> {
        let mut w = Window::new(hold_max);
        for tag in tags {
            w.open(tag);
        }
        w
    }

    #[test]
    fn a_run_of_finished_deliveries_is_one_multiple_ack() {
        let mut w = window(1..=5, 8);
        w.finished(2, 2);
        w.finished(1, 1);
        w.finished(3, 3);
        assert_eq!(
            w.take(false),
            Flush {
                multiple: Some(3),
                single: vec![]
            }
        );
        assert_eq!(w.take(false), none());
        w.finished(4, 4);
        w.finished(5, 5);
        assert_eq!(w.take(false).multiple, Some(5));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn nothing_at_or_above_an_unfinished_delivery_is_multiple_acked() {
        let mut w = window(1..=4, 8);
        w.finished(2, 2);
        w.finished(3, 3);
        assert_eq!(w.take(false), none(), "1 is still being worked on");
        w.finished(1, 1);
        assert_eq!(w.take(false).multiple, Some(3));
        assert_eq!(w.len(), 1, "4 stays");
    }

    #[test]
    fn a_multiple_ack_never_names_a_nacked_delivery() {
        let mut w = window(1..=3, 8);
        w.finished(1, 1);
        w.settled(2);
        w.settled(3);
        // The run ends on nacked deliveries: the ack names 1, the highest
        // finished one; naming 3 would be an unknown tag to the broker.
        assert_eq!(w.take(false).multiple, Some(1));
        assert_eq!(w.len(), 0);

        let mut w = window(1..=2, 8);
        w.settled(1);
        w.settled(2);
        assert_eq!(w.take(false), none());
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn finished_deliveries_behind_a_slow_one_are_acked_singly_past_the_bound() {
        let mut w = window(1..=10, 3);
        w.finished(2, 2);
        w.finished(3, 3);
        assert_eq!(w.take(false), none());
        w.finished(5, 5);
        assert_eq!(
            w.take(false),
            Flush {
                multiple: None,
                single: vec![2, 3, 5]
            }
        );
        // Once the slow one finishes, the run continues past the gaps the
        // single acks left, and never re-acks them.
        w.finished(1, 1);
        w.finished(4, 4);
        assert_eq!(w.take(false).multiple, Some(4));
        w.finished(6, 6);
        assert_eq!(w.take(false).multiple, Some(6));
        assert_eq!(w.len(), 4);
    }

    #[test]
    fn closing_sends_every_finished_delivery_and_leaves_unfinished_ones() {
        let mut w = window(1..=4, 8);
        w.finished(2, 2);
        w.finished(4, 4);
        assert_eq!(
            w.take(true),
            Flush {
                multiple: None,
                single: vec![2, 4]
            }
        );
        assert_eq!(
            w.len(),
            2,
            "1 and 3 stay unacked, for the broker to deliver again"
        );
    }
}
