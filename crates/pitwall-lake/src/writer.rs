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
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use pitwall_core::record::{AnomalyRecord, LateRecord, Origin, RawRecord, RejectRecord, WindowRecord};
use pitwall_core::{FieldValue, Point};
use pitwall_stream::{FieldType, Outputs};

use crate::tables::Fixed;
use crate::{Claim, Error, Lake, Result};

/// Snapshot summary key holding the bus offsets a commit covers, as JSON:
/// `{"telemetry.raw/0": 1234, …}` where each value is the next offset to read.
pub const OFFSETS_PROPERTY: &str = "pitwall.offsets";

const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// One cell of a row, as the writer sees it.
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

/// A record that can be written as a table row.
trait Row {
    /// The value for column `name`.
    fn cell(&self, name: &str) -> Cell<'_>;
    /// The time (ns) whose day is the row's partition.
    fn partition_time(&self) -> i64;
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
            "payload_text" => Cell::Str(std::str::from_utf8(&self.payload).unwrap_or("<not UTF-8; see payload>")),
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
            "time" => Cell::Ts(self.time),
            "observed" => Cell::Double(self.observed),
            "expected" => Cell::Double(self.expected),
            "message" => Cell::Str(&self.message),
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
}

fn mismatch(field: &Field) -> Error {
    Error::Internal(format!(
        "column {} ({}) was given a value of another type",
        field.name(),
        field.data_type()
    ))
}

/// Builds one Arrow column from `rows`.
fn column<R: Row>(field: &Field, rows: &[&R]) -> Result<ArrayRef> {
    let name = field.name().as_str();
    let n = rows.len();
    macro_rules! build {
        ($builder:expr, $($pat:pat => $val:expr),+) => {{
            let mut b = $builder;
            for r in rows {
                match r.cell(name) {
                    Cell::Null => b.append_null(),
                    $($pat => b.append_value($val),)+
                    _ => return Err(mismatch(field)),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match field.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, tz) => build!(
            TimestampMicrosecondBuilder::with_capacity(n).with_timezone_opt(tz.clone()),
            Cell::Ts(ns) => ns.div_euclid(1000)
        ),
        DataType::Utf8 => build!(StringBuilder::with_capacity(n, n * 16), Cell::Str(s) => s),
        DataType::Int64 => build!(Int64Builder::with_capacity(n), Cell::Long(v) => v),
        DataType::Int32 => build!(Int32Builder::with_capacity(n), Cell::Int(v) => v),
        DataType::Float64 => build!(Float64Builder::with_capacity(n), Cell::Double(v) => v),
        DataType::Boolean => build!(BooleanBuilder::with_capacity(n), Cell::Bool(v) => v),
        DataType::LargeBinary => build!(LargeBinaryBuilder::with_capacity(n, n * 64), Cell::Bin(v) => v),
        other => {
            return Err(Error::Internal(format!(
                "column {name} has type {other}, which pitwall does not write"
            )));
        }
    })
}

fn batch<R: Row>(schema: &SchemaRef, rows: &[&R]) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| column(f, rows))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// What one commit wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Rows written per table (`namespace.table`).
    pub rows: BTreeMap<String, usize>,
    /// Data files written.
    pub files: usize,
}

impl CommitStats {
    /// Rows over all tables.
    pub fn total_rows(&self) -> usize {
        self.rows.values().sum()
    }
}

/// Buffers outputs and commits them to the lake: one Iceberg snapshot per table per
/// commit, with the bus offsets covered in the snapshot summary.
#[derive(Debug)]
pub struct LakeWriter {
    lake: Lake,
    raw: Vec<RawRecord>,
    clean: BTreeMap<String, Vec<Point>>,
    windows: Vec<WindowRecord>,
    anomalies: Vec<AnomalyRecord>,
    rejects: Vec<RejectRecord>,
    late: Vec<LateRecord>,
    /// `topic/partition` -> next offset to read, over everything appended.
    offsets: BTreeMap<String, i64>,
    /// Table name -> the offsets its newest snapshot records, as this writer knows them:
    /// what each fenced commit expects to find.
    committed: BTreeMap<String, BTreeMap<String, i64>>,
    buffered: usize,
    last_commit: Instant,
    props: WriterProperties,
}

