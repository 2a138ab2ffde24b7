//! Enrichment, applied to every valid point before windows and rules see it: unit
//! conversions declared per field, dimension tables (CSV or TOML files) joined on a tag,
//! and lap and sector derived from a distance field and a track definition.
//!
//! All of it is a pure function of the point and the files read at start, so a replay
//! enriches exactly as the original run did.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pitwall_core::map::Name;
use pitwall_core::{FieldValue, Point};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A dimension table joined on a tag: every row adds its columns as tags to the points
/// whose `key` tag has the row's key (tags the point already has are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DimensionConfig {
    /// Name, for messages.
    pub name: String,
    /// A CSV file with a header row, or a TOML file of tables named by key
    /// (`[VER]` then `team = "Red Bull Racing"`). Relative paths are from the working
    /// directory.
    pub file: PathBuf,
    /// Measurements it applies to; empty means all.
    #[serde(default)]
    pub measurements: Vec<String>,
    /// The tag matched against the file's key (the CSV column of the same name).
    pub key: String,
    /// Columns added; empty means every column but the key.
    #[serde(default)]
    pub columns: Vec<String>,
}

/// A unit, for [`UnitConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Kilometres per hour.
    Kph,
    /// Miles per hour.
    Mph,
    /// Metres per second.
    Mps,
    /// Degrees Celsius.
    Celsius,
    /// Degrees Fahrenheit.
    Fahrenheit,
    /// Kelvin.
    Kelvin,
    /// A fraction, 0 to 1.
    Fraction,
    /// Percent, 0 to 100.
    Percent,
    /// Hectopascal (millibar).
    Hpa,
    /// Kilopascal.
    Kpa,
    /// Bar.
    Bar,
    /// Pounds per square inch.
    Psi,
}

impl Unit {
    /// What it measures, and (scale, offset) to the base unit of that: base = x * scale + offset.
    fn base(self) -> (&'static str, f64, f64) {
        match self {
            Unit::Kph => ("speed", 1.0 / 3.6, 0.0),
            Unit::Mph => ("speed", 0.447_04, 0.0),
            Unit::Mps => ("speed", 1.0, 0.0),
            Unit::Celsius => ("temperature", 1.0, 0.0),
            Unit::Fahrenheit => ("temperature", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
            Unit::Kelvin => ("temperature", 1.0, -273.15),
            Unit::Fraction => ("ratio", 1.0, 0.0),
            Unit::Percent => ("ratio", 0.01, 0.0),
            Unit::Hpa => ("pressure", 100.0, 0.0),
            Unit::Kpa => ("pressure", 1000.0, 0.0),
            Unit::Bar => ("pressure", 100_000.0, 0.0),
            Unit::Psi => ("pressure", 6_894.757_293_168, 0.0),
        }
    }
}

/// A field sent in one unit and kept in another, e.g. `speed_mph` in mph kept as
/// `speed_kph` in kph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UnitConfig {
    /// Measurement it applies to; none means all.
    #[serde(default)]
    pub measurement: Option<String>,
    /// The field as sent.
    pub field: String,
    /// Unit it is sent in.
    pub from: Unit,
    /// Unit it is kept in.
    pub to: Unit,
    /// New name for the converted field; none keeps the name.
    #[serde(default)]
    pub rename: Option<String>,
}

/// Lap and sector for one measurement, from a distance field and the track named by a
/// tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LapConfig {
    /// Measurement it applies to.
    pub measurement: String,
    /// Distance field, metres.
    pub distance_field: String,
    /// `lap` when the distance restarts at the line every lap (then only the sector is
    /// derived), `total` when it counts from the start of the session (then the lap too).
    #[serde(default)]
    pub distance: DistanceKind,
    /// Tag naming the track (a key of `processor.tracks`).
    #[serde(default = "track_tag")]
    pub track_tag: String,
    /// Field the sector (1, 2, ...) is written to.
    #[serde(default = "sector_field")]
    pub sector_field: String,
    /// Field the lap (1, 2, ...) is written to, from a total distance.
    #[serde(default = "lap_field")]
    pub lap_field: String,
}

