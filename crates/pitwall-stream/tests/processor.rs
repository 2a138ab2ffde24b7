//! The processor on hand-made messages: out-of-order events within the bound count,
//! later ones go to the late list with how late they were, windows fire when the
//! watermark passes, and rules raise one row per episode.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pitwall_core::Message;
use pitwall_core::record::Phase;
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
    let mut p = Processor::new(
        Arc::new(config),
        SchemaRegistry::default(),
        "telemetry.raw",
        0,
    );
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
    let w: Vec<_> = out
        .windows
        .iter()
        .filter(|w| w.field == "temperature_c")
        .collect();
    assert_eq!(w.len(), 2);
    assert_eq!(
        (w[0].window_start, w[0].count, w[0].min, w[0].max),
        (T0, 3, 20.0, 22.0)
    );
    assert!((w[0].mean - 21.0).abs() < 1e-12);
    assert_eq!((w[1].window_start, w[1].count), (T0 + 10 * S, 1));
}

#[test]
fn windows_wait_for_the_watermark_unless_the_input_ends() {
    let out = run(
        &[sensor(0, 20.0), sensor(9 * S, 21.0), sensor(11 * S, 22.0)],
        false,
    );
    assert!(
        out.windows.is_empty(),
        "watermark 9 s has not passed the window end at 10 s"
    );
    let out = run(
        &[sensor(0, 20.0), sensor(9 * S, 21.0), sensor(11 * S, 22.0)],
        true,
    );
    assert_eq!(
        out.windows
            .iter()
            .filter(|w| w.field == "temperature_c")
            .count(),
        2
    );
}

#[test]
fn a_threshold_episode_is_one_row_until_it_clears_past_the_hysteresis() {
    // sensor_overheat: above 50, hysteresis 2.
    let temps = [20.0, 55.0, 60.0, 49.0, 51.0, 47.9, 20.0, 52.0];
    let pts: Vec<Point> = temps
        .iter()
        .enumerate()
        .map(|(i, t)| sensor(i as i64 * S, *t))
        .collect();
    let out = run(&pts, false);
    // Starts at 55; 49 and 51 stay inside the band (above 48); 47.9 ends it; 52 starts anew.
    assert_eq!(episodes(&out, "sensor_overheat"), [(1, Some(5)), (7, None)]);
    let a = &out.anomalies[0];
    assert_eq!(
        (
            a.rule.as_str(),
            a.source_id.as_str(),
            a.observed,
            a.expected
        ),
        ("sensor_overheat", "s1", 55.0, 50.0)
    );
    assert_eq!(a.severity, "critical");
    let end = &out.anomalies[1];
    assert_eq!(
        (end.phase, end.id.as_str(), end.observed),
        (Phase::End, a.id.as_str(), 47.9)
    );
    assert_eq!(end.message, "temperature_c is back to 47.9");
    // The peak: the start row's is what it started at, the end row's the highest value
    // while it lasted (60, not the 55 it started at nor the 47.9 it ended at).
    assert_eq!((a.peak, end.peak), (55.0, 60.0));
    assert_eq!(out.anomalies[2].peak, 52.0);
}

/// The episodes of `rule` as (start, end) in seconds after T0: one start row each, and
/// an end row with the same id once it cleared.
fn episodes(out: &Outputs, rule: &str) -> Vec<(i64, Option<i64>)> {
    let rows: Vec<_> = out.anomalies.iter().filter(|a| a.rule == rule).collect();
    let starts: Vec<_> = rows.iter().filter(|a| a.phase == Phase::Start).collect();
    for e in rows.iter().filter(|a| a.phase == Phase::End) {
        assert_eq!(
            starts
                .iter()
                .filter(|s| s.id == e.id && s.time == e.time)
                .count(),
            1,
            "end row {e:?} has no start"
        );
    }
    starts
        .iter()
        .map(|s| {
            let ends: Vec<_> = rows
                .iter()
                .filter(|e| e.phase == Phase::End && e.id == s.id)
                .collect();
            assert!(ends.len() <= 1, "{ends:?}");
            (
                (s.time - T0) / S,
                ends.first().map(|e| (e.end_time.unwrap() - T0) / S),
            )
        })
        .collect()
}

