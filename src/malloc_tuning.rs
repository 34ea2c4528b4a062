//! glibc malloc settings for libtorch on CPU. By default glibc serves every allocation
//! above its mmap threshold (at most 32 MiB) with a fresh mmap and returns it on free,
//! so each large activation of each step costs page faults and zeroing by the kernel:
//! on 2 cores that was a third of a training step's time. Serving them from the heap and
//! keeping freed memory for reuse removes that cost (measured with `reformer bench`; see
//! the README), at the price of a higher resident peak from fragmentation.
//!
//! Set `REFORMER_SYSTEM_MALLOC=1` to keep glibc's defaults.

use std::os::raw::c_int;

// From glibc's <malloc.h>.
const M_TRIM_THRESHOLD: c_int = -1;
const M_MMAP_MAX: c_int = -4;

extern "C" {
    fn mallopt(param: c_int, value: c_int) -> c_int;
}

/// Freed heap memory above this is returned to the system.
const TRIM_THRESHOLD_BYTES: c_int = 1 << 30;

/// Applies the settings unless `REFORMER_SYSTEM_MALLOC` is set; returns whether they
/// were applied. Call before the first large allocation.
pub fn configure() -> bool {
    if std::env::var_os("REFORMER_SYSTEM_MALLOC").is_some() {
        return false;
    }
    // SAFETY: mallopt only changes allocator parameters; it is called before threads
    // that allocate are started.
    unsafe { mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 }
}

/// A description for reports.
pub fn describe() -> &'static str {
    if std::env::var_os("REFORMER_SYSTEM_MALLOC").is_some() {
        "glibc defaults"
    } else {
        "glibc, heap only (M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB)"
    }
}
