//! Anomaly rules evaluated per source, as episodes: a rule writes one row when its
//! condition starts on a source and one more, with the same id, when it clears; nothing
//! while it lasts.
//!
//! Every verdict is a function of the messages in offset order and of the partition's
//! watermark, never of the wall clock, so a replay from a [`Checkpoint`] rebuilds the
//! same episodes. The state a rule keeps is pinned by [`RuleEngine::earliest`]: the
//! messages it came from are replayed.
//!
//! [`Checkpoint`]: crate::Checkpoint

use std::collections::VecDeque;
use std::time::Duration;

use pitwall_core::Point;
use pitwall_core::record::{AnomalyRecord, Phase};

use crate::config::{BaselineMethod, RuleConfig};
use crate::window::Mark;

/// Maps looked up per event: a fast hash (keys are measurement names and source ids,
/// never iterated, so the order a hash gives does not matter).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// An episode that is on: where it started.
#[derive(Debug, Clone, Copy)]
struct Episode {
    /// The earliest message the verdict that started it depended on (its state is
    /// replayed from there).
    mark: Mark,
    /// Event time it started.
    time: i64,
    /// The most extreme value seen while it lasted, on the side of the limit it crossed.
    peak: f64,
}

/// A run of one unchanged value (stuck rules).
#[derive(Debug, Clone, Copy)]
struct Run {
    value: f64,
    since: i64,
    mark: Mark,
}

/// A source's state under one rule.
#[derive(Debug, Default)]
struct State {
    active: Option<Episode>,
    /// Rate of change: recent (time, value, while-value, message), in arrival order.
    recent: VecDeque<(i64, f64, f64, Mark)>,
    /// Stuck: the current run of one value.
    run: Option<Run>,
    /// Deadman: the latest event time the source (or field) reported, and in which message.
    seen: Option<(i64, Mark)>,
    /// Baseline: samples of the last span (time, value, message), in arrival order.
    samples: Vec<(i64, f64, Mark)>,
    /// Baseline: the refresh block the baseline was computed for, the earliest of the
    /// message that began it and the samples it was computed from (a replay must
    /// compute it at that same message from the same samples), and (center, spread).
    block: Option<(i64, Mark)>,
    base: Option<(f64, f64)>,
    /// Gear consistency without fixed ratios: each gear's learned RPM per km/h (NaN
    /// while it has too few samples), from `recent` (time, ratio, gear, message).
    learned: Vec<f64>,
}

/// A source as the engine knows it.
#[derive(Debug)]
struct Source {
    name: String,
    /// Its largest event time (at most when heard), to forget it once silent for
    /// `forget_after`.
    last_time: i64,
}

/// All rules of a partition with their per-source state.
#[derive(Debug)]
pub struct RuleEngine {
    rules: Vec<RuleConfig>,
    /// Measurement -> its group in `groups`: the indices of the rules that watch it.
    by_measurement: HashMap<String, usize>,
    groups: Vec<Vec<usize>>,
    /// Deadman rules: checked when the watermark passes `next_due`.
    deadman: Vec<usize>,
    /// Source id -> slot in `sources` and in every rule's state.
    index: HashMap<String, usize>,
    /// Slots; `None` once forgotten (and in `free` for reuse).
    sources: Vec<Option<Source>>,
    free: Vec<usize>,
    /// Per rule, per slot.
    state: Vec<Vec<State>>,
    /// Per rule: where each field it reads was in the last point (see `get_hinted`).
    hints: Vec<[usize; 3]>,
    forget_after: i64,
    /// No deadman can fire and no source can be forgotten before the watermark passes this.
    next_due: i64,
}

/// The numeric value of `field`, looked up first where `hint` says it was last time.
fn num(point: &Point, field: &str, hint: &mut usize) -> Option<f64> {
    point
        .fields
        .get_hinted(field, hint)
        .and_then(|v| v.as_f64())
}

