//! Embeds libtorch's library folder as an rpath so that the binary and the test
//! executables run without `LD_LIBRARY_PATH`, and compiles against libtorch's headers
//! what tch does not bind, into one static library `libtorch_bridge`: an autograd node
//! whose forward and backward are Rust functions (`csrc/custom_function.cpp`), c10d
//! process groups (`csrc/distributed.cpp`, which also needs Gloo's headers at `.gloo`) and
//! a few single calls (`csrc/libtorch_calls.cpp`); and the CPU kernels (`csrc/lsh_window_attention.cpp`)
//! into `libreformer_kernels`.

use std::path::PathBuf;

/// The C++ sources of the bridge, and the header they share.
const SOURCES: [&str; 3] = ["csrc/custom_function.cpp", "csrc/distributed.cpp", "csrc/libtorch_calls.cpp"];
/// The CPU kernels, compiled on x86-64 for AVX2 with FMA (ATen's vectorised types then
/// use 256-bit registers; every x86-64 CPU since 2013 has them).
const KERNELS: [&str; 1] = ["csrc/lsh_window_attention.cpp"];
const HEADER: &str = "csrc/bridge.h";

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
    let mut kernels = cc::Build::new();
    kernels
        .cpp(true)
        .files(KERNELS)
        .include(&include)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false);
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        kernels.flag("-mavx2").flag("-mfma").define("CPU_CAPABILITY", "AVX2").define("CPU_CAPABILITY_AVX2", None);
    }
    kernels.compile("reformer_kernels");
    // The static library needs libtorch's symbols; listed after it so the linker finds them.
    println!("cargo:rustc-link-search=native={lib}");
    for name in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={name}");
    }
    if nccl.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    println!("cargo:rerun-if-changed=build.rs");
    for file in SOURCES.iter().chain(&KERNELS).chain([&HEADER]) {
        println!("cargo:rerun-if-changed={file}");
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
