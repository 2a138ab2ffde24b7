//! The pipeline runtime: what `pitwall up`, `pitwall process`, `pitwall backfill` and
//! the benches run.
//!
//! - [`consume`](crate::consume): the one loop that reads the raw topic, processes each
//!   partition, publishes the outputs and commits them to the lake, on any bus that
//!   implements its `Source`.
//! - [`embedded`]: the whole pipeline in one process on the in-process bus (simulators,
//!   replays and the write API feeding that loop).
//! - [`kafka`]: the loop on Kafka in a consumer group, exactly once into the lake
//!   through rebalances, fencing and restarts.
//! - [`commits`]: lake commits as the loop makes them; [`publish`]: outputs onto their
//!   topics; [`produce`]: simulators and replayed files onto the raw topic; [`serve`]:
//!   the HTTP server's write API and live feed; [`open`]: the lake and topics a run
//!   opens.
//! - [`backfill`] reprocesses the lake's raw archive; [`replay`] reads files;
//!   [`alerts`] sends anomaly episodes out; [`config`] is `pitwall.toml`; [`Stats`] the
//!   counters every part keeps.

pub mod alerts;
pub mod backfill;
pub mod commits;
pub mod config;
mod consume;
pub mod embedded;
pub mod kafka;
pub mod metrics;
pub mod open;
pub mod produce;
pub mod publish;
pub mod replay;
pub mod serve;

pub use embedded::{Summary, run_embedded, run_on_bus};
pub use kafka::{ProcessOptions, run_on_kafka};
pub use metrics::Stats;
pub use open::{bus_config, ensure_topics, open_lake};
pub use produce::{SimRun, produce, simulators};
pub use serve::{KafkaWriteSink, feed_live_from_kafka, start_server};
