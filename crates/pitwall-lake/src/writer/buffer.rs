//! What the writer holds per bus partition between commits: each table's pending rows
//! with the checkpoint they started after.

use std::collections::BTreeMap;

use pitwall_core::Checkpoint;
use pitwall_core::Point;
use pitwall_core::record::{AnomalyRecord, LateRecord, RawRecord, RejectRecord, WindowRecord};

use crate::progress::{clean_table, names};

/// Rows of one table from one partition waiting for a commit, and the checkpoint of the
/// partition just before the first of them arrived.
#[derive(Debug)]
pub(super) struct Pending<T> {
    /// The rows in arrival order, kept in the batches they came in: appending moves a
    /// batch, never copies rows into an ever larger buffer.
    pub(super) rows: Chunks<T>,
    pub(super) since: Checkpoint,
}

/// Rows as a list of batches.
#[derive(Debug)]
pub(super) struct Chunks<T> {
    pub(super) chunks: Vec<Vec<T>>,
    pub(super) len: usize,
}

impl<T> Chunks<T> {
    pub(super) fn new(rows: Vec<T>) -> Self {
        let mut c = Chunks {
            chunks: Vec::new(),
            len: 0,
        };
        c.extend(rows);
        c
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Appends a batch.
    pub(super) fn extend(&mut self, rows: Vec<T>) {
        if !rows.is_empty() {
            self.len += rows.len();
            self.chunks.push(rows);
        }
    }

    /// Appends every row of `other`.
    pub(super) fn append(&mut self, other: Chunks<T>) {
        self.len += other.len;
        self.chunks.extend(other.chunks);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

/// What one partition has buffered, per table.
#[derive(Debug)]
pub(super) struct PartitionBuffer {
    /// Which taking up of the partition this is (see [`LakeWriter::finish_round`]).
    pub(super) id: u64,
    /// The partition's checkpoint after everything appended so far.
    pub(super) checkpoint: Checkpoint,
    pub(super) raw: Option<Pending<RawRecord>>,
    pub(super) clean: BTreeMap<String, Pending<Point>>,
    pub(super) windows: Option<Pending<WindowRecord>>,
    pub(super) anomalies: Option<Pending<AnomalyRecord>>,
    pub(super) rejects: Option<Pending<RejectRecord>>,
    pub(super) late: Option<Pending<LateRecord>>,
}

pub(super) fn push<T>(slot: &mut Option<Pending<T>>, rows: Vec<T>, since: Checkpoint) {
    if rows.is_empty() {
        return;
    }
    match slot {
        Some(p) => p.rows.extend(rows),
        None => {
            *slot = Some(Pending {
                rows: Chunks::new(rows),
                since,
            });
        }
    }
}

/// Points split by measurement, each in arrival order. A batch of one measurement, the
/// usual case, is moved as it is.
pub(super) fn by_measurement(points: Vec<Point>) -> Vec<(String, Vec<Point>)> {
    let Some(first) = points.first().map(|p| p.measurement.clone()) else {
        return Vec::new();
    };
    if points.iter().all(|p| p.measurement == first) {
        return vec![(first, points)];
    }
    let mut out: Vec<(String, Vec<Point>)> = Vec::new();
    for p in points {
        match out.iter_mut().find(|(m, _)| *m == p.measurement) {
            Some((_, rows)) => rows.push(p),
            None => out.push((p.measurement.clone(), vec![p])),
        }
    }
    out
}

/// Puts rows a round could not commit back before the rows buffered since.
pub(super) fn put_back<T>(slot: &mut Option<Pending<T>>, older: Option<Pending<T>>) {
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
        fn n<T>(p: &Option<Pending<T>>) -> usize {
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
        fn since<T>(p: &Option<Pending<T>>) -> Option<Checkpoint> {
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
