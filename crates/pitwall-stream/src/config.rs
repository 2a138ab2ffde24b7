//! Processor settings: which tag identifies a source, event-time bounds, windows and
//! anomaly rules. Read from `[processor]` in `pitwall.toml`; every setting has a default
//! that matches the simulators.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::enrich::{
    DimensionConfig, DistanceKind, Enricher, LapConfig, Loaded, TrackConfig, UnitConfig,
};
use crate::{Error, Result};

/// Everything the processor needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProcessorConfig {
    /// How far behind the newest event time an event may arrive and still count.
    #[serde(with = "humantime_serde")]
    pub out_of_orderness: Duration,
    /// Extra time after a window's end during which late events still update it.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A partition that has received nothing for this long (wall clock) while it has open
    /// windows gets a watermark tick: its event time moves on by the time that passed, so
    /// its windows close. Ticks go through the raw topic, so a replay sees them too.
    /// Silence (deadman) rules judge against data only, so a partition that merely ran
    /// out of data raises nothing. Also how far a source's own clock may trail its
    /// partition's (event time is per source): a silent source's windows close as the
    /// others' data moves on. Zero turns ticks off, and every source's clock then
    /// follows the partition's.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A source that has sent nothing for this long (event time, against its partition's
    /// clock) is forgotten: its rule state is dropped, an open episode stays open; a
    /// source's own clock set this long before is let go.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
    /// A point stamped more than this after it was received is rejected: a clock far
    /// ahead, or a timestamp in the wrong precision. "Received" is the message
    /// timestamp: the write API's receipt time, replay's send time, the simulators'
    /// simulated send time; on Kafka the producer's timestamp (pitwall's producers set
    /// the send time; other producers should too, or the topic should use LogAppendTime).
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Per-measurement settings, by measurement name.
    pub measurements: BTreeMap<String, MeasurementConfig>,
    /// Unit conversions per field, applied first.
    pub units: Vec<UnitConfig>,
    /// Dimension tables (CSV or TOML files) joined on a tag.
    pub dimensions: Vec<DimensionConfig>,
    /// Lap and sector derived from a distance field and a track.
    pub laps: Vec<LapConfig>,
    /// Track definitions, by the value of a lap rule's track tag.
    pub tracks: BTreeMap<String, TrackConfig>,
    /// Window aggregations.
    pub windows: Vec<WindowConfig>,
    /// Anomaly rules.
    pub rules: Vec<RuleConfig>,
    /// The enrichment, files read once (by `validate` or the first processor).
    #[serde(skip)]
    #[doc(hidden)]
    pub loaded: Loaded,
}

/// Settings of one measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MeasurementConfig {
    /// The tag whose value identifies a source (the bus key).
    pub source_tag: String,
}

/// A window per source: tumbling, or sliding (hopping) when `slide` is shorter than
/// `size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WindowConfig {
    /// Name stored with every aggregate (`window` column).
    pub name: String,
    /// Measurements it applies to; empty means all.
    #[serde(default)]
    pub measurements: Vec<String>,
    /// Window length.
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// How often a window starts; none means `size` (tumbling windows).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub slide: Option<Duration>,
    /// Fields aggregated; empty means every numeric field.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Compute p50, p95 and p99 (exact up to 128 values in a window, from a 1 %-accurate
    /// sketch beyond); off saves CPU and memory.
    #[serde(default = "yes")]
    pub percentiles: bool,
}

fn yes() -> bool {
    true
}

impl WindowConfig {
    /// Length of the pane every event updates, in nanoseconds: gcd(size, slide), which
    /// both the size and the slide are whole multiples of.
    pub fn pane_nanos(&self) -> u128 {
        let (mut a, mut b) = (
            self.size.as_nanos(),
            self.slide.unwrap_or(self.size).as_nanos(),
        );
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }
}

/// Most panes a sliding window may span (size / gcd(size, slide)).
pub const MAX_PANES_PER_WINDOW: u128 = 1000;

/// How bad an anomaly is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Info,
    /// Needs attention.
    #[default]
    Warning,
    /// Act now.
    Critical,
}

