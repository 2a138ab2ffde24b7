//! Buffers processor outputs and commits them to the lake's tables in batches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, SchemaRef, TimeUnit};
use bytes::Bytes;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use pitwall_core::record::{
    AnomalyRecord, LateRecord, Origin, RawRecord, RejectRecord, WindowRecord,
};
use pitwall_core::{Checkpoint, FieldType, Outputs, PartitionId};
use pitwall_core::{FieldValue, Name, Point};

use crate::progress::{Progress, ResumePlan, clean_table, names};
use crate::tables::Fixed;
use crate::{Claim, Error, Lake, Result};

const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// One cell of a row, as the writer sees it.
#[derive(Clone, Copy)]
enum Cell<'a> {
    Null,
    /// Nanoseconds since the epoch (stored as microseconds).
    Ts(i64),
    Str(&'a str),
    Long(i64),
    Int(i32),
    Double(f64),
    Bool(bool),
    Bin(&'a [u8]),
}

/// Column name -> position, looked up for every tag and field of every row: foldhash
/// rather than the standard SipHash, which cost 1.5 % of a commit's CPU.
type ColumnIndex<'a> = HashMap<&'a str, usize, foldhash::fast::FixedState>;

/// A table's columns, as rows fill them.
struct Columns<'a> {
    names: Vec<&'a str>,
    index: ColumnIndex<'a>,
    time: Option<usize>,
    /// The column of each key of the last point (its tags, then its fields), reused
    /// while points keep the same keys in the same order, as the points of one source
    /// do: a comparison of short names instead of a hash lookup per key.
    layout: Vec<(Name, Option<usize>)>,
}

impl<'a> Columns<'a> {
    fn new(schema: &'a SchemaRef) -> Self {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let index: ColumnIndex<'_> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let time = index.get("time").copied();
        Columns {
            names,
            index,
            time,
            layout: Vec::new(),
        }
    }

    /// The column of `key`, the `at`-th key of the row.
    #[inline]
    fn column(&mut self, at: usize, key: &Name) -> Option<usize> {
        match self.layout.get_mut(at) {
            Some((known, column)) if known == key => *column,
            slot => {
                let column = self.index.get(key.as_str()).copied();
                match slot {
                    Some(slot) => *slot = (key.clone(), column),
                    None => self.layout.push((key.clone(), column)),
                }
                column
            }
        }
    }
}

/// A record that can be written as a table row.
trait Row {
    /// The value for column `name`.
    fn cell(&self, name: &str) -> Cell<'_>;
    /// The time (ns) whose day is the row's partition.
    fn partition_time(&self) -> i64;
    /// Fills `out` (all `Cell::Null`, one per column) with this row's cells.
    fn cells<'r>(&'r self, columns: &mut Columns<'_>, out: &mut [Cell<'r>]) {
        for (slot, name) in out.iter_mut().zip(&columns.names) {
            *slot = self.cell(name);
        }
    }
}

/// The columns every table that keeps a bus message has: where it was read.
fn origin_cell<'a>(origin: &'a Origin, name: &str) -> Option<Cell<'a>> {
    match name {
        "topic" => Some(Cell::Str(&origin.topic)),
        "partition" => Some(Cell::Int(origin.partition)),
        "offset" => Some(Cell::Long(origin.offset)),
        _ => None,
    }
}

impl Row for RawRecord {
    fn cell(&self, name: &str) -> Cell<'_> {
        if let Some(c) = origin_cell(&self.origin, name) {
            return c;
        }
        match name {
            "ingest_time" => Cell::Ts(self.ingest_time),
            "key" => self.key.as_deref().map_or(Cell::Null, Cell::Str),
            "payload" => Cell::Bin(&self.payload),
            _ => Cell::Null,
        }
    }
    fn partition_time(&self) -> i64 {
        self.ingest_time
    }
}

