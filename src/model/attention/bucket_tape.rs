//! The LSH buckets of a forward pass, kept for its replays. The reversible backward
//! rebuilds each block's input by subtraction and replays its attention on it; sliced
//! attention replays each slice in the backward. A rebuilt input differs from the
//! forward's by rounding (4.5e-6 relative at 12 layers in float32, far more in bfloat16),
//! and a vector close to a bucket boundary may then hash elsewhere: the replay would
//! differentiate another attention pattern than the forward computed. So the forward
//! records its buckets on a tape, and replays read them back instead of hashing.
//!
//! A tape is active on a thread for the duration of `BucketTape::run`; LSH attention
//! asks `recorded_or_hash` for its buckets, which returns the tape's copy when the tape
//! holds one for that call, hashes and records otherwise, and simply hashes when no tape
//! is active (evaluation, generation).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tch::{Kind, Tensor};

/// Which hashing call: the LSH layer's forward seed (unique per layer and pass; a layer
/// hashes all its heads and rounds in one call, however its attention is sliced).
pub type CallKey = u64;

/// Buckets recorded by one forward pass, shared by its replays.
#[derive(Clone, Default)]
pub struct BucketTape {
    /// Buckets as int32 (half of int64's memory), by hashing call.
    recorded: Arc<Mutex<HashMap<CallKey, Tensor>>>,
}

thread_local! {
    static ACTIVE: RefCell<Option<BucketTape>> = const { RefCell::new(None) };
}

impl BucketTape {
    /// The tape active on this thread, or a new one.
    pub fn active_or_new() -> Self {
        ACTIVE.with(|active| active.borrow().clone()).unwrap_or_default()
    }

    /// Runs `f` with this tape active on this thread (the previous one comes back after,
    /// even if `f` panics).
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<BucketTape>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                ACTIVE.with(|active| *active.borrow_mut() = previous);
            }
        }
        let _restore = Restore(ACTIVE.with(|active| active.borrow_mut().replace(self.clone())));
        f()
    }

    /// Bytes the recorded buckets take.
    pub fn bytes(&self) -> usize {
        let recorded = self.recorded.lock().expect("bucket tape poisoned");
        recorded.values().map(|t| t.numel() * 4).sum()
    }
}

/// The buckets of hashing call `key`: the active tape's record of it if there is one,
/// else `hash()` (recorded on the active tape, if any).
///
/// # Shapes
/// `hash` returns (B, H, R, T) int64, and so does this.
pub fn recorded_or_hash(key: CallKey, hash: impl FnOnce() -> Tensor) -> Tensor {
    let Some(tape) = ACTIVE.with(|active| active.borrow().clone()) else { return hash() };
    let mut recorded = tape.recorded.lock().expect("bucket tape poisoned");
    if let Some(buckets) = recorded.get(&key) {
        return buckets.to_kind(Kind::Int64);
    }
    let buckets = hash();
    recorded.insert(key, buckets.to_kind(Kind::Int));
    buckets
}
