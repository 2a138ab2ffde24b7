//! Normalization: SQL-friendly names and one type per field of a measurement.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use pitwall_core::{FieldValue, Point};

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

    fn name(self) -> &'static str {
        match self {
            FieldType::Float => "float",
            FieldType::Int => "integer",
            FieldType::UInt => "unsigned integer",
            FieldType::Bool => "boolean",
            FieldType::Str => "string",
        }
    }
}

/// Field types per measurement, shared by every partition so all agree on a table's
/// columns. Seeded from existing tables at start; a new field takes the type it is
/// first seen with.
#[derive(Debug, Clone, Default)]
pub struct SchemaRegistry {
    inner: Arc<RwLock<HashMap<String, BTreeMap<String, FieldType>>>>,
}

impl SchemaRegistry {
    /// Declares the field types of `measurement` (e.g. from its existing table).
    pub fn seed(&self, measurement: &str, fields: impl IntoIterator<Item = (String, FieldType)>) {
        let mut g = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.entry(measurement.to_owned()).or_default().extend(fields);
    }

    /// The known field types of `measurement`.
    pub fn fields(&self, measurement: &str) -> BTreeMap<String, FieldType> {
        let g = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.get(measurement).cloned().unwrap_or_default()
    }

    /// Brings every field of `point` to its registered type, registering new fields.
    /// Integers become floats in float columns, integral floats become integers in
    /// integer columns; anything else is an error that says which field and why.
    pub fn conform(&self, point: &mut Point) -> Result<(), String> {
        for (name, value) in &point.fields {
            if let FieldValue::U64(u) = value
                && *u > i64::MAX as u64
            {
                return Err(format!(
                    "field {name:?} is {u}, above the largest integer the lake stores ({})",
                    i64::MAX
                ));
            }
        }
        {
            let g = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(known) = g.get(&point.measurement) {
                let mut all_known = true;
                for (name, value) in &mut point.fields {
                    match known.get(name.as_str()) {
                        Some(&t) => coerce(name, value, t)?,
                        None => all_known = false,
                    }
                }
                if all_known {
                    return Ok(());
                }
            }
        }
        let mut g = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = g.entry(point.measurement.clone()).or_default();
        for (name, value) in &mut point.fields {
            match known.get(name.as_str()) {
                Some(&t) => coerce(name, value, t)?,
                None => {
                    known.insert(name.to_string(), FieldType::of(value));
                }
            }
        }
        Ok(())
    }
}

fn coerce(name: &str, value: &mut FieldValue, want: FieldType) -> Result<(), String> {
    let have = FieldType::of(value);
    if have == want {
        return Ok(());
    }
    let converted = match (&*value, want) {
        (FieldValue::I64(i), FieldType::Float) => Some(FieldValue::F64(*i as f64)),
        (FieldValue::U64(u), FieldType::Float) => Some(FieldValue::F64(*u as f64)),
        (FieldValue::F64(f), FieldType::Int) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Some(FieldValue::I64(*f as i64))
        }
        (FieldValue::U64(u), FieldType::Int) => i64::try_from(*u).ok().map(FieldValue::I64),
        (FieldValue::I64(i), FieldType::UInt) => u64::try_from(*i).ok().map(FieldValue::U64),
        _ => None,
    };
    match converted {
        Some(v) => {
            *value = v;
            Ok(())
        }
        None => Err(format!(
            "field {name:?} is a {} ({value}), but the table stores it as {}",
            have.name(),
            want.name()
        )),
    }
}

/// A name as a SQL-friendly column or table name: lower case, `[a-z0-9_]` only.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars() {
        let c = c.to_ascii_lowercase();
        out.push(if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' });
    }
    out
}

/// Normalizes the names of a point in place; returns an error if two names collide.
pub fn normalize_names(point: &mut Point) -> Result<(), String> {
    let is_clean = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if !is_clean(&point.measurement) {
        point.measurement = normalize_name(&point.measurement);
        if point.measurement.is_empty() || point.measurement.bytes().all(|b| b == b'_') {
            return Err("the measurement name has no letters or digits".into());
        }
    }
    if !point.tags.keys().all(|k| is_clean(k)) {
        let n = point.tags.len();
        point.tags = std::mem::take(&mut point.tags)
            .into_iter()
            .map(|(k, v)| (normalize_name(&k).into(), v))
            .collect();
        if point.tags.len() != n {
            return Err("two tag keys are the same once lower-cased".into());
        }
    }
    if !point.fields.keys().all(|k| is_clean(k)) {
        let n = point.fields.len();
        point.fields = std::mem::take(&mut point.fields)
            .into_iter()
            .map(|(k, v)| (normalize_name(&k).into(), v))
            .collect();
        if point.fields.len() != n {
            return Err("two field keys are the same once lower-cased".into());
        }
    }
    for reserved in ["time"] {
        if point.tags.contains_key(reserved) || point.fields.contains_key(reserved) {
            return Err(format!("{reserved:?} is reserved for the event time; rename the tag or field"));
        }
    }
    if let Some(k) = point.tags.keys().find(|k| point.fields.contains_key(*k)) {
        return Err(format!("{k:?} is both a tag and a field; rename one"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_sql_friendly() {
        assert_eq!(normalize_name("Engine Temp (C)"), "engine_temp__c_");
        let mut p = Point::new("CPU", 0).tag("Host", "a").field("Usage Idle", FieldValue::F64(1.0));
        normalize_names(&mut p).unwrap();
        assert_eq!(p.measurement, "cpu");
        assert!(p.tags.contains_key("host") && p.fields.contains_key("usage_idle"));
        let mut p = Point::new("m", 0).tag("a", "x").field("a", FieldValue::F64(1.0));
        assert_eq!(normalize_names(&mut p).unwrap_err(), "\"a\" is both a tag and a field; rename one");
    }

    #[test]
    fn types_follow_the_first_sighting() {
        let reg = SchemaRegistry::default();
        let mut p = Point::new("m", 0).field("rpm", FieldValue::I64(5));
        reg.conform(&mut p).unwrap();
        let mut p = Point::new("m", 0).field("rpm", FieldValue::F64(7.0));
        reg.conform(&mut p).unwrap();
        assert_eq!(p.fields["rpm"], FieldValue::I64(7));
        let mut p = Point::new("m", 0).field("rpm", FieldValue::F64(7.5));
        assert_eq!(
            reg.conform(&mut p).unwrap_err(),
            "field \"rpm\" is a float (7.5), but the table stores it as integer"
        );
        let mut p = Point::new("m", 0).field("rpm", FieldValue::Str("x".into()));
        assert!(reg.conform(&mut p).is_err());
        let mut p = Point::new("m", 0).field("big", FieldValue::U64(u64::MAX));
        assert!(reg.conform(&mut p).unwrap_err().contains("above the largest integer"));
    }
}
