//! What the writer holds per bus partition between commits: each table's pending rows,
//! already as Arrow columns, with the checkpoint they started after.

use std::collections::BTreeMap;

use pitwall_core::Checkpoint;
use pitwall_core::Point;

use super::rows::{Batches, FixedRows, Open, PointRows, Row};
use crate::progress::{clean_table, names};
use crate::tables::Fixed;

/// Rows of one table from one partition waiting for a commit, and the checkpoint of the
/// partition just before the first of them arrived.
#[derive(Debug)]
pub(super) struct Pending<B> {
    pub(super) rows: Batches<B>,
    pub(super) since: Checkpoint,
}

/// What one partition has buffered, per table.
#[derive(Debug)]
pub(super) struct PartitionBuffer {
    /// Which taking up of the partition this is (see [`LakeWriter::finish_round`]).
    pub(super) id: u64,
    /// The partition's checkpoint after everything appended so far.
    pub(super) checkpoint: Checkpoint,
    pub(super) raw: Option<Pending<FixedRows>>,
    pub(super) clean: BTreeMap<String, Pending<PointRows>>,
    pub(super) windows: Option<Pending<FixedRows>>,
    pub(super) anomalies: Option<Pending<FixedRows>>,
    pub(super) rejects: Option<Pending<FixedRows>>,
    pub(super) late: Option<Pending<FixedRows>>,
}

/// Builds `rows` of fixed table `table` into `slot`.
pub(super) fn push<R: Row>(
    slot: &mut Option<Pending<FixedRows>>,
    table: Fixed,
    rows: &[R],
    since: Checkpoint,
) {
    if rows.is_empty() {
        return;
    }
    slot.get_or_insert_with(|| Pending {
        rows: Batches::new(FixedRows::new(table)),
        since,
    })
    .rows
    .push(rows);
}

/// Builds `points` into their measurements' columns in `clean`.
pub(super) fn push_points(
    clean: &mut BTreeMap<String, Pending<PointRows>>,
    points: &[Point],
    since: Checkpoint,
) {
    // A run of points of one measurement, the usual case, looks its table up once.
    for run in points.chunk_by(|a, b| a.measurement == b.measurement) {
        let m = run[0].measurement.as_str();
        let pending = match clean.get_mut(m) {
            Some(p) => p,
            None => clean.entry(m.to_owned()).or_insert(Pending {
                rows: Batches::new(PointRows::default()),
                since,
            }),
        };
        for p in run {
            pending.rows.push(p);
        }
    }
}

/// Puts rows a round could not commit back before the rows buffered since.
pub(super) fn put_back<B: Open>(slot: &mut Option<Pending<B>>, older: Option<Pending<B>>) {
    if let Some(mut older) = older {
        if let Some(newer) = slot.take() {
            older.rows.append(newer.rows);
        }
        *slot = Some(older);
    }
}

impl PartitionBuffer {
    pub(super) fn new(id: u64, checkpoint: Checkpoint) -> Self {
        PartitionBuffer {
            id,
            checkpoint,
            raw: None,
            clean: BTreeMap::new(),
            windows: None,
            anomalies: None,
            rejects: None,
            late: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        fn n(p: &Option<Pending<FixedRows>>) -> usize {
            p.as_ref().map_or(0, |p| p.rows.len())
        }
        n(&self.raw)
            + self.clean.values().map(|p| p.rows.len()).sum::<usize>()
            + n(&self.windows)
            + n(&self.anomalies)
            + n(&self.rejects)
            + n(&self.late)
    }

    /// The round: every table with rows waiting, and since which checkpoint.
    pub(super) fn round(&self) -> BTreeMap<String, Checkpoint> {
        fn since(p: &Option<Pending<FixedRows>>) -> Option<Checkpoint> {
            p.as_ref().map(|p| p.since)
        }
        let mut out = BTreeMap::new();
        for (name, s) in [
            (names::RAW, since(&self.raw)),
            (names::WINDOWS, since(&self.windows)),
            (names::ANOMALIES, since(&self.anomalies)),
            (names::REJECTS, since(&self.rejects)),
            (names::LATE, since(&self.late)),
        ] {
            if let Some(s) = s {
                out.insert(name.to_owned(), s);
            }
        }
        for (m, p) in &self.clean {
            out.insert(clean_table(m), p.since);
        }
        out
    }
}
