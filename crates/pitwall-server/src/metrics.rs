//! Prometheus metrics: `GET /metrics` in the text exposition format, on every pitwall
//! process.
//!
//! The process installs one recorder ([`install`]) and every crate records through the
//! `metrics` facade. Series (all prefixed `pitwall_`):
//!
//! | series | labels | what |
//! |---|---|---|
//! | `events_in_total` | stage | events taken in: `ingest` (simulators, replay), `write_api`, `process` (raw messages) |
//! | `events_out_total` | stage, stream | rows produced: clean, windows, anomalies, rejects, late |
//! | `rejects_total` | stage, reason | rejected payloads or lines, by kind of reason |
//! | `consumer_lag_messages` | topic, partition | messages on the bus not yet processed |
//! | `watermark_lag_seconds` | partition | wall clock minus the partition's watermark |
//! | `lake_commit_seconds` | | histogram of lake commit latency |
//! | `lake_rows_total`, `lake_files_total`, `lake_bytes_total` | table | what commits added |
//! | `http_requests_total` | route, method, status | requests answered |
//! | `http_request_seconds` | route | histogram of request latency |

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

type Collector = Box<dyn Fn() -> bool + Send + Sync>;
static COLLECTORS: Mutex<Vec<Collector>> = Mutex::new(Vec::new());

/// Runs `collect` before every scrape, to bring series kept elsewhere (counters the
/// pipeline already keeps as atomics) up to date; it returns false once it has nothing
/// more to report, and is then dropped.
pub fn on_scrape(collect: impl Fn() -> bool + Send + Sync + 'static) {
    COLLECTORS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(collect));
}

/// The metrics as Prometheus text, after running the collectors.
pub fn render_text() -> String {
    let handle = install();
    COLLECTORS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|c| c());
    handle.run_upkeep();
    handle.render()
}

/// Installs the process's Prometheus recorder (once; later calls return the same
/// handle) and describes the series.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // A test binary may have installed one already; then that one records.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
            }
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "pitwall_events_in_total",
        "Events taken in, by stage (ingest, write_api, process)."
    );
    describe_counter!(
        "pitwall_events_out_total",
        "Rows produced by the processor, by stream."
    );
    describe_counter!(
        "pitwall_rejects_total",
        "Rejected payloads or lines, by stage and kind of reason."
    );
    describe_gauge!(
        "pitwall_consumer_lag_messages",
        "Messages on the bus not yet processed, per partition."
    );
    describe_gauge!(
        "pitwall_watermark_lag_seconds",
        Unit::Seconds,
        "Wall clock minus the partition's event-time watermark."
    );
    describe_histogram!(
        "pitwall_lake_commit_seconds",
        Unit::Seconds,
        "Latency of lake commits."
    );
    describe_counter!(
        "pitwall_lake_rows_total",
        "Rows committed to the lake, per table."
    );
    describe_counter!(
        "pitwall_lake_files_total",
        "Data files committed to the lake, per table."
    );
    describe_counter!(
        "pitwall_lake_bytes_total",
        Unit::Bytes,
        "Bytes of data files committed to the lake, per table."
    );
    describe_counter!(
        "pitwall_http_requests_total",
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        "pitwall_http_request_seconds",
        Unit::Seconds,
        "Latency of HTTP requests, by route."
    );
}

/// `GET /metrics`, for a server of its own (processes that serve nothing else).
pub fn metrics_only() -> Router {
    routes().route_layer(axum::middleware::from_fn(track))
}

/// `GET /metrics`.
pub fn routes() -> Router {
    Router::new().route("/metrics", get(render))
}

async fn render() -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_text(),
    )
        .into_response()
}

/// Middleware counting requests by route (the pattern, not the path), method and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("pitwall_http_request_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("pitwall_http_requests_total", "route" => route, "method" => method, "status" => status).increment(1);
    response
}
