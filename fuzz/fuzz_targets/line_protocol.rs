//! Line protocol: any text parses into points or errors with a line and a column, and
//! every point it yields encodes and parses back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pitwall_core::{Precision, line_protocol};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for r in line_protocol::parse(text, Precision::Ns, 0) {
        match r {
            Ok(p) => {
                let mut out = String::new();
                if line_protocol::encode(&p, &mut out).is_ok() {
                    let back = line_protocol::parse_one(&out, Precision::Ns, 0).expect("an encoded point parses");
                    assert_eq!(back, p, "{out}");
                }
            }
            Err(e) => {
                let s = e.to_string();
                assert!(s.starts_with("line ") && s.contains(", column "), "{s}");
            }
        }
    }
});