fn track_tag() -> String {
    "track".into()
}
fn sector_field() -> String {
    "sector".into()
}
fn lap_field() -> String {
    "lap".into()
}

/// What a distance field counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistanceKind {
    /// From the line, every lap.
    #[default]
    Lap,
    /// From the start of the session.
    Total,
}

/// A track: its lap length and where each sector starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrackConfig {
    /// Lap length, metres.
    pub length_m: f64,
    /// Distance from the line at which each sector starts, the first at 0, ascending.
    pub sectors: Vec<f64>,
}

/// Loaded dimension rows: key value -> tags to add.
type Rows = HashMap<String, Vec<(Name, Name)>>;

/// One unit conversion, ready: y = x * scale + offset.
#[derive(Debug)]
struct Conversion {
    measurement: Option<String>,
    field: String,
    scale: f64,
    offset: f64,
    rename: Option<String>,
}

/// Everything enrichment needs, files read.
#[derive(Debug, Default)]
pub struct Enricher {
    units: Vec<Conversion>,
    dimensions: Vec<(Vec<String>, String, Rows)>,
    laps: Vec<LapConfig>,
    tracks: BTreeMap<String, TrackConfig>,
}

impl Enricher {
    /// Reads the dimension files and prepares the conversions. `key` is the config path
    /// of each list, for errors (`processor.dimensions`).
    pub fn new(
        units: &[UnitConfig],
        dimensions: &[DimensionConfig],
        laps: &[LapConfig],
        tracks: &BTreeMap<String, TrackConfig>,
    ) -> Result<Self> {
        let bad = |key: String, message: String| Err(Error::Config { key, message });
        let mut out = Enricher {
            laps: laps.to_vec(),
            tracks: tracks.clone(),
            ..Enricher::default()
        };
        for (i, u) in units.iter().enumerate() {
            let (from, a, b) = u.from.base();
            let (to, c, d) = u.to.base();
            if from != to {
                return bad(
                    format!("processor.units[{i}].to"),
                    format!(
                        "converts {from} ({:?}) to {to} ({:?}); both ends must measure the same thing",
                        u.from, u.to
                    ),
                );
            }
            if u.field.is_empty() || u.rename.as_deref() == Some("") {
                return bad(
                    format!("processor.units[{i}].field"),
                    "is empty; name the field as sent".into(),
                );
            }
            // x in `from` -> base = x a + b -> in `to`: (base - d) / c.
            out.units.push(Conversion {
                measurement: u.measurement.clone(),
                field: u.field.clone(),
                scale: a / c,
                offset: (b - d) / c,
                rename: u.rename.clone(),
            });
        }
        for (i, d) in dimensions.iter().enumerate() {
            let key = format!("processor.dimensions[{i}]");
            if d.key.is_empty() {
                return bad(
                    format!("{key}.key"),
                    "is empty; name the tag to join on, e.g. \"driver\"".into(),
                );
            }
            let rows = load(&d.file, &d.key, &d.columns).map_err(|message| Error::Config {
                key: format!("{key}.file"),
                message,
            })?;
            out.dimensions
                .push((d.measurements.clone(), d.key.clone(), rows));
        }
        for (name, t) in tracks {
            let key = format!("processor.tracks.{name}");
            if t.length_m.is_nan() || t.length_m <= 0.0 {
                return bad(
                    format!("{key}.length-m"),
                    format!("is {}; give the lap length in metres", t.length_m),
                );
            }
            if t.sectors.first() != Some(&0.0)
                || t.sectors.windows(2).any(|w| w[0].total_cmp(&w[1]).is_ge())
                || t.sectors.last().is_some_and(|&s| s >= t.length_m)
            {
                return bad(
                    format!("{key}.sectors"),
                    "must start at 0 and ascend, each start shorter than the lap, e.g. [0.0, 1500.0, 3000.0]".into(),
                );
            }
        }
        for (i, l) in laps.iter().enumerate() {
            if l.measurement.is_empty() || l.distance_field.is_empty() {
                return bad(
                    format!("processor.laps[{i}]"),
                    "needs a measurement and a distance-field".into(),
                );
            }
        }
        Ok(out)
    }

