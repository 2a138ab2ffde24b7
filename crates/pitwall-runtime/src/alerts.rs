//! Alerts out: anomaly episodes, at their start and at their end, to webhooks and to
//! Prometheus Alertmanager (`[[alerts.routes]]`).
//!
//! The processor appends every episode row to an outbox on local disk (one JSON line,
//! synced) before the rows go to the lake writer: an episode the lake has committed is
//! in the outbox, so a crash loses none, and one derived again after a crash is sent
//! again with the same id (at least once; receivers de-duplicate on `id` + `phase`).
//! Each route reads the outbox from a cursor of its own on a task of its own, filters,
//! rate-limits, retries with backoff and, when a target stays down past
//! `give-up-after`, writes the episodes to `dead-letter.jsonl` with the reason and goes
//! on. Nothing a target does reaches the processor: it only ever appends to a file.
//!
//! The outbox is a series of segments (`outbox-N.jsonl`, a new one past 4 MiB); a
//! segment every route has read past is deleted.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pitwall_core::record::{AnomalyRecord, Phase};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use pitwall_core::rfc3339_ms as rfc3339;

/// `[alerts]`: where episodes are sent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AlertsConfig {
    /// The outbox, each route's cursor and the dead-letter log; empty =
    /// `<lake.data-dir>/alerts`. One process per directory.
    pub dir: String,
    /// Where episodes go; none = no alerts.
    pub routes: Vec<RouteConfig>,
}

/// What a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// `POST url` with `{"route": …, "episodes": [...]}`.
    #[default]
    Webhook,
    /// `POST url/api/v2/alerts`: firing at an episode's start (sent again every
    /// `resend-interval` while it lasts), resolved at its end.
    Alertmanager,
}

/// One `[[alerts.routes]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteConfig {
    /// Names the route in metrics, logs, the dead-letter log and its cursor file.
    pub name: String,
    /// `webhook` or `alertmanager`.
    pub kind: RouteKind,
    /// The webhook's URL, or Alertmanager's base URL (`http://127.0.0.1:9093`).
    pub url: String,
    /// Only episodes of these severities (`info`, `warning`, `critical`); empty = all.
    pub severities: Vec<String>,
    /// Only episodes of these rules; empty = all.
    pub rules: Vec<String>,
    /// Only episodes of these source ids (`*` matches any run of characters); empty = all.
    pub sources: Vec<String>,
    /// Headers sent with each call (`Authorization = "Bearer …"`).
    pub headers: BTreeMap<String, String>,
    /// How long one call may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retry a failing call (backoff from 0.5 s to 30 s) for this long, then write its
    /// episodes to the dead-letter log and go on.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Calls per minute at most; episodes that wait go together in the next call.
    pub max_per_minute: u32,
    /// Episodes per call at most.
    pub max_batch: usize,
    /// Alertmanager: how often firing alerts are sent again (Alertmanager resolves an
    /// alert that is not, once its `endsAt` passes: 4 intervals).
    #[serde(with = "humantime_serde")]
    pub resend_interval: Duration,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: String::new(),
            kind: RouteKind::Webhook,
            url: String::new(),
            severities: Vec::new(),
            rules: Vec::new(),
            sources: Vec::new(),
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(5),
            give_up_after: Duration::from_secs(600),
            max_per_minute: 60,
            max_batch: 100,
            resend_interval: Duration::from_secs(60),
        }
    }
}

const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

