//! Embeds libtorch's library folder as an rpath so that the binary and the test
//! executables run without `LD_LIBRARY_PATH`, and compiles against libtorch's headers
//! what tch does not bind, into one static library `libtorch_bridge`: an autograd node
//! whose forward and backward are Rust functions (`csrc/custom_function.cpp`), c10d
//! process groups (`csrc/distributed.cpp`, which also needs Gloo's headers at `.gloo`) and
//! a few single calls (`csrc/libtorch_calls.cpp`); the CPU kernel
//! (`csrc/lsh_window_attention.cpp`) with OpenMP into `libreformer_kernels`; and its row
//! work (`csrc/lsh_rows.cpp`) once per instruction-set variant, chosen at run time
//! (`src/cpu_paths.rs`).
//!
//! Everything that includes libtorch's headers is compiled for baseline x86-64: an AVX2
//! copy of a libtorch inline function could otherwise be the one the linker keeps, and
//! run on a CPU without AVX2. Only `lsh_rows.cpp`, which includes no libtorch header, is
//! compiled for AVX2 and AVX-512, and its objects are checked to define nothing but their
//! entry point.

use std::path::PathBuf;

/// The C++ sources of the bridge, and the header they share.
const SOURCES: [&str; 3] = ["csrc/custom_function.cpp", "csrc/distributed.cpp", "csrc/libtorch_calls.cpp"];
/// The CPU kernels (fused LSH attention, the rounds' counting sort), compiled with
/// OpenMP for libtorch's thread pool.
const KERNELS: [&str; 2] = ["csrc/lsh_window_attention.cpp", "csrc/bucket_sort.cpp"];
/// The kernel's row work, compiled once per variant.
const ROWS: &str = "csrc/lsh_rows.cpp";
const HEADERS: [&str; 2] = ["csrc/bridge.h", "csrc/lsh_rows.h"];
/// The row-work variants on x86-64: name and compiler flags (`cpu_paths::KernelIsa`
/// checks the same features at run time). Elsewhere only the baseline is built.
const ROW_VARIANTS_X86_64: [(&str, &[&str]); 3] = [
    ("baseline", &[]),
    ("avx2", &["-mavx2", "-mfma"]),
    (
        "avx512",
        &["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mprefer-vector-width=512"],
    ),
];

fn main() {
    // Published by torch-sys (`links = "tch"`) to packages that depend on it directly.
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not publish its libtorch folder");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if let Some(version) = libtorch_version(&PathBuf::from(&lib)) {
        println!("cargo:rustc-env=REFORMER_LIBTORCH_VERSION={version}");
    }

    let include = PathBuf::from(&lib).join("..").join("include");
    let gloo = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(".gloo");
    if !gloo.join("gloo/context.h").exists() {
        panic!("Gloo's headers are missing at {}: run `make setup` (scripts/setup-libtorch.sh)", gloo.display());
    }
    let mut build = cc::Build::new();
    let nccl = nccl_includes(&PathBuf::from(&lib));
    if let Some(folders) = &nccl {
        // libtorch's NCCL process group, in libtorch_cuda; its headers need the CUDA
        // toolkit's (runtime, crt, cccl) and NCCL's.
        build.includes(folders).define("USE_C10D_NCCL", None).define("REFORMER_WITH_NCCL", None);
    } else {
        println!("cargo:warning=no CUDA/NCCL headers beside libtorch: the nccl backend is not built (gloo only)");
    }
    build
        .cpp(true)
        .files(SOURCES)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        // libtorch's c10d headers declare the Gloo backend only under this flag.
        .define("USE_C10D_GLOO", None)
        .flag("-std=c++17")
        // The PyTorch wheels are built with the C++11 ABI.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // libtorch's own headers warn under C++17 (C++20 bit-field initialisers).
        .warnings(false)
        .compile("torch_bridge");
    cc::Build::new()
        .cpp(true)
        .files(KERNELS)
        .include(&include)
        .flag("-std=c++17")
        // `#pragma omp` in ATen/Parallel.h: at::parallel_for runs on OpenMP's threads
        // only when _OPENMP is defined.
        .flag("-fopenmp")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("reformer_kernels");
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    for (variant, flags) in ROW_VARIANTS_X86_64.iter().take(if x86_64 { 3 } else { 1 }) {
        let mut rows = cc::Build::new();
        let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join(format!("rows-{variant}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        rows.out_dir(&out_dir).cpp(true).file(ROWS).flag("-std=c++17").flag("-O3").flag("-ffp-contract=off");
        rows.define("ROWS_VARIANT", *variant);
        for flag in *flags {
            rows.flag(flag);
        }
        let objects = rows.compile_intermediates();
        check_defines_only_its_entry(&objects, variant);
        rows.compile(&format!("reformer_rows_{variant}"));
    }
    // The static libraries need libtorch's symbols; listed after them so the linker finds
    // them. OpenMP: the libgomp that libtorch itself loads (the wheel's `lib/libgomp.so.1`),
    // so that there is one thread pool.
    println!("cargo:rustc-link-search=native={lib}");
    for name in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={name}");
    }
    let gomp = if PathBuf::from(&lib).join("libgomp.so.1").exists() { "libgomp.so.1" } else { "libgomp.so" };
    println!("cargo:rustc-link-lib=dylib:+verbatim={gomp}");
    if nccl.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    println!("cargo:rerun-if-changed=build.rs");
    for file in SOURCES.iter().chain(&KERNELS).chain(&HEADERS).chain([&ROWS]) {
        println!("cargo:rerun-if-changed={file}");
    }
}

/// Panics unless the objects of a row-work variant define no global symbol but
/// `reformer_lsh_rows_<variant>`: any other (an inline function of a header, say) could
/// be kept by the linker for code outside the variant. Skipped where `nm` is missing.
fn check_defines_only_its_entry(objects: &[PathBuf], variant: &str) {
    let entry = format!("reformer_lsh_rows_{variant}");
    for object in objects {
        let Ok(out) = std::process::Command::new("nm").args(["--defined-only", "--extern-only"]).arg(object).output()
        else {
            println!("cargo:warning=nm not found: the {variant} row kernels' symbols are not checked");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let foreign: Vec<&str> =
            text.lines().filter_map(|l| l.split_whitespace().last()).filter(|name| *name != entry).collect();
        assert!(foreign.is_empty(), "{} defines symbols other than {entry}: {foreign:?}", object.display());
    }
}

/// The include folders the NCCL process group's headers need, when all are present beside
/// the PyTorch wheel's libtorch (`nvidia/{nccl,cu13}` packages; `make setup` adds the
/// CUDA crt and cccl headers): None otherwise, e.g. for a CPU-only libtorch download.
fn nccl_includes(lib: &std::path::Path) -> Option<Vec<PathBuf>> {
    let nvidia = lib.join("../../nvidia");
    let cuda = nvidia.join("cu13/include");
    let folders = vec![nvidia.join("nccl/include"), cuda.clone(), cuda.join("cccl")];
    let needed = [
        nvidia.join("nccl/include/nccl.h"),
        cuda.join("cuda_runtime.h"),
        cuda.join("crt/host_config.h"),
        cuda.join("nv/target"),
    ];
    needed.iter().all(|p| p.exists()).then_some(folders)
}

/// The version of the libtorch in use: `torch/version.py` of a PyTorch wheel, or the
/// `build-version` file of a libtorch download.
fn libtorch_version(lib: &std::path::Path) -> Option<String> {
    let root = lib.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split(['\'', '"']).nth(1)?.to_string());
    }
    std::fs::read_to_string(root.join("build-version")).ok().map(|v| v.trim().to_string())
}
