//! The lake's tables: names, Iceberg schemas and day partitioning.

use iceberg::spec::{NestedField, PrimitiveType, Schema, Transform, Type, UnboundPartitionSpec};
use iceberg::{NamespaceIdent, TableIdent};
use pitwall_core::FieldType;

use crate::{Error, Result};

/// Namespaces by stage, as the seeds lay out their buckets (raw/, clean/, anomalies/).
pub const NAMESPACES: [&str; 5] = ["raw", "clean", "metrics", "anomalies", "quarantine"];

/// The fixed tables (clean tables are made per measurement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fixed {
    /// `raw.events`: every payload as received.
    Raw,
    /// `metrics.windows`: window aggregates.
    Windows,
    /// `anomalies.events`: anomaly episodes.
    Anomalies,
    /// `quarantine.rejects`: malformed input with the reason.
    Rejects,
    /// `quarantine.late`: events past the allowed lateness.
    Late,
}

impl Fixed {
    /// Every fixed table.
    pub const ALL: [Fixed; 5] = [
        Fixed::Raw,
        Fixed::Windows,
        Fixed::Anomalies,
        Fixed::Rejects,
        Fixed::Late,
    ];

    /// `namespace.table`.
    pub fn ident(self) -> TableIdent {
        let (ns, name) = match self {
            Fixed::Raw => ("raw", "events"),
            Fixed::Windows => ("metrics", "windows"),
            Fixed::Anomalies => ("anomalies", "events"),
            Fixed::Rejects => ("quarantine", "rejects"),
            Fixed::Late => ("quarantine", "late"),
        };
        TableIdent::new(NamespaceIdent::new(ns.to_owned()), name.to_owned())
    }

    /// The Iceberg schema.
    pub fn schema(self) -> Schema {
        use PrimitiveType::{Binary, Double, Int, Long, String, Timestamptz};
        let cols: &[(&str, PrimitiveType, bool)] = match self {
            Fixed::Raw => &[
                ("ingest_time", Timestamptz, true),
                ("topic", String, true),
                ("partition", Int, true),
                ("offset", Long, true),
                ("key", String, false),
                ("payload", Binary, true),
            ],
            Fixed::Windows => &[
                ("measurement", String, true),
                ("source_id", String, true),
                ("window", String, true),
                ("window_start", Timestamptz, true),
                ("window_end", Timestamptz, true),
                ("field", String, true),
                ("count", Long, true),
                ("min", Double, true),
                ("max", Double, true),
                ("sum", Double, true),
                ("mean", Double, true),
                ("stddev", Double, false),
                ("first", Double, true),
                ("last", Double, true),
                ("p50", Double, false),
                ("p95", Double, false),
                ("p99", Double, false),
            ],
            Fixed::Anomalies => &[
                ("id", String, true),
                ("rule", String, true),
                ("kind", String, true),
                ("severity", String, true),
                ("measurement", String, true),
                ("source_id", String, true),
                ("field", String, true),
                ("phase", String, true),
                ("time", Timestamptz, true),
                ("end_time", Timestamptz, false),
                ("observed", Double, true),
                ("expected", Double, true),
                ("message", String, true),
                ("peak", Double, false),
            ],
            Fixed::Rejects => &[
                ("ingest_time", Timestamptz, true),
                ("topic", String, true),
                ("partition", Int, true),
                ("offset", Long, true),
                ("reason", String, true),
                ("payload", Binary, true),
                ("payload_text", String, true),
            ],
            Fixed::Late => &[
                ("time", Timestamptz, true),
                ("measurement", String, true),
                ("source_id", String, true),
                ("watermark", Timestamptz, true),
                ("lateness_ms", Double, true),
                ("topic", String, true),
                ("partition", Int, true),
                ("offset", Long, true),
                ("payload", Binary, true),
            ],
        };
        let fields = cols.iter().enumerate().map(|(i, (name, t, required))| {
            let id = i as i32 + 1;
            let t = Type::Primitive(t.clone());
            std::sync::Arc::new(if *required {
                NestedField::required(id, *name, t)
            } else {
                NestedField::optional(id, *name, t)
            })
        });
        Schema::builder()
            .with_fields(fields)
            .build()
            .expect("fixed table schemas are valid")
    }

