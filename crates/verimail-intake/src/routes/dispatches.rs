//! `GET /v2/bases/verificationcode/dispatches/{id}`: a partner reads the
//! state of one of its own dispatches.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use uuid::Uuid;
use verimail_domain::ErrorCode;

use crate::auth::Presented;
use crate::error::{ApiError, Result};
use crate::state::AppState;
use verimail_infra::store::dispatches::view::{self, DispatchView};

pub async fn show(
    State(state): State<AppState>,
    // A path that is not UTF-8 (`%FF`) is answered like an unknown id, after
    // authentication, instead of with axum's plain-text rejection.
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<DispatchView>> {
    let presented = Presented {
        method: &method,
        uri: &uri,
        headers: &headers,
        body: &[],
    };
    let caller = state.auth.authenticate(&presented).await?;
    // Another partner's id is answered exactly like an unknown one.
    let not_found = || ApiError::new(ErrorCode::NotFound);
    let id = id
        .ok()
        .and_then(|Path(id)| Uuid::parse_str(&id).ok())
        .ok_or_else(not_found)?;
    view::find(&state.pool, id, caller.partner_id)
        .await?
        .map(Json)
        .ok_or_else(not_found)
}
