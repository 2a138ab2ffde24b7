//! The live feed: `GET /api/v1/live` as server-sent events.
//!
//! The pipeline [`feed`](LiveHub::feed)s the JSON messages of its output topics (clean
//! points, window metrics, anomalies) into a [`LiveHub`]; each browser connection
//! subscribes, filters by stream, measurement and source, and gets clean points
//! downsampled per series (measurement and source) to `rate` a second: the newest point
//! of a series is sent at once when its last one is older than `1/rate`, otherwise held
//! and sent when that time is up (a newer one replaces it). Window metrics and anomalies
//! are never dropped. Every event carries an id; a client that reconnects with
//! `Last-Event-ID` (browsers' `EventSource` does it by itself) first gets what it missed
//! from the hub's recent history, as far as that goes back. Each event's JSON carries
//! `received_ms`, when the server got it from the pipeline.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch};

use crate::AppState;

/// Which output stream an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveStream {
    /// Clean points (`telemetry.clean`).
    Clean,
    /// Window metrics (`telemetry.metrics`).
    Metrics,
    /// Anomaly episodes (`telemetry.anomalies`).
    Anomalies,
}

impl LiveStream {
    /// The SSE event name.
    pub fn name(self) -> &'static str {
        match self {
            LiveStream::Clean => "clean",
            LiveStream::Metrics => "metrics",
            LiveStream::Anomalies => "anomalies",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "clean" => Some(LiveStream::Clean),
            "metrics" | "windows" => Some(LiveStream::Metrics),
            "anomalies" => Some(LiveStream::Anomalies),
            _ => None,
        }
    }
}

/// One message of an output topic, as the live feed sends it.
#[derive(Debug)]
pub struct LiveEvent {
    /// Position in the hub, the SSE id.
    pub seq: u64,
    /// Its stream.
    pub stream: LiveStream,
    /// The measurement named in the JSON.
    pub measurement: String,
    /// The source id (the message key).
    pub source: String,
    /// The JSON, as on the topic.
    pub data: Bytes,
    /// When the hub got it from the pipeline, ms since the epoch.
    pub received_ms: i64,
}

/// Fan-out of the pipeline's outputs to live connections, with a short history for
/// reconnects.
#[derive(Debug, Clone)]
pub struct LiveHub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    tx: broadcast::Sender<Arc<LiveEvent>>,
    seq: AtomicU64,
    recent: Mutex<VecDeque<Arc<LiveEvent>>>,
    history: usize,
    /// Source id → measurement, of every source seen on the clean stream.
    sources: Mutex<std::collections::BTreeMap<String, String>>,
    /// Set when the server stops: every connection is told and ended at once.
    closing: watch::Sender<bool>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    measurement: std::borrow::Cow<'a, str>,
}

/// The `measurement` of an output message's JSON.
fn measurement_of(data: &[u8]) -> Option<String> {
    serde_json::from_slice::<Head<'_>>(data)
        .ok()
        .map(|h| h.measurement.into_owned())
}

impl Default for LiveHub {
    fn default() -> Self {
        LiveHub::new(8192)
    }
}

impl LiveHub {
    /// A hub that keeps the last `history` events for reconnecting clients.
    pub fn new(history: usize) -> Self {
        let (tx, _) = broadcast::channel(history.max(4096));
        LiveHub {
            inner: Arc::new(HubInner {
                tx,
                seq: AtomicU64::new(0),
                recent: Mutex::new(VecDeque::with_capacity(history)),
                history,
                sources: Mutex::default(),
                closing: watch::Sender::new(false),
            }),
        }
    }

    /// Ends every live connection now, and any opened later, with a `shutdown` event
    /// (the dashboard then says "stopped" instead of reconnecting): the server is
    /// stopping, and a browser tab left open must not hold it up.
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Does anyone listen? Clean points are only worth feeding then.
    pub fn has_listeners(&self) -> bool {
        self.inner.tx.receiver_count() > 0
    }