    /// Enriches `point` in place; the error is a reject reason.
    pub fn apply(&self, point: &mut Point) -> std::result::Result<(), String> {
        for Conversion {
            measurement,
            field,
            scale,
            offset,
            rename,
        } in &self.units
        {
            if measurement
                .as_ref()
                .is_some_and(|m| *m != point.measurement)
            {
                continue;
            }
            let Some(v) = point.fields.get(field.as_str()) else {
                continue;
            };
            let Some(x) = v.as_f64().filter(|_| !matches!(v, FieldValue::Bool(_))) else {
                return Err(format!(
                    "field {field:?} is {v:?}; a unit conversion needs a number"
                ));
            };
            let y = FieldValue::F64(x * scale + offset);
            match rename {
                Some(to) => {
                    point.fields.remove(field.as_str());
                    point.fields.insert(to.as_str().into(), y);
                }
                None => {
                    point.fields.insert(field.as_str().into(), y);
                }
            }
        }
        for (measurements, key, rows) in &self.dimensions {
            if !measurements.is_empty() && !measurements.contains(&point.measurement) {
                continue;
            }
            let Some(row) = point
                .tags
                .get(key.as_str())
                .and_then(|k| rows.get(k.as_str()))
            else {
                continue;
            };
            for (tag, value) in row {
                if !point.tags.contains_key(tag.as_str()) {
                    point.tags.insert(tag.clone(), value.clone());
                }
            }
        }
        for l in &self.laps {
            if l.measurement != point.measurement {
                continue;
            }
            let Some(track) = point
                .tags
                .get(l.track_tag.as_str())
                .and_then(|t| self.tracks.get(t.as_str()))
            else {
                continue;
            };
            let Some(d) = point
                .fields
                .get(l.distance_field.as_str())
                .and_then(FieldValue::as_f64)
            else {
                continue;
            };
            let within = d.rem_euclid(track.length_m);
            let sector = track.sectors.partition_point(|&s| s <= within).max(1);
            point.fields.insert(
                l.sector_field.as_str().into(),
                FieldValue::I64(sector as i64),
            );
            if l.distance == DistanceKind::Total {
                let lap = (d / track.length_m).floor() as i64 + 1;
                point
                    .fields
                    .insert(l.lap_field.as_str().into(), FieldValue::I64(lap));
            }
        }
        Ok(())
    }

    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty() && self.dimensions.is_empty() && self.laps.is_empty()
    }
}

/// Reads a dimension file: key value -> (column, value) of the wanted columns.
fn load(file: &Path, key: &str, columns: &[String]) -> std::result::Result<Rows, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "cannot read {}: {e}; give the path of a CSV or TOML file",
            file.display()
        )
    })?;
    let wanted = |c: &str| c != key && (columns.is_empty() || columns.iter().any(|w| w == c));
    let mut rows = Rows::new();
    let is_toml = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let mut found: Vec<String> = Vec::new();
    if is_toml {
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        for (k, v) in table {
            let toml::Value::Table(t) = v else {
                return Err(format!(
                    "{}: {k:?} is not a table; write [{k}] and then column = value lines",
                    file.display()
                ));
            };
            let mut tags = Vec::new();
            for (c, v) in t {
                found.push(c.clone());
                if !wanted(&c) {
                    continue;
                }
                let value = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(format!(
                            "{}: [{k}] {c} is {other}; use a string or a number",
                            file.display()
                        ));
                    }
                };
                tags.push((Name::from(c.as_str()), Name::from(value.as_str())));
            }
            rows.insert(k, tags);
        }
    } else {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| format!("{}: {e}", file.display()))?
            .clone();
        let Some(k) = headers.iter().position(|h| h == key) else {
            return Err(format!(
                "{} has no {key:?} column (it has {}); the key column must be named like the tag",
                file.display(),
                headers.iter().collect::<Vec<_>>().join(", ")
            ));
        };
        found.extend(headers.iter().map(str::to_owned));
        for (line, record) in reader.records().enumerate() {
            let record =
                record.map_err(|e| format!("{}, line {}: {e}", file.display(), line + 2))?;
            let tags = headers
                .iter()
                .zip(record.iter())
                .filter(|(h, v)| wanted(h) && !v.is_empty())
                .map(|(h, v)| (Name::from(h), Name::from(v)))
                .collect();
            rows.insert(record.get(k).unwrap_or_default().to_owned(), tags);
        }
    }
    if let Some(missing) = columns.iter().find(|c| !found.contains(c)) {
        return Err(format!("{} has no column {missing:?}", file.display()));
    }
    Ok(rows)
}

