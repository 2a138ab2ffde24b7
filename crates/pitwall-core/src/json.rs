//! The JSON payload pitwall puts on Kafka, readable with any Kafka tool:
//!
//! ```json
//! {"measurement":"car","tags":{"driver":"VER"},"fields":{"speed_kph":301.5,"gear":7},"time":1700000000000000000}
//! ```
//!
//! Floats always carry a `.` or an exponent, so a float stays a float. JSON numbers do
//! not say whether an integer is signed, so unsigned fields are listed in an optional
//! `"unsigned"` array and come back as unsigned; without it, integers decode as signed
//! (as unsigned only above `i64::MAX`). Decoding also accepts Telegraf's JSON output
//! (`name`, `tags`, `fields`, `timestamp` in seconds, or in the given precision).

use serde::{Deserialize, Serialize};

use crate::{Error, FieldValue, Name, Point, Precision, Result, SortedMap};

#[derive(Serialize)]
struct WireOut<'a> {
    measurement: &'a str,
    tags: &'a SortedMap<Name, Name>,
    fields: &'a SortedMap<Name, FieldValue>,
    time: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unsigned: Vec<&'a str>,
}

/// Appends the JSON encoding of `point` to `out`.
pub fn encode_into(point: &Point, out: &mut Vec<u8>) -> Result<()> {
    if let Some((k, _)) = point
        .fields
        .iter()
        .find(|(_, v)| matches!(v, FieldValue::F64(f) if !f.is_finite()))
    {
        return Err(Error::Invalid(format!(
            "field {k:?} is not a finite number; JSON cannot carry it"
        )));
    }
    let unsigned = point
        .fields
        .iter()
        .filter(|(_, v)| matches!(v, FieldValue::U64(_)))
        .map(|(k, _)| k.as_str())
        .collect();
    let wire = WireOut {
        measurement: &point.measurement,
        tags: &point.tags,
        fields: &point.fields,
        time: point.time,
        unsigned,
    };
    serde_json::to_writer(out, &wire).map_err(|e| Error::Json {
        location: "output".into(),
        message: e.to_string(),
    })
}

/// The JSON encoding of `point`.
pub fn encode(point: &Point) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    encode_into(point, &mut out)?;
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    measurement: Option<String>,
    /// Telegraf's name for the measurement.
    name: Option<String>,
    #[serde(default)]
    tags: SortedMap<Name, Name>,
    fields: Option<SortedMap<Name, FieldValue>>,
    time: Option<i64>,
    /// Telegraf's timestamp, in `precision` units.
    timestamp: Option<i64>,
    #[serde(default)]
    unsigned: Vec<String>,
}

/// Decodes one point. `default_time` (ns) is used when the payload has no time;
/// a Telegraf `timestamp` is read in `telegraf_precision` units.
pub fn decode(bytes: &[u8], default_time: i64, telegraf_precision: Precision) -> Result<Point> {
    let wire: WireIn = serde_json::from_slice(bytes).map_err(|e| Error::Json {
        location: format!("line {}, column {}", e.line(), e.column()),
        message: strip_position(&e.to_string()),
    })?;
    let invalid = |location: &str, message: String| Error::Json {
        location: location.to_owned(),
        message,
    };
    let measurement = match (wire.measurement, wire.name) {
        (Some(m), _) | (None, Some(m)) => m,
        (None, None) => {
            return Err(invalid(
                "top level",
                "expected a \"measurement\" (or Telegraf's \"name\") key".into(),
            ));
        }
    };
    let Some(fields) = wire.fields else {
        return Err(invalid("top level", "expected a \"fields\" object".into()));
    };
    let mut fields = fields;
    for key in &wire.unsigned {
        let location = format!("fields.{key}");
        match fields.get_mut(key.as_str()) {
            Some(v @ FieldValue::I64(_)) => {
                let FieldValue::I64(i) = *v else { unreachable!() };
                *v = FieldValue::U64(u64::try_from(i).map_err(|_| {
                    invalid(&location, format!("is listed as unsigned but is {i}"))
                })?);
            }
            Some(FieldValue::U64(_)) => {}
            Some(other) => {
                return Err(invalid(
                    &location,
                    format!("is listed as unsigned but is a {}", other.type_name()),
                ));
            }
            None => {
                return Err(invalid(
                    "unsigned",
                    format!("names field {key:?}, which is not in \"fields\""),
                ));
            }
        }
    }
    let time = match (wire.time, wire.timestamp) {
        (Some(t), _) => t,
        (None, Some(ts)) => telegraf_precision.to_nanos(ts).ok_or_else(|| {
            invalid(
                "timestamp",
                format!("{ts} in {telegraf_precision:?} precision is out of range"),
            )
        })?,
        (None, None) => default_time,
    };
    let point = Point {
        measurement,
        tags: wire.tags,
        fields,
        time,
    };
    point.validate()?;
    Ok(point)
}

/// serde_json appends " at line L column C"; we report the position separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_types() {
        let p = Point::new("car", 17)
            .tag("driver", "VER")
            .field("speed_kph", FieldValue::F64(300.0))
            .field("gear", FieldValue::I64(7))
            .field("count", FieldValue::U64(3))
            .field("drs", FieldValue::Bool(true))
            .field("note", FieldValue::Str("ok".into()));
        let bytes = encode(&p).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("\"speed_kph\":300.0"), "{text}");
        assert!(text.contains("\"unsigned\":[\"count\"]"), "{text}");
        assert_eq!(decode(&bytes, 0, Precision::S).unwrap(), p);
    }

    #[test]
    fn accepts_telegraf_json() {
        let t = br#"{"fields":{"temp":61.5},"name":"cpu_temp","tags":{"device_id":"mbp"},"timestamp":1716425990}"#;
        let p = decode(t, 0, Precision::S).unwrap();
        assert_eq!(p.measurement, "cpu_temp");
        assert_eq!(p.time, 1_716_425_990_000_000_000);
        assert_eq!(p.tags["device_id"], "mbp");
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = decode(br#"{"measurement":"m","fields":{"v":null},"time":1}"#, 0, Precision::S)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "JSON line 1, column 37: invalid type: null, expected a number, a boolean or a string"
        );
        let e = decode(br#"{"measurement":"m","fields":{},"time":1}"#, 0, Precision::S)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no fields"), "{e}");
        let e = decode(br#"{"measurement":"m","fields":{"v":1},"tim":1}"#, 0, Precision::S)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `tim`"), "{e}");
        let e = decode(br#"{"measurement":"m","fields":{"v":-1},"unsigned":["v"]}"#, 0, Precision::S)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "JSON fields.v: is listed as unsigned but is -1");
        let e = decode(b"{\"measurement\":", 0, Precision::S).unwrap_err().to_string();
        assert!(e.starts_with("JSON line 1, column 15: EOF"), "{e}");
    }
}
