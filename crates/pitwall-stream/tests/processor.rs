//! The processor on hand-made messages: out-of-order events within the bound count,
//! later ones go to the late list with how late they were, windows fire when the
//! watermark passes, and rules raise one row per episode.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pitwall_bus::Message;
use pitwall_core::{FieldValue, Point, json};
use pitwall_stream::{Outputs, Processor, ProcessorConfig, SchemaRegistry};

const S: i64 = 1_000_000_000;
const T0: i64 = 1_767_225_600 * S;

fn msg(offset: i64, p: &Point) -> Message {
    Message {
        partition: 0,
        offset,
        key: Some(Bytes::copy_from_slice(p.tags["sensor_id"].as_bytes())),
        payload: Bytes::from(json::encode(p).unwrap()),
        timestamp: p.time,
    }
}

fn sensor(t: i64, temp: f64) -> Point {
    Point::new("sensor", T0 + t)
        .tag("sensor_id", "s1")
        .tag("site", "a")
        .field("temperature_c", FieldValue::F64(temp))
}

fn run(points: &[Point], finish: bool) -> Outputs {
    let config = ProcessorConfig {
        out_of_orderness: Duration::from_secs(2),
        ..ProcessorConfig::default()
    };
    let mut p = Processor::new(Arc::new(config), SchemaRegistry::default(), "telemetry.raw", 0);
    let mut out = Outputs::default();
    for (i, pt) in points.iter().enumerate() {
        p.process(&msg(i as i64, pt), &mut out);
    }
    if finish {
        p.finish(&mut out);
    }
    out
}

#[test]
fn out_of_order_within_the_bound_counts_and_later_is_late() {
    let pts = [
        sensor(5 * S, 20.0),
        sensor(9 * S, 21.0),
        sensor(8 * S, 22.0),  // 1 s behind the newest: within 2 s, counts
        sensor(12 * S, 23.0), // watermark now 10 s: window [0, 10) fires
        sensor(7 * S, 24.0),  // 3 s behind the watermark: late
    ];
    let out = run(&pts, true);
    assert_eq!(out.raw.len(), 5);
    assert_eq!(out.clean.len(), 4);
    assert_eq!(out.late.len(), 1);
    assert_eq!(out.late[0].lateness_ns, 3 * S);
    assert_eq!(out.late[0].watermark, T0 + 10 * S);
    assert_eq!(out.late[0].origin.offset, 4);
    let w: Vec<_> = out.windows.iter().filter(|w| w.field == "temperature_c").collect();
    assert_eq!(w.len(), 2);
    assert_eq!((w[0].window_start, w[0].count, w[0].min, w[0].max), (T0, 3, 20.0, 22.0));
    assert!((w[0].mean - 21.0).abs() < 1e-12);
    assert_eq!((w[1].window_start, w[1].count), (T0 + 10 * S, 1));
}

#[test]
fn windows_wait_for_the_watermark_unless_the_input_ends() {
    let out = run(&[sensor(0, 20.0), sensor(9 * S, 21.0), sensor(11 * S, 22.0)], false);
    assert!(out.windows.is_empty(), "watermark 9 s has not passed the window end at 10 s");
    let out = run(&[sensor(0, 20.0), sensor(9 * S, 21.0), sensor(11 * S, 22.0)], true);
    assert_eq!(out.windows.iter().filter(|w| w.field == "temperature_c").count(), 2);
}

#[test]
fn a_threshold_episode_is_one_row_until_it_clears_past_the_hysteresis() {
    // sensor_overheat: above 50, hysteresis 2.
    let temps = [20.0, 55.0, 60.0, 49.0, 51.0, 47.9, 20.0, 52.0];
    let pts: Vec<Point> = temps.iter().enumerate().map(|(i, t)| sensor(i as i64 * S, *t)).collect();
    let out = run(&pts, false);
    let times: Vec<i64> = out.anomalies.iter().map(|a| (a.time - T0) / S).collect();
    // Starts at 55; 49 and 51 stay inside the band (above 48); 47.9 ends it; 52 starts anew.
    assert_eq!(times, [1, 7]);
    let a = &out.anomalies[0];
    assert_eq!((a.rule.as_str(), a.source_id.as_str(), a.observed, a.expected), ("sensor_overheat", "s1", 55.0, 50.0));
    assert_eq!(a.severity, "critical");
}

#[test]
fn bad_payloads_are_rejects_with_their_reason() {
    let config = Arc::new(ProcessorConfig::default());
    let mut p = Processor::new(config, SchemaRegistry::default(), "telemetry.raw", 0);
    let mut out = Outputs::default();
    let bad = |offset, payload: &'static str| Message {
        partition: 0,
        offset,
        key: None,
        payload: Bytes::from_static(payload.as_bytes()),
        timestamp: T0,
    };
    p.process(&bad(0, "{\"measurement\":\"sensor\",\"tags\":{\"site\":\"a\"},\"fields\":{\"t\":1.0}}"), &mut out);
    p.process(&bad(1, "{\"measurement\":\"sensor\",\"tags\":{\"sensor_id\":\"x\"},\"fields\":{\"t\":1.0},\"time\":1700000000}"), &mut out);
    p.process(&bad(2, "{\"measurement\":\"sensor\",\"tags\":{\"sensor_id\":\"x\"},\"fields\":{\"t\":1.0},\"time\":1800000000000000000}"), &mut out);
    p.process(&bad(3, "{\"measurement\":\"sensor\",\"tags\":{\"sensor_id\":\"x\"},\"fields\":{\"t\":\"hot\"}}"), &mut out);
    let reasons: Vec<&str> = out.rejects.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0], "measurement \"sensor\" has no \"sensor_id\" tag, which identifies its source");
    assert!(reasons[1].starts_with("time 1700000000 is before the year 2000"), "{}", reasons[1]);
    assert!(reasons[2].contains("more than a day after the message arrived"), "{}", reasons[2]);
    // The fourth is valid on its own (a string field) and defines the field's type.
    assert_eq!(out.clean.len(), 1);
    assert_eq!(out.raw.len(), 4);
}
