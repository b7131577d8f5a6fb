//! `cfg(wgpu_backend)`: the `wgpu` feature on a native target. The browser build reaches
//! WebGPU through the page's own worker for now, so wasm32 leaves the native backend out.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(wgpu_backend)");
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32");
    if std::env::var_os("CARGO_FEATURE_WGPU").is_some() && !wasm {
        println!("cargo::rustc-cfg=wgpu_backend");
    }
}
