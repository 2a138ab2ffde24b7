//! Tumbling event-time windows per source: count, min, max, sum and mean of numeric
//! fields, emitted once the watermark passes the window's end.

use std::collections::{BTreeMap, HashMap};

use pitwall_core::Point;
use pitwall_core::record::WindowRecord;

use crate::config::WindowConfig;

/// Running aggregate of one field in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Number of values.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
}

impl Stats {
    fn new(v: f64) -> Self {
        Stats {
            count: 1,
            min: v,
            max: v,
            sum: v,
        }
    }

    fn add(&mut self, v: f64) {
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
    }
}

type Fields = BTreeMap<String, Stats>;

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

/// One open window: its fields and where its input began.
#[derive(Debug)]
struct Open {
    since: Mark,
    fields: Fields,
}

/// One configured tumbling window over every source of a partition.
#[derive(Debug)]
pub struct TumblingWindows {
    name: String,
    size: i64,
    lateness: i64,
    measurements: Vec<String>,
    fields: Vec<String>,
    /// measurement -> source -> window start -> field -> stats. Nested so the per-event
    /// lookup borrows the names instead of allocating a key.
    open: HashMap<String, HashMap<String, BTreeMap<i64, Open>>>,
    /// Smallest end among open windows; nothing fires before the watermark reaches it.
    next_end: i64,
}

impl TumblingWindows {
    /// Builds the operator for `config`; windows fire `lateness_ns` after their end.
    pub fn new(config: &WindowConfig, lateness_ns: i64) -> Self {
        TumblingWindows {
            name: config.name.clone(),
            size: i64::try_from(config.size.as_nanos()).unwrap_or(i64::MAX).max(1),
            lateness: lateness_ns,
            measurements: config.measurements.clone(),
            fields: config.fields.clone(),
            open: HashMap::new(),
            next_end: i64::MAX,
        }
    }

    /// Start of the window holding `t`.
    pub fn start_of(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.size)
    }

    /// Adds a point that is not late; `mark` is the message it came in.
    pub fn add(&mut self, source_id: &str, point: &Point, mark: Mark) {
        if !self.measurements.is_empty() && !self.measurements.contains(&point.measurement) {
            return;
        }
        let start = self.start_of(point.time);
        if !self.open.contains_key(&point.measurement) {
            self.open.insert(point.measurement.clone(), HashMap::new());
        }
        let sources = self.open.get_mut(&point.measurement).expect("inserted above");
        if !sources.contains_key(source_id) {
            sources.insert(source_id.to_owned(), BTreeMap::new());
        }
        let windows = sources.get_mut(source_id).expect("inserted above");
        let fields = &mut windows
            .entry(start)
            .or_insert_with(|| Open {
                since: mark,
                fields: Fields::new(),
            })
            .fields;
        let mut add = |name: &str, v: f64| match fields.get_mut(name) {
            Some(s) => s.add(v),
            None => {
                fields.insert(name.to_owned(), Stats::new(v));
            }
        };
        if self.fields.is_empty() {
            for (name, value) in &point.fields {
                if let Some(v) = value.as_f64() {
                    add(name, v);
                }
            }
        } else {
            for name in &self.fields {
                if let Some(v) = point.fields.get(name.as_str()).and_then(|v| v.as_f64()) {
                    add(name, v);
                }
            }
        }
        self.next_end = self.next_end.min(start.saturating_add(self.size));
    }

    /// Emits, in a deterministic order, every window whose end plus the allowed
    /// lateness is at or before `watermark`.
    pub fn fire(&mut self, watermark: i64, out: &mut Vec<WindowRecord>) {
        if watermark < self.next_end.saturating_add(self.lateness) {
            return;
        }
        let mut fired = Vec::new();
        let mut next_end = i64::MAX;
        for (measurement, sources) in &mut self.open {
            for (source, windows) in sources.iter_mut() {
                while let Some(entry) = windows.first_entry() {
                    let end = entry.key().saturating_add(self.size);
                    if end.saturating_add(self.lateness) > watermark {
                        next_end = next_end.min(end);
                        break;
                    }
                    let (start, open) = entry.remove_entry();
                    fired.push((start, measurement.clone(), source.clone(), open.fields));
                }
            }
            sources.retain(|_, w| !w.is_empty());
        }
        self.open.retain(|_, s| !s.is_empty());
        self.next_end = next_end;
        self.emit(fired, out);
    }

    /// Emits every open window (end of input).
    pub fn fire_all(&mut self, out: &mut Vec<WindowRecord>) {
        let mut fired = Vec::new();
        for (measurement, sources) in std::mem::take(&mut self.open) {
            for (source, windows) in sources {
                for (start, open) in windows {
                    fired.push((start, measurement.clone(), source.clone(), open.fields));
                }
            }
        }
        self.next_end = i64::MAX;
        self.emit(fired, out);
    }

    fn emit(&self, mut fired: Vec<(i64, String, String, Fields)>, out: &mut Vec<WindowRecord>) {
        fired.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        for (start, measurement, source, fields) in fired {
            for (field, s) in fields {
                out.push(WindowRecord {
                    measurement: measurement.clone(),
                    source_id: source.clone(),
                    window: self.name.clone(),
                    window_start: start,
                    window_end: start + self.size,
                    field,
                    count: s.count,
                    min: s.min,
                    max: s.max,
                    sum: s.sum,
                    mean: s.sum / s.count as f64,
                });
            }
        }
    }

    /// The earliest mark among open windows.
    pub fn earliest(&self) -> Option<Mark> {
        self.open
            .values()
            .flat_map(HashMap::values)
            .flat_map(BTreeMap::values)
            .map(|o| o.since)
            .min()
    }

    /// Number of open (source, window) pairs.
    pub fn open_windows(&self) -> usize {
        self.open.values().flat_map(HashMap::values).map(BTreeMap::len).sum()
    }
}
