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

mod conn;
pub mod dashboard;
pub mod flight;
mod guard;
pub mod live;
pub mod metrics;
pub mod pg;
pub mod query;
mod tls;

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
use pitwall_core::{Point, Precision, json, line_protocol, now_ns};
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
    /// Address of the PostgreSQL wire protocol (read-only SQL for psql, Grafana,
    /// Superset and every PostgreSQL driver); empty turns it off.
    pub pg_listen: String,
    /// PostgreSQL sessions open at once; past it a client is refused (SQLSTATE 53300).
    pub pg_max_connections: usize,
    /// PEM file of the certificate chain the PostgreSQL wire offers TLS with (with
    /// `pg-tls-key`); empty (the default): no TLS.
    pub pg_tls_cert: String,
    /// PEM file of that certificate's private key.
    pub pg_tls_key: String,
    /// With TLS set up, refuse PostgreSQL clients that do not use it (SQLSTATE 28000), so
    /// no token crosses the network in clear text; false lets them in as well.
    pub pg_tls_required: bool,
    /// Address of Arrow Flight SQL (gRPC: ADBC, Grafana's Flight SQL source, InfluxDB 3
    /// clients); empty (the default) turns it off.
    pub flight_listen: String,
    /// Flight SQL connections open at once; past it a new one is closed at once.
    pub flight_max_connections: usize,
    /// PEM file of the certificate chain Flight SQL serves TLS with (with
    /// `flight-tls-key`; then TLS only: `grpc+tls://`); empty (the default): no TLS.
    pub flight_tls_cert: String,
    /// PEM file of that certificate's private key.
    pub flight_tls_key: String,
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
    /// Memory all running queries share, in bytes; spilling operators spill into the
    /// data directory's `tmp/` first, a query that still needs more fails naming this.
    pub query_memory: usize,
    /// Queries running at once; more wait `query-queue-timeout`, then get 503.
    pub query_concurrency: usize,
    /// How long a query waits for a place to run.
    #[serde(with = "humantime_serde")]
    pub query_queue_timeout: Duration,
    /// Longest SQL text, in bytes (400 over it).
    pub query_max_sql_bytes: usize,
    /// Deepest nesting of expressions, subqueries and UNIONs (400 over it).
    pub query_max_depth: usize,
    /// Connections open at once (lowered to half the open-file limit); past it, 503.
    pub max_connections: usize,
    /// A request's head (line and headers) must arrive within this, from the
    /// connection's start or from the first byte of a kept-alive connection's next request.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request body must arrive within this (408 after).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Request bodies held at once, all requests together, in bytes; past it, 503.
    pub body_memory: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8086".into(),
            tokens: Vec::new(),
            pg_listen: "127.0.0.1:5433".into(),
            pg_max_connections: 64,
            pg_tls_cert: String::new(),
            pg_tls_key: String::new(),
            pg_tls_required: true,
            flight_listen: String::new(),
            flight_max_connections: 64,
            flight_tls_cert: String::new(),
            flight_tls_key: String::new(),
            max_body_bytes: 32 * 1024 * 1024,
            publish_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(30),
            query_max_rows: 100_000,
            query_memory: 1024 * 1024 * 1024,
            query_concurrency: 4,
            query_queue_timeout: Duration::from_secs(5),
            query_max_sql_bytes: 256 * 1024,
            query_max_depth: 500,
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(60),
            body_memory: 256 * 1024 * 1024,
        }
    }
}

