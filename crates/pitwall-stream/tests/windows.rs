//! Windows, proven against a naive batch computation: for random events delivered in
//! any order the out-of-orderness bound and the allowed lateness permit, every tumbling
//! and sliding window the processor emits equals what a GROUP BY over the sorted events
//! gives (count, min, max, sum, mean, stddev, first, last exactly up to float rounding;
//! p50/p95/p99 within the sketch's 1 %), each window exactly once; events delivered
//! beyond the bound are in the late list exactly once and in no window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pitwall_core::Message;
use pitwall_core::record::WindowRecord;
use pitwall_core::{FieldValue, Point, json};
use pitwall_stream::config::{MeasurementConfig, WindowConfig};
use pitwall_stream::{Outputs, Processor, ProcessorConfig, SchemaRegistry};
use proptest::prelude::*;

const MS: i64 = 1_000_000;
const T0: i64 = 1_767_225_600_000 * MS;

/// One generated event: source, time (ms after T0), two numeric fields.
#[derive(Debug, Clone)]
struct Event {
    source: u8,
    time_ms: i64,
    a: f64,
    b: i64,
}

impl Event {
    fn point(&self) -> Point {
        Point::new("m", T0 + self.time_ms * MS)
            .tag("id", format!("s{}", self.source))
            .field("a", FieldValue::F64(self.a))
            .field("b", FieldValue::I64(self.b))
            .field("note", FieldValue::Str("x".into()))
    }
}

#[derive(Debug, Clone)]
struct Setup {
    out_of_orderness_ms: i64,
    lateness_ms: i64,
    windows: Vec<(i64, i64)>,
}

fn config(s: &Setup) -> ProcessorConfig {
    let windows = s
        .windows
        .iter()
        .enumerate()
        .map(|(i, &(size, slide))| WindowConfig {
            name: format!("w{i}"),
            measurements: vec!["m".into()],
            size: Duration::from_millis(size as u64),
            slide: (slide != size).then(|| Duration::from_millis(slide as u64)),
            // The first window takes every numeric field, the others only `a`.
            fields: if i == 0 { Vec::new() } else { vec!["a".into()] },
            percentiles: true,
        })
        .collect();
    ProcessorConfig {
        out_of_orderness: Duration::from_millis(s.out_of_orderness_ms as u64),
        allowed_lateness: Duration::from_millis(s.lateness_ms as u64),
        measurements: BTreeMap::from([(
            "m".to_owned(),
            MeasurementConfig {
                source_tag: "id".into(),
            },
        )]),
        windows,
        rules: Vec::new(),
        ..ProcessorConfig::default()
    }
}

fn message(offset: i64, e: &Event) -> Message {
    let p = e.point();
    Message {
        partition: 0,
        offset,
        key: Some(Bytes::from(format!("s{}", e.source))),
        payload: Bytes::from(json::encode(&p).unwrap()),
        timestamp: p.time,
    }
}

/// Values of one (source, window start, field), with their time and offset.
type Groups<'a> = BTreeMap<(String, i64, &'a str), Vec<(i64, i64, f64)>>;

/// What a window should hold, computed from the sorted values.
#[derive(Debug)]
struct Expected {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    stddev: Option<f64>,
    first: f64,
    last: f64,
    sorted: Vec<f64>,
}

