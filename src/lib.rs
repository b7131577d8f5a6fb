//! candle-xai: explanations for image classifiers — saliency, Integrated Gradients,
//! SmoothGrad, Grad-CAM and Layer-wise Relevance Propagation — matching captum and zennit.

#[cfg(not(target_arch = "wasm32"))]
pub mod allocator;
pub mod backend;
pub mod error;
pub mod graph;
pub mod layers;
pub mod limits;
pub mod tensor;
#[cfg(not(target_arch = "wasm32"))]
pub mod threads;

pub use error::{Error, Result};
pub use tensor::{Device, Tensor};
pub mod import;
pub mod model;

pub use model::{LoadOptions, Model};
pub mod lrp;
pub mod methods;
pub mod metrics;
mod rng;
pub mod tuning;

#[cfg(not(target_arch = "wasm32"))]
pub use methods::explain;
pub use methods::{explain_async, Explanation, Method, Progress, Request, Share, Targets};
pub mod files;
pub mod image;
pub mod render;
#[cfg(target_arch = "wasm32")]
pub mod wasm;