impl Severity {
    /// Lower-case name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One anomaly rule. Every kind has a unique `name`, the `measurement` it watches and a
/// `severity`; the rest depends on the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum RuleConfig {
    /// A field above (or below) a limit, e.g. engine temperature over 120 °C.
    Threshold {
        /// Unique name, stored with every anomaly.
        name: String,
        /// Measurement it watches.
        measurement: String,
        /// How bad it is when it fires.
        #[serde(default)]
        severity: Severity,
        /// Field compared.
        field: String,
        /// Fires when the value is above this.
        #[serde(default)]
        above: Option<f64>,
        /// Fires when the value is below this.
        #[serde(default)]
        below: Option<f64>,
        /// The episode ends once the value is this far back inside the limit.
        #[serde(default)]
        hysteresis: f64,
    },
    /// A field falls by more than `drop` within `within` while another field stays high
    /// (an RPM drop at full throttle).
    RateOfChange {
        /// Unique name, stored with every anomaly.
        name: String,
        /// Measurement it watches.
        measurement: String,
        /// How bad it is when it fires.
        #[serde(default)]
        severity: Severity,
        /// Field watched.
        field: String,
        /// Smallest fall that fires.
        drop: f64,
        /// Time span the fall must happen in.
        #[serde(with = "humantime_serde")]
        within: Duration,
        /// Field that must stay high throughout (e.g. `throttle_pct`); none means always.
        #[serde(default)]
        while_field: Option<String>,
        /// How high it must stay.
        #[serde(default)]
        while_above: f64,
    },
    /// The reported gear is not the one speed and RPM imply.
    GearConsistency {
        /// Unique name, stored with every anomaly.
        name: String,
        /// Measurement it watches.
        measurement: String,
        /// How bad it is when it fires.
        #[serde(default)]
        severity: Severity,
        /// Gear field.
        gear_field: String,
        /// Speed field, km/h.
        speed_field: String,
        /// Engine speed field.
        rpm_field: String,
        /// RPM per km/h in each gear, first gear first. Empty (the default): each car's
        /// ratios are learned from its own data (the median RPM/speed of each reported
        /// gear over `span`, once a gear has 20 samples), so any car's gearbox works.
        #[serde(default)]
        ratios: Vec<f64>,
        /// Relative tolerance when matching RPM/speed to a ratio (0.05 = 5 %).
        tolerance: f64,
        /// Below this speed (clutch slip, pit lane) the check is skipped.
        min_speed: f64,
        /// How much history the learned ratios hold.
        #[serde(default = "two_minutes", with = "humantime_serde")]
        span: Duration,
        /// How often the learned ratios are recomputed (event time).
        #[serde(default = "ten_seconds", with = "humantime_serde")]
        refresh: Duration,
    },
    /// A field that stops changing: the same value (within `tolerance`) for longer than
    /// `for` (a frozen sensor or a dead channel repeating its last reading).
    Stuck {
        /// Unique name, stored with every anomaly.
        name: String,
        /// Measurement it watches.
        measurement: String,
        /// How bad it is when it fires.
        #[serde(default)]
        severity: Severity,
        /// Field watched.
        field: String,
        /// How long the value must stay the same.
        #[serde(rename = "for", with = "humantime_serde")]
        stuck_for: Duration,
        /// Changes up to this size count as no change.
        #[serde(default)]
        tolerance: f64,
    },
    /// Missing data (a deadman switch): a source, or one field of it, that has reported
    /// nothing for longer than `silence` while the rest of its partition went on.
    Deadman {
        /// Unique name, stored with every anomaly.
        name: String,
        /// Measurement it watches.
        measurement: String,
        /// How bad it is when it fires.
        #[serde(default)]
        severity: Severity,
        /// Field that must keep arriving; none means any point of the source.
        #[serde(default)]
        field: Option<String>,
        /// Longest gap allowed, in event time.
        #[serde(with = "humantime_serde")]
        silence: Duration,
    },
    /// A value far from the source's own recent behaviour: robust z-score against the
    /// median and MAD (or mean and standard deviation) of the last `span`, refreshed every
    /// `refresh`, judged only once the baseline covers `warm-up`.
    Baseline {
        /// Unique name, stored with every anomaly.
        name: String,
        /// Measurement it watches.
        measurement: String,
        /// How bad it is when it fires.
        #[serde(default)]
        severity: Severity,
        /// Field watched.
        field: String,
        /// `mad` (median and median absolute deviation, robust to outliers) or `zscore`
        /// (mean and standard deviation).
        #[serde(default)]
        method: BaselineMethod,
        /// How many (robust) standard deviations away is anomalous.
        #[serde(default = "six")]
        threshold: f64,
        /// How much recent history the baseline holds.
        #[serde(default = "minute", with = "humantime_serde")]
        span: Duration,
        /// How often the baseline is recomputed (at multiples of this in event time).
        #[serde(default = "ten_seconds", with = "humantime_serde")]
        refresh: Duration,
        /// How much history the baseline must cover before values are judged.
        #[serde(default = "minute", with = "humantime_serde")]
        warm_up: Duration,
        /// Smallest spread (standard deviation units of the field) used, so a near-constant
        /// baseline does not turn every small change into an anomaly.
        #[serde(default)]
        min_spread: f64,
    },
    /// A slow creep: the field's level rising (or falling) faster than `rise` units per
    /// minute over `span` (oil temperature climbing 2-3 °C a minute towards its limit),
    /// flagged before any threshold. The level is the median of each third of the span,
    /// so laps, corners and short spikes do not count as a trend; recomputed every
    /// `refresh` (event time), judged once the source has `warm-up` of history.
    Trend {
        /// Unique name, stored with every anomaly.
        name: String,
        /// Measurement it watches.
        measurement: String,
        /// How bad it is when it fires.
        #[serde(default)]
        severity: Severity,
        /// Field watched.
        field: String,
        /// Units per minute: a rise at least this fast fires (a negative value: a fall
        /// at least this fast). The episode ends below half of it.
        rise_per_minute: f64,
        /// Only while the level is at or above this (near the limit); none: any level.
        #[serde(default)]
        above: Option<f64>,
        /// How much history the trend is measured over (longer than a lap).
        #[serde(default = "six_minutes", with = "humantime_serde")]
        span: Duration,
        /// How often the trend is recomputed (at multiples of this in event time).
        #[serde(default = "ten_seconds", with = "humantime_serde")]
        refresh: Duration,
        /// How much history must be held before the trend is judged (at most the span).
        #[serde(default = "six_minutes", with = "humantime_serde")]
        warm_up: Duration,
    },
}

