//! The config loader: any TOML loads or fails with a message, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = pitwall::config::Config::from_toml(text) {
        let _ = format!("{e:#}");
    }
});
