//! The CPU code paths this process takes, decided once from what the CPU (read by CPUID,
//! which reports the emulated CPU under an emulator, unlike `/proc/cpuinfo`) and the
//! libtorch build offer:
//!
//! - float32 linear layers: oneDNN's matmul where libtorch accepts it on this CPU (it
//!   refuses CPUs without AVX-512 BW/VL/DQ or AVX-NE-CONVERT, whatever the dtype), else
//!   libtorch's `linear` (MKL's sgemm); see `model::dense`.
//! - the fused LSH kernel's row work: the AVX-512, AVX2 or baseline build of
//!   `csrc/lsh_rows.cpp` (all three give the same bits; see `csrc/lsh_rows.h`).
//!   `REFORMER_CPU_ISA=baseline|avx2|avx512` caps the choice, as `ONEDNN_MAX_CPU_ISA`
//!   caps oneDNN's, for measuring one variant against another.
//! - bfloat16: native where the CPU has AVX-512 BF16 and `ONEDNN_MAX_CPU_ISA` leaves
//!   oneDNN its instructions; `--precision auto` (the `enwik8-cpu` preset's) trains in
//!   bf16 there and in float32 elsewhere (`native_bf16`).
//!
//! `reformer --version` prints both (`describe`); bench names the kernel's in its path
//! column.

use std::ffi::{c_char, c_int};
use std::sync::OnceLock;

use crate::ffi::ErrorBuffer;

/// The instruction sets the fused LSH kernel's row work is built for, in rising order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelIsa {
    /// Plain x86-64 (SSE2), or any other architecture.
    Baseline,
    /// AVX2 with FMA (x86-64-v3's vector part).
    Avx2,
    /// AVX-512 F, BW, VL and DQ.
    Avx512,
}

impl KernelIsa {
    pub const ALL: [KernelIsa; 3] = [KernelIsa::Baseline, KernelIsa::Avx2, KernelIsa::Avx512];

    /// Its code for `csrc/lsh_window_attention.cpp`'s `row_kernels`.
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelIsa::Baseline => "baseline",
            KernelIsa::Avx2 => "avx2",
            KernelIsa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU runs the variant.
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                KernelIsa::Baseline => true,
                KernelIsa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                KernelIsa::Avx512 => {
                    KernelIsa::Avx2.runs_here()
                        && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512dq")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == KernelIsa::Baseline
        }
    }

    /// The best variant this CPU runs, no higher than `cap`.
    pub fn best_up_to(cap: KernelIsa) -> KernelIsa {
        KernelIsa::ALL.into_iter().rev().find(|isa| *isa <= cap && isa.runs_here()).unwrap_or(KernelIsa::Baseline)
    }

    fn parse(name: &str) -> Option<KernelIsa> {
        KernelIsa::ALL.into_iter().find(|isa| isa.name() == name.trim().to_ascii_lowercase())
    }
}

/// The variant the fused LSH kernel uses in this process: the best this CPU runs, capped
/// by `REFORMER_CPU_ISA` when set.
pub fn lsh_kernel_isa() -> KernelIsa {
    static CHOSEN: OnceLock<KernelIsa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let cap = match std::env::var("REFORMER_CPU_ISA") {
            Ok(name) => KernelIsa::parse(&name).unwrap_or_else(|| {
                eprintln!("warning: REFORMER_CPU_ISA={name} is not one of baseline, avx2, avx512: ignored");
                KernelIsa::Avx512
            }),
            Err(_) => KernelIsa::Avx512,
        };
        KernelIsa::best_up_to(cap)
    })
}

/// Whether this CPU computes bfloat16 natively: it has AVX-512 BF16 (Intel Cooper Lake,
/// Sapphire Rapids and later, AMX among them; AMD Zen 4 and later) and
/// `ONEDNN_MAX_CPU_ISA`, when set, does not cap oneDNN below it. Elsewhere libtorch
/// converts around every bfloat16 product, and bf16 autocast trains slower than float32
/// (`docs/quality-cpu.md`).
pub fn native_bf16() -> bool {
    static NATIVE: OnceLock<bool> = OnceLock::new();
    *NATIVE.get_or_init(|| {
        cpu_has_avx512_bf16() && onednn_cap_allows_bf16(std::env::var("ONEDNN_MAX_CPU_ISA").ok().as_deref())
    })
}

