//! `GET /v1/tenants`: the tenants that have topics (the operator UI's
//! starting point; pools, quotas and channels alone do not list a tenant).

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi::{ApiErrors, TenantList};
use crate::error::Result;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_tenants))
}

/// List the tenants that have at least one topic.
#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    responses(
        (status = 200, description = "Tenant names, sorted", body = TenantList),
        ApiErrors
    )
)]
async fn list_tenants(State(state): State<AppState>) -> Result<Json<TenantList>> {
    let tenants = crate::tenants::list(&state.store).await?;
    Ok(Json(TenantList { tenants }))
}