impl Row for RejectRecord {
    fn cell(&self, name: &str) -> Cell<'_> {
        if let Some(c) = origin_cell(&self.origin, name) {
            return c;
        }
        match name {
            "ingest_time" => Cell::Ts(self.ingest_time),
            "reason" => Cell::Str(&self.reason),
            "payload" => Cell::Bin(&self.payload),
            "payload_text" => {
                Cell::Str(std::str::from_utf8(&self.payload).unwrap_or("<not UTF-8; see payload>"))
            }
            _ => Cell::Null,
        }
    }
    fn partition_time(&self) -> i64 {
        self.ingest_time
    }
}

impl Row for WindowRecord {
    fn cell(&self, name: &str) -> Cell<'_> {
        match name {
            "measurement" => Cell::Str(&self.measurement),
            "source_id" => Cell::Str(&self.source_id),
            "window" => Cell::Str(&self.window),
            "window_start" => Cell::Ts(self.window_start),
            "window_end" => Cell::Ts(self.window_end),
            "field" => Cell::Str(&self.field),
            "count" => Cell::Long(self.count as i64),
            "min" => Cell::Double(self.min),
            "max" => Cell::Double(self.max),
            "sum" => Cell::Double(self.sum),
            "mean" => Cell::Double(self.mean),
            "stddev" => self.stddev.map_or(Cell::Null, Cell::Double),
            "first" => Cell::Double(self.first),
            "last" => Cell::Double(self.last),
            "p50" => self.p50.map_or(Cell::Null, Cell::Double),
            "p95" => self.p95.map_or(Cell::Null, Cell::Double),
            "p99" => self.p99.map_or(Cell::Null, Cell::Double),
            _ => Cell::Null,
        }
    }
    fn partition_time(&self) -> i64 {
        self.window_start
    }
}

impl Row for AnomalyRecord {
    fn cell(&self, name: &str) -> Cell<'_> {
        match name {
            "id" => Cell::Str(&self.id),
            "rule" => Cell::Str(&self.rule),
            "kind" => Cell::Str(&self.kind),
            "severity" => Cell::Str(&self.severity),
            "measurement" => Cell::Str(&self.measurement),
            "source_id" => Cell::Str(&self.source_id),
            "field" => Cell::Str(&self.field),
            "phase" => Cell::Str(self.phase.as_str()),
            "time" => Cell::Ts(self.time),
            "end_time" => self.end_time.map_or(Cell::Null, Cell::Ts),
            "observed" => Cell::Double(self.observed),
            "expected" => Cell::Double(self.expected),
            "message" => Cell::Str(&self.message),
            "peak" => Cell::Double(self.peak),
            _ => Cell::Null,
        }
    }
    fn partition_time(&self) -> i64 {
        self.time
    }
}

impl Row for LateRecord {
    fn cell(&self, name: &str) -> Cell<'_> {
        if let Some(c) = origin_cell(&self.origin, name) {
            return c;
        }
        match name {
            "time" => Cell::Ts(self.time),
            "measurement" => Cell::Str(&self.measurement),
            "source_id" => Cell::Str(&self.source_id),
            "watermark" => Cell::Ts(self.watermark),
            "lateness_ms" => Cell::Double(self.lateness_ns as f64 / 1e6),
            "payload" => Cell::Bin(&self.payload),
            _ => Cell::Null,
        }
    }
    fn partition_time(&self) -> i64 {
        self.time
    }
}

