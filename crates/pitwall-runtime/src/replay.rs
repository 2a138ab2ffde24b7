//! `pitwall replay PATH`: files to the raw topic. FastF1 car data CSV, JSON lines and
//! line protocol; a file or a directory, which can be followed as new files arrive (the
//! factory-log case). Paced by event time (real time, N times real time, or as fast as
//! possible), with a progress bar and a summary. A line that is not a valid point goes
//! to the DLQ topic with its file, line and reason, and is counted; nothing else stops.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use pitwall_bus::Topics;
use pitwall_bus::kafka::ensure_topics;
use pitwall_core::{Point, Precision, fastf1, json, line_protocol};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use pitwall_bus::Publish;
use pitwall_bus::kafka::KafkaTopic;

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// By extension: .csv FastF1, .jsonl/.json/.ndjson JSON lines, .lp/.line/.influx/.txt line protocol.
    Auto,
    /// FastF1 car data CSV.
    Fastf1,
    /// One JSON point per line (pitwall's payload, or Telegraf's JSON).
    Jsonl,
    /// InfluxDB line protocol.
    Lp,
}

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// A file or a directory.
    pub path: PathBuf,
    /// Input format.
    pub format: InputFormat,
    /// Driver code for FastF1 files (default: from the file name).
    pub driver: Option<String>,
    /// Event-time seconds per wall second; 0 sends as fast as possible.
    pub speed: f64,
    /// Keep watching a directory for new files.
    pub follow: bool,
    /// Timestamp unit of line protocol and Telegraf JSON input.
    pub precision: Precision,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    /// Files read.
    pub files: usize,
    /// Events sent to the raw topic.
    pub sent: u64,
    /// Lines rejected, by reason (with the first place it happened).
    pub rejected: BTreeMap<String, (u64, String)>,
    /// Bytes read.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Event time of the earliest and the latest event sent, ns since the epoch.
    pub span: Option<(i64, i64)>,
}

impl ReplaySummary {
    /// Lines rejected in all.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().map(|(n, _)| n).sum()
    }
}

fn format_of(path: &Path, format: InputFormat) -> anyhow::Result<InputFormat> {
    if format != InputFormat::Auto {
        return Ok(format);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(match ext.as_str() {
        "csv" => InputFormat::Fastf1,
        "jsonl" | "json" | "ndjson" => InputFormat::Jsonl,
        "lp" | "line" | "influx" | "txt" | "log" => InputFormat::Lp,
        _ => bail!(
            "{}: cannot tell the format from the extension {ext:?}; pass --format fastf1, jsonl or lp",
            path.display()
        ),
    })
}

/// One parsed line: the point and the payload to send (as received for JSON lines).
type Parsed = Result<(Point, Option<Vec<u8>>), (u64, String)>;

/// Parses a whole file into points or (line, reason) errors.
fn parse_file(path: &Path, text: &str, opts: &ReplayOptions) -> anyhow::Result<Vec<Parsed>> {
    let now = pitwall_core::now_ns();
    Ok(match format_of(path, opts.format)? {
        InputFormat::Fastf1 => {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let driver = match (opts.driver.clone(), fastf1::driver_from_file_name(stem)) {
                (Some(d), _) | (None, Some(d)) => d,
                (None, None) => bail!(
                    "{}: no driver code (like VER) in the file name; pass --driver",
                    path.display()
                ),
            };
            fastf1::parse(text, &driver)
                .into_iter()
                .map(|r| {
                    r.map(|p| (p, None)).map_err(|e| match e {
                        pitwall_core::Error::Csv { line, .. } => (line, e.to_string()),
                        other => (0, other.to_string()),
                    })
                })
                .collect()
        }
        InputFormat::Jsonl => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                json::decode(l.as_bytes(), now, opts.precision)
                    .map(|p| (p, Some(l.as_bytes().to_vec())))
                    .map_err(|e| {
                        let line = i as u64 + 1;
                        // A JSON error's position is within the line: report the file's line.
                        let reason = match e {
                            pitwall_core::Error::Json { location, message } => {
                                match location.strip_prefix("line 1, ") {
                                    Some(column) => format!("line {line}, {column}: {message}"),
                                    None => format!("line {line}: {message} (at {location})"),
                                }
                            }
                            other => format!("line {line}: {other}"),
                        };
                        (line, reason)
                    })
            })
            .collect(),
        InputFormat::Lp => line_protocol::parse(text, opts.precision, now)
            .map(|r| {
                r.map(|p| (p, None)).map_err(|e| match e {
                    pitwall_core::Error::LineProtocol { line, .. } => (line as u64, e.to_string()),
                    other => (0, other.to_string()),
                })
            })
            .collect(),
        InputFormat::Auto => unreachable!("resolved above"),
    })
}

