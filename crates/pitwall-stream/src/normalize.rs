//! Normalization: SQL-friendly names and one type per field of a measurement.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use pitwall_core::{FieldType, FieldValue, Point, RejectKind};

/// Why a point does not fit its table: the kind and the reason in words.
pub type Conflict = (RejectKind, String);

fn invalid(reason: String) -> Conflict {
    (RejectKind::Invalid, reason)
}

fn conflict(reason: String) -> Conflict {
    (RejectKind::TypeConflict, reason)
}

/// Tables and columns writes may create (`lake.max-tables`, `lake.max-columns`): one
/// client must not be able to make thousands of tables or columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaLimits {
    /// Clean tables (measurements) in all.
    pub max_tables: usize,
    /// Columns (tags and fields) per clean table.
    pub max_columns: usize,
}

impl Default for SchemaLimits {
    fn default() -> Self {
        SchemaLimits {
            max_tables: 500,
            max_columns: 500,
        }
    }
}

/// Column types per measurement, shared by every partition so all agree on a table's
/// columns. Seeded from existing tables at start; a new field takes the type it is
/// first seen with, and a tag registers as a string column, so a tag can never take the
/// name of a numeric field (or the reverse) and fail the table's commit later.
#[derive(Debug, Clone, Default)]
pub struct SchemaRegistry {
    inner: Arc<RwLock<HashMap<String, BTreeMap<String, FieldType>>>>,
    limits: SchemaLimits,
}

impl SchemaRegistry {
    /// An empty registry that admits at most `limits` tables and columns.
    pub fn with_limits(limits: SchemaLimits) -> Self {
        SchemaRegistry {
            inner: Arc::default(),
            limits,
        }
    }

    /// Checks `point` (with normalized names) against the known columns without
    /// registering anything: what the write API can tell a client at once.
    pub fn check(&self, point: &Point) -> Result<(), String> {
        check_unsigned(point)?;
        let g = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(known) = g.get(&point.measurement) else {
            if g.len() >= self.limits.max_tables {
                return Err(too_many_tables(&point.measurement, self.limits.max_tables));
            }
            return Ok(());
        };
        check_tags(point, |name| known.get(name).copied())?;
        let mut new = 0;
        for (name, value) in &point.fields {
            match known.get(name.as_str()) {
                Some(&t) => {
                    coerce(name, &mut value.clone(), t)?;
                }
                None => new += 1,
            }
        }
        new += point
            .tags
            .keys()
            .filter(|k| !known.contains_key(k.as_str()))
            .count();
        if new > 0 && known.len() + new > self.limits.max_columns {
            return Err(too_many_columns(
                &point.measurement,
                self.limits.max_columns,
            ));
        }
        Ok(())
    }

    /// Declares the field types of `measurement` (e.g. from its existing table).
    pub fn seed(&self, measurement: &str, fields: impl IntoIterator<Item = (String, FieldType)>) {
        let mut g = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.entry(measurement.to_owned()).or_default().extend(fields);
    }

    /// The known field types of `measurement`.
    pub fn fields(&self, measurement: &str) -> BTreeMap<String, FieldType> {
        let g = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.get(measurement).cloned().unwrap_or_default()
    }

    /// Brings every field of `point` to its registered type, registering new fields.
    /// Integers become floats in float columns, integral floats become integers in
    /// integer columns; anything else is an error that says which field and why.
    pub fn conform(&self, point: &mut Point) -> Result<(), Conflict> {
        check_unsigned(point).map_err(invalid)?;
        {
            let g = self
                .inner
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(known) = g.get(&point.measurement) {
                check_tags(point, |name| known.get(name).copied()).map_err(conflict)?;
                let mut all_known = point.tags.keys().all(|k| known.contains_key(k.as_str()));
                for (name, value) in &mut point.fields {
                    match known.get(name.as_str()) {
                        Some(&t) => coerce(name, value, t).map_err(conflict)?,
                        None => all_known = false,
                    }
                }
                if all_known {
                    return Ok(());
                }
            }
        }
        let mut g = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !g.contains_key(&point.measurement) && g.len() >= self.limits.max_tables {
            return Err(invalid(too_many_tables(
                &point.measurement,
                self.limits.max_tables,
            )));
        }
        let known = g.entry(point.measurement.clone()).or_default();
        // Checked again under the write lock: another partition may have registered
        // these names meanwhile.
        check_tags(point, |name| known.get(name).copied()).map_err(conflict)?;
        let mut added = Vec::new();
        for (name, value) in &mut point.fields {
            match known.get(name.as_str()) {
                Some(&t) => coerce(name, value, t).map_err(conflict)?,
                None => added.push((name.to_string(), FieldType::of(value))),
            }
        }
        for k in point.tags.keys() {
            if !known.contains_key(k.as_str()) {
                added.push((k.to_string(), FieldType::Str));
            }
        }
        if known.len() + added.len() > self.limits.max_columns {
            let empty = known.is_empty();
            if empty {
                g.remove(&point.measurement);
            }
            return Err(invalid(too_many_columns(
                &point.measurement,
                self.limits.max_columns,
            )));
        }
        known.extend(added);
        Ok(())
    }
}