/// Naive batch windows: for every window of every source that holds an event, the
/// aggregates over its events ordered by (time, arrival).
fn naive(
    setup: &Setup,
    on_time: &[(i64, Event)],
) -> BTreeMap<(String, String, i64, String), Expected> {
    let mut out = BTreeMap::new();
    for (i, &(size, slide)) in setup.windows.iter().enumerate() {
        let fields: &[&str] = if i == 0 { &["a", "b"] } else { &["a"] };
        let mut groups: Groups<'_> = BTreeMap::new();
        for (offset, e) in on_time {
            let t = e.time_ms;
            // Windows [k*slide, k*slide + size) holding t.
            let mut k = (t - size).div_euclid(slide) + 1;
            while k * slide <= t {
                for &f in fields {
                    let v = if f == "a" { e.a } else { e.b as f64 };
                    groups
                        .entry((format!("s{}", e.source), k * slide, f))
                        .or_default()
                        .push((t, *offset, v));
                }
                k += 1;
            }
        }
        for ((source, start, field), mut vals) in groups {
            vals.sort_by_key(|&(t, o, _)| (t, o));
            let xs: Vec<f64> = vals.iter().map(|v| v.2).collect();
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
            let mut sorted = xs.clone();
            sorted.sort_by(f64::total_cmp);
            out.insert(
                (format!("w{i}"), source, T0 + start * MS, field.to_owned()),
                Expected {
                    count: xs.len() as u64,
                    min: sorted[0],
                    max: *sorted.last().unwrap(),
                    sum: xs.iter().sum(),
                    stddev: (xs.len() > 1).then(|| var.sqrt()),
                    first: xs[0],
                    last: *xs.last().unwrap(),
                    sorted,
                },
            );
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

fn check_window(w: &WindowRecord, e: &Expected) -> Result<(), TestCaseError> {
    prop_assert_eq!(w.count, e.count, "{:?}", w);
    prop_assert_eq!(w.min, e.min);
    prop_assert_eq!(w.max, e.max);
    prop_assert!(close(w.sum, e.sum), "sum {} vs {}", w.sum, e.sum);
    prop_assert!(
        close(w.mean, e.sum / e.count as f64),
        "mean {} vs {}",
        w.mean,
        e.sum / e.count as f64
    );
    match (w.stddev, e.stddev) {
        (Some(a), Some(b)) => prop_assert!((a - b).abs() <= 1e-6 * (1.0 + b), "stddev {a} vs {b}"),
        (a, b) => prop_assert_eq!(a, b),
    }
    prop_assert_eq!(w.first, e.first);
    prop_assert_eq!(w.last, e.last);
    for (q, got) in [(0.5, w.p50), (0.95, w.p95), (0.99, w.p99)] {
        let want = e.sorted[(q * (e.sorted.len() - 1) as f64) as usize];
        let got = got.expect("percentiles are on");
        prop_assert!(
            (got - want).abs() <= 0.0101 * want.abs() + 1e-9,
            "p{} {got} vs {want} in {:?}",
            q * 100.0,
            e.sorted
        );
    }
    Ok(())
}

fn events() -> impl Strategy<Value = Vec<(Event, u16)>> {
    // Each event comes with a delivery delay, in per-mille of the allowed disorder.
    prop::collection::vec(
        (0u8..3, 0i64..12_000, -500i32..500, -50i64..50, 0u16..=1000).prop_map(
            |(source, time_ms, a, b, delay)| {
                (
                    Event {
                        source,
                        time_ms,
                        a: a as f64 / 10.0,
                        b,
                    },
                    delay,
                )
            },
        ),
        1..150,
    )
}

fn setup() -> impl Strategy<Value = Setup> {
    let window = prop_oneof![
        Just((1000, 1000)),
        Just((2000, 500)),
        Just((3000, 2000)),
        Just((5000, 1000)),
        Just((250, 250)),
        Just((1500, 1500)),
    ];
    (
        prop_oneof![Just(0), Just(300), Just(2000)],
        prop_oneof![Just(0), Just(700)],
        prop::collection::vec(window, 1..3),
    )
        .prop_map(|(out_of_orderness_ms, lateness_ms, windows)| Setup {
            out_of_orderness_ms,
            lateness_ms,
            windows,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn windows_equal_a_batch_group_by_and_late_events_are_late_once(
        setup in setup(),
        events in events(),
        stragglers in prop::collection::vec((0u8..3, 0i64..3000), 0..6),
    ) {
        // Identical points are one point (a later copy is a duplicate, counted apart):
        // the reference sees each once.
        let mut events = events;
        let mut seen = std::collections::HashSet::new();
        events.retain(|(e, _)| seen.insert((e.source, e.time_ms, e.a.to_bits(), e.b)));
        // Deliver each event `delay` after its time, at most the disorder the processor
        // accepts: then no event is late.
        let bound = setup.out_of_orderness_ms + setup.lateness_ms;
        let mut order: Vec<(i64, usize)> = events
            .iter()
            .enumerate()
            .map(|(i, (e, delay))| (e.time_ms + bound * i64::from(*delay) / 1000, i))
            .collect();
        order.sort();
        let mut delivered: Vec<Event> = order.iter().map(|&(_, i)| events[i].0.clone()).collect();
        // Then stragglers: far behind everything their source delivered, so beyond the
        // bound (each source is judged by its own clock; a source with nothing yet has
        // no clock to be behind).
        let mut late_expected = Vec::new();
        for (i, (source, back)) in stragglers.iter().enumerate() {
            let Some(newest) = delivered.iter().filter(|e| e.source == *source).map(|e| e.time_ms).max() else {
                continue;
            };
            let t = newest - bound - 1 - back;
            late_expected.push((delivered.len() as i64, t));
            // Each its own point (an identical copy would be a duplicate, not late again).
            delivered.push(Event { source: *source, time_ms: t, a: 1.0, b: 1000 + i as i64 });
        }

        let mut p = Processor::new(Arc::new(config(&setup)), SchemaRegistry::default(), "raw", 0);
        let mut out = Outputs::default();
        for (offset, e) in delivered.iter().enumerate() {
            p.process(&message(offset as i64, e), &mut out);
        }
        p.finish(&mut out);

        // Late: exactly the stragglers, each once, with how late they were.
        let late: Vec<(i64, i64)> = out.late.iter().map(|l| (l.origin.offset, (l.time - T0) / MS)).collect();
        prop_assert_eq!(&late, &late_expected);
        for l in &out.late {
            prop_assert!(l.lateness_ns > 0);
        }

        let on_time: Vec<(i64, Event)> = delivered
            .iter()
            .enumerate()
            .filter(|(i, _)| !late_expected.iter().any(|(o, _)| *o == *i as i64))
            .map(|(i, e)| (i as i64, e.clone()))
            .collect();
        let want = naive(&setup, &on_time);
        let mut got: BTreeMap<(String, String, i64, String), &WindowRecord> = BTreeMap::new();
        for w in &out.windows {
            let size = setup.windows[w.window[1..].parse::<usize>().unwrap()].0;
            prop_assert_eq!(w.window_end - w.window_start, size * MS);
            let key = (w.window.to_string(), w.source_id.to_string(), w.window_start, w.field.to_string());
            prop_assert!(got.insert(key.clone(), w).is_none(), "window {:?} emitted twice", key);
        }
        prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (key, w) in &got {
            check_window(w, &want[key])?;
        }
    }
}

/// Windows fire as the watermark passes, not only at the end: a sliding window's rows
/// come out while later events are still arriving.
#[test]
fn sliding_windows_fire_as_the_watermark_passes() {
    let setup = Setup {
        out_of_orderness_ms: 0,
        lateness_ms: 0,
        windows: vec![(2000, 500)],
    };
    let mut p = Processor::new(
        Arc::new(config(&setup)),
        SchemaRegistry::default(),
        "raw",
        0,
    );
    let mut out = Outputs::default();
    for (i, t) in (0..40).map(|i| i * 100).enumerate() {
        let e = Event {
            source: 0,
            time_ms: t,
            a: t as f64,
            b: 0,
        };
        p.process(&message(i as i64, &e), &mut out);
    }
    // Watermark at 3900 ms: windows ending at 500, 1000, ..., 3500 have fired (a and b each).
    let ends: Vec<i64> = out
        .windows
        .iter()
        .filter(|w| w.field == "a")
        .map(|w| (w.window_end - T0) / MS)
        .collect();
    assert_eq!(ends, vec![500, 1000, 1500, 2000, 2500, 3000, 3500]);
    let w = out
        .windows
        .iter()
        .find(|w| w.field == "a" && w.window_end == T0 + 3500 * MS)
        .unwrap();
    assert_eq!(
        (w.count, w.first, w.last, w.min, w.max),
        (20, 1500.0, 3400.0, 1500.0, 3400.0)
    );
}

/// Percentiles are exact (the value of rank ⌊q·(n−1)⌋) in windows of up to
/// `EXACT_UP_TO` values, and within the sketch's 1 % beyond, whether a single pane
/// holds too many values or merging panes makes too many.
#[test]
fn percentiles_are_exact_up_to_the_limit_and_sketched_beyond() {
    use pitwall_stream::window::EXACT_UP_TO;
    // 10 Hz for 60 s. Sliding 20 s every 10 s: panes of 100 values, windows of 100
    // (at the edges) and 200 (merged). Tumbling 15 s: one pane of 150 values.
    // Tumbling 12 s: 120 values, all kept.
    let setup = Setup {
        out_of_orderness_ms: 0,
        lateness_ms: 0,
        windows: vec![(20_000, 10_000), (15_000, 15_000), (12_000, 12_000)],
    };
    let events: Vec<(i64, Event)> = (0..600)
        .map(|i| {
            (
                i,
                Event {
                    source: 0,
                    time_ms: i * 100,
                    a: ((i * 7919) % 1000) as f64 / 10.0 + 1.0,
                    b: (i * 31) % 97 - 40,
                },
            )
        })
        .collect();
    let mut p = Processor::new(
        Arc::new(config(&setup)),
        SchemaRegistry::default(),
        "raw",
        0,
    );
    let mut out = Outputs::default();
    for (offset, e) in &events {
        p.process(&message(*offset, e), &mut out);
    }
    p.finish(&mut out);
    let want = naive(&setup, &events);
    assert_eq!(out.windows.len(), want.len());
    let (mut exact, mut sketched) = (0, 0);
    for w in &out.windows {
        let e = &want[&(
            w.window.to_string(),
            w.source_id.to_string(),
            w.window_start,
            w.field.to_string(),
        )];
        check_window(w, e).unwrap();
        if w.count as usize <= EXACT_UP_TO {
            exact += 1;
            for (q, got) in [(0.5, w.p50), (0.95, w.p95), (0.99, w.p99)] {
                assert_eq!(
                    got,
                    Some(e.sorted[(q * (e.sorted.len() - 1) as f64) as usize]),
                    "p{} of {w:?}",
                    q * 100.0
                );
            }
        } else {
            sketched += 1;
        }
    }
    // Both kinds, both ways of getting too many: 200 merged (w0) and 150 in one pane (w1).
    assert!(
        exact >= 5 && sketched >= 5,
        "{exact} exact, {sketched} sketched"
    );
    assert!(
        out.windows
            .iter()
            .any(|w| w.window == "w1" && w.count == 150)
    );
    assert!(
        out.windows
            .iter()
            .any(|w| w.window == "w0" && w.count == 200)
    );
}
