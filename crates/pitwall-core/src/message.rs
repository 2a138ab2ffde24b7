//! What a bus hands the processor, and the one wall clock every stage reads.

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

/// Wall-clock time, ns since the Unix epoch (0 before it, `i64::MAX` past 2262).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_reads_this_century() {
        let now = super::now_ns();
        // 2020-01-01 and 2200-01-01, in ns.
        assert!(now > 1_577_836_800_000_000_000 && now < 7_258_118_400_000_000_000);
    }
}
