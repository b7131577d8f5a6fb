//! Element-wise activations. Their derivatives follow PyTorch's at the kinks:
//! ReLU passes the gradient where the output is > 0, ReLU6 (hardtanh) where 0 < x < 6,
//! LeakyReLU uses the slope where x <= 0.

use candle_core::{DType, Tensor};

use super::elementwise::{on_cpu_f32, Pointwise};
use super::Layer;
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Relu,
    Relu6,
    LeakyRelu { negative_slope: f64 },
}

impl Activation {
    fn pointwise(self) -> Pointwise {
        match self {
            Activation::Relu => Pointwise::Relu,
            Activation::Relu6 => Pointwise::Relu6,
            Activation::LeakyRelu { negative_slope } => Pointwise::LeakyRelu(negative_slope as f32),
        }
    }
}

impl Layer for Activation {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        if on_cpu_f32(x) {
            return self.pointwise().forward(x);
        }
        Ok(match self {
            Activation::Relu => x.relu()?,
            Activation::Relu6 => x.clamp(0f32, 6f32)?,
            Activation::LeakyRelu { negative_slope } => {
                let negative = x.minimum(0f32)?.affine(*negative_slope, 0.0)?;
                (x.relu()? + negative)?
            }
        })
    }

    fn input_vjp(&self, inputs: &[&Tensor], output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let x = inputs[0];
        if on_cpu_f32(x) {
            return Ok(vec![self.pointwise().vjp(x, grad)?]);
        }
        let derivative = match self {
            Activation::Relu => output.gt(0f32)?.to_dtype(DType::F32)?,
            Activation::Relu6 => (x.gt(0f32)? * x.lt(6f32)?)?.to_dtype(DType::F32)?,
            Activation::LeakyRelu { negative_slope } => {
                let positive = x.gt(0f32)?.to_dtype(DType::F32)?;
                positive.affine(1.0 - negative_slope, *negative_slope)?
            }
        };
        Ok(vec![(grad * derivative)?])
    }
}