/// What one evaluation concluded. The message is only formatted when an episode
/// starts or ends, not on every event.
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
    Fell {
        within: Duration,
        while_above: Option<(&'r str, f64)>,
    },
    Gear {
        speed: f64,
        rpm: f64,
    },
    /// Stuck: the value.
    Stuck {
        value: f64,
    },
    /// Trend: over how long, and the level now.
    Trend {
        span: Duration,
        level: f64,
    },
    /// Baseline: distance in spreads, and the spread.
    Deviates {
        z: f64,
        spread: f64,
    },
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

impl Verdict<'_> {
    fn message(&self) -> String {
        let (field, v, limit) = (self.field, self.observed, self.expected);
        match &self.detail {
            Detail::Above => format!("{field} is {v}, above the limit of {limit}"),
            Detail::Below => format!("{field} is {v}, below the limit of {limit}"),
            Detail::Inside => format!("{field} is back to {v}"),
            Detail::Fell {
                within,
                while_above,
            } => {
                let cond = match while_above {
                    Some((f, a)) => format!(" with {f} at or above {a}"),
                    None => String::new(),
                };
                format!(
                    "{field} fell from {limit} to {v} ({} in under {within:?}){cond}",
                    limit - v
                )
            }
            Detail::Gear { speed, rpm } => {
                format!(
                    "{field} {v} reported at {speed} km/h and {rpm} rpm; speed and rpm say gear {limit}"
                )
            }
            Detail::Stuck { value, .. } if self.on => {
                format!(
                    "{field} has read {value} for {v:.1} s (limit {limit} s): the sensor or channel may be frozen"
                )
            }
            Detail::Stuck { value, .. } => {
                format!("{field} moved again after reading {value} for {v:.1} s")
            }
            Detail::Deviates { z, spread } if self.on => format!(
                "{field} is {v}, {z:.1} spreads of {spread:.3} away from its recent baseline of {limit:.3}"
            ),
            Detail::Deviates { z, .. } => {
                format!("{field} is back to {v}, {z:.1} spreads from its baseline of {limit:.3}")
            }
            Detail::Trend { span, level } if self.on => format!(
                "{field} is moving {v:+.2} a minute over the last {} (limit {limit:+}), now at {level:.1}: a creep towards its limit",
                humantime::format_duration(*span)
            ),
            Detail::Trend { level, .. } => {
                format!("{field} has levelled off ({v:+.2} a minute), at {level:.1}")
            }
        }
    }
}

