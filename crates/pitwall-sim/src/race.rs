//! The F1 race: cars driving a [`Track`] at a fixed sample rate, with injected faults.

use pitwall_core::{FieldValue, Name, Point};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::track::{TOP_SPEED, Track};
use crate::{FaultKind, InjectedFault, Simulator};

/// The 2024 grid: driver code and team.
pub const GRID: [(&str, &str); 20] = [
    ("VER", "Red Bull"),
    ("PER", "Red Bull"),
    ("HAM", "Mercedes"),
    ("RUS", "Mercedes"),
    ("LEC", "Ferrari"),
    ("SAI", "Ferrari"),
    ("NOR", "McLaren"),
    ("PIA", "McLaren"),
    ("ALO", "Aston Martin"),
    ("STR", "Aston Martin"),
    ("GAS", "Alpine"),
    ("OCO", "Alpine"),
    ("ALB", "Williams"),
    ("SAR", "Williams"),
    ("TSU", "RB"),
    ("RIC", "RB"),
    ("BOT", "Sauber"),
    ("ZHO", "Sauber"),
    ("HUL", "Haas"),
    ("MAG", "Haas"),
];

/// What a team's car can do, relative to the best: straight-line speed (power and
/// drag) and cornering speed (downforce and grip); and how hard it is on its tyres.
#[derive(Debug, Clone, Copy)]
struct CarPerformance {
    power: f64,
    grip: f64,
    tyre_wear: f64,
}

/// The teams' cars, ordered roughly as in 2024: a Williams is quick on the straights
/// and slow in the corners, a Ferrari the other way round.
fn performance(team: &str) -> CarPerformance {
    let (power, grip, tyre_wear) = match team {
        "Red Bull" => (1.000, 1.000, 1.00),
        "McLaren" => (0.996, 1.000, 0.95),
        "Ferrari" => (0.998, 0.992, 1.05),
        "Mercedes" => (0.994, 0.990, 1.00),
        "Aston Martin" => (0.990, 0.982, 1.10),
        "RB" => (0.992, 0.975, 1.05),
        "Haas" => (0.988, 0.972, 1.20),
        "Alpine" => (0.985, 0.970, 1.05),
        "Williams" => (0.997, 0.962, 1.10),
        _ => (0.982, 0.960, 1.00),
    };
    CarPerformance {
        power,
        grip,
        tyre_wear,
    }
}

/// Top speed of each gear at the shift point, km/h (gears 1 to 8).
pub const GEAR_TOP_KPH: [f64; 8] = [100.0, 140.0, 175.0, 210.0, 245.0, 280.0, 310.0, 345.0];
/// Engine speed at the shift point.
pub const SHIFT_RPM: f64 = 12_500.0;

/// RPM per km/h in each gear: the ratios a consistency check needs.
pub fn gear_ratios() -> [f64; 8] {
    GEAR_TOP_KPH.map(|top| SHIFT_RPM / top)
}

/// Settings of the race simulator; every one has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RaceConfig {
    /// Number of cars (1 to 20; drivers come from the 2024 grid).
    pub cars: usize,
    /// Samples per second per car.
    pub hz: f64,
    /// Expected faults per car per simulated minute; 0 for a fault-free race.
    pub faults_per_car_minute: f64,
    /// Expected slow creeps per car per simulated hour: the engine (and so the oil)
    /// temperature climbing about 2.5 °C a minute until it passes the engine limit,
    /// as a failing cooling system does; the `trend` rules catch it before the
    /// threshold does. None starts in the first 7 minutes (the rules' warm-up).
    pub creeps_per_car_hour: f64,
    /// Session tag on every point.
    pub session: String,
}

