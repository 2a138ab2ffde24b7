//! What a bus hands the processor, which partition it came from, and the one wall
//! clock every stage reads.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;

/// One message on a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Partition it is in.
    pub partition: u32,
    /// Position in the partition, from 0.
    pub offset: i64,
    /// The key (a source id), if any.
    pub key: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
    /// When the bus accepted it, ns since the epoch.
    pub timestamp: i64,
}

/// One partition of a bus topic: where a processor's input comes from, and the key under
/// which the lake's snapshots record each partition's offsets and progress. Written (and
/// stored in snapshot properties) as `topic/partition`, e.g. `telemetry.raw/3`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId {
    topic: Arc<str>,
    partition: u32,
}

impl PartitionId {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: u32) -> Self {
        PartitionId {
            topic: topic.into(),
            partition,
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition's number within its topic.
    pub fn partition(&self) -> u32 {
        self.partition
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A `topic/partition` that is not one: what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a partition (topic/number, e.g. telemetry.raw/0)")]
pub struct BadPartitionId(String);

impl FromStr for PartitionId {
    type Err = BadPartitionId;

    /// Reads `topic/partition`; the topic may itself contain `/`, the number follows the
    /// last one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPartitionId(s.to_owned());
        let (topic, number) = s.rsplit_once('/').ok_or_else(bad)?;
        if topic.is_empty() {
            return Err(bad());
        }
        Ok(PartitionId::new(topic, number.parse().map_err(|_| bad())?))
    }
}

impl serde::Serialize for PartitionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PartitionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Wall-clock time, ns since the Unix epoch (0 before it, `i64::MAX` past 2262).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `ns` (since the epoch) as RFC 3339 in UTC to the millisecond, e.g.
/// `2026-01-01T00:00:00.000Z`.
pub fn rfc3339_ms(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::PartitionId;

    #[test]
    fn partition_ids_read_back_as_written_and_refuse_what_is_not_one() {
        let id = PartitionId::new("telemetry.raw", 12);
        assert_eq!(id.to_string(), "telemetry.raw/12");
        assert_eq!("telemetry.raw/12".parse::<PartitionId>(), Ok(id.clone()));
        // A topic with a slash in it: the number is after the last one.
        let odd: PartitionId = "a/b/7".parse().unwrap();
        assert_eq!((odd.topic(), odd.partition()), ("a/b", 7));
        for bad in [
            "",
            "telemetry.raw",
            "/3",
            "t/",
            "t/-1",
            "t/x",
            "t/99999999999",
        ] {
            let err = bad.parse::<PartitionId>().unwrap_err();
            assert!(
                err.to_string().contains("is not a partition"),
                "{bad}: {err}"
            );
        }
        // As map keys in JSON (the snapshot properties), by number within a topic.
        let map: BTreeMap<PartitionId, i64> = [
            (PartitionId::new("t", 10), 1),
            (PartitionId::new("t", 2), 2),
        ]
        .into();
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, r#"{"t/2":2,"t/10":1}"#);
        assert_eq!(
            serde_json::from_str::<BTreeMap<PartitionId, i64>>(&json).unwrap(),
            map
        );
        assert!(serde_json::from_str::<BTreeMap<PartitionId, i64>>(r#"{"t":1}"#).is_err());
    }

    #[test]
    fn times_print_as_rfc3339_to_the_millisecond() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_ms(1_767_225_600_123_456_789),
            "2026-01-01T00:00:00.123Z"
        );
    }

    #[test]
    fn the_clock_reads_this_century() {
        let now = super::now_ns();
        // 2020-01-01 and 2200-01-01, in ns.
        assert!(now > 1_577_836_800_000_000_000 && now < 7_258_118_400_000_000_000);
    }
}