impl RuleEngine {
    /// Builds the engine for validated rules; a source silent for `forget_after` (event
    /// time) is forgotten.
    pub fn new(rules: &[RuleConfig], forget_after: Duration) -> Self {
        let mut by_measurement: HashMap<String, usize> = HashMap::default();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let g = *by_measurement
                .entry(r.measurement().to_owned())
                .or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
            groups[g].push(i);
        }
        RuleEngine {
            deadman: (0..rules.len())
                .filter(|&i| matches!(rules[i], RuleConfig::Deadman { .. }))
                .collect(),
            rules: rules.to_vec(),
            by_measurement,
            groups,
            index: HashMap::default(),
            sources: Vec::new(),
            free: Vec::new(),
            state: rules.iter().map(|_| Vec::new()).collect(),
            hints: vec![[0; 3]; rules.len()],
            forget_after: nanos(forget_after),
            next_due: i64::MAX,
        }
    }

    /// The slot of `source_id`, taking one (and a state per rule) if it is new.
    fn slot(&mut self, source_id: &str, time: i64) -> usize {
        if let Some(&s) = self.index.get(source_id) {
            let src = self.sources[s]
                .as_mut()
                .expect("indexed sources have a slot");
            src.last_time = src.last_time.max(time);
            return s;
        }
        let source = Source {
            name: source_id.to_owned(),
            last_time: time,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.sources[s] = Some(source);
                s
            }
            None => {
                self.sources.push(Some(source));
                for st in &mut self.state {
                    st.push(State::default());
                }
                self.sources.len() - 1
            }
        };
        self.index.insert(source_id.to_owned(), s);
        self.next_due = self.next_due.min(time.saturating_add(self.forget_after));
        s
    }

    /// Evaluates every rule on `point` from `source_id`, appending episode starts and
    /// ends to `out`. `horizon` is the earliest event time a later event can still have
    /// (events before it are late and never reach the rules); `mark` is the message
    /// `point` came in. `heard` is the point's time, at most when it was received: the
    /// clock silence and forgetting are judged on, which a source whose clock runs ahead
    /// cannot move (the partition's clock, see [`Self::advance`]).
    pub fn evaluate(
        &mut self,
        source_id: &str,
        point: &Point,
        heard: i64,
        horizon: i64,
        mark: Mark,
        out: &mut Vec<AnomalyRecord>,
    ) {
        // Only measurements with rules take a slot.
        let Some(&group) = self.by_measurement.get(&point.measurement) else {
            return;
        };
        let slot = self.slot(source_id, heard);
        for k in 0..self.groups[group].len() {
            let i = self.groups[group][k];
            let rule = &self.rules[i];
            let state = &mut self.state[i][slot];
            if let RuleConfig::Deadman { field, silence, .. } = rule {
                if field
                    .as_deref()
                    .is_some_and(|f| !point.fields.contains_key(f))
                {
                    continue;
                }
                if let (Some(ep), Some((t, _))) = (state.active, state.seen) {
                    let gap = heard - t;
                    out.push(record(
                        rule,
                        source_id,
                        Phase::End,
                        ep.time,
                        Some(heard),
                        secs(gap),
                        secs(gap),
                        secs(nanos(*silence)),
                        format!(
                            "{} reported again after {:.1} s of silence",
                            field.as_deref().unwrap_or(source_id),
                            secs(gap)
                        ),
                    ));
                    state.active = None;
                    // Due again from here: `advance` skipped it while it was on.
                    self.next_due = self.next_due.min(heard.saturating_add(nanos(*silence)));
                }
                let newest = state.seen.is_none_or(|(t, _)| heard >= t);
                if newest {
                    if state.seen.is_none() {
                        self.next_due = self.next_due.min(heard.saturating_add(nanos(*silence)));
                    }
                    state.seen = Some((heard, mark));
                }
                continue;
            }
            let Some(v) = check(rule, state, &mut self.hints[i], point, horizon, mark) else {
                continue;
            };
            match (v.on, state.active) {
                (true, None) => {
                    out.push(record(
                        rule,
                        source_id,
                        Phase::Start,
                        point.time,
                        None,
                        v.observed,
                        v.observed,
                        v.expected,
                        v.message(),
                    ));
                    // A replay must start early enough to reach this same verdict:
                    // at the earliest message of the state it was judged on.
                    let since = [
                        Some(mark),
                        state.recent.front().map(|r| r.3),
                        state.run.map(|r| r.mark),
                        state.block.map(|b| b.1),
                    ]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(mark);
                    state.active = Some(Episode {
                        mark: since,
                        time: point.time,
                        peak: v.observed,
                    });
                }
                (true, Some(ep)) => {
                    // Further from the limit on the side the episode began on.
                    let above = ep.peak >= v.expected;
                    if (above && v.observed > ep.peak) || (!above && v.observed < ep.peak) {
                        state.active = Some(Episode {
                            peak: v.observed,
                            ..ep
                        });
                    }
                }
                (false, Some(ep)) => {
                    out.push(record(
                        rule,
                        source_id,
                        Phase::End,
                        ep.time,
                        Some(point.time),
                        v.observed,
                        ep.peak,
                        v.expected,
                        v.message(),
                    ));
                    state.active = None;
                }
                (false, None) => {}
            }
        }
    }

    /// Data has reached `watermark` (a point's time less the out-of-orderness): sources
    /// silent for longer than a deadman rule allows start an episode (timed when the
    /// silence passed the limit); sources silent for `forget_after` are forgotten. A
    /// watermark lower than an earlier one finds nothing new.
    pub fn advance(&mut self, watermark: i64, out: &mut Vec<AnomalyRecord>) {
        if watermark <= self.next_due {
            return;
        }
        let mut due = i64::MAX;
        let start = out.len();
        for s in 0..self.sources.len() {
            let Some(src) = &self.sources[s] else {
                continue;
            };
            let forget_at = src.last_time.saturating_add(self.forget_after);
            if watermark > forget_at {
                // Open episodes stay open in the lake: the source never came back.
                self.index.remove(&src.name);
                self.sources[s] = None;
                self.free.push(s);
                for st in &mut self.state {
                    st[s] = State::default();
                }
                continue;
            }
            due = due.min(forget_at);
            for &i in &self.deadman {
                let RuleConfig::Deadman { field, silence, .. } = &self.rules[i] else {
                    unreachable!("only deadman rules are listed")
                };
                let state = &mut self.state[i][s];
                let Some((t, seen_mark)) = state.seen else {
                    continue;
                };
                if state.active.is_some() {
                    continue;
                }
                let limit = nanos(*silence);
                let at = t.saturating_add(limit);
                if watermark <= at {
                    due = due.min(at);
                    continue;
                }
                let what = match field {
                    Some(f) => format!("{f} of {}", src.name),
                    None => src.name.clone(),
                };
                let rule = &self.rules[i];
                // The row says what the silence was when it became an episode (the
                // limit), not when other sources' data revealed it: that depends on
                // their timing, and the row must not.
                out.push(record(
                    rule,
                    &src.name,
                    Phase::Start,
                    at,
                    None,
                    secs(limit),
                    secs(limit),
                    secs(limit),
                    format!("{what} has sent nothing for {silence:?}, its limit"),
                ));
                state.active = Some(Episode {
                    mark: seen_mark,
                    time: at,
                    peak: secs(limit),
                });
            }
        }
        // Slots are not in a replay's order; the rows are.
        out[start..].sort_by(|a, b| (&a.rule, &a.source_id).cmp(&(&b.rule, &b.source_id)));
        self.next_due = due;
    }

    /// The earliest mark any rule state still depends on: an episode that is on, a
    /// sample a rule may still compare with, the start of a run of one value, the last
    /// report a deadman rule waits on.
    pub fn earliest(&self) -> Option<Mark> {
        self.state
            .iter()
            .flatten()
            .flat_map(|s| {
                s.active
                    .map(|e| e.mark)
                    .into_iter()
                    .chain(s.recent.front().map(|r| r.3))
                    .chain(s.run.map(|r| r.mark))
                    .chain(s.seen.map(|(_, m)| m))
                    .chain(s.samples.first().map(|r| r.2))
                    .chain(s.block.map(|(_, m)| m))
            })
            .min()
    }
}

