//! What the pipeline reports to Prometheus (see `pitwall_server::metrics` for the
//! series): counters it already keeps as atomics are read at scrape time; per-partition
//! gauges and per-commit series are set where they change.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use pitwall_core::Outputs;

/// Reports `stats` on every scrape, as long as the run keeps it.
pub fn export(stats: &Arc<Stats>) {
    pitwall_server::metrics::install();
    let weak = Arc::downgrade(stats);
    pitwall_server::metrics::on_scrape(move || {
        let Some(s) = weak.upgrade() else {
            return false;
        };
        counter!("pitwall_events_in_total", "stage" => "ingest").absolute(s.produced.load(Relaxed));
        counter!("pitwall_events_in_total", "stage" => "process")
            .absolute(s.processed.load(Relaxed));
        for (stream, c) in [
            ("clean", &s.clean),
            ("windows", &s.windows),
            ("anomalies", &s.anomalies),
            ("late", &s.late),
        ] {
            counter!("pitwall_events_out_total", "stage" => "process", "stream" => stream)
                .absolute(c.load(Relaxed));
        }
        true
    });
}

/// Counts rejects by kind of reason.
fn rejects(kinds: impl Iterator<Item = pitwall_core::RejectKind>) {
    for k in kinds {
        counter!("pitwall_rejects_total", "stage" => "process", "reason" => k.label()).increment(1);
    }
}

/// One partition's lag: messages not yet processed, and wall clock minus its watermark.
pub(crate) fn partition(topic: &str, partition: u32, lag: Option<i64>, watermark_ns: i64) {
    let p = partition.to_string();
    if let Some(lag) = lag {
        gauge!("pitwall_consumer_lag_messages", "topic" => topic.to_owned(), "partition" => p.clone()).set(lag.max(0) as f64);
    }
    if watermark_ns > i64::MIN / 2 {
        let now = pitwall_core::now_ns();
        gauge!("pitwall_watermark_lag_seconds", "partition" => p)
            .set((now - watermark_ns) as f64 / 1e9);
    }
}

/// One lake commit: its latency, and rows, files and bytes per table.
pub(crate) fn commit(s: &pitwall_lake::CommitStats, took: Duration) {
    histogram!("pitwall_lake_commit_seconds").record(took.as_secs_f64());
    for (table, rows) in &s.rows {
        counter!("pitwall_lake_rows_total", "table" => table.clone()).increment(*rows as u64);
    }
    for (table, (files, bytes)) in &s.files_per_table {
        counter!("pitwall_lake_files_total", "table" => table.clone()).increment(*files as u64);
        counter!("pitwall_lake_bytes_total", "table" => table.clone()).increment(*bytes);
    }
    for (table, (rows, _)) in &s.quarantined {
        counter!("pitwall_lake_quarantined_rows_total", "table" => table.clone())
            .increment(*rows as u64);
    }
}

/// Counters shared by the pipeline's tasks and read by the status line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events the simulators put on the raw topic.
    pub produced: AtomicU64,
    /// Of those, payloads corrupted on purpose (`sim.corrupt-per-minute`).
    pub corrupted: AtomicU64,
    /// Raw messages the processors finished.
    pub processed: AtomicU64,
    /// Rows committed to the lake, all tables.
    pub rows_committed: AtomicU64,
    /// Clean rows committed.
    pub clean_committed: AtomicU64,
    /// Lake commits.
    pub commits: AtomicU64,
    /// Anomaly episodes raised.
    pub anomalies: AtomicU64,
    /// Rejected payloads.
    pub rejects: AtomicU64,
    /// Clean points produced.
    pub clean: AtomicU64,
    /// Late events.
    pub late: AtomicU64,
    /// Window rows produced.
    pub windows: AtomicU64,
    /// Points identical to one already taken (a client's retry), not processed again.
    pub duplicates: AtomicU64,
    /// How long each lake commit took (seconds; the first 100,000), for `pitwall bench`.
    pub commit_seconds: std::sync::Mutex<Vec<f64>>,
    /// Whether lake commits succeed (`/health`, the status line).
    pub health: pitwall_server::Health,
}

/// Adds what one batch of processing derived to the counters and the reject metrics.
pub(crate) fn count(stats: &Stats, o: &Outputs) {
    // Episodes started; their end rows are not more anomalies.
    let started = o
        .anomalies
        .iter()
        .filter(|a| a.phase == pitwall_core::record::Phase::Start)
        .count();
    stats.anomalies.fetch_add(started as u64, Relaxed);
    stats.rejects.fetch_add(o.rejects.len() as u64, Relaxed);
    stats.clean.fetch_add(o.clean.len() as u64, Relaxed);
    rejects(o.rejects.iter().map(|r| r.kind));
    stats.late.fetch_add(o.late.len() as u64, Relaxed);
    stats.windows.fetch_add(o.windows.len() as u64, Relaxed);
    if o.duplicates > 0 {
        stats.duplicates.fetch_add(o.duplicates, Relaxed);
        ::metrics::counter!("pitwall_duplicates_total").increment(o.duplicates);
    }
}

impl Stats {
    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}
