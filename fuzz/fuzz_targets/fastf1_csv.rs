//! FastF1 car-data CSV as replay reads it: any text gives points or errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = pitwall_core::fastf1::parse(text, "VER");
});
