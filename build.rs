//! Embeds libtorch's library folder as an rpath so that the binary and the test
//! executables run without `LD_LIBRARY_PATH`.

fn main() {
    // Published by torch-sys (`links = "tch"`) to packages that depend on it directly.
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not publish its libtorch folder");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rerun-if-changed=build.rs");
}
