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
    /// A sensor reports a temperature far above its normal range.
    SensorOverheat,
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
    /// Faults injected so far.
    fn faults(&self) -> &[InjectedFault];
}

/// Several simulators interleaved in time order.
#[derive(Debug, Default)]
pub struct Mixed {
    sims: Vec<Box<dyn Simulator>>,
    faults: Vec<InjectedFault>,
}

impl Mixed {
    /// Interleaves `sims`.
    pub fn new(sims: Vec<Box<dyn Simulator>>) -> Self {
        Mixed {
            sims,
            faults: Vec::new(),
        }
    }
}

impl Simulator for Mixed {
    fn next_time(&self) -> i64 {
        self.sims.iter().map(|s| s.next_time()).min().unwrap_or(i64::MAX)
    }

    fn step(&mut self, out: &mut Vec<Point>) {
        if let Some(s) = self.sims.iter_mut().min_by_key(|s| s.next_time()) {
            s.step(out);
        }
        self.faults = self.sims.iter().flat_map(|s| s.faults().iter().cloned()).collect();
    }

    fn interval(&self) -> i64 {
        self.sims.iter().map(|s| s.interval()).min().unwrap_or(1)
    }

    fn faults(&self) -> &[InjectedFault] {
        &self.faults
    }
}
