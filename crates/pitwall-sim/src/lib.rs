//! Deterministic telemetry simulators: an F1 race ([`Race`]) and an IoT sensor fleet
//! ([`Fleet`]).
//!
//! A simulator is a pure state machine over simulated time: [`Simulator::step`] appends
//! the points of the next sample instant. The same seed and config always give the same
//! points, so tests can replay a race exactly. Pacing against the wall clock (real time,
//! N times real time, as fast as possible) is the caller's business. Simulators inject
//! faults on purpose and keep a log of them ([`Simulator::faults`]) so tests can check
//! that each one was caught.

mod iot;
mod race;
pub mod track;

pub use iot::{Fleet, IotConfig, SENSOR_TEMP_LIMIT_C};
pub use race::{GEAR_TOP_KPH, GRID, Race, RaceConfig, SHIFT_RPM, gear_ratios, limits};

use pitwall_core::Point;

/// The kinds of fault the simulators inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// Engine temperature climbs past the limit and stays there for seconds.
    Overheating,
    /// RPM collapses at full throttle on a straight.
    RpmDrop,
    /// The reported gear does not match speed and RPM.
    GearMismatch,
    /// The front-left tyre's surface climbs past 125 °C for a few seconds.
    TyreOverheat,
    /// A sensor reports a temperature far above its normal range.
    SensorOverheat,
    /// A sensor's temperature freezes at its last reading for a minute.
    SensorStuck,
    /// A sensor sends nothing for 30 seconds.
    SensorDropout,
    /// A sensor's pressure jumps by several hPa for 20 seconds: inside any plausible
    /// range, far outside its own recent behaviour.
    PressureSpike,
    /// A car's engine and oil temperature creep up about 2.5 °C a minute until the
    /// engine passes its limit (a failing cooling system); only when
    /// `creeps-per-car-hour` is set, so not in [`FaultKind::ALL`].
    TempCreep,
}

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Overheating,
        FaultKind::RpmDrop,
        FaultKind::GearMismatch,
        FaultKind::TyreOverheat,
        FaultKind::SensorOverheat,
        FaultKind::SensorStuck,
        FaultKind::SensorDropout,
        FaultKind::PressureSpike,
    ];
}

/// The truth about one injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    /// What was injected.
    pub kind: FaultKind,
    /// Measurement of the affected source.
    pub measurement: String,
    /// Affected source id (driver code or sensor id).
    pub source_id: String,
    /// First sample showing the fault, ns.
    pub start: i64,
    /// First sample back to normal, ns; `None` while it lasts.
    pub end: Option<i64>,
}

/// A seeded source of points over simulated time.
pub trait Simulator: Send + std::fmt::Debug {
    /// Simulated time of the next step, ns since the epoch.
    fn next_time(&self) -> i64;
    /// Appends the points of the next sample instant and advances the clock.
    fn step(&mut self, out: &mut Vec<Point>);
    /// Simulated time between steps, ns.
    fn interval(&self) -> i64;
    /// Faults injected so far (read rarely: copied out on demand).
    fn faults(&self) -> Vec<InjectedFault>;
}

/// Several simulators interleaved in time order.
#[derive(Debug, Default)]
pub struct Mixed {
    sims: Vec<Box<dyn Simulator>>,
}

impl Mixed {
    /// Interleaves `sims`.
    pub fn new(sims: Vec<Box<dyn Simulator>>) -> Self {
        Mixed { sims }
    }
}

impl Simulator for Mixed {
    fn next_time(&self) -> i64 {
        self.sims
            .iter()
            .map(|s| s.next_time())
            .min()
            .unwrap_or(i64::MAX)
    }

    fn step(&mut self, out: &mut Vec<Point>) {
        if let Some(s) = self.sims.iter_mut().min_by_key(|s| s.next_time()) {
            s.step(out);
        }
    }

    fn interval(&self) -> i64 {
        self.sims.iter().map(|s| s.interval()).min().unwrap_or(1)
    }

