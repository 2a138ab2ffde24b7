//! Event-time windows per source: tumbling and sliding (hopping), with count, min, max,
//! sum, mean, sample standard deviation, first and last (by event time) and p50/p95/p99
//! (exact up to [`EXACT_UP_TO`] values in a window, from a mergeable DDSketch beyond),
//! emitted once the watermark passes a window's end plus the allowed lateness. Fields named in the config may be booleans (counted as 0 and 1);
//! with no fields named, every numeric field is aggregated.
//!
//! A sliding window of size S every L would cost S/L updates per event if each window
//! were kept apart. Instead every event updates one *pane* (gcd(S, L) long) and a window
//! is the merge of its panes when it fires: one update per event whatever the overlap.
//!
//! Which windows fire is decided by the watermark alone: a window fires when the
//! horizon (watermark minus allowed lateness) moves past its end. Since the processor
//! restores the watermark when it resumes from a checkpoint, a replay fires exactly the
//! windows the uninterrupted run fires from there on, from the same panes.

use std::collections::{BTreeMap, HashMap};

use pitwall_core::record::WindowRecord;
use pitwall_core::{FieldValue, Name, Point, SortedMap};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::config::WindowConfig;

/// Where a piece of operator state began: the offset of the first message that fed it
/// and the partition's largest event time just before that message. Replaying from the
/// smallest live mark, with that event time, rebuilds the state exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    /// Offset of the message.
    pub offset: i64,
    /// The partition's largest event time before it (`i64::MIN` if none).
    pub max_time: i64,
}

/// Relative accuracy of the percentiles: 1 %.
const SKETCH_ACCURACY: f64 = 0.01;

fn sketch() -> DDSketch {
    // 2048 bins cover 1e-9 to beyond 1e9 at 1 %; values nearer zero count as zero.
    DDSketch::new(SketchConfig::new(SKETCH_ACCURACY, 2048, 1e-9))
}

/// Up to this many values in a window its percentiles are exact: the values themselves
/// are kept and sorted once when it fires. A 10 Hz car gives a 5 s window 50 values,
/// and keeping them is cheaper than a sketch's logarithm per value, its kilobyte of bins
/// per pane and field, and the merge and rank walk over those bins. Beyond it (or when
/// a pane alone has more) the values go into the 1 %-accurate sketch. Which of the two
/// a window uses depends only on its count, so a replay computes the same percentiles.
pub const EXACT_UP_TO: usize = 128;

/// The values behind a window's percentiles.
#[derive(Clone)]
enum Quantiles {
    /// Every value, unsorted until the window fires.
    Exact(Vec<f64>),
    /// Too many values to keep: a sketch of them.
    Sketch(Box<DDSketch>),
}

impl Quantiles {
    fn new(v: f64) -> Self {
        let mut values = Vec::with_capacity(8);
        values.push(v);
        Quantiles::Exact(values)
    }

    fn count(&self) -> u64 {
        match self {
            Quantiles::Exact(values) => values.len() as u64,
            Quantiles::Sketch(s) => s.count() as u64,
        }
    }

    /// The sketch, made from the kept values if there is none yet.
    fn sketch(&mut self) -> &mut DDSketch {
        if let Quantiles::Exact(values) = self {
            let mut s = Box::new(sketch());
            for &v in values.iter() {
                s.add(v);
            }
            *self = Quantiles::Sketch(s);
        }
        match self {
            Quantiles::Sketch(s) => s,
            Quantiles::Exact(_) => unreachable!("made a sketch above"),
        }
    }

    #[inline]
    fn add(&mut self, v: f64) {
        match self {
            Quantiles::Exact(values) if values.len() < EXACT_UP_TO => values.push(v),
            other => other.sketch().add(v),
        }
    }