/// Fails when a tag takes the name of a column the table holds as a non-string field.
fn check_tags(point: &Point, known: impl Fn(&str) -> Option<FieldType>) -> Result<(), String> {
    for k in point.tags.keys() {
        if let Some(t) = known(k.as_str())
            && t != FieldType::Str
        {
            return Err(format!(
                "tag {k:?}: the table clean.{} holds {k:?} as a {} field; rename the tag",
                point.measurement,
                t.name()
            ));
        }
    }
    Ok(())
}

fn too_many_tables(measurement: &str, limit: usize) -> String {
    format!(
        "measurement {measurement:?} would be a new table, and the lake already has {limit} (lake.max-tables); write to an existing measurement or raise the limit"
    )
}

fn too_many_columns(measurement: &str, limit: usize) -> String {
    format!(
        "the point would give clean.{measurement} more than {limit} columns (lake.max-columns); put varying names in tag values, not in tag or field keys"
    )
}

/// Fails on an unsigned field above the largest integer the lake's columns hold.
fn check_unsigned(point: &Point) -> Result<(), String> {
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
    Ok(())
}

/// One processor's copy of the registry's field types, read without a lock and walked
/// beside a point's sorted fields: one name comparison per field instead of a tree
/// search under a lock. A field type never changes once registered, so the copy is right
/// for every field it has; a field it lacks sends the point to the registry, and the copy
/// is taken again.
#[derive(Debug)]
pub struct LocalSchemas {
    registry: SchemaRegistry,
    /// Per measurement, its known fields sorted by name.
    known: HashMap<pitwall_core::Name, Known>,
}

/// A measurement's known fields, and the names of the last point found all known.
#[derive(Debug, Default)]
struct Known {
    fields: Vec<(pitwall_core::Name, FieldType)>,
    /// The last point's tag names, then its field names: the points of one source
    /// repeat them, so a point with the same names is checked by comparing each name
    /// once against these instead of walking `fields`.
    layout: Vec<pitwall_core::Name>,
    /// The type of each field of `layout` (after its tags).
    types: Vec<FieldType>,
    tags: usize,
}

impl Known {
    /// True if `point` has the names of the last point found all known, in order.
    fn same_layout(&self, point: &Point) -> bool {
        self.tags == point.tags.len()
            && self.layout.len() == self.tags + point.fields.len()
            && point
                .tags
                .keys()
                .chain(point.fields.keys())
                .zip(&self.layout)
                .all(|(a, b)| a == b)
    }

    /// Remembers `point`'s names as the layout, its fields of `types`.
    fn remember(&mut self, point: &Point, types: Vec<FieldType>) {
        self.layout.clear();
        self.layout
            .extend(point.tags.keys().chain(point.fields.keys()).cloned());
        self.tags = point.tags.len();
        self.types = types;
    }
}

impl LocalSchemas {
    /// A copy of `registry`, filled as points arrive.
    pub fn new(registry: SchemaRegistry) -> Self {
        LocalSchemas {
            registry,
            known: HashMap::new(),
        }
    }

