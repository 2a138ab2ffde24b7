//! Buffers processor outputs and commits them to the lake's tables in batches.

mod buffer;
mod files;
mod rows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use bytes::Bytes;
use iceberg::spec::DataFile;
use parquet::file::properties::WriterProperties;
use pitwall_core::record::{Origin, RejectRecord};
use pitwall_core::{Checkpoint, Outputs, PartitionId};

use self::buffer::TableRows;
use self::buffer::{PartitionBuffer, merge, put_back};
use self::files::{Committer, parquet_properties};
pub(crate) use self::files::{compaction_properties, for_schema};
use crate::progress::{Progress, ResumePlan, clean_table, names};
use crate::tables::Fixed;
use crate::{Claim, Error, Lake, Result};

/// What one commit wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Rows written per table (`namespace.table`).
    pub rows: BTreeMap<String, usize>,
    /// Data files written.
    pub files: usize,
    /// Data files and their bytes per table (`namespace.table`).
    pub files_per_table: BTreeMap<String, (usize, u64)>,
    /// Clean tables given up on in this commit (see [`QUARANTINE_AFTER`]): the rows
    /// moved to `quarantine.rejects` per table, and the error that would not go.
    pub quarantined: BTreeMap<String, (usize, String)>,
}

/// A clean table whose commit fails this many times in a row while other tables
/// commit (so the storage and the catalog work) fails for a reason of its own that
/// retrying does not fix (its location unusable, its schema changed under pitwall): its
/// rows go to `quarantine.rejects` with the error, so the other tables, and the memory
/// the held rows take, are not stopped by it. Rows that cannot be written at all (a
/// column of a type pitwall cannot write) go at the first failure. When every table
/// fails (storage or catalog down), nothing is given up: the rows wait and the commit
/// is retried.
pub const QUARANTINE_AFTER: u32 = 5;

impl CommitStats {
    /// Rows over all tables.
    pub fn total_rows(&self) -> usize {
        self.rows.values().sum()
    }

    /// Counts a commit of `table` (added to one made earlier in the same round).
    fn add(&mut self, table: &str, rows: usize, files: usize, bytes: u64) {
        self.files += files;
        let f = self.files_per_table.entry(table.to_owned()).or_default();
        (f.0, f.1) = (f.0 + files, f.1 + bytes);
        *self.rows.entry(table.to_owned()).or_default() += rows;
    }
}