/// How a [`RuleConfig::Baseline`] measures distance from normal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineMethod {
    /// |x - median| / (1.4826 MAD): robust to outliers in the baseline.
    #[default]
    Mad,
    /// |x - mean| / stddev.
    Zscore,
}

/// The history settings of a rule that keeps `span` of samples, recomputed every
/// `refresh`, judged once it holds `warm_up`: the key under the rule and the message
/// when one is wrong.
fn check_history(
    span: Duration,
    refresh: Duration,
    warm_up: Duration,
) -> std::result::Result<(), (&'static str, String)> {
    if refresh.is_zero() || refresh > span {
        return Err((
            "refresh",
            format!("is {refresh:?}; it must be more than zero and at most the span ({span:?})"),
        ));
    }
    if span.as_nanos() / refresh.as_nanos() > MAX_PANES_PER_WINDOW {
        return Err((
            "refresh",
            format!(
                "is {refresh:?}: the span would be recomputed more than {MAX_PANES_PER_WINDOW} times over; use a longer refresh"
            ),
        ));
    }
    if warm_up > span {
        return Err((
            "warm-up",
            format!(
                "is {warm_up:?}, longer than the span ({span:?}) the rule holds; it could never be reached"
            ),
        ));
    }
    Ok(())
}

fn six() -> f64 {
    6.0
}
fn minute() -> Duration {
    Duration::from_secs(60)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn two_minutes() -> Duration {
    Duration::from_secs(120)
}
fn three_minutes() -> Duration {
    Duration::from_secs(180)
}
fn six_minutes() -> Duration {
    Duration::from_secs(360)
}

impl RuleConfig {
    /// The rule's name.
    pub fn name(&self) -> &str {
        match self {
            RuleConfig::Threshold { name, .. }
            | RuleConfig::RateOfChange { name, .. }
            | RuleConfig::GearConsistency { name, .. }
            | RuleConfig::Stuck { name, .. }
            | RuleConfig::Deadman { name, .. }
            | RuleConfig::Baseline { name, .. }
            | RuleConfig::Trend { name, .. } => name,
        }
    }

    /// The measurement it watches.
    pub fn measurement(&self) -> &str {
        match self {
            RuleConfig::Threshold { measurement, .. }
            | RuleConfig::RateOfChange { measurement, .. }
            | RuleConfig::GearConsistency { measurement, .. }
            | RuleConfig::Stuck { measurement, .. }
            | RuleConfig::Deadman { measurement, .. }
            | RuleConfig::Baseline { measurement, .. }
            | RuleConfig::Trend { measurement, .. } => measurement,
        }
    }

    /// How bad it is when it fires.
    pub fn severity(&self) -> Severity {
        match self {
            RuleConfig::Threshold { severity, .. }
            | RuleConfig::RateOfChange { severity, .. }
            | RuleConfig::GearConsistency { severity, .. }
            | RuleConfig::Stuck { severity, .. }
            | RuleConfig::Deadman { severity, .. }
            | RuleConfig::Baseline { severity, .. }
            | RuleConfig::Trend { severity, .. } => *severity,
        }
    }

    /// The field its anomalies are about (`gear-field` for gear consistency); none for a
    /// deadman rule on a whole source.
    pub fn field(&self) -> Option<&str> {
        match self {
            RuleConfig::Threshold { field, .. }
            | RuleConfig::RateOfChange { field, .. }
            | RuleConfig::Stuck { field, .. }
            | RuleConfig::Baseline { field, .. }
            | RuleConfig::Trend { field, .. } => Some(field),
            RuleConfig::GearConsistency { gear_field, .. } => Some(gear_field),
            RuleConfig::Deadman { field, .. } => field.as_deref(),
        }
    }

    /// Kind name as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleConfig::Threshold { .. } => "threshold",
            RuleConfig::RateOfChange { .. } => "rate-of-change",
            RuleConfig::GearConsistency { .. } => "gear-consistency",
            RuleConfig::Stuck { .. } => "stuck",
            RuleConfig::Deadman { .. } => "deadman",
            RuleConfig::Baseline { .. } => "baseline",
            RuleConfig::Trend { .. } => "trend",
        }
    }
}

