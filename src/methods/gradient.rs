//! Gradient (captum's Saliency, signed unless `abs`) and InputXGradient, at the input or at a
//! layer's output (captum's LayerGradientXActivation with and without multiply_by_inputs).

use serde::{Deserialize, Serialize};

use super::probe::{Probe, Progress};
use super::Attribution;
use crate::error::Result;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GradientParams {
    /// Absolute value of the gradient (captum's Saliency default is true; ours is signed).
    pub abs: bool,
}

pub(crate) fn gradient(
    probe: &Probe<'_>,
    input: &candle_core::Tensor,
    params: &GradientParams,
    progress: &mut Progress<'_>,
) -> Result<Attribution> {
    progress.report(0, 1)?;
    let pass = probe.run(input, None)?;
    progress.report(1, 1)?;
    let attributions = if params.abs {
        pass.gradient.abs()?
    } else {
        pass.gradient
    };
    Ok(Attribution {
        attributions,
        convergence_delta: None,
    })
}

pub(crate) fn input_x_gradient(
    probe: &Probe<'_>,
    input: &candle_core::Tensor,
    progress: &mut Progress<'_>,
) -> Result<Attribution> {
    progress.report(0, 1)?;
    let pass = probe.run(input, None)?;
    progress.report(1, 1)?;
    Ok(Attribution {
        attributions: (pass.gradient * pass.activation)?,
        convergence_delta: None,
    })
}
