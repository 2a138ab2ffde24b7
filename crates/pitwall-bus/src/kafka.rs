//! The bus on Apache Kafka (any Kafka-API broker), through librdkafka.
//!
//! Producers are idempotent with `acks=all`, compress batches (lz4 by default) and place
//! keys with librdkafka's `murmur2_random` partitioner: for a keyed message that is
//! `murmur2(key) % partitions`, the Java client's placement, so pitwall, Kafka Streams and
//! other clients agree on where a source's events live. Consumers join a consumer group
//! with cooperative-sticky rebalancing and never auto-commit: where to resume is the
//! lake's business (the offsets recorded in its snapshots), Kafka's committed offsets
//! are kept for lag monitoring only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, ProducerContext, ThreadedProducer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};

use crate::{Error, Message, Result};

/// How to reach and use the Kafka cluster. Every setting has a default for a broker on
/// this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated (`host:port,host:port`).
    pub brokers: String,
    /// Client id the brokers see (logs, quotas).
    pub client_id: String,
    /// Consumer group of `pitwall process`; processes in one group split the partitions.
    pub group_id: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: String,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password.
    pub sasl_password: Option<String>,
    /// CA certificate file (PEM) to verify the brokers.
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate file (PEM) for mutual TLS.
    pub ssl_certificate_location: Option<PathBuf>,
    /// Client private key file (PEM) for mutual TLS.
    pub ssl_key_location: Option<PathBuf>,
    /// Partitions of the topics pitwall creates.
    pub partitions: i32,
    /// Replication factor of the topics pitwall creates.
    pub replication_factor: i32,
    /// Batch compression: `lz4`, `zstd`, `snappy`, `gzip` or `none`.
    pub compression: String,
    /// How long a producer waits to fill a batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Largest batch per partition, bytes.
    pub batch_bytes: usize,
    /// Longest a broker may hold a consumer's fetch when it has no new data. Kafka
    /// answers as soon as data arrives; some brokers (tansu) hold every fetch this long,
    /// so it bounds each hop's latency there. Idle, it costs one empty fetch per broker
    /// this often.
    #[serde(with = "humantime_serde")]
    pub fetch_wait: Duration,
    /// Most bytes one fetch may return, all partitions together (librdkafka's
    /// `fetch.max.bytes`). Kafka also caps each partition's share and rotates them;
    /// tansu fills a fetch from its first partition only, so this limit is what keeps a
    /// consumer's partitions read side by side there instead of one after the other.
    /// At least `message.max.bytes` (1,000,000 unless set in `kafka.properties`).
    pub fetch_bytes: usize,
    /// Which of the processor's output streams `pitwall process` puts back on Kafka, each
    /// on its topic: any of `clean`, `metrics`, `anomalies`, `dlq`, `late` (default: all
    /// five). The lake gets every stream whatever this says; a stream left out costs no
    /// encoding and no broker traffic, but its topic's readers (the live feed of a
    /// `pitwall serve` on Kafka among them) see nothing of it.
    pub outputs: Vec<crate::OutputStream>,
    /// Any other librdkafka property, passed as is (e.g. `"socket.keepalive.enable" = "true"`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            client_id: "pitwall".into(),
            group_id: "pitwall-processor".into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            partitions: 3,
            replication_factor: 1,
            compression: "lz4".into(),
            linger: Duration::from_millis(5),
            batch_bytes: 1_000_000,
            fetch_wait: Duration::from_millis(10),
            fetch_bytes: 2 << 20,
            outputs: crate::OutputStream::ALL.to_vec(),
            properties: BTreeMap::new(),
        }
    }
}

fn config_error(key: &str, message: String) -> Error {
    Error::Config {
        key: format!("kafka.{key}"),
        message,
    }
}

