//! The per-partition processor: raw bus message in, every derived record out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use pitwall_bus::Message;
use pitwall_core::record::{
    AnomalyRecord, LateRecord, Origin, RawRecord, RejectRecord, WindowRecord,
};
use pitwall_core::{Name, Point, Precision, json};

use crate::config::ProcessorConfig;
use crate::enrich::Enricher;
use crate::normalize::{LocalSchemas, SchemaRegistry, normalize_names};
use crate::rules::RuleEngine;
use crate::window::{Mark, WindowOperator};

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

/// Earliest plausible event time: 2000-01-01. Anything before is almost always a
/// timestamp in seconds or milliseconds sent where nanoseconds were expected.
pub const EARLIEST: i64 = 946_684_800_000_000_000;

/// Checks that event time `time` is plausible for a point received at `received` (ns):
/// not before 2000, not more than `max_future` after it was received. The error is the
/// reject reason. The write API calls it too, to answer 400 for such a line at once.
pub fn check_time(time: i64, received: i64, max_future: std::time::Duration) -> Result<(), String> {
    if time < EARLIEST {
        return Err(format!(
            "time {time} is before the year 2000; timestamps are nanoseconds since the epoch (was it sent in seconds or milliseconds?)"
        ));
    }
    let ahead = i64::try_from(max_future.as_nanos()).unwrap_or(i64::MAX);
    if time > received.saturating_add(ahead) {
        return Err(format!(
            "time {time} is more than {} after the point was received ({received}); check the source's clock and the timestamp precision (processor.max-future)",
            humantime::format_duration(max_future)
        ));
    }
    Ok(())
}

/// Key of a watermark tick on the raw topic (see [`ProcessorConfig::idle_timeout`]).
pub const TICK_KEY: &[u8] = b"pitwall.idle-tick";

/// The payload of a watermark tick to event time `time`.
pub fn tick_payload(time: i64) -> Vec<u8> {
    format!("{{\"pitwall_idle_tick\":{time}}}").into_bytes()
}

/// The event time a tick payload carries.
fn tick_time(payload: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(payload).ok()?;
    s.strip_prefix("{\"pitwall_idle_tick\":")?.strip_suffix('}')?.parse().ok()
}

/// Processes one partition's messages in offset order. Pure and deterministic: the same
/// messages give the same outputs, so a replay rebuilds the same state.
#[derive(Debug)]
pub struct Processor {
    config: Arc<ProcessorConfig>,
    schemas: LocalSchemas,
    topic: Arc<str>,
    partition: u32,
    enricher: Arc<Enricher>,
    windows: Vec<WindowOperator>,
    rules: RuleEngine,
    max_time: i64,
    /// The largest event time of data (ticks aside), from which ticks count.
    data_time: i64,
    out_of_orderness: i64,
    lateness: i64,
    /// Points taken recently, to know a retry when it comes.
    seen: Seen,
    /// How far behind the horizon points are remembered in `seen`: the longest window.
    remember: i64,
}

/// Fingerprints of the points taken while they can still count: a client that re-sends
/// a batch after a timeout or a 5xx (Telegraf does) must not be counted twice. A point
/// identical to one taken (measurement, tags, fields and time) is a duplicate: kept in
/// the raw table, counted, processed no further, as InfluxDB's last-write-wins makes a
/// retry harmless. Points are remembered while their time is within the longest window
/// behind the horizon, in arrival order with the mark of their message.
///
/// Replay must decide every duplicate as the first run did, or the state a duplicate
/// would have touched differs afterwards. So the checkpoint starts the replay early
/// enough to hold the original of every duplicate it replays: each duplicate found is
/// noted with its original's mark (a *hit*), and the replay start is lowered to the
/// original of any hit at or after it, until no hit lowers it further. That start never
/// moves back over time (an original is live at its hit, so it is at or after every
/// earlier start), so hits before the last start are forgotten.
#[derive(Debug)]
struct Seen {
    fingerprints: HashMap<u64, Mark, foldhash::fast::FixedState>,
    order: VecDeque<(i64, u64, Mark)>,
    /// (the original's mark, the duplicate's offset), in offset order.
    hits: VecDeque<(Mark, i64)>,
    /// The offset the last checkpoint's replay starts at: hits before it are done with.
    settled: std::sync::atomic::AtomicI64,
}

/// The fingerprint hasher's seed: fixed, so a replay computes the same fingerprints.
const FINGERPRINT_SEED: u64 = 0x7069_7477_616c_6c21;

