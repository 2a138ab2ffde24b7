//! What the pipeline reports to Prometheus (see `pitwall_server::metrics` for the
//! series): counters it already keeps as atomics are read at scrape time; per-partition
//! gauges and per-commit series are set where they change.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::pipeline::Stats;

/// Reports `stats` on every scrape, as long as the run keeps it.
pub(crate) fn export(stats: &Arc<Stats>) {
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
pub(crate) fn rejects(kinds: impl Iterator<Item = pitwall_core::RejectKind>) {
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
