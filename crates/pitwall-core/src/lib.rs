//! The telemetry point model and its wire codecs, with no I/O.
//!
//! Every stage of pitwall speaks [`Point`]: an InfluxDB line-protocol point with a
//! measurement, sorted tags, typed fields and a nanosecond timestamp. This crate turns
//! points into bytes and back ([`line_protocol`] for Telegraf and files, [`json`] for the
//! Kafka payload) and defines the records the processor derives from points
//! ([`record`]). It does no I/O so it can be property-tested and fuzzed in isolation.

pub mod fastf1;
pub mod json;
pub mod line_protocol;
pub mod map;
mod message;
mod point;
pub mod record;

pub use map::{Name, SortedMap};
pub use message::{BadPartitionId, Message, PartitionId, now_ns, rfc3339_ms};
pub use point::{FieldType, FieldValue, Point, Precision};
pub use record::{Checkpoint, Outputs, RejectKind};

/// What went wrong while decoding input, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A line-protocol line did not parse.
    #[error("line {line}, column {column}: {message}")]
    LineProtocol {
        /// 1-based line number in the input.
        line: usize,
        /// 1-based column (in bytes) where the problem starts.
        column: usize,
        /// What was expected, in words.
        message: String,
    },
    /// A JSON payload did not parse or did not have the shape of a point.
    #[error("JSON {location}: {message}")]
    Json {
        /// Where in the document: `line L, column C` or a field path such as `fields.rpm`.
        location: String,
        /// What was expected, in words.
        message: String,
    },
    /// A CSV row did not parse.
    #[error("line {line}, column {column}: {message}")]
    Csv {
        /// 1-based line number in the file (the header is line 1).
        line: u64,
        /// Column name.
        column: String,
        /// What was expected, in words.
        message: String,
    },
    /// A point that parsed but cannot be represented (empty measurement, no fields, ...).
    #[error("invalid point: {0}")]
    Invalid(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