    /// [`SchemaRegistry::conform`], answered from the copy when it knows every field.
    pub fn conform(&mut self, point: &mut Point) -> Result<(), Conflict> {
        check_unsigned(point).map_err(invalid)?;
        if let Some(known) = self.known.get_mut(point.measurement.as_str()) {
            if known.same_layout(point) {
                for ((name, value), t) in point.fields.iter_mut().zip(&known.types) {
                    coerce(name, value, *t).map_err(conflict)?;
                }
                return Ok(());
            }
            let mut all_known = true;
            let mut k = known.fields.iter().peekable();
            for name in point.tags.keys() {
                while k.next_if(|(n, _)| n < name).is_some() {}
                match k.peek() {
                    Some((n, FieldType::Str)) if n == name => {}
                    // A known name that is no string: the registry says why.
                    _ => {
                        all_known = false;
                        break;
                    }
                }
            }
            let mut types = Vec::with_capacity(point.fields.len());
            let mut k = known.fields.iter().peekable();
            for (name, value) in &mut point.fields {
                if !all_known {
                    break;
                }
                while k.next_if(|(n, _)| n < name).is_some() {}
                match k.peek() {
                    Some((n, t)) if n == name => {
                        coerce(name, value, *t).map_err(conflict)?;
                        types.push(*t);
                    }
                    _ => {
                        all_known = false;
                        break;
                    }
                }
            }
            if all_known {
                known.remember(point, types);
                return Ok(());
            }
        }
        self.registry.conform(point)?;
        let fields = self.registry.fields(&point.measurement);
        self.known.insert(
            point.measurement.as_str().into(),
            Known {
                fields: fields.into_iter().map(|(n, t)| (n.into(), t)).collect(),
                ..Known::default()
            },
        );
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

/// Longest measurement, tag or field name, in bytes (after normalization, so ASCII):
/// a measurement names a table and its directory, where file systems allow 255.
pub const MAX_NAME_BYTES: usize = 128;

/// A name as a SQL-friendly column or table name: lower case, `[a-z0-9_]` only.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars() {
        let c = c.to_ascii_lowercase();
        out.push(if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        });
    }
    out
}

/// Normalizes the names of a point in place; returns an error if two names collide.
pub fn normalize_names(point: &mut Point) -> Result<(), String> {
    if !is_normal_name(&point.measurement) {
        point.measurement = normalize_name(&point.measurement);
        if point.measurement.is_empty() || point.measurement.bytes().all(|b| b == b'_') {
            return Err("the measurement name has no letters or digits".into());
        }
    }
    if !point.tags.keys().all(|k| is_normal_name(k)) {
        let n = point.tags.len();
        point.tags = std::mem::take(&mut point.tags)
            .into_iter()
            .map(|(k, v)| (normalize_name(&k).into(), v))
            .collect();
        if point.tags.len() != n {
            return Err("two tag keys are the same once lower-cased".into());
        }
    }
    if !point.fields.keys().all(|k| is_normal_name(k)) {
        let n = point.fields.len();
        point.fields = std::mem::take(&mut point.fields)
            .into_iter()
            .map(|(k, v)| (normalize_name(&k).into(), v))
            .collect();
        if point.fields.len() != n {
            return Err("two field keys are the same once lower-cased".into());
        }
    }
    check_names(point)
}

/// True when `name` is already what [`normalize_name`] makes it.
fn is_normal_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// True when `point`'s names are already what [`normalize_names`] makes them.
pub fn names_are_normal(point: &Point) -> bool {
    is_normal_name(&point.measurement)
        && point.tags.keys().all(|k| is_normal_name(k))
        && point.fields.keys().all(|k| is_normal_name(k))
}

