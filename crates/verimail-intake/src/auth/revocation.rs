//! Revocations reach every intake at once: the CLI's revoke and suspend
//! commands `NOTIFY` a channel in the same statement as their update, and
//! each intake `LISTEN`s and drops the named credential from its cache. The
//! cache keeps verified credentials for speed; this keeps it from outliving
//! a revocation. A lost listener connection expires the caches (every
//! credential is looked up again), since notifications sent meanwhile are
//! gone; the entries stay as the fallback while Postgres is away.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use super::Authenticator;

pub use verimail_infra::store::revocations::{CHANNEL, Revoked};

/// Listens until the process ends, reconnecting by itself.
pub fn spawn_listener(auth: Arc<Authenticator>, pool: PgPool) {
    tokio::spawn(async move {
        loop {
            if let Err(error) = listen(&auth, &pool).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "revocation listener failed; retrying"
                );
            }
            auth.expire_all();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn listen(auth: &Authenticator, pool: &PgPool) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Anything revoked before we listened may still sit in the cache.
    auth.expire_all();
    loop {
        match listener.try_recv().await? {
            Some(notification) => match Revoked::parse(notification.payload()) {
                Some(revoked) => auth.forget(&revoked),
                None => auth.forget_all(),
            },
            // The connection was lost (and is re-established by the next
            // call): notifications may have been missed.
            None => auth.expire_all(),
        }
    }
}
