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

use serde::Deserialize;

use crate::{Error, FieldValue, Name, Point, Precision, Result, SortedMap};

mod scan;
pub(crate) use scan::{float as write_float, integer as write_integer, string as write_string};

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
    scan::encode(point, out);
    Ok(())
}

/// The JSON encoding of `point`.
pub fn encode(point: &Point) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    encode_into(point, &mut out)?;
    Ok(out)
}

/// The payload's keys; the common shape is read by [`scan::decode`], the rest by serde.
#[derive(Deserialize, Default, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Wire {
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
    let wire = match scan::decode(bytes) {
        Some(wire) => wire,
        None => serde_json::from_slice::<Wire>(bytes).map_err(|e| Error::Json {
            location: format!("line {}, column {}", e.line(), e.column()),
            message: strip_position(&e.to_string()),
        })?,
    };
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
                let FieldValue::I64(i) = *v else {
                    unreachable!()
                };
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
    use proptest::prelude::*;

    /// The encoding as serde_json writes it: the reference for the hand-written encoder.
    #[derive(serde::Serialize)]
    struct WireOut<'a> {
        measurement: &'a str,
        tags: &'a SortedMap<Name, Name>,
        fields: &'a SortedMap<Name, FieldValue>,
        time: i64,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        unsigned: Vec<&'a str>,
    }

    fn serde_encode(p: &Point) -> Vec<u8> {
        let unsigned = p
            .fields
            .iter()
            .filter(|(_, v)| matches!(v, FieldValue::U64(_)))
            .map(|(k, _)| k.as_str());
        serde_json::to_vec(&WireOut {
            measurement: &p.measurement,
            tags: &p.tags,
            fields: &p.fields,
            time: p.time,
            unsigned: unsigned.collect(),
        })
        .unwrap()
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-z_]{0,6}|[ -~é\u{1F3CE}\t\n]{0,8}"
    }

    fn point() -> impl Strategy<Value = Point> {
        let value = prop_oneof![
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(FieldValue::F64),
            any::<i64>().prop_map(FieldValue::I64),
            any::<u64>().prop_map(FieldValue::U64),
            any::<bool>().prop_map(FieldValue::Bool),
            text().prop_map(FieldValue::Str),
        ];
        (
            text(),
            proptest::collection::vec((text(), text()), 0..4),
            proptest::collection::vec((text(), value), 0..6),
            any::<i64>(),
        )
            .prop_map(|(measurement, tags, fields, time)| Point {
                measurement,
                tags: tags
                    .into_iter()
                    .map(|(k, v)| (Name::from(k), Name::from(v)))
                    .collect(),
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (Name::from(k), v))
                    .collect(),
                time,
            })
    }

    /// JSON text near the payload's shape, with the forms serde_json treats specially.
    fn near_payload() -> impl Strategy<Value = String> {
        let ws = "[ \t\n]{0,1}";
        let number = prop_oneof![
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            Just("-0".to_owned()),
            Just("01".to_owned()),
            Just("1.".to_owned()),
            Just("-9223372036854775808".to_owned()),
            Just("-9223372036854775809".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("18446744073709551616".to_owned()),
            Just("1e400".to_owned()),
        ];
        let string = "\"([a-z]|\\\\[n\"u]|é|\t){0,4}\"";
        let scalar = prop_oneof![
            number,
            string,
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("tru".to_owned()),
            Just("null".to_owned())
        ];
        let member = (string, ws, scalar.clone()).prop_map(|(k, w, v)| format!("{k}:{w}{v}"));
        let object =
            proptest::collection::vec(member, 0..4).prop_map(|m| format!("{{{}}}", m.join(",")));
        let array =
            proptest::collection::vec(string, 0..3).prop_map(|m| format!("[{}]", m.join(",")));
        let key = prop_oneof![
            Just("measurement"),
            Just("name"),
            Just("tags"),
            Just("fields"),
            Just("time"),
            Just("timestamp"),
            Just("unsigned"),
            Just("other"),
        ];
        let top = (key, ws, prop_oneof![scalar, object, array])
            .prop_map(|(k, w, v)| format!("\"{k}\"{w}:{v}"));
        (proptest::collection::vec(top, 0..6), ws, "[ }x]{0,1}")
            .prop_map(|(m, w, tail)| format!("{{{}{w}}}{tail}", m.join(",")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The hand-written encoder writes serde_json's bytes, and the fast decoder reads
        /// them back (strings with escapes are left to serde_json).
        #[test]
        fn encoder_matches_serde_and_fast_path_reads_it(p in point()) {
            prop_assume!(p.fields.iter().all(|(_, v)| !matches!(v, FieldValue::F64(f) if !f.is_finite())));
            let ours = encode(&p).unwrap();
            let reference = serde_encode(&p);
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&reference));
            if !ours.contains(&b'\\') {
                prop_assert!(scan::decode(&ours).is_some(), "fast path gave up on {}", String::from_utf8_lossy(&ours));
            }
        }

        /// Whatever the fast decoder accepts, serde_json accepts and decodes the same way.
        #[test]
        fn fast_decoder_agrees_with_serde(text in near_payload()) {
            if let Some(fast) = scan::decode(text.as_bytes()) {
                let slow = serde_json::from_str::<Wire>(&text);
                prop_assert!(slow.is_ok(), "fast path took {text:?}, serde_json: {slow:?}");
                prop_assert_eq!(format!("{fast:?}"), format!("{:?}", slow.unwrap()), "{}", text);
            }
        }
    }

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
        let e = decode(
            br#"{"measurement":"m","fields":{"v":null},"time":1}"#,
            0,
            Precision::S,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "JSON line 1, column 37: invalid type: null, expected a number, a boolean or a string"
        );
        let e = decode(
            br#"{"measurement":"m","fields":{},"time":1}"#,
            0,
            Precision::S,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("has no fields"), "{e}");
        let e = decode(
            br#"{"measurement":"m","fields":{"v":1},"tim":1}"#,
            0,
            Precision::S,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `tim`"), "{e}");
        let e = decode(
            br#"{"measurement":"m","fields":{"v":-1},"unsigned":["v"]}"#,
            0,
            Precision::S,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "JSON fields.v: is listed as unsigned but is -1");
        let e = decode(b"{\"measurement\":", 0, Precision::S)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("JSON line 1, column 15: EOF"), "{e}");
    }
}
