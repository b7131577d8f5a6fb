//! Gradient (captum's Saliency, signed unless `abs`) and InputXGradient, at the input or at a
//! layer's output (captum's LayerGradientXActivation with and without multiply_by_inputs).
//! Both are one backward pass on the unperturbed input, which `explain` shares with the
//! forward that gives the logits.

use serde::{Deserialize, Serialize};

use super::probe::Pass;
use super::{Attribution, Parameter};
use crate::backend::Map;
use crate::error::Result;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GradientParams {
    /// Absolute value of the gradient (captum's Saliency default is true; ours is signed).
    pub abs: bool,
}

impl GradientParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![Parameter::bool(
            "abs",
            "Absolute value",
            "absolute value of the gradient (captum's Saliency takes it by default; ours is signed)",
        )]
    }
}

pub(crate) fn gradient(pass: Pass, params: &GradientParams) -> Result<Attribution> {
    let attributions = if params.abs {
        pass.gradient.map(Map::Abs)?
    } else {
        pass.gradient
    };
    Ok(Attribution {
        attributions,
        convergence_delta: None,
    })
}

pub(crate) fn input_x_gradient(pass: Pass) -> Result<Attribution> {
    Ok(Attribution {
        attributions: pass.gradient.mul(&pass.activation)?,
        convergence_delta: None,
    })
}
