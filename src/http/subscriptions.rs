//! `GET /v1/subscriptions`: this sidecar's push subscriptions and how each
//! is doing (state, requests in flight, counters, last error).

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi::ApiErrors;
use crate::push::status::SubscriptionList;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_subscriptions))
}

/// List this sidecar's push subscriptions (`--subscriptions`) and their state.
#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    tag = "push",
    responses(
        (status = 200, description = "Every subscription, in file order", body = SubscriptionList),
        ApiErrors
    )
)]
async fn list_subscriptions(State(state): State<AppState>) -> Json<SubscriptionList> {
    Json(state.subscriptions.list())
}
