//! The per-partition processor: raw bus message in, every derived record out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use pitwall_core::record::{LateRecord, Origin, RawRecord, RejectRecord};
use pitwall_core::{Checkpoint, Message, Name, Outputs, Point, Precision, RejectKind, json};

use crate::config::ProcessorConfig;
use crate::enrich::Enricher;
use crate::normalize::{LocalSchemas, SchemaRegistry, normalize_names};
use crate::rules::RuleEngine;
use crate::window::{Mark, WindowOperator};

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
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
    s.strip_prefix("{\"pitwall_idle_tick\":")?
        .strip_suffix('}')?
        .parse()
        .ok()
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
    /// The partition's clock: the largest event time of its data, each point's time
    /// taken no later than when it was received (so a source whose clock runs ahead
    /// cannot move it), and of its ticks.
    max_time: i64,
    /// The partition's clock from data alone (ticks aside), from which ticks count.
    data_time: i64,
    /// Each source's own clock, while it is ahead of the partition's (see [`Clocks`]).
    clocks: Clocks,
    out_of_orderness: i64,
    lateness: i64,
    /// Points taken recently, to know a retry when it comes.
    seen: Seen,
    /// How far behind the horizon points are remembered in `seen`: the longest window.
    remember: i64,
}

/// Event time per source. A source's events are judged against its own clock: the
/// largest event time it has sent. So a device whose clock runs minutes ahead makes its
/// own later points look early, never anyone else's late.
///
/// A source that stops sending must still see its windows close, so no source's clock
/// is behind the partition's clock (the largest event time of the partition's data,
/// each point counted at most at the time it was received) by more than `idle` (the
/// processor's idle timeout): a silent source's windows close as the others' data moves
/// on, as the idle ticks move an idle partition on. A source's own clock matters only
/// while it is ahead of that floor; and a clock set by a point received long ago
/// (`forget` before the partition's clock) is let go, so one far-ahead point cannot pin
/// state or the replay start for long. Both are decided from the partition's clock and
/// the log alone, so a replay judges every point as the first run did; the checkpoint's
/// replay start covers the point that set every clock that still matters.
#[derive(Debug, Default)]
struct Clocks {
    /// measurement -> source -> clock. Nested so a lookup borrows the names.
    by_source: HashMap<Name, HashMap<Name, SourceClock>>,
    idle: i64,
    forget: i64,
    /// When the partition's clock passes this, clocks that no longer matter are dropped.
    next_sweep: i64,
    /// When each clock ahead of the partition's is let go (its point received more
    /// than `forget` before the partition's clock): at most one entry per source,
    /// moved on when it is due and the source has sent a newer point.
    due: std::collections::BinaryHeap<std::cmp::Reverse<(i64, Name, Name)>>,
}

/// What set a source's clock.
#[derive(Debug, Clone, Copy)]
struct SourceClock {
    /// The source's largest event time.
    time: i64,
    /// That point's time, at most when it was received.
    received: i64,
    /// The message it came in.
    mark: Mark,
    /// True while an entry in `Clocks::due` stands for it.
    queued: bool,
}

impl Clocks {
    fn new(idle: i64, forget: i64) -> Self {
        Clocks {
            by_source: HashMap::new(),
            idle,
            forget,
            next_sweep: i64::MIN,
            due: std::collections::BinaryHeap::new(),
        }
    }

    /// The lowest any source's clock can be when the partition's clock is `partition`.
    fn floor(&self, partition: i64) -> i64 {
        partition.saturating_sub(self.idle)
    }

    /// True while `c` is ahead of the floor and not yet let go.
    fn matters(&self, c: &SourceClock, partition: i64) -> bool {
        c.time > self.floor(partition) && c.received.saturating_add(self.forget) >= partition
    }

    /// The clock of `source` of `measurement`.
    fn of(&self, measurement: &str, source: &str, partition: i64) -> i64 {
        let floor = self.floor(partition);
        match self.by_source.get(measurement).and_then(|m| m.get(source)) {
            Some(c) if self.matters(c, partition) => c.time,
            _ => floor,
        }
    }

