#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc v3's `mi_option_allow_thp` (v2 numbers it 37; the crate builds v3).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

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
    for (env, option, value) in [
        ("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 10_000),
        ("MIMALLOC_ALLOW_THP", MI_OPTION_ALLOW_THP, 0),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: sets one of mimalloc's global options, which it reads atomically;
            // no memory is touched and any value is valid for these options.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
    // mimalloc applies its THP option when it starts, before `main`; the process-wide
    // switch it would have used is set here instead (it applies to every fault after).
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
