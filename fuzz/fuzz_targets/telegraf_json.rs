//! Telegraf's JSON through the write API's decoding, up to validation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pitwall_server::fuzzing::write_body(data, false, true);
});
