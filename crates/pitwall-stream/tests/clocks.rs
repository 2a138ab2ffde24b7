//! Event time per source: a source whose clock runs ahead (or behind) is judged by its
//! own clock and changes nothing for the others on its partition, and a replay from a
//! checkpoint rebuilds every source's clock.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use pitwall_core::Message;
use pitwall_core::{FieldValue, Point, json};
use pitwall_sim::{Fleet, IotConfig, Mixed, Race, RaceConfig, Simulator};
use pitwall_stream::{Outputs, Processor, ProcessorConfig, SchemaRegistry};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_767_225_600 * S;
/// The source whose clock is wrong.
const SKEWED: &str = "sensor-003";

fn source_of(p: &Point) -> &str {
    p.tags.get("driver").or(p.tags.get("sensor_id")).unwrap()
}

/// A race and a sensor fleet with faults, delivered as a network does (most points at
/// once, some up to 1.5 s late, a few 2 to 6 s late: late for the processor). `skew`:
/// `None` leaves [`SKEWED`] out, `Some(d)` stamps its points `d` off the true time
/// (they still arrive when they would).
fn stream(seed: u64, skew: Option<i64>) -> Vec<Message> {
    let race = RaceConfig {
        cars: 2,
        faults_per_car_minute: 3.0,
        ..RaceConfig::default()
    };
    let fleet = IotConfig {
        sensors: 6,
        faults_per_sensor_minute: 2.0,
        ..IotConfig::default()
    };
    let mut sim = Mixed::new(vec![
        Box::new(Race::new(race, seed, T0)),
        Box::new(Fleet::new(fleet, seed, T0)),
    ]);
    let mut points = Vec::new();
    while points.len() < 15_000 {
        sim.step(&mut points);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sent: Vec<(i64, Point)> = Vec::new();
    for mut p in points {
        // Drawn for every point, so the others' delays are the same in every run.
        let delay = match rng.random_range(0..100) {
            0..80 => 0,
            80..97 => rng.random_range(0..1_500_000_000),
            _ => rng.random_range(2_000_000_000..6_000_000_000),
        };
        let arrival = p.time + delay;
        if source_of(&p) == SKEWED {
            match skew {
                None => continue,
                Some(d) => p.time += d,
            }
        }
        sent.push((arrival, p));
    }
    sent.sort_by_key(|(arrival, _)| *arrival);
    sent.into_iter()
        .enumerate()
        .map(|(i, (arrival, p))| Message {
            partition: 0,
            offset: i as i64,
            key: Some(Bytes::copy_from_slice(source_of(&p).as_bytes())),
            payload: Bytes::from(json::encode(&p).unwrap()),
            timestamp: arrival,
        })
        .collect()
}

fn run(msgs: &[Message]) -> Outputs {
    let mut p = Processor::new(
        Arc::new(ProcessorConfig::default()),
        SchemaRegistry::default(),
        "telemetry.raw",
        0,
    );
    let mut out = Outputs::default();
    for m in msgs {
        p.process(m, &mut out);
    }
    p.finish(&mut out);
    out
}

/// What the processor made of every source but `SKEWED`, as comparable sets.
#[derive(Debug, PartialEq)]
struct Others {
    clean: BTreeSet<String>,
    windows: BTreeSet<String>,
    episodes: BTreeSet<String>,
    late: BTreeSet<String>,
}

fn others(out: &Outputs) -> Others {
    Others {
        clean: out
            .clean
            .iter()
            .filter(|p| source_of(p) != SKEWED)
            .map(|p| format!("{p:?}"))
            .collect(),
        windows: out
            .windows
            .iter()
            .filter(|w| w.source_id != SKEWED)
            .map(|w| format!("{w:?}"))
            .collect(),
        episodes: out
            .anomalies
            .iter()
            .filter(|a| a.source_id != SKEWED)
            .map(|a| format!("{a:?}"))
            .collect(),
        late: out
            .late
            .iter()
            .filter(|l| l.source_id != SKEWED)
            .map(|l| format!("{} {} {}", l.source_id, l.time, l.watermark))
            .collect(),
    }
}

#[test]
fn a_source_whose_clock_runs_ahead_changes_nothing_for_the_others() {
    for seed in 1..=2 {
        let without = run(&stream(seed, None));
        let on_time = run(&stream(seed, Some(0)));
        let ahead = run(&stream(seed, Some(600 * S)));
        let behind = run(&stream(seed, Some(-20 * S)));
        let reference = others(&without);
        assert!(
            reference.windows.len() > 100 && !reference.late.is_empty(),
            "seed {seed}: {} windows",
            reference.windows.len()
        );
        assert!(
            reference.episodes.len() > 10,
            "seed {seed}: {} episode rows",
            reference.episodes.len()
        );
        for (what, out) in [
            ("on time", &on_time),
            ("10 minutes ahead", &ahead),
            ("20 s behind", &behind),
        ] {
            let got = others(out);
            assert_eq!(
                got.clean, reference.clean,
                "seed {seed}, {SKEWED} {what}: others' clean rows"
            );
            assert_eq!(
                got.windows, reference.windows,
                "seed {seed}, {SKEWED} {what}: others' windows"
            );
            assert_eq!(
                got.late, reference.late,
                "seed {seed}, {SKEWED} {what}: others' late points"
            );
            assert!(
                got.episodes == reference.episodes,
                "seed {seed}, {SKEWED} {what}: others' episodes differ: only with it {:#?}, only without {:#?}",
                got.episodes
                    .difference(&reference.episodes)
                    .collect::<Vec<_>>(),
                reference
                    .episodes
                    .difference(&got.episodes)
                    .collect::<Vec<_>>()
            );
        }
        // And the skewed source is judged by its own clock: as much of it is late, and
        // as many of its windows fire, as when its clock is right.
        let of_skewed = |out: &Outputs| {
            (
                out.clean.iter().filter(|p| source_of(p) == SKEWED).count(),
                out.late.iter().filter(|l| l.source_id == SKEWED).count(),
                out.windows.iter().filter(|w| w.source_id == SKEWED).count(),
            )
        };
        assert!(
            of_skewed(&on_time).0 > 200 && of_skewed(&on_time).2 > 20,
            "{:?}",
            of_skewed(&on_time)
        );
        assert_eq!(
            of_skewed(&ahead),
            of_skewed(&on_time),
            "seed {seed}: (clean, late, windows) of {SKEWED} 10 minutes ahead"
        );
        assert_eq!(
            of_skewed(&behind),
            of_skewed(&on_time),
            "seed {seed}: (clean, late, windows) of {SKEWED} 20 s behind"
        );
    }
}

/// A source's clock is state a replay must rebuild even when nothing else holds it (no
/// window or rule for its measurement): a point behind its own clock is late after a
/// restart as before it.
#[test]
fn a_sources_clock_survives_a_checkpoint() {
    let config = Arc::new(ProcessorConfig {
        windows: Vec::new(),
        rules: Vec::new(),
        ..ProcessorConfig::default()
    });
    let point = |id: &str, t: i64| {
        Point::new("sensor", t)
            .tag("sensor_id", id)
            .field("v", FieldValue::F64(1.0))
    };
    let message = |offset: i64, p: &Point, received: i64| Message {
        partition: 0,
        offset,
        key: None,
        payload: Bytes::from(json::encode(p).unwrap()),
        timestamp: received,
    };
    // "ahead" reports once, 90 s ahead; a minute of others' data; then "ahead" sends a
    // point 10 s behind its own clock: late for it (though far ahead of the others).
    let mut msgs = vec![message(0, &point("ahead", T0 + 90 * S), T0)];
    for i in 1..=120 {
        msgs.push(message(i, &point("steady", T0 + i * S / 2), T0 + i * S / 2));
    }
    msgs.push(message(121, &point("ahead", T0 + 80 * S), T0 + 61 * S));
    let mut whole = Processor::new(Arc::clone(&config), SchemaRegistry::default(), "raw", 0);
    let mut out = Outputs::default();
    let mut cp = None;
    for m in &msgs {
        if m.offset == 100 {
            cp = Some(whole.checkpoint(100));
        }
        whole.process(m, &mut out);
    }
    assert_eq!(out.late.len(), 1, "{:?}", out.late);
    assert_eq!(
        out.late[0].watermark,
        T0 + 88 * S,
        "judged by its own clock (90 s less 2 s)"
    );
    let cp = cp.unwrap();
    assert_eq!(
        cp.replay_from, 0,
        "the replay must start where the clock was set: {cp:?}"
    );
    let mut rebuilt = Processor::new(config, SchemaRegistry::default(), "raw", 0);
    rebuilt.resume(&cp);
    let mut again = Outputs::default();
    for m in &msgs[cp.replay_from as usize..] {
        let mut o = Outputs::default();
        rebuilt.process(m, &mut o);
        if m.offset >= cp.next {
            again.append(&mut o);
        }
    }
    assert_eq!(again.late, out.late);
}
