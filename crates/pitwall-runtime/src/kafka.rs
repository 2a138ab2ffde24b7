//! `pitwall process`: the processor as its own process, reading the raw topic from Kafka
//! in a consumer group and writing the lake exactly once.
//!
//! The raw topic is a [`Source`] for the one loop ([`consume`]): partitions are taken
//! up inside the group's rebalance, where the lake's progress for the partition says
//! where to replay from (so open windows and rule episodes are rebuilt exactly) and
//! below which offset each table already has its rows; the assignment itself starts at
//! that offset. A revoked partition's buffered rows are dropped, and a fenced commit
//! (another member committed the partition meanwhile) drops ours and takes the
//! partition up again from the lake. Outputs also go to their Kafka topics (JSON keyed
//! by source id), acknowledged before each lake commit: at least once there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use pitwall_bus::Publish;
use pitwall_bus::Topics;
use pitwall_bus::kafka::{
    KafkaConsumer, KafkaProducer, KafkaPublisher, KafkaTopic, Rebalance, StartHook,
};
use pitwall_core::PartitionId;
use pitwall_lake::progress::names;
use pitwall_lake::{Lake, LakeWriter, ResumePlan};
use pitwall_stream::{TICK_KEY, tick_payload};
use tokio_util::sync::CancellationToken;

use crate::commits::{Commits, Gate};
use crate::config::Config;
use crate::consume::{Change, Options, Pipeline, Reread, Source, consume};
use crate::metrics::Stats;
use crate::open::{ensure_topics, open_lake, spawn_maintenance};
use crate::produce::{SimRun, produce, replayed, simulators};
use crate::publish::{Encoded, OutputTopics, Publisher};
use crate::serve::{KafkaWriteSink, feed_live_from_kafka, start_server};

/// The longest wait between two tries of a failing commit: short, since the rows wait
/// in Kafka, not in memory.
const MAX_KAFKA_BACKOFF: Duration = Duration::from_secs(5);

/// The most messages taken off the consumer's queue at once.
const RECV_BATCH: usize = 512;

/// How `pitwall process` runs.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Exit once no message has arrived for this long, every partition is read to the
    /// end of the topic and everything is committed.
    pub exit_when_idle: Option<Duration>,
}

