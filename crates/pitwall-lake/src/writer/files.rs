//! Writing data files: clean tables created or evolved to hold their points, Parquet
//! files per day partition, and the writer properties pitwall uses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, SchemaRef, TimeUnit};
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
use pitwall_core::Outputs;

use super::buffer::TableRows;
use super::rows::{DAY_NS, clean_columns, mismatch};
use crate::tables::Fixed;
use crate::{Error, Lake, Result};

/// What writing data files needs, borrowed apart from the buffers.
pub(super) struct Committer<'a> {
    pub(super) lake: &'a Lake,
    pub(super) props: &'a WriterProperties,
}

impl Committer<'_> {
    /// The clean table for the points in `batches`, created or evolved to hold their
    /// tags and fields.
    pub(super) async fn clean_table(
        &mut self,
        measurement: &str,
        batches: &[RecordBatch],
    ) -> Result<Table> {
        let (tags, fields) = clean_columns(batches);
        self.lake
            .ensure_clean_table(measurement, &tags, &fields)
            .await
    }

    /// Writes `batches` as one Parquet file per day of `time_column`; nothing is
    /// visible until committed.
    pub(super) async fn write(
        &mut self,
        table: &Table,
        batches: &[RecordBatch],
        time_column: &str,
    ) -> Result<Vec<DataFile>> {
        let metadata = table.metadata();
        let schema = Arc::clone(metadata.current_schema());
        let arrow_schema: SchemaRef = Arc::new(schema_to_arrow_schema(&schema)?);
        let spec = metadata.default_partition_spec().as_ref().clone();
        let mut by_day: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
        for b in batches {
            for (day, rows) in by_day_of(&align(b, &arrow_schema)?, time_column)? {
                by_day.entry(day).or_default().push(rows);
            }
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
        for (day, day_batches) in by_day {
            let day = i32::try_from(day).map_err(|_| {
                Error::Internal(format!("day {day} is out of range for a date partition"))
            })?;
            let key = PartitionKey::new(
                spec.clone(),
                Arc::clone(&schema),
                Struct::from_iter([Some(Literal::date(day))]),
            );
            let mut w = builder.build(Some(key)).await?;
            for b in day_batches {
                w.write(b).await?;
            }
            files.extend(w.close().await?);
        }
        Ok(files)
    }
}

/// `batch` in the table's Arrow schema: its columns by name, a column it lacks as
/// nulls, the table's own field metadata (Iceberg field ids) and time zone.
fn align(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let have = batch.schema_ref();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let mut found = have
            .fields()
            .iter()
            .zip(batch.columns())
            .filter(|(h, _)| h.name() == f.name());
        let column = match (found.next(), found.next()) {
            (None, _) => arrow_array::new_null_array(f.data_type(), batch.num_rows()),
            (Some((h, c)), None) if same_type(h.data_type(), f.data_type()) => retag(c, f),
            _ => return Err(mismatch(f)),
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// The same Arrow type, a timestamp's time zone aside.
fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::Timestamp(u, _), DataType::Timestamp(v, _)) => u == v,
        _ => a == b,
    }
}

/// `column` with the time zone of `field` if it is a timestamp.
fn retag(column: &ArrayRef, field: &Field) -> ArrayRef {
    match (column.data_type(), field.data_type()) {
        (DataType::Timestamp(_, have), DataType::Timestamp(TimeUnit::Microsecond, want))
            if have != want =>
        {
            match column.as_any().downcast_ref::<TimestampMicrosecondArray>() {
                Some(a) => Arc::new(a.clone().with_timezone_opt(want.clone())),
                None => Arc::clone(column),
            }
        }
        _ => Arc::clone(column),
    }
}