impl AlertsConfig {
    /// Checks every route; the error names the key and the fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("alerts.routes[{i}]");
            if r.name.is_empty()
                || r.name.len() > 64
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                bail!(
                    "config key {key}.name: is {:?}; give each route a name of 1 to 64 letters, digits, '-', '_' or '.'",
                    r.name
                );
            }
            if !names.insert(r.name.as_str()) {
                bail!(
                    "config key {key}.name: {:?} names two routes; each needs its own",
                    r.name
                );
            }
            match reqwest::Url::parse(&r.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => bail!(
                    "config key {key}.url: is {:?}; use an http:// or https:// URL{}",
                    r.url,
                    if r.kind == RouteKind::Alertmanager {
                        " (Alertmanager's base, e.g. http://127.0.0.1:9093)"
                    } else {
                        ""
                    }
                ),
            }
            if let Some(s) = r
                .severities
                .iter()
                .find(|s| !SEVERITIES.contains(&s.as_str()))
            {
                bail!(
                    "config key {key}.severities: {s:?} is not a severity; use info, warning or critical"
                );
            }
            if r.sources.iter().any(String::is_empty) || r.rules.iter().any(String::is_empty) {
                bail!(
                    "config key {key}: an empty name in sources or rules matches nothing; remove it"
                );
            }
            for (name, value) in &r.headers {
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(value).is_err()
                {
                    bail!(
                        "config key {key}.headers.{name}: not a valid HTTP header name and value"
                    );
                }
            }
            if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&r.timeout) {
                bail!(
                    "config key {key}.timeout: is {:?}; use 100ms to 5m",
                    r.timeout
                );
            }
            if r.give_up_after < r.timeout {
                bail!(
                    "config key {key}.give-up-after: is {:?}, shorter than one call's timeout ({:?})",
                    r.give_up_after,
                    r.timeout
                );
            }
            if !(1..=60_000).contains(&r.max_per_minute) {
                bail!(
                    "config key {key}.max-per-minute: is {}; use 1 to 60000",
                    r.max_per_minute
                );
            }
            if !(1..=1000).contains(&r.max_batch) {
                bail!(
                    "config key {key}.max-batch: is {}; use 1 to 1000",
                    r.max_batch
                );
            }
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&r.resend_interval) {
                bail!(
                    "config key {key}.resend-interval: is {:?}; use 1s to 1h",
                    r.resend_interval
                );
            }
        }
        Ok(())
    }
}

/// One end of an episode as the outbox keeps it and webhooks receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// The episode's id: the same on its start and its end, and after a replay.
    pub id: String,
    /// `start` or `end`.
    pub phase: String,
    /// The rule's name.
    pub rule: String,
    /// The rule's kind.
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The measurement the rule watches.
    pub measurement: String,
    /// The source the condition was seen on.
    pub source_id: String,
    /// The field the rule watches.
    pub field: String,
    /// Event time the condition started, ns since the epoch.
    pub time: i64,
    /// Event time it cleared (`end` only).
    pub end_time: Option<i64>,
    /// The value seen (null if not finite).
    pub observed: Option<f64>,
    /// The most extreme value while it lasted.
    pub peak: Option<f64>,
    /// The limit or expected value.
    pub expected: Option<f64>,
    /// The rule's sentence.
    pub message: String,
}

impl From<&AnomalyRecord> for Episode {
    fn from(a: &AnomalyRecord) -> Self {
        let finite = |v: f64| v.is_finite().then_some(v);
        Episode {
            id: a.id.clone(),
            phase: a.phase.as_str().to_owned(),
            rule: a.rule.clone(),
            kind: a.kind.clone(),
            severity: a.severity.clone(),
            measurement: a.measurement.clone(),
            source_id: a.source_id.clone(),
            field: a.field.clone(),
            time: a.time,
            end_time: a.end_time,
            observed: finite(a.observed),
            peak: finite(a.peak),
            expected: finite(a.expected),
            message: a.message.clone(),
        }
    }
}

impl Episode {
    fn is_end(&self) -> bool {
        self.phase == Phase::End.as_str()
    }
}

/// Whether `pattern` (with `*` for any run of characters) matches all of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl RouteConfig {
    /// Whether the route takes `e`.
    fn wants(&self, e: &Episode) -> bool {
        (self.severities.is_empty() || self.severities.contains(&e.severity))
            && (self.rules.is_empty() || self.rules.contains(&e.rule))
            && (self.sources.is_empty() || self.sources.iter().any(|p| glob(p, &e.source_id)))
    }
}

const SEGMENT_BYTES: u64 = 4 << 20;
/// What a failing disk may hold back in memory before episodes are counted as lost.
const MAX_PENDING: usize = 16 << 20;

fn segment_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("outbox-{generation:012}.jsonl"))
}

/// The outbox's segments, oldest first.
fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            let name = name.to_str()?;
            name.strip_prefix("outbox-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// A place in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Cursor {
    segment: u64,
    offset: u64,
}

#[derive(Debug)]
struct Writer {
    segment: u64,
    file: File,
    len: u64,
    /// Lines a failed write left to write next time.
    pending: Vec<u8>,
}