impl Seen {
    fn new() -> Self {
        Seen {
            fingerprints: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(FINGERPRINT_SEED)),
            order: VecDeque::new(),
            hits: VecDeque::new(),
            settled: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// Remembers the point of `fingerprint`; false (and a hit noted) if it is a
    /// duplicate of one remembered.
    fn insert(&mut self, time: i64, fingerprint: u64, mark: Mark) -> bool {
        match self.fingerprints.entry(fingerprint) {
            std::collections::hash_map::Entry::Occupied(original) => {
                let settled = self.settled.load(std::sync::atomic::Ordering::Relaxed);
                while self.hits.front().is_some_and(|&(_, d)| d < settled) {
                    self.hits.pop_front();
                }
                self.hits.push_back((*original.get(), mark.offset));
                false
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(mark);
                self.order.push_back((time, fingerprint, mark));
                true
            }
        }
    }

    /// Forgets, in arrival order, the points older than `cutoff`.
    fn forget_before(&mut self, cutoff: i64) {
        while let Some(&(time, fingerprint, _)) = self.order.front() {
            if time >= cutoff {
                break;
            }
            self.order.pop_front();
            self.fingerprints.remove(&fingerprint);
        }
    }

    /// Where a replay must start, given where the rest of the state needs it to
    /// (`earliest`, `None` for nowhere before `next`): early enough for every remembered
    /// point and for the original of every duplicate the replay will meet.
    fn replay_start(&self, earliest: Option<Mark>, next: i64) -> Option<Mark> {
        let mut start = earliest.into_iter().chain(self.order.front().map(|&(_, _, m)| m)).min();
        loop {
            let at = start.map_or(next, |m| m.offset);
            let lower = self.hits.iter().filter(|&&(_, d)| d >= at).map(|&(m, _)| m).min();
            match lower {
                Some(m) if m.offset < at => start = Some(m),
                _ => break,
            }
        }
        self.settled.store(start.map_or(next, |m| m.offset), std::sync::atomic::Ordering::Relaxed);
        start
    }
}

/// A point's identity: measurement, tags, fields (values by their bits) and time.
fn fingerprint(point: &Point) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(FINGERPRINT_SEED).build_hasher();
    point.measurement.hash(&mut h);
    for (k, v) in &point.tags {
        k.hash(&mut h);
        v.hash(&mut h);
    }
    h.write_u8(0xff);
    for (k, v) in &point.fields {
        k.hash(&mut h);
        match v {
            pitwall_core::FieldValue::F64(f) => (0u8, f.to_bits()).hash(&mut h),
            pitwall_core::FieldValue::I64(i) => (1u8, *i).hash(&mut h),
            pitwall_core::FieldValue::U64(u) => (2u8, *u).hash(&mut h),
            pitwall_core::FieldValue::Bool(b) => (3u8, *b).hash(&mut h),
            pitwall_core::FieldValue::Str(t) => (4u8, t.as_str()).hash(&mut h),
        }
    }
    point.time.hash(&mut h);
    h.finish()
}

impl Processor {
    /// A processor for `partition` of `topic`. `config` must have passed validation.
    pub fn new(config: Arc<ProcessorConfig>, schemas: SchemaRegistry, topic: &str, partition: u32) -> Self {
        let lateness = i64::try_from(config.allowed_lateness.as_nanos()).unwrap_or(i64::MAX);
        let windows = config
            .windows
            .iter()
            .map(|w| WindowOperator::new(w, lateness))
            .collect();
        let rules = RuleEngine::new(&config.rules, config.forget_after);
        let remember = config
            .windows
            .iter()
            .map(|w| i64::try_from(w.size.as_nanos()).unwrap_or(i64::MAX))
            .max()
            .unwrap_or(0);
        let enricher = config.enricher().expect("the processor config is validated at start");
        Processor {
            out_of_orderness: i64::try_from(config.out_of_orderness.as_nanos()).unwrap_or(i64::MAX),
            lateness,
            config,
            enricher,
            schemas: LocalSchemas::new(schemas),
            topic: topic.into(),
            partition,
            windows,
            rules,
            max_time: i64::MIN,
            data_time: i64::MIN,
            seen: Seen::new(),
            remember,
        }
    }

    /// Continues from a [`Checkpoint`]: the processor of a replay that starts at its
    /// `replay_from`.
    pub fn resume(&mut self, checkpoint: &Checkpoint) {
        // The windows need nothing more: data only ever reaches windows that end after
        // the horizon of its arrival, so no window that fired before the checkpoint
        // gets data again in the replay.
        self.max_time = checkpoint.max_time;
        self.data_time = checkpoint.max_time;
    }

    /// Where a replay must start to rebuild the current state, when the next offset to
    /// process is `next`.
    pub fn checkpoint(&self, next: i64) -> Checkpoint {
        let earliest = self.windows.iter().filter_map(WindowOperator::earliest).chain(self.rules.earliest()).min();
        match self.seen.replay_start(earliest, next) {
            Some(m) => Checkpoint {
                next,
                replay_from: m.offset,
                max_time: m.max_time,
            },
            None => Checkpoint {
                next,
                replay_from: next,
                max_time: self.max_time,
            },
        }
    }