/// One end of an episode of `rule` on `source_id`; its id is the rule, the source and
/// the episode's start.
#[allow(clippy::too_many_arguments)]
fn record(
    rule: &RuleConfig,
    source_id: &str,
    phase: Phase,
    time: i64,
    end_time: Option<i64>,
    observed: f64,
    peak: f64,
    expected: f64,
    message: String,
) -> AnomalyRecord {
    AnomalyRecord {
        id: format!("{}:{}:{}", rule.name(), source_id, time),
        rule: rule.name().to_owned(),
        kind: rule.kind().to_owned(),
        severity: rule.severity().as_str().to_owned(),
        measurement: rule.measurement().to_owned(),
        source_id: source_id.to_owned(),
        field: rule.field().unwrap_or("*").to_owned(),
        phase,
        time,
        end_time,
        observed,
        peak,
        expected,
        message,
    }
}

/// Evaluates one rule; `None` when the point lacks what the rule reads (state unchanged).
fn check<'r>(
    rule: &'r RuleConfig,
    state: &mut State,
    hints: &mut [usize; 3],
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
            let v = num(point, field, &mut hints[0])?;
            // While an episode is on, it needs to come back past the hysteresis band to end.
            let slack = if state.active.is_some() {
                *hysteresis
            } else {
                0.0
            };
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
            let v = num(point, field, &mut hints[0])?;
            let w = match while_field {
                Some(f) => num(point, f, &mut hints[1])?,
                None => f64::INFINITY,
            };
            let span = nanos(*within);
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
                .fold((f64::MIN, w), |(p, lw), &(_, v, w, _)| {
                    (p.max(v), lw.min(w))
                });
            state.recent.push_back((point.time, v, w, mark));
            let on = peak - v > *drop && low_while >= *while_above;
            Some(Verdict {
                on,
                field,
                observed: v,
                expected: if peak == f64::MIN { v } else { peak },
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
            span,
            refresh,
            ..
        } => {
            let gear = num(point, gear_field, &mut hints[0])?;
            let speed = num(point, speed_field, &mut hints[1])?;
            let rpm = num(point, rpm_field, &mut hints[2])?;
            if speed < *min_speed {
                return None;
            }
            let ratio = rpm / speed;
            let ratios = if ratios.is_empty() {
                learn_ratios(state, point.time, *refresh, *span, mark);
                state.recent.push_back((point.time, ratio, gear, mark));
                &state.learned
            } else {
                ratios
            };
            // The gear speed and RPM imply; none if the ratio fits no gear (clutch, RPM
            // cut) or no gear is known yet.
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
        RuleConfig::Stuck {
            field,
            stuck_for,
            tolerance,
            ..
        } => {
            let v = num(point, field, &mut hints[0])?;
            let run = match state.run {
                Some(r) if (v - r.value).abs() <= *tolerance => r,
                _ => {
                    let r = Run {
                        value: v,
                        since: point.time,
                        mark,
                    };
                    state.run = Some(r);
                    r
                }
            };
            let held = point.time - run.since;
            Some(Verdict {
                on: held >= nanos(*stuck_for),
                field,
                observed: secs(held.max(0)),
                expected: stuck_for.as_secs_f64(),
                detail: Detail::Stuck { value: run.value },
            })
        }
        RuleConfig::Baseline {
            field,
            method,
            threshold,
            span,
            refresh,
            warm_up,
            min_spread,
            ..
        } => {
            let v = num(point, field, &mut hints[0])?;
            let keep = |from| keep_samples(&mut state.samples, from);
            if let Some((_, start)) =
                next_block(&mut state.block, point.time, *refresh, *span, mark, keep)
            {
                state.base = baseline(&state.samples, start, nanos(*warm_up), *method, *min_spread);
            }
            state.samples.push((point.time, v, mark));
            let (center, spread) = state.base?;
            let z = (v - center).abs() / spread;
            Some(Verdict {
                on: z > *threshold,
                field,
                observed: v,
                expected: center,
                detail: Detail::Deviates { z, spread },
            })
        }
        RuleConfig::Trend {
            field,
            rise_per_minute,
            above,
            span,
            refresh,
            warm_up,
            ..
        } => {
            let v = num(point, field, &mut hints[0])?;
            let keep = |from| keep_samples(&mut state.samples, from);
            if let Some((from, start)) =
                next_block(&mut state.block, point.time, *refresh, *span, mark, keep)
            {
                state.base = trend(&state.samples, from, start, nanos(*warm_up));
            }
            state.samples.push((point.time, v, mark));
            let (slope, level) = state.base?;
            // Rising (or, for a negative rise, falling) at least this fast; an episode
            // ends once the trend is below half of it.
            let limit = if state.active.is_some() {
                rise_per_minute / 2.0
            } else {
                *rise_per_minute
            };
            let steep = if *rise_per_minute > 0.0 {
                slope >= limit
            } else {
                slope <= limit
            };
            Some(Verdict {
                on: steep && above.is_none_or(|a| level >= a),
                field,
                observed: slope,
                expected: *rise_per_minute,
                detail: Detail::Trend { span: *span, level },
            })
        }
        RuleConfig::Deadman { .. } => None,
    }
}

