//! Records to Arrow, as they arrive: each table's rows are built into Arrow columns
//! when they are buffered (not held as records until the commit), and sealed into
//! record batches of [`BATCH_ROWS`] that the commit hands to the Parquet writer as they
//! are. A fixed table's rows fill the columns of its schema; a clean table's points fill
//! a column per tag and field name, made as names first appear.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use pitwall_core::record::{
    AnomalyRecord, LateRecord, Origin, RawRecord, RejectRecord, WindowRecord,
};
use pitwall_core::{FieldType, FieldValue, Name, Point};

use crate::tables::Fixed;
use crate::{Error, Result};

pub(super) const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// Rows per record batch: what the buffers seal and the Parquet writer is handed.
pub(super) const BATCH_ROWS: usize = 8192;

/// The time zone iceberg gives `timestamptz` columns in Arrow.
const UTC: &str = "+00:00";

/// One cell of a row, as the writer sees it.
#[derive(Clone, Copy)]
pub(super) enum Cell<'a> {
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

/// A record of a fixed table.
pub(super) trait Row {
    /// The columns the record fills, in the order [`Row::cell`] numbers them.
    const COLUMNS: &'static [&'static str];
    /// The value for column `COLUMNS[column]`.
    fn cell(&self, column: usize) -> Cell<'_>;
}

/// Cell `column` of the columns every table that keeps a bus message has (where it was
/// read), which its record numbers first: topic, partition, offset.
fn origin_cell(origin: &Origin, column: usize) -> Cell<'_> {
    match column {
        0 => Cell::Str(&origin.topic),
        1 => Cell::Int(origin.partition),
        _ => Cell::Long(origin.offset),
    }
}

impl Row for RawRecord {
    const COLUMNS: &'static [&'static str] = &[
        "topic",
        "partition",
        "offset",
        "ingest_time",
        "key",
        "payload",
    ];
    fn cell(&self, column: usize) -> Cell<'_> {
        match column {
            0..3 => origin_cell(&self.origin, column),
            3 => Cell::Ts(self.ingest_time),
            4 => self.key.as_deref().map_or(Cell::Null, Cell::Str),
            5 => Cell::Bin(&self.payload),
            _ => Cell::Null,
        }
    }
}

impl Row for RejectRecord {
    const COLUMNS: &'static [&'static str] = &[
        "topic",
        "partition",
        "offset",
        "ingest_time",
        "reason",
        "payload",
        "payload_text",
    ];
    fn cell(&self, column: usize) -> Cell<'_> {
        match column {
            0..3 => origin_cell(&self.origin, column),
            3 => Cell::Ts(self.ingest_time),
            4 => Cell::Str(&self.reason),
            5 => Cell::Bin(&self.payload),
            6 => {
                Cell::Str(std::str::from_utf8(&self.payload).unwrap_or("<not UTF-8; see payload>"))
            }
            _ => Cell::Null,
        }
    }
}

impl Row for WindowRecord {
    const COLUMNS: &'static [&'static str] = &[
        "measurement",
        "source_id",
        "window",
        "window_start",
        "window_end",
        "field",
        "count",
        "min",
        "max",
        "sum",
        "mean",
        "stddev",
        "first",
        "last",
        "p50",
        "p95",
        "p99",
    ];
    fn cell(&self, column: usize) -> Cell<'_> {
        match column {
            0 => Cell::Str(&self.measurement),
            1 => Cell::Str(&self.source_id),
            2 => Cell::Str(&self.window),
            3 => Cell::Ts(self.window_start),
            4 => Cell::Ts(self.window_end),
            5 => Cell::Str(&self.field),
            6 => Cell::Long(self.count as i64),
            7 => Cell::Double(self.min),
            8 => Cell::Double(self.max),
            9 => Cell::Double(self.sum),
            10 => Cell::Double(self.mean),
            11 => self.stddev.map_or(Cell::Null, Cell::Double),
            12 => Cell::Double(self.first),
            13 => Cell::Double(self.last),
            14 => self.p50.map_or(Cell::Null, Cell::Double),
            15 => self.p95.map_or(Cell::Null, Cell::Double),
            16 => self.p99.map_or(Cell::Null, Cell::Double),
            _ => Cell::Null,
        }
    }
}