/// The episodes waiting for their routes, on local disk.
#[derive(Debug)]
struct Outbox {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// Bumped after each append: routes wait on it.
    appended: watch::Sender<u64>,
    /// The segment each route reads; segments before the smallest are deleted.
    reading: Vec<AtomicU64>,
    /// Held while the process runs: one process per directory.
    _lock: File,
}

impl Outbox {
    fn open(dir: &Path, routes: usize) -> anyhow::Result<Outbox> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating the alerts directory {}", dir.display()))?;
        let lock = File::create(dir.join("lock"))
            .with_context(|| format!("creating {}", dir.join("lock").display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "the alerts directory {} is in use by another pitwall process; give each process its own alerts.dir",
                dir.display()
            );
        }
        let mut segment = segments(dir)?.last().copied().unwrap_or(0);
        let path = segment_path(dir, segment);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // A write cut short by a crash leaves a line without its end: start a new
        // segment rather than append to it.
        if len > 0 {
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::End(-1))?;
            let mut last = [0u8];
            f.read_exact(&mut last)?;
            if last[0] != b'\n' {
                tracing::warn!(segment = %path.display(), "the alert outbox ends in a cut line (a crash while writing); starting a new segment");
                segment += 1;
            }
        }
        let (file, len) = open_segment(dir, segment)?;
        let reading = (0..routes).map(|_| AtomicU64::new(segment)).collect();
        Ok(Outbox {
            dir: dir.to_owned(),
            writer: Mutex::new(Writer {
                segment,
                file,
                len,
                pending: Vec::new(),
            }),
            appended: watch::Sender::new(0),
            reading,
            _lock: lock,
        })
    }

    /// Where the next episode will be written.
    fn end(&self) -> Cursor {
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        Cursor {
            segment: w.segment,
            offset: w.len,
        }
    }

    /// Appends `episodes` and syncs them to disk. A failing disk keeps them in memory
    /// and tries again at the next append (up to [`MAX_PENDING`], past which they are
    /// logged as lost).
    fn append(&self, episodes: &[AnomalyRecord]) {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        for a in episodes {
            let start = w.pending.len();
            if serde_json::to_writer(&mut w.pending, &Episode::from(a)).is_err() {
                w.pending.truncate(start);
                continue;
            }
            w.pending.push(b'\n');
        }
        let w = &mut *w;
        let written = w
            .file
            .write_all(&w.pending)
            .and_then(|()| w.file.sync_data());
        match written {
            Ok(()) => {
                w.len += w.pending.len() as u64;
                w.pending.clear();
            }
            Err(e) => {
                // A partial write leaves a cut line: continue in a new segment.
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the alert outbox; keeping the episodes in memory and trying again");
                ::metrics::counter!("pitwall_alert_outbox_errors_total").increment(1);
                if w.pending.len() > MAX_PENDING {
                    let lost = w.pending.iter().filter(|&&b| b == b'\n').count();
                    tracing::error!(
                        episodes = lost,
                        "the alert outbox could not be written for too long; these episodes are not sent (they are in anomalies.events)"
                    );
                    ::metrics::counter!("pitwall_alerts_lost_total").increment(lost as u64);
                    w.pending.clear();
                }
                w.len = SEGMENT_BYTES;
            }
        }
        if w.len >= SEGMENT_BYTES {
            match open_segment(&self.dir, w.segment + 1) {
                Ok((file, len)) => {
                    w.segment += 1;
                    w.file = file;
                    w.len = len;
                }
                Err(e) => tracing::error!(error = %e, "cannot start a new alert outbox segment"),
            }
        }
        self.appended.send_modify(|n| *n += 1);
    }

    /// Up to `max` lines from `from`: each episode (or, for a line that does not read,
    /// its text) with the cursor after it. Moves to the next segment at the end of one
    /// the writer has left.
    fn read(
        &self,
        mut from: Cursor,
        max: usize,
    ) -> std::io::Result<Vec<(Result<Episode, String>, Cursor)>> {
        loop {
            // Checked before reading: once a later segment exists, this one is complete.
            let later = segments(&self.dir)?.into_iter().find(|&s| s > from.segment);
            let mut out = Vec::new();
            let mut at = from;
            match File::open(segment_path(&self.dir, from.segment)) {
                Ok(mut f) => {
                    // Only the lines asked for are read, not the rest of the segment.
                    f.seek(SeekFrom::Start(from.offset))?;
                    let mut lines = std::io::BufReader::new(f.take(2 * SEGMENT_BYTES));
                    let mut line = Vec::new();
                    while out.len() < max {
                        line.clear();
                        std::io::BufRead::read_until(&mut lines, b'\n', &mut line)?;
                        if !line.ends_with(b"\n") {
                            break;
                        }
                        at.offset += line.len() as u64;
                        let episode = serde_json::from_slice::<Episode>(&line)
                            .map_err(|_| String::from_utf8_lossy(&line).trim_end().to_owned());
                        out.push((episode, at));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            match later {
                Some(next) if out.is_empty() => {
                    from = Cursor {
                        segment: next,
                        offset: 0,
                    };
                }
                _ => return Ok(out),
            }
        }
    }

    /// Route `route` now reads `segment`: deletes the segments every route has left.
    fn release(&self, route: usize, segment: u64) {
        self.reading[route].store(segment, Ordering::Relaxed);
        let oldest = self
            .reading
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(segment);
        if let Ok(all) = segments(&self.dir) {
            for s in all.into_iter().take_while(|&s| s < oldest) {
                let _ = fs::remove_file(segment_path(&self.dir, s));
            }
        }
    }
}

fn open_segment(dir: &Path, segment: u64) -> std::io::Result<(File, u64)> {
    let path = segment_path(dir, segment);
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// What the processor holds: appends episodes to the outbox, or nothing when no route
/// is configured.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    outbox: Option<Arc<Outbox>>,
}

impl Alerts {
    /// Puts `anomalies` in the outbox (synced to disk) for the routes.
    pub fn record(&self, anomalies: &[AnomalyRecord]) {
        if let Some(outbox) = &self.outbox
            && !anomalies.is_empty()
        {
            outbox.append(anomalies);
        }
    }
}

/// How long alert routes may go on sending once the pipeline has stopped.
pub(crate) const ALERTS_GRACE: Duration = Duration::from_secs(5);

/// The routes' tasks.
#[derive(Debug, Default)]
pub struct Routes {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drain: CancellationToken,
    stop: CancellationToken,
}

impl Routes {
    /// Lets each route send what the outbox holds, for up to `grace`, then stops them;
    /// what is left is sent at the next start.
    pub async fn finish(self, grace: Duration) {
        self.drain.cancel();
        let stop = self.stop.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            stop.cancel();
        });
        for t in self.tasks {
            let _ = t.await;
        }
        timer.abort();
    }
}

