//! The HTTP server inside a run: the write API's way onto the bus (in-process or
//! Kafka) and the live feed that follows the output topics.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pitwall_bus::{InProcessBus, OutputStream, Producer, Topics};
use pitwall_lake::Lake;
use pitwall_stream::SchemaRegistry;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Stats;

/// The write API's way onto the in-process bus: the raw topic's producer, which waits
/// while a partition is full (the server turns a long wait into 503).
pub(crate) struct BusSink {
    pub(crate) producer: Producer,
    pub(crate) stats: Arc<Stats>,
}

impl pitwall_server::Sink for BusSink {
    fn publish(&self, messages: Vec<pitwall_server::RawMessage>) -> pitwall_server::SinkFuture<'_> {
        Box::pin(async move {
            let n = messages.len() as u64;
            for m in messages {
                self.producer
                    .send(m.key, m.payload, m.time)
                    .await
                    .map_err(|e| pitwall_server::SinkError::Failed(e.to_string()))?;
            }
            self.stats.produced.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// The write API's way onto Kafka: every point of a request queued to the raw topic,
/// then all of them awaited (acks=all), so the answer comes after the brokers have them.
pub struct KafkaWriteSink {
    producer: pitwall_bus::kafka::KafkaProducer,
}

impl KafkaWriteSink {
    /// A producer for `raw`.
    pub fn new(config: &pitwall_bus::kafka::KafkaConfig, raw: &str) -> anyhow::Result<Self> {
        Ok(KafkaWriteSink {
            producer: pitwall_bus::kafka::KafkaProducer::new(config, raw)?,
        })
    }
}

impl std::fmt::Debug for KafkaWriteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaWriteSink").finish_non_exhaustive()
    }
}

impl pitwall_server::Sink for KafkaWriteSink {
    fn publish(&self, messages: Vec<pitwall_server::RawMessage>) -> pitwall_server::SinkFuture<'_> {
        Box::pin(async move {
            let failed = |e: pitwall_bus::Error| pitwall_server::SinkError::Failed(e.to_string());
            let mut acks = Vec::with_capacity(messages.len());
            for m in &messages {
                acks.push(
                    self.producer
                        .enqueue(m.key.as_deref(), &m.payload, m.time)
                        .await
                        .map_err(failed)?,
                );
            }
            for ack in acks {
                ack.await.map_err(failed)?;
            }
            Ok(())
        })
    }
}

/// Binds the write API (an error at start if the address is taken) and serves it until
/// `stop` is cancelled.
pub async fn start_server(
    server: &pitwall_server::ServerConfig,
    config: &Config,
    sink: Arc<dyn pitwall_server::Sink>,
    lake: Option<(Lake, SchemaRegistry)>,
    live: pitwall_server::LiveHub,
    health: pitwall_server::Health,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let (lake, schemas) = lake.unzip();
    let live_hub = live.clone();
    let services = pitwall_server::Services {
        sink,
        processor: Arc::new(config.processor.clone()),
        stats: Arc::new(pitwall_server::WriteStats::default()),
        lake,
        schemas,
        live,
        health,
    };
    let (router, doors) =
        pitwall_server::app(server, services).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bound = pitwall_server::Bound::bind(server, router)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; pass --listen HOST:PORT (or set server.listen)"))?;
    let pg = pitwall_server::pg::PgBound::bind(server, doors.clone())
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e}; pass --pg-listen HOST:PORT, or --pg-listen \"\" to turn it off")
        })?;
    let flight = pitwall_server::flight::FlightBound::bind(server, doors)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}; pass --flight-listen HOST:PORT, or --flight-listen \"\" to turn it off"
            )
        })?;
    let addr = bound.local_addr();
    let auth = if server.all_tokens().is_empty() {
        "no token needed"
    } else {
        "token required"
    };
    eprintln!(
        "dashboard on http://{addr}/ ({auth}); SQL /api/v1/query, live feed /api/v1/live, metrics /metrics"
    );
    if let Some(pg) = &pg {
        let pg_addr = pg.local_addr();
        eprintln!(
            "PostgreSQL on {pg_addr}: database {}, any user, {} (psql -h {} -p {} -d {})",
            pitwall_server::pg::DATABASE,
            if server.all_tokens().is_empty() {
                "no password"
            } else {
                "a token as the password"
            },
            pg_addr.ip(),
            pg_addr.port(),
            pitwall_server::pg::DATABASE
        );
    }
    if let Some(flight) = &flight {
        eprintln!(
            "Flight SQL on {}: {}://{} ({}), catalog pitwall",
            flight.local_addr(),
            if flight.tls() { "grpc+tls" } else { "grpc" },
            flight.local_addr(),
            if server.all_tokens().is_empty() {
                "no token"
            } else {
                "a token as the bearer or the password"
            }
        );
    }
    eprintln!(
        "write API on http://{addr}: InfluxDB v2 /api/v2/write, v1 /write, Telegraf JSON /api/v1/telegraf"
    );
    tracing::info!(%addr, "write API listening");
    let pg = pg.map(|pg| tokio::spawn(pg.run(stop.clone().cancelled_owned())));
    let flight = flight.map(|f| tokio::spawn(f.run(stop.clone().cancelled_owned())));
    Ok(tokio::spawn(async move {
        let served = bound
            .run(async move {
                stop.cancelled().await;
                // Open dashboard tabs are told at once, so they do not hold up the stop.
                live_hub.close();
            })
            .await;
        if let Some(flight) = flight {
            match flight.await {
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the Flight SQL listener stopped with an error")
                }
                Err(e) => tracing::warn!(error = %e, "the Flight SQL listener panicked"),
                Ok(Ok(())) => {}
            }
        }
        if let Some(pg) = pg {
            match pg.await {
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the PostgreSQL listener stopped with an error")
                }
                Err(e) => tracing::warn!(error = %e, "the PostgreSQL listener panicked"),
                Ok(Ok(())) => {}
            }
        }
        served
    }))
}

