//! Links the kernel with its own script (load address, PVH note segment) when building for
//! the bare-metal target; host builds (unit tests of the parsers) link normally.
fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
    }
}