impl Row for AnomalyRecord {
    const COLUMNS: &'static [&'static str] = &[
        "id",
        "rule",
        "kind",
        "severity",
        "measurement",
        "source_id",
        "field",
        "phase",
        "time",
        "end_time",
        "observed",
        "expected",
        "message",
        "peak",
    ];
    fn cell(&self, column: usize) -> Cell<'_> {
        match column {
            0 => Cell::Str(&self.id),
            1 => Cell::Str(&self.rule),
            2 => Cell::Str(&self.kind),
            3 => Cell::Str(&self.severity),
            4 => Cell::Str(&self.measurement),
            5 => Cell::Str(&self.source_id),
            6 => Cell::Str(&self.field),
            7 => Cell::Str(self.phase.as_str()),
            8 => Cell::Ts(self.time),
            9 => self.end_time.map_or(Cell::Null, Cell::Ts),
            10 => Cell::Double(self.observed),
            11 => Cell::Double(self.expected),
            12 => Cell::Str(&self.message),
            13 => Cell::Double(self.peak),
            _ => Cell::Null,
        }
    }
}

impl Row for LateRecord {
    const COLUMNS: &'static [&'static str] = &[
        "topic",
        "partition",
        "offset",
        "time",
        "measurement",
        "source_id",
        "watermark",
        "lateness_ms",
        "payload",
    ];
    fn cell(&self, column: usize) -> Cell<'_> {
        match column {
            0..3 => origin_cell(&self.origin, column),
            3 => Cell::Ts(self.time),
            4 => Cell::Str(&self.measurement),
            5 => Cell::Str(&self.source_id),
            6 => Cell::Ts(self.watermark),
            7 => Cell::Double(self.lateness_ns as f64 / 1e6),
            8 => Cell::Bin(&self.payload),
            _ => Cell::Null,
        }
    }
}

pub(super) fn mismatch(field: &Field) -> Error {
    Error::Internal(format!(
        "column {} ({}) was given a value of another type",
        field.name(),
        field.data_type()
    ))
}

/// An Arrow column being built.
pub(super) enum Builder {
    Ts(TimestampMicrosecondBuilder),
    Str(StringBuilder),
    Long(Int64Builder),
    Int(Int32Builder),
    Double(Float64Builder),
    Bool(BooleanBuilder),
    Bin(LargeBinaryBuilder),
}

impl Builder {
    pub(super) fn new(field: &Field) -> Result<Self> {
        Ok(match field.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone_opt(tz.clone()))
            }
            DataType::Utf8 => Builder::Str(StringBuilder::new()),
            DataType::Int64 => Builder::Long(Int64Builder::new()),
            DataType::Int32 => Builder::Int(Int32Builder::new()),
            DataType::Float64 => Builder::Double(Float64Builder::new()),
            DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
            DataType::LargeBinary => Builder::Bin(LargeBinaryBuilder::new()),
            other => {
                return Err(Error::Internal(format!(
                    "column {} has type {other}, which pitwall does not write",
                    field.name()
                )));
            }
        })
    }

    /// Rows appended since the last [`Self::finish`].
    pub(super) fn len(&self) -> usize {
        use arrow_array::builder::ArrayBuilder;
        match self {
            Builder::Ts(b) => b.len(),
            Builder::Str(b) => b.len(),
            Builder::Long(b) => b.len(),
            Builder::Int(b) => b.len(),
            Builder::Double(b) => b.len(),
            Builder::Bool(b) => b.len(),
            Builder::Bin(b) => b.len(),
        }
    }

    /// Appends nulls until the column has `rows` rows.
    fn pad(&mut self, rows: usize) {
        let n = rows.saturating_sub(self.len());
        if n == 0 {
            return;
        }
        match self {
            Builder::Ts(b) => b.append_nulls(n),
            Builder::Str(b) => b.append_nulls(n),
            Builder::Long(b) => b.append_nulls(n),
            Builder::Int(b) => b.append_nulls(n),
            Builder::Double(b) => b.append_nulls(n),
            Builder::Bool(b) => b.append_nulls(n),
            Builder::Bin(b) => b.append_nulls(n),
        }
    }

    /// Appends `cell`; a cell of another type than the column's is appended as a null
    /// and false returned.
    pub(super) fn append(&mut self, cell: Cell<'_>) -> bool {
        match (self, cell) {
            (Builder::Ts(b), Cell::Ts(ns)) => b.append_value(ns.div_euclid(1000)),
            (Builder::Str(b), Cell::Str(s)) => b.append_value(s),
            (Builder::Long(b), Cell::Long(v)) => b.append_value(v),
            (Builder::Int(b), Cell::Int(v)) => b.append_value(v),
            (Builder::Double(b), Cell::Double(v)) => b.append_value(v),
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (Builder::Bin(b), Cell::Bin(v)) => b.append_value(v),
            (b, c) => {
                let n = b.len() + 1;
                b.pad(n);
                return matches!(c, Cell::Null);
            }
        }
        true
    }

    /// The column built so far; the builder starts again empty.
    pub(super) fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Ts(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Long(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Double(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Bin(b) => Arc::new(b.finish()),
        }
    }
}

