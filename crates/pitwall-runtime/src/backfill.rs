//! `pitwall backfill`: the seeds' batch ETL. Recomputes the clean tables, window metrics
//! and anomalies of whole days from `raw.events` with the current configuration (rules,
//! windows, enrichment), and replaces those days' partitions atomically, table by table.
//!
//! Each bus partition's raw rows are replayed in offset order through the same
//! [`Processor`] the stream uses, starting `warm-up` before the first day so windows and
//! rules have their history; only rows of the chosen days are kept. Days are whole
//! (UTC): `--from 2026-01-02T13:00:00Z` replaces all of 2026-01-02. A processor still
//! writing into those days makes the replacement fail for the tables it touched since
//! the backfill planned (nothing mixed, nothing lost): backfill days the stream has left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use pitwall_bus::Message;
use pitwall_core::{Precision, json};
use pitwall_lake::Fixed;
use pitwall_stream::{Outputs, Processor};

use crate::config::Config;
use crate::open::open_lake;

const DAY_NS: i64 = 86_400_000_000_000;

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Start (ns since the epoch); its whole day is replaced.
    pub from: i64,
    /// End, exclusive (ns since the epoch); the day holding the instant before it is the last.
    pub to: i64,
    /// How much raw data before the first day to replay first, to warm windows and rules up.
    pub warm_up: Duration,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a backfill did, per table: rows before and after.
#[derive(Debug, Clone, Default)]
pub struct BackfillSummary {
    /// The days replaced (days since 1970-01-01).
    pub days: BTreeSet<i32>,
    /// Raw rows read and replayed.
    pub raw_rows: u64,
    /// Per table: rows removed, rows written.
    pub tables: BTreeMap<String, (u64, u64)>,
}

/// `2026-01-02` or an RFC 3339 time, as ns since the epoch.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    let text = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    let t = humantime::parse_rfc3339_weak(&text).with_context(|| {
        format!("{s:?} is not a date (2026-01-02) or a UTC time (2026-01-02T13:00:00Z)")
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .context("times before 1970 are not supported")?;
    i64::try_from(d.as_nanos()).context("time out of range")
}

fn binary_at(column: &dyn Array, i: usize) -> Bytes {
    if let Some(a) = column.as_binary_opt::<i32>() {
        Bytes::copy_from_slice(a.value(i))
    } else if let Some(a) = column.as_binary_opt::<i64>() {
        Bytes::copy_from_slice(a.value(i))
    } else if let Some(a) = column.as_binary_view_opt() {
        Bytes::copy_from_slice(a.value(i))
    } else {
        Bytes::new()
    }
}

fn string_at(column: &dyn Array, i: usize) -> Option<String> {
    if column.is_null(i) {
        return None;
    }
    if let Some(a) = column.as_string_opt::<i32>() {
        Some(a.value(i).to_owned())
    } else if let Some(a) = column.as_string_opt::<i64>() {
        Some(a.value(i).to_owned())
    } else {
        column.as_string_view_opt().map(|a| a.value(i).to_owned())
    }
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> anyhow::Result<&'a dyn Array> {
    b.column_by_name(name)
        .map(|c| c.as_ref())
        .with_context(|| format!("the query gave no {name} column"))
}

