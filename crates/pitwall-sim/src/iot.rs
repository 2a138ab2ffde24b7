//! An IoT sensor fleet: temperature, humidity and pressure from sensors spread over sites.

use pitwall_core::{FieldValue, Point};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{FaultKind, InjectedFault, Simulator};

/// Settings of the sensor fleet; every one has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct IotConfig {
    /// Number of sensors.
    pub sensors: usize,
    /// Number of sites the sensors are spread over.
    pub sites: usize,
    /// Samples per second per sensor.
    pub hz: f64,
    /// Expected faults (overheating, stuck, silent, pressure spike) per sensor per
    /// simulated minute.
    pub faults_per_sensor_minute: f64,
}

impl Default for IotConfig {
    fn default() -> Self {
        IotConfig {
            sensors: 20,
            sites: 4,
            hz: 1.0,
            faults_per_sensor_minute: 0.01,
        }
    }
}

/// Sensor temperature above which a sensor is overheating, °C.
pub const SENSOR_TEMP_LIMIT_C: f64 = 50.0;

#[derive(Debug, Clone)]
struct Sensor {
    id: String,
    site: String,
    base_temp: f64,
    base_humidity: f64,
    base_pressure: f64,
    phase: f64,
    fault: Option<SensorFault>,
    /// The last temperature reported (what a stuck sensor repeats).
    last_temp: f64,
    cooldown_until: i64,
}

#[derive(Debug, Clone, Copy)]
struct SensorFault {
    kind: FaultKind,
    start: i64,
    index: usize,
    /// Stuck: the frozen reading; pressure spike: the jump, hPa.
    value: f64,
}

impl SensorFault {
    fn lasts(&self) -> i64 {
        match self.kind {
            FaultKind::SensorStuck => 60 * SECOND,
            FaultKind::SensorDropout => 30 * SECOND,
            FaultKind::PressureSpike => 20 * SECOND,
            _ => 10 * SECOND,
        }
    }
}

/// A deterministic sensor fleet.
#[derive(Debug)]
pub struct Fleet {
    config: IotConfig,
    sensors: Vec<Sensor>,
    rng: ChaCha8Rng,
    time: i64,
    interval: i64,
    faults: Vec<InjectedFault>,
}

const SECOND: i64 = 1_000_000_000;

impl Fleet {
    /// A fleet starting at `start_time` (ns since the epoch).
    pub fn new(config: IotConfig, seed: u64, start_time: i64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(0x5eed_1075));
        let sites = config.sites.max(1);
        let sensors = (0..config.sensors)
            .map(|i| Sensor {
                id: format!("sensor-{i:03}"),
                site: format!("plant-{}", (b'a' + (i % sites) as u8 % 26) as char),
                base_temp: rng.random_range(19.0..26.0),
                base_humidity: rng.random_range(35.0..55.0),
                base_pressure: rng.random_range(1005.0..1020.0),
                phase: rng.random_range(0.0..std::f64::consts::TAU),
                fault: None,
                last_temp: f64::NAN,
                // Long enough for per-source baselines to warm up first.
                cooldown_until: start_time + 90 * SECOND,
            })
            .collect();
        let interval = (1e9 / config.hz.max(0.001)).round() as i64;
        Fleet {
            config,
            sensors,
            rng,
            time: start_time,
            interval,
            faults: Vec::new(),
        }
    }
}

impl Simulator for Fleet {
    fn next_time(&self) -> i64 {
        self.time
    }

    fn step(&mut self, out: &mut Vec<Point>) {
        let now = self.time;
        let dt = self.interval as f64 / 1e9;
        let chance = self.config.faults_per_sensor_minute * dt / 60.0;
        // A slow swing (10 simulated minutes a cycle) so windows see movement.
        let t = now as f64 / 1e9 / 600.0 * std::f64::consts::TAU;
        for s in &mut self.sensors {
            let mut temp =
                s.base_temp + 2.0 * (t + s.phase).sin() + self.rng.random_range(-0.2..0.2);
            let humidity =
                s.base_humidity - 3.0 * (t + s.phase).sin() + self.rng.random_range(-0.5..0.5);
            let mut pressure = s.base_pressure + self.rng.random_range(-0.3..0.3);
            if s.fault.is_none() && now >= s.cooldown_until && self.rng.random::<f64>() < chance {
                let kind = match self.rng.random_range(0..4) {
                    0 => FaultKind::SensorOverheat,
                    1 => FaultKind::SensorStuck,
                    2 => FaultKind::SensorDropout,
                    _ => FaultKind::PressureSpike,
                };
                let value = match kind {
                    FaultKind::SensorStuck => s.last_temp,
                    _ => self.rng.random_range(5.0..8.0),
                };
                self.faults.push(InjectedFault {
                    kind,
                    measurement: "sensor".into(),
                    source_id: s.id.clone(),
                    start: now,
                    end: None,
                });
                s.fault = Some(SensorFault {
                    kind,
                    start: now,
                    index: self.faults.len() - 1,
                    value,
                });
            }
            if let Some(f) = s.fault {
                if now - f.start < f.lasts() {
                    match f.kind {
                        FaultKind::SensorStuck => temp = f.value,
                        FaultKind::SensorDropout => continue,
                        FaultKind::PressureSpike => pressure += f.value,
                        _ => temp = 70.0 + self.rng.random_range(0.0..5.0),
                    }
                } else {
                    self.faults[f.index].end = Some(now);
                    s.fault = None;
                    s.cooldown_until = now + 60 * SECOND;
                }
            }
            let round2 = |v: f64| (v * 100.0).round() / 100.0;
            let temp = round2(temp);
            s.last_temp = temp;
            out.push(
                // Keys in order: the maps are built by appending.
                Point::new("sensor", now)
                    .tag("sensor_id", s.id.as_str())
                    .tag("site", s.site.as_str())
                    .field("humidity_pct", FieldValue::F64(round2(humidity)))
                    .field("pressure_hpa", FieldValue::F64(round2(pressure)))
                    .field("temperature_c", FieldValue::F64(temp)),
            );
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