/// Opens the outbox and starts a task per route; nothing when no route is configured.
/// The outbox and route cursors are in `config.dir`, or `data_dir/alerts` when it is
/// empty.
pub fn start(config: &AlertsConfig, data_dir: &Path) -> anyhow::Result<(Alerts, Routes)> {
    let routes = &config.routes;
    if routes.is_empty() {
        return Ok((Alerts::default(), Routes::default()));
    }
    let dir = if config.dir.is_empty() {
        data_dir.join("alerts")
    } else {
        PathBuf::from(&config.dir)
    };
    let outbox = Arc::new(Outbox::open(&dir, routes.len())?);
    let (drain, stop) = (CancellationToken::new(), CancellationToken::new());
    let mut tasks = Vec::new();
    for (index, route) in routes.iter().enumerate() {
        let state = RouteState::load(&dir, route, &outbox)?;
        outbox.release(index, state.cursor.segment);
        let client = reqwest::Client::builder()
            .timeout(route.timeout)
            .connect_timeout(route.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the alerts HTTP client")?;
        let task = RouteTask {
            index,
            config: route.clone(),
            client,
            outbox: Arc::clone(&outbox),
            dir: dir.clone(),
            state,
            drain: drain.clone(),
            stop: stop.clone(),
            limit: Bucket::new(route.max_per_minute, Instant::now()),
        };
        tasks.push(tokio::spawn(task.run()));
        tracing::info!(route = %route.name, kind = ?route.kind, url = %route.url, "alert route ready");
    }
    Ok((
        Alerts {
            outbox: Some(outbox),
        },
        Routes { tasks, drain, stop },
    ))
}

/// A route's progress, kept in `route-NAME.json`: its cursor and (Alertmanager) the
/// episodes that are firing.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RouteState {
    cursor: Cursor,
    #[serde(default)]
    firing: BTreeMap<String, Episode>,
}