/// The output streams the live feed follows, with their live streams.
const LIVE: [(OutputStream, pitwall_server::LiveStream); 3] = [
    (OutputStream::Clean, pitwall_server::LiveStream::Clean),
    (OutputStream::Metrics, pitwall_server::LiveStream::Metrics),
    (
        OutputStream::Anomalies,
        pitwall_server::LiveStream::Anomalies,
    ),
];

/// Forwards the clean, metrics and anomalies topics of the in-process bus to the live
/// feed, until the topics end.
pub(crate) fn feed_live(
    bus: &InProcessBus,
    topics: &Topics,
    live: &pitwall_server::LiveHub,
) -> anyhow::Result<()> {
    for (output, stream) in LIVE {
        for mut consumer in bus.subscribe(output.topic(topics))? {
            let live = live.clone();
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(256);
                while consumer.recv_many(&mut batch, 256).await > 0 {
                    for m in batch.drain(..) {
                        live.feed(stream, m.key.as_deref(), m.payload);
                    }
                }
            });
        }
    }
    Ok(())
}

/// Follows the clean, metrics and anomalies topics on Kafka into the live feed, from
/// their ends, until `cancel`: each in a group of its own (`GROUP-live-PID-TOPIC`)
/// that commits nothing, so it takes nothing from the processors' group.
pub fn feed_live_from_kafka(
    config: &Config,
    topics: &Topics,
    live: &pitwall_server::LiveHub,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    for (output, stream) in LIVE {
        if !config.kafka.outputs.contains(&output) {
            tracing::warn!(
                "kafka.outputs leaves out {}: the live feed's {} stream stays empty (add it to kafka.outputs to follow it live)",
                stream.name(),
                stream.name()
            );
        }
        let mut kafka = config.kafka.clone();
        kafka.group_id = format!(
            "{}-live-{}-{}",
            config.kafka.group_id,
            std::process::id(),
            stream.name()
        );
        kafka
            .properties
            .insert("auto.offset.reset".into(), "latest".into());
        let consumer =
            pitwall_bus::kafka::KafkaConsumer::subscribe(&kafka, &[output.topic(topics)])?;
        let (live, cancel) = (live.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    m = consumer.recv() => match m {
                        Ok(m) => {
                            failures = 0;
                            live.feed(stream, m.key.as_deref(), m.payload);
                        }
                        Err(e) => {
                            failures += 1;
                            if failures == 1 || failures.is_power_of_two() {
                                tracing::warn!(error = %e, "live feed: cannot read from Kafka; retrying");
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            consumer.close();
        });
    }
    Ok(())
}