impl LakeWriter {
    /// A writer into `lake`, claiming the offsets the lake records now.
    pub async fn open(lake: Lake) -> Result<Self> {
        let committed = lake.committed_offsets().await?;
        Ok(LakeWriter {
            committed,
            lake,
            raw: Vec::new(),
            clean: BTreeMap::new(),
            windows: Vec::new(),
            anomalies: Vec::new(),
            rejects: Vec::new(),
            late: Vec::new(),
            offsets: BTreeMap::new(),
            buffered: 0,
            last_commit: Instant::now(),
            props: WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build(),
        })
    }

    /// The newest offset per partition over every table: where a bus must resume so
    /// that no offset is reused.
    pub fn resume_offsets(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for offsets in self.committed.values() {
            for (p, o) in offsets {
                let e = out.entry(p.clone()).or_insert(*o);
                *e = (*e).max(*o);
            }
        }
        out
    }

    /// Buffers `outputs` for the next commit.
    pub fn append(&mut self, outputs: Outputs) {
        self.buffered += outputs.len();
        for r in &outputs.raw {
            let key = format!("{}/{}", r.origin.topic, r.origin.partition);
            let next = self.offsets.entry(key).or_insert(0);
            *next = (*next).max(r.origin.offset + 1);
        }
        let Outputs {
            mut raw,
            clean,
            mut windows,
            mut anomalies,
            mut rejects,
            mut late,
        } = outputs;
        self.raw.append(&mut raw);
        for p in clean {
            self.clean.entry(p.measurement.clone()).or_default().push(p);
        }
        self.windows.append(&mut windows);
        self.anomalies.append(&mut anomalies);
        self.rejects.append(&mut rejects);
        self.late.append(&mut late);
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
        self.lake.config().commit_interval.saturating_sub(self.last_commit.elapsed())
    }

    /// Writes and commits everything buffered. A table whose commit fails keeps its
    /// rows for the next attempt, so nothing buffered is lost.
    pub async fn commit(&mut self) -> Result<CommitStats> {
        self.last_commit = Instant::now();
        let mut stats = CommitStats::default();
        let summary = HashMap::from([("pitwall.writer".to_owned(), format!("pitwall {}", env!("CARGO_PKG_VERSION")))]);
        let LakeWriter {
            lake,
            raw,
            clean,
            windows,
            anomalies,
            rejects,
            late,
            offsets,
            committed,
            props,
            ..
        } = self;
        let mut c = Committer {
            lake,
            props,
            offsets,
            committed,
            summary: &summary,
        };
        let mut first_error = None;
        let mut note = |r: Result<Option<(String, usize, usize)>>, stats: &mut CommitStats| match r {
            Ok(Some((name, rows, files))) => {
                stats.rows.insert(name, rows);
                stats.files += files;
                true
            }
            Ok(None) => true,
            Err(e) => {
                first_error.get_or_insert(e);
                false
            }
        };

        if note(c.commit_fixed(Fixed::Raw, raw).await, &mut stats) {
            raw.clear();
        }
        let measurements: Vec<String> = clean.keys().cloned().collect();
        for m in measurements {
            if note(c.commit_clean(&m, &clean[&m]).await, &mut stats) {
                clean.remove(&m);
            }
        }
        if note(c.commit_fixed(Fixed::Windows, windows).await, &mut stats) {
            windows.clear();
        }
        if note(c.commit_fixed(Fixed::Anomalies, anomalies).await, &mut stats) {
            anomalies.clear();
        }
        if note(c.commit_fixed(Fixed::Rejects, rejects).await, &mut stats) {
            rejects.clear();
        }
        if note(c.commit_fixed(Fixed::Late, late).await, &mut stats) {
            late.clear();
        }
        self.buffered = self.raw.len()
            + self.clean.values().map(Vec::len).sum::<usize>()
            + self.windows.len()
            + self.anomalies.len()
            + self.rejects.len()
            + self.late.len();
        match first_error {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

/// The part of a writer a commit needs, borrowed apart from the row buffers.
struct Committer<'a> {
    lake: &'a Lake,
    props: &'a WriterProperties,
    offsets: &'a BTreeMap<String, i64>,
    committed: &'a mut BTreeMap<String, BTreeMap<String, i64>>,
    summary: &'a HashMap<String, String>,
}

impl Committer<'_> {
    async fn commit_fixed<R: Row>(&mut self, which: Fixed, rows: &[R]) -> Result<Option<(String, usize, usize)>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let ident = which.ident();
        let table = self.lake.table(&ident).await?;
        let files = self.write_and_commit(&table, rows).await?;
        Ok(Some((ident.to_string(), rows.len(), files)))
    }