/// Rows in `batches`.
fn rows_in(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Buffers outputs per bus partition and commits them to the lake's tables in batches:
/// one fenced Iceberg snapshot per table per commit, recording the offsets and the
/// processor's progress of every partition it covers (see [`crate::progress`]).
#[derive(Debug)]
pub struct LakeWriter {
    lake: Lake,
    /// `topic/partition` -> what it has buffered.
    parts: BTreeMap<PartitionId, PartitionBuffer>,
    /// Table name -> the offset per partition its newest snapshot records, as this
    /// writer knows it: what each fenced commit expects to find.
    committed: BTreeMap<String, BTreeMap<PartitionId, i64>>,
    buffered: usize,
    last_commit: Instant,
    props: WriterProperties,
    next_id: u64,
    /// Clean tables whose last commits failed while others committed: how many in a row.
    failing: BTreeMap<String, u32>,
}

/// A commit's rows, taken out of a [`LakeWriter`] by [`LakeWriter::take_round`] so
/// the commit can run while the writer buffers on; hand it back with
/// [`LakeWriter::finish_round`].
#[derive(Debug)]
pub struct Round(LakeWriter);

impl Round {
    /// Writes and commits the round's rows, as [`LakeWriter::commit`] does.
    pub async fn commit(&mut self) -> Result<CommitStats> {
        self.0.commit().await
    }

    /// Rows the round holds.
    pub fn buffered(&self) -> usize {
        self.0.buffered
    }
}

impl LakeWriter {
    /// A writer into `lake`, knowing the offsets the lake records now.
    pub async fn open(lake: Lake) -> Result<Self> {
        let progress = lake.committed_progress().await?;
        Ok(Self::with_progress(lake, &progress))
    }

    /// A writer into `lake` whose tables record `progress` (as
    /// [`Lake::committed_progress`] read it just now).
    pub fn with_progress(lake: Lake, progress: &BTreeMap<String, crate::TableProgress>) -> Self {
        LakeWriter {
            committed: progress
                .iter()
                .map(|(t, p)| (t.clone(), p.offsets.clone()))
                .collect(),
            lake,
            parts: BTreeMap::new(),
            buffered: 0,
            last_commit: Instant::now(),
            props: parquet_properties(),
            next_id: 0,
            failing: BTreeMap::new(),
        }
    }

    /// The lake this writer commits to.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The newest offset per partition over every table: where a bus must resume so
    /// that no offset is reused.
    pub fn resume_offsets(&self) -> BTreeMap<PartitionId, i64> {
        let mut out = BTreeMap::new();
        for offsets in self.committed.values() {
            for (p, o) in offsets {
                let e = out.entry(p.clone()).or_insert(*o);
                *e = (*e).max(*o);
            }
        }
        out
    }

    /// Takes up `partition` as `plan` says: forgets anything buffered
    /// for it and expects the offsets the plan read from the lake.
    pub fn assign(&mut self, partition: &PartitionId, plan: &ResumePlan) {
        self.revoke(partition);
        for offsets in self.committed.values_mut() {
            offsets.remove(partition);
        }
        for (table, at) in &plan.held {
            self.committed
                .entry(table.clone())
                .or_default()
                .insert(partition.clone(), *at);
        }
        self.next_id += 1;
        self.parts.insert(
            partition.clone(),
            PartitionBuffer::new(self.next_id, plan.base),
        );
    }

    /// Gives up `partition`: its buffered rows are dropped (whoever takes it over
    /// rebuilds them from the lake's offsets).
    pub fn revoke(&mut self, partition: &PartitionId) {
        if let Some(b) = self.parts.remove(partition) {
            self.buffered -= b.len();
        }
    }

    /// The offset `table`'s newest snapshot records for `partition`, as this writer knows it.
    pub fn held(&self, table: &str, partition: &PartitionId) -> Option<i64> {
        self.committed.get(table)?.get(partition).copied()
    }

    /// Partitions this writer holds.
    pub fn partitions(&self) -> impl Iterator<Item = &PartitionId> {
        self.parts.keys()
    }

    /// Buffers `outputs` of `partition` for the next commit; `checkpoint` is the
    /// partition's processor checkpoint after them.
    pub fn append(&mut self, partition: &PartitionId, outputs: &Outputs, checkpoint: Checkpoint) {
        let rows = TableRows::of(outputs);
        self.buffered += rows.len();
        let id = &mut self.next_id;
        let b = self.parts.entry(partition.clone()).or_insert_with(|| {
            *id += 1;
            PartitionBuffer::new(
                *id,
                Checkpoint {
                    next: 0,
                    replay_from: 0,
                    max_time: i64::MIN,
                },
            )
        });
        let since = b.checkpoint;
        b.append(rows, since);
        b.checkpoint = checkpoint;
    }

    /// Rows waiting for a commit.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Is a commit due (enough rows, or the interval passed with rows waiting)?
    pub fn due(&self) -> bool {
        let c = self.lake.config();
        self.buffered >= c.commit_rows
            || (self.buffered > 0 && self.last_commit.elapsed() >= c.commit_interval)
    }

    /// Time until the commit interval has passed.
    pub fn time_to_due(&self) -> Duration {
        self.lake
            .config()
            .commit_interval
            .saturating_sub(self.last_commit.elapsed())
    }

    /// Takes everything buffered out into a [`Round`] to commit elsewhere; the writer
    /// buffers on from the same checkpoints. One round at a time: hand it back with
    /// [`Self::finish_round`] before taking the next.
    pub fn take_round(&mut self) -> Round {
        let mut parts = BTreeMap::new();
        for (p, b) in &mut self.parts {
            let fresh = PartitionBuffer::new(b.id, b.checkpoint);
            parts.insert(p.clone(), std::mem::replace(b, fresh));
        }
        let round = LakeWriter {
            lake: self.lake.clone(),
            parts,
            committed: self.committed.clone(),
            buffered: self.buffered,
            last_commit: Instant::now(),
            props: self.props.clone(),
            next_id: self.next_id,
            failing: self.failing.clone(),
        };
        self.buffered = 0;
        self.last_commit = Instant::now();
        Round(round)
    }

    /// Takes back a round after its commit, successful or not: the offsets it committed
    /// become what the next commit expects, and the rows it could not commit go back
    /// before those buffered since, to be tried again. Partitions given up or taken up
    /// anew while the round ran keep what the writer has now: the round's rows and
    /// offsets for them are stale (and a fenced partition is the caller's to take up).
    pub fn finish_round(&mut self, round: Round) {
        let round = round.0;
        self.failing = round.failing;
        for (p, old) in round.parts {
            let Some(b) = self.parts.get_mut(&p).filter(|b| b.id == old.id) else {
                continue;
            };
            for (table, offsets) in &round.committed {
                if let Some(o) = offsets.get(&p) {
                    self.committed
                        .entry(table.clone())
                        .or_default()
                        .insert(p.clone(), *o);
                }
            }
            put_back(&mut b.raw, old.raw);
            put_back(&mut b.windows, old.windows);
            put_back(&mut b.anomalies, old.anomalies);
            put_back(&mut b.rejects, old.rejects);
            put_back(&mut b.late, old.late);
            for (m, mut older) in old.clean {
                if let Some(newer) = b.clean.remove(&m) {
                    older.rows.append(newer.rows);
                }
                b.clean.insert(m, older);
            }
        }
        self.buffered = self.parts.values().map(PartitionBuffer::len).sum();
    }

    /// Writes and commits everything buffered. A table whose commit fails keeps its
    /// rows for the next attempt, so nothing buffered is lost; a partition another
    /// writer has committed since ([`Error::Fenced`]) is dropped from this writer, and
    /// the error names it so the caller can take it up again from the lake.
    pub async fn commit(&mut self) -> Result<CommitStats> {
        self.last_commit = Instant::now();
        let mut stats = CommitStats::default();
        let summary = HashMap::from([(
            "pitwall.writer".to_owned(),
            format!("pitwall {}", env!("CARGO_PKG_VERSION")),
        )]);
        let progress = self.progress();
        let mut first_error = None;
        let mut tables: Vec<String> = [names::RAW].iter().map(|s| (*s).to_owned()).collect();
        let measurements: BTreeSet<String> = self
            .parts
            .values()
            .flat_map(|b| b.clean.keys().cloned())
            .collect();
        tables.extend(measurements.iter().map(|m| clean_table(m)));
        tables.extend(
            [
                names::WINDOWS,
                names::ANOMALIES,
                names::REJECTS,
                names::LATE,
            ]
            .map(str::to_owned),
        );
        let mut failed: Vec<(String, Error)> = Vec::new();
        for table in tables {
            let r = self.commit_table(&table, &progress, &summary).await;
            match r {
                Ok(Some((rows, files, bytes))) => stats.add(&table, rows, files, bytes),
                Ok(None) => {}
                Err(e) => {
                    if let Error::Fenced { partition, .. } = &e {
                        // Another writer moved this partition: nothing of ours for it may land.
                        self.revoke(partition);
                    }
                    failed.push((table, e));
                }
            }
        }
        // Clean tables that fail on their own: after enough tries, their rows go to the
        // rejects table, which is then committed again.
        let others_committed = !stats.rows.is_empty();
        let mut gave_up = false;
        for (table, e) in failed {
            let given_up = match (&e, table.strip_prefix("clean.")) {
                (Error::Fenced { .. }, _) | (_, None) => false,
                (Error::Incompatible { .. } | Error::Arrow(_), Some(_)) => true,
                (_, Some(_)) if others_committed => {
                    let n = self.failing.get(&table).copied().unwrap_or(0) + 1;
                    self.failing.insert(table.clone(), n);
                    n >= QUARANTINE_AFTER
                }
                _ => false,
            };
            if given_up && let Some(measurement) = table.strip_prefix("clean.") {
                let reason = format!(
                    "{table} could not take this row ({e}); the other tables committed, so retrying would not help: kept here as JSON"
                );
                let n = self.quarantine(measurement, &reason);
                tracing::error!(table, rows = n, error = %e, "a clean table keeps failing while the others commit; its buffered rows go to quarantine.rejects");
                stats.quarantined.insert(table.clone(), (n, e.to_string()));
                self.failing.remove(&table);
                gave_up = true;
            } else {
                first_error.get_or_insert(e);
            }
        }
        for table in stats.rows.keys() {
            self.failing.remove(table);
        }
        if gave_up {
            let progress = self.progress();
            match self.commit_table(names::REJECTS, &progress, &summary).await {
                Ok(Some((rows, files, bytes))) => stats.add(names::REJECTS, rows, files, bytes),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.buffered = self.parts.values().map(PartitionBuffer::len).sum();
        match first_error {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// Each partition with rows waiting: its checkpoint and its round.
    fn progress(&self) -> BTreeMap<PartitionId, Progress> {
        self.parts
            .iter()
            .filter(|(_, b)| b.len() > 0)
            .map(|(p, b)| {
                (
                    p.clone(),
                    Progress {
                        checkpoint: b.checkpoint,
                        round: b.round(),
                    },
                )
            })
            .collect()
    }

    /// Moves the rows of `clean.<measurement>` waiting in every partition to the rejects
    /// (each point as JSON, with `reason`); returns how many. A replay after a crash
    /// before the rejects commit rebuilds them, so they are kept at least once.
    fn quarantine(&mut self, measurement: &str, reason: &str) -> usize {
        let now = pitwall_core::now_ns();
        let mut moved = 0;
        for (p, b) in &mut self.parts {
            let Some(mut pending) = b.clean.remove(measurement) else {
                continue;
            };
            let origin = Origin {
                topic: p.topic().into(),
                partition: i32::try_from(p.partition()).unwrap_or(i32::MAX),
                // Not a message's offset: the rows of a clean table do not keep theirs.
                offset: -1,
            };
            let rows: Vec<RejectRecord> = pending
                .rows
                .batches()
                .iter()
                .flat_map(|batch| rows::points_of(measurement, batch))
                .map(|point| RejectRecord {
                    origin: origin.clone(),
                    ingest_time: now,
                    payload: pitwall_core::json::encode(&point)
                        .map(Bytes::from)
                        .unwrap_or_default(),
                    kind: pitwall_core::RejectKind::Invalid,
                    reason: reason.to_owned(),
                })
                .collect();
            moved += rows.len();
            if let Some(r) = &mut b.rejects
                && pending.since.replay_from < r.since.replay_from
            {
                r.since = pending.since;
            }
            let mut built = rows::Batches::new(rows::FixedRows::new(Fixed::Rejects));
            built.push(&rows);
            merge(&mut b.rejects, Some(built), pending.since);
        }
        moved
    }

    /// Commits one table's rows from every partition; on success they leave the buffers.
    async fn commit_table(
        &mut self,
        table: &str,
        progress: &BTreeMap<PartitionId, Progress>,
        summary: &HashMap<String, String>,
    ) -> Result<Option<(usize, usize, u64)>> {
        let measurement = table.strip_prefix("clean.");
        let mut claimed = Vec::new();
        let files = {
            let mut c = Committer {
                lake: &self.lake,
                props: &self.props,
            };
            macro_rules! gather {
                ($field:ident, $fixed:expr) => {{
                    let mut batches: Vec<RecordBatch> = Vec::new();
                    for (p, b) in &mut self.parts {
                        if let Some(pending) = &mut b.$field {
                            batches.extend_from_slice(pending.rows.checked()?);
                            claimed.push(p.clone());
                        }
                    }
                    if batches.is_empty() {
                        return Ok(None);
                    }
                    let t = self.lake.table(&$fixed.ident()).await?;
                    let files = c.write(&t, &batches, $fixed.time_column()).await?;
                    (files, rows_in(&batches), t)
                }};
            }
            match table {
                names::RAW => gather!(raw, Fixed::Raw),
                names::WINDOWS => gather!(windows, Fixed::Windows),
                names::ANOMALIES => gather!(anomalies, Fixed::Anomalies),
                names::REJECTS => gather!(rejects, Fixed::Rejects),
                names::LATE => gather!(late, Fixed::Late),
                _ => {
                    let m = measurement
                        .ok_or_else(|| Error::Internal(format!("no such table {table}")))?;
                    let mut batches: Vec<RecordBatch> = Vec::new();
                    for (p, b) in &mut self.parts {
                        if let Some(pending) = b.clean.get_mut(m) {
                            batches.extend_from_slice(pending.rows.batches());
                            claimed.push(p.clone());
                        }
                    }
                    if batches.is_empty() {
                        return Ok(None);
                    }
                    let t = c.clean_table(m, &batches).await?;
                    let files = c.write(&t, &batches, "time").await?;
                    (files, rows_in(&batches), t)
                }
            }
        };
        let (data_files, rows, t) = files;
        let n = data_files.len();
        let bytes = data_files
            .iter()
            .map(DataFile::file_size_in_bytes)
            .sum::<u64>();
        let held = self.committed.get(table).cloned().unwrap_or_default();
        let mut claim = Claim::default();
        for p in &claimed {
            let expected = held.get(p).copied().unwrap_or(0);
            let next = self.parts[p].checkpoint.next;
            if next < expected {
                return Err(Error::Internal(format!(
                    "{table}: rows of {p} up to offset {next} are already in the lake (it records {expected}); refusing to write them twice"
                )));
            }
            claim.expected.insert(p.clone(), expected);
            claim.next.insert(p.clone(), next);
            if let Some(pr) = progress.get(p) {
                claim.progress.insert(p.clone(), pr.clone());
            }
        }
        self.lake
            .append_fenced(t, data_files, &claim, summary)
            .await?;
        let entry = self.committed.entry(table.to_owned()).or_default();
        entry.extend(claim.next);
        for p in &claimed {
            let b = self
                .parts
                .get_mut(p)
                .expect("claimed partitions are buffered");
            match table {
                names::RAW => b.raw = None,
                names::WINDOWS => b.windows = None,
                names::ANOMALIES => b.anomalies = None,
                names::REJECTS => b.rejects = None,
                names::LATE => b.late = None,
                _ => {
                    if let Some(m) = measurement {
                        b.clean.remove(m);
                    }
                }
            }
        }
        Ok(Some((rows, n, bytes)))
    }
}
