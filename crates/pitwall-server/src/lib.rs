//! `pitwall serve`: the HTTP write API (compatible with what Telegraf and InfluxDB
//! clients send), the SQL API ([`query`]), the live feed ([`live`]), the dashboard
//! ([`dashboard`]) and Prometheus metrics ([`metrics`]).
//!
//! - `POST /api/v2/write?bucket=..&precision=ns|us|ms|s`: InfluxDB v2 line protocol;
//! - `POST /write?db=..&precision=n|ns|u|us|ms|s`: InfluxDB v1 line protocol;
//! - `POST /api/v1/telegraf`: Telegraf's HTTP output with its JSON serializer, one metric
//!   or `{"metrics": [...]}`;
//! - `GET /ping`, `GET /health`: liveness.
//!
//! Bodies may be gzip-compressed (`Content-Encoding: gzip`). Every accepted point is
//! published to the raw topic, keyed by its source id, before the response. A body with
//! bad lines gets 400 naming each bad line and why, and its good lines are still
//! accepted (the response says how many). Over `max-body-bytes` (compressed or not) is
//! 413; a pipeline that cannot take the points within `publish-timeout` is 503 with
//! `Retry-After`. Once a token is configured (`server.tokens` or `PITWALL_TOKEN`, comma
//! separated), every write needs `Authorization: Token …`, `Bearer …` or Basic auth with
//! the token as password (Telegraf's influxdb output), compared in constant time; the
//! query API and the live feed need it too.

pub mod dashboard;
pub mod live;
pub mod metrics;
pub mod query;