/// Rows being built into Arrow columns, sealed into record batches.
pub(super) trait Open {
    /// Rows not sealed yet.
    fn rows(&self) -> usize;
    /// The rows not sealed yet as one batch (`None` if there are none); the columns
    /// start again empty.
    fn seal(&mut self) -> Option<RecordBatch>;
}

/// One table's buffered rows from one partition: sealed batches in arrival order and
/// the rows being built after them.
#[derive(Debug)]
pub(super) struct Batches<B> {
    sealed: Vec<RecordBatch>,
    open: B,
    len: usize,
}

impl<B: Open> Batches<B> {
    pub(super) fn new(open: B) -> Self {
        Batches {
            sealed: Vec::new(),
            open,
            len: 0,
        }
    }

    /// Rows buffered.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn seal(&mut self) {
        if let Some(b) = self.open.seal() {
            self.sealed.push(b);
        }
    }

    /// Every row as record batches, in arrival order.
    pub(super) fn batches(&mut self) -> &[RecordBatch] {
        self.seal();
        &self.sealed
    }

    /// Appends every row of `newer` after these.
    pub(super) fn append(&mut self, mut newer: Batches<B>) {
        self.seal();
        newer.seal();
        self.len += newer.len;
        self.sealed.extend(newer.sealed);
    }

    /// Counts a row just added to the open columns; seals them when they are full.
    fn added(&mut self) {
        self.len += 1;
        if self.open.rows() >= BATCH_ROWS {
            self.seal();
        }
    }
}

/// The Arrow schema of a fixed table as its rows are built: the table's columns, all
/// nullable (whether a required column got a value is checked against the table's
/// schema when the rows are written).
fn fixed_schema(table: Fixed) -> SchemaRef {
    static SCHEMAS: OnceLock<Vec<SchemaRef>> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| {
        Fixed::ALL
            .iter()
            .map(|t| {
                let s = iceberg::arrow::schema_to_arrow_schema(&t.schema())
                    .expect("fixed table schemas convert to Arrow");
                let fields: Vec<Field> = s
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect();
                Arc::new(Schema::new(fields))
            })
            .collect()
    });
    let at = Fixed::ALL
        .iter()
        .position(|t| *t == table)
        .expect("every fixed table is in Fixed::ALL");
    Arc::clone(&all[at])
}

/// A fixed table's rows, built into the columns of its schema as they arrive.
pub(super) struct FixedRows {
    schema: SchemaRef,
    builders: Vec<Builder>,
    rows: usize,
    /// The first value of the wrong type a column was given: the commit fails with it.
    wrong: Option<String>,
}

impl std::fmt::Debug for FixedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedRows")
            .field("rows", &self.rows)
            .finish()
    }
}

impl FixedRows {
    pub(super) fn new(table: Fixed) -> Self {
        let schema = fixed_schema(table);
        let builders = schema
            .fields()
            .iter()
            .map(|f| Builder::new(f).expect("fixed tables have only types pitwall writes"))
            .collect();
        FixedRows {
            schema,
            builders,
            rows: 0,
            wrong: None,
        }
    }
}

impl Open for FixedRows {
    fn rows(&self) -> usize {
        self.rows
    }

    fn seal(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        self.rows = 0;
        let columns = self.builders.iter_mut().map(Builder::finish).collect();
        Some(
            RecordBatch::try_new(Arc::clone(&self.schema), columns)
                .expect("columns of one length in nullable fields of their own types"),
        )
    }
}

impl Batches<FixedRows> {
    /// Builds `rows` into the columns.
    pub(super) fn push<R: Row>(&mut self, rows: &[R]) {
        let fields = self.open.schema.fields().clone();
        // Each column's cell of the record, found by name once per call.
        let cells: Vec<Option<usize>> = fields
            .iter()
            .map(|f| R::COLUMNS.iter().position(|c| c == f.name()))
            .collect();
        for r in rows {
            for ((b, f), c) in self.open.builders.iter_mut().zip(fields.iter()).zip(&cells) {
                let cell = c.map_or(Cell::Null, |c| r.cell(c));
                if !b.append(cell) && self.open.wrong.is_none() {
                    self.open.wrong = Some(mismatch(f).to_string());
                }
            }
            self.open.rows += 1;
            self.added();
        }
    }