/// Replays `opts.path` to Kafka's raw topic (bad lines to the DLQ topic) until done
/// (or, when following, until `cancel`).
pub async fn replay(
    config: &Config,
    opts: &ReplayOptions,
    cancel: CancellationToken,
) -> anyhow::Result<ReplaySummary> {
    let topics = Topics::with_prefix(&config.bus.topic_prefix);
    ensure_topics(&config.kafka, &[&topics.raw, &topics.dlq])
        .await
        .context("making sure the raw and DLQ topics exist")?;
    let mut raw = KafkaTopic::new(&config.kafka, &topics.raw)?;
    let mut dlq = KafkaTopic::new(&config.kafka, &topics.dlq)?;
    let summary = replay_into(config, opts, &mut raw, &mut dlq, &cancel, |_| {}).await?;
    raw.finish().await?;
    dlq.finish().await?;
    Ok(summary)
}

/// Bad lines of an embedded replay, one JSON object a line (`file`, `line`, `reason`,
/// `payload`): the in-process bus keeps nothing, so they are kept in a file instead.
#[derive(Debug)]
pub struct RejectFile {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl RejectFile {
    /// Writes to `path` (created at the first bad line).
    pub fn new(path: PathBuf) -> Self {
        RejectFile { path, file: None }
    }

    /// Where the bad lines are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `e` with the file's name in its message.
    fn error(&self, doing: &str, e: &std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), format!("{doing} {}: {e}", self.path.display()))
    }
}

impl Publish for RejectFile {
    type Error = std::io::Error;

    async fn send(
        &mut self,
        _key: Option<Bytes>,
        payload: Bytes,
        _time: i64,
    ) -> std::io::Result<()> {
        use std::io::Write;
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.error("opening", &e))?;
            self.file = Some(std::io::BufWriter::new(f));
        }
        if let Some(f) = &mut self.file {
            let written = f.write_all(&payload).and_then(|()| f.write_all(b"\n"));
            written.map_err(|e| self.error("writing", &e))?;
        }
        Ok(())
    }

    /// Flushes what is written.
    async fn finish(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(f) = &mut self.file {
            let flushed = f.flush();
            flushed.map_err(|e| self.error("writing", &e))?;
        }
        Ok(())
    }
}

