use std::fmt;

use serde::{Deserialize, Serialize};

use crate::map::{Name, SortedMap};
use crate::{Error, Result};

/// A typed field value, as InfluxDB line protocol defines them. Serialized as a plain
/// JSON value; deserialized with integers kept as integers (signed unless above
/// `i64::MAX`) and floats as floats.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// 64-bit float (line protocol: no suffix).
    F64(f64),
    /// Signed integer (line protocol: `i` suffix).
    I64(i64),
    /// Unsigned integer (line protocol: `u` suffix).
    U64(u64),
    /// Boolean (line protocol: `t`, `true`, `F`, ...).
    Bool(bool),
    /// UTF-8 string (line protocol: double-quoted).
    Str(String),
}

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FieldValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, a boolean or a string")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<FieldValue, E> {
                Ok(FieldValue::F64(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FieldValue, E> {
                Ok(FieldValue::I64(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FieldValue, E> {
                Ok(match i64::try_from(v) {
                    Ok(i) => FieldValue::I64(i),
                    Err(_) => FieldValue::U64(v),
                })
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<FieldValue, E> {
                Ok(FieldValue::Bool(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FieldValue, E> {
                Ok(FieldValue::Str(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<FieldValue, E> {
                Ok(FieldValue::Str(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl FieldValue {
    /// The value as a float, for numeric aggregation; `None` for strings and booleans.
    #[inline]
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            FieldValue::F64(v) => Some(v),
            FieldValue::I64(v) => Some(v as f64),
            FieldValue::U64(v) => Some(v as f64),
            FieldValue::Bool(_) | FieldValue::Str(_) => None,
        }
    }

    /// A short name of the type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::F64(_) => "float",
            FieldValue::I64(_) => "integer",
            FieldValue::U64(_) => "unsigned integer",
            FieldValue::Bool(_) => "boolean",
            FieldValue::Str(_) => "string",
        }
    }
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::F64(v) => write!(f, "{v}"),
            FieldValue::I64(v) => write!(f, "{v}"),
            FieldValue::U64(v) => write!(f, "{v}"),
            FieldValue::Bool(v) => write!(f, "{v}"),
            FieldValue::Str(v) => write!(f, "{v:?}"),
        }
    }
}

/// One telemetry point: the unit every pitwall stage passes on.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// What is measured (`car`, `sensor`, `cpu`, ...); one clean table each.
    pub measurement: String,
    /// Identifying string dimensions, sorted by key.
    pub tags: SortedMap<Name, Name>,
    /// The measured values, sorted by name; at least one.
    pub fields: SortedMap<Name, FieldValue>,
    /// Event time in nanoseconds since the Unix epoch.
    pub time: i64,
}

impl Point {
    /// An empty point of `measurement` at `time` (ns); add tags and fields with the builders.
    pub fn new(measurement: impl Into<String>, time: i64) -> Self {
        Point {
            measurement: measurement.into(),
            tags: SortedMap::new(),
            fields: SortedMap::new(),
            time,
        }
    }

    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, key: impl Into<Name>, value: impl Into<Name>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Adds a field.
    #[must_use]
    pub fn field(mut self, key: impl Into<Name>, value: FieldValue) -> Self {
        self.fields.insert(key.into(), value);
        self
    }

    /// Checks what every codec and table relies on: a measurement, at least one field,
    /// no empty keys, finite floats.
    pub fn validate(&self) -> Result<()> {
        if self.measurement.is_empty() {
            return Err(Error::Invalid("the measurement name is empty".into()));
        }
        if self.fields.is_empty() {
            return Err(Error::Invalid(format!(
                "measurement {:?} has no fields; a point needs at least one",
                self.measurement
            )));
        }
        if self.tags.keys().any(|k| k.is_empty()) {
            return Err(Error::Invalid("a tag has an empty key".into()));
        }
        for (k, v) in &self.fields {
            if k.is_empty() {
                return Err(Error::Invalid("a field has an empty key".into()));
            }
            if let FieldValue::F64(f) = v
                && !f.is_finite()
            {
                return Err(Error::Invalid(format!(
                    "field {k:?} is {f}; only finite floats are allowed"
                )));
            }
        }
        Ok(())
    }
}

/// The unit of a timestamp in line protocol or JSON input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Hours (InfluxDB 1.x's `precision=h`).
    H,
    /// Minutes (InfluxDB 1.x's `precision=m`).
    M,
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds (the line-protocol default).
    #[default]
    Ns,
}

impl Precision {
    /// Nanoseconds in one unit.
    pub fn nanos(self) -> i64 {
        match self {
            Precision::H => 3_600_000_000_000,
            Precision::M => 60_000_000_000,
            Precision::S => 1_000_000_000,
            Precision::Ms => 1_000_000,
            Precision::Us => 1_000,
            Precision::Ns => 1,
        }
    }

    /// Converts a timestamp in this unit to nanoseconds; `None` on overflow.
    pub fn to_nanos(self, value: i64) -> Option<i64> {
        value.checked_mul(self.nanos())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "h" => Ok(Precision::H),
            "m" => Ok(Precision::M),
            "s" => Ok(Precision::S),
            "ms" => Ok(Precision::Ms),
            "us" | "u" => Ok(Precision::Us),
            "ns" | "n" => Ok(Precision::Ns),
            other => Err(format!(
                "unknown precision {other:?}; use h, m, s, ms, us or ns"
            )),
        }
    }
}

/// The column type a field has in its clean table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// 64-bit float.
    Float,
    /// Signed 64-bit integer.
    Int,
    /// Unsigned integer (stored as a signed 64-bit column).
    UInt,
    /// Boolean.
    Bool,
    /// String.
    Str,
}

impl FieldType {
    /// The type of a value.
    pub fn of(v: &FieldValue) -> Self {
        match v {
            FieldValue::F64(_) => FieldType::Float,
            FieldValue::I64(_) => FieldType::Int,
            FieldValue::U64(_) => FieldType::UInt,
            FieldValue::Bool(_) => FieldType::Bool,
            FieldValue::Str(_) => FieldType::Str,
        }
    }

    /// Every type.
    pub const ALL: [FieldType; 5] = [
        FieldType::Float,
        FieldType::Int,
        FieldType::UInt,
        FieldType::Bool,
        FieldType::Str,
    ];

    /// The type whose [`Self::name`] is `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The type in words, for errors.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Float => "float",
            FieldType::Int => "integer",
            FieldType::UInt => "unsigned integer",
            FieldType::Bool => "boolean",
            FieldType::Str => "string",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A type's name (as the lake's column metadata keeps it) gives the type back;
    /// anything else gives none.
    #[test]
    fn field_types_come_back_from_their_names() {
        for t in FieldType::ALL {
            assert_eq!(FieldType::named(t.name()), Some(t));
        }
        let names: std::collections::BTreeSet<_> =
            FieldType::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), FieldType::ALL.len(), "names are distinct");
        assert_eq!(FieldType::named("Float"), None);
        assert_eq!(FieldType::named(""), None);
    }
}
