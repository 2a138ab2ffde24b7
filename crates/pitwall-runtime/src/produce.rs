//! What a run sends to the raw topic: the simulators (with payloads corrupted on
//! purpose when asked) and replayed files.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pitwall_bus::Publish;
use pitwall_core::json;
use pitwall_sim::{Fleet, Mixed, Race, Simulator};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Stats;

/// How the simulators are driven.
#[derive(Debug, Clone)]
pub struct SimRun {
    /// Simulated time of the first sample, ns since the epoch.
    pub start_time: i64,
    /// Stop after this much simulated time; `None` runs until cancelled.
    pub sim_duration: Option<Duration>,
    /// Serve the write API too (then the run lasts until cancelled, whatever the
    /// simulators do).
    pub serve: Option<pitwall_server::ServerConfig>,
    /// Keep the raw topic open until cancelled after the simulators finish: another
    /// producer (a benchmark's load generator) sends to it.
    pub hold_open: bool,
    /// Files to send to the raw topic besides (or instead of) the simulators
    /// (`pitwall up --replay`).
    pub replay: Option<crate::replay::ReplayOptions>,
}

/// Builds the simulators `config` enables.
pub fn simulators(config: &Config, start_time: i64) -> Mixed {
    let mut sims: Vec<Box<dyn Simulator>> = Vec::new();
    if config.sim.race_enabled {
        sims.push(Box::new(Race::new(
            config.sim.race.clone(),
            config.sim.seed,
            start_time,
        )));
    }
    if config.sim.iot_enabled {
        sims.push(Box::new(Fleet::new(
            config.sim.iot.clone(),
            config.sim.seed,
            start_time,
        )));
    }
    Mixed::new(sims)
}

/// `pitwall up --replay`: the files into `raw` (bad lines into `rejects`), counted as
/// produced; then the summary and where the dashboard shows the replayed events.
pub(crate) async fn replayed<R: Publish, D: Publish>(
    config: &Config,
    opts: &crate::replay::ReplayOptions,
    raw: &mut R,
    rejects: &mut D,
    cancel: &CancellationToken,
    stats: &Stats,
) -> anyhow::Result<crate::replay::ReplaySummary> {
    let counted = AtomicU64::new(0);
    let summary = crate::replay::replay_into(config, opts, raw, rejects, cancel, |sent| {
        let before = counted.swap(sent, Ordering::Relaxed);
        stats.produced.fetch_add(sent - before, Ordering::Relaxed);
    })
    .await?;
    eprintln!("{}", crate::replay::describe(&summary));
    if let Some((first, last)) = summary.span {
        let ms = |ns: i64| ns.div_euclid(1_000_000);
        eprintln!(
            "the replayed events run from {} to {}: on the dashboard, /?range=lake&from={}&to={}",
            pitwall_core::rfc3339_ms(first),
            pitwall_core::rfc3339_ms(last),
            ms(first),
            ms(last) + 1
        );
    }
    Ok(summary)
}

/// Steps the simulators and sends their points until the simulated end, or `cancel`.
pub async fn produce<S: Publish>(
    config: &Config,
    run: &SimRun,
    sim: &mut Mixed,
    producer: &mut S,
    cancel: &CancellationToken,
    stats: &Stats,
) -> anyhow::Result<()> {
    let end_time = run.sim_duration.map(|d| {
        run.start_time
            .saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    });
    let speed = config.sim.speed;
    let wall_start = Instant::now();
    let mut points = Vec::new();
    let mut payload = Vec::with_capacity(512);
    let mut corrupter = Corrupter::new(config);
    loop {
        let t = sim.next_time();
        if end_time.is_some_and(|end| t >= end) {
            return Ok(());
        }
        if speed > 0.0 {
            // Real time times `speed`: wait until the wall clock catches up with sim time.
            let due = Duration::from_nanos(((t - run.start_time).max(0) as f64 / speed) as u64);
            let now = wall_start.elapsed();
            if due > now {
                tokio::select! {
                    () = tokio::time::sleep(due - now) => {}
                    () = cancel.cancelled() => return Ok(()),
                }
            }
        }
        if cancel.is_cancelled() {
            return Ok(());
        }
        points.clear();
        sim.step(&mut points);
        for p in &points {
            payload.clear();
            if corrupter.corrupt(p, &mut payload) {
                stats.corrupted.fetch_add(1, Ordering::Relaxed);
            } else {
                json::encode_into(p, &mut payload)?;
            }
            // The simulator is the producer: the message timestamp is the event time.
            let send = producer.send(
                config.processor.source_key(p),
                Bytes::copy_from_slice(&payload),
                p.time,
            );
            tokio::select! {
                r = send => { r?; }
                () = cancel.cancelled() => return Ok(()),
            }
            stats.produced.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Turns a deterministic share of payloads into malformed ones.
struct Corrupter {
    chance: f64,
    rng: ChaCha8Rng,
    next_kind: u32,
}

impl Corrupter {
    fn new(config: &Config) -> Self {
        let per_minute = |n: usize, hz: f64, on: bool| if on { n as f64 * hz * 60.0 } else { 0.0 };
        let events_per_minute = per_minute(
            config.sim.race.cars,
            config.sim.race.hz,
            config.sim.race_enabled,
        ) + per_minute(
            config.sim.iot.sensors,
            config.sim.iot.hz,
            config.sim.iot_enabled,
        );
        Corrupter {
            chance: config.sim.corrupt_per_minute / events_per_minute.max(1.0),
            rng: ChaCha8Rng::seed_from_u64(config.sim.seed ^ 0x00c0_ffee),
            next_kind: 0,
        }
    }

    /// Writes a malformed payload for `p` into `out` and returns true, or returns false.
    fn corrupt(&mut self, p: &pitwall_core::Point, out: &mut Vec<u8>) -> bool {
        if self.chance <= 0.0 || self.rng.random::<f64>() >= self.chance {
            return false;
        }
        let mut q = p.clone();
        self.next_kind = (self.next_kind + 1) % 4;
        match self.next_kind {
            0 => {
                let _ = json::encode_into(&q, out);
                out.truncate(out.len() / 2);
            }
            1 => {
                q.tags.clear();
                let _ = json::encode_into(&q, out);
            }
            2 => {
                q.time /= 1_000_000_000;
                let _ = json::encode_into(&q, out);
            }
            _ => out.extend_from_slice(
                format!("{} at {}: sensor offline", q.measurement, q.time).as_bytes(),
            ),
        }
        true
    }
}
