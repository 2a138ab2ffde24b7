//! The bus between pitwall's stages: topic names, key partitioning, and the in-process
//! implementation used by the embedded `pitwall up`.
//!
//! Topics are partitioned logs keyed by source id. A key goes to partition
//! `murmur2(key) % partitions` exactly as the Java Kafka client places it, so the
//! in-process bus and Kafka route every source alike and one source's events stay in
//! order in one partition. Every partition of the in-process bus is a bounded channel:
//! when a consumer falls behind, [`Producer::send`] waits instead of letting memory grow.
//! The entry type is [`InProcessBus`].

pub mod kafka;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

/// The topics of the pipeline, named `<prefix><stage>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Payloads as received.
    pub raw: String,
    /// Clean, normalized points.
    pub clean: String,
    /// Window aggregates.
    pub metrics: String,
    /// Anomaly episodes.
    pub anomalies: String,
    /// Rejected payloads with their reason.
    pub dlq: String,
    /// Events past the allowed lateness.
    pub late: String,
}

impl Topics {
    /// Topic names under `prefix` (default `telemetry.`; the seeds also use `f1.telemetry.`).
    pub fn with_prefix(prefix: &str) -> Self {
        let t = |s: &str| format!("{prefix}{s}");
        Topics {
            raw: t("raw"),
            clean: t("clean"),
            metrics: t("metrics"),
            anomalies: t("anomalies"),
            dlq: t("dlq"),
            late: t("late"),
        }
    }

    /// All topic names.
    pub fn all(&self) -> [&str; 6] {
        [
            &self.raw,
            &self.clean,
            &self.metrics,
            &self.anomalies,
            &self.dlq,
            &self.late,
        ]
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics::with_prefix("telemetry.")
    }
}

/// The processor's output streams that can go back onto the bus, each to its topic
/// (`kafka.outputs` chooses which go to Kafka).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Clean, normalized points (`telemetry.clean`), one message per point.
    Clean,
    /// Window aggregates (`telemetry.metrics`), one message per source and window fire.
    #[serde(alias = "windows")]
    Metrics,
    /// Anomaly episodes (`telemetry.anomalies`), one message per start and end.
    Anomalies,
    /// Rejected payloads with their reason (`telemetry.dlq`).
    #[serde(alias = "rejects")]
    Dlq,
    /// Events past the allowed lateness (`telemetry.late`).
    Late,
}

impl OutputStream {
    /// Every output stream.
    pub const ALL: [OutputStream; 5] = [
        OutputStream::Clean,
        OutputStream::Metrics,
        OutputStream::Anomalies,
        OutputStream::Dlq,
        OutputStream::Late,
    ];

    /// Its topic among `topics`.
    pub fn topic(self, topics: &Topics) -> &str {
        match self {
            OutputStream::Clean => &topics.clean,
            OutputStream::Metrics => &topics.metrics,
            OutputStream::Anomalies => &topics.anomalies,
            OutputStream::Dlq => &topics.dlq,
            OutputStream::Late => &topics.late,
        }
    }
}

/// Kafka's murmur2 hash, bit for bit as the Java client computes it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner picks for `key`.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) as u32 % partitions.max(1)
}

pub use pitwall_core::Message;

