//! The JSON payload decoder (what the processor reads off the raw topic): any bytes
//! decode or fail, and a decoded point encodes and decodes back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pitwall_core::{Precision, json};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = json::decode(data, 0, Precision::S) {
        if let Ok(bytes) = json::encode(&p) {
            let back = json::decode(&bytes, 0, Precision::Ns).expect("an encoded point decodes");
            assert_eq!(back, p);
        }
    }
});