impl ServerConfig {
    /// Checks values serde cannot; the error names the key and what to use.
    pub fn validate(&self) -> Result<(), String> {
        let at_least = |key: &str, value: usize, min: usize, unit: &str| {
            if value < min {
                Err(format!(
                    "server.{key}: is {value}; use at least {min}{unit}"
                ))
            } else {
                Ok(())
            }
        };
        at_least("max-body-bytes", self.max_body_bytes, 1024, " bytes")?;
        at_least("query-max-rows", self.query_max_rows, 1, "")?;
        at_least(
            "query-memory",
            self.query_memory,
            16 * 1024 * 1024,
            " bytes (16 MiB)",
        )?;
        at_least("query-concurrency", self.query_concurrency, 1, "")?;
        at_least(
            "query-max-sql-bytes",
            self.query_max_sql_bytes,
            64,
            " bytes",
        )?;
        at_least("query-max-depth", self.query_max_depth, 8, "")?;
        at_least("max-connections", self.max_connections, 1, "")?;
        at_least("pg-max-connections", self.pg_max_connections, 1, "")?;
        tls::both_or_neither(
            ("server.pg-tls-cert", &self.pg_tls_cert),
            ("server.pg-tls-key", &self.pg_tls_key),
        )?;
        at_least("flight-max-connections", self.flight_max_connections, 1, "")?;
        tls::both_or_neither(
            ("server.flight-tls-cert", &self.flight_tls_cert),
            ("server.flight-tls-key", &self.flight_tls_key),
        )?;
        at_least(
            "body-memory",
            self.body_memory,
            self.max_body_bytes,
            " bytes (server.max-body-bytes, so one largest body fits)",
        )?;
        if self.body_memory / guard::BODY_UNIT > u32::MAX as usize {
            return Err(format!(
                "server.body-memory: is {}; use at most 4 TiB",
                self.body_memory
            ));
        }
        for (key, d) in [
            ("query-timeout", self.query_timeout),
            ("header-read-timeout", self.header_read_timeout),
            ("idle-timeout", self.idle_timeout),
            ("body-read-timeout", self.body_read_timeout),
            ("publish-timeout", self.publish_timeout),
        ] {
            if d < Duration::from_millis(10) {
                return Err(format!("server.{key}: is {d:?}; use at least 10ms"));
            }
        }
        Ok(())
    }

    /// The query limits these settings give; spill files go to `spill_dir`.
    pub fn query_limits(&self, spill_dir: Option<std::path::PathBuf>) -> pitwall_query::Limits {
        pitwall_query::Limits {
            timeout: self.query_timeout,
            max_rows: self.query_max_rows,
            memory: self.query_memory,
            concurrency: self.query_concurrency,
            queue_timeout: self.query_queue_timeout,
            max_sql_bytes: self.query_max_sql_bytes,
            max_depth: self.query_max_depth,
            spill_dir,
        }
    }

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
    /// When the server received it, ns: the message timestamp, against which the
    /// processor judges how far ahead a point's clock may be (`processor.max-future`).
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

/// Whether the lake is taking commits, for `/health`, the status line and metrics. The
/// pipeline marks each commit's outcome; while commits fail (storage or catalog down),
/// `/health` answers 503 with the reason, and it says "pass" again after the next
/// commit that succeeds.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<std::sync::Mutex<Option<Failing>>>);

#[derive(Debug)]
struct Failing {
    reason: String,
    since: std::time::Instant,
    failures: u32,
}

impl Health {
    /// Notes a failed commit; returns how many failed in a row.
    pub fn commit_failed(&self, reason: &str) -> u32 {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let f = g.get_or_insert_with(|| Failing {
            reason: String::new(),
            since: std::time::Instant::now(),
            failures: 0,
        });
        f.failures += 1;
        f.reason = reason.to_owned();
        ::metrics::gauge!("pitwall_lake_commit_failing").set(1.0);
        ::metrics::counter!("pitwall_lake_commit_failures_total").increment(1);
        f.failures
    }

    /// Notes a commit that succeeded.
    pub fn commit_ok(&self) {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.take().is_some() {
            ::metrics::gauge!("pitwall_lake_commit_failing").set(0.0);
            tracing::info!("lake commits succeed again");
        }
    }

