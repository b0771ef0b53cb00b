//! Each partner's sender (`verimail partner set`), read from `partners` and
//! kept for `SENDER_TTL`: the claim names the partner, and a mail costs one
//! more statement only when its partner's entry is missing or older than
//! that, so a change reaches every worker within `SENDER_TTL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;
use verimail_infra::store::partners;

use crate::mail::{MailSettings, Sender, SenderDomains};

/// How long a worker uses a partner's sender without reading it again:
/// the longest a `partner set` waits to show in mails (README, "CLI").
pub const SENDER_TTL: Duration = Duration::from_secs(10);

/// Partners remembered at most; beyond it the memory starts afresh (a
/// partner count this high is far above any real one).
const MAX_ENTRIES: usize = 10_000;

pub struct Senders {
    pool: PgPool,
    default: Arc<Sender>,
    domains: SenderDomains,
    ttl: Duration,
    known: Mutex<HashMap<Uuid, Known>>,
}

struct Known {
    read_at: Instant,
    sender: Arc<Sender>,
}

impl Senders {
    pub fn new(pool: PgPool, mail: &MailSettings, ttl: Duration) -> Self {
        Self {
            pool,
            default: Arc::new(mail.sender.clone()),
            domains: mail.sender_domains.clone(),
            ttl,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The sender of `partner_id`'s mails. When Postgres cannot be asked, a
    /// sender read before is used, however old, for another `ttl` (so an
    /// outage is not asked once per mail); without one, the error (the
    /// attempt is retried: a mail must not go out under another name).
    ///
    /// Mails of one partner that miss together each read it (at most the
    /// worker's prefetch, once per `ttl`): a primary-key probe of a small
    /// table, cheaper than making them wait for one another.
    pub async fn of(&self, partner_id: Uuid) -> anyhow::Result<Arc<Sender>> {
        let stale = {
            let known = self.lock();
            match known.get(&partner_id) {
                Some(k) if k.read_at.elapsed() < self.ttl => return Ok(k.sender.clone()),
                Some(k) => Some(k.sender.clone()),
                None => None,
            }
        };
        let stored = match partners::sender(&self.pool, partner_id).await {
            Ok(stored) => stored,
            Err(error) => {
                let Some(sender) = stale else {
                    return Err(error);
                };
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reading the partner's sender failed; using the one read before"
                );
                self.remember(partner_id, sender.clone());
                return Ok(sender);
            }
        };
        let sender = match stored {
            Some(columns) => {
                let (sender, problems) =
                    Sender::for_partner(&self.default, &self.domains, &columns);
                for problem in problems {
                    tracing::warn!(
                        %partner_id,
                        problem,
                        "a stored sender setting is refused; the default is used instead"
                    );
                }
                if sender == *self.default {
                    self.default.clone()
                } else {
                    Arc::new(sender)
                }
            }
            // The claim named the partner, so it exists; should it be gone,
            // the operator's sender is the one that cannot be anyone else's.
            None => self.default.clone(),
        };
        self.remember(partner_id, sender.clone());
        Ok(sender)
    }

    fn remember(&self, partner_id: Uuid, sender: Arc<Sender>) {
        let mut known = self.lock();
        if known.len() >= MAX_ENTRIES {
            known.clear();
        }
        let read_at = Instant::now();
        known.insert(partner_id, Known { read_at, sender });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Known>> {
        // A panic while holding the lock leaves the map as it was: usable.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