    fn merge(&mut self, other: &Quantiles) {
        match (&mut *self, other) {
            (Quantiles::Exact(a), Quantiles::Exact(b)) if a.len() + b.len() <= EXACT_UP_TO => {
                a.extend_from_slice(b)
            }
            (_, Quantiles::Exact(b)) => {
                let s = self.sketch();
                for &v in b {
                    s.add(v);
                }
            }
            (_, Quantiles::Sketch(b)) => {
                self.sketch()
                    .merge(b)
                    .expect("window sketches share one configuration");
            }
        }
    }

    /// The `qs` quantiles (ascending): the value of rank ⌊q·(n−1)⌋, exact or within 1 %.
    fn quantiles<const N: usize>(&mut self, qs: [f64; N]) -> [Option<f64>; N] {
        match self {
            Quantiles::Exact(values) if values.is_empty() => [None; N],
            Quantiles::Exact(values) => {
                // Each rank selected in what is above the one before: no full sort.
                let last = (values.len() - 1) as f64;
                let mut below = 0;
                qs.map(|q| {
                    let rank = ((q * last) as usize).max(below);
                    values[below..].select_nth_unstable_by(rank - below, f64::total_cmp);
                    below = rank;
                    Some(values[rank])
                })
            }
            Quantiles::Sketch(s) => qs.map(|q| s.quantile(q).ok().flatten()),
        }
    }
}

/// The aggregate of one field over one pane (or, merged, one window).
#[derive(Clone)]
pub struct Agg {
    /// Number of values.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Running mean (Welford), for the variance.
    mean: f64,
    /// Sum of squared differences from the mean (Welford).
    m2: f64,
    /// (event time, offset, value) of the earliest value; ties go to the earlier message.
    first: (i64, i64, f64),
    /// (event time, offset, value) of the latest value.
    last: (i64, i64, f64),
    quantiles: Option<Quantiles>,
}

impl std::fmt::Debug for Agg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agg")
            .field("count", &self.count)
            .field("min", &self.min)
            .field("max", &self.max)
            .field("sum", &self.sum)
            .field("first", &self.first)
            .field("last", &self.last)
            .field("quantiles", &self.quantiles.as_ref().map(Quantiles::count))
            .finish_non_exhaustive()
    }
}

impl Agg {
    fn new(v: f64, time: i64, offset: i64, percentiles: bool) -> Self {
        Agg {
            count: 1,
            min: v,
            max: v,
            sum: v,
            mean: v,
            m2: 0.0,
            first: (time, offset, v),
            last: (time, offset, v),
            quantiles: percentiles.then(|| Quantiles::new(v)),
        }
    }

    #[inline]
    fn add(&mut self, v: f64, time: i64, offset: i64) {
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        let delta = v - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (v - self.mean);
        if (time, offset) < (self.first.0, self.first.1) {
            self.first = (time, offset, v);
        }
        if (time, offset) > (self.last.0, self.last.1) {
            self.last = (time, offset, v);
        }
        if let Some(q) = &mut self.quantiles {
            q.add(v);
        }
    }

    /// Adds `other`'s values (Chan et al.'s parallel variance).
    fn merge(&mut self, other: &Agg) {
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += other.m2 + delta * delta * na * nb / n;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        if (other.first.0, other.first.1) < (self.first.0, self.first.1) {
            self.first = other.first;
        }
        if (other.last.0, other.last.1) > (self.last.0, self.last.1) {
            self.last = other.last;
        }
        if let (Some(a), Some(b)) = (&mut self.quantiles, &other.quantiles) {
            a.merge(b);
        }
    }

    /// Sample standard deviation; `None` for a single value.
    pub fn stddev(&self) -> Option<f64> {
        (self.count > 1).then(|| (self.m2.max(0.0) / (self.count - 1) as f64).sqrt())
    }

    /// p50, p95 and p99 (exact, or within 1 % beyond [`EXACT_UP_TO`] values), if
    /// percentiles are on. Sorts the kept values in place.
    pub fn percentiles(&mut self) -> [Option<f64>; 3] {
        self.quantiles
            .as_mut()
            .map_or([None; 3], |q| q.quantiles([0.50, 0.95, 0.99]))
    }
}