fn sensor_at(id: &str, t: i64, temp: f64, pressure: f64) -> Point {
    Point::new("sensor", T0 + t)
        .tag("sensor_id", id)
        .field("temperature_c", FieldValue::F64(temp))
        .field("pressure_hpa", FieldValue::F64(pressure))
}

/// A value that never repeats exactly and stays within ±0.3 of `base`.
fn wobble(base: f64, i: i64) -> f64 {
    base + 0.3 * ((i as f64) * 1.7).sin()
}

#[test]
fn a_value_that_stops_changing_is_stuck_until_it_moves() {
    // sensor_stuck: temperature unchanged for 30 s.
    let mut pts: Vec<Point> = (0..10)
        .map(|i| sensor_at("s1", i * S, wobble(20.0, i), wobble(1010.0, i)))
        .collect();
    // From 10 s on it reads 21.5 (the run starts at 10 s) until 45 s; at 46 s it moves.
    pts.extend((10..46).map(|i| sensor_at("s1", i * S, 21.5, wobble(1010.0, i))));
    pts.extend((46..50).map(|i| sensor_at("s1", i * S, wobble(20.0, i), wobble(1010.0, i))));
    let out = run(&pts, true);
    assert_eq!(episodes(&out, "sensor_stuck"), [(40, Some(46))]);
    let a = out
        .anomalies
        .iter()
        .find(|a| a.rule == "sensor_stuck")
        .unwrap();
    assert_eq!(
        (a.kind.as_str(), a.field.as_str(), a.observed, a.expected),
        ("stuck", "temperature_c", 30.0, 30.0)
    );
    assert!(
        a.message.contains("has read 21.5 for 30.0 s"),
        "{}",
        a.message
    );
    assert_eq!(out.anomalies.len(), 2, "{:?}", out.anomalies);
}

#[test]
fn a_source_that_goes_silent_is_missed_once_the_watermark_passes_the_limit() {
    // sensor_silent: nothing for 10 s. s2 reports until 5 s, then again from 31 s; s1
    // reports throughout and moves the partition's watermark (newest time - 2 s).
    let mut pts = Vec::new();
    for i in 0..40 {
        pts.push(sensor_at("s1", i * S, wobble(20.0, i), wobble(1010.0, i)));
        if i <= 5 || i >= 31 {
            pts.push(sensor_at("s2", i * S, wobble(22.0, i), wobble(1012.0, i)));
        }
    }
    let out = run(&pts, true);
    // Last report at 5 s, so the silence passed 10 s at 15 s (seen once the watermark
    // passed it, when s1 sent 18 s); it ended when s2 reported at 31 s.
    assert_eq!(episodes(&out, "sensor_silent"), [(15, Some(31))]);
    let rows: Vec<_> = out
        .anomalies
        .iter()
        .filter(|a| a.rule == "sensor_silent")
        .collect();
    assert_eq!(rows[0].source_id, "s2");
    assert_eq!(
        (
            rows[0].kind.as_str(),
            rows[0].field.as_str(),
            rows[0].expected
        ),
        ("deadman", "*", 10.0)
    );
    assert_eq!(rows[1].observed, 26.0, "26 s without a report");
    assert_eq!(out.anomalies.len(), 2, "nothing else: {:?}", out.anomalies);
}