    /// Feeds one output message (JSON with a `measurement`, keyed by source id). Clean
    /// points nobody listens to are dropped here.
    pub fn feed(&self, stream: LiveStream, key: Option<&[u8]>, data: Bytes) {
        let source = key.map(String::from_utf8_lossy).unwrap_or_default();
        if stream == LiveStream::Clean {
            let mut sources = self.lock_sources();
            if !sources.contains_key(source.as_ref()) {
                let Some(measurement) = measurement_of(&data) else {
                    return;
                };
                sources.insert(source.clone().into_owned(), measurement);
            }
            if !self.has_listeners() {
                return;
            }
        }
        let Some(measurement) = measurement_of(&data) else {
            return;
        };
        let source = source.into_owned();
        let event = Arc::new(LiveEvent {
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1,
            stream,
            measurement,
            source,
            data,
            received_ms: pitwall_core::now_ns() / 1_000_000,
        });
        {
            let mut recent = self
                .inner
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() == self.inner.history {
                recent.pop_front();
            }
            recent.push_back(Arc::clone(&event));
            // Sent under the lock, so a new subscriber's history and live events
            // neither overlap nor leave a gap.
            self.inner.tx.send(event).ok();
        }
    }

    fn lock_sources(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, String>> {
        self.inner
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every source seen on the clean stream, as (measurement, source id), sorted.
    pub fn sources(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .lock_sources()
            .iter()
            .map(|(s, m)| (m.clone(), s.clone()))
            .collect();
        v.sort();
        v
    }

    /// Subscribes; also returns the recent events after `after` (a reconnect's
    /// `Last-Event-ID`).
    fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (broadcast::Receiver<Arc<LiveEvent>>, Vec<Arc<LiveEvent>>) {
        let recent = self
            .inner
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = self.inner.tx.subscribe();
        let missed = match after {
            Some(id) => recent.iter().filter(|e| e.seq > id).cloned().collect(),
            None => Vec::new(),
        };
        (rx, missed)
    }
}

/// Query of `GET /api/v1/live`.
#[derive(Debug, Deserialize)]
pub(crate) struct LiveParams {
    /// Comma-separated streams: clean, metrics, anomalies (default all).
    stream: Option<String>,
    /// Comma-separated measurements (default all).
    measurement: Option<String>,
    /// Comma-separated source ids (default all).
    source: Option<String>,
    /// Clean points per second per series (default 10; 0 sends every point).
    rate: Option<f64>,
    /// The token, for clients that cannot send headers (the browser's EventSource).
    token: Option<String>,
}

fn list(s: Option<&str>) -> Option<Vec<String>> {
    s.filter(|s| !s.trim().is_empty()).map(|s| {
        s.split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect()
    })
}

struct Filter {
    streams: Vec<LiveStream>,
    measurements: Option<Vec<String>>,
    sources: Option<Vec<String>>,
}

impl Filter {
    fn wants(&self, e: &LiveEvent) -> bool {
        self.streams.contains(&e.stream)
            && self
                .measurements
                .as_ref()
                .is_none_or(|m| m.contains(&e.measurement))
            && self.sources.as_ref().is_none_or(|s| s.contains(&e.source))
    }
}

/// The event as sent: the topic's JSON object with `received_ms` (when the server got
/// it from the pipeline, ms since the epoch) added first, so a client can tell how far
/// behind the processor it is.
fn sse_event(e: &LiveEvent) -> Event {
    let json = String::from_utf8_lossy(&e.data);
    let data = match json.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => {
            format!("{{\"received_ms\":{}}}", e.received_ms)
        }
        Some(rest) => format!("{{\"received_ms\":{},{rest}", e.received_ms),
        None => json.into_owned(),
    };
    Event::default()
        .event(e.stream.name())
        .id(e.seq.to_string())
        .data(data)
}

/// A series' last send, and the point held back since.
type SeriesState = (Instant, Option<Arc<LiveEvent>>);

/// Per-series downsampling of clean points.
struct Downsampler {
    interval: Duration,
    /// (measurement, source) -> its state.
    series: HashMap<(String, String), SeriesState>,
}

impl Downsampler {
    /// The event if it may go now; otherwise it is held as its series' pending one.
    fn offer(&mut self, e: Arc<LiveEvent>, now: Instant) -> Option<Arc<LiveEvent>> {
        if e.stream != LiveStream::Clean || self.interval.is_zero() {
            return Some(e);
        }
        let key = (e.measurement.clone(), e.source.clone());
        match self.series.get_mut(&key) {
            Some((last, pending)) if now.duration_since(*last) < self.interval => {
                *pending = Some(e);
                None
            }
            Some((last, pending)) => {
                *last = now;
                *pending = None;
                Some(e)
            }
            None => {
                self.series.insert(key, (now, None));
                Some(e)
            }
        }
    }