/// Checks normalized names: none reserved, none too long, no name both a tag and a field.
pub fn check_names(point: &Point) -> Result<(), String> {
    let reserved =
        |k: &pitwall_core::Name| (k.len() == 4 && k == "time") || (k.len() == 8 && k == "time_day");
    if let Some(k) = point
        .tags
        .keys()
        .chain(point.fields.keys())
        .find(|k| reserved(k))
    {
        return Err(format!(
            "{k:?} is reserved (\"time\" for the event time, \"time_day\" for the tables' day partition); rename the tag or field"
        ));
    }
    if point.measurement.len() > MAX_NAME_BYTES {
        return Err(format!(
            "the measurement name is {} bytes long; names are at most {MAX_NAME_BYTES} (it names a table and a directory)",
            point.measurement.len()
        ));
    }
    if let Some(k) = point
        .tags
        .keys()
        .chain(point.fields.keys())
        .find(|k| k.len() > MAX_NAME_BYTES)
    {
        return Err(format!(
            "the tag or field name {:?}... is {} bytes long; names are at most {MAX_NAME_BYTES}",
            &k[..32],
            k.len()
        ));
    }
    // A name both a tag and a field: a filter of the field names' first and last bytes
    // and lengths rules out almost every tag without comparing names.
    let sketch = |k: &str| {
        let b = k.as_bytes();
        let h = (usize::from(b.first().copied().unwrap_or(0)) * 31
            + usize::from(b.last().copied().unwrap_or(0)))
            * 7
            + b.len();
        1u64 << (h % 64)
    };
    let fields = point.fields.keys().fold(0u64, |m, k| m | sketch(k));
    if let Some(k) = point
        .tags
        .keys()
        .find(|k| fields & sketch(k) != 0 && point.fields.contains_key(*k))
    {
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
        let mut p = Point::new("CPU", 0)
            .tag("Host", "a")
            .field("Usage Idle", FieldValue::F64(1.0));
        normalize_names(&mut p).unwrap();
        assert_eq!(p.measurement, "cpu");
        assert!(p.tags.contains_key("host") && p.fields.contains_key("usage_idle"));
        let mut p = Point::new("m", 0)
            .tag("a", "x")
            .field("a", FieldValue::F64(1.0));
        assert_eq!(
            normalize_names(&mut p).unwrap_err(),
            "\"a\" is both a tag and a field; rename one"
        );
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
            reg.conform(&mut p).unwrap_err().1,
            "field \"rpm\" is a float (7.5), but the table stores it as integer"
        );
        let mut p = Point::new("m", 0).field("rpm", FieldValue::Str("x".into()));
        assert!(reg.conform(&mut p).is_err());
        let mut p = Point::new("m", 0).field("big", FieldValue::U64(u64::MAX));
        assert!(
            reg.conform(&mut p)
                .unwrap_err()
                .1
                .contains("above the largest integer")
        );
    }

    #[test]
    fn a_local_copy_answers_as_the_registry_does() {
        let reg = SchemaRegistry::default();
        let (mut a, mut b) = (
            LocalSchemas::new(reg.clone()),
            LocalSchemas::new(reg.clone()),
        );
        let mut p = Point::new("m", 0)
            .field("rpm", FieldValue::I64(5))
            .field("speed", FieldValue::F64(1.5));
        a.conform(&mut p).unwrap();
        // From the copy: coerced as the registry would.
        let mut p = Point::new("m", 0)
            .field("rpm", FieldValue::F64(7.0))
            .field("speed", FieldValue::I64(2));
        a.conform(&mut p).unwrap();
        assert_eq!(
            (&p.fields["rpm"], &p.fields["speed"]),
            (&FieldValue::I64(7), &FieldValue::F64(2.0))
        );
        // The same names again (answered from the remembered layout): coerced, or
        // refused, as from the walk.
        let mut p = Point::new("m", 0)
            .field("rpm", FieldValue::F64(8.0))
            .field("speed", FieldValue::I64(3));
        a.conform(&mut p).unwrap();
        assert_eq!(
            (&p.fields["rpm"], &p.fields["speed"]),
            (&FieldValue::I64(8), &FieldValue::F64(3.0))
        );
        let mut p = Point::new("m", 0)
            .field("rpm", FieldValue::F64(7.5))
            .field("speed", FieldValue::F64(1.0));
        assert_eq!(
            a.conform(&mut p).unwrap_err().1,
            "field \"rpm\" is a float (7.5), but the table stores it as integer"
        );
        // The same names with one of them a tag: not the remembered layout.
        let mut p = Point::new("m", 0)
            .tag("rpm", "x")
            .field("speed", FieldValue::F64(1.0));
        assert!(a.conform(&mut p).unwrap_err().1.contains("rpm"));
        let mut p = Point::new("m", 0).field("rpm", FieldValue::F64(7.5));
        assert_eq!(
            a.conform(&mut p).unwrap_err().1,
            "field \"rpm\" is a float (7.5), but the table stores it as integer"
        );
        // A field another copy registered meanwhile: this copy learns its type.
        let mut p = Point::new("m", 0).field("gear", FieldValue::Bool(true));
        b.conform(&mut p).unwrap();
        let mut p = Point::new("m", 0)
            .field("gear", FieldValue::I64(3))
            .field("rpm", FieldValue::I64(1));
        assert!(
            a.conform(&mut p)
                .unwrap_err()
                .1
                .contains("stores it as boolean")
        );
        let mut p = Point::new("m", 0).field("rpm", FieldValue::U64(u64::MAX));
        assert!(
            a.conform(&mut p)
                .unwrap_err()
                .1
                .contains("above the largest integer")
        );
        assert_eq!(reg.fields("m").len(), 3);
    }

    /// Points that would fail their table's commit later are refused when they arrive:
    /// a tag named like a numeric field of the table, a field named like a tag with
    /// another type, reserved and over-long names, more tables or columns than allowed.
    #[test]
    fn poison_names_are_refused_on_arrival() {
        let reg = SchemaRegistry::with_limits(SchemaLimits {
            max_tables: 2,
            max_columns: 4,
        });
        reg.seed(
            "car",
            [
                ("speed_kph".to_owned(), FieldType::Float),
                ("driver".to_owned(), FieldType::Str),
            ],
        );
        let mut local = LocalSchemas::new(reg.clone());
        let mut p = Point::new("car", 0)
            .tag("speed_kph", "fast")
            .field("rpm", FieldValue::F64(1.0));
        let (kind, e) = reg.conform(&mut p.clone()).unwrap_err();
        assert_eq!(kind, RejectKind::TypeConflict);
        assert_eq!(
            e,
            "tag \"speed_kph\": the table clean.car holds \"speed_kph\" as a float field; rename the tag"
        );
        assert_eq!(
            local.conform(&mut p).unwrap_err(),
            (kind, e.clone()),
            "the processor's copy says the same"
        );
        assert_eq!(
            reg.check(
                &Point::new("car", 0)
                    .tag("speed_kph", "x")
                    .field("a", FieldValue::F64(1.0))
            )
            .unwrap_err(),
            e
        );
        // A tag of a string column is fine (tags and string fields are both strings).
        let mut p = Point::new("car", 0)
            .tag("driver", "VER")
            .field("rpm", FieldValue::F64(1.0));
        local.conform(&mut p).unwrap();
        // The tag registered as a string column: a float field of its name is refused.
        let mut p = Point::new("car", 0)
            .tag("driver", "VER")
            .field("team", FieldValue::F64(1.0));
        local.conform(&mut p).unwrap();
        let mut p = Point::new("car", 0)
            .tag("team", "RBR")
            .field("gear", FieldValue::F64(1.0));
        assert!(
            local
                .conform(&mut p)
                .unwrap_err()
                .1
                .contains("holds \"team\" as a float field")
        );
        // Columns: car has speed_kph, driver, rpm, team = 4, the limit.
        let mut p = Point::new("car", 0)
            .tag("driver", "VER")
            .field("gear", FieldValue::I64(3));
        let (kind, e) = local.conform(&mut p).unwrap_err();
        assert!(e.contains("lake.max-columns"), "{e}");
        assert_eq!(kind, RejectKind::Invalid);
        assert!(reg.check(&p).unwrap_err().contains("lake.max-columns"));
        // Tables: car and one more.
        let mut p = Point::new("sensor", 0)
            .tag("sensor_id", "s")
            .field("t", FieldValue::F64(1.0));
        reg.conform(&mut p).unwrap();
        let mut p = Point::new("cpu", 0)
            .tag("host", "h")
            .field("u", FieldValue::F64(1.0));
        assert!(reg.check(&p).unwrap_err().contains("lake.max-tables"));
        assert!(
            reg.conform(&mut p)
                .unwrap_err()
                .1
                .contains("lake.max-tables")
        );
        assert_eq!(reg.inner.read().unwrap().len(), 2);
        // A table whose first point is over the column limit is not left behind.
        let reg = SchemaRegistry::with_limits(SchemaLimits {
            max_tables: 5,
            max_columns: 1,
        });
        let mut p = Point::new("wide", 0)
            .tag("a", "x")
            .field("b", FieldValue::F64(1.0));
        assert!(reg.conform(&mut p).is_err());
        assert!(reg.fields("wide").is_empty() && reg.inner.read().unwrap().is_empty());
    }

    #[test]
    fn reserved_and_over_long_names_are_refused() {
        let mut p = Point::new("m", 0).field("time_day", FieldValue::F64(1.0));
        assert!(
            normalize_names(&mut p)
                .unwrap_err()
                .contains("\"time_day\" is reserved")
        );
        let mut p = Point::new("m".repeat(300), 0).field("v", FieldValue::F64(1.0));
        assert!(
            normalize_names(&mut p)
                .unwrap_err()
                .contains("300 bytes long; names are at most 128")
        );
        let mut p = Point::new("m", 0)
            .tag("k".repeat(129), "v")
            .field("v", FieldValue::F64(1.0));
        assert!(
            normalize_names(&mut p)
                .unwrap_err()
                .contains("129 bytes long")
        );
        let mut p = Point::new("m".repeat(128), 0)
            .tag("k".repeat(128), "v")
            .field("v", FieldValue::F64(1.0));
        normalize_names(&mut p).unwrap();
    }

    #[test]
    fn a_tag_named_like_a_field_is_caught_whatever_the_filter_says() {
        for name in ["a", "ab", "zz_top", "driver", "x"] {
            let mut p = Point::new("m", 0)
                .tag(name, "v")
                .tag("other", "w")
                .field(name, FieldValue::F64(1.0))
                .field("speed", FieldValue::F64(1.0));
            assert_eq!(
                normalize_names(&mut p).unwrap_err(),
                format!("{name:?} is both a tag and a field; rename one")
            );
        }
        let mut p = Point::new("m", 0).tag("time", "x");
        assert!(normalize_names(&mut p).unwrap_err().contains("reserved"));
    }
}
