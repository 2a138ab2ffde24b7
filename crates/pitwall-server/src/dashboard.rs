//! The dashboard at `/`: one page with live charts, the anomaly feed, session summaries,
//! driver comparison, component health, pipeline health and a SQL console. Its files
//! (`web/` in this crate, and uPlot from npm) are built into the binary, so it works
//! with no internet. It reads the live feed, the SQL API, `/api/v1/sources`,
//! `/api/v1/rules` and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

const INDEX: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");
const UPLOT_JS: &str = include_str!(env!("PITWALL_UPLOT_JS"));
const UPLOT_CSS: &str = include_str!(env!("PITWALL_UPLOT_CSS"));

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/vendor/uPlot.iife.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }),
        )
        .route(
            "/vendor/uPlot.min.css",
            get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }),
        )
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/rules", get(rules))
}

/// The anomaly rules the processor runs, as configured (`[[processor.rules]]`, kebab-case
/// keys, `kind` naming each): the dashboard's fleet and health views read limits and
/// fields from them.
async fn rules(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = crate::authorize(&state, &headers, None) {
        return r.into_response();
    }
    axum::Json(&state.processor.rules).into_response()
}

/// Query of `GET /api/v1/sources`.
#[derive(Debug, serde::Deserialize)]
struct SourcesPage {
    /// Sources in the answer (default and most [`MAX_SOURCES_PAGE`]).
    limit: Option<usize>,
    /// Sources to skip, in (measurement, source) order.
    offset: Option<usize>,
}

/// Most sources in one answer: 100,000 sources made a 6 MB answer the dashboard
/// fetched every 3 s.
const MAX_SOURCES_PAGE: usize = 1000;

/// The sources the live feed has seen: measurement, source id, and the tag that holds
/// the source id in the lake's clean table; a page at a time (`limit`, `offset`), the
/// total in `X-Total-Count`.
async fn sources(
    State(state): State<Arc<AppState>>,
    Query(page): Query<SourcesPage>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = crate::authorize(&state, &headers, None) {
        return r.into_response();
    }
    let all = state.live.sources();
    let total = all.len();
    let limit = page.limit.unwrap_or(MAX_SOURCES_PAGE).min(MAX_SOURCES_PAGE);
    let list: Vec<_> = all
        .into_iter()
        .skip(page.offset.unwrap_or(0))
        .take(limit)
        .map(|(measurement, source)| {
            let tag = state.processor.source_tag(&measurement).to_owned();
            serde_json::json!({"measurement": measurement, "source": source, "source_tag": tag})
        })
        .collect();
    let mut r = axum::Json(list).into_response();
    r.headers_mut()
        .insert("x-total-count", axum::http::HeaderValue::from(total));
    r
}
