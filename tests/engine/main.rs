//! The engine's integration tests, in one binary: each test binary links candle and wgpu
//! anew, so the suites are modules of this one rather than files of their own.
//! `cargo test --release --test engine -- torchvision_parity` runs one suite;
//! `-- ::wgpu` the parity suites on the wgpu backend only.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod conv_accuracy;
mod fused_graph;
mod fuzz_corpora;
mod import_layouts;
mod layer_edge_cases;
mod lrp_conservation;
mod memory_budget;
mod metrics_parity;
mod mnist_parity;
mod shares;
mod torchvision_parity;
mod tuning;