    fn faults(&self) -> Vec<InjectedFault> {
        self.sims.iter().flat_map(|s| s.faults()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, faults: f64) -> (Vec<Point>, Vec<InjectedFault>) {
        let race = RaceConfig {
            faults_per_car_minute: faults,
            ..RaceConfig::default()
        };
        let mut sim = Mixed::new(vec![
            Box::new(Race::new(race, seed, 0)),
            Box::new(Fleet::new(IotConfig::default(), seed, 0)),
        ]);
        let mut out = Vec::new();
        while sim.next_time() < 120 * 1_000_000_000 {
            sim.step(&mut out);
        }
        let faults = sim.faults();
        (out, faults)
    }

    #[test]
    fn the_same_seed_gives_the_same_race() {
        let (a, fa) = run(3, 1.0);
        let (b, fb) = run(3, 1.0);
        assert_eq!(a, b);
        assert_eq!(fa, fb);
        let (c, _) = run(4, 1.0);
        assert_ne!(a, c, "another seed gives another race");
        // 20 cars at 10 Hz and 20 sensors at 1 Hz for 120 s.
        assert_eq!(a.len(), 20 * 10 * 120 + 20 * 120);
        assert!(!fa.is_empty(), "a high fault rate injects faults");
    }

    #[test]
    fn cars_carry_every_documented_field() {
        let (points, _) = run(1, 0.0);
        let car = points.iter().find(|p| p.measurement == "car").unwrap();
        for f in [
            "speed_kph",
            "rpm",
            "gear",
            "throttle_pct",
            "brake",
            "drs",
            "engine_temp_c",
            "oil_temp_c",
            "tyre_temp_fl_c",
            "tyre_temp_fr_c",
            "tyre_temp_rl_c",
            "tyre_temp_rr_c",
            "tyre_wear_pct",
            "ers_pct",
            "lap",
            "distance_m",
            "x",
            "y",
        ] {
            assert!(car.fields.contains_key(f), "missing {f}");
        }
        for t in ["driver", "team", "session"] {
            assert!(car.tags.contains_key(t), "missing tag {t}");
        }
        let sensor = points.iter().find(|p| p.measurement == "sensor").unwrap();
        assert!(sensor.tags.contains_key("sensor_id") && sensor.tags.contains_key("site"));
        // Cars go round: some complete laps in two minutes.
        assert!(
            points
                .iter()
                .any(|p| p.fields.get("lap") == Some(&pitwall_core::FieldValue::I64(1)))
        );
    }
}

#[cfg(test)]
mod driver_tests {
    use super::*;

    /// Lap times per driver over `minutes` of a fault-free race: (driver, best lap s).
    fn best_laps(seed: u64, minutes: i64) -> Vec<(String, f64)> {
        let config = RaceConfig {
            faults_per_car_minute: 0.0,
            ..RaceConfig::default()
        };
        let mut race = Race::new(config, seed, 0);
        let mut out = Vec::new();
        let mut lap_start: std::collections::HashMap<String, (i64, i64)> = Default::default();
        let mut best: std::collections::BTreeMap<String, f64> = Default::default();
        while race.next_time() < minutes * 60_000_000_000 {
            out.clear();
            race.step(&mut out);
            for p in &out {
                let driver = p.tags.get("driver").unwrap().to_string();
                let Some(pitwall_core::FieldValue::I64(lap)) = p.fields.get("lap") else {
                    continue;
                };
                let e = lap_start.entry(driver.clone()).or_insert((*lap, p.time));
                if *lap != e.0 {
                    // Laps after the first (from the grid) are whole laps.
                    if e.0 >= 1 {
                        let secs = (p.time - e.1) as f64 / 1e9;
                        let b = best.entry(driver.clone()).or_insert(f64::MAX);
                        *b = b.min(secs);
                    }
                    *e = (*lap, p.time);
                }
            }
        }
        best.into_iter().collect()
    }

    #[test]
    fn teams_and_drivers_differ_enough_to_compare() {
        let laps = best_laps(3, 6);
        eprintln!("best laps: {laps:?}");
        let of = |d: &str| laps.iter().find(|(x, _)| x == d).unwrap().1;
        // Red Bull is quicker than Sauber by more than a second a lap; team-mates differ
        // by a few tenths, not nothing.
        assert!(of("ZHO") - of("VER") > 1.0, "{laps:?}");
        assert!(
            (of("VER") - of("PER")).abs() > 0.05,
            "team-mates drive identically: {laps:?}"
        );
        let spread = laps.iter().map(|l| l.1).fold(f64::MIN, f64::max)
            - laps.iter().map(|l| l.1).fold(f64::MAX, f64::min);
        assert!(
            spread > 1.5 && spread < 8.0,
            "lap-time spread {spread:.2} s: {laps:?}"
        );
        // Deterministic per seed.
        assert_eq!(laps, best_laps(3, 6));
    }
}