impl Row for Point {
    fn cell(&self, name: &str) -> Cell<'_> {
        if name == "time" {
            return Cell::Ts(self.time);
        }
        if let Some(v) = self.fields.get(name) {
            return match v {
                FieldValue::F64(f) => Cell::Double(*f),
                FieldValue::I64(i) => Cell::Long(*i),
                FieldValue::U64(u) => i64::try_from(*u).map_or(Cell::Null, Cell::Long),
                FieldValue::Bool(b) => Cell::Bool(*b),
                FieldValue::Str(s) => Cell::Str(s),
            };
        }
        self.tags.get(name).map_or(Cell::Null, |s| Cell::Str(s))
    }
    fn partition_time(&self) -> i64 {
        self.time
    }
    /// One pass over the point's tags and fields instead of a map lookup per column.
    fn cells<'r>(&'r self, columns: &mut Columns<'_>, out: &mut [Cell<'r>]) {
        if let Some(i) = columns.time {
            out[i] = Cell::Ts(self.time);
        }
        for (at, (k, v)) in self.tags.iter().enumerate() {
            if let Some(i) = columns.column(at, k) {
                out[i] = Cell::Str(v);
            }
        }
        let tags = self.tags.len();
        for (at, (k, v)) in self.fields.iter().enumerate() {
            if let Some(i) = columns.column(tags + at, k) {
                out[i] = match v {
                    FieldValue::F64(f) => Cell::Double(*f),
                    FieldValue::I64(x) => Cell::Long(*x),
                    FieldValue::U64(u) => i64::try_from(*u).map_or(Cell::Null, Cell::Long),
                    FieldValue::Bool(b) => Cell::Bool(*b),
                    FieldValue::Str(s) => Cell::Str(s),
                };
            }
        }
    }
}

fn mismatch(field: &Field) -> Error {
    Error::Internal(format!(
        "column {} ({}) was given a value of another type",
        field.name(),
        field.data_type()
    ))
}

/// An Arrow column being built.
enum Builder {
    Ts(TimestampMicrosecondBuilder),
    Str(StringBuilder),
    Long(Int64Builder),
    Int(Int32Builder),
    Double(Float64Builder),
    Bool(BooleanBuilder),
    Bin(LargeBinaryBuilder),
}