impl KafkaConfig {
    /// Checks the settings librdkafka would only reject later, naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.brokers.trim().is_empty() {
            return Err(config_error(
                "brokers",
                "is empty; give host:port of at least one broker".into(),
            ));
        }
        let protocols = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
        if !protocols.contains(&self.security_protocol.as_str()) {
            return Err(config_error(
                "security-protocol",
                format!(
                    "is {:?}; use one of {}",
                    self.security_protocol,
                    protocols.join(", ")
                ),
            ));
        }
        if self.security_protocol.starts_with("sasl") {
            match self.sasl_mechanism.as_deref() {
                Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {}
                other => {
                    return Err(config_error(
                        "sasl-mechanism",
                        format!(
                            "is {other:?}; with a sasl_* security protocol use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                        ),
                    ));
                }
            }
            if self.sasl_username.is_none() || self.sasl_password.is_none() {
                return Err(config_error(
                    "sasl-username",
                    "SASL needs sasl-username and sasl-password".into(),
                ));
            }
        }
        let codecs = ["lz4", "zstd", "snappy", "gzip", "none"];
        if !codecs.contains(&self.compression.as_str()) {
            return Err(config_error(
                "compression",
                format!(
                    "is {:?}; use one of {}",
                    self.compression,
                    codecs.join(", ")
                ),
            ));
        }
        if self.fetch_wait > Duration::from_secs(300) {
            return Err(config_error(
                "fetch-wait",
                format!(
                    "is {:?}; use at most 300s (librdkafka's limit), e.g. \"10ms\"",
                    self.fetch_wait
                ),
            ));
        }
        let message_max = self
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        if self.fetch_bytes < message_max {
            return Err(config_error(
                "fetch-bytes",
                format!(
                    "is {}; use at least message.max.bytes ({message_max}), e.g. 2097152",
                    self.fetch_bytes
                ),
            ));
        }
        if self.partitions < 1 {
            return Err(config_error(
                "partitions",
                format!("is {}; use 1 or more", self.partitions),
            ));
        }
        if self.replication_factor < 1 {
            return Err(config_error(
                "replication-factor",
                format!("is {}; use 1 or more", self.replication_factor),
            ));
        }
        Ok(())
    }

    /// Settings every client shares: brokers, identity, TLS and SASL, overrides.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("security.protocol", &self.security_protocol);
        let opt = |c: &mut ClientConfig, key: &str, v: Option<String>| {
            if let Some(v) = v {
                c.set(key, v);
            }
        };
        opt(&mut c, "sasl.mechanisms", self.sasl_mechanism.clone());
        opt(&mut c, "sasl.username", self.sasl_username.clone());
        opt(&mut c, "sasl.password", self.sasl_password.clone());
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        opt(&mut c, "ssl.ca.location", path(&self.ssl_ca_location));
        opt(
            &mut c,
            "ssl.certificate.location",
            path(&self.ssl_certificate_location),
        );
        opt(&mut c, "ssl.key.location", path(&self.ssl_key_location));
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Producer settings: idempotent, acks=all, compressed batches, Java-compatible keys.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("batch.size", self.batch_bytes.to_string())
            .set("partitioner", "murmur2_random");
        // Overrides win over the defaults above.
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Consumer settings: one group, cooperative rebalancing, no auto-commit.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", &self.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                self.fetch_wait.as_millis().max(1).to_string(),
            )
            .set("fetch.max.bytes", self.fetch_bytes.to_string());
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

fn kafka_error(what: &str, brokers: &str, e: impl std::fmt::Display) -> Error {
    Error::Kafka(format!("{what} (brokers {brokers}): {e}"))
}

/// Creates `topics` with the configured partitions and replication where they do not
/// exist yet; topics that exist are left as they are, and no create request is sent
/// for them (a user may read and write topics without the right to create any).
pub async fn ensure_topics(config: &KafkaConfig, topics: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| kafka_error("creating the admin client", &config.brokers, e))?;
    let existing: Vec<String> = {
        let cfg = config.client_config();
        let brokers = config.brokers.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
            let client: BaseConsumer = cfg
                .create()
                .map_err(|e| kafka_error("creating a metadata client", &brokers, e))?;
            let metadata = client
                .fetch_metadata(None, Duration::from_secs(15))
                .map_err(|e| kafka_error("listing topics; is the broker up, and are kafka.brokers (or --brokers) and the security settings right?", &brokers, e))?;
            Ok(metadata.topics().iter().map(|t| t.name().to_owned()).collect())
        })
        .await
        .map_err(|e| Error::Kafka(e.to_string()))??
    };
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .filter(|t| !existing.iter().any(|e| e == *t))
        .map(|t| {
            NewTopic::new(
                t,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(30))));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| kafka_error("creating topics; is the broker up?", &config.brokers, e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(kafka_error(
                    &format!("creating topic {topic}"),
                    &config.brokers,
                    code,
                ));
            }
        }
    }
    Ok(())
}