/// Bus errors, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The topic is closed for writing (the pipeline is shutting down).
    #[error("topic {0} is closed; the pipeline is shutting down")]
    Closed(String),
    /// A second consumer asked for a topic that already has one.
    #[error("topic {0} already has a consumer; the in-process bus has one consumer group")]
    AlreadySubscribed(String),
    /// The topic does not exist.
    #[error("no topic named {0}")]
    NoSuchTopic(String),
    /// The topic has no such partition.
    #[error("topic {0} has no partition {1}")]
    NoSuchPartition(String, u32),
    /// A bus setting is wrong; the key says where, the message what to do.
    #[error("config key {key}: {message}")]
    Config {
        /// Dotted key, e.g. `kafka.compression`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Kafka refused or failed an operation; the message names the brokers.
    #[error("kafka: {0}")]
    Kafka(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One topic to send to, in order: a topic of the in-process bus ([`Producer`]) or of
/// Kafka ([`kafka::KafkaTopic`]), or anything else that takes messages one after another
/// (the replay's file of refused lines). What the simulators, the replay and the
/// benchmarks' load generators write through.
#[allow(async_fn_in_trait)]
pub trait Publish {
    /// What a failed send says.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Sends one message, keyed for its partition, waiting while the topic is full.
    async fn send(
        &mut self,
        key: Option<Bytes>,
        payload: Bytes,
        time: i64,
    ) -> std::result::Result<(), Self::Error>;

    /// Waits until everything sent is durable where it went.
    async fn finish(&mut self) -> std::result::Result<(), Self::Error>;
}

impl Publish for Producer {
    type Error = Error;

    async fn send(&mut self, key: Option<Bytes>, payload: Bytes, time: i64) -> Result<()> {
        Producer::send(self, key, payload, time).await.map(|_| ())
    }

    /// A send to the in-process bus is final when it returns.
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Settings of the in-process bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// Topic names.
    pub topics: Topics,
    /// Partitions per topic.
    pub partitions: u32,
    /// Messages a partition holds before producers wait.
    pub capacity: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            topics: Topics::default(),
            partitions: 3,
            capacity: 8192,
        }
    }
}

impl BusConfig {
    /// Small settings for tests.
    pub fn test_config() -> Self {
        BusConfig {
            capacity: 64,
            ..Default::default()
        }
    }
}

#[derive(Debug)]
struct PartitionLog {
    /// Taken on close; producers then fail with [`Error::Closed`].
    tx: Option<mpsc::Sender<Message>>,
    next_offset: i64,
}

#[derive(Debug)]
struct Topic {
    name: String,
    partitions: Vec<tokio::sync::Mutex<PartitionLog>>,
    receivers: Mutex<Option<Vec<mpsc::Receiver<Message>>>>,
    subscribed: AtomicBool,
    sent: AtomicU64,
}

/// The embedded bus: bounded in-memory partitions, one consumer group.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    topics: Arc<HashMap<String, Arc<Topic>>>,
    config: Arc<BusConfig>,
}

impl InProcessBus {
    /// Creates every topic of `config.topics`.
    pub fn new(config: BusConfig) -> Self {
        let partitions = config.partitions.max(1);
        let topics = config
            .topics
            .all()
            .iter()
            .map(|name| {
                let (txs, rxs): (Vec<_>, Vec<_>) = (0..partitions)
                    .map(|_| {
                        let (tx, rx) = mpsc::channel(config.capacity.max(1));
                        (
                            tokio::sync::Mutex::new(PartitionLog {
                                tx: Some(tx),
                                next_offset: 0,
                            }),
                            rx,
                        )
                    })
                    .unzip();
                let topic = Topic {
                    name: (*name).to_owned(),
                    partitions: txs,
                    receivers: Mutex::new(Some(rxs)),
                    subscribed: AtomicBool::new(false),
                    sent: AtomicU64::new(0),
                };
                ((*name).to_owned(), Arc::new(topic))
            })
            .collect();
        InProcessBus {
            topics: Arc::new(topics),
            config: Arc::new(config),
        }
    }