impl Builder {
    fn new(field: &Field, n: usize) -> Result<Self> {
        Ok(match field.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, tz) => Builder::Ts(
                TimestampMicrosecondBuilder::with_capacity(n).with_timezone_opt(tz.clone()),
            ),
            DataType::Utf8 => Builder::Str(StringBuilder::with_capacity(n, n * 16)),
            DataType::Int64 => Builder::Long(Int64Builder::with_capacity(n)),
            DataType::Int32 => Builder::Int(Int32Builder::with_capacity(n)),
            DataType::Float64 => Builder::Double(Float64Builder::with_capacity(n)),
            DataType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(n)),
            DataType::LargeBinary => Builder::Bin(LargeBinaryBuilder::with_capacity(n, n * 64)),
            other => {
                return Err(Error::Internal(format!(
                    "column {} has type {other}, which pitwall does not write",
                    field.name()
                )));
            }
        })
    }

    fn append(&mut self, cell: Cell<'_>, field: &Field) -> Result<()> {
        match (self, cell) {
            (Builder::Ts(b), Cell::Null) => b.append_null(),
            (Builder::Str(b), Cell::Null) => b.append_null(),
            (Builder::Long(b), Cell::Null) => b.append_null(),
            (Builder::Int(b), Cell::Null) => b.append_null(),
            (Builder::Double(b), Cell::Null) => b.append_null(),
            (Builder::Bool(b), Cell::Null) => b.append_null(),
            (Builder::Bin(b), Cell::Null) => b.append_null(),
            (Builder::Ts(b), Cell::Ts(ns)) => b.append_value(ns.div_euclid(1000)),
            (Builder::Str(b), Cell::Str(s)) => b.append_value(s),
            (Builder::Long(b), Cell::Long(v)) => b.append_value(v),
            (Builder::Int(b), Cell::Int(v)) => b.append_value(v),
            (Builder::Double(b), Cell::Double(v)) => b.append_value(v),
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (Builder::Bin(b), Cell::Bin(v)) => b.append_value(v),
            _ => return Err(mismatch(field)),
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Ts(mut b) => Arc::new(b.finish()),
            Builder::Str(mut b) => Arc::new(b.finish()),
            Builder::Long(mut b) => Arc::new(b.finish()),
            Builder::Int(mut b) => Arc::new(b.finish()),
            Builder::Double(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Bin(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Rows per record batch handed to the Parquet writer.
const BATCH_ROWS: usize = 8192;

/// Builds a record batch of `rows` in `schema`, row by row into column builders.
fn batch<R: Row>(schema: &SchemaRef, rows: &[&R]) -> Result<RecordBatch> {
    let fields = schema.fields();
    let mut columns = Columns::new(schema);
    let mut builders = fields
        .iter()
        .map(|f| Builder::new(f, rows.len()))
        .collect::<Result<Vec<_>>>()?;
    let mut scratch = vec![Cell::Null; fields.len()];
    for r in rows {
        scratch.fill(Cell::Null);
        r.cells(&mut columns, &mut scratch);
        for ((b, c), f) in builders.iter_mut().zip(&scratch).zip(fields.iter()) {
            b.append(*c, f)?;
        }
    }
    let columns = builders.into_iter().map(Builder::finish).collect();
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

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

/// Rows of one table from one partition waiting for a commit, and the checkpoint of the
/// partition just before the first of them arrived.
#[derive(Debug)]
struct Pending<T> {
    /// The rows in arrival order, kept in the batches they came in: appending moves a
    /// batch, never copies rows into an ever larger buffer.
    rows: Chunks<T>,
    since: Checkpoint,
}

/// Rows as a list of batches.
#[derive(Debug)]
struct Chunks<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Chunks<T> {
    fn new(rows: Vec<T>) -> Self {
        let mut c = Chunks {
            chunks: Vec::new(),
            len: 0,
        };
        c.extend(rows);
        c
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Appends a batch.
    fn extend(&mut self, rows: Vec<T>) {
        if !rows.is_empty() {
            self.len += rows.len();
            self.chunks.push(rows);
        }
    }

    /// Appends every row of `other`.
    fn append(&mut self, other: Chunks<T>) {
        self.len += other.len;
        self.chunks.extend(other.chunks);
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

/// What one partition has buffered, per table.
#[derive(Debug)]
struct PartitionBuffer {
    /// Which taking up of the partition this is (see [`LakeWriter::finish_round`]).
    id: u64,
    /// The partition's checkpoint after everything appended so far.
    checkpoint: Checkpoint,
    raw: Option<Pending<RawRecord>>,
    clean: BTreeMap<String, Pending<Point>>,
    windows: Option<Pending<WindowRecord>>,
    anomalies: Option<Pending<AnomalyRecord>>,
    rejects: Option<Pending<RejectRecord>>,
    late: Option<Pending<LateRecord>>,
}

fn push<T>(slot: &mut Option<Pending<T>>, rows: Vec<T>, since: Checkpoint) {
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
fn by_measurement(points: Vec<Point>) -> Vec<(String, Vec<Point>)> {
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
fn put_back<T>(slot: &mut Option<Pending<T>>, older: Option<Pending<T>>) {
    if let Some(mut older) = older {
        if let Some(newer) = slot.take() {
            older.rows.append(newer.rows);
        }
        *slot = Some(older);
    }
}

impl PartitionBuffer {
    fn new(id: u64, checkpoint: Checkpoint) -> Self {
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

    fn len(&self) -> usize {
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
    fn round(&self) -> BTreeMap<String, Checkpoint> {
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
    pub fn append(&mut self, partition: &PartitionId, outputs: Outputs, checkpoint: Checkpoint) {
        self.buffered += outputs.len();
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
        let Outputs {
            raw,
            clean,
            windows,
            anomalies,
            rejects,
            late,
            duplicates: _,
        } = outputs;
        push(&mut b.raw, raw, since);
        for (measurement, rows) in by_measurement(clean) {
            match b.clean.get_mut(measurement.as_str()) {
                Some(pending) => pending.rows.extend(rows),
                None => {
                    b.clean.insert(
                        measurement,
                        Pending {
                            rows: Chunks::new(rows),
                            since,
                        },
                    );
                }
            }
        }
        push(&mut b.windows, windows, since);
        push(&mut b.anomalies, anomalies, since);
        push(&mut b.rejects, rejects, since);
        push(&mut b.late, late, since);
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
            let Some(pending) = b.clean.remove(measurement) else {
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
                .iter()
                .map(|point| RejectRecord {
                    origin: origin.clone(),
                    ingest_time: now,
                    payload: pitwall_core::json::encode(point)
                        .map(Bytes::from)
                        .unwrap_or_default(),
                    kind: pitwall_core::RejectKind::Invalid,
                    reason: reason.to_owned(),
                })
                .collect();
            moved += rows.len();
            match &mut b.rejects {
                Some(r) => {
                    r.rows.extend(rows);
                    if pending.since.replay_from < r.since.replay_from {
                        r.since = pending.since;
                    }
                }
                None => push(&mut b.rejects, rows, pending.since),
            }
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
                    let mut rows = Vec::new();
                    for (p, b) in &self.parts {
                        if let Some(pending) = &b.$field {
                            rows.extend(pending.rows.iter());
                            claimed.push(p.clone());
                        }
                    }
                    if rows.is_empty() {
                        return Ok(None);
                    }
                    let t = self.lake.table(&$fixed.ident()).await?;
                    (c.write(&t, &rows).await?, rows.len(), t)
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
                    let mut rows: Vec<&Point> = Vec::new();
                    for (p, b) in &self.parts {
                        if let Some(pending) = b.clean.get(m) {
                            rows.extend(pending.rows.iter());
                            claimed.push(p.clone());
                        }
                    }
                    if rows.is_empty() {
                        return Ok(None);
                    }
                    let t = c.clean_table(m, &rows).await?;
                    (c.write(&t, &rows).await?, rows.len(), t)
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

/// What writing data files needs, borrowed apart from the buffers.
struct Committer<'a> {
    lake: &'a Lake,
    props: &'a WriterProperties,
}

impl Committer<'_> {
    /// The clean table for `points`, created or evolved to hold their tags and fields.
    async fn clean_table(&mut self, measurement: &str, points: &[&Point]) -> Result<Table> {
        let mut tags = BTreeSet::new();
        let mut fields = BTreeMap::new();
        let mut last: Option<&Point> = None;
        for &p in points {
            // Most points of a measurement carry the same names as the one before.
            if last.is_some_and(|l| {
                l.tags.keys().eq(p.tags.keys()) && l.fields.keys().eq(p.fields.keys())
            }) {
                continue;
            }
            last = Some(p);
            for k in p.tags.keys() {
                if !tags.contains(k.as_str()) {
                    tags.insert(k.to_string());
                }
            }
            for (k, v) in &p.fields {
                if !fields.contains_key(k.as_str()) {
                    fields.insert(k.to_string(), FieldType::of(v));
                }
            }
        }
        self.lake
            .ensure_clean_table(measurement, &tags, &fields)
            .await
    }

    /// Writes one Parquet file per day of data; nothing is visible until committed.
    async fn write<R: Row>(&mut self, table: &Table, rows: &[&R]) -> Result<Vec<DataFile>> {
        let metadata = table.metadata();
        let schema = Arc::clone(metadata.current_schema());
        let arrow_schema: SchemaRef = Arc::new(schema_to_arrow_schema(&schema)?);
        let spec = metadata.default_partition_spec().as_ref().clone();
        let mut by_day: BTreeMap<i64, Vec<&R>> = BTreeMap::new();
        for r in rows {
            by_day
                .entry(r.partition_time().div_euclid(DAY_NS))
                .or_default()
                .push(r);
        }
        let builder =
            DataFileWriterBuilder::new(RollingFileWriterBuilder::new_with_default_file_size(
                ParquetWriterBuilder::new(
                    for_schema(self.props.clone(), &schema),
                    Arc::clone(&schema),
                ),
                table.file_io().clone(),
                DefaultLocationGenerator::new(metadata)?,
                DefaultFileNameGenerator::new(
                    uuid::Uuid::new_v4().to_string(),
                    None,
                    DataFileFormat::Parquet,
                ),
            ));
        let mut files: Vec<DataFile> = Vec::new();
        for (day, day_rows) in by_day {
            let day = i32::try_from(day).map_err(|_| {
                Error::Internal(format!("day {day} is out of range for a date partition"))
            })?;
            let key = PartitionKey::new(
                spec.clone(),
                Arc::clone(&schema),
                Struct::from_iter([Some(Literal::date(day))]),
            );
            let mut w = builder.build(Some(key)).await?;
            // In slices: the Parquet writer keeps only encoded pages, and the Arrow
            // columns of one slice are freed before the next is built, so a commit of a
            // million rows does not hold (and fault in) all of them as Arrow at once.
            for slice in day_rows.chunks(BATCH_ROWS) {
                w.write(batch(&arrow_schema, slice)?).await?;
            }
            files.extend(w.close().await?);
        }
        Ok(files)
    }
}

impl Lake {
    /// The live data files of `ident` in the day partitions `days`: what
    /// [`Lake::replace_days`] will take out.
    pub async fn day_files(
        &self,
        ident: &iceberg::TableIdent,
        days: &BTreeSet<i32>,
    ) -> Result<BTreeSet<String>> {
        let table = self.table(ident).await?;
        Ok(crate::commit::live_entries(&table)
            .await?
            .iter()
            .filter(|e| {
                crate::commit::partition_day(e.data_file.partition())
                    .is_some_and(|d| days.contains(&d))
            })
            .map(|e| e.file_path().to_owned())
            .collect())
    }

    /// Replaces whole day partitions of the clean tables, `metrics.windows` and
    /// `anomalies.events` with `outputs` (whose rows must all fall in `days`), one
    /// `overwrite` snapshot per table: `planned` holds, per table name, the files
    /// [`Lake::day_files`] listed when the work was planned; a table whose days gained
    /// files since is not touched ([`Error::Changed`]). Each table flips atomically; the
    /// tables one after another. Returns what each table's commit did.
    pub async fn replace_days(
        &self,
        days: &BTreeSet<i32>,
        planned: &BTreeMap<String, BTreeSet<String>>,
        outputs: &Outputs,
    ) -> Result<BTreeMap<String, crate::Rewritten>> {
        let props = parquet_properties();
        let mut c = Committer {
            lake: self,
            props: &props,
        };
        let mut by_measurement: BTreeMap<&str, Vec<&Point>> = BTreeMap::new();
        for p in &outputs.clean {
            by_measurement
                .entry(p.measurement.as_str())
                .or_default()
                .push(p);
        }
        let mut work: Vec<(iceberg::TableIdent, Vec<DataFile>)> = Vec::new();
        for (m, rows) in &by_measurement {
            let t = c.clean_table(m, rows).await?;
            work.push((t.identifier().clone(), c.write(&t, rows).await?));
        }
        for table in planned.keys().filter(|t| t.starts_with("clean.")) {
            if !by_measurement.contains_key(&table["clean.".len()..]) {
                work.push((
                    crate::tables::clean_ident(&table["clean.".len()..]),
                    Vec::new(),
                ));
            }
        }
        let windows: Vec<&WindowRecord> = outputs.windows.iter().collect();
        let t = self.table(&Fixed::Windows.ident()).await?;
        work.push((Fixed::Windows.ident(), c.write(&t, &windows).await?));
        let anomalies: Vec<&AnomalyRecord> = outputs.anomalies.iter().collect();
        let t = self.table(&Fixed::Anomalies.ident()).await?;
        work.push((Fixed::Anomalies.ident(), c.write(&t, &anomalies).await?));
        let mut done = BTreeMap::new();
        let empty = BTreeSet::new();
        for (ident, files) in work {
            let name = ident.to_string();
            let removed = planned.get(&name).unwrap_or(&empty);
            let r = crate::commit::fenced_rewrite(
                self.catalog.as_ref(),
                &self.pointer,
                &ident,
                removed,
                files,
                iceberg::spec::Operation::Overwrite,
                Some(days),
            )
            .await?;
            done.insert(name, r);
        }
        Ok(done)
    }
}

/// How pitwall writes Parquet: zstd at its default level.
pub(crate) fn parquet_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build()
}

/// `props` for the columns of `schema`: integer and timestamp columns (times, offsets,
/// counts, window bounds) delta-encoded instead of through a dictionary. Rows of one
/// series lie together, so their times and offsets step by nearly the same amount each
/// row and pack into a few bits: a third less for raw.events' offsets and ingest times,
/// a fifth less for metrics.windows and clean.car (measured on the simulator's data).
pub(crate) fn for_schema(
    props: WriterProperties,
    schema: &iceberg::spec::Schema,
) -> WriterProperties {
    use iceberg::spec::{PrimitiveType as P, Type};
    let mut b = props.into_builder();
    for f in schema.as_struct().fields() {
        if let Type::Primitive(
            P::Int
            | P::Long
            | P::Date
            | P::Timestamp
            | P::Timestamptz
            | P::TimestampNs
            | P::TimestamptzNs,
        ) = f.field_type.as_ref()
        {
            let col = parquet::schema::types::ColumnPath::from(f.name.as_str());
            b = b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, parquet::basic::Encoding::DELTA_BINARY_PACKED);
        }
    }
    b.build()
}

/// How compaction writes Parquet: the files it writes are read for a long time and
/// written once, so zstd works harder (level 9 and 8 MiB pages: about a quarter smaller
/// for raw payloads than the streaming writer's level 3 and 1 MiB pages, measured on
/// the simulator's data).
pub(crate) fn compaction_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(9).unwrap_or_default()))
        .set_data_page_size_limit(8 << 20)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points of different key layouts in one batch, in an order that makes the
    /// remembered layout wrong at every position at some point: each cell still lands
    /// in its own column (a tag and a field never share a column's place).
    #[test]
    fn points_of_changing_layouts_fill_their_own_columns() {
        use arrow_array::{Array, Float64Array, Int64Array, StringArray};
        let schema: SchemaRef = Arc::new(arrow_schema::Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
            Field::new("y", DataType::Int64, true),
        ]));
        let p = |tags: &[(&str, &str)], x: Option<f64>, y: Option<i64>, z: bool| {
            let mut p = Point::new("m", 1_000);
            for (k, v) in tags {
                p = p.tag(*k, *v);
            }
            if let Some(x) = x {
                p = p.field("x", FieldValue::F64(x));
            }
            if let Some(y) = y {
                p = p.field("y", FieldValue::I64(y));
            }
            if z {
                p = p.field("z", FieldValue::Bool(true));
            }
            p
        };
        let points = [
            p(&[("a", "1"), ("b", "2")], Some(1.5), Some(7), false),
            p(&[("a", "3"), ("b", "4")], Some(2.5), Some(8), false),
            p(&[("b", "5")], Some(3.5), None, true),
            p(&[], None, Some(9), true),
            p(&[("a", "6"), ("b", "7")], Some(4.5), Some(10), false),
            p(&[("a", "8"), ("c", "unknown")], None, None, true),
        ];
        let rows: Vec<&Point> = points.iter().collect();
        let b = batch(&schema, &rows).unwrap();
        let strings = |i: usize| {
            let c = b.column(i).as_any().downcast_ref::<StringArray>().unwrap();
            (0..c.len())
                .map(|r| c.is_valid(r).then(|| c.value(r).to_owned()))
                .collect::<Vec<_>>()
        };
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(strings(1), vec![s("1"), s("3"), None, None, s("6"), s("8")]);
        assert_eq!(strings(2), vec![s("2"), s("4"), s("5"), None, s("7"), None]);
        let x = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(
            (0..6)
                .map(|r| x.is_valid(r).then(|| x.value(r)))
                .collect::<Vec<_>>(),
            vec![Some(1.5), Some(2.5), Some(3.5), None, Some(4.5), None]
        );
        let y = b.column(4).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            (0..6)
                .map(|r| y.is_valid(r).then(|| y.value(r)))
                .collect::<Vec<_>>(),
            vec![Some(7), Some(8), None, Some(9), Some(10), None]
        );
    }

    #[test]
    fn day_of_negative_times_rounds_down() {
        assert_eq!((-1i64).div_euclid(DAY_NS), -1);
        assert_eq!(DAY_NS.div_euclid(DAY_NS), 1);
    }
}
