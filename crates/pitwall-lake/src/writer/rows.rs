//! Rows to Arrow: each record type's cells by column name, and the batches the
//! Parquet writer takes.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, SchemaRef, TimeUnit};
use pitwall_core::record::{
    AnomalyRecord, LateRecord, Origin, RawRecord, RejectRecord, WindowRecord,
};
use pitwall_core::{FieldValue, Name, Point};

use crate::{Error, Result};

pub(super) const DAY_NS: i64 = 86_400 * 1_000_000_000;

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

/// Column name -> position, looked up for every tag and field of every row: foldhash
/// rather than the standard SipHash, which cost 1.5 % of a commit's CPU.
pub(super) type ColumnIndex<'a> = HashMap<&'a str, usize, foldhash::fast::FixedState>;

/// A table's columns, as rows fill them.
pub(super) struct Columns<'a> {
    pub(super) names: Vec<&'a str>,
    pub(super) index: ColumnIndex<'a>,
    pub(super) time: Option<usize>,
    /// The column of each key of the last point (its tags, then its fields), reused
    /// while points keep the same keys in the same order, as the points of one source
    /// do: a comparison of short names instead of a hash lookup per key.
    pub(super) layout: Vec<(Name, Option<usize>)>,
}

impl<'a> Columns<'a> {
    pub(super) fn new(schema: &'a SchemaRef) -> Self {
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
    pub(super) fn column(&mut self, at: usize, key: &Name) -> Option<usize> {
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
pub(super) trait Row {
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
pub(super) fn origin_cell<'a>(origin: &'a Origin, name: &str) -> Option<Cell<'a>> {
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
    pub(super) fn new(field: &Field, n: usize) -> Result<Self> {
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

    pub(super) fn append(&mut self, cell: Cell<'_>, field: &Field) -> Result<()> {
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

    pub(super) fn finish(self) -> ArrayRef {
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
pub(super) const BATCH_ROWS: usize = 8192;

/// Builds a record batch of `rows` in `schema`, row by row into column builders.
pub(super) fn batch<R: Row>(schema: &SchemaRef, rows: &[&R]) -> Result<RecordBatch> {
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