/// Loaded enrichment shared by a config's processors; always equal, for the config's
/// `PartialEq`.
#[derive(Debug, Clone, Default)]
pub struct Loaded(pub(crate) std::sync::OnceLock<Arc<Enricher>>);

impl PartialEq for Loaded {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn car() -> Point {
        Point::new("car", 0)
            .tag("driver", "VER")
            .tag("track", "t")
            .field("speed_mph", FieldValue::I64(100))
            .field("oil_f", FieldValue::F64(212.0))
            .field("throttle", FieldValue::F64(0.5))
            .field("distance_m", FieldValue::F64(3500.0))
    }

    fn unit(field: &str, from: Unit, to: Unit, rename: Option<&str>) -> UnitConfig {
        UnitConfig {
            measurement: Some("car".into()),
            field: field.into(),
            from,
            to,
            rename: rename.map(String::from),
        }
    }

    fn f(p: &Point, name: &str) -> f64 {
        p.fields
            .get(name)
            .and_then(FieldValue::as_f64)
            .unwrap_or_else(|| panic!("no {name} in {p:?}"))
    }

    #[test]
    fn units_convert_and_rename() {
        let units = [
            unit("speed_mph", Unit::Mph, Unit::Kph, Some("speed_kph")),
            unit("oil_f", Unit::Fahrenheit, Unit::Celsius, Some("oil_c")),
            unit("throttle", Unit::Fraction, Unit::Percent, None),
        ];
        let e = Enricher::new(&units, &[], &[], &BTreeMap::new()).unwrap();
        let mut p = car();
        e.apply(&mut p).unwrap();
        assert!((f(&p, "speed_kph") - 160.9344).abs() < 1e-9);
        assert!((f(&p, "oil_c") - 100.0).abs() < 1e-9);
        assert!((f(&p, "throttle") - 50.0).abs() < 1e-9);
        assert!(!p.fields.contains_key("speed_mph") && !p.fields.contains_key("oil_f"));
        // Another measurement is left alone; a string where a number is due is a reject.
        let mut s = Point::new("sensor", 0).field("speed_mph", FieldValue::F64(1.0));
        e.apply(&mut s).unwrap();
        assert_eq!(f(&s, "speed_mph"), 1.0);
        let mut bad = car().field("throttle", FieldValue::Str("half".into()));
        assert_eq!(
            e.apply(&mut bad).unwrap_err(),
            "field \"throttle\" is Str(\"half\"); a unit conversion needs a number"
        );
        let err = Enricher::new(
            &[unit("x", Unit::Mph, Unit::Celsius, None)],
            &[],
            &[],
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key processor.units[0].to: converts speed (Mph) to temperature (Celsius); both ends must measure the same thing"
        );
    }