    async fn commit_clean(&mut self, measurement: &str, points: &[Point]) -> Result<Option<(String, usize, usize)>> {
        if points.is_empty() {
            return Ok(None);
        }
        let mut tags = BTreeSet::new();
        let mut fields = BTreeMap::new();
        for p in points {
            for k in p.tags.keys() {
                if !tags.contains(k) {
                    tags.insert(k.clone());
                }
            }
            for (k, v) in &p.fields {
                if !fields.contains_key(k) {
                    fields.insert(k.clone(), FieldType::of(v));
                }
            }
        }
        let table = self.lake.ensure_clean_table(measurement, &tags, &fields).await?;
        let files = self.write_and_commit(&table, points).await?;
        Ok(Some((format!("clean.{measurement}"), points.len(), files)))
    }

    /// Writes one Parquet file per day of data and appends them in one fenced snapshot
    /// that moves this table's offsets from what the lake held to what was processed.
    async fn write_and_commit<R: Row>(&mut self, table: &Table, rows: &[R]) -> Result<usize> {
        let metadata = table.metadata();
        let schema = Arc::clone(metadata.current_schema());
        let arrow_schema: SchemaRef = Arc::new(schema_to_arrow_schema(&schema)?);
        let spec = metadata.default_partition_spec().as_ref().clone();
        let mut by_day: BTreeMap<i64, Vec<&R>> = BTreeMap::new();
        for r in rows {
            by_day.entry(r.partition_time().div_euclid(DAY_NS)).or_default().push(r);
        }
        let builder = DataFileWriterBuilder::new(RollingFileWriterBuilder::new_with_default_file_size(
            ParquetWriterBuilder::new(self.props.clone(), Arc::clone(&schema)),
            table.file_io().clone(),
            DefaultLocationGenerator::new(metadata)?,
            DefaultFileNameGenerator::new(uuid::Uuid::new_v4().to_string(), None, DataFileFormat::Parquet),
        ));
        let mut files: Vec<DataFile> = Vec::new();
        for (day, day_rows) in by_day {
            let day = i32::try_from(day)
                .map_err(|_| Error::Internal(format!("day {day} is out of range for a date partition")))?;
            let key = PartitionKey::new(spec.clone(), Arc::clone(&schema), Struct::from_iter([Some(Literal::date(day))]));
            let mut w = builder.build(Some(key)).await?;
            w.write(batch(&arrow_schema, &day_rows)?).await?;
            files.extend(w.close().await?);
        }
        let n = files.len();
        let name = table.identifier().to_string();
        let held = self.committed.get(&name).cloned().unwrap_or_default();
        let claim = Claim {
            expected: self
                .offsets
                .keys()
                .map(|p| (p.clone(), held.get(p).copied().unwrap_or(0)))
                .collect(),
            next: self.offsets.clone(),
        };
        self.lake.append_fenced(table.clone(), files, &claim, self.summary).await?;
        let mut now = held;
        now.extend(claim.next);
        self.committed.insert(name, now);
        Ok(n)
    }
}

/// The bus offsets recorded by the newest snapshot of `table`, if any.
pub fn committed_offsets(table: &Table) -> Option<BTreeMap<String, i64>> {
    let snapshot = table.metadata().current_snapshot()?;
    let json = snapshot.summary().additional_properties.get(OFFSETS_PROPERTY)?;
    serde_json::from_str(json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_of_negative_times_rounds_down() {
        assert_eq!((-1i64).div_euclid(DAY_NS), -1);
        assert_eq!(DAY_NS.div_euclid(DAY_NS), 1);
    }
}