/// Alertmanager episodes kept firing at most; past it the oldest are left to expire.
const MAX_FIRING: usize = 10_000;

impl RouteState {
    fn path(dir: &Path, route: &str) -> PathBuf {
        dir.join(format!("route-{route}.json"))
    }

    /// The saved state, or (a new route) the outbox's end, saved at once so episodes
    /// written from now on are this route's after a crash too.
    fn load(dir: &Path, route: &RouteConfig, outbox: &Outbox) -> anyhow::Result<RouteState> {
        let path = Self::path(dir, &route.name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "reading {}; delete it to start the route at the outbox's end",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = RouteState {
                    cursor: outbox.end(),
                    firing: BTreeMap::new(),
                };
                state.save(dir, &route.name)?;
                Ok(state)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, dir: &Path, route: &str) -> std::io::Result<()> {
        let path = Self::path(dir, route);
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default())?;
        fs::rename(&tmp, &path)
    }
}

/// How a delivery ended.
enum Outcome {
    Delivered,
    /// Given up: the reason, for the dead-letter log.
    Failed(String, u32),
    /// Stopping: not sent, left in the outbox.
    Stopped,
}

struct RouteTask {
    index: usize,
    config: RouteConfig,
    client: reqwest::Client,
    outbox: Arc<Outbox>,
    dir: PathBuf,
    state: RouteState,
    drain: CancellationToken,
    stop: CancellationToken,
    limit: Bucket,
}

/// The calls a route may make: up to 10 s worth of `max-per-minute` (at least 1, at
/// most 10) at once, refilled at that rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    per_second: f64,
    burst: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(per_minute: u32, now: Instant) -> Bucket {
        let burst = (f64::from(per_minute) / 6.0).clamp(1.0, 10.0);
        Bucket {
            tokens: burst,
            per_second: f64::from(per_minute) / 60.0,
            burst,
            refilled: now,
        }
    }

    /// Takes a call if one is allowed at `now`; else how long until one is.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