/// Writes to one Kafka topic.
pub struct KafkaProducer {
    inner: FutureProducer,
    topic: String,
    brokers: String,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaProducer {
    /// A producer for `topic`.
    pub fn new(config: &KafkaConfig, topic: &str) -> Result<Self> {
        let inner = config
            .producer_config()
            .create()
            .map_err(|e| kafka_error("creating the producer", &config.brokers, e))?;
        Ok(KafkaProducer {
            inner,
            topic: topic.to_owned(),
            brokers: config.brokers.clone(),
        })
    }

    /// Sends one message and waits until the brokers acknowledged it (acks=all). While
    /// the brokers are away, librdkafka keeps retrying within its delivery timeout.
    /// Returns the partition and offset it was written at.
    pub async fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp_ns: i64,
    ) -> Result<(u32, i64)> {
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(payload)
            .timestamp(timestamp_ns.div_euclid(1_000_000));
        if let Some(k) = key {
            record = record.key(k);
        }
        match self.inner.send(record, Timeout::Never).await {
            Ok(delivery) => Ok((delivery.partition as u32, delivery.offset)),
            Err((e, _)) => Err(kafka_error(
                &format!("sending to {}", self.topic),
                &self.brokers,
                e,
            )),
        }
    }

    /// Queues one message without waiting for its acknowledgement and returns a future
    /// that resolves to where it was written. Messages are queued in call order, so a
    /// key's messages stay in order; while librdkafka's queue is full this waits.
    pub async fn enqueue(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp_ns: i64,
    ) -> Result<impl Future<Output = Result<(u32, i64)>> + use<>> {
        self.enqueue_to(&self.topic, key, payload, timestamp_ns)
            .await
    }

    /// [`Self::enqueue`] to another topic than the producer's own.
    pub async fn enqueue_to(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp_ns: i64,
    ) -> Result<impl Future<Output = Result<(u32, i64)>> + use<>> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .timestamp(timestamp_ns.div_euclid(1_000_000));
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.inner.send_result(record) {
                Ok(delivery) => {
                    let topic = topic.to_owned();
                    let brokers = self.brokers.clone();
                    return Ok(async move {
                        match delivery.await {
                            Ok(Ok(d)) => Ok((d.partition as u32, d.offset)),
                            Ok(Err((e, _))) => {
                                Err(kafka_error(&format!("sending to {topic}"), &brokers, e))
                            }
                            Err(_) => Err(kafka_error(
                                &format!("sending to {topic}"),
                                &brokers,
                                "the producer was dropped",
                            )),
                        }
                    });
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    return Err(kafka_error(
                        &format!("sending to {topic}"),
                        &self.brokers,
                        e,
                    ));
                }
            }
        }
    }

    /// Sends one message to `partition` of `topic` (not where its key would go) and waits
    /// for its acknowledgement; returns its offset.
    pub async fn send_to_partition(
        &self,
        topic: &str,
        partition: u32,
        key: &[u8],
        payload: &[u8],
        timestamp_ns: i64,
    ) -> Result<i64> {
        let record = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(partition as i32)
            .key(key)
            .payload(payload)
            .timestamp(timestamp_ns.div_euclid(1_000_000));
        match self
            .inner
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(delivery) => Ok(delivery.offset),
            Err((e, _)) => Err(kafka_error(
                &format!("sending to {topic} partition {partition}"),
                &self.brokers,
                e,
            )),
        }
    }

    /// Waits until every message sent so far is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        use rdkafka::producer::Producer;
        self.inner
            .flush(Timeout::After(timeout))
            .map_err(|e| kafka_error("flushing the producer", &self.brokers, e))
    }
}

/// What a [`KafkaPublisher`]'s delivery reports add up to: messages not yet
/// acknowledged, counted apart by the parity of the epoch they were queued in (see
/// [`KafkaPublisher::mark`]).
#[derive(Debug, Default)]
struct Deliveries {
    in_flight: [AtomicUsize; 2],
    failed: Mutex<Option<String>>,
    changed: tokio::sync::Notify,
}

