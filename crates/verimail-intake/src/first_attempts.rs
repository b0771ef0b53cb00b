//! Sends that wait for the relay's answer (`Prefer: wait=N`, RFC 7240;
//! README "Waiting for the relay's answer"). A waiting send registers its
//! dispatch id before the message is published; the worker announces the
//! first attempt's recorded outcome on a channel this intake `LISTEN`s on,
//! which wakes the send; the send then reads the dispatch. No polling: one
//! listener connection per intake, one notice per awaited dispatch.
//! Waiting sends are bounded ([`MAX_WAITING`]); beyond that a send answers
//! at once, as without the header.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::oneshot;
use uuid::Uuid;
use verimail_infra::store::dispatches::awaited::CHANNEL;

/// The longest wait a send may ask for; longer ones are capped to it.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Sends waiting at once on one intake, at most.
pub const MAX_WAITING: usize = 1024;

/// The wait a `Prefer` header asks for (`wait=N`, N seconds, 1 or more;
/// capped to [`MAX_WAIT`]), if any. Other preferences, and a `wait` that is
/// not a positive whole number, are ignored, as RFC 7240 asks.
pub fn requested_wait<'a>(prefer: impl Iterator<Item = &'a str>) -> Option<Duration> {
    prefer
        .flat_map(|header| header.split(','))
        .filter_map(|preference| {
            let preference = preference.split(';').next()?.trim();
            let (name, value) = preference.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let seconds: u64 = value.trim().trim_matches('"').parse().ok()?;
            (seconds > 0).then(|| Duration::from_secs(seconds).min(MAX_WAIT))
        })
        .next()
}

/// The sends waiting on this intake, by dispatch id.
#[derive(Default)]
pub struct Waiters {
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<()>>>,
}

/// A registered wait; dropping it unregisters it.
pub struct Waiting {
    id: Uuid,
    waiters: Arc<Waiters>,
    woken: oneshot::Receiver<()>,
}

impl Waiters {
    /// Registers a wait for `id`, unless [`MAX_WAITING`] sends wait already.
    pub fn register(self: &Arc<Self>, id: Uuid) -> Option<Waiting> {
        let (wake, woken) = oneshot::channel();
        let mut waiting = self.lock();
        if waiting.len() >= MAX_WAITING {
            return None;
        }
        waiting.insert(id, wake);
        Some(Waiting {
            id,
            waiters: self.clone(),
            woken,
        })
    }

    fn wake(&self, id: Uuid) {
        if let Some(wake) = self.lock().remove(&id) {
            let _ = wake.send(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<()>>> {
        // Every critical section is one map operation: a poisoned lock
        // still holds a consistent map.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Waiting {
    /// Until the first attempt is announced, or `wait` is over.
    pub async fn until_announced(mut self, wait: Duration) {
        let _ = tokio::time::timeout(wait, &mut self.woken).await;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters.lock().remove(&self.id);
    }
}

/// Listens until the process ends, reconnecting by itself. A notice missed
/// while reconnecting costs its send the rest of its wait, not its answer.
pub fn spawn_listener(waiters: Arc<Waiters>, pool: PgPool) {
    tokio::spawn(async move {
        loop {
            if let Err(error) = listen(&waiters, &pool).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "first-attempt listener failed; retrying"
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn listen(waiters: &Waiters, pool: &PgPool) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        if let Some(notification) = listener.try_recv().await?
            && let Ok(id) = notification.payload().parse::<Uuid>()
        {
            waiters.wake(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_positive_whole_wait_is_taken_and_capped() {
        let wait = |headers: &[&str]| requested_wait(headers.iter().copied());
        assert_eq!(wait(&["wait=5"]), Some(Duration::from_secs(5)));
        assert_eq!(
            wait(&["respond-async, wait=10"]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            wait(&["handling=lenient", "WAIT = 7"]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(wait(&["wait=\"3\""]), Some(Duration::from_secs(3)));
        assert_eq!(wait(&["wait=100"]), Some(MAX_WAIT));
        for ignored in [
            "wait=0",
            "wait=-1",
            "wait=1.5",
            "wait",
            "wait=",
            "return=minimal",
        ] {
            assert_eq!(wait(&[ignored]), None, "{ignored}");
        }
        assert_eq!(wait(&[]), None);
    }

    #[tokio::test]
    async fn waits_are_bounded_and_unregistered_when_dropped() {
        let waiters = Arc::new(Waiters::default());
        let held: Vec<Waiting> = (0..MAX_WAITING)
            .map(|_| waiters.register(Uuid::now_v7()).expect("under the bound"))
            .collect();
        assert!(waiters.register(Uuid::now_v7()).is_none(), "over the bound");
        drop(held);
        assert_eq!(waiters.lock().len(), 0);
        let id = Uuid::now_v7();
        let waiting = waiters.register(id).expect("room again");
        waiters.wake(id);
        let started = std::time::Instant::now();
        waiting.until_announced(Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "woken, not timed out"
        );
    }
}