    /// Every row as record batches; an error if a column was given a value of another
    /// type than its own.
    pub(super) fn checked(&mut self) -> Result<&[RecordBatch]> {
        if let Some(e) = &self.open.wrong {
            return Err(Error::Internal(e.clone()));
        }
        Ok(self.batches())
    }
}

/// What a clean column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Long,
    Double,
    Bool,
}

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Kind::Str => DataType::Utf8,
            Kind::Long => DataType::Int64,
            Kind::Double => DataType::Float64,
            Kind::Bool => DataType::Boolean,
        }
    }
}

/// Field metadata of a clean column that holds a tag.
const TAG: &str = "pitwall.tag";
/// Field metadata of a clean column that holds a field: its [`FieldType`] in words.
const FIELD: &str = "pitwall.field";

/// One tag or field name of a measurement, of one kind.
struct PointColumn {
    name: Name,
    kind: Kind,
    tag: bool,
    /// The type of the first field value it was given (none if only ever a tag).
    field: Option<FieldType>,
    builder: Builder,
}

impl PointColumn {
    /// Sets row `row` to `cell` (nulls in the rows since the last value). A row sets a
    /// column once: a later value for the same row is ignored.
    #[inline]
    fn put(&mut self, row: usize, cell: Cell<'_>) {
        self.builder.pad(row);
        if self.builder.len() == row {
            self.builder.append(cell);
        }
    }

    fn arrow_field(&self) -> Field {
        let mut meta = HashMap::new();
        if self.tag {
            meta.insert(TAG.to_owned(), String::new());
        }
        if let Some(t) = self.field {
            meta.insert(FIELD.to_owned(), t.name().to_owned());
        }
        Field::new(self.name.as_str(), self.kind.data_type(), true).with_metadata(meta)
    }
}

/// A measurement's points, built as they arrive into a `time` column and a column per
/// tag and field name (one per kind of value, should a name carry two). A name first
/// seen mid-batch starts with nulls; every batch holds every column seen so far.
pub(super) struct PointRows {
    time: TimestampMicrosecondBuilder,
    columns: Vec<PointColumn>,
    /// Name -> its columns.
    index: HashMap<Name, Vec<usize>, foldhash::fast::FixedState>,
    /// The column of each key of the last point (its tags, then its fields), reused
    /// while points keep the same keys in the same order, as the points of one source
    /// do: a comparison of short names instead of a hash lookup per key.
    layout: Vec<(Name, Kind, usize)>,
    rows: usize,
}

impl std::fmt::Debug for PointRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointRows")
            .field("rows", &self.rows)
            .field("columns", &self.columns.len())
            .finish()
    }
}

impl Default for PointRows {
    fn default() -> Self {
        PointRows {
            time: TimestampMicrosecondBuilder::new().with_timezone(UTC),
            columns: Vec::new(),
            index: HashMap::default(),
            layout: Vec::new(),
            rows: 0,
        }
    }
}

impl PointRows {
    /// The column of `key` of `kind`, the `at`-th key of the row.
    #[inline]
    fn column(&mut self, at: usize, key: &Name, kind: Kind) -> usize {
        if let Some((n, k, c)) = self.layout.get(at)
            && *k == kind
            && n == key
        {
            return *c;
        }
        let found = self
            .index
            .get(key.as_str())
            .and_then(|cs| cs.iter().copied().find(|&c| self.columns[c].kind == kind));
        let c = found.unwrap_or_else(|| {
            let c = self.columns.len();
            let builder = Builder::new(&Field::new(key.as_str(), kind.data_type(), true))
                .expect("clean columns have types pitwall writes");
            self.columns.push(PointColumn {
                name: key.clone(),
                kind,
                tag: false,
                field: None,
                builder,
            });
            self.index.entry(key.clone()).or_default().push(c);
            c
        });
        if at < self.layout.len() {
            self.layout[at] = (key.clone(), kind, c);
        } else {
            self.layout.push((key.clone(), kind, c));
        }
        c
    }