/// Moves a rule that keeps `span` of samples, recomputed every `refresh`, on to the
/// block of `time` if that is newer than `block`: `keep_from(from)` drops the samples
/// older than the span before the block's start and says which message the oldest one
/// kept came in. Notes where a replay must start to recompute the block's result here
/// from the same samples (that message or `mark`). Returns (the span's start, the
/// block's start) when the block is new: recompute then.
fn next_block(
    block: &mut Option<(i64, Mark)>,
    time: i64,
    refresh: Duration,
    span: Duration,
    mark: Mark,
    keep_from: impl FnOnce(i64) -> Option<Mark>,
) -> Option<(i64, i64)> {
    let b = time.div_euclid(nanos(refresh));
    if block.is_some_and(|(current, _)| b <= current) {
        return None;
    }
    let start = b * nanos(refresh);
    let from = start.saturating_sub(nanos(span));
    let since = keep_from(from).map_or(mark, |m| m.min(mark));
    *block = Some((b, since));
    Some((from, start))
}

/// Keeps the samples from `from` on; the message of the oldest kept.
fn keep_samples(samples: &mut Vec<(i64, f64, Mark)>, from: i64) -> Option<Mark> {
    samples.retain(|s| s.0 >= from);
    samples.first().map(|s| s.2)
}