/// The rows of `batch` by the day of `time_column`, in their order within each day.
fn by_day_of(batch: &RecordBatch, time_column: &str) -> Result<Vec<(i64, RecordBatch)>> {
    const DAY_US: i64 = DAY_NS / 1000;
    let times = batch
        .column_by_name(time_column)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| {
            Error::Internal(format!("no timestamp column {time_column} to partition by"))
        })?;
    let day = |r: usize| times.value(r).div_euclid(DAY_US);
    let n = batch.num_rows();
    if n == 0 {
        return Ok(Vec::new());
    }
    let first = day(0);
    if (1..n).all(|r| day(r) == first) {
        return Ok(vec![(first, batch.clone())]);
    }
    let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for r in 0..n {
        rows.entry(day(r)).or_default().push(r as u32);
    }
    rows.into_iter()
        .map(|(d, rows)| {
            let take = arrow_array::UInt32Array::from(rows);
            Ok((d, arrow_select::take::take_record_batch(batch, &take)?))
        })
        .collect()
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
        let mut built = TableRows::of(outputs);
        let mut work: Vec<(iceberg::TableIdent, Vec<DataFile>)> = Vec::new();
        for (m, rows) in &mut built.clean {
            let batches = rows.batches();
            let t = c.clean_table(m, batches).await?;
            work.push((t.identifier().clone(), c.write(&t, batches, "time").await?));
        }
        for table in planned.keys().filter(|t| t.starts_with("clean.")) {
            if !built.clean.contains_key(&table["clean.".len()..]) {
                work.push((
                    crate::tables::clean_ident(&table["clean.".len()..]),
                    Vec::new(),
                ));
            }
        }
        for (fixed, rows) in [
            (Fixed::Windows, built.windows),
            (Fixed::Anomalies, built.anomalies),
        ] {
            let batches = match rows {
                Some(mut r) => r.checked()?.to_vec(),
                None => Vec::new(),
            };
            let t = self.table(&fixed.ident()).await?;
            work.push((
                fixed.ident(),
                c.write(&t, &batches, fixed.time_column()).await?,
            ));
        }
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
    use arrow_array::{Array, Int64Array, StringArray};
    use arrow_schema::Schema;

    fn ts(values: &[i64], tz: Option<&str>) -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(values.to_vec()).with_timezone_opt(tz))
    }

    /// Rows of three days, out of day order: each day gets its rows in their order.
    #[test]
    fn rows_split_by_day_keep_their_order() {
        const D: i64 = DAY_NS / 1000;
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("v", DataType::Int64, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                ts(&[D + 1, 5, D + 2, -1, 7, 2 * D], None),
                Arc::new(Int64Array::from(vec![0, 1, 2, 3, 4, 5])),
            ],
        )
        .unwrap();
        let days = by_day_of(&b, "time").unwrap();
        let got: Vec<(i64, Vec<i64>)> = days
            .iter()
            .map(|(d, b)| {
                let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                (*d, v.values().to_vec())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (-1, vec![3]),
                (0, vec![1, 4]),
                (1, vec![0, 2]),
                (2, vec![5])
            ]
        );
        // One day: the batch as it is.
        let one = b.slice(1, 1);
        assert_eq!(by_day_of(&one, "time").unwrap()[0].1.num_rows(), 1);
        assert!(by_day_of(&b, "v").is_err(), "not a timestamp column");
    }

    /// Aligning to the table's schema: columns by name in the table's order, a missing
    /// one as nulls, the table's time zone; a name with values of two types refused; a
    /// required column without a value refused.
    #[test]
    fn batches_align_to_the_table_schema() {
        let table = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                false,
            ),
            Field::new("host", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let have = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("v", DataType::Int64, true),
            Field::new("extra", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            Arc::clone(&have),
            vec![
                ts(&[1, 2], None),
                Arc::new(Int64Array::from(vec![Some(7), None])),
                Arc::new(StringArray::from(vec!["a", "b"])),
            ],
        )
        .unwrap();
        let a = align(&b, &table).unwrap();
        assert_eq!(a.schema(), table);
        assert_eq!(a.column(1).null_count(), 2, "host is all nulls");
        let v = a.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((v.value(0), v.is_null(1)), (7, true));

        let twice = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("v", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            twice,
            vec![
                ts(&[1], None),
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(StringArray::from(vec![None::<&str>])),
            ],
        )
        .unwrap();
        let e = align(&b, &table).unwrap_err().to_string();
        assert!(
            e.contains("column v (Int64) was given a value of another type"),
            "{e}"
        );

        let no_time = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        assert!(align(&no_time, &table).is_err(), "time is required");
    }
}
