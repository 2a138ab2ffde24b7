//! Anomaly rules evaluated per source, as episodes: a rule writes one row when its
//! condition starts on a source and stays quiet until the condition has cleared.

use std::collections::{HashMap, VecDeque};

use pitwall_core::Point;
use pitwall_core::record::AnomalyRecord;

use crate::config::RuleConfig;

#[derive(Debug, Default)]
struct SourceState {
    active: bool,
    /// Recent (time, value, while-value) samples for rate-of-change rules.
    recent: VecDeque<(i64, f64, f64)>,
}

/// All rules of a partition with their per-source state.
#[derive(Debug)]
pub struct RuleEngine {
    rules: Vec<RuleConfig>,
    by_measurement: HashMap<String, Vec<usize>>,
    state: HashMap<(usize, String), SourceState>,
}

fn num(point: &Point, field: &str) -> Option<f64> {
    point.fields.get(field).and_then(|v| v.as_f64())
}

/// What one evaluation concluded: is the condition on, and if it just started, the record.
struct Verdict {
    on: bool,
    field: String,
    observed: f64,
    expected: f64,
    message: String,
}

impl RuleEngine {
    /// Builds the engine for validated rules.
    pub fn new(rules: &[RuleConfig]) -> Self {
        let mut by_measurement: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            by_measurement.entry(r.measurement().to_owned()).or_default().push(i);
        }
        RuleEngine {
            rules: rules.to_vec(),
            by_measurement,
            state: HashMap::new(),
        }
    }

    /// Evaluates every rule on `point` from `source_id`, appending episode starts to `out`.
    pub fn evaluate(&mut self, source_id: &str, point: &Point, out: &mut Vec<AnomalyRecord>) {
        let Some(indices) = self.by_measurement.get(&point.measurement) else {
            return;
        };
        for &i in indices {
            let rule = &self.rules[i];
            let state = self.state.entry((i, source_id.to_owned())).or_default();
            let Some(v) = check(rule, state, point) else {
                continue;
            };
            if v.on && !state.active {
                out.push(AnomalyRecord {
                    id: format!("{}:{}:{}", rule.name(), source_id, point.time),
                    rule: rule.name().to_owned(),
                    kind: rule.kind().to_owned(),
                    severity: rule.severity().as_str().to_owned(),
                    measurement: point.measurement.clone(),
                    source_id: source_id.to_owned(),
                    field: v.field,
                    time: point.time,
                    observed: v.observed,
                    expected: v.expected,
                    message: v.message,
                });
            }
            state.active = v.on;
        }
    }
}

/// Evaluates one rule; `None` when the point lacks what the rule reads (state unchanged).
fn check(rule: &RuleConfig, state: &mut SourceState, point: &Point) -> Option<Verdict> {
    match rule {
        RuleConfig::Threshold {
            field,
            above,
            below,
            hysteresis,
            ..
        } => {
            let v = num(point, field)?;
            // While an episode is on, it needs to come back past the hysteresis band to end.
            let slack = if state.active { *hysteresis } else { 0.0 };
            if let Some(limit) = above
                && v > limit - slack
            {
                return Some(Verdict {
                    on: true,
                    field: field.clone(),
                    observed: v,
                    expected: *limit,
                    message: format!("{field} is {v}, above the limit of {limit}"),
                });
            }
            if let Some(limit) = below
                && v < limit + slack
            {
                return Some(Verdict {
                    on: true,
                    field: field.clone(),
                    observed: v,
                    expected: *limit,
                    message: format!("{field} is {v}, below the limit of {limit}"),
                });
            }
            Some(Verdict {
                on: false,
                field: field.clone(),
                observed: v,
                expected: above.or(*below).unwrap_or_default(),
                message: String::new(),
            })
        }
        RuleConfig::RateOfChange {
            field,
            drop,
            within,
            while_field,
            while_above,
            ..
        } => {
            let v = num(point, field)?;
            let w = match while_field {
                Some(f) => num(point, f)?,
                None => f64::INFINITY,
            };
            let span = i64::try_from(within.as_nanos()).unwrap_or(i64::MAX);
            while state
                .recent
                .front()
                .is_some_and(|&(t, _, _)| t < point.time.saturating_sub(span))
            {
                state.recent.pop_front();
            }
            let (peak, low_while) = state
                .recent
                .iter()
                .fold((f64::MIN, w), |(p, lw), &(_, v, w)| (p.max(v), lw.min(w)));
            state.recent.push_back((point.time, v, w));
            let fell = peak - v;
            let on = fell > *drop && low_while >= *while_above;
            let cond = match while_field {
                Some(f) => format!(" with {f} at or above {while_above}"),
                None => String::new(),
            };
            Some(Verdict {
                on,
                field: field.clone(),
                observed: v,
                expected: peak,
                message: format!(
                    "{field} fell from {peak} to {v} ({fell} in under {within:?}){cond}"
                ),
            })
        }
        RuleConfig::GearConsistency {
            gear_field,
            speed_field,
            rpm_field,
            ratios,
            tolerance,
            min_speed,
            ..
        } => {
            let gear = num(point, gear_field)?;
            let speed = num(point, speed_field)?;
            let rpm = num(point, rpm_field)?;
            if speed < *min_speed {
                return None;
            }
            let ratio = rpm / speed;
            // The gear speed and RPM imply; none if the ratio fits no gear (clutch, RPM cut).
            let implied = ratios
                .iter()
                .position(|r| (ratio - r).abs() <= r * tolerance)
                .map(|i| i as f64 + 1.0);
            let on = implied.is_some_and(|g| g != gear);
            let implied = implied.unwrap_or(gear);
            Some(Verdict {
                on,
                field: gear_field.clone(),
                observed: gear,
                expected: implied,
                message: format!(
                    "{gear_field} {gear} reported at {speed} km/h and {rpm} rpm; speed and rpm say gear {implied}"
                ),
            })
        }
    }
}