impl Deliveries {
    fn total(&self) -> usize {
        self.in_flight
            .iter()
            .map(|n| n.load(Ordering::Acquire))
            .sum()
    }
}

/// Counts delivery reports instead of completing a future per message.
struct CountingContext(Arc<Deliveries>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    /// The epoch's parity.
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, parity: usize) {
        if let Err((e, m)) = result {
            let mut failed = self
                .0
                .failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            failed.get_or_insert_with(|| format!("sending to {}: {e}", m.topic()));
        }
        self.0.in_flight[parity & 1].fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// Writes many messages to any topics and waits for their acknowledgements together: the
/// bulk path (ingest, the processor's output topics). Delivery reports are counted, not
/// handed out one future per message, which costs a few allocations less per message.
pub struct KafkaPublisher {
    inner: ThreadedProducer<CountingContext>,
    deliveries: Arc<Deliveries>,
    epoch: AtomicUsize,
    brokers: String,
}

/// The messages a [`KafkaPublisher`] had queued when [`KafkaPublisher::mark`] was
/// called, to wait for with [`KafkaPublisher::delivered_before`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(usize);

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl KafkaPublisher {
    /// A publisher with the configured producer settings.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let deliveries = Arc::new(Deliveries::default());
        let inner = config
            .producer_config()
            .create_with_context(CountingContext(Arc::clone(&deliveries)))
            .map_err(|e| kafka_error("creating the producer", &config.brokers, e))?;
        Ok(KafkaPublisher {
            inner,
            deliveries,
            epoch: AtomicUsize::new(0),
            brokers: config.brokers.clone(),
        })
    }

    /// Queues one message for `topic`; waits while librdkafka's queue is full. Messages
    /// are queued in call order, so a key's messages stay in order.
    pub async fn publish(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp_ns: i64,
    ) -> Result<()> {
        let parity = self.epoch.load(Ordering::Acquire) & 1;
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, parity)
            .payload(payload)
            .timestamp(timestamp_ns.div_euclid(1_000_000));
        if let Some(k) = key {
            record = record.key(k);
        }
        let counter = &self.deliveries.in_flight[parity];
        counter.fetch_add(1, Ordering::AcqRel);
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    counter.fetch_sub(1, Ordering::AcqRel);
                    return Err(kafka_error(
                        &format!("sending to {topic}"),
                        &self.brokers,
                        e,
                    ));
                }
            }
        }
    }

    /// Messages queued and not yet acknowledged (or failed).
    pub fn in_flight(&self) -> usize {
        self.deliveries.total()
    }

    /// Marks what is queued so far, so that [`Self::delivered_before`] can wait for it
    /// while more is queued. Call it again only after that wait is over: a mark only
    /// tells apart the messages queued before it from those queued after.
    pub fn mark(&self) -> Mark {
        Mark(self.epoch.fetch_add(1, Ordering::AcqRel))
    }

    /// Waits until every message queued before `mark` is acknowledged (messages queued
    /// since may still be in flight); then reports the first delivery that failed, if any.
    pub async fn delivered_before(&self, mark: Mark) -> Result<()> {
        let counter = &self.deliveries.in_flight[mark.0 & 1];
        self.wait_deliveries(|| counter.load(Ordering::Acquire) == 0)
            .await
    }

    /// Waits until at most `n` messages are unacknowledged; then reports the first
    /// delivery that failed since the last report, if any. While the brokers are away,
    /// librdkafka retries within its delivery timeout, and this waits.
    /// A wait that lasts (a broker away or frozen) is logged every 5 s with what is
    /// still unacknowledged.
    pub async fn delivered_down_to(&self, n: usize) -> Result<()> {
        self.wait_deliveries(|| self.in_flight() <= n).await
    }

    async fn wait_deliveries(&self, done: impl Fn() -> bool) -> Result<()> {
        const PATIENCE: Duration = Duration::from_secs(5);
        let started = std::time::Instant::now();
        let mut next_word = PATIENCE;
        loop {
            let changed = self.deliveries.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done() {
                break;
            }
            let waited = started.elapsed();
            if waited >= next_word {
                tracing::warn!(
                    unacknowledged = self.in_flight(),
                    waited_s = waited.as_secs(),
                    brokers = %self.brokers,
                    "waiting for the brokers to acknowledge what was sent; librdkafka keeps retrying"
                );
                next_word += PATIENCE;
            }
            let _ = tokio::time::timeout(next_word.saturating_sub(waited), changed).await;
        }
        let failed = self
            .deliveries
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match failed {
            Some(e) => Err(Error::Kafka(format!("{e} (brokers {})", self.brokers))),
            None => Ok(()),
        }
    }

    /// Waits until everything queued so far is acknowledged; the first failure, if any.
    pub async fn delivered(&self) -> Result<()> {
        self.delivered_down_to(0).await
    }
}