#[test]
fn a_field_missing_from_a_reporting_source_is_missed_too() {
    let mut config = ProcessorConfig::default();
    config.rules.push(pitwall_stream::RuleConfig::Deadman {
        name: "no_pressure".into(),
        measurement: "sensor".into(),
        severity: pitwall_stream::Severity::Info,
        field: Some("pressure_hpa".into()),
        silence: Duration::from_secs(5),
    });
    config.validate().unwrap();
    let mut p = Processor::new(
        Arc::new(config),
        SchemaRegistry::default(),
        "telemetry.raw",
        0,
    );
    let mut out = Outputs::default();
    for i in 0..30 {
        let mut pt = sensor_at("s1", i * S, wobble(20.0, i), wobble(1010.0, i));
        if (10..20).contains(&i) {
            pt.fields.remove("pressure_hpa");
        }
        p.process(&msg(i, &pt), &mut out);
    }
    // Last pressure at 9 s: missed from 14 s (seen when the watermark passed it, at 17 s).
    assert_eq!(episodes(&out, "no_pressure"), [(14, Some(20))]);
    assert_eq!(out.anomalies[0].field, "pressure_hpa");
    assert!(
        out.anomalies[0]
            .message
            .starts_with("pressure_hpa of s1 has sent nothing"),
        "{}",
        out.anomalies[0].message
    );
}

#[test]
fn a_value_far_from_the_sources_baseline_is_an_outlier_after_the_warm_up() {
    // pressure_outlier: robust z-score over the last 60 s (refreshed every 10 s) above
    // 8, judged once the baseline covers 60 s.
    let pts: Vec<Point> = (0..200)
        .map(|i| {
            let pressure = match i {
                3 => 1030.0,                   // wild, but during the warm-up
                120..130 => wobble(1014.0, i), // 4 hPa up for 10 s
                _ => wobble(1010.0, i),
            };
            sensor_at("s1", i * S, wobble(20.0, i), pressure)
        })
        .collect();
    let out = run(&pts, true);
    assert_eq!(episodes(&out, "pressure_outlier"), [(120, Some(130))]);
    let a = &out.anomalies[0];
    assert_eq!(
        (a.kind.as_str(), a.field.as_str()),
        ("baseline", "pressure_hpa")
    );
    assert!(
        (a.expected - 1010.0).abs() < 0.3,
        "baseline center {}",
        a.expected
    );
    assert!(a.message.contains("spreads of"), "{}", a.message);
    assert_eq!(out.anomalies.len(), 2, "nothing else: {:?}", out.anomalies);

    // The same with the mean and standard deviation.
    let mut config = ProcessorConfig::default();
    for r in &mut config.rules {
        if let pitwall_stream::RuleConfig::Baseline {
            method, threshold, ..
        } = r
        {
            *method = pitwall_stream::BaselineMethod::Zscore;
            *threshold = 6.0;
        }
    }
    let mut p = Processor::new(
        Arc::new(config),
        SchemaRegistry::default(),
        "telemetry.raw",
        0,
    );
    let mut out = Outputs::default();
    for (i, pt) in pts.iter().enumerate() {
        p.process(&msg(i as i64, pt), &mut out);
    }
    assert_eq!(episodes(&out, "pressure_outlier"), [(120, Some(130))]);
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
    p.process(
        &bad(
            0,
            "{\"measurement\":\"sensor\",\"tags\":{\"site\":\"a\"},\"fields\":{\"t\":1.0}}",
        ),
        &mut out,
    );
    p.process(&bad(1, "{\"measurement\":\"sensor\",\"tags\":{\"sensor_id\":\"x\"},\"fields\":{\"t\":1.0},\"time\":1700000000}"), &mut out);
    p.process(&bad(2, "{\"measurement\":\"sensor\",\"tags\":{\"sensor_id\":\"x\"},\"fields\":{\"t\":1.0},\"time\":1800000000000000000}"), &mut out);
    p.process(&bad(3, "{\"measurement\":\"sensor\",\"tags\":{\"sensor_id\":\"x\"},\"fields\":{\"t\":\"hot\"}}"), &mut out);
    let reasons: Vec<&str> = out.rejects.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(
        reasons[0],
        "measurement \"sensor\" has no \"sensor_id\" tag, which identifies its source"
    );
    assert!(
        reasons[1].starts_with("time 1700000000 is before the year 2000"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("more than 1day after the point was received"),
        "{}",
        reasons[2]
    );
    assert!(
        reasons[2].contains("processor.max-future"),
        "{}",
        reasons[2]
    );
    // The fourth is valid on its own (a string field) and defines the field's type.
    assert_eq!(out.clean.len(), 1);
    assert_eq!(out.raw.len(), 4);
    // A number for that string field, and a payload that is not JSON.
    p.process(
        &bad(
            4,
            "{\"measurement\":\"sensor\",\"tags\":{\"sensor_id\":\"x\"},\"fields\":{\"t\":1.5}}",
        ),
        &mut out,
    );
    p.process(&bad(5, "sensor,sensor_id=x t=1.5"), &mut out);
    // Each reject carries its kind, the label metrics count it under.
    let kinds: Vec<&str> = out.rejects.iter().map(|r| r.kind.label()).collect();
    assert_eq!(
        kinds,
        [
            "no_source",
            "bad_time",
            "bad_time",
            "type_conflict",
            "decode"
        ]
    );
}

/// A point five years ahead of when it was received is a reject and moves nothing: the
/// on-time points after it are neither late nor windowed differently.
#[test]
fn a_point_far_ahead_of_its_receipt_is_rejected_and_moves_no_watermark() {
    let run = |with_future: bool| {
        let mut p = Processor::new(
            Arc::new(ProcessorConfig::default()),
            SchemaRegistry::default(),
            "telemetry.raw",
            0,
        );
        let mut out = Outputs::default();
        let mut offset = 0;
        for i in 0..30 {
            if with_future && i == 10 {
                let mut m = msg(
                    offset,
                    &sensor_at("clock-ahead", 5 * 365 * 86_400 * S, 20.0, 1010.0),
                );
                m.timestamp = T0 + i * S;
                p.process(&m, &mut out);
                offset += 1;
            }
            let mut m = msg(
                offset,
                &sensor_at("s1", i * S, wobble(20.0, i), wobble(1010.0, i)),
            );
            m.timestamp = T0 + i * S;
            p.process(&m, &mut out);
            offset += 1;
        }
        out
    };
    let (plain, skewed) = (run(false), run(true));
    assert_eq!(skewed.rejects.len(), 1);
    assert!(
        skewed.rejects[0].reason.contains("processor.max-future"),
        "{}",
        skewed.rejects[0].reason
    );
    assert!(skewed.late.is_empty(), "{:?}", skewed.late);
    assert_eq!(skewed.clean, plain.clean);
    let rows = |o: &Outputs| {
        o.windows
            .iter()
            .map(|w| (w.window_start, w.field.to_string(), w.count))
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&skewed), rows(&plain));
}