/// One pane: the aggregates of the fields of one source over `pane` nanoseconds.
#[derive(Debug)]
struct Pane {
    since: Mark,
    aggs: SortedMap<Name, Agg>,
}

/// Panes of one source, by pane start, and how far its own clock has fired them.
#[derive(Debug)]
struct Series {
    panes: BTreeMap<i64, Pane>,
    /// The horizon this source's windows last fired at by its own clock (see
    /// [`WindowOperator::fire_source`]); the operator's `fired_until` covers the rest.
    fired_until: i64,
    /// Smallest end of a window with data that has not fired: until its clock passes
    /// it, a source's own clock has nothing to fire (checked on every point).
    next_end: i64,
}

/// A window that fired, before it becomes rows.
type Fired = (i64, Name, Name, SortedMap<Name, Agg>);

/// One configured window over every source of a partition.
#[derive(Debug)]
pub struct WindowOperator {
    name: Name,
    size: i64,
    slide: i64,
    pane: i64,
    lateness: i64,
    percentiles: bool,
    measurements: Vec<String>,
    /// Sorted and unique; empty means every numeric field.
    fields: Vec<Name>,
    /// measurement -> source -> panes. Nested so a lookup borrows the names.
    /// Names are inline up to 24 bytes, so a window row copies them without allocating.
    open: HashMap<Name, HashMap<Name, Series>>,
    /// The horizon at the last [`Self::fire`]: every window ending at or before it has fired.
    fired_until: i64,
    /// Smallest end, after `fired_until`, of a window that has data.
    next_end: i64,
}

impl WindowOperator {
    /// Builds the operator for `config`; windows fire `lateness_ns` after their end.
    pub fn new(config: &WindowConfig, lateness_ns: i64) -> Self {
        let nanos = |n: u128| i64::try_from(n).unwrap_or(i64::MAX).max(1);
        let size = nanos(config.size.as_nanos());
        let slide = config.slide.map_or(size, |s| nanos(s.as_nanos()));
        let mut fields: Vec<Name> = config
            .fields
            .iter()
            .map(|f| Name::from(f.as_str()))
            .collect();
        fields.sort();
        fields.dedup();
        WindowOperator {
            name: Name::from(config.name.as_str()),
            size,
            slide,
            pane: nanos(config.pane_nanos()),
            lateness: lateness_ns,
            percentiles: config.percentiles,
            measurements: config.measurements.clone(),
            fields,
            open: HashMap::new(),
            fired_until: i64::MIN,
            next_end: i64::MAX,
        }
    }

    /// Index of the first window (start = k × slide) that holds time `t`.
    fn first_window(&self, t: i64) -> i64 {
        t.saturating_sub(self.size).div_euclid(self.slide) + 1
    }

    /// End of window `k`.
    fn end_of(&self, k: i64) -> i64 {
        k.saturating_mul(self.slide).saturating_add(self.size)
    }

