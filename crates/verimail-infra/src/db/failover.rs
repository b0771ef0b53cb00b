//! Keeps one sqlx pool on the right server of a `DATABASE_URL` with several
//! hosts. sqlx connects to one host, but a pool's connect options can be
//! swapped at any time and are read again by every new connection; so:
//!
//! - every new connection is checked against `target_session_attrs`
//!   (`after_connect`); one on a read-only or recovering server is refused
//!   and wakes the watcher;
//! - a watcher task holds a probe connection to the chosen host and asks it,
//!   once a second, whether it still suits; when it does not (it died, or
//!   was demoted) it tries the hosts in order and points the pool at the
//!   first that suits;
//! - a connection opened before such a move is closed instead of being
//!   handed out or taken back (`before_acquire`, `after_release`), so the
//!   pool drains off the old server.
//!
//! While no host suits, the pool keeps trying the last one chosen and
//! requests fail after `VERIMAIL_DB_ACQUIRE_TIMEOUT`, as in any outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::sync::Notify;

use super::targets::{SessionAttrs, Targets, label};
use crate::metrics as m;

/// How often the chosen host is asked whether it still suits.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// While no host suits, how often the hosts are tried again.
const RESCAN_EVERY: Duration = Duration::from_millis(250);

pub(super) struct Failover {
    targets: Targets,
    chosen: AtomicUsize,
    /// Milliseconds after `epoch` of the last move (0: never moved).
    moved_at_ms: AtomicU64,
    epoch: Instant,
    wake: Notify,
    /// Bounds each connection attempt and each probe.
    timeout: Duration,
}