/// One Kafka topic as a [`crate::Publish`]: sends are pipelined, up to 50,000
/// unacknowledged at a time; [`crate::Publish::finish`] waits for the rest.
#[derive(Debug)]
pub struct KafkaTopic {
    publisher: KafkaPublisher,
    topic: String,
}

impl KafkaTopic {
    /// Unacknowledged sends past which a send waits for the brokers to catch up.
    const MAX_IN_FLIGHT: usize = 50_000;

    /// A producer writing to `topic`.
    pub fn new(config: &KafkaConfig, topic: &str) -> Result<Self> {
        Ok(KafkaTopic {
            publisher: KafkaPublisher::new(config)?,
            topic: topic.to_owned(),
        })
    }
}

impl crate::Publish for KafkaTopic {
    type Error = Error;

    async fn send(&mut self, key: Option<Bytes>, payload: Bytes, time: i64) -> Result<()> {
        self.publisher
            .publish(&self.topic, key.as_deref(), &payload, time)
            .await?;
        if self.publisher.in_flight() > Self::MAX_IN_FLIGHT {
            self.publisher
                .delivered_down_to(Self::MAX_IN_FLIGHT / 2)
                .await?;
        }
        Ok(())
    }

    /// Waits until the brokers acknowledged everything sent.
    async fn finish(&mut self) -> Result<()> {
        self.publisher.delivered().await
    }
}

/// A change of this member's partitions, in the order the group made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    /// Partitions taken up, each with the offset reading starts at.
    Assigned(Vec<(String, u32, i64)>),
    /// Partitions given up; nothing more is read from them.
    Revoked(Vec<(String, u32)>),
    /// An assignment could not be taken up (the start-offset hook failed).
    Failed(String),
}

/// Where to start reading a newly assigned partition: the offset, or why it cannot be
/// known (then the partitions are not taken up and a [`Rebalance::Failed`] is reported).
/// Called on the thread that polls the consumer, inside the rebalance.
pub type StartHook = Arc<dyn Fn(&str, u32) -> std::result::Result<i64, String> + Send + Sync>;

/// The consumer's librdkafka context: takes partitions up at the offsets the hook gives
/// (set in the assignment itself, so no message before them is fetched) and reports
/// every change.
pub struct GroupContext {
    start: Option<StartHook>,
    events: Mutex<Vec<Rebalance>>,
    /// Set when `events` has something: read for every message of a batch, so an atomic
    /// rather than the lock.
    pending: AtomicBool,
}

impl std::fmt::Debug for GroupContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupContext")
            .field("start_hook", &self.start.is_some())
            .finish()
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts: Vec<(String, u32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition() as u32))
            .collect();
        let event = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assigned = Vec::new();
                let mut failed = None;
                for (topic, partition) in &parts {
                    let start = match &self.start {
                        Some(hook) => hook(topic, *partition),
                        None => Ok(-1),
                    };
                    match start {
                        Ok(offset) => {
                            if offset >= 0
                                && let Err(e) = tpl.set_partition_offset(
                                    topic,
                                    *partition as i32,
                                    Offset::Offset(offset),
                                )
                            {
                                failed = Some(format!(
                                    "setting the start offset of {topic}/{partition}: {e}"
                                ));
                            }
                            assigned.push((topic.clone(), *partition, offset));
                        }
                        Err(e) => failed = Some(format!("taking up {topic}/{partition}: {e}")),
                    }
                }
                match failed {
                    Some(reason) => Rebalance::Failed(reason),
                    None => {
                        let r = if cooperative {
                            consumer.incremental_assign(tpl)
                        } else {
                            consumer.assign(tpl)
                        };
                        match r {
                            Ok(()) => Rebalance::Assigned(assigned),
                            Err(e) => Rebalance::Failed(format!("assigning {parts:?}: {e}")),
                        }
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "unassigning revoked partitions");
                }
                Rebalance::Revoked(parts)
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                Rebalance::Failed(format!("the consumer group rebalance failed: {code}"))
            }
        };
        tracing::info!(?event, "consumer group rebalance");
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
        self.pending.store(true, Ordering::Release);
    }
}