    /// Adds a point that is not late; `mark` is the message it came in.
    pub fn add(&mut self, source_id: &str, point: &Point, mark: Mark) {
        if !self.measurements.is_empty() && !self.measurements.contains(&point.measurement) {
            return;
        }
        let t = point.time;
        let pane_start = t - t.rem_euclid(self.pane);
        // The first window holding `t`: the soonest this point's data can fire.
        let end = self.end_of(self.first_window(t));
        let sources = match self.open.get_mut(point.measurement.as_str()) {
            Some(s) => s,
            None => self
                .open
                .entry(Name::from(point.measurement.as_str()))
                .or_default(),
        };
        let series = match sources.get_mut(source_id) {
            Some(s) => s,
            None => sources
                .entry(Name::from(source_id))
                .or_insert_with(|| Series {
                    panes: BTreeMap::new(),
                    fired_until: i64::MIN,
                    next_end: i64::MAX,
                }),
        };
        series.next_end = series.next_end.min(end);
        let aggs = &mut series
            .panes
            .entry(pane_start)
            .or_insert_with(|| Pane {
                since: mark,
                aggs: SortedMap::new(),
            })
            .aggs;
        let percentiles = self.percentiles;
        // The point's fields come in name order, as the pane keeps them: each is looked
        // up from where the one before was found.
        let mut at = 0;
        let mut update = |name: &Name, v: f64| match aggs.get_mut_ascending(name.as_str(), &mut at)
        {
            Some(a) => a.add(v, t, mark.offset),
            None => {
                aggs.insert(name.clone(), Agg::new(v, t, mark.offset, percentiles));
                at += 1;
            }
        };
        // Booleans count as 0 and 1: the mean of `brake` is the share of time braking.
        let numeric = |v: &FieldValue| match *v {
            FieldValue::Bool(b) => Some(f64::from(u8::from(b))),
            ref other => other.as_f64(),
        };
        if self.fields.is_empty() {
            for (name, value) in &point.fields {
                if let Some(v) = value.as_f64() {
                    update(name, v);
                }
            }
        } else {
            // Both sorted: one pass.
            let mut wanted = self.fields.iter().peekable();
            for (name, value) in &point.fields {
                while wanted.next_if(|w| *w < name).is_some() {}
                if wanted.peek().is_some_and(|w| *w == name) {
                    wanted.next();
                    if let Some(v) = numeric(value) {
                        update(name, v);
                    }
                }
                if wanted.peek().is_none() {
                    break;
                }
            }
        }
        self.next_end = self.next_end.min(end);
    }

    /// Emits, in a deterministic order, every window whose end plus the allowed
    /// lateness has been passed by `watermark`.
    pub fn fire(&mut self, watermark: i64, out: &mut Vec<WindowRecord>) {
        let horizon = watermark.saturating_sub(self.lateness);
        if horizon < self.next_end {
            self.fired_until = self.fired_until.max(horizon);
            return;
        }
        self.fire_until(horizon, out);
    }

    /// Emits, like [`Self::fire`], the windows of one source whose own clock has moved
    /// its watermark to `watermark` (ahead of the partition's, see the processor).
    pub fn fire_source(
        &mut self,
        measurement: &str,
        source_id: &str,
        watermark: i64,
        out: &mut Vec<WindowRecord>,
    ) {
        let horizon = watermark.saturating_sub(self.lateness);
        let after = self.fired_until;
        let Some(sources) = self.open.get_mut(measurement) else {
            return;
        };
        // Most points move their source's clock without closing a window.
        if sources.get(source_id).is_none_or(|s| horizon < s.next_end) {
            return;
        }
        let Some(mut series) = sources.remove(source_id) else {
            return;
        };
        let mut fired: Vec<Fired> = Vec::new();
        let (measurement, source) = (Name::from(measurement), Name::from(source_id));
        self.fire_series(&mut series, after, horizon, &mut |start, aggs| {
            fired.push((start, measurement.clone(), source.clone(), aggs));
        });
        if !series.panes.is_empty()
            && let Some(sources) = self.open.get_mut(measurement.as_str())
        {
            sources.insert(source, series);
        }
        self.emit(fired, out);
    }

    /// Emits every window that has data and has not fired (end of input).
    pub fn fire_all(&mut self, out: &mut Vec<WindowRecord>) {
        self.fire_until(i64::MAX, out);
    }

    fn fire_until(&mut self, horizon: i64, out: &mut Vec<WindowRecord>) {
        let after = self.fired_until;
        let mut fired: Vec<Fired> = Vec::new();
        let mut next_end = i64::MAX;
        let mut open = std::mem::take(&mut self.open);
        for (measurement, sources) in &mut open {
            for (source, series) in sources.iter_mut() {
                let n = self.fire_series(series, after, horizon, &mut |start, aggs| {
                    fired.push((start, measurement.clone(), source.clone(), aggs));
                });
                next_end = next_end.min(n);
            }
            sources.retain(|_, series| !series.panes.is_empty());
        }
        open.retain(|_, s| !s.is_empty());
        self.open = open;
        self.fired_until = self.fired_until.max(horizon);
        self.next_end = next_end;
        self.emit(fired, out);
    }