/// Samples a gear needs in the span before its ratio counts as learned.
const LEARN_SAMPLES: usize = 20;

/// Gear consistency without fixed ratios: at each new refresh block of `time`, keeps the
/// (time, ratio, gear) samples of the last `span` and learns each gear's ratio as their
/// median ([`next_block`] notes where a replay must start to learn the same).
fn learn_ratios(state: &mut State, time: i64, refresh: Duration, span: Duration, mark: Mark) {
    let keep = |from| {
        state.recent.retain(|s| s.0 >= from);
        state.recent.front().map(|s| s.3)
    };
    if next_block(&mut state.block, time, refresh, span, mark, keep).is_none() {
        return;
    }
    let mut by_gear: Vec<Vec<f64>> = Vec::new();
    for &(_, ratio, gear, _) in &state.recent {
        let g = gear as usize;
        if (1..=32).contains(&g) {
            if by_gear.len() < g {
                by_gear.resize(g, Vec::new());
            }
            by_gear[g - 1].push(ratio);
        }
    }
    state.learned = by_gear
        .iter_mut()
        .map(|r| {
            if r.len() >= LEARN_SAMPLES {
                median(r)
            } else {
                f64::NAN
            }
        })
        .collect();
}

/// (units per minute, level) of the samples in [`from`, `start`): the median of its last
/// third less the median of its first third, over the time between their middles; the
/// level is the last third's median. None until the samples cover `warm_up` or while a
/// third holds fewer than three values.
fn trend(samples: &[(i64, f64, Mark)], from: i64, start: i64, warm_up: i64) -> Option<(f64, f64)> {
    let oldest = samples.iter().filter(|s| s.0 < start).map(|s| s.0).min()?;
    if start.saturating_sub(oldest) < warm_up {
        return None;
    }
    let third = (start - from) / 3;
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for &(t, v, _) in samples {
        if t >= from && t < from + third {
            first.push(v);
        } else if t >= start - third && t < start {
            last.push(v);
        }
    }
    if first.len() < 3 || last.len() < 3 {
        return None;
    }
    let minutes = (start - from - third) as f64 / 60e9;
    let level = median(&mut last);
    Some(((level - median(&mut first)) / minutes, level))
}

/// (center, spread) of the samples before `start`, or none while they cover less than
/// `warm_up` or hold fewer than five values.
fn baseline(
    samples: &[(i64, f64, Mark)],
    start: i64,
    warm_up: i64,
    method: BaselineMethod,
    min_spread: f64,
) -> Option<(f64, f64)> {
    let (mut values, mut oldest) = (Vec::with_capacity(samples.len()), i64::MAX);
    for &(t, v, _) in samples.iter().filter(|s| s.0 < start) {
        values.push(v);
        oldest = oldest.min(t);
    }
    if values.len() < 5 || start.saturating_sub(oldest) < warm_up {
        return None;
    }
    let (center, spread) = match method {
        BaselineMethod::Mad => {
            let center = median(&mut values);
            for x in &mut values {
                *x = (*x - center).abs();
            }
            // 1.4826 MAD estimates the standard deviation of normally distributed data.
            (center, 1.4826 * median(&mut values))
        }
        BaselineMethod::Zscore => {
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (mean, var.sqrt())
        }
    };
    let spread = spread.max(min_spread);
    (spread > 0.0 && spread.is_finite()).then_some((center, spread))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