    /// What is wrong, if anything: the last error, for how long, failures in a row.
    pub fn problem(&self) -> Option<(String, Duration, u32)> {
        let g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.as_ref()
            .map(|f| (f.reason.clone(), f.since.elapsed(), f.failures))
    }
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
    /// The column types the processors hold, so a write that would conflict with its
    /// table is refused at once; `None` checks names only.
    pub schemas: Option<pitwall_stream::SchemaRegistry>,
    /// The live feed's hub.
    pub live: LiveHub,
    /// Whether the lake takes commits (`/health`).
    pub health: Health,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("lake", &self.lake.is_some())
            .finish_non_exhaustive()
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
    schemas: Option<pitwall_stream::SchemaRegistry>,
    live: LiveHub,
    health: Health,
    engine: pitwall_query::Engine,
    body_read_timeout: Duration,
    body_memory: usize,
    bodies: Arc<tokio::sync::Semaphore>,
}

/// The router with every route, for [`Bound`] or a test. Fails when the query engine
/// cannot be set up (its spill directory, `tmp/` in the lake's data directory).
pub fn router(config: &ServerConfig, services: Services) -> Result<Router, String> {
    app(config, services).map(|(router, _)| router)
}

/// The router and the PostgreSQL door ([`pg::PgBound`]), sharing one query engine (one
/// memory pool, one set of places) and the tokens.
pub fn app(config: &ServerConfig, services: Services) -> Result<(Router, SqlDoors), String> {
    let spill_dir = services
        .lake
        .as_ref()
        .map(|l| l.config().data_dir.join("tmp"));
    let engine =
        pitwall_query::Engine::new(config.query_limits(spill_dir)).map_err(|e| e.to_string())?;
    let doors = SqlDoors {
        engine: engine.clone(),
        lake: services.lake.clone(),
        tokens: Arc::new(config.all_tokens()),
    };
    let state = Arc::new(AppState {
        sink: services.sink,
        tokens: config.all_tokens(),
        max_body: config.max_body_bytes,
        publish_timeout: config.publish_timeout,
        processor: services.processor,
        stats: services.stats,
        lake: services.lake,
        schemas: services.schemas,
        live: services.live,
        health: services.health,
        engine,
        body_read_timeout: config.body_read_timeout,
        body_memory: config.body_memory,
        bodies: Arc::new(tokio::sync::Semaphore::new(
            config.body_memory / guard::BODY_UNIT,
        )),
    });
    let router = Router::new()
        .route("/api/v2/write", post(write_v2))
        .route("/write", post(write_v1))
        .route("/api/v1/telegraf", post(write_telegraf))
        .route("/api/v1/query", post(query::query))
        .route("/api/v1/live", get(live::live))
        .route("/ping", get(ping).head(ping))
        .route("/health", get(health))
        .merge(dashboard::routes())
        .with_state(Arc::clone(&state))
        .merge(metrics::routes())
        .route_layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state, guard::guard));
    Ok((router, doors))
}

/// Binds a SQL door's address (`key` in the config); `None` when it is empty (off).
pub(crate) async fn bind_door(
    address: &str,
    key: &str,
) -> Result<Option<tokio::net::TcpListener>, String> {
    if address.is_empty() {
        return Ok(None);
    }
    tokio::net::TcpListener::bind(address)
        .await
        .map(Some)
        .map_err(|e| format!("cannot listen on {address} ({key}): {e}"))
}

/// What the SQL doors besides HTTP (the PostgreSQL wire protocol, Arrow Flight SQL)
/// share with the HTTP API: its engine (limits, memory pool, query places), the lake
/// and the tokens.
#[derive(Clone)]
pub struct SqlDoors {
    pub(crate) engine: pitwall_query::Engine,
    pub(crate) lake: Option<pitwall_lake::Lake>,
    pub(crate) tokens: Arc<Vec<String>>,
}

impl std::fmt::Debug for SqlDoors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlDoors")
            .field("lake", &self.lake.is_some())
            .finish_non_exhaustive()
    }
}

/// A server bound to its address, ready to run.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    router: Router,
    limits: conn::ConnLimits,
}

impl Bound {
    /// Binds `config.listen`; the error names the address (callers add which setting
    /// chose it).
    pub async fn bind(config: &ServerConfig, router: Router) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let limits = conn::ConnLimits {
            max_connections: conn::connection_cap(config.max_connections),
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
        };
        Ok(Bound {
            listener,
            router,
            limits,
        })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes; requests in flight get a few seconds to
    /// finish (live feeds are ended), see [`conn`].
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        conn::serve(self.listener, self.router, self.limits, shutdown).await
    }
}

async fn ping() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.health.problem() {
        None => axum::Json(serde_json::json!({"name": "pitwall", "status": "pass", "message": "ready for writes"})).into_response(),
        Some((reason, since, failures)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "name": "pitwall",
                "status": "fail",
                "message": format!(
                    "lake commits have failed for {}s ({failures} in a row; rows are kept and retried): {reason}",
                    since.as_secs()
                ),
            })),
        )
            .into_response(),
    }
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
    retry_after: Option<u32>,
}

