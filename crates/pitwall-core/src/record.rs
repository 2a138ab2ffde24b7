//! Records the processor derives from points, one type per lake table that is not a
//! clean measurement table. Clean rows are [`Point`](crate::Point)s themselves.
//!
//! Each record also has a JSON form for its bus topic ([`to_json`]): times in ns,
//! payloads as text.

use std::sync::Arc;

use bytes::Bytes;

use crate::{Name, Point};
use serde::Serialize;

/// Where a message came from on the bus: enough to find it again and to resume after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Origin {
    /// Topic name, e.g. `telemetry.raw` (shared: every record of a partition names it).
    #[serde(serialize_with = "shared_str")]
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// A payload exactly as received (`raw.events`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// Where it was read.
    pub origin: Origin,
    /// The message key (the source id), if any.
    pub key: Option<String>,
    /// When the bus accepted it, ns since the epoch.
    pub ingest_time: i64,
    /// The payload bytes, unchanged.
    pub payload: Bytes,
}

/// A payload that could not be turned into a valid point (`quarantine.rejects`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectRecord {
    /// Where it was read.
    pub origin: Origin,
    /// When the bus accepted it, ns since the epoch.
    pub ingest_time: i64,
    /// The payload bytes, unchanged.
    #[serde(serialize_with = "as_text")]
    pub payload: Bytes,
    /// What kind of fault it was (a metric label; not stored).
    #[serde(skip)]
    pub kind: RejectKind,
    /// Why it was rejected, in words.
    pub reason: String,
}

/// The kind of fault that rejected a payload: a few fixed words for metrics, where the
/// reason's text (which names fields and values) would make a label per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RejectKind {
    /// Not JSON or line protocol, or not the shape of a point.
    Decode,
    /// No tag names the source.
    NoSource,
    /// The time is out of range or too far ahead.
    BadTime,
    /// A unit conversion could not apply.
    Unit,
    /// A value of another type than its column, or a tag named like a field.
    TypeConflict,
    /// Anything else: names, limits, a table that would not commit.
    #[default]
    Invalid,
}

impl RejectKind {
    /// The kind as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            RejectKind::Decode => "decode",
            RejectKind::NoSource => "no_source",
            RejectKind::BadTime => "bad_time",
            RejectKind::Unit => "unit",
            RejectKind::TypeConflict => "type_conflict",
            RejectKind::Invalid => "invalid",
        }
    }
}

/// One aggregate of one numeric field over one window of one source (`metrics.windows`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowRecord {
    /// Measurement the field belongs to.
    pub measurement: Name,
    /// The source id (value of the measurement's source tag).
    pub source_id: Name,
    /// Window name from the config, e.g. `car_5s`.
    pub window: Name,
    /// Inclusive start, ns since the epoch.
    pub window_start: i64,
    /// Exclusive end, ns since the epoch.
    pub window_end: i64,
    /// The aggregated field.
    pub field: Name,
    /// Number of values.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation; none for a single value.
    pub stddev: Option<f64>,
    /// Value with the earliest event time.
    pub first: f64,
    /// Value with the latest event time.
    pub last: f64,
    /// Median (1 % relative accuracy); none when the window has percentiles off.
    pub p50: Option<f64>,
    /// 95th percentile (1 % relative accuracy).
    pub p95: Option<f64>,
    /// 99th percentile (1 % relative accuracy).
    pub p99: Option<f64>,
}

/// Which end of an anomaly episode a row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The condition began.
    Start,
    /// The condition cleared.
    End,
}

impl Phase {
    /// Lower-case name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::End => "end",
        }
    }
}

/// One end of an anomaly episode (`anomalies.events`): a row when a rule's condition
/// starts on a source and another, with the same id, when it clears.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyRecord {
    /// Deterministic id: the same input gives the same id, so replays can de-duplicate.
    pub id: String,
    /// Rule name from the config.
    pub rule: String,
    /// Rule kind (`threshold`, `rate_of_change`, `gear_consistency`).
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// Measurement the rule watches.
    pub measurement: String,
    /// The source id the condition was seen on.
    pub source_id: String,
    /// The field the rule watches.
    pub field: String,
    /// `start` or `end`.
    pub phase: Phase,
    /// Event time the condition started, ns since the epoch (on both rows).
    pub time: i64,
    /// Event time it cleared (`end` rows only).
    pub end_time: Option<i64>,
    /// The value seen (when it started; when it cleared on `end` rows).
    pub observed: f64,
    /// The most extreme value while it lasted, on the side of the limit it crossed
    /// (`observed` on `start` rows; for silence, the longest gap).
    pub peak: f64,
    /// The limit or expected value it was compared with.
    pub expected: f64,
    /// One sentence a race engineer can act on.
    pub message: String,
}

/// An event that arrived after its window had closed (`quarantine.late`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LateRecord {
    /// Where it was read.
    pub origin: Origin,
    /// Measurement of the point.
    pub measurement: String,
    /// Source id of the point.
    pub source_id: String,
    /// Event time of the point, ns.
    pub time: i64,
    /// The watermark when it arrived, ns.
    pub watermark: i64,
    /// How far behind the watermark it was, ns.
    pub lateness_ns: i64,
    /// The payload bytes, unchanged.
    #[serde(serialize_with = "as_text")]
    pub payload: Bytes,
}