    /// The columns compaction sorts a partition's rows by: rows of one source and one
    /// series side by side compress far better (measured on the simulator's data).
    pub fn sort_columns(self) -> &'static [&'static str] {
        match self {
            // A bus partition interleaves its sources; a source's payloads side by side
            // differ only in their numbers.
            Fixed::Raw | Fixed::Rejects => &["partition", "key", "offset"],
            Fixed::Windows => &[
                "measurement",
                "window",
                "source_id",
                "field",
                "window_start",
            ],
            Fixed::Anomalies | Fixed::Late => &["measurement", "source_id", "time"],
        }
    }

    /// The fixed table named `ident`, if it is one.
    pub fn of(ident: &TableIdent) -> Option<Fixed> {
        Fixed::ALL.into_iter().find(|f| f.ident() == *ident)
    }

    /// The column the table is partitioned by (day of it).
    pub fn time_column(self) -> &'static str {
        match self {
            Fixed::Raw | Fixed::Rejects => "ingest_time",
            Fixed::Windows => "window_start",
            Fixed::Anomalies | Fixed::Late => "time",
        }
    }
}

/// `clean.<measurement>`.
pub fn clean_ident(measurement: &str) -> TableIdent {
    TableIdent::new(
        NamespaceIdent::new("clean".to_owned()),
        measurement.to_owned(),
    )
}

/// The Iceberg type of a clean field.
pub fn field_type(t: FieldType) -> PrimitiveType {
    match t {
        FieldType::Float => PrimitiveType::Double,
        FieldType::Int | FieldType::UInt => PrimitiveType::Long,
        FieldType::Bool => PrimitiveType::Boolean,
        FieldType::Str => PrimitiveType::String,
    }
}

/// The clean field type of an Iceberg column, if it can hold one.
pub fn clean_field_type(t: &Type) -> Option<FieldType> {
    match t {
        Type::Primitive(PrimitiveType::Double) => Some(FieldType::Float),
        Type::Primitive(PrimitiveType::Long) => Some(FieldType::Int),
        Type::Primitive(PrimitiveType::Boolean) => Some(FieldType::Bool),
        Type::Primitive(PrimitiveType::String) => Some(FieldType::Str),
        _ => None,
    }
}

/// The columns compaction sorts a table's rows by: a fixed table's
/// [`Fixed::sort_columns`]; for a clean table, its tags (the string columns a new table
/// puts right after `time`) and then `time`, so each source's series lies together.
pub fn sort_columns(ident: &TableIdent, schema: &Schema) -> Vec<String> {
    if let Some(f) = Fixed::of(ident) {
        return f.sort_columns().iter().map(|c| (*c).to_owned()).collect();
    }
    let fields = schema.as_struct().fields();
    if fields.first().is_none_or(|f| f.name != "time") {
        return Vec::new();
    }
    let mut cols: Vec<String> = fields[1..]
        .iter()
        .take_while(|f| matches!(*f.field_type, Type::Primitive(PrimitiveType::String)))
        .map(|f| f.name.clone())
        .collect();
    cols.push("time".to_owned());
    cols
}

/// Schema of a new clean table: `time`, then tags (strings), then fields.
pub fn clean_schema<'a>(
    tags: impl IntoIterator<Item = &'a String>,
    fields: impl IntoIterator<Item = (&'a String, FieldType)>,
) -> Result<Schema> {
    let mut cols = vec![std::sync::Arc::new(NestedField::required(
        1,
        "time",
        Type::Primitive(PrimitiveType::Timestamptz),
    ))];
    for t in tags {
        let id = cols.len() as i32 + 1;
        cols.push(std::sync::Arc::new(NestedField::optional(
            id,
            t,
            Type::Primitive(PrimitiveType::String),
        )));
    }
    for (f, t) in fields {
        let id = cols.len() as i32 + 1;
        cols.push(std::sync::Arc::new(NestedField::optional(
            id,
            f,
            Type::Primitive(field_type(t)),
        )));
    }
    Schema::builder()
        .with_fields(cols)
        .build()
        .map_err(Error::from)
}

/// Day partitioning on `column` of `schema`.
pub fn day_partition(schema: &Schema, column: &str) -> Result<UnboundPartitionSpec> {
    let field = schema
        .field_by_name(column)
        .ok_or_else(|| Error::Internal(format!("no column {column} to partition by")))?;
    Ok(UnboundPartitionSpec::builder()
        .add_partition_field(field.id, format!("{column}_day"), Transform::Day)?
        .build())
}
