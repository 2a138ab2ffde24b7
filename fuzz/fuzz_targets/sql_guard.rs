//! The SQL guard: size, parse and nesting depth checked before planning, on a query
//! thread's stack. Whatever the text, an answer and no crash (a stack overflow aborts).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let _ = pitwall_query::guard(sql, &pitwall_query::Limits::default());
});