/// Payloads are shown as text on the bus (lossy where they are not UTF-8); the lake
/// keeps the exact bytes.
fn as_text<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

fn shared_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

impl WindowRecord {
    /// Whether `other` closed in the same window fire: the same source, window and span.
    fn same_fire(&self, other: &WindowRecord) -> bool {
        self.window_start == other.window_start
            && self.window_end == other.window_end
            && self.source_id == other.source_id
            && self.window == other.window
            && self.measurement == other.measurement
    }

    /// Appends `"count":…,"min":…,…,"p99":…` (the aggregates, without braces).
    fn write_aggregates(&self, o: &mut Vec<u8>) {
        use crate::json::{write_float as float, write_integer as integer};
        let opt = |v: Option<f64>, o: &mut Vec<u8>| match v {
            Some(v) => float(v, o),
            None => o.extend_from_slice(b"null"),
        };
        o.extend_from_slice(b"\"count\":");
        integer(self.count, o);
        for (name, v) in [
            (&b",\"min\":"[..], self.min),
            (b",\"max\":", self.max),
            (b",\"sum\":", self.sum),
            (b",\"mean\":", self.mean),
        ] {
            o.extend_from_slice(name);
            float(v, o);
        }
        o.extend_from_slice(b",\"stddev\":");
        opt(self.stddev, o);
        o.extend_from_slice(b",\"first\":");
        float(self.first, o);
        o.extend_from_slice(b",\"last\":");
        float(self.last, o);
        for (name, v) in [
            (&b",\"p50\":"[..], self.p50),
            (b",\"p95\":", self.p95),
            (b",\"p99\":", self.p99),
        ] {
            o.extend_from_slice(name);
            opt(v, o);
        }
    }
}

/// Splits window rows into fires: the runs of consecutive rows of one source's window
/// that closed together (the processor emits a fire's fields one after another).
pub fn window_fires(rows: &[WindowRecord]) -> impl Iterator<Item = &[WindowRecord]> {
    rows.chunk_by(|a, b| a.same_fire(b))
}

/// Appends the metrics topic's JSON for one window fire (see [`window_fires`]): the
/// source, window and span once, and every field's aggregates keyed by field name:
/// `{"measurement":"car","source_id":"VER","window":"car_5s","window_start":…,
/// "window_end":…,"fields":{"speed_kph":{"count":…,"min":…,…,"p99":…},…}}`. Times in ns;
/// non-finite values and missing aggregates as `null`. Nothing is written for no rows.
pub fn write_window_fire_json(fire: &[WindowRecord], o: &mut Vec<u8>) {
    use crate::json::{write_integer as integer, write_string as string};
    let Some(w) = fire.first() else {
        return;
    };
    o.extend_from_slice(b"{\"measurement\":");
    string(&w.measurement, o);
    o.extend_from_slice(b",\"source_id\":");
    string(&w.source_id, o);
    o.extend_from_slice(b",\"window\":");
    string(&w.window, o);
    o.extend_from_slice(b",\"window_start\":");
    integer(w.window_start, o);
    o.extend_from_slice(b",\"window_end\":");
    integer(w.window_end, o);
    o.extend_from_slice(b",\"fields\":{");
    for (i, f) in fire.iter().enumerate() {
        if i > 0 {
            o.push(b',');
        }
        string(&f.field, o);
        o.extend_from_slice(b":{");
        f.write_aggregates(o);
        o.push(b'}');
    }
    o.extend_from_slice(b"}}");
}

/// The JSON form of a record for its bus topic.
pub fn to_json<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = Vec::new();
    write_json(record, &mut out);
    out
}