    fn push(&mut self, point: &Point) {
        let row = self.rows;
        self.time.append_value(point.time.div_euclid(1000));
        for (at, (k, v)) in point.tags.iter().enumerate() {
            let c = self.column(at, k, Kind::Str);
            let col = &mut self.columns[c];
            col.tag = true;
            col.put(row, Cell::Str(v));
        }
        let tags = point.tags.len();
        for (at, (k, v)) in point.fields.iter().enumerate() {
            let (kind, cell) = match v {
                FieldValue::F64(f) => (Kind::Double, Cell::Double(*f)),
                FieldValue::I64(i) => (Kind::Long, Cell::Long(*i)),
                FieldValue::U64(u) => {
                    (Kind::Long, i64::try_from(*u).map_or(Cell::Null, Cell::Long))
                }
                FieldValue::Bool(b) => (Kind::Bool, Cell::Bool(*b)),
                FieldValue::Str(s) => (Kind::Str, Cell::Str(s)),
            };
            let c = self.column(tags + at, k, kind);
            let col = &mut self.columns[c];
            if col.field.is_none() {
                col.field = Some(FieldType::of(v));
            }
            col.put(row, cell);
        }
        self.rows += 1;
    }
}

impl Open for PointRows {
    fn rows(&self) -> usize {
        self.rows
    }

    fn seal(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        let rows = std::mem::take(&mut self.rows);
        let mut fields = vec![Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            true,
        )];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(self.time.finish())];
        for c in &mut self.columns {
            c.builder.pad(rows);
            fields.push(c.arrow_field());
            arrays.push(c.builder.finish());
        }
        Some(
            RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
                .expect("columns of one length in nullable fields of their own types"),
        )
    }
}

impl Batches<PointRows> {
    /// Builds `point` into the columns.
    pub(super) fn push(&mut self, point: &Point) {
        self.open.push(point);
        self.added();
    }
}

/// The tags and the fields (with the type each was first given) the clean columns of
/// `batches` hold, in the order they first appear: what the clean table must have.
pub(super) fn clean_columns(
    batches: &[RecordBatch],
) -> (
    std::collections::BTreeSet<String>,
    std::collections::BTreeMap<String, FieldType>,
) {
    let mut tags = std::collections::BTreeSet::new();
    let mut fields = std::collections::BTreeMap::new();
    let mut last: Option<&SchemaRef> = None;
    for b in batches {
        let schema = b.schema_ref();
        if last.is_some_and(|l| Arc::ptr_eq(l, schema) || l == schema) {
            continue;
        }
        last = Some(schema);
        for f in schema.fields().iter().skip(1) {
            let meta = f.metadata();
            if meta.contains_key(TAG) && !tags.contains(f.name()) {
                tags.insert(f.name().clone());
            }
            if let Some(t) = meta.get(FIELD).and_then(|t| FieldType::named(t))
                && !fields.contains_key(f.name())
            {
                fields.insert(f.name().clone(), t);
            }
        }
    }
    (tags, fields)
}

