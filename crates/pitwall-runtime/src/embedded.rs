//! The embedded pipeline: simulators, replayed files and the write API → in-process bus
//! → the one processing loop ([`consume`]) → lake, with orderly shutdown that closes
//! every window and commits everything produced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use pitwall_bus::{InProcessBus, Message, PartitionConsumer, Producer, Publish, Topics};
use pitwall_core::{Checkpoint, PartitionId};
use pitwall_lake::{LakeWriter, ResumePlan, TableProgress};
use pitwall_sim::{InjectedFault, Simulator};
use pitwall_stream::{TICK_KEY, tick_payload};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::commits::{Commits, MAX_BACKOFF};
use crate::config::Config;
use crate::consume::{Change, Options, Pipeline, Reread, Source, consume};
use crate::metrics::Stats;
use crate::open::{bus_config, open_lake, spawn_maintenance};
use crate::produce::{SimRun, produce, replayed, simulators};
use crate::publish::{BusOutputs, Publisher};
use crate::serve::{BusSink, feed_live, start_server};

/// Runs the whole pipeline in this process until the simulators finish or `cancel`
/// fires, then drains the bus, closes every window and commits everything.
pub async fn run_embedded(
    config: Config,
    run: SimRun,
    cancel: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<Summary> {
    let bus = InProcessBus::new(bus_config(&config));
    run_on_bus(bus, config, run, cancel, stats).await
}

/// [`run_embedded`] on a bus the caller made, so it can read the output topics
/// (clean, metrics, anomalies, dlq, late) while the pipeline runs. Output topics are
/// closed at the end, so their readers see the end too.
pub async fn run_on_bus(
    bus: InProcessBus,
    config: Config,
    run: SimRun,
    cancel: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (lake, schemas) = open_lake(&config).await?;
    let _maintenance = spawn_maintenance(&lake, &config, &cancel);
    let topics = bus.config().topics.clone();
    let processor_config = Arc::new(config.processor.clone());
    let (alerts, alert_routes) = crate::alerts::start(&config.alerts, &config.lake.data_dir)?;

    // Continue the offsets the lake has recorded, so every commit's claim holds.
    let progress = lake
        .committed_progress()
        .await
        .context("reading the lake's committed offsets")?;
    let mut source = BusSource::subscribe(&bus, &topics, &progress).await?;
    // Rows wait in the writer up to one more commit's worth beside the commit in
    // flight; past that, reading stops and the bus pushes back on its writers.
    let commits = Commits::new(
        LakeWriter::with_progress(lake.clone(), &progress),
        config.lake.commit_rows,
        MAX_BACKOFF,
        Arc::clone(&stats),
    );
    let mut pipeline = Pipeline {
        lake: lake.clone(),
        schemas: schemas.clone(),
        config: Arc::clone(&processor_config),
        commits,
        publisher: Publisher::new(
            BusOutputs::new(&bus, &topics)?,
            processor_config,
            alerts,
            Arc::clone(&stats),
        ),
        stats: Arc::clone(&stats),
    };
    // The input ends when the raw topic is closed below: processing runs until then.
    let options = Options {
        stop: CancellationToken::new(),
        exit_when_idle: None,
        recv_batch: RECV_BATCH,
    };
    let processing = tokio::spawn(
        async move { consume(&mut source, &mut pipeline, &options).await }
            .instrument(tracing::info_span!("processor")),
    );

    let stop_server = CancellationToken::new();
    let server = match &run.serve {
        Some(s) => {
            let sink = Arc::new(BusSink {
                producer: bus.producer(&topics.raw)?,
                stats: Arc::clone(&stats),
            });
            let live = pitwall_server::LiveHub::default();
            feed_live(&bus, &topics, &live)?;
            Some(
                start_server(
                    s,
                    &config,
                    sink,
                    Some((lake.clone(), schemas.clone())),
                    live,
                    stats.health.clone(),
                    stop_server.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let mut producer = bus.producer(&topics.raw)?;
    let mut sim = simulators(&config, run.start_time);
    let produced = match &run.replay {
        None => produce(&config, &run, &mut sim, &mut producer, &cancel, &stats).await,
        Some(opts) => {
            let simulated = async {
                if config.sim.race_enabled || config.sim.iot_enabled {
                    produce(&config, &run, &mut sim, &mut producer, &cancel, &stats).await
                } else {
                    Ok(())
                }
            };
            let replayed = async {
                let mut raw = bus.producer(&topics.raw)?;
                let mut rejects = crate::replay::RejectFile::new(
                    config.lake.data_dir.join("replay-rejects.jsonl"),
                );
                let summary =
                    replayed(&config, opts, &mut raw, &mut rejects, &cancel, &stats).await?;
                rejects.finish().await?;
                if summary.rejected_total() > 0 {
                    eprintln!(
                        "  the bad lines, with their reasons: {}",
                        rejects.path().display()
                    );
                }
                anyhow::Ok(())
            };
            let (simulated, replayed) = tokio::join!(simulated, replayed);
            simulated.and(replayed)
        }
    };
    if run.hold_open || server.is_some() {
        // Serving or fed from outside: the run lasts until cancelled, then writes in
        // flight finish before the topic ends.
        cancel.cancelled().await;
    }
    if let Some(server) = server {
        stop_server.cancel();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the write API stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the write API task panicked"),
        }
    }
    // Everything sent is on the bus; ending the topic lets processors drain and finish.
    bus.close(&topics.raw).await?;
    // A failing pipeline makes the producer fail too: report the pipeline's error,
    // which is the cause, before the producer's.
    let mut errors = Vec::new();
    match processing.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => errors.push(e),
        Err(e) => errors.push(anyhow::Error::from(e).context("the processing task panicked")),
    }
    if let Err(e) = produced {
        errors.push(e);
    }
    // Episodes of the last commit go out before the end (what cannot go in time waits
    // in the outbox for the next start).
    alert_routes.finish(crate::alerts::ALERTS_GRACE).await;
    for t in topics.all() {
        if t != topics.raw {
            bus.close(t).await?;
        }
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    Ok(Summary {
        produced: Stats::get(&stats.produced),
        rows_committed: Stats::get(&stats.rows_committed),
        anomalies: Stats::get(&stats.anomalies),
        rejects: Stats::get(&stats.rejects),
        corrupted: Stats::get(&stats.corrupted),
        faults: sim.faults(),
        elapsed: started.elapsed(),
    })
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Events produced.
    pub produced: u64,
    /// Rows committed per table over the whole run.
    pub rows_committed: u64,
    /// Anomalies raised.
    pub anomalies: u64,
    /// Rejects.
    pub rejects: u64,
    /// Payloads corrupted on purpose.
    pub corrupted: u64,
    /// The faults the simulators injected.
    pub faults: Vec<InjectedFault>,
    /// Wall time.
    pub elapsed: Duration,
}

/// The most messages taken off the bus at once.
const RECV_BATCH: usize = 1024;

/// The raw topic of the in-process bus, every partition read by this one reader. The
/// bus keeps nothing between runs: partitions continue the offsets the lake has
/// recorded, with nothing to replay.
struct BusSource {
    consumers: Vec<PartitionConsumer>,
    /// Partitions that have ended (the topic closed and they are drained).
    ended: Vec<bool>,
    /// The partition read first next time, so none is always last.
    first: usize,
    /// Every partition, taken up once on the first look.
    assign: Option<Vec<(PartitionId, ResumePlan)>>,
    /// Watermark ticks go back to the raw topic through this.
    raw: Producer,
}

impl BusSource {
    async fn subscribe(
        bus: &InProcessBus,
        topics: &Topics,
        progress: &BTreeMap<String, TableProgress>,
    ) -> anyhow::Result<Self> {
        let consumers = bus.subscribe(&topics.raw)?;
        let mut assign = Vec::with_capacity(consumers.len());
        for consumer in &consumers {
            let key = PartitionId::new(topics.raw.as_str(), consumer.partition);
            let mut plan = ResumePlan::from_lake(progress, &key);
            bus.resume(&topics.raw, consumer.partition, plan.frontier)
                .await?;
            // Nothing before the frontier is on this bus: start there, fresh.
            plan.base = Checkpoint {
                next: plan.frontier,
                replay_from: plan.frontier,
                max_time: i64::MIN,
            };
            assign.push((key, plan));
        }
        Ok(BusSource {
            ended: vec![false; consumers.len()],
            consumers,
            first: 0,
            assign: Some(assign),
            raw: bus.producer(&topics.raw)?,
        })
    }
}

impl Source for BusSource {
    async fn recv(&mut self, max: usize, batch: &mut Vec<Message>) -> anyhow::Result<bool> {
        let n = self.consumers.len();
        self.first = (self.first + 1) % n.max(1);
        let more = std::future::poll_fn(|cx| {
            // Every partition with messages gives its share, from a different one first
            // each time; a partition with none registers to wake this task.
            let share = max.div_ceil(n.max(1));
            for i in (0..n).map(|i| (self.first + i) % n) {
                if self.ended[i] || batch.len() >= max {
                    continue;
                }
                let room = share.min(max - batch.len());
                if let Poll::Ready(0) = self.consumers[i].poll_recv_many(cx, batch, room) {
                    self.ended[i] = true;
                }
            }
            if !batch.is_empty() {
                Poll::Ready(true)
            } else if self.ended.iter().all(|e| *e) {
                Poll::Ready(false)
            } else {
                Poll::Pending
            }
        })
        .await;
        Ok(more)
    }

    fn changes(&mut self) -> anyhow::Result<Vec<Change>> {
        Ok(self
            .assign
            .take()
            .map(Change::Assigned)
            .into_iter()
            .collect())
    }

    /// A tick that does not fit now is not needed: the partition has data waiting.
    async fn tick(&self, partition: u32, time: i64) -> anyhow::Result<()> {
        self.raw.try_send_to(
            partition,
            Some(Bytes::from_static(TICK_KEY)),
            Bytes::from(tick_payload(time)),
            time,
        )?;
        Ok(())
    }

    fn lag(&self, partition: u32, _next: i64) -> Option<i64> {
        let consumer = self.consumers.get(partition as usize)?;
        i64::try_from(consumer.pending()).ok()
    }

    fn rereader(&self) -> Option<&dyn Reread> {
        None
    }
}