/// Appends [`to_json`]'s bytes to `out`.
pub fn write_json<T: Serialize>(record: &T, out: &mut Vec<u8>) {
    // Records hold only strings, numbers and finite-or-not floats; serde_json writes
    // non-finite floats as null rather than failing.
    let start = out.len();
    if serde_json::to_writer(&mut *out, record).is_err() {
        out.truncate(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            -1e6f64..1e6
        ]
    }

    /// A window row's aggregates as serde writes them, for comparison.
    #[derive(Serialize)]
    struct Aggregates {
        count: u64,
        min: f64,
        max: f64,
        sum: f64,
        mean: f64,
        stddev: Option<f64>,
        first: f64,
        last: f64,
        p50: Option<f64>,
        p95: Option<f64>,
        p99: Option<f64>,
    }

    fn row(
        names: &[String],
        field: &str,
        times: (i64, i64, u64),
        values: &[f64],
        options: &[Option<f64>],
    ) -> WindowRecord {
        WindowRecord {
            measurement: names[0].as_str().into(),
            source_id: names[1].as_str().into(),
            window: names[2].as_str().into(),
            window_start: times.0,
            window_end: times.1,
            field: field.into(),
            count: times.2,
            min: values[0],
            max: values[1],
            sum: values[2],
            mean: values[3],
            stddev: options[0],
            first: values[4],
            last: values[5],
            p50: options[1],
            p95: options[2],
            p99: options[3],
        }
    }

    proptest! {
        /// The hand-written JSON of a window fire is what serde_json writes for the same
        /// values, byte for byte, and every field's row is in it once.
        #[test]
        fn window_fire_json_is_serde_json(
            names in proptest::collection::vec("[a-z_]{0,8}|[ -~é\\t\\n]{0,6}", 3),
            fields in proptest::collection::btree_set("[a-z_]{1,8}|[ -~é\\t\\n]{1,6}", 1..4),
            times in (any::<i64>(), any::<i64>(), any::<u64>()),
            values in proptest::collection::vec(float(), 6),
            options in proptest::collection::vec(proptest::option::of(float()), 4),
        ) {
            let rows: Vec<WindowRecord> =
                fields.iter().map(|f| row(&names, f, times, &values, &options)).collect();
            let mut ours = Vec::new();
            write_window_fire_json(&rows, &mut ours);
            let j = |s: &str| serde_json::to_string(s).unwrap();
            let mut reference = format!(
                "{{\"measurement\":{},\"source_id\":{},\"window\":{},\"window_start\":{},\"window_end\":{},\"fields\":{{",
                j(&names[0]), j(&names[1]), j(&names[2]), times.0, times.1
            );
            for (i, w) in rows.iter().enumerate() {
                let a = Aggregates {
                    count: w.count, min: w.min, max: w.max, sum: w.sum, mean: w.mean,
                    stddev: w.stddev, first: w.first, last: w.last,
                    p50: w.p50, p95: w.p95, p99: w.p99,
                };
                if i > 0 {
                    reference.push(',');
                }
                reference += &format!("{}:{}", j(&w.field), String::from_utf8(to_json(&a)).unwrap());
            }
            reference += "}}";
            prop_assert_eq!(String::from_utf8_lossy(&ours), reference);
            prop_assert_eq!(window_fires(&rows).count(), 1);
        }
    }

    #[test]
    fn window_rows_split_into_fires_by_source_window_and_span() {
        let names = |s: &str| vec!["car".to_owned(), s.to_owned(), "car_5s".to_owned()];
        let v = [1.0; 6];
        let o = [None; 4];
        let rows = [
            row(&names("VER"), "rpm", (0, 5, 1), &v, &o),
            row(&names("VER"), "speed", (0, 5, 1), &v, &o),
            row(&names("HAM"), "rpm", (0, 5, 1), &v, &o),
            row(&names("HAM"), "rpm", (5, 10, 1), &v, &o),
            row(&names("HAM"), "speed", (5, 10, 1), &v, &o),
        ];
        let fires: Vec<usize> = window_fires(&rows).map(<[WindowRecord]>::len).collect();
        assert_eq!(fires, [2, 1, 2]);
        let mut json = Vec::new();
        write_window_fire_json(&rows[3..], &mut json);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["source_id"], "HAM");
        assert_eq!(v["window_start"], 5);
        assert_eq!(v["fields"]["speed"]["count"], 1);
        assert_eq!(v["fields"]["rpm"]["p99"], serde_json::Value::Null);
        json.clear();
        write_window_fire_json(&[], &mut json);
        assert!(json.is_empty());
    }
}

/// How far a partition has been processed, and how to rebuild its state from there: a
/// replay that starts at `replay_from` with the largest event time set to `max_time`
/// reaches, at `next`, exactly the state this processor has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The next offset to process.
    pub next: i64,
    /// The earliest offset the open state depends on (`next` when there is none).
    pub replay_from: i64,
    /// The partition's largest event time just before `replay_from`.
    pub max_time: i64,
}

/// Everything the processor derived from a run of messages, one list per lake table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outputs {
    /// Every payload as received.
    pub raw: Vec<RawRecord>,
    /// Valid, normalized points.
    pub clean: Vec<Point>,
    /// Window aggregates that closed.
    pub windows: Vec<WindowRecord>,
    /// Anomaly episodes that started.
    pub anomalies: Vec<AnomalyRecord>,
    /// Payloads that were not valid points.
    pub rejects: Vec<RejectRecord>,
    /// Valid points that arrived too late for their window.
    pub late: Vec<LateRecord>,
    /// Points identical to one already taken (a client's retry): kept in `raw` only.
    pub duplicates: u64,
}

impl Outputs {
    /// Total records of every kind.
    pub fn len(&self) -> usize {
        self.raw.len()
            + self.clean.len()
            + self.windows.len()
            + self.anomalies.len()
            + self.rejects.len()
            + self.late.len()
    }

    /// True if nothing was derived.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves everything from `other` to the end of `self`.
    pub fn append(&mut self, other: &mut Outputs) {
        self.raw.append(&mut other.raw);
        self.clean.append(&mut other.clean);
        self.windows.append(&mut other.windows);
        self.anomalies.append(&mut other.anomalies);
        self.rejects.append(&mut other.rejects);
        self.late.append(&mut other.late);
        self.duplicates += std::mem::take(&mut other.duplicates);
    }
}
