//! Group commit for per-dispatch writes (the intake's records, the
//! worker's claims and outcomes). Concurrent callers each
//! await their own result; whatever has queued up while the previous
//! statement ran goes to Postgres as one statement, so a busy worker pays one
//! round trip and one commit per batch instead of per mail, and an idle one
//! waits for nobody (there is no timer: a lone request runs at once).
//!
//! Errors travel typed: each caller gets its own `Result<R, E>`, so the
//! cause chain of a failure reaches the caller's log intact. A failed batch
//! statement is never every caller's error: `batch_else_each` runs the rows
//! one at a time instead, so each caller gets the error of its own row.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Reply<R, E> = oneshot::Sender<Result<R, E>>;

pub struct Batcher<Q, R, E = anyhow::Error> {
    requests: mpsc::UnboundedSender<(Q, Reply<R, E>)>,
}

impl<Q, R, E> Batcher<Q, R, E>
where
    Q: Send + 'static,
    R: Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    /// `run` gets up to `max` requests and answers each, in order, with its
    /// own result. A request `run` leaves unanswered fails with "no answer".
    pub fn spawn<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<R, E>>> + Send,
    {
        let (requests, mut queue) = mpsc::unbounded_channel::<(Q, Reply<R, E>)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while queue.recv_many(&mut batch, max).await > 0 {
                let (items, replies): (Vec<Q>, Vec<Reply<R, E>>) = batch.drain(..).unzip();
                // A reply dropped unanswered is seen by its caller as such.
                for (reply, result) in replies.into_iter().zip(run(items).await) {
                    let _ = reply.send(result);
                }
            }
        });
        Self { requests }
    }

    /// The caller's own answer; its error keeps its whole cause chain.
    pub async fn call(&self, request: Q) -> anyhow::Result<R> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((request, reply))
            .map_err(|_| anyhow::anyhow!("the batch writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the batch writer gave no answer for this request"))?
            .map_err(Into::into)
    }
}

/// "The batch, else row by row": `batch` runs all `items` as one statement
/// (one commit); if it fails, or answers for other than every item, each
/// item runs alone through `one`, so a bad row fails only itself and every
/// caller gets the error of its own row. A single item goes to `one` at once.
pub async fn batch_else_each<'a, Q, R, E, B, BF, O, OF>(
    items: &'a [Q],
    batch: B,
    one: O,
) -> Vec<Result<R, E>>
where
    E: Into<anyhow::Error>,
    B: FnOnce(&'a [Q]) -> BF,
    BF: Future<Output = Result<Vec<Result<R, E>>, E>>,
    O: Fn(&'a Q) -> OF,
    OF: Future<Output = Result<R, E>>,
{
    if items.len() > 1 {
        match batch(items).await {
            Ok(answers) if answers.len() == items.len() => return answers,
            Ok(answers) => tracing::warn!(
                items = items.len(),
                answers = answers.len(),
                "a batch answered for other than every item; writing row by row"
            ),
            Err(error) => tracing::debug!(
                error = format!("{:#}", error.into()),
                "a batch statement failed; writing row by row"
            ),
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(one(item).await);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use anyhow::Context;

    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_statements_and_get_their_own_answers() {
        let statements = Arc::new(AtomicUsize::new(0));
        let counted = statements.clone();
        let doubler = Arc::new(Batcher::spawn(64, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                items
                    .into_iter()
                    .map(|i| Ok::<_, anyhow::Error>(i * 2))
                    .collect()
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
        let failing = Batcher::spawn(8, |items: Vec<u32>| async move {
            items
                .iter()
                .map(|_| Err::<u32, _>(anyhow::anyhow!("postgres went away")))
                .collect()
        });
        let error: anyhow::Result<u32> = failing.call(1).await;
        assert!(
            error
                .unwrap_err()
                .to_string()
                .contains("postgres went away")
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection reset by peer")]
    struct Reset;

    #[tokio::test]
    async fn a_callers_error_keeps_its_cause_chain_through_the_batch() {
        let failing = Batcher::spawn(8, |items: Vec<u32>| async move {
            items
                .iter()
                .map(|_| Err::<u32, _>(anyhow::Error::new(Reset).context("recording the dispatch")))
                .collect()
        });
        let error = failing.call(1).await.unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "recording the dispatch: connection reset by peer"
        );
        // Typed all the way: the root cause is the original error, not a string.
        assert!(error.root_cause().downcast_ref::<Reset>().is_some());
        assert_eq!(error.chain().count(), 2);
    }

    #[tokio::test]
    async fn an_item_left_unanswered_fails_alone() {
        let short = Batcher::spawn(8, |items: Vec<u32>| async move {
            items
                .into_iter()
                .filter(|i| *i != 7)
                .map(Ok::<_, anyhow::Error>)
                .collect()
        });
        assert_eq!(short.call(3).await.unwrap(), 3);
        assert!(short.call(7).await.is_err());
    }

    #[tokio::test]
    async fn a_failed_batch_is_retried_row_by_row_and_fails_only_the_bad_row() {
        let items = [1_u32, 2, 3];
        let answers = batch_else_each(
            &items,
            |_| async { Err(anyhow::anyhow!("deadlock detected")) },
            |&i| async move {
                if i == 2 {
                    Err(anyhow::anyhow!("a bad row")).context("row 2")
                } else {
                    Ok(i * 10)
                }
            },
        )
        .await;
        assert_eq!(answers[0].as_ref().unwrap(), &10);
        assert_eq!(
            format!("{:#}", answers[1].as_ref().unwrap_err()),
            "row 2: a bad row"
        );
        assert_eq!(answers[2].as_ref().unwrap(), &30);
    }

    #[tokio::test]
    async fn a_batch_that_answers_for_every_row_is_used_as_is() {
        let items = [1_u32, 2];
        let ones = AtomicUsize::new(0);
        let answers = batch_else_each(
            &items,
            |all| async move { Ok(all.iter().map(|i| Ok::<_, anyhow::Error>(i + 1)).collect()) },
            |&i| {
                ones.fetch_add(1, Ordering::Relaxed);
                async move { Ok(i) }
            },
        )
        .await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, vec![2, 3]);
        assert_eq!(ones.load(Ordering::Relaxed), 0);
    }
}