/// Replays `opts.path` into `raw`, bad lines (as JSON with their file, line and reason)
/// into `dlq`, calling `on_sent` with the events sent so far now and then.
pub async fn replay_into<R: Publish, D: Publish>(
    config: &Config,
    opts: &ReplayOptions,
    raw: &mut R,
    dlq: &mut D,
    cancel: &CancellationToken,
    on_sent: impl Fn(u64),
) -> anyhow::Result<ReplaySummary> {
    let started = Instant::now();
    let is_dir = opts.path.is_dir();
    if !is_dir && !opts.path.is_file() {
        bail!("{} is neither a file nor a directory", opts.path.display());
    }
    let list = |dir: &Path| -> anyhow::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        v.sort();
        Ok(v)
    };
    let initial = if is_dir {
        list(&opts.path)?
    } else {
        vec![opts.path.clone()]
    };
    let total: u64 = initial
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    let bar = if opts.follow {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = ReplaySummary::default();
    let mut done: BTreeSet<PathBuf> = BTreeSet::new();
    let mut pending: VecDeque<PathBuf> = initial.into();
    // Pacing: event time of the first event and the wall clock when it was sent.
    let mut clock: Option<(i64, Instant)> = None;
    let mut sizes: BTreeMap<PathBuf, u64> = BTreeMap::new();
    loop {
        while let Some(path) = pending.pop_front() {
            if cancel.is_cancelled() {
                break;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            summary.bytes += text.len() as u64;
            summary.files += 1;
            // Lines by number, built on the first rejection only.
            let mut lines: Option<Vec<&str>> = None;
            for item in parse_file(&path, &text, opts)? {
                match item {
                    Ok((point, original)) => {
                        if opts.speed > 0.0 {
                            let (t0, w0) = *clock.get_or_insert((point.time, Instant::now()));
                            let due = Duration::from_nanos(
                                ((point.time - t0).max(0) as f64 / opts.speed) as u64,
                            );
                            let elapsed = w0.elapsed();
                            if due > elapsed {
                                tokio::select! {
                                    () = tokio::time::sleep(due - elapsed) => {}
                                    () = cancel.cancelled() => break,
                                }
                            }
                        }
                        let payload = match original {
                            Some(bytes) => bytes,
                            None => json::encode(&point)?,
                        };
                        let key = config.processor.source_key(&point);
                        // The message timestamp is when it was sent: the processor judges a point's
                        // clock against it (processor.max-future).
                        raw.send(key, Bytes::from(payload), pitwall_core::now_ns())
                            .await?;
                        summary.sent += 1;
                        summary.span = Some(match summary.span {
                            Some((first, last)) => (first.min(point.time), last.max(point.time)),
                            None => (point.time, point.time),
                        });
                    }
                    Err((line, reason)) => {
                        let at = format!("{}:{line}", path.display());
                        let kind = without_line(&reason).to_owned();
                        metrics::counter!("pitwall_rejects_total", "stage" => "ingest", "reason" => "parse").increment(1);
                        let entry = summary.rejected.entry(kind).or_insert((0, at.clone()));
                        entry.0 += 1;
                        let lines = lines.get_or_insert_with(|| text.lines().collect());
                        let text_line = lines
                            .get(line.saturating_sub(1) as usize)
                            .copied()
                            .unwrap_or("");
                        let record = serde_json::json!({"file": path.display().to_string(), "line": line, "reason": reason, "payload": text_line});
                        dlq.send(
                            None,
                            Bytes::from(record.to_string()),
                            pitwall_core::now_ns(),
                        )
                        .await?;
                    }
                }
                if summary.sent % 4096 == 0 {
                    on_sent(summary.sent);
                    metrics::counter!("pitwall_events_in_total", "stage" => "ingest")
                        .absolute(summary.sent);
                    let rate = summary.sent as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!("{} events, {rate:.0} events/s", summary.sent));
                }
            }
            bar.inc(text.len() as u64);
            done.insert(path);
        }
        if !opts.follow || cancel.is_cancelled() {
            break;
        }
        // Following: pick up files that are new and have stopped growing.
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = cancel.cancelled() => break,
        }
        for p in list(&opts.path)? {
            if done.contains(&p) || pending.contains(&p) {
                continue;
            }
            let len = p.metadata().map(|m| m.len()).unwrap_or(0);
            if sizes.insert(p.clone(), len) == Some(len) {
                pending.push_back(p);
            }
        }
        bar.set_message(format!(
            "{} events from {} files, following {}",
            summary.sent,
            summary.files,
            opts.path.display()
        ));
    }
    on_sent(summary.sent);
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// A reason without its leading `line N, ` / `line N: `, to group reasons by kind.
fn without_line(reason: &str) -> &str {
    let Some(rest) = reason.strip_prefix("line ") else {
        return reason;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let rest = &rest[digits..];
    rest.strip_prefix(", ")
        .or_else(|| rest.strip_prefix(": "))
        .unwrap_or(reason)
}

/// The end-of-run summary, for people.
pub fn describe(s: &ReplaySummary) -> String {
    let mut out = format!(
        "replayed {} files: {} events sent, {} lines rejected, {} bytes read in {:.1}s ({:.0} events/s)",
        s.files,
        s.sent,
        s.rejected_total(),
        s.bytes,
        s.elapsed.as_secs_f64(),
        s.sent as f64 / s.elapsed.as_secs_f64().max(1e-3)
    );
    for (reason, (n, first)) in &s.rejected {
        out.push_str(&format!("\n  {n} × {reason} (first at {first})"));
    }
    out
}