    /// The bus settings.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    fn topic(&self, name: &str) -> Result<&Arc<Topic>> {
        self.topics
            .get(name)
            .ok_or_else(|| Error::NoSuchTopic(name.to_owned()))
    }

    /// A producer for `topic`.
    pub fn producer(&self, topic: &str) -> Result<Producer> {
        Ok(Producer {
            topic: Arc::clone(self.topic(topic)?),
        })
    }

    /// Takes every partition of `topic` for one consumer.
    pub fn subscribe(&self, topic: &str) -> Result<Vec<PartitionConsumer>> {
        let t = self.topic(topic)?;
        let rxs = t
            .receivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| Error::AlreadySubscribed(topic.to_owned()))?;
        t.subscribed.store(true, Ordering::Release);
        Ok(rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| PartitionConsumer {
                topic: t.name.clone(),
                partition: i as u32,
                rx,
            })
            .collect())
    }

    /// Makes `partition` of `topic` hand out offsets from `next_offset` on (if that is
    /// ahead of where it is): an in-process log is not durable, so a new run continues
    /// the offsets the lake has recorded instead of reusing them.
    pub async fn resume(&self, topic: &str, partition: u32, next_offset: i64) -> Result<()> {
        let t = self.topic(topic)?;
        if let Some(p) = t.partitions.get(partition as usize) {
            let mut log = p.lock().await;
            log.next_offset = log.next_offset.max(next_offset);
        }
        Ok(())
    }

    /// Ends `topic`: consumers drain what is queued and then see the end.
    pub async fn close(&self, topic: &str) -> Result<()> {
        for p in &self.topic(topic)?.partitions {
            p.lock().await.tx = None;
        }
        Ok(())
    }

    /// Messages accepted on `topic` so far.
    pub fn sent(&self, topic: &str) -> u64 {
        self.topics
            .get(topic)
            .map_or(0, |t| t.sent.load(Ordering::Relaxed))
    }
}

/// Writes to one topic.
#[derive(Debug, Clone)]
pub struct Producer {
    topic: Arc<Topic>,
}

impl Producer {
    /// Appends a message to the key's partition, waiting while that partition is full.
    /// Returns the partition and offset it was given.
    pub async fn send(
        &self,
        key: Option<Bytes>,
        payload: Bytes,
        timestamp: i64,
    ) -> Result<(u32, i64)> {
        let n = self.topic.partitions.len() as u32;
        let partition = match &key {
            Some(k) => partition_for(k, n),
            None => 0,
        };
        // Offset assignment and enqueueing happen under one lock so offsets follow queue order.
        let mut log = self.topic.partitions[partition as usize].lock().await;
        let offset = log.next_offset;
        let tx = log
            .tx
            .as_ref()
            .ok_or_else(|| Error::Closed(self.topic.name.clone()))?;
        tx.send(Message {
            partition,
            offset,
            key,
            payload,
            timestamp,
        })
        .await
        .map_err(|_| Error::Closed(self.topic.name.clone()))?;
        log.next_offset += 1;
        self.topic.sent.fetch_add(1, Ordering::Relaxed);
        Ok((partition, offset))
    }

    /// Like [`send`](Self::send), but only when the topic has a consumer: output topics
    /// nobody reads are not buffered in memory. Returns whether it was sent.
    pub async fn send_if_subscribed(
        &self,
        key: Option<Bytes>,
        payload: Bytes,
        timestamp: i64,
    ) -> Result<bool> {
        if !self.topic.subscribed.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.send(key, payload, timestamp).await.map(|_| true)
    }

    /// Appends a message to `partition` if it has room right now (never waits: a
    /// consumer sending to its own partition must not wait for itself). Returns the
    /// offset it was given, or `None` if the partition is full or busy.
    pub fn try_send_to(
        &self,
        partition: u32,
        key: Option<Bytes>,
        payload: Bytes,
        timestamp: i64,
    ) -> Result<Option<i64>> {
        let Some(log) = self.topic.partitions.get(partition as usize) else {
            return Err(Error::NoSuchPartition(self.topic.name.clone(), partition));
        };
        let Ok(mut log) = log.try_lock() else {
            return Ok(None);
        };
        let offset = log.next_offset;
        let tx = log
            .tx
            .as_ref()
            .ok_or_else(|| Error::Closed(self.topic.name.clone()))?;
        match tx.try_send(Message {
            partition,
            offset,
            key,
            payload,
            timestamp,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Ok(None),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Error::Closed(self.topic.name.clone()));
            }
        }
        log.next_offset += 1;
        self.topic.sent.fetch_add(1, Ordering::Relaxed);
        Ok(Some(offset))
    }

    /// Does the topic have a consumer? Lets callers skip encoding output nobody reads.
    pub fn has_consumer(&self) -> bool {
        self.topic.subscribed.load(Ordering::Acquire)
    }

    /// Name of the topic.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }
}