impl Default for ProcessorConfig {
    /// Settings that match the simulators and the seeds: the seeds' windows, and rules for
    /// overheating, RPM drops, gear consistency, stuck values, silent sources and pressure
    /// outliers.
    fn default() -> Self {
        let measurements = [("car", "driver"), ("sensor", "sensor_id")]
            .into_iter()
            .map(|(m, tag)| {
                (
                    m.to_owned(),
                    MeasurementConfig {
                        source_tag: tag.to_owned(),
                    },
                )
            })
            .collect();
        ProcessorConfig {
            out_of_orderness: Duration::from_secs(2),
            allowed_lateness: Duration::ZERO,
            idle_timeout: Duration::from_secs(30),
            forget_after: Duration::from_secs(600),
            max_future: Duration::from_secs(24 * 3600),
            measurements,
            units: Vec::new(),
            dimensions: Vec::new(),
            laps: vec![LapConfig {
                measurement: "car".into(),
                distance_field: "distance_m".into(),
                distance: DistanceKind::Lap,
                track_tag: "track".into(),
                sector_field: "sector".into(),
                lap_field: "lap".into(),
            }],
            // The simulator's circuit.
            tracks: BTreeMap::from([(
                "pitwall-park".to_owned(),
                TrackConfig {
                    length_m: 4446.55,
                    sectors: vec![0.0, 1500.0, 3000.0],
                },
            )]),
            loaded: Loaded::default(),
            windows: default_windows(),
            rules: vec![
                RuleConfig::Threshold {
                    name: "engine_overheat".into(),
                    measurement: "car".into(),
                    severity: Severity::Critical,
                    field: "engine_temp_c".into(),
                    above: Some(120.0),
                    below: None,
                    hysteresis: 2.0,
                },
                RuleConfig::Threshold {
                    name: "oil_overheat".into(),
                    measurement: "car".into(),
                    severity: Severity::Critical,
                    field: "oil_temp_c".into(),
                    above: Some(130.0),
                    below: None,
                    hysteresis: 2.0,
                },
                RuleConfig::Trend {
                    name: "engine_temp_creep".into(),
                    measurement: "car".into(),
                    severity: Severity::Warning,
                    field: "engine_temp_c".into(),
                    rise_per_minute: 1.5,
                    above: Some(106.0),
                    span: six_minutes(),
                    refresh: ten_seconds(),
                    warm_up: six_minutes(),
                },
                // The oil follows a creeping engine. Its level is the median of the span's
                // last third: above 118 °C it is neither a cold start (about 112 at most)
                // nor a short overheat (gone within a minute).
                RuleConfig::Trend {
                    name: "oil_temp_creep".into(),
                    measurement: "car".into(),
                    severity: Severity::Warning,
                    field: "oil_temp_c".into(),
                    rise_per_minute: 1.5,
                    above: Some(118.0),
                    span: six_minutes(),
                    refresh: ten_seconds(),
                    warm_up: six_minutes(),
                },
                tyre("fl"),
                tyre("fr"),
                tyre("rl"),
                tyre("rr"),
                // Tyres wearing much faster than a stint's (a few % a minute): a
                // puncture coming, a brake binding, the wrong compound; seen long
                // before they are worn out.
                RuleConfig::Trend {
                    name: "tyre_wear_rate".into(),
                    measurement: "car".into(),
                    severity: Severity::Warning,
                    field: "tyre_wear_pct".into(),
                    rise_per_minute: 8.0,
                    above: Some(20.0),
                    span: three_minutes(),
                    refresh: ten_seconds(),
                    warm_up: three_minutes(),
                },
                // Worn past a stint's life: pit now.
                RuleConfig::Threshold {
                    name: "tyre_worn".into(),
                    measurement: "car".into(),
                    severity: Severity::Critical,
                    field: "tyre_wear_pct".into(),
                    above: Some(80.0),
                    below: None,
                    hysteresis: 2.0,
                },
                RuleConfig::RateOfChange {
                    name: "rpm_drop".into(),
                    measurement: "car".into(),
                    severity: Severity::Warning,
                    field: "rpm".into(),
                    drop: 4500.0,
                    within: Duration::from_millis(500),
                    while_field: Some("throttle_pct".into()),
                    while_above: 80.0,
                },
                RuleConfig::GearConsistency {
                    name: "gear_mismatch".into(),
                    measurement: "car".into(),
                    severity: Severity::Warning,
                    gear_field: "gear".into(),
                    speed_field: "speed_kph".into(),
                    rpm_field: "rpm".into(),
                    ratios: Vec::new(),
                    tolerance: 0.05,
                    min_speed: 60.0,
                    span: two_minutes(),
                    refresh: ten_seconds(),
                },
                RuleConfig::Stuck {
                    name: "rpm_stuck".into(),
                    measurement: "car".into(),
                    severity: Severity::Warning,
                    field: "rpm".into(),
                    stuck_for: Duration::from_secs(2),
                    tolerance: 0.0,
                },
                RuleConfig::Deadman {
                    name: "car_silent".into(),
                    measurement: "car".into(),
                    severity: Severity::Critical,
                    field: None,
                    silence: Duration::from_secs(2),
                },
                RuleConfig::Threshold {
                    name: "sensor_overheat".into(),
                    measurement: "sensor".into(),
                    severity: Severity::Critical,
                    field: "temperature_c".into(),
                    above: Some(50.0),
                    below: None,
                    hysteresis: 2.0,
                },
                RuleConfig::Stuck {
                    name: "sensor_stuck".into(),
                    measurement: "sensor".into(),
                    severity: Severity::Warning,
                    field: "temperature_c".into(),
                    stuck_for: Duration::from_secs(30),
                    tolerance: 0.0,
                },
                RuleConfig::Deadman {
                    name: "sensor_silent".into(),
                    measurement: "sensor".into(),
                    severity: Severity::Warning,
                    field: None,
                    silence: Duration::from_secs(10),
                },
                RuleConfig::Baseline {
                    name: "pressure_outlier".into(),
                    measurement: "sensor".into(),
                    severity: Severity::Warning,
                    field: "pressure_hpa".into(),
                    method: BaselineMethod::Mad,
                    threshold: 8.0,
                    span: Duration::from_secs(60),
                    refresh: Duration::from_secs(10),
                    warm_up: Duration::from_secs(60),
                    min_spread: 0.05,
                },
            ],
        }
    }
}

