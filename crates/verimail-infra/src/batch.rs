//! Group commit for per-dispatch writes (the intake's records, the
//! worker's claims and outcomes). Concurrent callers each
//! await their own result; whatever has queued up while the previous
//! statement ran goes to Postgres as one statement, so a busy worker pays one
//! round trip and one commit per batch instead of per mail, and an idle one
//! waits for nobody (there is no timer: a lone request runs at once).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Reply<R> = oneshot::Sender<Result<R, String>>;

pub struct Batcher<Q, R> {
    requests: mpsc::UnboundedSender<(Q, Reply<R>)>,
}

impl<Q: Send + 'static, R: Send + 'static> Batcher<Q, R> {
    /// `run` gets up to `max` requests and answers each, in order. A failure
    /// of the whole statement is every caller's failure (each retries as it
    /// would have alone).
    pub fn spawn<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Vec<R>>> + Send,
    {
        let (requests, mut queue) = mpsc::unbounded_channel::<(Q, Reply<R>)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while queue.recv_many(&mut batch, max).await > 0 {
                let (items, replies): (Vec<Q>, Vec<Reply<R>>) = batch.drain(..).unzip();
                let expected = replies.len();
                match run(items).await {
                    Ok(results) if results.len() == expected => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Ok(results) => {
                        let why = format!("a batch of {expected} got {} answers", results.len());
                        for reply in replies {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                    Err(error) => {
                        let why = format!("{error:#}");
                        for reply in replies {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        });
        Self { requests }
    }

    pub async fn call(&self, request: Q) -> anyhow::Result<R> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((request, reply))
            .map_err(|_| anyhow::anyhow!("the batch writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the batch writer dropped the request"))?
            .map_err(anyhow::Error::msg)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_statements_and_get_their_own_answers() {
        let statements = Arc::new(AtomicUsize::new(0));
        let counted = statements.clone();
        let doubler = Arc::new(Batcher::spawn(64, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(items.into_iter().map(|i| i * 2).collect())
            }
        }));
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let doubler = doubler.clone();
                tokio::spawn(async move { (i, doubler.call(i).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (i, doubled) = call.await.unwrap();
            assert_eq!(doubled, i * 2);
        }
        let used = statements.load(Ordering::Relaxed);
        assert!(used < 200 / 4, "{used} statements for 200 calls");
    }

    #[tokio::test]
    async fn a_failed_statement_fails_each_caller() {
        let failing = Batcher::spawn(8, |_: Vec<u32>| async {
            anyhow::bail!("postgres went away")
        });
        let error: anyhow::Result<u32> = failing.call(1).await;
        assert!(
            error
                .unwrap_err()
                .to_string()
                .contains("postgres went away")
        );
    }
}