/// A message of ours, copied out of librdkafka's buffers.
fn owned(m: &rdkafka::message::BorrowedMessage<'_>) -> Message {
    Message {
        partition: m.partition() as u32,
        offset: m.offset(),
        key: m.key().map(Bytes::copy_from_slice),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        timestamp: m
            .timestamp()
            .to_millis()
            .unwrap_or(0)
            .saturating_mul(1_000_000),
    }
}

/// Reads topics as a member of the consumer group.
pub struct KafkaConsumer {
    inner: StreamConsumer<GroupContext>,
    brokers: String,
    group: String,
    topics: Vec<String>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl KafkaConsumer {
    /// Joins the group and subscribes to `topics`; assigned partitions start at the
    /// group's committed offsets (or the earliest).
    pub fn subscribe(config: &KafkaConfig, topics: &[&str]) -> Result<Self> {
        Self::subscribe_with(config, topics, None)
    }

    /// Joins the group and subscribes to `topics`; each assigned partition starts at
    /// the offset `start` gives (a negative one means the group's committed offset).
    pub fn subscribe_with(
        config: &KafkaConfig,
        topics: &[&str],
        start: Option<StartHook>,
    ) -> Result<Self> {
        let context = GroupContext {
            start,
            events: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        };
        let inner: StreamConsumer<GroupContext> = config
            .consumer_config()
            .create_with_context(context)
            .map_err(|e| kafka_error("creating the consumer", &config.brokers, e))?;
        inner
            .subscribe(topics)
            .map_err(|e| kafka_error("subscribing", &config.brokers, e))?;
        Ok(KafkaConsumer {
            inner,
            brokers: config.brokers.clone(),
            group: config.group_id.clone(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        })
    }

    /// A consumer that joins no group and reads nothing: for asking the brokers about
    /// offsets (lag reports) without touching the group's members.
    pub fn watcher(config: &KafkaConfig) -> Result<Self> {
        let context = GroupContext {
            start: None,
            events: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        };
        let inner: StreamConsumer<GroupContext> = config
            .consumer_config()
            .create_with_context(context)
            .map_err(|e| kafka_error("creating the consumer", &config.brokers, e))?;
        Ok(KafkaConsumer {
            inner,
            brokers: config.brokers.clone(),
            group: config.group_id.clone(),
            topics: Vec::new(),
        })
    }

    /// True if this member holds no partition although no other member of its group is
    /// listed, so nobody reads the topics: seen with tansu 0.6 when a member died during
    /// a rebalance, the survivor left with an empty assignment in a "stable" group.
    /// Blocks on the brokers for up to 5 s.
    pub fn stranded(&self) -> Result<bool> {
        if self.topics.is_empty() || self.inner.assignment().map_or(true, |a| a.count() > 0) {
            return Ok(false);
        }
        let groups = self
            .inner
            .fetch_group_list(Some(&self.group), Timeout::After(Duration::from_secs(5)))
            .map_err(|e| {
                kafka_error(
                    &format!("describing group {}", self.group),
                    &self.brokers,
                    e,
                )
            })?;
        // Alone in the group, or not listed in it at all (a join the coordinator lost):
        // either way nobody else can be holding the partitions.
        let others = groups
            .groups()
            .iter()
            .filter(|g| g.name() == self.group)
            .map(|g| g.members().len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        Ok(others == 0)
    }

    /// Leaves the group and joins it again, so its coordinator assigns the partitions anew.
    pub fn rejoin(&self) -> Result<()> {
        self.inner.unsubscribe();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.inner
            .subscribe(&topics)
            .map_err(|e| kafka_error("subscribing again", &self.brokers, e))
    }

    /// Assignment changes since the last call, oldest first.
    pub fn rebalances(&self) -> Vec<Rebalance> {
        let context = self.inner.context();
        if !context.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(
            &mut *context
                .events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Moves reading of an assigned partition to `offset`; messages fetched before are
    /// discarded by librdkafka.
    pub fn seek(&self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        self.inner
            .seek(
                topic,
                partition as i32,
                Offset::Offset(offset),
                Timeout::After(Duration::from_secs(10)),
            )
            .map_err(|e| {
                kafka_error(
                    &format!("seeking {topic}/{partition} to {offset}"),
                    &self.brokers,
                    e,
                )
            })
    }

    /// The offsets `topic/partition` holds: the earliest, and the next to be written.
    pub fn offset_range(&self, topic: &str, partition: u32) -> Result<(i64, i64)> {
        self.inner
            .fetch_watermarks(
                topic,
                partition as i32,
                Timeout::After(Duration::from_secs(10)),
            )
            .map_err(|e| {
                kafka_error(
                    &format!("reading the offsets {topic}/{partition} holds"),
                    &self.brokers,
                    e,
                )
            })
    }

    /// The next offset to be written to `topic/partition`, asking the broker and waiting
    /// at most `wait` (for lag reports, which may skip a beat).
    pub fn end_offset(&self, topic: &str, partition: u32, wait: Duration) -> Result<i64> {
        self.inner
            .fetch_watermarks(topic, partition as i32, Timeout::After(wait))
            .map(|(_, high)| high)
            .map_err(|e| {
                kafka_error(
                    &format!("reading the end offset of {topic}/{partition}"),
                    &self.brokers,
                    e,
                )
            })
    }

    /// Records `offsets` (`(topic, partition, next)`) as the group's committed offsets,
    /// without waiting: for lag monitoring only.
    pub fn commit_offsets(&self, offsets: &[(String, u32, i64)]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in offsets {
            tpl.add_partition_offset(t, *p as i32, Offset::Offset(*o))
                .map_err(|e| kafka_error("committing offsets", &self.brokers, e))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.inner
            .commit(&tpl, rdkafka::consumer::CommitMode::Async)
            .map_err(|e| kafka_error("committing offsets", &self.brokers, e))
    }

    /// Leaves the group now (revoking this member's partitions) rather than waiting for
    /// the session to time out.
    pub fn close(&self) {
        self.inner.unsubscribe();
    }
    /// The next message from any assigned partition.
    pub async fn recv(&self) -> Result<Message> {
        let m = self
            .inner
            .recv()
            .await
            .map_err(|e| kafka_error("receiving", &self.brokers, e))?;
        Ok(owned(&m))
    }

    /// Waits for the next message, then takes up to `max` in all of those already
    /// fetched, without waiting again. Stops early at an assignment change, so every
    /// message of a batch belongs to partitions taken up before it (see
    /// [`Self::rebalances`]); an error after the first message ends the batch (librdkafka
    /// reports it again on the next poll if it persists). Cancellation safe: nothing is
    /// taken off librdkafka's queue until the batch is complete.
    pub async fn recv_batch(&self, max: usize, batch: &mut Vec<Message>) -> Result<()> {
        use futures::{FutureExt as _, StreamExt as _};
        let mut stream = self.inner.stream();
        let first = stream.next().await.expect("kafka streams never terminate");
        batch.push(owned(
            &first.map_err(|e| kafka_error("receiving", &self.brokers, e))?,
        ));
        let context = self.inner.context();
        while batch.len() < max && !context.pending.load(Ordering::Acquire) {
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(owned(&m)),
                _ => break,
            }
        }
        Ok(())
    }

    /// Partitions assigned to this member now, as `(topic, partition)`.
    pub fn assignment(&self) -> Result<Vec<(String, u32)>> {
        let list = self
            .inner
            .assignment()
            .map_err(|e| kafka_error("reading the assignment", &self.brokers, e))?;
        Ok(list
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition() as u32))
            .collect())
    }
}