impl Failover {
    pub(super) fn new(targets: Targets, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            targets,
            chosen: AtomicUsize::new(0),
            moved_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            wake: Notify::new(),
            timeout,
        })
    }

    pub(super) fn first(&self) -> PgConnectOptions {
        self.targets.hosts()[0].clone()
    }

    /// Adds the checks to a pool's options: every new connection must suit,
    /// and with several hosts, connections from before a move are closed.
    pub(super) fn guard(self: &Arc<Self>, options: PgPoolOptions) -> PgPoolOptions {
        let mut options = options;
        if self.targets.attrs() != SessionAttrs::Any {
            let failover = self.clone();
            options = options.after_connect(move |conn, _| {
                let failover = failover.clone();
                Box::pin(async move {
                    if suits(failover.targets.attrs(), conn).await? {
                        Ok(())
                    } else {
                        failover.wake.notify_one();
                        Err(sqlx::Error::Protocol(format!(
                            "{} is read-only or in recovery",
                            label(&failover.targets.hosts()[failover.chosen()])
                        )))
                    }
                })
            });
        }
        if self.targets.hosts().len() > 1 {
            let failover = self.clone();
            options = options.before_acquire(move |_, meta| {
                let keep = !failover.opened_before_move(&meta);
                Box::pin(async move { Ok(keep) })
            });
            let failover = self.clone();
            options = options.after_release(move |_, meta| {
                let keep = !failover.opened_before_move(&meta);
                Box::pin(async move { Ok(keep) })
            });
        }
        options
    }

    /// Starts the watcher when there is more than one host to choose from.
    /// It lives until the pool is closed.
    pub(super) fn watch(self: &Arc<Self>, pool: &PgPool) {
        if self.targets.hosts().len() < 2 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no async runtime: the Postgres pool will not follow a failover");
            return;
        };
        let failover = self.clone();
        let pool = pool.clone();
        runtime.spawn(async move {
            let mut closed = pool.close_event();
            let _ = closed.do_until(failover.watch_until_closed(&pool)).await;
        });
    }

    fn chosen(&self) -> usize {
        self.chosen.load(Ordering::Relaxed)
    }

    fn opened_before_move(&self, meta: &PoolConnectionMetadata) -> bool {
        let moved_at_ms = self.moved_at_ms.load(Ordering::Relaxed);
        if moved_at_ms == 0 {
            return false;
        }
        let moved_at = self.epoch + Duration::from_millis(moved_at_ms);
        Instant::now()
            .checked_sub(meta.age)
            .is_none_or(|opened| opened < moved_at)
    }

    async fn watch_until_closed(&self, pool: &PgPool) {
        let mut probe: Option<PgConnection> = None;
        let mut after_failure = false;
        loop {
            if let Some(conn) = probe.as_mut() {
                let still = tokio::time::timeout(self.timeout, suits(self.targets.attrs(), conn))
                    .await
                    .is_ok_and(|r| r.unwrap_or(false));
                if still {
                    tokio::select! {
                        _ = tokio::time::sleep(PROBE_EVERY) => {}
                        _ = self.wake.notified() => {}
                    }
                    continue;
                }
                tracing::warn!(
                    host = label(&self.targets.hosts()[self.chosen()]),
                    "the Postgres host in use no longer answers as required; looking for another"
                );
                if let Some(conn) = probe.take() {
                    let _ = tokio::time::timeout(self.timeout, conn.close_hard()).await;
                }
                after_failure = true;
            }
            match self.find().await {
                Some((index, conn)) => {
                    self.choose(index, pool, after_failure);
                    probe = Some(conn);
                }
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(RESCAN_EVERY) => {}
                        _ = self.wake.notified() => {}
                    }
                }
            }
        }
    }

    /// The first host, in the URL's order, that answers as required, with a
    /// connection to it.
    async fn find(&self) -> Option<(usize, PgConnection)> {
        for (index, options) in self.targets.hosts().iter().enumerate() {
            if let Some(conn) = connect_suiting(options, self.targets.attrs(), self.timeout).await {
                return Some((index, conn));
            }
        }
        None
    }

    /// Points the pool at host `index`. After a failure (not at start),
    /// connections opened before now are closed as they come back, even on
    /// the same host: a host that restarted left them all broken.
    fn choose(&self, index: usize, pool: &PgPool, after_failure: bool) {
        let previous = self.chosen.swap(index, Ordering::Relaxed);
        let host = label(&self.targets.hosts()[index]);
        for (i, options) in self.targets.hosts().iter().enumerate() {
            let value = if i == index { 1.0 } else { 0.0 };
            metrics::gauge!(m::DB_HOST, "host" => label(options)).set(value);
        }
        if previous != index {
            pool.set_connect_options(self.targets.hosts()[index].clone());
            metrics::counter!(m::DB_FAILOVERS).increment(1);
            tracing::warn!(
                from = label(&self.targets.hosts()[previous]),
                to = host,
                "Postgres pool moved to another host"
            );
        } else {
            tracing::info!(host, "Postgres pool on this host");
        }
        if previous != index || after_failure {
            let since_epoch = u64::try_from(self.epoch.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            self.moved_at_ms.store(since_epoch, Ordering::Relaxed);
        }
    }
}

/// A connection to `options` if it answers within `timeout` and suits.
pub(super) async fn connect_suiting(
    options: &PgConnectOptions,
    attrs: SessionAttrs,
    timeout: Duration,
) -> Option<PgConnection> {
    let attempt = async {
        let mut conn = options.connect().await?;
        if suits(attrs, &mut conn).await? {
            Ok::<_, sqlx::Error>(Some(conn))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            tracing::debug!(host = label(options), error = %error, "Postgres host unusable");
            None
        }
        Err(_) => None,
    }
}

/// Whether a session on this connection may serve verimail (libpq's checks
/// for `target_session_attrs`).
pub(super) async fn suits(
    attrs: SessionAttrs,
    conn: &mut PgConnection,
) -> Result<bool, sqlx::Error> {
    match attrs {
        SessionAttrs::Any => conn.ping().await.map(|()| true),
        SessionAttrs::ReadWrite => {
            sqlx::query_scalar!(
                r#"SELECT current_setting('transaction_read_only') = 'off' AS "writable!""#
            )
            .fetch_one(conn)
            .await
        }
        SessionAttrs::Primary => {
            sqlx::query_scalar!(r#"SELECT NOT pg_is_in_recovery() AS "primary!""#)
                .fetch_one(conn)
                .await
        }
    }
}