fn cpu_has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// oneDNN's names of the instruction sets below AVX-512 BF16 (`ONEDNN_MAX_CPU_ISA`).
const ONEDNN_ISAS_WITHOUT_BF16: [&str; 7] =
    ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"];

/// Whether a `ONEDNN_MAX_CPU_ISA` value (None: unset) leaves oneDNN its bfloat16
/// instructions.
fn onednn_cap_allows_bf16(cap: Option<&str>) -> bool {
    cap.is_none_or(|cap| !ONEDNN_ISAS_WITHOUT_BF16.contains(&cap.trim().to_ascii_uppercase().as_str()))
}

/// How float32 linear layers run on the CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinearPath {
    /// oneDNN's matmul.
    Onednn,
    /// libtorch's `linear`, and why oneDNN's matmul is not used.
    Libtorch(String),
}

/// The linear layers' path in this process: oneDNN's matmul when libtorch was built
/// with oneDNN, has it enabled, and its matmul runs on this CPU (tried once on a 2 × 2
/// product, so that the decision is libtorch's own check, whatever it is).
pub fn linear_path() -> &'static LinearPath {
    static CHOSEN: OnceLock<LinearPath> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let mut err = ErrorBuffer::new();
        // SAFETY: the buffer outlives the call and is ERROR_LEN long.
        let usable = unsafe { reformer_onednn_matmul_usable(err.as_mut_ptr(), crate::ffi::ERROR_LEN) };
        if usable != 0 {
            LinearPath::Onednn
        } else {
            LinearPath::Libtorch(err.message())
        }
    })
}

/// One line per path, for `reformer --version`.
pub fn describe() -> String {
    let linear = match linear_path() {
        LinearPath::Onednn => "oneDNN matmul".to_string(),
        LinearPath::Libtorch(why) => format!("libtorch linear ({why})"),
    };
    let detected = KernelIsa::best_up_to(KernelIsa::Avx512);
    let isa = lsh_kernel_isa();
    let capped = if isa == detected { String::new() } else { format!(", capped from {}", detected.name()) };
    let bf16 = if native_bf16() { "native (--precision auto: bf16)" } else { "not native (--precision auto: f32)" };
    format!(
        "cpu linear layers (float32): {linear}\ncpu LSH kernel: {}{capped}, {} thread(s)\ncpu bfloat16: {bf16}",
        isa.name(),
        tch::get_num_threads()
    )
}

extern "C" {
    fn reformer_onednn_matmul_usable(err: *mut c_char, err_len: usize) -> c_int;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_runs_everywhere_and_the_best_variant_runs_here() {
        assert!(KernelIsa::Baseline.runs_here());
        assert_eq!(KernelIsa::best_up_to(KernelIsa::Baseline), KernelIsa::Baseline);
        assert!(KernelIsa::best_up_to(KernelIsa::Avx512).runs_here());
        assert!(lsh_kernel_isa() <= KernelIsa::best_up_to(KernelIsa::Avx512));
    }

    #[test]
    fn a_onednn_cap_below_avx512_bf16_takes_native_bf16_away() {
        assert!(onednn_cap_allows_bf16(None));
        for cap in ["AVX2", "avx512_core", " AVX512_CORE_VNNI "] {
            assert!(!onednn_cap_allows_bf16(Some(cap)), "{cap}");
        }
        for cap in ["AVX512_CORE_BF16", "avx512_core_amx", "ALL"] {
            assert!(onednn_cap_allows_bf16(Some(cap)), "{cap}");
        }
        assert!(!native_bf16() || cpu_has_avx512_bf16());
    }

    #[test]
    fn variant_names_parse_back() {
        for isa in KernelIsa::ALL {
            assert_eq!(KernelIsa::parse(isa.name()), Some(isa));
        }
        assert_eq!(KernelIsa::parse(" AVX2 "), Some(KernelIsa::Avx2));
        assert_eq!(KernelIsa::parse("sse4"), None);
    }
}