    #[test]
    fn dimension_files_add_tags_joined_on_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("drivers.csv");
        std::fs::write(
            &csv,
            "driver, team, car_number\nVER, Red Bull Racing, 1\nHAM, Ferrari, 44\n",
        )
        .unwrap();
        let toml = dir.path().join("sensors.toml");
        std::fs::write(
            &toml,
            "[s1]\nsite = \"plant-a\"\nlocation = \"boiler room\"\nfloor = 2\n",
        )
        .unwrap();
        let dims = [
            DimensionConfig {
                name: "drivers".into(),
                file: csv.clone(),
                measurements: vec!["car".into()],
                key: "driver".into(),
                columns: Vec::new(),
            },
            DimensionConfig {
                name: "sensors".into(),
                file: toml,
                measurements: Vec::new(),
                key: "sensor_id".into(),
                columns: vec!["location".into(), "floor".into(), "site".into()],
            },
        ];
        let e = Enricher::new(&[], &dims, &[], &BTreeMap::new()).unwrap();
        let mut p = car().tag("team", "kept");
        e.apply(&mut p).unwrap();
        assert_eq!(p.tags["car_number"], "1");
        assert_eq!(p.tags["team"], "kept", "a tag the point has wins");
        let mut s = Point::new("sensor", 0)
            .tag("sensor_id", "s1")
            .tag("site", "x");
        e.apply(&mut s).unwrap();
        assert_eq!(
            (
                s.tags["location"].as_str(),
                s.tags["floor"].as_str(),
                s.tags["site"].as_str()
            ),
            ("boiler room", "2", "x")
        );
        let mut unknown = Point::new("sensor", 0).tag("sensor_id", "s9");
        e.apply(&mut unknown).unwrap();
        assert_eq!(unknown.tags.len(), 1, "an unknown key adds nothing");

        // Errors name the key and the file.
        let mut bad = dims[0].clone();
        bad.key = "code".into();
        let err = Enricher::new(&[], &[bad], &[], &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config key processor.dimensions[0].file: "),
            "{err}"
        );
        assert!(
            err.contains("has no \"code\" column (it has driver, team, car_number)"),
            "{err}"
        );
        let mut missing = dims[0].clone();
        missing.file = dir.path().join("nope.csv");
        let err = Enricher::new(&[], &[missing], &[], &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("nope.csv"),
            "{err}"
        );
    }

    #[test]
    fn lap_and_sector_come_from_distance_and_the_track() {
        let tracks = BTreeMap::from([(
            "t".to_owned(),
            TrackConfig {
                length_m: 1000.0,
                sectors: vec![0.0, 300.0, 700.0],
            },
        )]);
        let laps = [LapConfig {
            measurement: "car".into(),
            distance_field: "distance_m".into(),
            distance: DistanceKind::Total,
            track_tag: "track".into(),
            sector_field: "sector".into(),
            lap_field: "lap".into(),
        }];
        let e = Enricher::new(&[], &[], &laps, &tracks).unwrap();
        for (d, lap, sector) in [
            (3500.0, 4, 2),
            (0.0, 1, 1),
            (299.9, 1, 1),
            (300.0, 1, 2),
            (1999.0, 2, 3),
        ] {
            let mut p = car().field("distance_m", FieldValue::F64(d));
            e.apply(&mut p).unwrap();
            assert_eq!(
                (p.fields["lap"].clone(), p.fields["sector"].clone()),
                (FieldValue::I64(lap), FieldValue::I64(sector)),
                "{d}"
            );
        }
        let mut other = car().tag("track", "elsewhere");
        e.apply(&mut other).unwrap();
        assert!(
            !other.fields.contains_key("sector"),
            "no sector on an unknown track"
        );
        let bad = BTreeMap::from([(
            "t".to_owned(),
            TrackConfig {
                length_m: 1000.0,
                sectors: vec![0.0, 700.0, 300.0],
            },
        )]);
        let err = Enricher::new(&[], &[], &laps, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config key processor.tracks.t.sectors: must start at 0 and ascend"),
            "{err}"
        );
    }
}
