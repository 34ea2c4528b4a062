//! The process's memory allocator: jemalloc, for libtorch's tensors as well as Rust's.
//!
//! Linked unprefixed into the executable, jemalloc's `malloc`/`free` take precedence over
//! glibc's for the shared libraries too, so every CPU tensor comes from it. glibc's
//! defaults serve each large tensor with a fresh mmap and return it on free, so every
//! step pays page faults and zeroing in the kernel (about a third of a step on 2 cores);
//! keeping freed memory in glibc's heap instead is fast but fragments, and the resident
//! peak then grows with depth by ~100 MiB per layer even though nothing is kept per layer.
//! jemalloc with purging switched off reuses freed memory without that growth (figures
//! in the README, measured with `reformer bench --suite depth`).
//!
//! `MALLOC_CONF` in the environment overrides these settings, e.g.
//! `MALLOC_CONF=dirty_decay_ms:10000` to return idle memory after ten seconds.
//!
//! The executable installs it (`src/main.rs`: the global allocator and the `malloc_conf`
//! symbol); this module holds the settings and describes them for reports.

use std::os::raw::c_char;

/// Never purge freed pages: a training loop reallocates the same sizes every step.
const SETTINGS: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

/// A C string pointer that may live in a static.
#[repr(transparent)]
pub struct ConfString(*const c_char);

// SAFETY: the pointer targets an immutable static byte string.
unsafe impl Sync for ConfString {}

/// The settings, as jemalloc reads them from its `malloc_conf` symbol at start-up.
pub const MALLOC_CONF: ConfString = ConfString(SETTINGS.as_ptr().cast());

/// A description for reports.
pub fn describe() -> String {
    let conf = std::str::from_utf8(&SETTINGS[..SETTINGS.len() - 1]).unwrap_or("");
    match std::env::var("MALLOC_CONF") {
        Ok(env) => format!("jemalloc ({conf}; MALLOC_CONF={env})"),
        Err(_) => format!("jemalloc ({conf})"),
    }
}

/// jemalloc's `mallctl`, as the executable that links jemalloc hands it over
/// (`use_mallctl`); the library's own tests run without it.
pub type Mallctl = unsafe extern "C" fn(*const c_char, *mut u8, *mut usize, *mut u8, usize) -> i32;

static MALLCTL: std::sync::OnceLock<Mallctl> = std::sync::OnceLock::new();

/// Lets `release_free_memory` reach jemalloc through its `mallctl`.
pub fn use_mallctl(mallctl: Mallctl) {
    let _ = MALLCTL.set(mallctl);
}

/// "arena.<MALLCTL_ARENAS_ALL>.purge": every arena's unused pages back to the system.
const PURGE_ALL_ARENAS: &[u8] = b"arena.4096.purge\0";

/// Returns the freed memory that jemalloc holds to the system, in every arena: called
/// between phases of a run whose allocations differ in shape (training steps, then
/// scoring), so that the second phase's peak does not stack on the first one's freed
/// pieces that it cannot reuse. The next step faults its pages in again, once. Nothing
/// happens without jemalloc (`use_mallctl`).
pub fn release_free_memory() {
    if let Some(mallctl) = MALLCTL.get() {
        let null = std::ptr::null_mut();
        // SAFETY: jemalloc's documented control call; a purge reads and writes nothing.
        unsafe { mallctl(PURGE_ALL_ARENAS.as_ptr().cast(), null, std::ptr::null_mut(), null, 0) };
    }
}
