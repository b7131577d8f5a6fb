//! Grad-CAM (Selvaraju et al. 2017) as captum's LayerGradCam: channel weights are the
//! spatial mean of the target's gradient at the layer; the map is the weighted channel sum,
//! optionally ReLU'd, optionally upsampled bilinearly (align_corners=False) to the input.
//! At a transformer's token layer ([N, T, D]) the learned tokens are dropped and the patch
//! tokens laid out on their grid as channels ([N, D, h, w]), as pytorch-grad-cam's ViT recipe
//! (`reshape_transform`) does, before the same computation.

use serde::{Deserialize, Serialize};

use super::probe::Pass;
use super::{Attribution, Parameter};
use crate::backend::{Activation, Map, Reduce};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GradCamParams {
    /// ReLU on the map (the paper's Grad-CAM; captum's relu_attributions).
    pub relu: bool,
    /// Bilinear upsampling to the input's size (captum's LayerAttribution.interpolate).
    pub upsample: bool,
}

impl GradCamParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter::bool(
                "relu",
                "ReLU",
                "keep only the positive part of the map (the paper's Grad-CAM)",
            ),
            Parameter::bool(
                "upsample",
                "Upsample",
                "upsample the map bilinearly to the input's size (captum's LayerAttribution.interpolate)",
            ),
        ]
    }
}

impl Default for GradCamParams {
    fn default() -> Self {
        Self {
            relu: true,
            upsample: true,
        }
    }
}

/// Grad-CAM from the backward pass of the unperturbed `input` at the layer `layer`.
pub(crate) async fn grad_cam(pass: Pass, layer: &str, input: &Tensor, params: &GradCamParams) -> Result<Attribution> {
    let (activation, gradient) = match pass.activation.rank() {
        4 => (pass.activation, pass.gradient),
        3 => (token_grid(&pass.activation, layer)?, token_grid(&pass.gradient, layer)?),
        _ => {
            return Err(Error::invalid_parameter(
                "layer",
                format!(
                    "Grad-CAM needs a layer with a [N, C, H, W] or a token [N, T, D] output; `{layer}` outputs {:?}",
                    pass.activation.dims()
                ),
            ))
        }
    };
    let (n, c, _, _) = activation.dims4()?;
    let weights = gradient.reduce(Reduce::MeanHw)?.reshape(&[n, c])?;
    let mut cam = activation
        .channel_affine(Some(&weights), None)?
        .reduce(Reduce::SumChannels)?;
    if params.relu {
        cam = cam.map(Map::Activation(Activation::Relu))?;
    }
    if params.upsample {
        // The map is small: it is read back and upsampled on the host, whatever the device.
        let (_, _, h, w) = input.dims4()?;
        cam = Tensor::from_candle(cam.to_host_async().await?.upsample_bilinear2d(h, w, false)?)?;
    }
    Ok(Attribution {
        attributions: cam,
        convergence_delta: None,
    })
}

/// Tokens [N, T, D] as a map [N, D, h, w]: the last h * w = T - k tokens are the patches in
/// row-major order (h = w, the largest square that fits), the first k the learned ones
/// (class, distillation), which are dropped.
fn token_grid(tokens: &Tensor, layer: &str) -> Result<Tensor> {
    let (n, t, d) = match tokens.dims() {
        &[n, t, d] => (n, t, d),
        dims => return Err(Error::Shape(format!("token layer `{layer}` outputs {dims:?}"))),
    };
    let (side, learned) = super::attention::patch_grid(t).ok_or_else(|| {
        Error::invalid_parameter(
            "layer",
            format!("`{layer}` holds {t} tokens, which are not a square grid of patches and a few learned tokens"),
        )
    })?;
    tokens
        .narrow(1, learned, side * side)?
        .reshape(&[n, side, side, d])?
        .permute(&[0, 3, 1, 2])
}