    /// A point of `source` at `time`, received at `received` (at most `time`), in the
    /// message of `mark`, was taken while the source's clock was at `current` (what
    /// [`Self::of`] said). True if it moved the source's clock ahead of the partition's
    /// floor.
    fn advance(
        &mut self,
        measurement: &str,
        source: &str,
        current: i64,
        (time, received): (i64, i64),
        mark: Mark,
    ) -> bool {
        if time <= current {
            return false;
        }
        let sources = match self.by_source.get_mut(measurement) {
            Some(s) => s,
            None => self.by_source.entry(Name::from(measurement)).or_default(),
        };
        let clock = match sources.get_mut(source) {
            Some(c) => c,
            None => sources.entry(Name::from(source)).or_insert(SourceClock {
                time,
                received,
                mark,
                queued: false,
            }),
        };
        (clock.time, clock.received, clock.mark) = (time, received, mark);
        if !clock.queued {
            clock.queued = true;
            let at = received.saturating_add(self.forget);
            self.due.push(std::cmp::Reverse((
                at,
                Name::from(measurement),
                Name::from(source),
            )));
        }
        true
    }

    /// The sources whose clock, still ahead of the partition's floor, is let go now
    /// that the partition's clock is at `partition`, in a replay's order.
    fn let_go(&mut self, partition: i64) -> Vec<(Name, Name)> {
        let mut gone = Vec::new();
        while let Some(std::cmp::Reverse((at, _, _))) = self.due.peek()
            && *at < partition
        {
            let std::cmp::Reverse((_, measurement, source)) = self.due.pop().expect("peeked");
            let floor = self.floor(partition);
            let Some(c) = self
                .by_source
                .get_mut(measurement.as_str())
                .and_then(|m| m.get_mut(source.as_str()))
            else {
                continue;
            };
            let at = c.received.saturating_add(self.forget);
            if at >= partition {
                // A newer point came since: wait for it.
                self.due.push(std::cmp::Reverse((at, measurement, source)));
                continue;
            }
            c.queued = false;
            if c.time > floor {
                gone.push((measurement, source));
            }
        }
        gone
    }

    /// Drops the clocks that no longer matter, once per `idle` of partition time. One
    /// with an entry in `due` stays until [`Self::let_go`] takes the entry, so each
    /// source has at most one.
    fn sweep(&mut self, partition: i64) {
        if partition < self.next_sweep {
            return;
        }
        self.next_sweep = partition.saturating_add(self.idle.max(1));
        let mut by_source = std::mem::take(&mut self.by_source);
        for sources in by_source.values_mut() {
            sources.retain(|_, c| c.queued || self.matters(c, partition));
        }
        by_source.retain(|_, s| !s.is_empty());
        self.by_source = by_source;
    }

