//! The operator UI: `GET /ui` and its assets under `/ui/`, embedded in the
//! binary from the top-level `ui/` folder (plain HTML, CSS and JavaScript
//! modules; no build step).
//!
//! The page is a client of the public `/v1` API like any other: it holds no
//! privilege, so these routes are served without the bearer token (the page
//! asks the operator for the token and sends it on its `/v1` calls). They
//! are not API and stay out of the OpenAPI document. Every answer carries a
//! strict Content-Security-Policy (same-origin only, no inline script or
//! style), so a payload shown by the page can never run as code.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;
use super::problem::HttpError;

/// One embedded file.
struct Asset {
    /// Its name under `/ui/`.
    name: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes.
    body: &'static str,
}

/// Every file of the UI. `index.html` is served at `/ui`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../ui/index.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../ui/style.css"),
    },
    Asset {
        name: "errors.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/errors.js"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/dom.js"),
    },
    Asset {
        name: "chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/chart.js"),
    },
    Asset {
        name: "views.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/views.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../ui/icon.svg"),
    },
];

/// Same origin only; no inline script or style, no plugins, no framing, no
/// `<base>` rewriting, forms only to this origin.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self'; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The routes; merged into the app's router outside the OpenAPI document.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { serve("index.html") }))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route(
            "/ui/{asset}",
            get(|Path(asset): Path<String>| async move { serve(&asset) }),
        )
}

/// The asset named `name` with the UI's security headers, or a 404 problem.
fn serve(name: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return HttpError::RouteNotFound(format!("/ui/{name}")).into_response();
    };
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        // The files change with the binary: revalidate on every load, so an
        // upgraded sidecar never runs with a cached mix of old and new files.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page's `<script>` and `<link>` tags name only embedded files, and
    /// no file is embedded twice.
    #[test]
    fn index_references_only_embedded_assets() {
        let index = ASSETS[0].body;
        for part in index.split("/ui/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                .collect();
            if name.is_empty() {
                continue;
            }
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "index.html loads /ui/{name}, which is not embedded"
            );
        }
        let mut names: Vec<_> = ASSETS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
    }

    /// Modules import each other by relative path: every import names an
    /// embedded file.
    #[test]
    fn module_imports_are_embedded() {
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for line in asset.body.lines() {
                let Some(rest) = line.split(" from \"./").nth(1) else {
                    continue;
                };
                let name = rest.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports ./{name}, which is not embedded",
                    asset.name
                );
            }
        }
    }
}
