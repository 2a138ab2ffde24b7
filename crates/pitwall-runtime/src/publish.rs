//! The processor's outputs onto the output topics: encoded once as JSON keyed by
//! source id, sent to the in-process bus or Kafka, episodes to the alert outbox first.

use std::sync::Arc;

use bytes::Bytes;
use pitwall_bus::{InProcessBus, OutputStream, Producer, Topics};
use pitwall_core::json;
use pitwall_core::record::{window_fires, write_json, write_window_fire_json};
use pitwall_stream::Outputs;

use crate::metrics::Stats;

/// Outputs encoded for their topics: every message's key and payload written one after
/// another into one buffer, so encoding allocates nothing per message and the in-process
/// bus hands out slices of one shared buffer.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    bytes: Vec<u8>,
    messages: Vec<EncodedMessage>,
}

#[derive(Debug)]
struct EncodedMessage {
    stream: OutputStream,
    start: usize,
    /// Where the key ends (it starts at `start`); `None` for no key.
    key_end: Option<usize>,
    end: usize,
    time: i64,
}

impl EncodedMessage {
    /// Where its key and its payload are in the buffer.
    fn ranges(&self) -> (Option<std::ops::Range<usize>>, std::ops::Range<usize>) {
        (
            self.key_end.map(|e| self.start..e),
            self.key_end.unwrap_or(self.start)..self.end,
        )
    }
}

impl Encoded {
    fn push(
        &mut self,
        stream: OutputStream,
        key: Option<&str>,
        time: i64,
        write: impl FnOnce(&mut Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let start = self.bytes.len();
        let key_end = key.map(|k| {
            self.bytes.extend_from_slice(k.as_bytes());
            self.bytes.len()
        });
        if let Err(e) = write(&mut self.bytes) {
            self.bytes.truncate(start);
            return Err(e);
        }
        self.messages.push(EncodedMessage {
            stream,
            start,
            key_end,
            end: self.bytes.len(),
            time,
        });
        Ok(())
    }

    /// Every message as `(stream, key, payload, event time)`, in the order encoded.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (OutputStream, Option<&[u8]>, &[u8], i64)> {
        self.messages.iter().map(|m| {
            let (key, payload) = m.ranges();
            (
                m.stream,
                key.map(|k| &self.bytes[k]),
                &self.bytes[payload],
                m.time,
            )
        })
    }

    /// Every message with its key and payload as shared slices of one buffer.
    fn into_shared(self) -> impl Iterator<Item = (OutputStream, Option<Bytes>, Bytes, i64)> {
        let bytes = Bytes::from(self.bytes);
        self.messages.into_iter().map(move |m| {
            let (key, payload) = m.ranges();
            (
                m.stream,
                key.map(|k| bytes.slice(k)),
                bytes.slice(payload),
                m.time,
            )
        })
    }

    /// Empties it, keeping its memory.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.messages.clear();
    }
}