impl Reject {
    /// Adds `Retry-After: seconds`.
    pub(crate) fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(serde_json::json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

pub(crate) fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Reject {
    Reject {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

/// Whether `given` is one of `tokens`: every token is compared, in constant time,
/// whatever matches (the HTTP API's header and the PostgreSQL password alike).
pub(crate) fn token_matches(tokens: &[String], given: &str) -> bool {
    tokens
        .iter()
        .fold(subtle::Choice::from(0), |acc, t| {
            acc | t.as_bytes().ct_eq(given.as_bytes())
        })
        .into()
}

/// Checks the token, if any is configured.
/// `in_query` is a token passed in the URL, for clients that cannot set headers.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    in_query: Option<&str>,
) -> Result<(), Reject> {
    if state.tokens.is_empty() {
        return Ok(());
    }
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            let rest = rest.trim();
            match scheme.to_ascii_lowercase().as_str() {
                "token" | "bearer" => Some(rest.to_owned()),
                "basic" => {
                    use base64::Engine;
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(rest)
                        .ok()?;
                    let text = String::from_utf8(raw).ok()?;
                    Some(
                        text.split_once(':')
                            .map_or(text.clone(), |(_, p)| p.to_owned()),
                    )
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
    if token_matches(&state.tokens, &given) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not valid",
        ))
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
    gunzip(&body, state.max_body)
}

/// `body` decompressed, refused past `limit` bytes (a gzip bomb stops there).
fn gunzip(body: &[u8], limit: usize) -> Result<Bytes, Reject> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let limit = limit as u64;
    flate2::read::GzDecoder::new(body)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("the body is not valid gzip: {e}"),
            )
        })?;
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
        "m" => Ok(Precision::M),
        "h" => Ok(Precision::H),
        other => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("precision {other:?} is not one of ns, us, ms, s, m, h"),
        )),
    }
}

/// A rejected line or metric: where and why.
#[derive(Debug, Serialize)]
struct Rejected {
    line: usize,
    error: String,
}

/// Rejected lines listed in an answer; the rest are counted (as InfluxDB does): a body
/// of millions of bad lines gets a short answer, not one larger than itself.
const MAX_LISTED: usize = 100;

/// The rejected lines of a body: the first [`MAX_LISTED`] with where and why, and how
/// many in all.
#[derive(Debug, Default)]
struct Rejects {
    listed: Vec<Rejected>,
    total: usize,
}

impl Rejects {
    fn push(&mut self, line: usize, error: impl FnOnce() -> String) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(Rejected {
                line,
                error: error(),
            });
        }
    }
}

/// The raw-topic message for a point received at `received`, or why the point is
/// refused now rather than quarantined later.
fn message(ctx: &Decode<'_>, p: &Point) -> Result<RawMessage, String> {
    let received = ctx.received;
    pitwall_stream::check_time(p.time, received, ctx.processor.max_future)?;
    admit(ctx, p)?;
    let payload = json::encode(p).map_err(|e| e.to_string())?;
    Ok(RawMessage {
        key: ctx
            .processor
            .source_id(p)
            .map(|s| Bytes::copy_from_slice(s.as_bytes())),
        payload: Bytes::from(payload),
        time: received,
    })
}

/// What the processor would refuse about a point's names and types, checked now: names
/// (length, reserved, a tag and a field alike), and against the processors' registry
/// (a tag named like a numeric field, a type the table does not hold, the table and
/// column limits).
fn admit(ctx: &Decode<'_>, p: &Point) -> Result<(), String> {
    use pitwall_stream::normalize::{check_names, names_are_normal};
    let renamed;
    let p = if names_are_normal(p) {
        check_names(p)?;
        p
    } else {
        let mut q = p.clone();
        pitwall_stream::normalize_names(&mut q)?;
        renamed = q;
        &renamed
    };
    match ctx.schemas {
        Some(registry) => registry.check(p),
        None => Ok(()),
    }
}

/// What decoding a write needs: whose rules, which schemas, when it was received.
struct Decode<'a> {
    processor: &'a ProcessorConfig,
    schemas: Option<&'a pitwall_stream::SchemaRegistry>,
    received: i64,
}

impl AppState {
    fn decode(&self) -> Decode<'_> {
        Decode {
            processor: &self.processor,
            schemas: self.schemas.as_ref(),
            received: now_ns(),
        }
    }
}

