//! What every handler shares: built once in `startup`, read by `routes`.

use std::sync::Arc;

use sqlx::PgPool;
use verimail_domain::secrets::Keys;
use verimail_infra::publisher::Publisher;

use crate::IntakeSettings;
use crate::auth::Authenticator;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub keys: Keys,
    pub auth: Arc<Authenticator>,
    pub publisher: Arc<Publisher>,
    pub settings: Arc<IntakeSettings>,
    pub backlog: Arc<crate::backlog::Backlog>,
    /// Dispatch records, group-committed across concurrent sends.
    pub records: Arc<verimail_infra::store::dispatches::Records>,
    /// Sends waiting for their first SMTP attempt (`Prefer: wait`).
    pub waiters: Arc<crate::first_attempts::Waiters>,
}
