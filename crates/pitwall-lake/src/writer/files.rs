//! Writing data files: clean tables created or evolved to hold their points, Parquet
//! files per day partition, and the writer properties pitwall uses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_schema::SchemaRef;
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
use pitwall_core::Point;
use pitwall_core::record::{AnomalyRecord, WindowRecord};
use pitwall_core::{FieldType, Outputs};

use super::rows::{BATCH_ROWS, DAY_NS, Row, batch};
use crate::tables::Fixed;
use crate::{Error, Lake, Result};

/// What writing data files needs, borrowed apart from the buffers.
pub(super) struct Committer<'a> {
    pub(super) lake: &'a Lake,
    pub(super) props: &'a WriterProperties,
}

impl Committer<'_> {
    /// The clean table for `points`, created or evolved to hold their tags and fields.
    pub(super) async fn clean_table(
        &mut self,
        measurement: &str,
        points: &[&Point],
    ) -> Result<Table> {
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
    pub(super) async fn write<R: Row>(
        &mut self,
        table: &Table,
        rows: &[&R],
    ) -> Result<Vec<DataFile>> {
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
