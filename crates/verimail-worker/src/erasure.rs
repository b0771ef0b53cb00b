//! Erasure of one person's address (`verimail forget --email`; README,
//! "Erasing an address"): every dispatch row of the recipient, in whichever
//! partition it lies, the remembered answers of those sends, and `.eml`
//! files addressed to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sqlx::PgPool;
use verimail_domain::Email;
use verimail_infra::store::{dispatches, send_replays, webhook_events};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Erased {
    /// Rows removed from `dispatches`, by partition.
    pub dispatches: BTreeMap<String, u64>,
    /// Remembered answers (`send_replays`) of those sends.
    pub replays: u64,
    /// Webhook events (`webhook_events`) about those sends.
    pub webhook_events: u64,
    /// `.eml` files that named the address.
    pub outbox_files: Vec<PathBuf>,
}

impl Erased {
    pub fn dispatch_rows(&self) -> u64 {
        self.dispatches.values().sum()
    }
}

/// Removes every trace of `email`. Rows are found by the recipient key, so
/// every spelling of the mailbox goes. The recipient's advisory lock (the one
/// `accept_dispatch` takes) orders the erasure against concurrent sends: a
/// send either lands before and is erased, or after, as a new request.
pub async fn forget(pool: &PgPool, email: &Email, outbox: Option<&Path>) -> anyhow::Result<Erased> {
    let recipient = email.normalised();
    let mut tx = pool.begin().await.context("starting the erasure")?;
    dispatches::erase::lock_recipient(&mut tx, &recipient).await?;
    let (ids, by_partition) = dispatches::erase::delete_recipient(&mut tx, &recipient).await?;
    let replays = send_replays::delete_for_dispatches(&mut tx, &ids).await?;
    let webhook_events = webhook_events::delete_for_dispatches(&mut tx, &ids).await?;
    tx.commit().await.context("committing the erasure")?;
    let mut erased = Erased {
        dispatches: by_partition,
        replays,
        webhook_events,
        ..Erased::default()
    };
    if let Some(dir) = outbox {
        erased.outbox_files = forget_files(dir, &recipient)?;
    }
    Ok(erased)
}

/// `.eml` files in `dir` whose text names `recipient` (case-insensitively,
/// as a whole address); a missing directory holds nothing.
fn forget_files(dir: &Path, recipient: &str) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading the outbox {}", dir.display())),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading the outbox {}", dir.display()))?
            .path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).to_ascii_lowercase(),
            // Pruned or sent meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if names_address(&text, recipient) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

/// Whether `text` holds `address` as a whole address, not inside a longer
/// one (`bob@x.org` is not in `jimbob@x.org` nor in `bob@x.org.uk`).
fn names_address(text: &str, address: &str) -> bool {
    let local_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c);
    let label_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    text.match_indices(address).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let mut after = text[at + address.len()..].chars();
        // A dot ends the address only when no label follows it.
        let longer_domain = match after.next() {
            Some('.') => after.next().is_some_and(label_char),
            Some(c) => label_char(c),
            None => false,
        };
        !before.is_some_and(local_char) && !longer_domain
    })
}

#[cfg(test)]
mod tests {
    use super::names_address;

    #[test]
    fn whole_addresses_only() {
        assert!(names_address("to: <bob@x.org>\r\n", "bob@x.org"));
        assert!(names_address("to: bob@x.org\r\n", "bob@x.org"));
        assert!(names_address("write to bob@x.org.", "bob@x.org"));
        assert!(!names_address("to: jimbob@x.org\r\n", "bob@x.org"));
        assert!(!names_address("to: bob@x.org.uk\r\n", "bob@x.org"));
        assert!(!names_address("to: bob@x.org-b.net\r\n", "bob@x.org"));
    }
}