    /// Pending points whose series may send again.
    fn due(&mut self, now: Instant) -> Vec<Arc<LiveEvent>> {
        let mut out = Vec::new();
        for (last, pending) in self.series.values_mut() {
            if pending.is_some() && now.duration_since(*last) >= self.interval {
                *last = now;
                out.extend(pending.take());
            }
        }
        out.sort_by_key(|e| e.seq);
        out
    }
}

pub(crate) async fn live(
    State(state): State<Arc<AppState>>,
    Query(params): Query<LiveParams>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = crate::authorize(&state, &headers, params.token.as_deref()) {
        return r.into_response();
    }
    let streams = match list(params.stream.as_deref()) {
        None => vec![
            LiveStream::Clean,
            LiveStream::Metrics,
            LiveStream::Anomalies,
        ],
        Some(names) => {
            let mut streams = Vec::new();
            for n in &names {
                match LiveStream::parse(n) {
                    Some(s) => streams.push(s),
                    None => {
                        return crate::error(
                            axum::http::StatusCode::BAD_REQUEST,
                            "invalid",
                            format!("stream {n:?} is not one of clean, metrics, anomalies"),
                        )
                        .into_response();
                    }
                }
            }
            streams
        }
    };
    let rate = params.rate.unwrap_or(10.0);
    // Below one point in 1,000 s the interval would not fit a Duration.
    if !(rate.is_finite() && (rate == 0.0 || rate >= 0.001)) {
        return crate::error(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid",
            format!("rate {rate} is not 0 (every point) or a number of points per second of at least 0.001"),
        )
        .into_response();
    }
    let filter = Filter {
        streams,
        measurements: list(params.measurement.as_deref()),
        sources: list(params.source.as_deref()),
    };
    let interval = if rate == 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(1.0 / rate)
    };
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (rx, missed) = state.live.subscribe(after);
    let closing = state.live.inner.closing.subscribe();
    let (out_tx, out_rx) = mpsc::channel::<Event>(256);
    tokio::spawn(pump(rx, missed, filter, interval, closing, out_tx));
    let stream = futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// Moves events from the hub to one connection until it closes.
async fn pump(
    mut rx: broadcast::Receiver<Arc<LiveEvent>>,
    missed: Vec<Arc<LiveEvent>>,
    filter: Filter,
    interval: Duration,
    mut closing: watch::Receiver<bool>,
    out: mpsc::Sender<Event>,
) {
    let bye = || {
        Event::default()
            .event("shutdown")
            .data(r#"{"message":"pitwall is stopping"}"#)
    };
    if *closing.borrow_and_update() {
        let _ = out.send(bye()).await;
        return;
    }
    let mut down = Downsampler {
        interval,
        series: HashMap::new(),
    };
    // The browser's EventSource reconnects after this long if the connection drops.
    if out
        .send(Event::default().retry(Duration::from_secs(1)))
        .await
        .is_err()
    {
        return;
    }
    for e in missed {
        if filter.wants(&e) && out.send(sse_event(&e)).await.is_err() {
            return;
        }
    }
    let tick_every = if interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        interval / 2
    };
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(e) => {
                    if !filter.wants(&e) {
                        continue;
                    }
                    if let Some(e) = down.offer(e, Instant::now())
                        && out.send(sse_event(&e)).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = Event::default().event("lagged").data(format!("{{\"missed\":{n}}}"));
                    if out.send(note).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                for e in down.due(Instant::now()) {
                    if out.send(sse_event(&e)).await.is_err() {
                        return;
                    }
                }
            }
            () = out.closed() => return,
            _ = closing.changed() => {
                let _ = out.send(bye()).await;
                return;
            }
        }
    }
}
