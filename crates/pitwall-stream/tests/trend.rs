//! The `trend` rules on the simulated race: a slow creep of engine and oil temperature
//! (a failing cooling system) is flagged before the engine passes its limit, and
//! ordinary racing (laps, corners, warm-up, short overheats and the other faults)
//! raises no trend.

use std::sync::Arc;

use bytes::Bytes;
use pitwall_core::Message;
use pitwall_core::json;
use pitwall_core::record::{AnomalyRecord, Phase};
use pitwall_sim::{FaultKind, InjectedFault, Race, RaceConfig, Simulator};
use pitwall_stream::{Outputs, Processor, ProcessorConfig, SchemaRegistry};

const T0: i64 = 1_767_225_600_000_000_000;
const MINUTE: i64 = 60_000_000_000;

/// Runs `minutes` of a race with the default rules; the episodes' starts and the faults.
fn race(config: RaceConfig, seed: u64, minutes: i64) -> (Vec<AnomalyRecord>, Vec<InjectedFault>) {
    race_with(config, seed, minutes, ProcessorConfig::default(), |_| {})
}

/// As [`race`], with `rules` and each point changed by `change` before it is sent.
fn race_with(
    config: RaceConfig,
    seed: u64,
    minutes: i64,
    rules: ProcessorConfig,
    mut change: impl FnMut(&mut pitwall_core::Point),
) -> (Vec<AnomalyRecord>, Vec<InjectedFault>) {
    let mut sim = Race::new(config, seed, T0);
    let mut p = Processor::new(
        Arc::new(rules),
        SchemaRegistry::default(),
        "telemetry.raw",
        0,
    );
    let mut out = Outputs::default();
    let mut points = Vec::new();
    let mut offset = 0;
    while sim.next_time() < T0 + minutes * MINUTE {
        points.clear();
        sim.step(&mut points);
        for pt in &mut points {
            change(pt);
            let m = Message {
                partition: 0,
                offset,
                key: None,
                payload: Bytes::from(json::encode(pt).unwrap()),
                timestamp: pt.time,
            };
            offset += 1;
            p.process(&m, &mut out);
            out.raw.clear();
            out.clean.clear();
            out.windows.clear();
        }
    }
    let starts = out
        .anomalies
        .into_iter()
        .filter(|a| a.phase == Phase::Start)
        .collect();
    (starts, sim.faults())
}

fn is_trend(a: &AnomalyRecord) -> bool {
    a.kind == "trend"
}

#[test]
fn a_temperature_creep_is_caught_before_the_limit() {
    let config = RaceConfig {
        cars: 3,
        faults_per_car_minute: 0.0,
        creeps_per_car_hour: 8.0,
        ..RaceConfig::default()
    };
    let (episodes, faults) = race(config, 7, 30);
    let creeps: Vec<&InjectedFault> = faults
        .iter()
        .filter(|f| f.kind == FaultKind::TempCreep && f.end.is_some())
        .collect();
    assert!(
        creeps.len() >= 2,
        "too few creeps for a meaningful test: {faults:?}"
    );
    for f in &creeps {
        let within = |a: &AnomalyRecord, rule: &str| {
            a.rule == rule
                && a.source_id == f.source_id
                && a.time >= f.start
                && a.time <= f.end.unwrap()
        };
        let trend: Vec<_> = episodes
            .iter()
            .filter(|a| within(a, "engine_temp_creep"))
            .collect();
        let oil: Vec<_> = episodes
            .iter()
            .filter(|a| within(a, "oil_temp_creep"))
            .collect();
        assert_eq!(oil.len(), 1, "creep {f:?}: oil trend episodes {oil:?}");
        let limit: Vec<_> = episodes
            .iter()
            .filter(|a| within(a, "engine_overheat"))
            .collect();
        assert_eq!(trend.len(), 1, "creep {f:?}: trend episodes {trend:?}");
        assert_eq!(
            limit.len(),
            1,
            "creep {f:?}: the limit is passed too: {limit:?}"
        );
        let ahead = (limit[0].time - trend[0].time) as f64 / 60e9;
        assert!(
            ahead > 0.5,
            "creep {f:?}: the trend came only {ahead:.2} min before the limit"
        );
        let oil_ahead = (limit[0].time - oil[0].time) as f64 / 60e9;
        assert!(
            oil_ahead > 0.0,
            "creep {f:?}: the oil trend came {:.1} min after the engine limit",
            -oil_ahead
        );
        eprintln!(
            "{} creep from minute {:.1}: engine trend {ahead:.1} min, oil trend {oil_ahead:.1} min before the engine limit",
            f.source_id,
            (f.start - T0) as f64 / 60e9
        );
    }
    // Every trend episode is a creep's.
    for a in episodes.iter().filter(|a| is_trend(a)) {
        assert!(
            creeps
                .iter()
                .chain(
                    faults
                        .iter()
                        .filter(|f| f.end.is_none())
                        .collect::<Vec<_>>()
                        .iter()
                )
                .any(|f| {
                    f.source_id == a.source_id
                        && a.time >= f.start
                        && a.time <= f.end.unwrap_or(i64::MAX)
                }),
            "a trend outside any creep: {a:?}"
        );
    }
}