impl RouteTask {
    async fn run(mut self) {
        let mut appended = self.outbox.appended.subscribe();
        let mut resend_at = Instant::now();
        let mut read_errors = 0u32;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            if self.config.kind == RouteKind::Alertmanager && Instant::now() >= resend_at {
                self.resend().await;
                resend_at = Instant::now() + self.config.resend_interval;
            }
            let batch = match self.outbox.read(self.state.cursor, self.config.max_batch) {
                Ok(b) => {
                    read_errors = 0;
                    b
                }
                Err(e) => {
                    read_errors += 1;
                    if read_errors == 1 || read_errors.is_power_of_two() {
                        tracing::error!(route = %self.config.name, error = %e, "cannot read the alert outbox; retrying");
                    }
                    Vec::new()
                }
            };
            let Some(&(_, end)) = batch.last() else {
                if self.drain.is_cancelled() {
                    return;
                }
                let wait = resend_at
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1));
                tokio::select! {
                    _ = appended.changed() => {}
                    () = tokio::time::sleep(wait) => {}
                    () = self.drain.cancelled() => {}
                    () = self.stop.cancelled() => return,
                }
                continue;
            };
            let mut episodes = Vec::new();
            for (e, _) in batch {
                match e {
                    Ok(e) if self.config.wants(&e) => episodes.push(e),
                    Ok(_) => {}
                    Err(line) => self.dead_letter(
                        &[],
                        &format!("the outbox line does not read as an episode: {line}"),
                        0,
                    ),
                }
            }
            if !episodes.is_empty() {
                // Over the rate: wait, then send what gathered meanwhile in one call.
                if let Err(wait) = self.limit.take(Instant::now()) {
                    ::metrics::counter!("pitwall_alerts_throttled_total", "route" => self.config.name.clone()).increment(1);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = self.stop.cancelled() => return,
                    }
                }
                match self.deliver(&episodes).await {
                    Outcome::Delivered => {
                        ::metrics::counter!("pitwall_alerts_sent_total", "route" => self.config.name.clone())
                            .increment(episodes.len() as u64);
                    }
                    Outcome::Failed(reason, attempts) => {
                        self.dead_letter(&episodes, &reason, attempts)
                    }
                    Outcome::Stopped => return,
                }
                if self.config.kind == RouteKind::Alertmanager {
                    for e in episodes {
                        if e.is_end() {
                            self.state.firing.remove(&e.id);
                        } else if self.state.firing.len() < MAX_FIRING {
                            self.state.firing.insert(e.id.clone(), e);
                        }
                    }
                }
            }
            self.state.cursor = end;
            if let Err(e) = self.state.save(&self.dir, &self.config.name) {
                tracing::warn!(route = %self.config.name, error = %e, "cannot save the route's place in the outbox; episodes may be sent again after a restart");
            }
            self.outbox.release(self.index, end.segment);
        }
    }

    /// Sends `episodes` in one call, retrying with backoff until `give-up-after`.
    async fn deliver(&self, episodes: &[Episode]) -> Outcome {
        let started = Instant::now();
        let mut delay = Duration::from_millis(500);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match self.call(episodes).await {
                Ok(()) => return Outcome::Delivered,
                Err((error, permanent)) => {
                    ::metrics::counter!("pitwall_alert_calls_failed_total", "route" => self.config.name.clone()).increment(1);
                    if permanent {
                        return Outcome::Failed(error, attempts);
                    }
                    error
                }
            };
            if attempts == 1 || attempts.is_power_of_two() {
                tracing::warn!(route = %self.config.name, attempts, error = %error, "alert not delivered; retrying");
            }
            if started.elapsed() + delay > self.config.give_up_after {
                return Outcome::Failed(error, attempts);
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => return Outcome::Stopped,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// One call; the error says what went wrong and whether trying again could help.
    async fn call(&self, episodes: &[Episode]) -> Result<(), (String, bool)> {
        let now = chrono::Utc::now();
        let (url, body) = match self.config.kind {
            RouteKind::Webhook => (
                self.config.url.clone(),
                serde_json::json!({
                    "route": self.config.name,
                    "episodes": episodes.iter().map(webhook_episode).collect::<Vec<_>>(),
                }),
            ),
            RouteKind::Alertmanager => (
                format!("{}/api/v2/alerts", self.config.url.trim_end_matches('/')),
                serde_json::Value::Array(
                    episodes
                        .iter()
                        .map(|e| alertmanager_alert(e, now, self.config.resend_interval * 4))
                        .collect(),
                ),
            ),
        };
        let mut request = self.client.post(&url).json(&body);
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        let response = tokio::select! {
            r = request.send() => r,
            () = self.stop.cancelled() => return Err(("stopping".into(), false)),
        };
        match response {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let text: String = text.chars().take(300).collect();
                // A 4xx (but for timeouts and rate limits) says the request is wrong:
                // the same request will not do better.
                let permanent = status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
                Err((
                    format!("{url} answered {status}: {}", text.trim()),
                    permanent,
                ))
            }
            Err(e) if e.is_timeout() => Err((
                format!("{url} did not answer within {:?}", self.config.timeout),
                false,
            )),
            Err(e) if e.is_connect() => Err((format!("cannot connect to {url}: {e}"), false)),
            Err(e) => Err((format!("calling {url}: {e}"), false)),
        }
    }

    /// Alertmanager resolves an alert whose `endsAt` passes: sends every firing one again.
    async fn resend(&self) {
        let firing: Vec<Episode> = self.state.firing.values().cloned().collect();
        for chunk in firing.chunks(self.config.max_batch) {
            if let Err((e, _)) = self.call(chunk).await {
                tracing::warn!(route = %self.config.name, error = %e, "cannot send firing alerts again; trying at the next interval");
                return;
            }
        }
    }

    fn dead_letter(&self, episodes: &[Episode], reason: &str, attempts: u32) {
        tracing::error!(route = %self.config.name, url = %self.config.url, episodes = episodes.len(), attempts, reason, "alert given up; written to the dead-letter log");
        ::metrics::counter!("pitwall_alerts_dead_lettered_total", "route" => self.config.name.clone())
            .increment(episodes.len().max(1) as u64);
        let line = serde_json::json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "route": self.config.name,
            "url": self.config.url,
            "attempts": attempts,
            "reason": reason,
            "episodes": episodes,
        });
        let path = self.dir.join("dead-letter.jsonl");
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                f.write_all(&bytes)?;
                f.sync_data()
            });
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "cannot write the dead-letter log");
        }
    }
}

