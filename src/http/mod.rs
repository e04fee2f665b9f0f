//! The HTTP API: axum routers per resource, extractors that validate input,
//! and the listeners. Handlers translate between HTTP and the domain
//! ([`crate::broker`]); they never build Redis keys.

mod channels;
mod coord;
mod dispatch;
pub mod edge;
pub mod extract;
mod groups;
mod joins;
pub mod listen;
mod observe;
pub mod openapi;
mod ops;
pub mod problem;
mod session;
mod subscriptions;
mod tenants;
mod topics;
mod ui;

use std::sync::Arc;

use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router, middleware};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::broker::Broker;
use crate::coord::Coord;
use crate::store::Store;
pub use dispatch::Api;
use problem::HttpError;

/// Shared state of every handler: one `Arc`, so the per-request clone axum
/// makes is a single reference-count increment.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// Wraps the services.
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What handlers work with.
pub struct Services {
    /// Shared Redis handle (readiness).
    pub store: Store,
    /// Broker operations on Redis.
    pub broker: Broker,
    /// Coordination operations on Redis.
    pub coord: Coord,
    /// Realtime channels and their fan-out hub.
    pub channels: crate::channels::Channels,
    /// Request body limit in bytes (`--max-body`).
    pub max_body: usize,
    /// Bearer token required on `/v1` (None = open).
    pub api_token: Option<Arc<str>>,
    /// Push subscriptions' status (`GET /v1/subscriptions`).
    pub subscriptions: crate::push::Registry,
}

/// 201 when a call created something, 200 when it found it already there.
fn created_or_ok(created: bool) -> axum::http::StatusCode {
    if created {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    }
}

/// How many times a declaration is made again when a delete removed it
/// before it could be read back.
const DECLARE_ATTEMPTS: usize = 3;

/// Declares something (`declare` answers whether it created it), then
/// reads it back for the answer. A delete that lands between the two would
/// turn a declaration that took effect into a 404; the declaration is then
/// made again (it follows the delete), a few times at most. Answers the
/// status (201 when any round created it) and what was read.
async fn declare_then_read<T, D, R>(
    declare: impl Fn() -> D,
    read: impl Fn() -> R,
) -> crate::error::Result<(axum::http::StatusCode, T)>
where
    D: std::future::Future<Output = crate::error::Result<bool>>,
    R: std::future::Future<Output = crate::error::Result<T>>,
{
    let mut created = false;
    let mut attempt = 1;
    loop {
        created |= declare().await?;
        match read().await {
            Err(crate::error::Error::NotFound { .. }) if attempt < DECLARE_ATTEMPTS => attempt += 1,
            read => return Ok((created_or_ok(created), read?)),
        }
    }
}

/// Every documented route, with its OpenAPI document.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(ops::routes())
        .merge(tenants::routes())
        // Tenant routes carry their full paths rather than being nested under
        // `/v1/tenants/{tenant}`: a nested router rewrites every request's
        // URI (an allocation and a parse per request) before routing it.
        .merge(topics::routes())
        .merge(groups::routes())
        .merge(joins::routes())
        .merge(coord::routes())
        .merge(subscriptions::routes())
        .merge(channels::routes())
        .split_for_parts()
}

/// The OpenAPI 3.1 document of the API (also served at `/v1/openapi.json`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    if let Some(components) = doc.components.as_mut() {
        for schema in components.schemas.values_mut() {
            if let utoipa::openapi::RefOr::T(schema) = schema {
                openapi::state_byte_limits(schema);
            }
        }
    }
    doc
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api_token = state.api_token.clone();
    let (routes, _) = api();
    let document = Arc::new(openapi_document());
    let routes = routes
        .route(
            "/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        // The operator UI: not API, so outside the OpenAPI document.
        .merge(ui::routes())
        .fallback(|uri: Uri| async move { HttpError::RouteNotFound(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { HttpError::MethodNotAllowed });
    let routes = match api_token {
        Some(token) => routes.layer(middleware::from_fn_with_state(
            token,
            observe::require_token,
        )),
        None => routes,
    };
    let routes = if crate::traces::enabled() {
        routes.layer(middleware::from_fn(observe::caller_trace))
    } else {
        routes
    };
    routes
        .layer(middleware::from_fn(observe::observe))
        .with_state(state)
}
