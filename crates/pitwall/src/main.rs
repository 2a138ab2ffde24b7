#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for 10 s before giving it back to the OS (mimalloc's default is
/// 1 s in v3): the processor frees most of what it buffered at every lake commit and
/// fills it again before the next, and memory handed back is faulted in and zeroed anew,
/// which cost `pitwall process` about a sixth of its CPU time (system time 3.1 s -> 1.9 s
/// on 440,000 events here).
///
/// And keeps transparent huge pages out of mimalloc's memory: the processor's buffers
/// grow in small steps, and each first touch of a huge page zeroes all 2 MiB of it
/// (`pitwall process` on 880,000 events: system time 1.5 s -> 0.6 s, user time the
/// same). `MIMALLOC_PURGE_DELAY` and `MIMALLOC_ALLOW_THP` in the environment still win.
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's global options, which it reads atomically; no
        // memory is touched and any value is valid for this option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
    // mimalloc reads its own THP option (MIMALLOC_ALLOW_THP) when it starts, before
    // `main`, so setting it here would change nothing; the process-wide switch it would
    // use is set instead, and the kernel applies it to every fault from here on.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    pitwall::startup()
}