/// The points of a clean batch, back as points of `measurement` (for the rows of a
/// table given up on, kept as JSON).
pub(super) fn points_of(measurement: &str, batch: &RecordBatch) -> Vec<Point> {
    let schema = batch.schema();
    let Some(time) = batch
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
    else {
        return Vec::new();
    };
    (0..batch.num_rows())
        .map(|r| {
            let mut p = Point::new(measurement, time.value(r).saturating_mul(1000));
            for (f, c) in schema.fields().iter().zip(batch.columns()).skip(1) {
                if c.is_null(r) {
                    continue;
                }
                let any = c.as_any();
                let value = if let Some(a) = any.downcast_ref::<StringArray>() {
                    if f.metadata().contains_key(TAG) && !f.metadata().contains_key(FIELD) {
                        p.tags
                            .insert(Name::from(f.name().as_str()), Name::from(a.value(r)));
                        continue;
                    }
                    FieldValue::Str(a.value(r).to_owned())
                } else if let Some(a) = any.downcast_ref::<Int64Array>() {
                    FieldValue::I64(a.value(r))
                } else if let Some(a) = any.downcast_ref::<Float64Array>() {
                    FieldValue::F64(a.value(r))
                } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
                    FieldValue::Bool(a.value(r))
                } else {
                    continue;
                };
                p.fields.insert(Name::from(f.name().as_str()), value);
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let c = b
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        (0..c.len())
            .map(|r| c.is_valid(r).then(|| c.value(r).to_owned()))
            .collect()
    }

    /// Points of different key layouts in one batch, in an order that makes the
    /// remembered layout wrong at every position at some point: each cell still lands
    /// in its own column (a tag and a field never share a column's place), names first
    /// seen mid-batch start with nulls, and a name given two kinds of value keeps each
    /// in a column of its own.
    #[test]
    fn points_of_changing_layouts_fill_their_own_columns() {
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
            p(&[("a", "8"), ("c", "new")], None, None, true),
            Point::new("m", 2_000).field("x", FieldValue::Str("text".into())),
        ];
        let mut rows = Batches::new(PointRows::default());
        for p in &points {
            rows.push(p);
        }
        assert_eq!(rows.len(), 7);
        let batches = rows.batches().to_vec();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            strings(b, "a"),
            vec![s("1"), s("3"), None, None, s("6"), s("8"), None]
        );
        assert_eq!(
            strings(b, "b"),
            vec![s("2"), s("4"), s("5"), None, s("7"), None, None]
        );
        assert_eq!(
            strings(b, "c"),
            vec![None, None, None, None, None, s("new"), None]
        );
        let x = b
            .column_by_name("x")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(
            (0..7)
                .map(|r| x.is_valid(r).then(|| x.value(r)))
                .collect::<Vec<_>>(),
            vec![Some(1.5), Some(2.5), Some(3.5), None, Some(4.5), None, None]
        );
        let y = b
            .column_by_name("y")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(
            (0..7)
                .map(|r| y.is_valid(r).then(|| y.value(r)))
                .collect::<Vec<_>>(),
            vec![Some(7), Some(8), None, Some(9), Some(10), None, None]
        );
        // The text given to x is a column of its own, after the others.
        let text: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name() == "x")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(text.len(), 2);
        let t = b
            .column(text[1])
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(t.value(6), "text");
        assert_eq!(t.null_count(), 6);
        // What the clean table must hold: the first type each field was given.
        let (tags, fields) = clean_columns(&batches);
        assert_eq!(tags.into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(
            fields.into_iter().collect::<Vec<_>>(),
            [
                ("x".to_owned(), FieldType::Float),
                ("y".to_owned(), FieldType::Int),
                ("z".to_owned(), FieldType::Bool)
            ]
        );
        // And back to points, as quarantine keeps them.
        let back = points_of("m", b);
        assert_eq!(back[..6], points[..6]);
        assert_eq!(back[6].fields["x"], FieldValue::Str("text".into()));
    }

    /// Rows seal into batches of BATCH_ROWS; a batch holds the columns known by then,
    /// and appending one buffer to another keeps the order.
    #[test]
    fn batches_seal_when_full_and_append_in_order() {
        let mut rows = Batches::new(PointRows::default());
        for i in 0..BATCH_ROWS + 10 {
            let mut p = Point::new("m", i as i64 * 1000).field("v", FieldValue::I64(i as i64));
            if i == BATCH_ROWS + 5 {
                p = p.tag("late", "yes");
            }
            rows.push(&p);
        }
        let mut newer = Batches::new(PointRows::default());
        newer.push(&Point::new("m", 0).field("v", FieldValue::I64(-1)));
        rows.append(newer);
        assert_eq!(rows.len(), BATCH_ROWS + 11);
        let b = rows.batches();
        assert_eq!(
            b.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
            [BATCH_ROWS, 10, 1]
        );
        assert!(b[0].column_by_name("late").is_none());
        assert_eq!(strings(&b[1], "late")[5].as_deref(), Some("yes"));
        let v = b[2]
            .column_by_name("v")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(v.value(0), -1);
    }

    /// Every column of a fixed table is filled by its record, and every column a record
    /// names is one of its table's.
    #[test]
    fn records_fill_every_column_of_their_table() {
        fn check<R: Row>(table: Fixed) {
            let schema = fixed_schema(table);
            let mut want: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let mut have = R::COLUMNS.to_vec();
            want.sort_unstable();
            have.sort_unstable();
            assert_eq!(have, want, "{table:?}");
        }
        check::<RawRecord>(Fixed::Raw);
        check::<WindowRecord>(Fixed::Windows);
        check::<AnomalyRecord>(Fixed::Anomalies);
        check::<RejectRecord>(Fixed::Rejects);
        check::<LateRecord>(Fixed::Late);
    }

    #[test]
    fn day_of_negative_times_rounds_down() {
        assert_eq!((-1i64).div_euclid(DAY_NS), -1);
        assert_eq!(DAY_NS.div_euclid(DAY_NS), 1);
    }
}
