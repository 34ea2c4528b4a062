//! Ctrl-C and SIGTERM during training: the first asks the run to finish its step, save
//! and stop; a second exits at once, without saving.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first Ctrl-C / SIGTERM: finish the step, save, stop.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process; a second install is ignored).
pub fn install_handler() {
    let _ = ctrlc::set_handler(|| {
        if STOP_REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting now without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this step and saving a checkpoint (again to exit at once)");
    });
}

/// Whether an interrupt asked this process to stop.
pub fn requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}