/// Reads one partition of a topic, in offset order.
#[derive(Debug)]
pub struct PartitionConsumer {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    rx: mpsc::Receiver<Message>,
}

impl PartitionConsumer {
    /// The next message; `None` once the topic is closed and drained.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Messages queued and not yet received (the consumer's lag).
    pub fn pending(&self) -> usize {
        self.rx.len()
    }

    /// Receives up to `max` messages into `buf`, waiting for at least one; returns 0 at the end.
    pub async fn recv_many(&mut self, buf: &mut Vec<Message>, max: usize) -> usize {
        self.rx.recv_many(buf, max).await
    }

    /// [`recv_many`](Self::recv_many) as a poll, for a reader of several partitions:
    /// `Ready(0)` is the end, `Pending` wakes the task when a message arrives.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut Vec<Message>,
        max: usize,
    ) -> std::task::Poll<usize> {
        self.rx.poll_recv_many(cx, buf, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Vectors from Kafka's own UtilsTest.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn topic_names_follow_the_prefix() {
        assert_eq!(Topics::default().raw, "telemetry.raw");
        assert_eq!(
            Topics::with_prefix("f1.telemetry.").anomalies,
            "f1.telemetry.anomalies"
        );
    }

    #[tokio::test]
    async fn keys_stay_in_order_in_one_partition() {
        let bus = InProcessBus::new(BusConfig::test_config());
        let mut parts = bus.subscribe("telemetry.raw").unwrap();
        let p = bus.producer("telemetry.raw").unwrap();
        for i in 0..10i64 {
            p.send(
                Some(Bytes::from_static(b"VER")),
                Bytes::from(i.to_string()),
                i,
            )
            .await
            .unwrap();
        }
        bus.close("telemetry.raw").await.unwrap();
        let want = partition_for(b"VER", 3) as usize;
        let mut got = Vec::new();
        while let Some(m) = parts[want].recv().await {
            got.push((m.offset, m.payload));
        }
        assert_eq!(got.len(), 10);
        for (i, (offset, payload)) in got.iter().enumerate() {
            assert_eq!(*offset, i as i64);
            assert_eq!(payload, &Bytes::from(i.to_string()));
        }
        assert!(matches!(
            bus.subscribe("telemetry.raw"),
            Err(Error::AlreadySubscribed(_))
        ));
    }

    #[tokio::test]
    async fn a_full_partition_makes_the_producer_wait() {
        let mut config = BusConfig::test_config();
        config.capacity = 4;
        let bus = InProcessBus::new(config);
        let mut parts = bus.subscribe("telemetry.raw").unwrap();
        let p = bus.producer("telemetry.raw").unwrap();
        for i in 0..4 {
            p.send(None, Bytes::new(), i).await.unwrap();
        }
        // The fifth send cannot complete until the consumer takes one.
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            p.send(None, Bytes::new(), 5),
        )
        .await;
        assert!(
            blocked.is_err(),
            "send should wait while the partition is full"
        );
        assert_eq!(parts[0].recv().await.unwrap().offset, 0);
        p.send(None, Bytes::new(), 5).await.unwrap();
        assert_eq!(bus.sent("telemetry.raw"), 5);
    }

    #[tokio::test]
    async fn unread_output_topics_are_not_buffered() {
        let bus = InProcessBus::new(BusConfig::test_config());
        let p = bus.producer("telemetry.clean").unwrap();
        for i in 0..1000 {
            assert!(!p.send_if_subscribed(None, Bytes::new(), i).await.unwrap());
        }
        assert_eq!(bus.sent("telemetry.clean"), 0);
    }
}