/// Publishes what was accepted and answers: 204 when everything was, 400 listing the
/// rejects (the rest accepted) otherwise.
async fn publish_and_answer(
    state: &AppState,
    accepted: Vec<RawMessage>,
    rejects: Rejects,
    what: &str,
) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let n = accepted.len();
    if n > 0 {
        match tokio::time::timeout(state.publish_timeout, state.sink.publish(accepted)).await {
            Ok(Ok(())) => {}
            Ok(Err(SinkError::Failed(e))) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the pipeline did not take the points: {e}"),
                )
                .into_response();
            }
            Ok(Err(SinkError::Full)) | Err(_) => {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the pipeline is behind and did not take the points in time; retry shortly (points of this body may have been taken)",
                )
                .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
    }
    state.stats.accepted.fetch_add(n as u64, Relaxed);
    state
        .stats
        .rejected
        .fetch_add(rejects.total as u64, Relaxed);
    ::metrics::counter!("pitwall_events_in_total", "stage" => "write_api").increment(n as u64);
    if rejects.total > 0 {
        ::metrics::counter!("pitwall_rejects_total", "stage" => "write_api", "reason" => "parse")
            .increment(rejects.total as u64);
    }
    let Some(first) = rejects.listed.first() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let unlisted = rejects.total - rejects.listed.len();
    let more = if unlisted > 0 {
        format!(
            " ({} listed, {unlisted} more not listed)",
            rejects.listed.len()
        )
    } else {
        String::new()
    };
    let message = if n == 0 {
        format!(
            "no {what} accepted: {} rejected{more}; first, line {}: {}",
            rejects.total, first.line, first.error
        )
    } else {
        format!(
            "partial write: {} {what}s rejected{more}, the other {n} accepted; first, line {}: {}",
            rejects.total, first.line, first.error
        )
    };
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({
            "code": "invalid",
            "message": message,
            "line": first.line,
            "accepted": n,
            "rejected_count": rejects.total,
            "rejected": rejects.listed,
        })),
    )
        .into_response()
}

/// The token was checked by the guard middleware before the body was read, as for every POST.
async fn write_line_protocol(
    state: &AppState,
    headers: &HeaderMap,
    params: &WriteParams,
    body: Bytes,
) -> Response {
    let precision = match precision(params.precision.as_deref()) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let body = match body_bytes(state, headers, body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let (accepted, rejects) = decode_line_protocol(&state.decode(), &body, precision);
    publish_and_answer(state, accepted, rejects, "line").await
}

/// The messages of a line-protocol body and its rejected lines. Invalid UTF-8 loses only
/// its own lines: they are blanked (so every other line keeps its number) and rejected
/// with where the bad byte is.
fn decode_line_protocol(
    ctx: &Decode<'_>,
    body: &[u8],
    precision: Precision,
) -> (Vec<RawMessage>, Rejects) {
    let (text, mut bad_utf8) = match std::str::from_utf8(body) {
        Ok(t) => (std::borrow::Cow::Borrowed(t), Vec::new()),
        Err(_) => {
            let (text, bad) = blank_invalid_lines(body);
            (std::borrow::Cow::Owned(text), bad)
        }
    };
    bad_utf8.reverse();
    let (mut accepted, mut rejects) = (Vec::new(), Rejects::default());
    let mut flush_utf8_before = |line: usize, rejects: &mut Rejects| {
        while bad_utf8.last().is_some_and(|(l, _)| *l < line) {
            let (l, e) = bad_utf8.pop().expect("checked above");
            rejects.push(l, || e);
        }
    };
    let mut parser = line_protocol::parse(&text, precision, ctx.received);
    while let Some(r) = parser.next() {
        let line = parser.point_line();
        match r
            .map_err(|e| (e.to_string(), line_of(&e).unwrap_or(line)))
            .and_then(|p| message(ctx, &p).map_err(|e| (format!("line {line}: {e}"), line)))
        {
            Ok(m) => accepted.push(m),
            Err((error, line)) => {
                flush_utf8_before(line, &mut rejects);
                rejects.push(line, || error);
            }
        }
    }
    flush_utf8_before(usize::MAX, &mut rejects);
    (accepted, rejects)
}

/// `body` with every line that is not valid UTF-8 left empty, and those lines' numbers
/// with the reason.
fn blank_invalid_lines(body: &[u8]) -> (String, Vec<(usize, String)>) {
    let mut text = String::with_capacity(body.len());
    let mut bad = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            text.push('\n');
        }
        match std::str::from_utf8(line) {
            Ok(l) => text.push_str(l),
            Err(e) => {
                let at = e.valid_up_to();
                bad.push((
                    i + 1,
                    format!("line {}, column {}: byte 0x{:02x} is not valid UTF-8; line protocol is UTF-8 text", i + 1, at + 1, line[at]),
                ));
            }
        }
    }
    (text, bad)
}

