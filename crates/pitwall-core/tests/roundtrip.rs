//! Property tests: encoding then decoding gives back the same points, for arbitrary points.

use std::collections::BTreeMap;

use pitwall_core::{FieldValue, Point, Precision, json, line_protocol};
use proptest::prelude::*;

/// Names as line protocol can carry them: non-empty, no control characters, no
/// trailing backslash. The alphabet leans on the characters that need escaping.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,12}",
        "[ a-zA-Z0-9,=\\\\\"'#é\u{1F3CE}]{1,10}"
            .prop_filter("ends with a backslash", |n| !n.ends_with('\\')),
    ]
}

fn measurement() -> impl Strategy<Value = String> {
    name().prop_filter("reads as a comment", |m| !m.starts_with('#'))
}

fn field_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(FieldValue::F64),
        (-1e6f64..1e6).prop_map(FieldValue::F64),
        any::<i64>().prop_map(FieldValue::I64),
        any::<u64>().prop_map(FieldValue::U64),
        any::<bool>().prop_map(FieldValue::Bool),
        "[ -~\n\r\t\"\\\\é]{0,16}".prop_map(FieldValue::Str),
    ]
}

fn point() -> impl Strategy<Value = Point> {
    (
        measurement(),
        prop::collection::btree_map(name(), name(), 0..5),
        prop::collection::btree_map(name(), field_value(), 1..8),
        any::<i64>(),
    )
        .prop_map(
            |(measurement, tags, fields, time): (
                String,
                BTreeMap<String, String>,
                BTreeMap<String, _>,
                _,
            )| Point {
                measurement,
                tags: tags
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
                fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                time,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn line_protocol_round_trips(points in prop::collection::vec(point(), 1..6)) {
        let doc = line_protocol::encode_all(&points).unwrap();
        let back: Vec<Point> = line_protocol::parse(&doc, Precision::Ns, 0)
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(format!("{e}\n{doc}")))?;
        prop_assert_eq!(back, points);
    }

    #[test]
    fn json_round_trips(p in point()) {
        let bytes = json::encode(&p).unwrap();
        let back = json::decode(&bytes, 0, Precision::Ns).unwrap();
        prop_assert_eq!(back, p);
    }

    #[test]
    fn line_protocol_never_panics(s in "[ -~\n\\\\\"]{0,64}") {
        for r in line_protocol::parse(&s, Precision::Ns, 0) {
            if let Err(e) = r {
                prop_assert!(e.to_string().starts_with("line "));
            }
        }
    }

    /// Any text at all, control characters and every Unicode plane included: each item
    /// is a point or an error with a line and a column, and parsing always ends.
    #[test]
    fn any_text_parses_or_is_rejected_with_a_line_and_column(s in "(?s:.){0,96}", tail in "[\\x00-\\x7f]{0,32}") {
        let doc = format!("{s}{tail}");
        let mut items = 0;
        for r in line_protocol::parse(&doc, Precision::Ns, 0) {
            items += 1;
            prop_assert!(items <= doc.len() + 1, "more items than bytes");
            if let Err(e) = r {
                let text = e.to_string();
                prop_assert!(text.starts_with("line ") && text.contains(", column "), "{}", text);
            }
        }
    }

    #[test]
    fn json_never_panics(s in "[ -~]{0,64}") {
        let _ = json::decode(s.as_bytes(), 0, Precision::S);
    }
}