    /// The event-time watermark: no event older than this is expected any more.
    pub fn watermark(&self) -> i64 {
        self.max_time.saturating_sub(self.out_of_orderness)
    }

    /// Processes one message, appending what it yields to `out`.
    pub fn process(&mut self, msg: &Message, out: &mut Outputs) {
        if msg.key.as_deref() == Some(TICK_KEY)
            && let Some(time) = tick_time(&msg.payload)
        {
            self.tick(time, out);
            return;
        }
        let origin = Origin {
            topic: Arc::clone(&self.topic),
            partition: msg.partition as i32,
            offset: msg.offset,
        };
        out.raw.push(RawRecord {
            origin: origin.clone(),
            key: msg.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            ingest_time: msg.timestamp,
            payload: msg.payload.clone(),
        });
        let (point, source_id) = match self.validate(msg) {
            Ok(v) => v,
            Err(reason) => {
                out.rejects.push(RejectRecord {
                    origin,
                    ingest_time: msg.timestamp,
                    payload: msg.payload.clone(),
                    reason,
                });
                return;
            }
        };
        let watermark = self.watermark();
        let horizon = watermark.saturating_sub(self.lateness);
        let mark = Mark {
            offset: msg.offset,
            max_time: self.max_time,
        };
        if point.time >= horizon.saturating_sub(self.remember) && !self.seen.insert(point.time, fingerprint(&point), mark) {
            out.duplicates += 1;
            return;
        }
        if point.time < horizon {
            out.late.push(LateRecord {
                origin,
                measurement: point.measurement,
                source_id: source_id.into_string(),
                time: point.time,
                watermark,
                lateness_ns: watermark - point.time,
                payload: msg.payload.clone(),
            });
            return;
        }
        for w in &mut self.windows {
            w.add(&source_id, &point, mark);
        }
        self.rules.evaluate(&source_id, &point, horizon, mark, &mut out.anomalies);
        self.data_time = self.data_time.max(point.time);
        // Silence is judged against the partition's data only, as of this point's time:
        // when every source of a partition stops (the session is over, a backlog is
        // done), none is silent next to the others, and ticks do not make them so. Each
        // call depends on this point alone, so a replay makes the same calls.
        self.rules.advance(point.time.saturating_sub(self.out_of_orderness), &mut out.anomalies);
        self.tick(point.time, out);
        out.clean.push(point);
    }

    /// Moves event time on to `time` if it is ahead, as data does and as a watermark
    /// tick does when the partition was idle: windows the new watermark passes fire, and
    /// data behind it is late. (Silence rules wait for data: see `process`.)
    pub fn tick(&mut self, time: i64, out: &mut Outputs) {
        if time > self.max_time {
            self.max_time = time;
            let watermark = self.watermark();
            for w in &mut self.windows {
                w.fire(watermark, &mut out.windows);
            }
            self.seen.forget_before(watermark.saturating_sub(self.lateness).saturating_sub(self.remember));
        }
    }

    /// The event time a tick should carry after the partition has been idle for `idle`
    /// (the newest data's time plus `idle`); `None` when no window is open or no data
    /// was seen yet.
    pub fn idle_tick_time(&self, idle: std::time::Duration) -> Option<i64> {
        if self.data_time == i64::MIN || self.open_windows() == 0 {
            return None;
        }
        let time = self.data_time.saturating_add(i64::try_from(idle.as_nanos()).unwrap_or(i64::MAX));
        (time > self.max_time).then_some(time)
    }

    /// End of input: closes every open window.
    pub fn finish(&mut self, out: &mut Outputs) {
        for w in &mut self.windows {
            w.fire_all(&mut out.windows);
        }
    }

    /// Decodes, validates and normalizes a payload; the error is the reject reason.
    fn validate(&mut self, msg: &Message) -> Result<(Point, Name), String> {
        let mut point = json::decode(&msg.payload, msg.timestamp, Precision::S)
            .map_err(|e| e.to_string())?;
        normalize_names(&mut point)?;
        self.enricher.apply(&mut point)?;
        let source_id = match self.config.source_id(&point) {
            Some(s) => Name::from(s),
            None => {
                return Err(format!(
                    "measurement {:?} has no {:?} tag, which identifies its source",
                    point.measurement,
                    self.config.source_tag(&point.measurement)
                ));
            }
        };
        check_time(point.time, msg.timestamp, self.config.max_future)?;
        self.schemas.conform(&mut point)?;
        Ok((point, source_id))
    }

    /// Topic this processor reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Partition this processor reads.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Open window count, for status.
    pub fn open_windows(&self) -> usize {
        self.windows.iter().map(WindowOperator::open_windows).sum()
    }
}