    /// Turns fired windows into rows, in a deterministic order.
    fn emit(&self, mut fired: Vec<Fired>, out: &mut Vec<WindowRecord>) {
        fired.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        out.reserve(fired.iter().map(|f| f.3.len()).sum());
        for (start, measurement, source, aggs) in fired {
            for (field, mut a) in aggs {
                let [p50, p95, p99] = a.percentiles();
                out.push(WindowRecord {
                    measurement: measurement.clone(),
                    source_id: source.clone(),
                    window: self.name.clone(),
                    window_start: start,
                    window_end: start.saturating_add(self.size),
                    field,
                    count: a.count,
                    min: a.min,
                    max: a.max,
                    sum: a.sum,
                    mean: a.sum / a.count as f64,
                    stddev: a.stddev(),
                    first: a.first.2,
                    last: a.last.2,
                    p50,
                    p95,
                    p99,
                });
            }
        }
    }

    /// Calls `emit` for each window of one source with data whose end is in
    /// (`after`, `horizon`] (and after what the source fired by its own clock), merging
    /// its panes; drops the panes whose last window has fired. Returns the smallest end
    /// of a window still to fire (`i64::MAX` if none).
    fn fire_series(
        &self,
        series: &mut Series,
        after: i64,
        horizon: i64,
        emit: &mut impl FnMut(i64, SortedMap<Name, Agg>),
    ) -> i64 {
        let after = after.max(series.fired_until);
        if horizon > after {
            self.fire_panes(&series.panes, after, horizon, emit);
        }
        let horizon = horizon.max(after);
        series.fired_until = horizon;
        series.next_end = i64::MAX;
        while let Some(entry) = series.panes.first_entry() {
            let last_end = self.end_of(entry.key().div_euclid(self.slide));
            if last_end > horizon {
                let first = self
                    .first_window(*entry.key())
                    .max(self.first_window(horizon));
                series.next_end = self.end_of(first);
                break;
            }
            entry.remove();
        }
        series.next_end
    }

    /// Calls `emit` for each window with data in `panes` whose end is in (`after`,
    /// `horizon`], merging its panes.
    fn fire_panes(
        &self,
        panes: &BTreeMap<i64, Pane>,
        after: i64,
        horizon: i64,
        emit: &mut impl FnMut(i64, SortedMap<Name, Agg>),
    ) {
        let (Some((&first, _)), Some((&last, _))) =
            (panes.first_key_value(), panes.last_key_value())
        else {
            return;
        };
        let mut k = self.first_window(first).max(self.first_window(after));
        loop {
            let (start, end) = (k.saturating_mul(self.slide), self.end_of(k));
            if end > horizon || start > last {
                return;
            }
            let mut merged: Option<SortedMap<Name, Agg>> = None;
            for pane in panes.range(start..end).map(|(_, p)| p) {
                match &mut merged {
                    None => merged = Some(pane.aggs.clone()),
                    Some(m) => {
                        for (name, a) in &pane.aggs {
                            match m.get_mut(name.as_str()) {
                                Some(acc) => acc.merge(a),
                                None => {
                                    m.insert(name.clone(), a.clone());
                                }
                            }
                        }
                    }
                }
            }
            match merged {
                Some(m) => {
                    emit(start, m);
                    k += 1;
                }
                None => {
                    // No data in this window: skip to the first window of the next pane.
                    let Some((&next, _)) = panes.range(end..).next() else {
                        return;
                    };
                    k = (k + 1).max(self.first_window(next));
                }
            }
        }
    }

    /// The earliest mark among open panes.
    pub fn earliest(&self) -> Option<Mark> {
        self.open
            .values()
            .flat_map(HashMap::values)
            .flat_map(|s| s.panes.values())
            .map(|p| p.since)
            .min()
    }

    /// Number of open panes, for status.
    pub fn open_windows(&self) -> usize {
        self.open
            .values()
            .flat_map(HashMap::values)
            .map(|s| s.panes.len())
            .sum()
    }
}
