//! Anomaly rules evaluated per source, as episodes: a rule writes one row when its
//! condition starts on a source and stays quiet until the condition has cleared.

use std::collections::{HashMap, VecDeque};

use pitwall_core::Point;
use pitwall_core::record::AnomalyRecord;

use crate::config::RuleConfig;
use crate::window::Mark;

#[derive(Debug, Default)]
struct SourceState {
    /// Set while an episode is on: the message that started it.
    active: Option<Mark>,
    /// Recent (time, value, while-value, message) samples for rate-of-change rules,
    /// in arrival order.
    recent: VecDeque<(i64, f64, f64, Mark)>,
}

/// All rules of a partition with their per-source state.
#[derive(Debug)]
pub struct RuleEngine {
    rules: Vec<RuleConfig>,
    by_measurement: HashMap<String, Vec<usize>>,
    /// Per rule: source -> state (looked up by `&str`, no key allocated per event).
    state: Vec<HashMap<String, SourceState>>,
}

fn num(point: &Point, field: &str) -> Option<f64> {
    point.fields.get(field).and_then(|v| v.as_f64())
}

/// What one evaluation concluded. The message is only formatted when an episode
/// starts, not on every event.
struct Verdict<'r> {
    on: bool,
    field: &'r str,
    observed: f64,
    expected: f64,
    detail: Detail<'r>,
}

/// The numbers a message needs beyond observed and expected.
enum Detail<'r> {
    Above,
    Below,
    Inside,
    Fell { within: std::time::Duration, while_above: Option<(&'r str, f64)> },
    Gear { speed: f64, rpm: f64 },
}

impl Verdict<'_> {
    fn message(&self) -> String {
        let (field, v, limit) = (self.field, self.observed, self.expected);
        match &self.detail {
            Detail::Above => format!("{field} is {v}, above the limit of {limit}"),
            Detail::Below => format!("{field} is {v}, below the limit of {limit}"),
            Detail::Inside => String::new(),
            Detail::Fell { within, while_above } => {
                let cond = match while_above {
                    Some((f, a)) => format!(" with {f} at or above {a}"),
                    None => String::new(),
                };
                format!("{field} fell from {limit} to {v} ({} in under {within:?}){cond}", limit - v)
            }
            Detail::Gear { speed, rpm } => {
                format!("{field} {v} reported at {speed} km/h and {rpm} rpm; speed and rpm say gear {limit}")
            }
        }
    }
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
            state: rules.iter().map(|_| HashMap::new()).collect(),
        }
    }

    /// Evaluates every rule on `point` from `source_id`, appending episode starts to `out`.
    /// `horizon` is the earliest event time a later event can still have (events before
    /// it are late and never reach the rules); `mark` is the message `point` came in.
    pub fn evaluate(&mut self, source_id: &str, point: &Point, horizon: i64, mark: Mark, out: &mut Vec<AnomalyRecord>) {
        let Some(indices) = self.by_measurement.get(&point.measurement) else {
            return;
        };
        for &i in indices {
            let rule = &self.rules[i];
            let states = &mut self.state[i];
            if !states.contains_key(source_id) {
                states.insert(source_id.to_owned(), SourceState::default());
            }
            let state = states.get_mut(source_id).expect("inserted above");
            let Some(v) = check(rule, state, point, horizon, mark) else {
                continue;
            };
            if v.on && state.active.is_none() {
                out.push(AnomalyRecord {
                    id: format!("{}:{}:{}", rule.name(), source_id, point.time),
                    rule: rule.name().to_owned(),
                    kind: rule.kind().to_owned(),
                    severity: rule.severity().as_str().to_owned(),
                    measurement: point.measurement.clone(),
                    source_id: source_id.to_owned(),
                    field: v.field.to_owned(),
                    time: point.time,
                    observed: v.observed,
                    expected: v.expected,
                    message: v.message(),
                });
            }
            state.active = if v.on { state.active.or(Some(mark)) } else { None };
        }
    }

    /// The earliest mark any rule state still depends on: an episode that is on, or a
    /// sample a rate-of-change rule may still compare with.
    pub fn earliest(&self) -> Option<Mark> {
        self.state
            .iter()
            .flat_map(HashMap::values)
            .flat_map(|s| s.active.into_iter().chain(s.recent.front().map(|r| r.3)))
            .min()
    }
}

/// Evaluates one rule; `None` when the point lacks what the rule reads (state unchanged).
fn check<'r>(
    rule: &'r RuleConfig,
    state: &mut SourceState,
    point: &Point,
    horizon: i64,
    mark: Mark,
) -> Option<Verdict<'r>> {
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
            let slack = if state.active.is_some() { *hysteresis } else { 0.0 };
            if let Some(limit) = above
                && v > limit - slack
            {
                return Some(Verdict {
                    on: true,
                    field,
                    observed: v,
                    expected: *limit,
                    detail: Detail::Above,
                });
            }
            if let Some(limit) = below
                && v < limit + slack
            {
                return Some(Verdict {
                    on: true,
                    field,
                    observed: v,
                    expected: *limit,
                    detail: Detail::Below,
                });
            }
            Some(Verdict {
                on: false,
                field,
                observed: v,
                expected: above.or(*below).unwrap_or_default(),
                detail: Detail::Inside,
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
            // Drop samples no later event can reach: older than the span before the
            // earliest time a later event may have. This depends only on the watermark,
            // not on arrival order, so a replay keeps exactly the samples that matter.
            while state
                .recent
                .front()
                .is_some_and(|&(t, ..)| t < horizon.saturating_sub(span))
            {
                state.recent.pop_front();
            }
            let from = point.time.saturating_sub(span);
            let (peak, low_while) = state
                .recent
                .iter()
                .filter(|&&(t, ..)| t >= from && t <= point.time)
                .fold((f64::MIN, w), |(p, lw), &(_, v, w, _)| (p.max(v), lw.min(w)));
            state.recent.push_back((point.time, v, w, mark));
            let on = peak - v > *drop && low_while >= *while_above;
            Some(Verdict {
                on,
                field,
                observed: v,
                expected: peak,
                detail: Detail::Fell {
                    within: *within,
                    while_above: while_field.as_deref().map(|f| (f, *while_above)),
                },
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
                field: gear_field,
                observed: gear,
                expected: implied,
                detail: Detail::Gear { speed, rpm },
            })
        }
    }
}