/// Runs the backfill.
pub async fn run(config: Config, options: &BackfillOptions) -> anyhow::Result<BackfillSummary> {
    anyhow::ensure!(options.to > options.from, "--to must be after --from");
    let (lake, schemas) = open_lake(&config).await?;
    let first_day = options.from.div_euclid(DAY_NS);
    let last_day = (options.to - 1).div_euclid(DAY_NS);
    let days: BTreeSet<i32> = (first_day..=last_day).map(|d| d as i32).collect();
    let (lo, hi) = (first_day * DAY_NS, (last_day + 1) * DAY_NS);
    let replay_from = lo - i64::try_from(options.warm_up.as_nanos()).unwrap_or(i64::MAX);

    // Plan first: the files of those days now. Whatever the stream adds after this is
    // caught at commit time, not silently replaced.
    let mut targets = vec![Fixed::Windows.ident(), Fixed::Anomalies.ident()];
    targets.extend(
        lake.table_idents()
            .await?
            .into_iter()
            .filter(|t| t.to_string().starts_with("clean.")),
    );
    let mut planned = BTreeMap::new();
    for ident in &targets {
        planned.insert(ident.to_string(), lake.day_files(ident, &days).await?);
    }

    let q = pitwall_query::Query::new(&lake).await?;
    let parts = q
        .sql("SELECT topic, \"partition\", count(*) AS n FROM raw.events GROUP BY topic, \"partition\" ORDER BY topic, \"partition\"")
        .await?;
    let mut partitions: Vec<(String, i32, u64)> = Vec::new();
    for b in &parts {
        let (topic, partition, n) = (
            column(b, "topic")?,
            column(b, "partition")?,
            column(b, "n")?,
        );
        for i in 0..b.num_rows() {
            partitions.push((
                string_at(topic, i).unwrap_or_default(),
                partition.as_primitive::<Int32Type>().value(i),
                n.as_primitive::<Int64Type>().value(i) as u64,
            ));
        }
    }
    let total: u64 = partitions.iter().map(|p| p.2).sum();
    let bar = if options.progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} raw rows {per_sec} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let processor_config = Arc::new(config.processor.clone());
    let mut kept = Outputs::default();
    let mut summary = BackfillSummary {
        days: days.clone(),
        ..BackfillSummary::default()
    };
    for (topic, partition, _) in &partitions {
        bar.set_message(format!("{topic}/{partition}"));
        let mut processor = Processor::new(
            Arc::clone(&processor_config),
            schemas.clone(),
            topic,
            *partition as u32,
        );
        let mut out = Outputs::default();
        let sql = format!(
            "SELECT \"offset\", key, CAST(ingest_time AS BIGINT) AS ingest_us, payload FROM raw.events \
             WHERE topic = '{}' AND \"partition\" = {partition} ORDER BY \"offset\"",
            topic.replace('\'', "''")
        );
        for b in q.sql(&sql).await? {
            let (offset, key, ingest, payload) = (
                column(&b, "offset")?,
                column(&b, "key")?,
                column(&b, "ingest_us")?,
                column(&b, "payload")?,
            );
            for i in 0..b.num_rows() {
                bar.inc(1);
                summary.raw_rows += 1;
                let msg = Message {
                    partition: *partition as u32,
                    offset: offset.as_primitive::<Int64Type>().value(i),
                    key: string_at(key, i).map(Bytes::from),
                    payload: binary_at(payload, i),
                    timestamp: ingest
                        .as_primitive::<Int64Type>()
                        .value(i)
                        .saturating_mul(1000),
                };
                // Only the range (and its warm-up) goes through; rejects are not recomputed.
                match json::decode(&msg.payload, msg.timestamp, Precision::S) {
                    Ok(p) if p.time >= replay_from && p.time < hi => {
                        processor.process(&msg, &mut out)
                    }
                    _ => {}
                }
            }
        }
        processor.finish(&mut out);
        let in_days = |t: i64| t >= lo && t < hi;
        kept.clean
            .extend(out.clean.into_iter().filter(|p| in_days(p.time)));
        kept.windows
            .extend(out.windows.into_iter().filter(|w| in_days(w.window_start)));
        kept.anomalies
            .extend(out.anomalies.into_iter().filter(|a| in_days(a.time)));
    }
    bar.finish_and_clear();
    let done = lake
        .replace_days(&days, &planned, &kept)
        .await
        .context("replacing the days' partitions")?;
    for (table, r) in done {
        summary.tables.insert(table, (r.removed_rows, r.added_rows));
    }
    Ok(summary)
}
