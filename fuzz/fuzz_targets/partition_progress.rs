//! What the lake reads back from its snapshot properties: `topic/partition` keys and
//! the offsets and checkpoints under them. Any text parses or is refused, never a
//! panic; a key that parses prints back as itself and parses again to the same key.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use pitwall_core::{Checkpoint, PartitionId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = text.parse::<PartitionId>() {
        let printed = id.to_string();
        assert_eq!(printed.parse::<PartitionId>().as_ref(), Ok(&id), "{printed:?}");
        assert_eq!(id.topic(), &printed[..printed.rfind('/').unwrap()]);
    }
    let _ = serde_json::from_str::<BTreeMap<PartitionId, i64>>(text);
    if let Ok(map) = serde_json::from_str::<BTreeMap<PartitionId, Checkpoint>>(text) {
        let again = serde_json::to_string(&map).unwrap();
        assert_eq!(
            serde_json::from_str::<BTreeMap<PartitionId, Checkpoint>>(&again).unwrap(),
            map
        );
    }
});