/// An idle partition: ticks on the raw topic move event time on, so windows close
/// without any data; data behind the new watermark is late. Ticks do not make sources
/// silent (a partition that ran out of data raises nothing); once data flows again, a
/// source that stayed away is missed.
#[test]
fn idle_ticks_close_windows_and_silence_waits_for_data() {
    let config = Arc::new(ProcessorConfig::default());
    let mut p = Processor::new(config, SchemaRegistry::default(), "telemetry.raw", 0);
    let mut out = Outputs::default();
    assert_eq!(
        p.idle_tick_time(Duration::from_secs(5)),
        None,
        "nothing waits on event time yet"
    );
    for i in 0..20 {
        p.process(
            &msg(
                2 * i,
                &sensor_at("s1", i * S, wobble(20.0, i), wobble(1010.0, i)),
            ),
            &mut out,
        );
        p.process(
            &msg(
                2 * i + 1,
                &sensor_at("s2", i * S, wobble(22.0, i), wobble(1012.0, i)),
            ),
            &mut out,
        );
    }
    let fired = |o: &Outputs| {
        o.windows
            .iter()
            .filter(|w| w.field == "temperature_c")
            .map(|w| ((w.window_start - T0) / S, w.source_id.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        fired(&out),
        [(0, "s1".to_owned()), (0, "s2".to_owned())],
        "the watermark (17 s) closed [0, 10) only"
    );
    let tick = |offset: i64, time: i64| Message {
        partition: 0,
        offset,
        key: Some(Bytes::from_static(pitwall_stream::TICK_KEY)),
        payload: Bytes::from(pitwall_stream::tick_payload(time)),
        timestamp: time,
    };
    // Idle for 5 s: the partition's clock goes to 19 + 5 s plus the idle timeout (30 s)
    // by which a silent source's clock trails it, so each source's clock is at 24 s,
    // its watermark 22 s: [10, 20) closes.
    let t = p.idle_tick_time(Duration::from_secs(5)).unwrap();
    assert_eq!(t, T0 + 54 * S);
    let mut after = Outputs::default();
    p.process(&tick(40, t), &mut after);
    assert_eq!(
        fired(&after),
        [(10, "s1".to_owned()), (10, "s2".to_owned())]
    );
    assert!(
        after.raw.is_empty() && after.clean.is_empty() && after.anomalies.is_empty(),
        "a tick is not data: {after:?}"
    );
    assert_eq!(
        p.idle_tick_time(Duration::from_secs(15)),
        None,
        "no window open: nothing to tick for"
    );
    // Idle much longer: still no silence, since no data says the others went on.
    p.process(&tick(41, T0 + 60 * S), &mut after);
    assert!(after.anomalies.is_empty(), "{:?}", after.anomalies);
    // Data from before the new watermark is late; s1 reporting at 70 s shows that s2
    // (last heard at 19 s) fell silent at 29 s.
    let mut back = Outputs::default();
    p.process(&msg(42, &sensor_at("s1", 25 * S, 20.0, 1010.0)), &mut back);
    assert_eq!(back.late.len(), 1);
    p.process(&msg(43, &sensor_at("s1", 70 * S, 20.0, 1010.0)), &mut back);
    let silent: Vec<_> = back
        .anomalies
        .iter()
        .filter(|a| a.rule == "sensor_silent")
        .collect();
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert_eq!(
        (
            silent[0].source_id.as_str(),
            silent[0].phase,
            silent[0].time
        ),
        ("s2", Phase::Start, T0 + 29 * S)
    );
}

/// A client's retry is harmless: the same batch taken three times gives the clean rows,
/// windows and anomaly episodes of one, and the copies are counted as duplicates (they
/// stay in the raw table).
#[test]
fn a_batch_sent_three_times_counts_once() {
    let batch: Vec<Point> = (0..40)
        .flat_map(|i| {
            [
                sensor_at(
                    "s1",
                    i * S / 2,
                    wobble(20.0, i) + if (20..26).contains(&i) { 60.0 } else { 0.0 },
                    wobble(1010.0, i),
                ),
                sensor_at("s2", i * S / 2, wobble(22.0, i), wobble(1012.0, i)),
            ]
        })
        .collect();
    let run = |sends: usize| {
        let mut p = Processor::new(
            Arc::new(ProcessorConfig::default()),
            SchemaRegistry::default(),
            "telemetry.raw",
            0,
        );
        let mut out = Outputs::default();
        let mut offset = 0;
        // Telegraf flushes every 10 points; a timed-out flush is sent again whole.
        for chunk in batch.chunks(10) {
            for _ in 0..sends {
                for pt in chunk {
                    p.process(&msg(offset, pt), &mut out);
                    offset += 1;
                }
            }
        }
        p.finish(&mut out);
        out
    };
    let (once, thrice) = (run(1), run(3));
    assert_eq!(thrice.duplicates, 2 * batch.len() as u64);
    assert_eq!(once.duplicates, 0);
    assert_eq!(
        thrice.raw.len(),
        3 * batch.len(),
        "every copy is in the raw table"
    );
    assert_eq!(thrice.clean, once.clean);
    assert!(thrice.late.is_empty(), "{:?}", thrice.late);
    let rows = |o: &Outputs| {
        o.windows
            .iter()
            .map(|w| {
                (
                    w.window_start,
                    w.source_id.to_string(),
                    w.field.to_string(),
                    w.count,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&thrice), rows(&once));
    let episodes = |o: &Outputs| {
        o.anomalies
            .iter()
            .map(|a| (a.rule.clone(), a.source_id.clone(), a.phase, a.time))
            .collect::<Vec<_>>()
    };
    assert!(
        !episodes(&once).is_empty(),
        "the batch holds an overheating episode"
    );
    assert_eq!(episodes(&thrice), episodes(&once));
}
