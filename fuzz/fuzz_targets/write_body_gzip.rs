//! A write body as it arrives, gzip or not, line protocol or Telegraf JSON: decompressed
//! within its limit, decoded, validated. The first byte picks the form, the rest is the
//! body; gzip inputs are also compressed here so the decoder sees valid streams too.
#![no_main]
use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let telegraf = mode & 1 == 1;
    match mode >> 1 & 3 {
        0 => {
            let _ = pitwall_server::fuzzing::write_body(body, false, telegraf);
        }
        1 => {
            let _ = pitwall_server::fuzzing::write_body(body, true, telegraf);
        }
        _ => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).unwrap();
            let gz = e.finish().unwrap();
            let plain = pitwall_server::fuzzing::write_body(body, false, telegraf);
            assert_eq!(pitwall_server::fuzzing::write_body(&gz, true, telegraf), plain, "gzip changes nothing");
        }
    }
});