/// [`crate::embedded::run_embedded`] over Kafka: the simulators send to the raw topic (as `pitwall
/// ingest`) while the processor reads it in the consumer group (as `pitwall process`),
/// until `cancel`. What was processed is committed; what was sent but not processed
/// waits in Kafka for the next run.
pub async fn run_on_kafka(
    config: Config,
    run: SimRun,
    cancel: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    let topics = ensure_topics(&config).await?;
    let server = match &run.serve {
        Some(s) => {
            let sink = Arc::new(KafkaWriteSink::new(&config.kafka, &topics.raw)?);
            let (lake, schemas) = open_lake(&config).await?;
            let live = pitwall_server::LiveHub::default();
            feed_live_from_kafka(&config, &topics, &live, &cancel)?;
            Some(
                start_server(
                    s,
                    &config,
                    sink,
                    Some((lake, schemas)),
                    live,
                    stats.health.clone(),
                    cancel.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let producer = {
        let (config, cancel, stats) = (config.clone(), cancel.clone(), Arc::clone(&stats));
        tokio::spawn(async move {
            let simulated = async {
                if run.replay.is_some() && !config.sim.race_enabled && !config.sim.iot_enabled {
                    return Ok(());
                }
                let mut sink = KafkaTopic::new(&config.kafka, &topics.raw)?;
                let mut sim = simulators(&config, run.start_time);
                produce(&config, &run, &mut sim, &mut sink, &cancel, &stats).await?;
                sink.finish().await?;
                anyhow::Ok(())
            };
            let replayed = async {
                if let Some(opts) = &run.replay {
                    let mut raw = KafkaTopic::new(&config.kafka, &topics.raw)?;
                    let mut dlq = KafkaTopic::new(&config.kafka, &topics.dlq)?;
                    replayed(&config, opts, &mut raw, &mut dlq, &cancel, &stats).await?;
                    raw.finish().await?;
                    dlq.finish().await?;
                }
                anyhow::Ok(())
            };
            let (simulated, replayed) = tokio::join!(simulated, replayed);
            simulated.and(replayed)
        })
    };
    let processed = self::run(config, ProcessOptions::default(), cancel.clone(), stats).await;
    cancel.cancel();
    producer.await.context("the simulator task panicked")??;
    if let Some(server) = server {
        server.await.context("the write API task panicked")??;
    }
    processed
}

/// Runs the processor until `cancel` (or idle, if asked), then commits what it has.
pub async fn run(
    config: Config,
    options: ProcessOptions,
    cancel: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    let topics = ensure_topics(&config).await?;
    let (lake, schemas) = open_lake(&config).await?;
    let _maintenance = spawn_maintenance(&lake, &config, &cancel);
    let writer = LakeWriter::open(lake.clone())
        .await
        .context("reading the lake's committed offsets")?;
    let mut source = KafkaSource::subscribe(&config, &topics, &lake, &cancel)?;
    let processor_config = Arc::new(config.processor.clone());
    let (alerts, alert_routes) = crate::alerts::start(&config.alerts, &config.lake.data_dir)?;
    let publisher = Arc::new(KafkaPublisher::new(&config.kafka)?);
    // Commits run on another task while processing goes on, once the Kafka outputs
    // queued before them (theirs among them) are acknowledged: the lake's offsets never
    // pass outputs that could still be lost. While commits fail or run long, reading
    // stops 4 x commit-rows ahead: the rows wait in Kafka, not in memory. (Past
    // max.poll.interval.ms the member leaves its group and the next owner takes the
    // partitions up from the lake.)
    let gate: Gate = {
        let publisher = Arc::clone(&publisher);
        Box::new(move || {
            let (publisher, mark) = (Arc::clone(&publisher), publisher.mark());
            Box::pin(async move {
                publisher
                    .delivered_before(mark)
                    .await
                    .context("publishing outputs to Kafka")
            })
        })
    };
    let commits = Commits::new(
        writer,
        config.lake.commit_rows.saturating_mul(4),
        MAX_KAFKA_BACKOFF,
        Arc::clone(&stats),
    )
    .with_gate(gate);
    let mut pipeline = Pipeline {
        lake,
        schemas,
        config: Arc::clone(&processor_config),
        commits,
        publisher: Publisher::new(
            KafkaOutputs {
                publisher,
                topics: topics.clone(),
                streams: config.kafka.outputs.clone(),
            },
            processor_config,
            alerts,
            Arc::clone(&stats),
        ),
        stats,
    };
    let options = Options {
        stop: cancel,
        exit_when_idle: options.exit_when_idle,
        recv_batch: RECV_BATCH,
    };
    let result = consume(&mut source, &mut pipeline, &options).await;
    source.consumer.close();
    alert_routes.finish(crate::alerts::ALERTS_GRACE).await;
    result
}

/// The raw topic read in the consumer group: partitions are taken up inside the
/// group's rebalance at the offset the lake's plan says.
struct KafkaSource {
    consumer: KafkaConsumer,
    /// The plans the rebalance made, until the loop takes their partitions up.
    plans: Arc<Mutex<HashMap<PartitionId, ResumePlan>>>,
    /// Watermark ticks go to the raw topic through this.
    producer: KafkaProducer,
    topics: Topics,
    group: String,
    end_offsets: EndOffsets,
}

impl KafkaSource {
    fn subscribe(
        config: &Config,
        topics: &Topics,
        lake: &Lake,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let plans: Arc<Mutex<HashMap<PartitionId, ResumePlan>>> = Arc::default();
        let hook: StartHook = {
            let (lake, plans, handle) = (
                lake.clone(),
                Arc::clone(&plans),
                tokio::runtime::Handle::current(),
            );
            Arc::new(move |topic: &str, partition: u32| {
                let key = PartitionId::new(topic, partition);
                let plan = tokio::task::block_in_place(|| handle.block_on(lake.resume_plan(&key)))
                    .map_err(|e| format!("reading the lake's progress: {e}"))?;
                let start = plan.base.replay_from;
                tracing::info!(
                    partition = %key,
                    replay_from = start,
                    frontier = plan.frontier,
                    behind = ?plan.suppress,
                    "taking up the partition from the lake"
                );
                plans
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, plan);
                Ok(start)
            })
        };
        Ok(KafkaSource {
            consumer: KafkaConsumer::subscribe_with(&config.kafka, &[&topics.raw], Some(hook))?,
            plans,
            producer: KafkaProducer::new(&config.kafka, &topics.clean)?,
            end_offsets: EndOffsets::watch(&config.kafka, &topics.raw, cancel)?,
            topics: topics.clone(),
            group: config.kafka.group_id.clone(),
        })
    }
}

impl Source for KafkaSource {
    async fn recv(
        &mut self,
        max: usize,
        batch: &mut Vec<pitwall_bus::Message>,
    ) -> anyhow::Result<bool> {
        // A receive is cancellation safe: nothing leaves librdkafka's queue until its
        // batch is complete.
        self.consumer.recv_batch(max, batch).await?;
        Ok(true)
    }

    fn changes(&mut self) -> anyhow::Result<Vec<Change>> {
        let mut changes = Vec::new();
        for event in self.consumer.rebalances() {
            match event {
                Rebalance::Assigned(list) => {
                    let mut plans = self
                        .plans
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let mut taken = Vec::with_capacity(list.len());
                    for (topic, partition, _) in list {
                        let key = PartitionId::new(topic.as_str(), partition);
                        let plan = plans
                            .remove(&key)
                            .with_context(|| format!("{key} was assigned without a plan"))?;
                        self.end_offsets.lock().0.push(partition);
                        taken.push((key, plan));
                    }
                    changes.push(Change::Assigned(taken));
                }
                Rebalance::Revoked(list) => {
                    let mut ends = self.end_offsets.lock();
                    ends.0.retain(|p| !list.iter().any(|(_, q)| q == p));
                    changes.push(Change::Revoked(
                        list.into_iter()
                            .map(|(topic, partition)| PartitionId::new(topic.as_str(), partition))
                            .collect(),
                    ));
                }
                Rebalance::Failed(reason) => anyhow::bail!("{reason}"),
            }
        }
        Ok(changes)
    }

    async fn tick(&self, partition: u32, time: i64) -> anyhow::Result<()> {
        self.producer
            .send_to_partition(
                &self.topics.raw,
                partition,
                TICK_KEY,
                &tick_payload(time),
                time,
            )
            .await?;
        Ok(())
    }

    /// The brokers' end offset, as last asked, minus the next offset to process.
    fn lag(&self, partition: u32, next: i64) -> Option<i64> {
        let ends = self.end_offsets.lock();
        ends.1.get(&partition).map(|end| (end - next).max(0))
    }

    fn rereader(&self) -> Option<&dyn Reread> {
        Some(self)
    }

    /// The lake's offsets of the raw topic as the group's committed offsets (for lag
    /// monitoring).
    fn committed(&self, writer: &LakeWriter) {
        let offsets: Vec<(String, u32, i64)> = writer
            .partitions()
            .filter(|key| key.topic() == self.topics.raw)
            .filter_map(|key| {
                Some((
                    key.topic().to_owned(),
                    key.partition(),
                    writer.held(names::RAW, key)?,
                ))
            })
            .collect();
        if let Err(e) = self.consumer.commit_offsets(&offsets) {
            tracing::debug!(error = %e, "recording the group's offsets for lag monitoring");
        }
    }

    fn unassigned_for(&self, idle: Duration) -> anyhow::Result<()> {
        if tokio::task::block_in_place(|| self.consumer.stranded()).unwrap_or(false) {
            tracing::warn!(
                group = %self.group,
                "this member has held no partition for {idle:?} although it is the group's only member; joining the group again"
            );
            self.consumer.rejoin()?;
        }
        Ok(())
    }
}

impl Reread for KafkaSource {
    fn seek(&self, partition: u32, offset: i64) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| self.consumer.seek(&self.topics.raw, partition, offset))?;
        Ok(())
    }

    fn offset_range(&self, partition: u32) -> anyhow::Result<(i64, i64)> {
        Ok(tokio::task::block_in_place(|| {
            self.consumer.offset_range(&self.topics.raw, partition)
        })?)
    }
}

/// Kafka's output topics: the streams `kafka.outputs` names, queued on the publisher
/// (acknowledged before each lake commit).
struct KafkaOutputs {
    publisher: Arc<KafkaPublisher>,
    topics: Topics,
    streams: Vec<pitwall_bus::OutputStream>,
}

impl OutputTopics for KafkaOutputs {
    fn wants(&self, stream: pitwall_bus::OutputStream) -> bool {
        self.streams.contains(&stream)
    }

    async fn send(&self, encoded: &mut Encoded) -> anyhow::Result<()> {
        for (stream, key, payload, time) in encoded.iter() {
            self.publisher
                .publish(stream.topic(&self.topics), key, payload, time)
                .await?;
        }
        encoded.clear();
        Ok(())
    }
}

/// End offsets of the raw topic's partitions, asked of the brokers every 2 s by a
/// thread of its own (so a slow broker never holds up processing), for lag reports.
#[derive(Debug, Clone, Default)]
struct EndOffsets {
    inner: Arc<Mutex<Watched>>,
}

/// Partitions to ask about (this member's), and what the brokers last said of each.
type Watched = (Vec<u32>, HashMap<u32, i64>);

impl EndOffsets {
    fn watch(
        config: &pitwall_bus::kafka::KafkaConfig,
        topic: &str,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let ends = EndOffsets::default();
        let watcher = KafkaConsumer::watcher(config)?;
        let (shared, topic, cancel) = (ends.clone(), topic.to_owned(), cancel.clone());
        std::thread::spawn(move || {
            while !cancel.is_cancelled() {
                let partitions = shared.lock().0.clone();
                for p in partitions {
                    if let Ok(end) = watcher.end_offset(&topic, p, Duration::from_secs(2)) {
                        shared.lock().1.insert(p, end);
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        Ok(ends)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