fn line_of(e: &pitwall_core::Error) -> Option<usize> {
    match e {
        pitwall_core::Error::LineProtocol { line, .. } => Some(*line),
        _ => None,
    }
}

async fn write_v2(
    State(state): State<Arc<AppState>>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_line_protocol(&state, &headers, &params, body).await
}

async fn write_v1(
    State(state): State<Arc<AppState>>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_line_protocol(&state, &headers, &params, body).await
}

async fn write_telegraf(
    State(state): State<Arc<AppState>>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Telegraf's JSON serializer writes timestamps in seconds unless told otherwise.
    let precision = match precision(Some(params.precision.as_deref().unwrap_or("s"))) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let body = match body_bytes(&state, &headers, body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    match decode_telegraf(&state.decode(), &body, precision) {
        Ok((accepted, rejects)) => publish_and_answer(&state, accepted, rejects, "metric").await,
        Err(r) => r.into_response(),
    }
}

/// The messages of a Telegraf JSON body and its rejected metrics. The metrics are kept
/// as slices of the body, each decoded as it comes: a million tiny metrics cost a
/// pointer each, not a JSON tree.
fn decode_telegraf(
    ctx: &Decode<'_>,
    body: &[u8],
    precision: Precision,
) -> Result<(Vec<RawMessage>, Rejects), Reject> {
    let metrics = telegraf_metrics(body)?;
    let (mut accepted, mut rejects) = (Vec::new(), Rejects::default());
    for (i, m) in metrics.iter().enumerate() {
        match json::decode(m.get().as_bytes(), ctx.received, precision)
            .map_err(|e| e.to_string())
            .and_then(|p| message(ctx, &p))
        {
            Ok(msg) => accepted.push(msg),
            Err(error) => rejects.push(i + 1, || format!("metric {}: {error}", i + 1)),
        }
    }
    Ok((accepted, rejects))
}

/// The metrics of a Telegraf JSON body: one metric object, or `{"metrics": [...]}`.
fn telegraf_metrics(body: &[u8]) -> Result<Vec<&serde_json::value::RawValue>, Reject> {
    use serde_json::value::RawValue;
    let top: std::collections::BTreeMap<std::borrow::Cow<'_, str>, &RawValue> =
        serde_json::from_slice(body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("the body is not a JSON object (a metric or {{\"metrics\": [...]}}): {e}"),
            )
        })?;
    match top.get("metrics") {
        Some(list) => serde_json::from_str::<Vec<&RawValue>>(list.get()).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("`metrics` must be an array of metrics: {e}"),
            )
        }),
        None => Ok(vec![serde_json::from_slice(body).map_err(|e| {
            error(StatusCode::BAD_REQUEST, "invalid", e.to_string())
        })?]),
    }
}

/// Entry points for the fuzz targets (`fuzz/`): the write path from the body as it
/// arrives up to validation, without a server.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Decodes `body` as the write API would (gunzipped first if `gzip`; Telegraf JSON
    /// if `telegraf`, else line protocol) and returns how many points it accepted and
    /// how many it rejected. The answer is rendered too, so its encoding is exercised.
    pub fn write_body(body: &[u8], gzip: bool, telegraf: bool) -> (usize, usize) {
        let processor = ProcessorConfig::default();
        let schemas = pitwall_stream::SchemaRegistry::default();
        let ctx = Decode {
            processor: &processor,
            schemas: Some(&schemas),
            received: 1_767_225_600_000_000_000,
        };
        let body = if gzip {
            match gunzip(body, 1 << 20) {
                Ok(b) => b,
                Err(_) => return (0, 0),
            }
        } else {
            Bytes::copy_from_slice(body)
        };
        let decoded = if telegraf {
            decode_telegraf(&ctx, &body, Precision::S)
        } else {
            Ok(decode_line_protocol(&ctx, &body, Precision::Ns))
        };
        match decoded {
            Ok((accepted, rejects)) => {
                assert!(rejects.listed.len() <= MAX_LISTED);
                let _ = serde_json::to_vec(&rejects.listed);
                (accepted.len(), rejects.total)
            }
            Err(_) => (0, 0),
        }
    }
}