/// An overheating tyre: its surface above 125 °C.
fn tyre(corner: &str) -> RuleConfig {
    RuleConfig::Threshold {
        name: format!("tyre_{corner}_overheat"),
        measurement: "car".into(),
        severity: Severity::Warning,
        field: format!("tyre_temp_{corner}_c"),
        above: Some(125.0),
        below: None,
        hysteresis: 3.0,
    }
}

/// The seeds' windows: 1 s and 5 s sliding metrics of speed, RPM, throttle and brake
/// per car, and 10 s tumbling temperature per sensor.
fn default_windows() -> Vec<WindowConfig> {
    let car = ["speed_kph", "rpm", "throttle_pct", "brake"]
        .map(String::from)
        .to_vec();
    vec![
        WindowConfig {
            name: "car_1s".into(),
            measurements: vec!["car".into()],
            size: Duration::from_secs(1),
            slide: Some(Duration::from_millis(500)),
            fields: car.clone(),
            percentiles: true,
        },
        WindowConfig {
            name: "car_5s".into(),
            measurements: vec!["car".into()],
            size: Duration::from_secs(5),
            slide: Some(Duration::from_secs(1)),
            fields: car,
            percentiles: true,
        },
        WindowConfig {
            name: "sensor_10s".into(),
            measurements: vec!["sensor".into()],
            size: Duration::from_secs(10),
            slide: None,
            fields: vec!["temperature_c".into()],
            percentiles: true,
        },
    ]
}

