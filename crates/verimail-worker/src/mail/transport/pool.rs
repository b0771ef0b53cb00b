//! A small bounded pool of SMTP sessions opened by `connect::open`.
//!
//! Deliberately simpler than lettre's pool: no background reaper, no minimum
//! idle count. A session idle for more than a moment is checked with NOOP
//! before reuse; one used within `TRUSTED_IDLE` is not, and if it turns out
//! dead the transaction is tried once more at once on a new session. Sessions
//! are replaced when dead or idle for too long, and dropped after any failed
//! transaction (lettre has already sent QUIT on such sessions).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::config::SmtpConfig;
use super::connect;
use super::error::{self, SendError};

/// Idle sessions older than this are closed rather than probed. RFC 5321
/// §4.5.3.2.7 lets servers drop idle clients after 5 minutes; many do
/// sooner, and a probe that fails costs a round trip for nothing.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// A session used this recently is reused without a NOOP: at hundreds of
/// mails a second the probe was one more round trip per mail for a session
/// that had just worked. A server that closed it meanwhile (a per-session
/// message limit, a restart) fails the next MAIL instead, and `send` then
/// tries once more on a new session, as the probe would have.
const TRUSTED_IDLE: Duration = Duration::from_secs(1);

pub(super) struct Pool {
    config: SmtpConfig,
    /// Bounds sessions in use *and* idle: a session only goes idle from a
    /// permit holder, and a new one is opened only when none is idle.
    permits: Semaphore,
    /// Most recently used last, so reuse picks the warmest session.
    idle: Mutex<Vec<Idle>>,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// Whether the last session setup ended in a refused login, so the
    /// loud log line is written once per change, not once per mail.
    login_refused: AtomicBool,
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

impl Pool {
    pub(super) fn new(
        config: SmtpConfig,
        max_connections: usize,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Self {
        Self {
            config,
            permits: Semaphore::new(max_connections),
            idle: Mutex::new(Vec::with_capacity(max_connections)),
            connect_timeout,
            command_timeout,
            login_refused: AtomicBool::new(false),
        }
    }

    pub(super) fn config(&self) -> &SmtpConfig {
        &self.config
    }

    /// One SMTP transaction (MAIL, RCPT…, DATA), bounded by `command_timeout`.
    pub(super) async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<(), SendError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::Transient("SMTP transport is closed".to_owned()))?;
        let (mut conn, probed) = self.checkout().await?;
        let mut sent = timeout(self.command_timeout, conn.send(envelope, message)).await;
        let dead = matches!(&sent, Ok(Err(e)) if !probed && error::session_was_dead(e));
        if dead {
            // What the skipped NOOP would have caught: the same transaction on
            // a new session. (A session that broke after the message was
            // taken could duplicate it, as any retry of a broken transaction
            // can; one that was closed while idle never got it.)
            tracing::debug!("a reused SMTP session was dead; sending on a new one");
            conn = self.open().await?;
            sent = timeout(self.command_timeout, conn.send(envelope, message)).await;
        }
        match sent {
            Ok(Ok(_)) => {
                self.checkin(conn);
                Ok(())
            }
            // lettre has aborted the session; dropping it closes the socket.
            Ok(Err(e)) => Err(error::from_transaction(&e)),
            // The session is mid-command: unusable. Note the server may have
            // taken the mail if the timeout hit while waiting for the final
            // reply; a retry can then duplicate it, which beats losing it.
            Err(_) => Err(error::timed_out("SMTP transaction", self.command_timeout)),
        }
    }

    /// Opens a session and closes it again (see `Transport::check`).
    pub(super) async fn check(&self) -> Result<(), SendError> {
        let mut conn = self.open().await?;
        let _ = timeout(self.command_timeout, conn.quit()).await;
        Ok(())
    }

    /// Closes idle sessions politely (worker shutdown). Sessions in use are
    /// closed by their senders as usual; new sends still work afterwards.
    pub(super) async fn close_idle(&self) {
        let idle = std::mem::take(&mut *self.lock_idle());
        for Idle { mut conn, .. } in idle {
            let _ = timeout(self.command_timeout, conn.quit()).await;
        }
    }

    /// A session to send on, and whether it is known to work (new, or
    /// probed with NOOP just now) rather than trusted for its recent use.
    async fn checkout(&self) -> Result<(AsyncSmtpConnection, bool), SendError> {
        loop {
            let Some(Idle { mut conn, since }) = self.lock_idle().pop() else {
                break;
            };
            let idle = since.elapsed();
            if idle > MAX_IDLE {
                self.retire(conn);
                continue;
            }
            if idle < TRUSTED_IDLE {
                return Ok((conn, false));
            }
            // The server may have closed the session since (idle timeout,
            // per-session message limit): NOOP is one round trip and catches
            // that before we start a transaction on a dead socket.
            if matches!(
                timeout(self.command_timeout, conn.test_connected()).await,
                Ok(true)
            ) {
                return Ok((conn, true));
            }
            tracing::debug!("dropping a dead pooled SMTP session");
        }
        Ok((self.open().await?, true))
    }

    /// A new session, set up within `connect_timeout`.
    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        let progress = connect::Progress::default();
        match timeout(self.connect_timeout, connect::open(&self.config, &progress)).await {
            Ok(Ok(conn)) => {
                tracing::debug!(smtp = %self.config, "opened an SMTP session");
                if self.login_refused.swap(false, Ordering::Relaxed) {
                    tracing::info!(smtp = %self.config, "the SMTP relay accepts our login again");
                }
                Ok(conn)
            }
            Ok(Err(e)) => {
                if e.login_refused() && !self.login_refused.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        smtp = %self.config,
                        reply = %e.reply(),
                        "the SMTP relay refused our login: check the user and password in SMTP_URL"
                    );
                }
                Err(error::from_connect(&e))
            }
            Err(_) => Err(error::setup_timed_out(
                progress.step(),
                self.connect_timeout,
            )),
        }
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        self.lock_idle().push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// QUIT in the background: the caller is about to send a mail and
    /// should not wait for a goodbye.
    fn retire(&self, mut conn: AsyncSmtpConnection) {
        let limit = self.command_timeout;
        tokio::spawn(async move {
            let _ = timeout(limit, conn.quit()).await;
        });
    }

    /// The lock guards only push/pop/take, never an await, so a poisoned
    /// lock still holds a consistent list.
    fn lock_idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
