//! Compiles `bpf/*.bpf.c` (CO-RE) and generates the libbpf-rs skeleton into OUT_DIR.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["pyusdt"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // usdt.bpf.h includes <linux/errno.h>, which needs the multiarch include directory
    // (asm/errno.h) of the target: derive it rather than hard-coding x86-64.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let multiarch = format!("/usr/include/{}-linux-gnu", gnu_arch(&arch));
    for prog in PROGRAMS {
        let src = format!("bpf/{prog}.bpf.c");
        SkeletonBuilder::new()
            .source(&src)
            .clang_args(["-I", "bpf", "-I", &multiarch, "-Wall", "-O2"])
            .build_and_generate(out.join(format!("{prog}.skel.rs")))
            .unwrap_or_else(|e| {
                panic!("building {src} failed (is clang installed? run scripts/setup.sh): {e:#}")
            });
        println!("cargo:rerun-if-changed={src}");
    }
    // Every header of bpf/: the entry file includes one per concern.
    let mut headers: Vec<PathBuf> = std::fs::read_dir("bpf")
        .expect("bpf/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "h"))
        .collect();
    headers.sort();
    for h in headers {
        println!("cargo:rerun-if-changed={}", h.display());
    }
    // A header added later is seen too.
    println!("cargo:rerun-if-changed=bpf");
}

/// Debian's multiarch triplet prefix for a Rust target architecture.
fn gnu_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86" => "i386",
        "arm" => "arm",
        other => other, // x86_64, aarch64, riscv64, powerpc64, s390x
    }
}