impl ProcessorConfig {
    /// Checks what serde cannot: names unique, sizes positive, limits coherent. Each
    /// error names the key and says what to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: String, message: String| Err(Error::Config { key, message });
        if self.max_future < Duration::from_secs(1) {
            return bad(
                "processor.max-future".into(),
                format!(
                    "is {:?}; use at least 1s (default 1d): points a little ahead of the receiver's clock are normal",
                    self.max_future
                ),
            );
        }
        for (m, mc) in &self.measurements {
            if mc.source_tag.is_empty() {
                return bad(
                    format!("processor.measurements.{m}.source-tag"),
                    "is empty; name the tag that identifies a source, e.g. \"host\"".into(),
                );
            }
        }
        self.enricher()?;
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.windows.iter().enumerate() {
            let key = format!("processor.windows[{i}]");
            if w.name.is_empty() {
                return bad(
                    format!("{key}.name"),
                    "is empty; give the window a name such as \"car_5s\"".into(),
                );
            }
            if !names.insert(w.name.clone()) {
                return bad(
                    format!("{key}.name"),
                    format!(
                        "{:?} is used by another window; names must be unique",
                        w.name
                    ),
                );
            }
            if w.size < Duration::from_millis(1) {
                return bad(
                    format!("{key}.size"),
                    format!("is {:?}; a window must be at least 1ms long", w.size),
                );
            }
            if let Some(slide) = w.slide {
                if slide < Duration::from_millis(1) {
                    return bad(
                        format!("{key}.slide"),
                        format!("is {slide:?}; windows must start at least 1ms apart"),
                    );
                }
                if slide > w.size {
                    return bad(
                        format!("{key}.slide"),
                        format!(
                            "is {slide:?}, longer than the window ({:?}): events between windows would be left out; use a slide of at most the size",
                            w.size
                        ),
                    );
                }
                let panes = w.size.as_nanos() / w.pane_nanos();
                if panes > MAX_PANES_PER_WINDOW {
                    return bad(
                        format!("{key}.slide"),
                        format!(
                            "makes each window the merge of {panes} panes (size / gcd(size, slide)); at most {MAX_PANES_PER_WINDOW} are allowed: use a slide that divides the size"
                        ),
                    );
                }
            }
            for (j, f) in w.fields.iter().enumerate() {
                if f.is_empty() {
                    return bad(
                        format!("{key}.fields[{j}]"),
                        "is empty; name a numeric field".into(),
                    );
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("processor.rules[{i}]");
            if r.name().is_empty() {
                return bad(
                    format!("{key}.name"),
                    "is empty; give the rule a name".into(),
                );
            }
            if !names.insert(r.name().to_owned()) {
                return bad(
                    format!("{key}.name"),
                    format!(
                        "{:?} is used by another rule; names must be unique",
                        r.name()
                    ),
                );
            }
            if r.measurement().is_empty() {
                return bad(
                    format!("{key}.measurement"),
                    "is empty; name the measurement the rule watches".into(),
                );
            }
            match r {
                RuleConfig::Threshold {
                    above,
                    below,
                    hysteresis,
                    ..
                } => {
                    if above.is_none() && below.is_none() {
                        return bad(
                            format!("{key}.above"),
                            "a threshold rule needs `above`, `below` or both".into(),
                        );
                    }
                    if hysteresis.is_nan() || *hysteresis < 0.0 {
                        return bad(
                            format!("{key}.hysteresis"),
                            format!("is {hysteresis}; it must be zero or more"),
                        );
                    }
                }
                RuleConfig::RateOfChange { drop, within, .. } => {
                    if drop.is_nan() || *drop <= 0.0 {
                        return bad(
                            format!("{key}.drop"),
                            format!("is {drop}; it must be more than zero"),
                        );
                    }
                    if within.is_zero() {
                        return bad(
                            format!("{key}.within"),
                            "is zero; give a span such as \"500ms\"".into(),
                        );
                    }
                }
                RuleConfig::GearConsistency {
                    ratios,
                    tolerance,
                    span,
                    refresh,
                    ..
                } => {
                    if ratios.iter().any(|r| r.is_nan() || *r <= 0.0) {
                        return bad(
                            format!("{key}.ratios"),
                            "needs one positive RPM-per-km/h ratio per gear, first gear first (or none, to learn each car's)"
                                .into(),
                        );
                    }
                    if let Err((field, message)) = check_history(*span, *refresh, Duration::ZERO) {
                        return bad(format!("{key}.{field}"), message);
                    }
                    if !(*tolerance > 0.0 && *tolerance < 0.5) {
                        return bad(
                            format!("{key}.tolerance"),
                            format!("is {tolerance}; use a fraction such as 0.05"),
                        );
                    }
                }
                RuleConfig::Stuck {
                    stuck_for,
                    tolerance,
                    ..
                } => {
                    if stuck_for.is_zero() {
                        return bad(
                            format!("{key}.for"),
                            "is zero; give how long a value must stay the same, e.g. \"30s\""
                                .into(),
                        );
                    }
                    if tolerance.is_nan() || *tolerance < 0.0 {
                        return bad(
                            format!("{key}.tolerance"),
                            format!("is {tolerance}; it must be zero or more"),
                        );
                    }
                }
                RuleConfig::Deadman { silence, field, .. } => {
                    if silence.is_zero() {
                        return bad(
                            format!("{key}.silence"),
                            "is zero; give the longest gap allowed, e.g. \"10s\"".into(),
                        );
                    }
                    if *silence >= self.forget_after {
                        return bad(
                            format!("{key}.silence"),
                            format!(
                                "is {silence:?}, not shorter than processor.forget-after ({:?}): the source would be forgotten before it is missed",
                                self.forget_after
                            ),
                        );
                    }
                    if field.as_deref() == Some("") {
                        return bad(
                            format!("{key}.field"),
                            "is empty; name a field or leave the key out to watch the whole source"
                                .into(),
                        );
                    }
                }
                RuleConfig::Baseline {
                    threshold,
                    span,
                    refresh,
                    warm_up,
                    min_spread,
                    ..
                } => {
                    if threshold.is_nan() || *threshold <= 0.0 {
                        return bad(
                            format!("{key}.threshold"),
                            format!(
                                "is {threshold}; it must be more than zero (6 is a common choice)"
                            ),
                        );
                    }
                    if let Err((field, message)) = check_history(*span, *refresh, *warm_up) {
                        return bad(format!("{key}.{field}"), message);
                    }
                    if min_spread.is_nan() || *min_spread < 0.0 {
                        return bad(
                            format!("{key}.min-spread"),
                            format!("is {min_spread}; it must be zero or more"),
                        );
                    }
                }
                RuleConfig::Trend {
                    rise_per_minute,
                    span,
                    refresh,
                    warm_up,
                    above,
                    ..
                } => {
                    if !rise_per_minute.is_finite() || *rise_per_minute == 0.0 {
                        return bad(
                            format!("{key}.rise-per-minute"),
                            format!(
                                "is {rise_per_minute}; give the rise per minute that is a trend, e.g. 1.5 (negative for a fall)"
                            ),
                        );
                    }
                    if span.as_secs() < 30 {
                        return bad(
                            format!("{key}.span"),
                            format!(
                                "is {span:?}; a trend needs at least \"30s\" (longer than a lap or a cycle)"
                            ),
                        );
                    }
                    if let Err((field, message)) = check_history(*span, *refresh, *warm_up) {
                        return bad(format!("{key}.{field}"), message);
                    }
                    if above.is_some_and(f64::is_nan) {
                        return bad(
                            format!("{key}.above"),
                            "is NaN; give a level or leave it out".into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The enrichment: dimension files read on first use (validation does it at start),
    /// then shared by every processor made from this config.
    pub fn enricher(&self) -> Result<Arc<Enricher>> {
        if let Some(e) = self.loaded.0.get() {
            return Ok(Arc::clone(e));
        }
        let e = Arc::new(Enricher::new(
            &self.units,
            &self.dimensions,
            &self.laps,
            &self.tracks,
        )?);
        Ok(Arc::clone(self.loaded.0.get_or_init(|| e)))
    }

    /// The source id of `point`: the value of its measurement's source tag, if present.
    pub fn source_id<'p>(&self, point: &'p pitwall_core::Point) -> Option<&'p str> {
        point
            .tags
            .get(self.source_tag(&point.measurement))
            .map(|v| v.as_str())
    }

    /// The bus key of `point`: its source id, so one source's events stay in order in
    /// one partition.
    pub fn source_key(&self, point: &pitwall_core::Point) -> Option<bytes::Bytes> {
        self.source_id(point)
            .map(|s| bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The source tag of `measurement`: configured, else `host`.
    pub fn source_tag(&self, measurement: &str) -> &str {
        self.measurements
            .get(measurement)
            .map_or("host", |m| m.source_tag.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ProcessorConfig::default().validate().unwrap();
    }

    #[test]
    fn rules_parse_from_toml() {
        let c: ProcessorConfig = toml::from_str(
            r#"
            [[rules]]
            name = "hot"
            measurement = "car"
            kind = "threshold"
            field = "oil_temp_c"
            above = 130.0
            severity = "critical"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules[0].severity(), Severity::Critical);
        assert_eq!(
            c.windows.len(),
            3,
            "defaults kept for what the file leaves out"
        );
    }

    #[test]
    fn bad_rules_name_the_key() {
        let c: ProcessorConfig = toml::from_str(
            r#"
            [[rules]]
            name = "hot"
            measurement = "car"
            kind = "threshold"
            field = "oil_temp_c"
            "#,
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "config key processor.rules[0].above: a threshold rule needs `above`, `below` or both"
        );
        let e = toml::from_str::<ProcessorConfig>(
            "[[rules]]\nname='x'\nmeasurement='car'\nkind='magic'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `magic`"), "{e}");
        let e = toml::from_str::<ProcessorConfig>(
            "[[rules]]\nname='x'\nmeasurement='car'\nkind='threshold'\nfield='a'\nabove=1.0\nabvoe=2.0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `abvoe`"), "{e}");
    }
}