/// An episode as a webhook receives it: every field, with its times also in RFC 3339.
fn webhook_episode(e: &Episode) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("started_at".into(), rfc3339(e.time).into());
        o.insert(
            "ended_at".into(),
            e.end_time
                .map(rfc3339)
                .map_or(serde_json::Value::Null, Into::into),
        );
    }
    v
}

/// An episode in Alertmanager's `postableAlert` shape: the episode's id is a label, so
/// each episode is its own alert and its end resolves exactly it. Times are clamped to
/// now (a device clock ahead of ours must not keep an alert firing).
fn alertmanager_alert(
    e: &Episode,
    now: chrono::DateTime<chrono::Utc>,
    firing_for: Duration,
) -> serde_json::Value {
    let now_ns = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
    let starts = e.time.min(now_ns);
    let ends = if e.is_end() {
        e.end_time.unwrap_or(now_ns).clamp(starts, now_ns)
    } else {
        now_ns.saturating_add(firing_for.as_nanos().min(i64::MAX as u128) as i64)
    };
    let value = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    serde_json::json!({
        "labels": {
            "alertname": e.rule,
            "severity": e.severity,
            "source_id": e.source_id,
            "measurement": e.measurement,
            "field": e.field,
            "rule_kind": e.kind,
            "episode": e.id,
            "service": "pitwall",
        },
        "annotations": {
            "summary": e.message,
            "observed": value(e.observed),
            "peak": value(e.peak),
            "expected": value(e.expected),
        },
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, phase: Phase, severity: &str, source: &str) -> AnomalyRecord {
        AnomalyRecord {
            id: id.into(),
            rule: "engine_overheat".into(),
            kind: "threshold".into(),
            severity: severity.into(),
            measurement: "car".into(),
            source_id: source.into(),
            field: "engine_temp_c".into(),
            phase,
            time: 1_767_225_600_000_000_000,
            end_time: (phase == Phase::End).then_some(1_767_225_660_000_000_000),
            observed: 121.5,
            peak: f64::NAN,
            expected: 120.0,
            message: "hot".into(),
        }
    }

    #[test]
    fn globs_match_whole_ids() {
        assert!(glob("car-*", "car-44"));
        assert!(!glob("car-*", "xcar-44"));
        assert!(glob("*-44", "car-44"));
        assert!(glob("c*r-*4", "car-44"));
        assert!(!glob("c*r-*4", "car-45"));
        assert!(glob("car-44", "car-44"));
        assert!(!glob("car-4", "car-44"));
        assert!(glob("*", ""));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn routes_filter_by_severity_rule_and_source() {
        let route = RouteConfig {
            severities: vec!["critical".into()],
            sources: vec!["car-*".into()],
            ..RouteConfig::default()
        };
        let e = |sev: &str, src: &str| Episode::from(&record("a", Phase::Start, sev, src));
        assert!(route.wants(&e("critical", "car-1")));
        assert!(!route.wants(&e("warning", "car-1")));
        assert!(!route.wants(&e("critical", "sensor-1")));
        let by_rule = RouteConfig {
            rules: vec!["oil_overheat".into()],
            ..RouteConfig::default()
        };
        assert!(!by_rule.wants(&e("critical", "car-1")));
    }

    #[test]
    fn the_outbox_reads_back_across_segments_and_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 1).unwrap();
            outbox.append(&[record("a", Phase::Start, "critical", "car-1")]);
            let got = outbox.read(Cursor::default(), 10).unwrap();
            assert_eq!(got.len(), 1);
            let e = got[0].0.as_ref().unwrap();
            assert_eq!(
                (e.id.as_str(), e.phase.as_str(), e.peak),
                ("a", "start", None)
            );
            assert_eq!(
                got[0].1.offset,
                fs::metadata(segment_path(dir.path(), 0)).unwrap().len()
            );
        }
        // A crash cut the last line: the next run starts segment 1 and a reader moves
        // on to it past the cut line, which it never returns.
        let mut f = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), 0))
            .unwrap();
        f.write_all(b"{\"id\":\"cu").unwrap();
        drop(f);
        let outbox = Outbox::open(dir.path(), 1).unwrap();
        assert_eq!(
            outbox.end(),
            Cursor {
                segment: 1,
                offset: 0
            }
        );
        outbox.append(&[
            record("a", Phase::End, "critical", "car-1"),
            record("b", Phase::Start, "critical", "car-2"),
        ]);
        let first = outbox.read(Cursor::default(), 10).unwrap();
        assert_eq!(first.len(), 1, "segment 0 still has one whole line");
        let rest = outbox.read(first[0].1, 10).unwrap();
        let ids: Vec<_> = rest
            .iter()
            .map(|(e, _)| {
                let e = e.as_ref().unwrap();
                format!("{}:{}", e.id, e.phase)
            })
            .collect();
        assert_eq!(ids, ["a:end", "b:start"]);
        assert_eq!(rest[1].1.segment, 1);
        // Read only two at a time.
        assert_eq!(outbox.read(first[0].1, 1).unwrap().len(), 1);
        // Every route past segment 0: it is deleted.
        outbox.release(0, 1);
        assert!(!segment_path(dir.path(), 0).exists());
        assert!(segment_path(dir.path(), 1).exists());
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // 60 a minute: 10 at once, then one a second.
        let mut b = Bucket::new(60, t0);
        assert!((0..10).all(|_| b.take(t0).is_ok()));
        let wait = b.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9, "{wait:?}");
        assert!(b.take(at(0.5)).is_err());
        assert!(b.take(at(1.0)).is_ok());
        assert!(b.take(at(1.0)).is_err());
        // 2 a minute: one at once, the next 30 s later.
        let mut b = Bucket::new(2, t0);
        assert!(b.take(t0).is_ok());
        assert!((b.take(at(10.0)).unwrap_err().as_secs_f64() - 20.0).abs() < 1e-6);
        assert!(b.take(at(30.0)).is_ok());
        // A long quiet spell refills no more than the burst.
        let mut b = Bucket::new(600, t0);
        assert_eq!((0..20).filter(|_| b.take(at(3600.0)).is_ok()).count(), 10);
    }

    #[test]
    fn one_process_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Outbox::open(dir.path(), 1).unwrap();
        let second = Outbox::open(dir.path(), 1).unwrap_err().to_string();
        assert!(
            second.contains("in use by another pitwall process"),
            "{second}"
        );
    }

    #[test]
    fn bad_routes_fail_with_their_key() {
        let check = |route: RouteConfig| {
            AlertsConfig {
                dir: String::new(),
                routes: vec![route],
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        let ok = RouteConfig {
            name: "pager".into(),
            url: "http://127.0.0.1:9093".into(),
            ..RouteConfig::default()
        };
        assert!(check(ok.clone()).is_ok());
        let e = check(RouteConfig {
            url: "ftp://x".into(),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.contains("alerts.routes[0].url"), "{e}");
        let e = check(RouteConfig {
            severities: vec!["fatal".into()],
            ..ok.clone()
        })
        .unwrap_err();
        assert!(
            e.contains("alerts.routes[0].severities") && e.contains("fatal"),
            "{e}"
        );
        let e = check(RouteConfig {
            name: "a b".into(),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.contains("alerts.routes[0].name"), "{e}");
        let e = check(RouteConfig {
            max_per_minute: 0,
            ..ok
        })
        .unwrap_err();
        assert!(e.contains("max-per-minute"), "{e}");
    }

    #[test]
    fn alertmanager_times_are_clamped_to_now() {
        let now = chrono::DateTime::from_timestamp_nanos(1_767_225_630_000_000_000);
        let mut start = Episode::from(&record("a", Phase::Start, "critical", "car-1"));
        let firing = alertmanager_alert(&start, now, Duration::from_secs(240));
        assert_eq!(firing["startsAt"], "2026-01-01T00:00:00.000Z");
        assert_eq!(firing["endsAt"], "2026-01-01T00:04:30.000Z");
        assert_eq!(firing["labels"]["episode"], "a");
        // Ended after now by the device's clock: resolved now.
        let end = Episode::from(&record("a", Phase::End, "critical", "car-1"));
        let resolved = alertmanager_alert(&end, now, Duration::from_secs(240));
        assert_eq!(resolved["endsAt"], "2026-01-01T00:00:30.000Z");
        // Started ahead of now: starts now.
        start.time = 1_767_225_700_000_000_000;
        assert_eq!(
            alertmanager_alert(&start, now, Duration::from_secs(240))["startsAt"],
            "2026-01-01T00:00:30.000Z"
        );
    }
}