impl Default for RaceConfig {
    fn default() -> Self {
        RaceConfig {
            cars: 20,
            hz: 10.0,
            faults_per_car_minute: 0.05,
            creeps_per_car_hour: 0.0,
            session: "sim-race".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct ActiveFault {
    kind: FaultKind,
    start: i64,
    /// For overheating: peak temperature; for a gear fault: the gear offset.
    magnitude: f64,
    index: usize,
}

#[derive(Debug, Clone)]
struct Car {
    driver: &'static str,
    team: &'static str,
    car: CarPerformance,
    /// The driver's cornering speed, relative to what the car can do.
    cornering: f64,
    /// How early the driver brakes for a corner, metres before the car must.
    brakes_early_m: f64,
    /// Tyre wear of the current stint, %, and the wear at which the team pits.
    tyre_wear: f64,
    pit_at_wear: f64,
    lap: i64,
    distance: f64,
    speed: f64,
    engine_temp: f64,
    oil_temp: f64,
    tyre_temp: [f64; 4],
    ers: f64,
    pending: Option<FaultKind>,
    fault: Option<ActiveFault>,
    full_throttle_since: Option<i64>,
    cooldown_until: i64,
    /// A creep under way: when it began and its entry in the fault log.
    creep: Option<(i64, usize)>,
}

/// Limits the default rules use; the simulator keeps normal driving inside them.
pub mod limits {
    /// Engine temperature above which a car is overheating, °C.
    pub const ENGINE_TEMP_C: f64 = 120.0;
    /// Tyre surface temperature above which a tyre is overheating, °C.
    pub const TYRE_TEMP_C: f64 = 125.0;
    /// Minimum RPM drop that is a fault rather than a gear change.
    pub const RPM_DROP: f64 = 4_500.0;
}

const SECOND: i64 = 1_000_000_000;
use limits::TYRE_TEMP_C;

/// A deterministic F1 race: the same seed and config give the same points.
#[derive(Debug)]
pub struct Race {
    config: RaceConfig,
    track: Track,
    cars: Vec<Car>,
    rng: ChaCha8Rng,
    /// Draws for creeps only, so turning them on changes nothing else of a race.
    creep_rng: ChaCha8Rng,
    start: i64,
    time: i64,
    interval: i64,
    faults: Vec<InjectedFault>,
}

impl Race {
    /// A race on the default track starting at `start_time` (ns since the epoch).
    pub fn new(config: RaceConfig, seed: u64, start_time: i64) -> Self {
        Self::on_track(config, Track::default(), seed, start_time)
    }

    /// A race on `track`.
    pub fn on_track(config: RaceConfig, track: Track, seed: u64, start_time: i64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Drivers' styles from a stream of their own, so the race's other draws stay.
        let mut style = ChaCha8Rng::seed_from_u64(seed ^ 0x7374_796c_6500);
        let n = config.cars.clamp(1, GRID.len());
        let cars = (0..n)
            .map(|i| {
                let (driver, team) = GRID[i];
                let pace: f64 = rng.random_range(0.965..1.0);
                Car {
                    driver,
                    team,
                    car: performance(team),
                    cornering: 0.985 + (pace - 0.965) / 0.035 * 0.015,
                    brakes_early_m: style.random_range(0.0..30.0),
                    tyre_wear: style.random_range(0.0..10.0),
                    pit_at_wear: style.random_range(55.0..70.0),
                    lap: 0,
                    // A grid: each car 8 m behind the one ahead, before the line.
                    distance: track.length_m() - 8.0 * (i as f64 + 1.0),
                    speed: 0.0,
                    engine_temp: rng.random_range(92.0..96.0),
                    oil_temp: rng.random_range(98.0..102.0),
                    tyre_temp: [rng.random_range(80.0..86.0); 4],
                    ers: 100.0,
                    pending: None,
                    fault: None,
                    full_throttle_since: None,
                    cooldown_until: start_time + 20 * SECOND,
                    creep: None,
                }
            })
            .collect();
        let interval = (1e9 / config.hz.max(0.001)).round() as i64;
        Race {
            config,
            track,
            cars,
            rng,
            creep_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6372_6565_7000),
            start: start_time,
            time: start_time,
            interval,
            faults: Vec::new(),
        }
    }

    /// The track the cars drive.
    pub fn track(&self) -> &Track {
        &self.track
    }
}

impl Simulator for Race {
    fn next_time(&self) -> i64 {
        self.time
    }

    fn step(&mut self, out: &mut Vec<Point>) {
        let dt = self.interval as f64 / 1e9;
        let now = self.time;
        let fault_chance = self.config.faults_per_car_minute * dt / 60.0;
        for car in &mut self.cars {
            let here = self.track.at(car.distance);
            // Cars follow the profile: on the straights as fast as their power allows,
            // in corners (and braking for them) as their grip, the driver and the
            // tyres' wear allow; each driver brakes a little earlier than the car must.
            let corner = car.car.grip * car.cornering * (1.0 - 0.0008 * car.tyre_wear);
            let scaled = |speed: f64| {
                if speed >= TOP_SPEED * 0.999 {
                    speed * car.car.power
                } else {
                    (speed * corner).min(TOP_SPEED * car.car.power)
                }
            };
            let ahead = self
                .track
                .at((car.distance + car.brakes_early_m) % self.track.length_m());
            let profile = if ahead.braking {
                scaled(here.speed).min(scaled(ahead.speed))
            } else {
                scaled(here.speed)
            };
            let target = profile * (1.0 - self.rng.random_range(0.0..0.004));
            let max_gain = 14.0 * (1.0 - car.speed / TOP_SPEED).max(0.02) * dt;
            car.speed = if target > car.speed {
                (car.speed + max_gain).min(target)
            } else {
                target
            };
            car.distance += car.speed * dt;
            if car.distance >= self.track.length_m() {
                car.distance -= self.track.length_m();
                car.lap += 1;
            }
            let pos = self.track.at(car.distance);
            let speed_kph = car.speed * 3.6;
            let accelerating = pos.accelerating || car.speed < target - 0.5;
            let braking = pos.braking && !accelerating;
            let throttle = if braking {
                0.0
            } else if accelerating || pos.speed >= TOP_SPEED * 0.999 {
                100.0
            } else {
                // Holding a corner speed.
                55.0 + self.rng.random_range(-5.0..5.0)
            };
            car.full_throttle_since = match (throttle >= 100.0, car.full_throttle_since) {
                (true, Some(since)) => Some(since),
                (true, None) => Some(now),
                (false, _) => None,
            };
            let gear = GEAR_TOP_KPH
                .iter()
                .position(|&top| speed_kph <= top * 0.985)
                .unwrap_or(7);
            let ratio = SHIFT_RPM / GEAR_TOP_KPH[gear];
            let mut rpm =
                (speed_kph * ratio).max(4_000.0) * (1.0 + self.rng.random_range(-0.004..0.004));
            let mut reported_gear = gear as i64 + 1;
            let load = throttle / 100.0;

            // A creep: the cooling fails slowly, the engine's target climbs 2.5 °C a
            // minute until the engine passes its limit.
            let creep_chance = self.config.creeps_per_car_hour * dt / 3600.0;
            if creep_chance > 0.0
                && car.creep.is_none()
                && now - self.start >= 7 * 60 * SECOND
                && self.creep_rng.random::<f64>() < creep_chance
            {
                self.faults.push(InjectedFault {
                    kind: FaultKind::TempCreep,
                    measurement: "car".into(),
                    source_id: car.driver.to_owned(),
                    start: now,
                    end: None,
                });
                car.creep = Some((now, self.faults.len() - 1));
            }
            let creep = car
                .creep
                .map_or(0.0, |(since, _)| 2.5 * (now - since) as f64 / 60e9);
            // Normal thermal behaviour: first-order lags toward load-dependent targets.
            let engine_target = 96.0 + 12.0 * load + creep;
            car.engine_temp += (engine_target - car.engine_temp) * (dt / 20.0);
            let oil_target = car.engine_temp + 4.0;
            car.oil_temp += (oil_target - car.oil_temp) * (dt / 40.0);
            let cornering = if self.track.is_straight(car.distance) {
                0.0
            } else {
                1.0
            };
            // Tyres wear with distance, more in corners; worn tyres run hotter. The team
            // pits for new ones at a wear it chose for the stint.
            car.tyre_wear += dt * (0.03 + 0.05 * cornering) * car.car.tyre_wear;
            if car.tyre_wear >= car.pit_at_wear {
                car.tyre_wear = 0.0;
            }
            for (i, t) in car.tyre_temp.iter_mut().enumerate() {
                let side = if i % 2 == 0 { 1.0 } else { 0.9 };
                let target = 88.0
                    + 14.0 * cornering * side
                    + if braking { 6.0 } else { 0.0 }
                    + 0.08 * car.tyre_wear;
                *t += (target - *t) * (dt / 6.0);
            }
            car.ers = if braking {
                (car.ers + 1.5).min(100.0)
            } else if throttle >= 100.0 {
                (car.ers - 0.35).max(0.0)
            } else {
                car.ers
            };

            // Faults: draw, wait for a moment they can show, apply, and log the truth.
            if car.fault.is_none()
                && car.pending.is_none()
                && now >= car.cooldown_until
                && self.rng.random::<f64>() < fault_chance
            {
                car.pending = Some(match self.rng.random_range(0..4) {
                    0 => FaultKind::Overheating,
                    1 => FaultKind::RpmDrop,
                    2 => FaultKind::GearMismatch,
                    _ => FaultKind::TyreOverheat,
                });
            }
            if let Some(kind) = car.pending {
                let ready = match kind {
                    FaultKind::Overheating | FaultKind::TyreOverheat => true,
                    // Flat out for a second on a fast straight: an RPM collapse cannot be a gear change.
                    FaultKind::RpmDrop => {
                        car.full_throttle_since
                            .is_some_and(|since| now - since >= SECOND)
                            && rpm >= 10_500.0
                            && pos.speed >= TOP_SPEED * 0.7
                    }
                    // After the first laps, once the rule has learned each gear's ratio.
                    FaultKind::GearMismatch => {
                        speed_kph >= 150.0 && now - self.start >= 120 * SECOND
                    }
                    _ => false,
                };
                if ready {
                    car.pending = None;
                    let magnitude = match kind {
                        FaultKind::Overheating => self.rng.random_range(128.0..136.0),
                        FaultKind::TyreOverheat => self.rng.random_range(132.0..140.0),
                        FaultKind::GearMismatch => {
                            if gear >= 5 {
                                -2.0
                            } else {
                                2.0
                            }
                        }
                        _ => 0.0,
                    };
                    self.faults.push(InjectedFault {
                        kind,
                        measurement: "car".into(),
                        source_id: car.driver.into(),
                        start: now,
                        end: None,
                    });
                    car.fault = Some(ActiveFault {
                        kind,
                        start: now,
                        magnitude,
                        index: self.faults.len() - 1,
                    });
                }
            }
            let mut ended = false;
            if let Some(f) = &car.fault {
                let age = (now - f.start) as f64 / 1e9;
                match f.kind {
                    FaultKind::Overheating => {
                        // Climb over 3 s, hold 4 s, then cool down through the normal lag.
                        if age < 3.0 {
                            let from = car.engine_temp.min(110.0);
                            car.engine_temp = from + (f.magnitude - from) * (age / 3.0).max(0.1);
                        } else if age < 7.0 {
                            car.engine_temp = f.magnitude + self.rng.random_range(-0.3..0.3);
                        } else {
                            car.engine_temp += (engine_target - car.engine_temp) * (dt / 2.0);
                            ended = car.engine_temp < limits::ENGINE_TEMP_C - 3.0;
                        }
                    }
                    FaultKind::TyreOverheat => {
                        // Climb over 2 s, hold 3 s, then cool down through the normal lag.
                        let t = &mut car.tyre_temp[0];
                        if age < 2.0 {
                            let from = t.min(110.0);
                            *t = from + (f.magnitude - from) * (age / 2.0).max(0.1);
                        } else if age < 5.0 {
                            *t = f.magnitude + self.rng.random_range(-0.5..0.5);
                        } else {
                            ended = *t < TYRE_TEMP_C - 4.0;
                        }
                    }
                    FaultKind::RpmDrop => {
                        rpm = 3_600.0 + self.rng.random_range(0.0..400.0);
                        ended = age >= 1.5;
                    }
                    FaultKind::GearMismatch => {
                        reported_gear = (reported_gear + f.magnitude as i64).clamp(1, 8);
                        ended = age >= 2.0;
                    }
                    _ => ended = true,
                }
                if ended {
                    self.faults[f.index].end = Some(now);
                    car.fault = None;
                    car.cooldown_until = now + 20 * SECOND;
                }
            }

            if let Some((_, index)) = car.creep
                && car.engine_temp > limits::ENGINE_TEMP_C + 1.0
            {
                // Past the limit: the team would stop the car; the simulation lets it
                // cool and carries on (the threshold episode ends as it does).
                self.faults[index].end = Some(now);
                car.creep = None;
                car.engine_temp = 100.0;
                car.oil_temp = 104.0;
            }

            let drs =
                self.track.segments[pos.segment].drs_zone && throttle >= 100.0 && speed_kph > 250.0;
            let f = |v: f64| FieldValue::F64((v * 10.0).round() / 10.0);
            let [fl, fr, rl, rr] = car.tyre_temp;
            // In key order, so the maps are built by appending (no search, no shifting).
            let tags = [
                ("driver", car.driver),
                ("session", self.config.session.as_str()),
                ("team", car.team),
                ("track", self.track.name.as_str()),
            ];
            let fields = [
                ("brake", FieldValue::Bool(braking)),
                ("distance_m", f(car.distance)),
                ("drs", FieldValue::Bool(drs)),
                ("engine_temp_c", f(car.engine_temp)),
                ("ers_pct", f(car.ers)),
                ("gear", FieldValue::I64(reported_gear)),
                ("lap", FieldValue::I64(car.lap)),
                ("oil_temp_c", f(car.oil_temp)),
                ("rpm", FieldValue::I64(rpm.round() as i64)),
                ("speed_kph", f(speed_kph)),
                ("throttle_pct", f(throttle)),
                ("tyre_temp_fl_c", f(fl)),
                ("tyre_temp_fr_c", f(fr)),
                ("tyre_temp_rl_c", f(rl)),
                ("tyre_temp_rr_c", f(rr)),
                ("tyre_wear_pct", f(car.tyre_wear)),
                ("x", f(pos.x)),
                ("y", f(pos.y)),
            ];
            let p = Point {
                measurement: "car".to_owned(),
                tags: tags
                    .into_iter()
                    .map(|(k, v)| (Name::from(k), Name::from(v)))
                    .collect(),
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (Name::from(k), v))
                    .collect(),
                time: now,
            };
            out.push(p);
        }
        self.time += self.interval;
    }

    fn interval(&self) -> i64 {
        self.interval
    }

    fn faults(&self) -> Vec<InjectedFault> {
        self.faults.clone()
    }
}
