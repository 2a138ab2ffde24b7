//! The stream processor: what pitwall does to every event between the raw topic and
//! the lake.
//!
//! A [`Processor`] owns one bus partition. For each raw message it archives the
//! payload, parses and validates it (bad input becomes a reject with its reason),
//! normalizes names and types, tracks the partition's event-time watermark, feeds the
//! tumbling windows and evaluates the anomaly rules, and hands back everything it derived
//! as [`Outputs`]. It does no I/O and is deterministic, so a replay of the same messages
//! rebuilds the same state and the same outputs.

pub mod config;
pub mod enrich;
pub mod normalize;
mod processor;
pub mod rules;
pub mod window;

pub use config::{BaselineMethod, ProcessorConfig, RuleConfig, Severity, WindowConfig};
pub use enrich::{
    DimensionConfig, DistanceKind, Enricher, LapConfig, TrackConfig, Unit, UnitConfig,
};
pub use normalize::{MAX_NAME_BYTES, SchemaLimits, SchemaRegistry, normalize_names};
pub use pitwall_core::{Checkpoint, FieldType, Outputs};
pub use processor::{EARLIEST, Processor, TICK_KEY, check_time, tick_payload};

/// Processor errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is wrong; the key says where, the message what to do.
    #[error("config key {key}: {message}")]
    Config {
        /// Dotted path of the key, e.g. `processor.rules[0].above`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
