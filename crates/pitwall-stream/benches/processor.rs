//! Processor throughput: where an event's time goes between the raw topic and the lake.
//! Inputs are a simulated race (20 cars at 10 Hz, the default rules and windows).
//! Run: cargo bench -p pitwall-stream --bench processor

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pitwall_core::Message;
use pitwall_core::record::AnomalyRecord;
use pitwall_core::{Point, Precision, json, line_protocol};
use pitwall_sim::{Race, RaceConfig, Simulator};
use pitwall_stream::rules::RuleEngine;
use pitwall_stream::window::{Mark, WindowOperator};
use pitwall_stream::{
    BaselineMethod, Outputs, Processor, ProcessorConfig, RuleConfig, SchemaRegistry, Severity,
    WindowConfig,
};
use std::time::Duration;

// The allocator the pitwall binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_767_225_600_000_000_000;

fn race_points(n: usize) -> Vec<Point> {
    let mut sim = Race::new(RaceConfig::default(), 1, T0);
    let mut points = Vec::with_capacity(n + 20);
    while points.len() < n {
        sim.step(&mut points);
    }
    points.truncate(n);
    points
}

fn messages(points: &[Point]) -> Vec<Message> {
    points
        .iter()
        .enumerate()
        .map(|(i, p)| Message {
            partition: 0,
            offset: i as i64,
            key: Some(Bytes::copy_from_slice(p.tags["driver"].as_bytes())),
            payload: Bytes::from(json::encode(p).unwrap()),
            timestamp: p.time,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    const N: usize = 20_000;
    let points = race_points(N);
    let msgs = messages(&points);
    let lp = line_protocol::encode_all(&points).unwrap();

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("json_decode", |b| {
        b.iter(|| {
            for m in &msgs {
                std::hint::black_box(json::decode(&m.payload, 0, Precision::Ns).unwrap());
            }
        })
    });
    g.bench_function("json_encode", |b| {
        let mut buf = Vec::with_capacity(512);
        b.iter(|| {
            for p in &points {
                buf.clear();
                json::encode_into(p, &mut buf).unwrap();
                std::hint::black_box(&buf);
            }
        })
    });
    g.bench_function("line_protocol_parse", |b| {
        b.iter(|| {
            for p in line_protocol::parse(&lp, Precision::Ns, 0) {
                std::hint::black_box(p.unwrap());
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("processor");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    g.bench_function("process_race_events", |b| {
        let config = Arc::new(ProcessorConfig::default());
        b.iter(|| {
            let mut p = Processor::new(
                Arc::clone(&config),
                SchemaRegistry::default(),
                "telemetry.raw",
                0,
            );
            let mut out = Outputs::default();
            for m in &msgs {
                p.process(m, &mut out);
            }
            std::hint::black_box(out.len())
        })
    });
    g.finish();

    // The operators alone, on decoded points: one update is one field value into one
    // window (or pane). 4 fields per car event.
    let fields = ["rpm", "speed_kph", "throttle_pct", "engine_temp_c"];
    let sources: Vec<String> = points
        .iter()
        .map(|p| p.tags["driver"].to_string())
        .collect();
    let mut g = c.benchmark_group("windows");
    g.throughput(Throughput::Elements((N * fields.len()) as u64));
    g.sample_size(20);
    for (name, size, slide, percentiles) in [
        ("tumbling_10s", 10_000, None, false),
        ("tumbling_10s_percentiles", 10_000, None, true),
        ("sliding_5s_every_1s", 5_000, Some(1_000), false),
        ("sliding_5s_every_1s_percentiles", 5_000, Some(1_000), true),
    ] {
        let config = WindowConfig {
            name: name.into(),
            measurements: vec!["car".into()],
            size: Duration::from_millis(size),
            slide: slide.map(Duration::from_millis),
            fields: fields.iter().map(|f| f.to_string()).collect(),
            percentiles,
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut w = WindowOperator::new(&config, 0);
                let mut out = Vec::new();
                for (i, (p, s)) in points.iter().zip(&sources).enumerate() {
                    w.add(
                        s,
                        p,
                        Mark {
                            offset: i as i64,
                            max_time: p.time,
                        },
                    );
                    w.fire(p.time - 2_000_000_000, &mut out);
                }
                w.fire_all(&mut out);
                std::hint::black_box(out.len())
            })
        });
    }
    g.finish();

    // Every rule on every event, as the processor calls them: evaluate, then advance
    // (deadman and forgetting). The default rules give a car event ten (six thresholds,
    // rate of change, gear consistency, stuck, deadman); "all_kinds" adds a per-car
    // baseline so one event meets all six kinds.
    let mut g = c.benchmark_group("detectors");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    let mut all = ProcessorConfig::default();
    all.rules.push(RuleConfig::Baseline {
        name: "oil_outlier".into(),
        measurement: "car".into(),
        severity: Severity::Warning,
        field: "oil_temp_c".into(),
        method: BaselineMethod::Mad,
        threshold: 8.0,
        span: Duration::from_secs(60),
        refresh: Duration::from_secs(10),
        warm_up: Duration::from_secs(60),
        min_spread: 0.5,
    });
    all.validate().unwrap();
    // In the processor a point meets the rules right after it was decoded, while it is in
    // cache; 20,000 distinct points (20 MB of fields) would measure memory instead. So
    // the 400 points of 2 s of racing go back and forth 50 times (forward, then backward,
    // so no lap restarts mid-straight and raises RPM drops no race has), times moving on.
    const CYCLE: usize = 400;
    const STEP: i64 = 100_000_000;
    let mut cycle = race_points(CYCLE);
    let cars = 20;
    let forward: Vec<usize> = (0..CYCLE).collect();
    let backward: Vec<usize> = (0..CYCLE).rev().collect();
    let mut run = |config: &ProcessorConfig, out: &mut Vec<AnomalyRecord>| {
        let mut rules = RuleEngine::new(&config.rules, config.forget_after);
        let mut max = i64::MIN;
        for round in 0..N / CYCLE {
            let order = if round % 2 == 0 { &forward } else { &backward };
            for (k, &i) in order.iter().enumerate() {
                let p = &mut cycle[i];
                p.time = T0 + ((round * CYCLE + k) / cars) as i64 * STEP;
                let mark = Mark {
                    offset: (round * CYCLE + k) as i64,
                    max_time: max,
                };
                rules.evaluate(
                    &sources[i],
                    p,
                    p.time,
                    max.saturating_sub(2_000_000_000),
                    mark,
                    out,
                );
                rules.advance(p.time - 2_000_000_000, out);
                max = max.max(p.time);
            }
        }
    };
    for (name, config) in [
        ("default_rules", ProcessorConfig::default()),
        ("all_kinds", all),
    ] {
        let mut out = Vec::new();
        run(&config, &mut out);
        // What the bench raises, to show it is not formatting messages all the time.
        let mut by_rule = std::collections::BTreeMap::new();
        for a in &out {
            *by_rule.entry(a.rule.as_str()).or_insert(0) += 1;
        }
        eprintln!("{name}: anomaly rows per {N} events: {by_rule:?}");
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut out = Vec::new();
                run(&config, &mut out);
                std::hint::black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