#[test]
fn ordinary_racing_and_other_faults_raise_no_trend() {
    for (faults_per_car_minute, seed, cars, minutes) in [(0.0, 1, 4, 25), (0.4, 2, 10, 12)] {
        let config = RaceConfig {
            cars,
            faults_per_car_minute,
            ..RaceConfig::default()
        };
        let (episodes, faults) = race(config, seed, minutes);
        let trends: Vec<_> = episodes.iter().filter(|a| is_trend(a)).collect();
        assert!(
            trends.is_empty(),
            "{} faults, seed {seed}: {trends:#?}",
            faults.len()
        );
        if faults_per_car_minute > 0.0 {
            assert!(
                faults
                    .iter()
                    .filter(|f| f.kind == FaultKind::Overheating)
                    .count()
                    >= 3,
                "{faults:?}"
            );
        }
    }
}

/// Gear consistency learns each car's ratios: a car whose gearbox is not the
/// simulator's raises no mismatch once its ratios are learned (fixed ratios raise them
/// on every lap), and a reported gear that disagrees with speed and RPM still does.
#[test]
fn gear_ratios_are_learned_per_car() {
    let run = |rules: ProcessorConfig, gearbox: f64, faults_per_car_minute: f64| {
        let race = RaceConfig {
            cars: 3,
            faults_per_car_minute,
            ..RaceConfig::default()
        };
        // Another car: every gear `gearbox` times shorter (more RPM per km/h).
        let (episodes, faults) = race_with(race, 11, 8, rules, |pt| {
            if let Some(pitwall_core::FieldValue::I64(rpm)) = pt.fields.get_mut("rpm") {
                *rpm = (*rpm as f64 * gearbox).round() as i64;
            }
        });
        let mismatches: Vec<i64> = episodes
            .iter()
            .filter(|a| a.rule == "gear_mismatch")
            .map(|a| a.time)
            .collect();
        (mismatches, faults)
    };
    let learned = ProcessorConfig::default();
    let mut fixed = ProcessorConfig::default();
    for r in &mut fixed.rules {
        if let pitwall_stream::RuleConfig::GearConsistency { ratios, .. } = r {
            *ratios = pitwall_sim::gear_ratios().to_vec();
        }
    }
    let (with_fixed, _) = run(fixed, 1.12, 0.0);
    assert!(
        with_fixed.len() > 20,
        "fixed ratios misread another gearbox: {} mismatches",
        with_fixed.len()
    );
    let (with_learned, _) = run(learned.clone(), 1.12, 0.0);
    let after_warm_up: Vec<_> = with_learned
        .iter()
        .filter(|&&t| t >= T0 + 2 * MINUTE)
        .collect();
    assert!(
        after_warm_up.is_empty(),
        "learned ratios, another gearbox: {after_warm_up:?}"
    );
    // Real mismatches on that gearbox are still caught, each once.
    let (caught, faults) = run(learned, 1.12, 0.5);
    let gear_faults: Vec<_> = faults
        .iter()
        .filter(|f| f.kind == FaultKind::GearMismatch)
        .collect();
    assert!(gear_faults.len() >= 2, "{faults:?}");
    for f in &gear_faults {
        let n = caught
            .iter()
            .filter(|&&t| t >= f.start && t <= f.end.unwrap_or(i64::MAX))
            .count();
        assert_eq!(n, 1, "gear fault {f:?}: {caught:?}");
    }
    assert_eq!(
        caught.len(),
        gear_faults.len(),
        "no mismatch without a fault: {caught:?}"
    );
}

/// Tyres: ordinary stints (wear climbing a few % a minute, new tyres at 55-70 %) raise
/// nothing; one car's tyres wearing 12 % a minute are flagged by `tyre_wear_rate` well
/// before `tyre_worn` says they are finished.
#[test]
fn fast_tyre_wear_is_flagged_before_the_tyres_are_worn_out() {
    let config = RaceConfig {
        cars: 6,
        faults_per_car_minute: 0.0,
        ..RaceConfig::default()
    };
    let (episodes, _) = race_with(config, 5, 12, ProcessorConfig::default(), |p| {
        // VER's tyres degrade from minute 4 on, 12 % a minute.
        let ver = p.tags.get("driver").is_some_and(|d| &**d == "VER");
        let since = p.time - (T0 + 4 * MINUTE);
        if ver && since > 0 {
            let wear = (since as f64 / MINUTE as f64 * 12.0).min(100.0);
            p.fields.insert(
                pitwall_core::Name::from("tyre_wear_pct"),
                pitwall_core::FieldValue::F64(wear),
            );
        }
    });
    let tyres: Vec<_> = episodes
        .iter()
        .filter(|a| a.field == "tyre_wear_pct")
        .map(|a| (a.rule.as_str(), a.source_id.as_str(), a.time))
        .collect();
    assert!(
        tyres.iter().all(|(_, source, _)| *source == "VER"),
        "ordinary stints raised {tyres:?}"
    );
    let rate = tyres.iter().find(|(rule, ..)| *rule == "tyre_wear_rate");
    let worn = tyres.iter().find(|(rule, ..)| *rule == "tyre_worn");
    let (Some(rate), Some(worn)) = (rate, worn) else {
        panic!("expected both rules on VER: {tyres:?}")
    };
    // Worn at 80 % is 6.7 min after the degradation began; the trend comes minutes before.
    assert!(
        worn.2 - rate.2 >= 2 * MINUTE,
        "the trend came {:.1} min before the tyres were worn",
        (worn.2 - rate.2) as f64 / MINUTE as f64
    );
}