pub use live::{LiveHub, LiveStream};

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pitwall_core::{Point, Precision, json, line_protocol};
use pitwall_stream::ProcessorConfig;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Settings of the HTTP server (`[server]` in `pitwall.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Address to listen on; 8086 is InfluxDB's, so Telegraf's defaults point here.
    pub listen: String,
    /// Tokens accepted for writes; empty (and no `PITWALL_TOKEN`) means no authentication.
    pub tokens: Vec<String>,
    /// Largest request body, before and after gzip.
    pub max_body_bytes: usize,
    /// How long a write may wait for the pipeline to take its points before 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// A query running longer than this is stopped.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// A query answers at most this many rows (and says when there were more).
    pub query_max_rows: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8086".into(),
            tokens: Vec::new(),
            max_body_bytes: 32 * 1024 * 1024,
            publish_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(30),
            query_max_rows: 100_000,
        }
    }
}

impl ServerConfig {
    /// The tokens from the config and from `PITWALL_TOKEN` (comma-separated).
    pub fn all_tokens(&self) -> Vec<String> {
        let from_env = std::env::var("PITWALL_TOKEN").unwrap_or_default();
        self.tokens
            .iter()
            .map(String::as_str)
            .chain(from_env.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// One message for the raw topic.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Source id, for partitioning.
    pub key: Option<Bytes>,
    /// The point as JSON.
    pub payload: Bytes,
    /// Event time, ns.
    pub time: i64,
}

/// Why publishing failed.
#[derive(Debug)]
pub enum SinkError {
    /// The pipeline cannot take more now; try again shortly.
    Full,
    /// The pipeline is gone or broken.
    Failed(String),
}

/// A boxed future, for [`Sink`].
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Where accepted points go: the raw topic, in order, acknowledged when the future ends.
pub trait Sink: Send + Sync + 'static {
    /// Publishes `messages` in order.
    fn publish(&self, messages: Vec<RawMessage>) -> SinkFuture<'_>;
}

/// Counters of the write API, for status and metrics.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Points accepted and published.
    pub accepted: std::sync::atomic::AtomicU64,
    /// Lines or metrics rejected.
    pub rejected: std::sync::atomic::AtomicU64,
}

/// What the server serves: where writes go, the lake it queries, the live feed.
#[derive(Clone)]
pub struct Services {
    /// Where accepted points go.
    pub sink: Arc<dyn Sink>,
    /// The processor's settings (source ids, for keys).
    pub processor: Arc<ProcessorConfig>,
    /// Write counters.
    pub stats: Arc<WriteStats>,
    /// The lake the SQL API reads; `None` answers 503.
    pub lake: Option<pitwall_lake::Lake>,
    /// The live feed's hub.
    pub live: LiveHub,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("lake", &self.lake.is_some()).finish_non_exhaustive()
    }
}

pub(crate) struct AppState {
    sink: Arc<dyn Sink>,
    tokens: Vec<String>,
    max_body: usize,
    publish_timeout: Duration,
    processor: Arc<ProcessorConfig>,
    stats: Arc<WriteStats>,
    lake: Option<pitwall_lake::Lake>,
    live: LiveHub,
    query_limits: pitwall_query::Limits,
}

/// The router with every route, for [`Bound`] or a test.
pub fn router(config: &ServerConfig, services: Services) -> Router {
    let state = Arc::new(AppState {
        sink: services.sink,
        tokens: config.all_tokens(),
        max_body: config.max_body_bytes,
        publish_timeout: config.publish_timeout,
        processor: services.processor,
        stats: services.stats,
        lake: services.lake,
        live: services.live,
        query_limits: pitwall_query::Limits {
            timeout: config.query_timeout,
            max_rows: config.query_max_rows,
        },
    });
    Router::new()
        .route("/api/v2/write", post(write_v2))
        .route("/write", post(write_v1))
        .route("/api/v1/telegraf", post(write_telegraf))
        .route("/api/v1/query", post(query::query))
        .route("/api/v1/live", get(live::live))
        .route("/ping", get(ping).head(ping))
        .route("/health", get(health))
        .merge(dashboard::routes())
        .with_state(state)
        .merge(metrics::routes())
        .route_layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
}

/// A server bound to its address, ready to run.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Bound {
    /// Binds `config.listen`; the error names the address (callers add which setting
    /// chose it).
    pub async fn bind(config: &ServerConfig, router: Router) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        Ok(Bound { listener, router })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes; requests in flight finish first.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // No Nagle delay: live-feed events are small writes that must go out at once.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, self.router).with_graceful_shutdown(shutdown).await
    }
}

async fn ping() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"name": "pitwall", "status": "pass", "message": "ready for writes"}))
}

#[derive(Debug, Deserialize)]
struct WriteParams {
    precision: Option<String>,
}

/// An error answer: status, InfluxDB-style code and a message in words.
#[derive(Debug)]
pub(crate) struct Reject {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.status, axum::Json(serde_json::json!({"code": self.code, "message": self.message}))).into_response()
    }
}

pub(crate) fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Reject {
    Reject {
        status,
        code,
        message: message.into(),
    }
}

/// Checks the token, if any is configured.
/// `in_query` is a token passed in the URL, for clients that cannot set headers.
pub(crate) fn authorize(state: &AppState, headers: &HeaderMap, in_query: Option<&str>) -> Result<(), Reject> {
    if state.tokens.is_empty() {
        return Ok(());
    }
    let from_header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        let rest = rest.trim();
        match scheme.to_ascii_lowercase().as_str() {
            "token" | "bearer" => Some(rest.to_owned()),
            "basic" => {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
                let text = String::from_utf8(raw).ok()?;
                Some(text.split_once(':').map_or(text.clone(), |(_, p)| p.to_owned()))
            }
            _ => None,
        }
    });
    let Some(given) = from_header.or_else(|| in_query.map(str::to_owned)) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a token is required: send `Authorization: Token <token>` (or Bearer)",
        ));
    };
    // Every token is compared, in constant time, whatever matches.
    let ok = state
        .tokens
        .iter()
        .fold(subtle::Choice::from(0), |acc, t| acc | t.as_bytes().ct_eq(given.as_bytes()));
    if bool::from(ok) {
        Ok(())
    } else {
        Err(error(StatusCode::UNAUTHORIZED, "unauthorized", "the token is not valid"))
    }
}

/// The body, gunzipped if it says so, within the size limit.
fn body_bytes(state: &AppState, headers: &HeaderMap, body: Bytes) -> Result<Bytes, Reject> {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(body);
    }
    let mut out = Vec::with_capacity(body.len() * 4);
    let limit = state.max_body as u64;
    flate2::read::GzDecoder::new(&body[..])
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid", format!("the body is not valid gzip: {e}")))?;
    if out.len() as u64 > limit {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request too large",
            format!("the body is over {limit} bytes once decompressed; send smaller batches"),
        ));
    }
    Ok(Bytes::from(out))
}

fn precision(p: Option<&str>) -> Result<Precision, Reject> {
    match p.unwrap_or("ns") {
        "ns" | "n" => Ok(Precision::Ns),
        "us" | "u" => Ok(Precision::Us),
        "ms" => Ok(Precision::Ms),
        "s" => Ok(Precision::S),
        other => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("precision {other:?} is not one of ns, us, ms, s"),
        )),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A rejected line or metric: where and why.
#[derive(Debug, Serialize)]
struct Rejected {
    line: usize,
    error: String,
}

fn message(state: &AppState, p: &Point) -> Result<RawMessage, String> {
    let payload = json::encode(p).map_err(|e| e.to_string())?;
    Ok(RawMessage {
        key: state.processor.source_id(p).map(|s| Bytes::copy_from_slice(s.as_bytes())),
        payload: Bytes::from(payload),
        time: p.time,
    })
}

/// Publishes what was accepted and answers: 204 when everything was, 400 listing the
/// rejects (the rest accepted) otherwise.
async fn publish_and_answer(state: &AppState, accepted: Vec<RawMessage>, rejected: Vec<Rejected>, what: &str) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let n = accepted.len();
    if n > 0 {
        match tokio::time::timeout(state.publish_timeout, state.sink.publish(accepted)).await {
            Ok(Ok(())) => {}
            Ok(Err(SinkError::Failed(e))) => {
                return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("the pipeline did not take the points: {e}"))
                    .into_response();
            }
            Ok(Err(SinkError::Full)) | Err(_) => {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the pipeline is behind and did not take the points in time; retry shortly (points of this body may have been taken)",
                )
                .into_response();
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
    }
    state.stats.accepted.fetch_add(n as u64, Relaxed);
    state.stats.rejected.fetch_add(rejected.len() as u64, Relaxed);
    ::metrics::counter!("pitwall_events_in_total", "stage" => "write_api").increment(n as u64);
    if !rejected.is_empty() {
        ::metrics::counter!("pitwall_rejects_total", "stage" => "write_api", "reason" => "parse").increment(rejected.len() as u64);
    }
    if rejected.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let first = &rejected[0];
    let message = if n == 0 {
        format!("no {what} accepted: {} rejected; first, line {}: {}", rejected.len(), first.line, first.error)
    } else {
        format!(
            "partial write: {} {what}s rejected, the other {n} accepted; first, line {}: {}",
            rejected.len(),
            first.line,
            first.error
        )
    };
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({
            "code": "invalid",
            "message": message,
            "line": first.line,
            "accepted": n,
            "rejected": rejected,
        })),
    )
        .into_response()
}

async fn write_line_protocol(state: &AppState, headers: &HeaderMap, params: &WriteParams, body: Bytes) -> Response {
    if let Err(r) = authorize(state, headers, None) {
        return r.into_response();
    }
    let precision = match precision(params.precision.as_deref()) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let body = match body_bytes(state, headers, body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid", "the body is not UTF-8 line protocol").into_response();
    };
    let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
    for r in line_protocol::parse(text, precision, now_ns()) {
        match r.map_err(|e| (e.to_string(), line_of(&e))).and_then(|p| message(state, &p).map_err(|e| (e, 0))) {
            Ok(m) => accepted.push(m),
            Err((error, line)) => rejected.push(Rejected { line, error }),
        }
    }
    publish_and_answer(state, accepted, rejected, "line").await
}

fn line_of(e: &pitwall_core::Error) -> usize {
    match e {
        pitwall_core::Error::LineProtocol { line, .. } => *line,
        _ => 0,
    }
}

async fn write_v2(State(state): State<Arc<AppState>>, Query(params): Query<WriteParams>, headers: HeaderMap, body: Bytes) -> Response {
    write_line_protocol(&state, &headers, &params, body).await
}

async fn write_v1(State(state): State<Arc<AppState>>, Query(params): Query<WriteParams>, headers: HeaderMap, body: Bytes) -> Response {
    write_line_protocol(&state, &headers, &params, body).await
}

async fn write_telegraf(State(state): State<Arc<AppState>>, Query(params): Query<WriteParams>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&state, &headers, None) {
        return r.into_response();
    }
    // Telegraf's JSON serializer writes timestamps in seconds unless told otherwise.
    let precision = match precision(Some(params.precision.as_deref().unwrap_or("s"))) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let body = match body_bytes(&state, &headers, body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let doc: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid", format!("the body is not JSON: {e}")).into_response(),
    };
    let metrics = match doc {
        serde_json::Value::Object(mut o) if o.contains_key("metrics") => match o.remove("metrics") {
            Some(serde_json::Value::Array(a)) => a,
            _ => return error(StatusCode::BAD_REQUEST, "invalid", "`metrics` must be an array of metrics").into_response(),
        },
        one @ serde_json::Value::Object(_) => vec![one],
        _ => return error(StatusCode::BAD_REQUEST, "invalid", "expected a metric object or {\"metrics\": [...]}").into_response(),
    };
    let now = now_ns();
    let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
    for (i, m) in metrics.iter().enumerate() {
        let bytes = serde_json::to_vec(m).unwrap_or_default();
        match json::decode(&bytes, now, precision).map_err(|e| e.to_string()).and_then(|p| message(&state, &p)) {
            Ok(msg) => accepted.push(msg),
            Err(error) => rejected.push(Rejected {
                line: i + 1,
                error: format!("metric {}: {error}", i + 1),
            }),
        }
    }
    publish_and_answer(&state, accepted, rejected, "metric").await
}
