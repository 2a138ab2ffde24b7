//! What the writer holds per bus partition between commits: each table's pending rows,
//! already as Arrow columns, with the checkpoint they started after.

use std::collections::BTreeMap;

use pitwall_core::{Checkpoint, Outputs};

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

/// A partition's outputs as the lake's Arrow columns, built as they are handed to the
/// writer ([`LakeWriter::append`]) so no record waits as a struct for the commit.
///
/// [`LakeWriter::append`]: super::LakeWriter::append
#[derive(Debug, Default)]
pub(crate) struct TableRows {
    pub(super) raw: Option<Batches<FixedRows>>,
    pub(super) clean: BTreeMap<String, Batches<PointRows>>,
    pub(super) windows: Option<Batches<FixedRows>>,
    pub(super) anomalies: Option<Batches<FixedRows>>,
    pub(super) rejects: Option<Batches<FixedRows>>,
    pub(super) late: Option<Batches<FixedRows>>,
}

impl TableRows {
    /// No rows.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rows of `outputs`, built.
    pub fn of(outputs: &Outputs) -> Self {
        let mut rows = Self::new();
        rows.add(outputs);
        rows
    }

    /// Builds the rows of every table `outputs` has (all but the duplicates count).
    pub fn add(&mut self, outputs: &Outputs) {
        fn push<R: Row>(slot: &mut Option<Batches<FixedRows>>, table: Fixed, rows: &[R]) {
            if !rows.is_empty() {
                slot.get_or_insert_with(|| Batches::new(FixedRows::new(table)))
                    .push(rows);
            }
        }
        push(&mut self.raw, Fixed::Raw, &outputs.raw);
        // A run of points of one measurement, the usual case, looks its table up once.
        for run in outputs
            .clean
            .chunk_by(|a, b| a.measurement == b.measurement)
        {
            let m = run[0].measurement.as_str();
            let rows = match self.clean.get_mut(m) {
                Some(r) => r,
                None => self
                    .clean
                    .entry(m.to_owned())
                    .or_insert_with(|| Batches::new(PointRows::default())),
            };
            for p in run {
                rows.push(p);
            }
        }
        push(&mut self.windows, Fixed::Windows, &outputs.windows);
        push(&mut self.anomalies, Fixed::Anomalies, &outputs.anomalies);
        push(&mut self.rejects, Fixed::Rejects, &outputs.rejects);
        push(&mut self.late, Fixed::Late, &outputs.late);
    }

    /// Rows built, over every table.
    pub fn len(&self) -> usize {
        fn n(b: &Option<Batches<FixedRows>>) -> usize {
            b.as_ref().map_or(0, Batches::len)
        }
        n(&self.raw)
            + self.clean.values().map(Batches::len).sum::<usize>()
            + n(&self.windows)
            + n(&self.anomalies)
            + n(&self.rejects)
            + n(&self.late)
    }
}

/// Adds `rows` after what `slot` holds; `since` is the checkpoint before them.
pub(super) fn merge<B: Open>(
    slot: &mut Option<Pending<B>>,
    rows: Option<Batches<B>>,
    since: Checkpoint,
) {
    let Some(rows) = rows.filter(|r| r.len() > 0) else {
        return;
    };
    match slot {
        Some(p) => p.rows.append(rows),
        None => *slot = Some(Pending { rows, since }),
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

    /// Adds `rows` after what is buffered; `since` is the checkpoint before them.
    pub(super) fn append(&mut self, rows: TableRows, since: Checkpoint) {
        let TableRows {
            raw,
            clean,
            windows,
            anomalies,
            rejects,
            late,
        } = rows;
        merge(&mut self.raw, raw, since);
        for (m, rows) in clean {
            match self.clean.get_mut(&m) {
                Some(p) => p.rows.append(rows),
                None => {
                    self.clean.insert(m, Pending { rows, since });
                }
            }
        }
        merge(&mut self.windows, windows, since);
        merge(&mut self.anomalies, anomalies, since);
        merge(&mut self.rejects, rejects, since);
        merge(&mut self.late, late, since);
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