    /// The earliest mark a clock that matters was set in.
    fn earliest(&self, partition: i64) -> Option<Mark> {
        self.by_source
            .values()
            .flat_map(HashMap::values)
            .filter(|c| self.matters(c, partition))
            .map(|c| c.mark)
            .min()
    }
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
            fingerprints: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(
                FINGERPRINT_SEED,
            )),
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
        let mut start = earliest
            .into_iter()
            .chain(self.order.front().map(|&(_, _, m)| m))
            .min();
        loop {
            let at = start.map_or(next, |m| m.offset);
            let lower = self
                .hits
                .iter()
                .filter(|&&(_, d)| d >= at)
                .map(|&(m, _)| m)
                .min();
            match lower {
                Some(m) if m.offset < at => start = Some(m),
                _ => break,
            }
        }
        self.settled.store(
            start.map_or(next, |m| m.offset),
            std::sync::atomic::Ordering::Relaxed,
        );
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
    pub fn new(
        config: Arc<ProcessorConfig>,
        schemas: SchemaRegistry,
        topic: &str,
        partition: u32,
    ) -> Self {
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
        let enricher = config
            .enricher()
            .expect("the processor config is validated at start");
        let clocks = Clocks::new(nanos(config.idle_timeout), nanos(config.forget_after));
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
            clocks,
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
        let earliest = self
            .windows
            .iter()
            .filter_map(WindowOperator::earliest)
            .chain(self.rules.earliest())
            .chain(self.clocks.earliest(self.max_time))
            .min();
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

    /// The partition's event-time watermark: the watermark of a source that has been
    /// silent a while. A source's own is at or ahead of it (see [`Clocks`]).
    pub fn watermark(&self) -> i64 {
        self.clocks
            .floor(self.max_time)
            .saturating_sub(self.out_of_orderness)
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
            key: msg
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            ingest_time: msg.timestamp,
            payload: msg.payload.clone(),
        });
        let (point, source_id) = match self.validate(msg) {
            Ok(v) => v,
            Err((kind, reason)) => {
                out.rejects.push(RejectRecord {
                    origin,
                    ingest_time: msg.timestamp,
                    payload: msg.payload.clone(),
                    kind,
                    reason,
                });
                return;
            }
        };
        let clock = self
            .clocks
            .of(&point.measurement, &source_id, self.max_time);
        let watermark = clock.saturating_sub(self.out_of_orderness);
        let horizon = watermark.saturating_sub(self.lateness);
        let mark = Mark {
            offset: msg.offset,
            max_time: self.max_time,
        };
        // The point's time at most when it was received: what the partition's clock,
        // silence and the memory of points taken go by, so a point far ahead cannot
        // move them (nor keep itself remembered for as long as it is ahead).
        let heard = point.time.min(msg.timestamp);
        if heard >= self.forget_seen_before(self.max_time)
            && !self.seen.insert(heard, fingerprint(&point), mark)
        {
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
        self.rules
            .evaluate(&source_id, &point, heard, horizon, mark, &mut out.anomalies);
        if self.clocks.advance(
            &point.measurement,
            &source_id,
            clock,
            (point.time, heard),
            mark,
        ) {
            let watermark = point.time.saturating_sub(self.out_of_orderness);
            for w in &mut self.windows {
                w.fire_source(&point.measurement, &source_id, watermark, &mut out.windows);
            }
        }
        self.data_time = self.data_time.max(heard);
        // Silence is judged against the partition's data only, as of this point's time:
        // when every source of a partition stops (the session is over, a backlog is
        // done), none is silent next to the others, and ticks do not make them so. Each
        // call depends on this point alone, so a replay makes the same calls.
        self.rules.advance(
            heard.saturating_sub(self.out_of_orderness),
            &mut out.anomalies,
        );
        self.tick(heard, out);
        out.clean.push(point);
    }

    /// Points older than this are not remembered for duplicates when the partition's
    /// clock is at `partition`: behind every source's horizon by the longest window.
    fn forget_seen_before(&self, partition: i64) -> i64 {
        self.clocks
            .floor(partition)
            .saturating_sub(self.out_of_orderness)
            .saturating_sub(self.lateness)
            .saturating_sub(self.remember)
    }

    /// Moves event time on to `time` if it is ahead, as data does and as a watermark
    /// tick does when the partition was idle: windows the new watermark passes fire, and
    /// data behind it is late. (Silence rules wait for data: see `process`.)
    pub fn tick(&mut self, time: i64, out: &mut Outputs) {
        if time > self.max_time {
            self.max_time = time;
            // Sources ahead of the partition whose clock is let go now: their windows
            // close (nothing newer of theirs is expected).
            for (measurement, source) in self.clocks.let_go(time) {
                for w in &mut self.windows {
                    w.fire_source(&measurement, &source, i64::MAX, &mut out.windows);
                }
            }
            let watermark = self.watermark();
            for w in &mut self.windows {
                w.fire(watermark, &mut out.windows);
            }
            self.seen.forget_before(self.forget_seen_before(time));
            self.clocks.sweep(time);
        }
    }

    /// The event time a tick should carry after the partition has been idle for `idle`:
    /// the newest data's time plus `idle`, plus the idle timeout by which silent sources'
    /// clocks trail the partition's, so every source's watermark moves on by `idle`.
    /// `None` when no window is open or no data was seen yet.
    pub fn idle_tick_time(&self, idle: std::time::Duration) -> Option<i64> {
        if self.data_time == i64::MIN || self.open_windows() == 0 {
            return None;
        }
        let time = self
            .data_time
            .saturating_add(nanos(idle))
            .saturating_add(self.clocks.idle);
        (time > self.max_time).then_some(time)
    }

    /// End of input: closes every open window.
    pub fn finish(&mut self, out: &mut Outputs) {
        for w in &mut self.windows {
            w.fire_all(&mut out.windows);
        }
    }

    /// Decodes, validates and normalizes a payload; the error is the reject reason.
    fn validate(&mut self, msg: &Message) -> Result<(Point, Name), (RejectKind, String)> {
        let kind = |k| move |e: String| (k, e);
        let mut point = json::decode(&msg.payload, msg.timestamp, Precision::S)
            .map_err(|e| (RejectKind::Decode, e.to_string()))?;
        normalize_names(&mut point).map_err(kind(RejectKind::Invalid))?;
        self.enricher
            .apply(&mut point)
            .map_err(kind(RejectKind::Unit))?;
        let source_id = match self.config.source_id(&point) {
            Some(s) => Name::from(s),
            None => {
                return Err((
                    RejectKind::NoSource,
                    format!(
                        "measurement {:?} has no {:?} tag, which identifies its source",
                        point.measurement,
                        self.config.source_tag(&point.measurement)
                    ),
                ));
            }
        };
        check_time(point.time, msg.timestamp, self.config.max_future)
            .map_err(kind(RejectKind::BadTime))?;
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
