//! Gives the binaries an rpath to libtorch, so they run without LD_LIBRARY_PATH, and links
//! libtorch_cuda when INJECTOR_CUDA=1 (rustc's `--as-needed` would otherwise drop it). The CUDA build
//! also compiles the CUDA-graph shim `src/cuda/graph.cpp` against libtorch's headers and the CUDA
//! runtime headers (`INJECTOR_CUDA_HOME`, default: the `nvidia/cu13` folder next to libtorch, where
//! the PyPI wheels nvidia-cuda-runtime and nvidia-cuda-crt put them) and sets `cfg(injector_cuda)`.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=INJECTOR_CUDA");
    println!("cargo:rerun-if-env-changed=INJECTOR_EXTRA_RPATH");
    println!("cargo:rerun-if-env-changed=INJECTOR_CUDA_HOME");
    println!("cargo:rerun-if-changed=src/cuda/graph.cpp");
    println!("cargo::rustc-check-cfg=cfg(injector_cuda)");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = PathBuf::from(libtorch).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    if let Ok(extra) = std::env::var("INJECTOR_EXTRA_RPATH") {
        for dir in extra.split(':').filter(|d| !d.is_empty()) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
    if std::env::var("INJECTOR_CUDA").as_deref() == Ok("1") {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
        let libtorch = PathBuf::from(std::env::var("LIBTORCH").expect("INJECTOR_CUDA=1 needs LIBTORCH"));
        shim(&libtorch);
    }
}

/// Compiles the CUDA-graph shim and links it with the CUDA runtime.
fn shim(libtorch: &Path) {
    let cuda = std::env::var("INJECTOR_CUDA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| libtorch.join("../nvidia/cu13"));
    let include = cuda.join("include");
    assert!(
        include.join("crt/host_config.h").exists(),
        "{}: no CUDA runtime headers (pip install nvidia-cuda-runtime nvidia-cuda-crt, or set INJECTOR_CUDA_HOME)",
        include.display()
    );
    cc::Build::new()
        .cpp(true)
        .file("src/cuda/graph.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(&include)
        .flag("-std=c++17")
        .flag("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .compile("injector_cuda_graph");
    let lib = cuda.join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    for l in ["torch_cuda", "c10_cuda", "c10", "torch_cpu"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    // The wheel ships only libcudart.so.13: link it through an unversioned name in OUT_DIR.
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("cudart");
    std::fs::create_dir_all(&out).expect("OUT_DIR/cudart");
    let link = out.join("libcudart.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.join("libcudart.so.13"), &link).expect("libcudart.so link");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=dylib=cudart");
    println!("cargo:rustc-cfg=injector_cuda");
}