/// Encodes `o` for the output topics `want` selects, appending to `out`: JSON, keyed by
/// source id (DLQ messages carry no key), timestamped with event time; the metrics topic
/// gets one message per window fire.
fn encode_outputs(
    o: &Outputs,
    config: &pitwall_stream::ProcessorConfig,
    want: impl Fn(OutputStream) -> bool,
    out: &mut Encoded,
) -> anyhow::Result<()> {
    if want(OutputStream::Clean) {
        for p in &o.clean {
            out.push(OutputStream::Clean, config.source_id(p), p.time, |buf| {
                Ok(json::encode_into(p, buf)?)
            })?;
        }
    }
    if want(OutputStream::Metrics) {
        // One message per source and window fire, every field's aggregates in it.
        for fire in window_fires(&o.windows) {
            let w = &fire[0];
            out.push(
                OutputStream::Metrics,
                Some(&w.source_id),
                w.window_end,
                |buf| {
                    write_window_fire_json(fire, buf);
                    Ok(())
                },
            )?;
        }
    }
    if want(OutputStream::Anomalies) {
        for a in &o.anomalies {
            out.push(OutputStream::Anomalies, Some(&a.source_id), a.time, |buf| {
                write_json(a, buf);
                Ok(())
            })?;
        }
    }
    if want(OutputStream::Dlq) {
        for r in &o.rejects {
            out.push(OutputStream::Dlq, None, r.ingest_time, |buf| {
                write_json(r, buf);
                Ok(())
            })?;
        }
    }
    if want(OutputStream::Late) {
        for l in &o.late {
            out.push(OutputStream::Late, Some(&l.source_id), l.time, |buf| {
                write_json(l, buf);
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// The output topics of a runtime, on the in-process bus or on Kafka: which streams are
/// wanted, and sending a hand-over's encoded messages to them.
#[allow(async_fn_in_trait)]
pub(crate) trait OutputTopics {
    /// Whether `stream`'s messages are wanted: on the in-process bus when its topic has a
    /// reader, on Kafka when `kafka.outputs` names it. Nothing is encoded for the rest.
    fn wants(&self, stream: OutputStream) -> bool;

    /// Sends every message of `encoded` to its stream's topic, in order, and empties it.
    async fn send(&self, encoded: &mut Encoded) -> anyhow::Result<()>;
}

/// Puts the processor's outputs out for live readers, as JSON keyed by source id:
/// episodes to the alert outbox first (synced), then every wanted stream to its topic.
pub(crate) struct Publisher<T> {
    topics: T,
    /// Where what is published is counted (the status line, `/metrics`).
    stats: Arc<Stats>,
    config: Arc<pitwall_stream::ProcessorConfig>,
    alerts: crate::alerts::Alerts,
    /// The messages of a hand-over; its memory is kept from one to the next where the
    /// topics copy what they send (Kafka), and goes with the messages where they share it
    /// (the in-process bus).
    encoded: Encoded,
}

impl<T: OutputTopics> Publisher<T> {
    pub(crate) fn new(
        topics: T,
        config: Arc<pitwall_stream::ProcessorConfig>,
        alerts: crate::alerts::Alerts,
        stats: Arc<Stats>,
    ) -> Self {
        Publisher {
            topics,
            stats,
            config,
            alerts,
            encoded: Encoded::default(),
        }
    }

    /// Counts and publishes `o` (before it goes to the lake writer: at least once on
    /// the topics).
    pub(crate) async fn publish(&mut self, o: &Outputs) -> anyhow::Result<()> {
        crate::metrics::count(&self.stats, o);
        self.alerts.record(&o.anomalies);
        self.encoded.clear();
        let topics = &self.topics;
        encode_outputs(o, &self.config, |s| topics.wants(s), &mut self.encoded)?;
        self.topics.send(&mut self.encoded).await
    }
}

/// The in-process bus's output topics.
pub(crate) struct BusOutputs {
    clean: Producer,
    metrics: Producer,
    anomalies: Producer,
    dlq: Producer,
    late: Producer,
}

impl BusOutputs {
    pub(crate) fn new(bus: &InProcessBus, topics: &Topics) -> anyhow::Result<Self> {
        Ok(BusOutputs {
            clean: bus.producer(&topics.clean)?,
            metrics: bus.producer(&topics.metrics)?,
            anomalies: bus.producer(&topics.anomalies)?,
            dlq: bus.producer(&topics.dlq)?,
            late: bus.producer(&topics.late)?,
        })
    }

    fn producer(&self, s: OutputStream) -> &Producer {
        match s {
            OutputStream::Clean => &self.clean,
            OutputStream::Metrics => &self.metrics,
            OutputStream::Anomalies => &self.anomalies,
            OutputStream::Dlq => &self.dlq,
            OutputStream::Late => &self.late,
        }
    }
}

impl OutputTopics for BusOutputs {
    fn wants(&self, stream: OutputStream) -> bool {
        self.producer(stream).has_consumer()
    }

    /// Readers get slices of one shared buffer (so its memory goes with them).
    async fn send(&self, encoded: &mut Encoded) -> anyhow::Result<()> {
        for (s, key, payload, time) in std::mem::take(encoded).into_shared() {
            self.producer(s).send(key, payload, time).await?;
        }
        Ok(())
    }
}
