//! The service every API connection runs: a single publish
//! (`POST /v1/tenants/{tenant}/topics/{topic}/messages`, the call apps make
//! most) goes straight to its handler; every other request goes through the
//! router.
//!
//! Through the router a request is matched against every route, its path
//! parameters are copied into the request's extensions, and each layer
//! (the request observer, the route itself) clones a boxed service and
//! boxes its future: together about a tenth of the sidecar's CPU per
//! publish. Here the path is split in place and the same handler code runs
//! ([`super::topics::publish_message`]), with the same extractors' checks and
//! answers and the same request-duration metric.
//!
//! Only plain requests take this way: a path with percent-escapes or names
//! that are not valid, a configured API token, exported traces or debug
//! request spans all send the request through the router, which handles
//! each of them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequest, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tower_service::Service;

use super::AppState;
use super::extract::{JsonBody, TopicPath, sole_traceparent};
use super::observe::{record_duration, request_spans};
use super::topics::{RequestTraceparent, publish_message};
use crate::broker::publish::PublishRequest;
use crate::names::{Tenant, Topic};

/// The route template the single publish is measured under.
const PUBLISH_ROUTE: &str = "/v1/tenants/{tenant}/topics/{topic}/messages";

/// The router, with single publishes taken out ahead of it.
#[derive(Clone)]
pub struct Api {
    router: Router,
    state: AppState,
    /// Whether publishes may skip the router: false while a layer of the
    /// router must see every request (API token, exported traces).
    direct: bool,
}

impl Api {
    /// Serves `router`, whose state is `state`.
    pub fn new(router: Router, state: AppState) -> Self {
        let direct = state.api_token.is_none() && !crate::traces::enabled();
        Self {
            router,
            state,
            direct,
        }
    }
}

type Direct = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<<Router as Service<Request>>::Future, Direct>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.direct.then(|| publish_target(&request)).flatten() {
            Some(path) if !request_spans() => {
                Either::Right(Box::pin(publish(self.state.clone(), path, request)))
            }
            _ => Either::Left(self.router.call(request)),
        }
    }
}

/// The tenant and topic of a single publish whose path the router would
/// match and accept as is; None for anything else.
fn publish_target(request: &Request) -> Option<TopicPath> {
    if request.method() != Method::POST {
        return None;
    }
    let rest = request.uri().path().strip_prefix("/v1/tenants/")?;
    let mut segments = rest.split('/');
    let (tenant, topics, topic, messages) = (
        segments.next()?,
        segments.next()?,
        segments.next()?,
        segments.next()?,
    );
    if segments.next().is_some() || topics != "topics" || messages != "messages" {
        return None;
    }
    // Valid names have no `%`, so a valid name here is exactly what the
    // router would decode.
    Some(TopicPath {
        tenant: Tenant::parse(tenant).ok()?,
        topic: Topic::parse(topic).ok()?,
    })
}

/// The publish handler's work, observed as the router's layer would.
async fn publish(
    state: AppState,
    path: TopicPath,
    request: Request,
) -> Result<Response, Infallible> {
    let started = Instant::now();
    let traceparent = RequestTraceparent(sole_traceparent(request.headers()).cloned());
    let response = match JsonBody::<PublishRequest>::from_request(request, &state).await {
        Ok(JsonBody(message)) => publish_message(&state, path, traceparent, message)
            .await
            .into_response(),
        Err(rejection) => rejection.into_response(),
    };
    record_duration(
        PUBLISH_ROUTE,
        &Method::POST,
        response.status().as_u16(),
        started.elapsed(),
    );
    Ok(response)
}
