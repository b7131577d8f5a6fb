//! LayerNorm and GroupNorm, with their elementwise affine: over the last dimension (PyTorch's
//! `nn.LayerNorm(C)` after a permute, transformers), over the channels of an NCHW map
//! (ConvNeXt's `LayerNorm2d`, timm's `LayerNorm2d`), or over each of G channel groups and the
//! positions (`nn.GroupNorm`). Its input-VJP is the full one: the mean and the standard
//! deviation both depend on the input.

use serde::{Deserialize, Serialize};

use super::Layer;
use crate::backend::StdTerm;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// What a LayerNorm normalises together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormAxis {
    /// The last dimension.
    Last,
    /// Dimension 1 of [N, C, ...].
    Channels,
    /// The channels of [N, C, ...] in this many groups, each with all its positions (GroupNorm).
    Groups(usize),
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    axis: NormAxis,
    eps: f64,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
}

impl LayerNorm {
    pub fn new(axis: NormAxis, eps: f64, weight: Option<Tensor>, bias: Option<Tensor>) -> Result<Self> {
        if let (Some(w), Some(b)) = (&weight, &bias) {
            if w.dims() != b.dims() || w.rank() != 1 {
                return Err(Error::InvalidGraph(format!(
                    "layer norm weight {:?} and bias {:?}: need two [C] tensors",
                    w.dims(),
                    b.dims()
                )));
            }
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::InvalidGraph(format!(
                "layer norm eps {eps} is not a positive number"
            )));
        }
        Ok(Self {
            axis,
            eps,
            weight,
            bias,
        })
    }

    pub fn axis(&self) -> NormAxis {
        self.axis
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Weight 1 and bias 0, as PyTorch's `reset_parameters` leaves them.
    pub fn reset(&self) -> Result<Self> {
        let fill = |t: &Option<Tensor>, value: f32| t.as_ref().map(|t| t.fill_like(value)).transpose();
        Ok(Self {
            weight: fill(&self.weight, 1.0)?,
            bias: fill(&self.bias, 0.0)?,
            ..self.clone()
        })
    }

    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let move_to = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_device(device)).transpose();
        Ok(Self {
            weight: move_to(&self.weight)?,
            bias: move_to(&self.bias)?,
            ..self.clone()
        })
    }

    /// `x` as the view whose axis is normalised, and that axis: x itself for one dimension,
    /// [N, G, C / G * positions] for groups.
    fn normalised_view(&self, x: &Tensor) -> Result<(Tensor, usize)> {
        let axis = match self.axis {
            NormAxis::Last => x.rank().saturating_sub(1),
            NormAxis::Channels | NormAxis::Groups(_) => 1,
        };
        let width = self.weight.as_ref().or(self.bias.as_ref()).map(|w| w.dims()[0]);
        let groups_fit = match self.axis {
            NormAxis::Groups(g) => x.rank() >= 2 && g > 0 && x.dims()[1].is_multiple_of(g),
            _ => true,
        };
        if x.rank() < 2 || !groups_fit || width.is_some_and(|c| x.dims()[axis] != c) {
            return Err(Error::InvalidGraph(format!(
                "{:?} norm over {} features for an input of shape {:?}",
                self.axis,
                width.map_or("any number of".into(), |c| c.to_string()),
                x.dims()
            )));
        }
        match self.axis {
            NormAxis::Groups(g) => {
                let n = x.dims()[0];
                Ok((x.reshape(&[n, g, x.elem_count() / (n * g).max(1)])?, 2))
            }
            _ => Ok((x.clone(), axis)),
        }
    }

    /// The input-VJP, through the standard deviation or with it held constant (lxt's identity
    /// rule: what remains is the linear centring and scaling).
    pub fn vjp(&self, x: &Tensor, grad: &Tensor, std: StdTerm) -> Result<Tensor> {
        let (view, axis) = self.normalised_view(x)?;
        let grad = match &self.weight {
            Some(w) => self.per_feature(grad, |g| g.channel_affine(Some(w), None))?,
            None => grad.clone(),
        };
        view.normalize_vjp(&grad.reshape(view.dims())?, axis, self.eps as f32, std)?
            .reshape(x.dims())
    }

    /// `f` applied with the normalised axis in the channel position the backends' per-channel
    /// maps use: dimension 1 as it is, the last one through [rows, C].
    fn per_feature(&self, x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        match self.axis {
            NormAxis::Channels | NormAxis::Groups(_) => f(x),
            NormAxis::Last => {
                let c = x.dims()[x.rank() - 1];
                f(&x.reshape(&[x.elem_count() / c.max(1), c])?)?.reshape(x.dims())
            }
        }
    }
}

impl Layer for LayerNorm {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        let (view, axis) = self.normalised_view(x)?;
        let normalized = view.normalize(axis, self.eps as f32)?.reshape(x.dims())?;
        if self.weight.is_none() && self.bias.is_none() {
            return Ok(normalized);
        }
        self.per_feature(&normalized, |t| {
            t.channel_affine(self.weight.as_ref(), self.bias.as_ref())
        })
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.vjp(inputs[0], grad, StdTerm::Differentiated)?])
    }
}
