//! Element-wise product of two branches: a squeeze-and-excitation gate scaling a feature map
//! ([N, C, 1, 1] times [N, C, H, W], either order), or two tensors of one shape.

use super::Layer;
use crate::backend::Reduce;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mul;

/// How the two inputs meet.
enum Pairing {
    SameShape,
    /// Input `gate` ([N, C, 1, 1]) scales the channels of the other ([N, C, H, W]).
    Gate {
        gate: usize,
    },
}

fn pairing(a: &[usize], b: &[usize]) -> Result<Pairing> {
    let is_gate_of = |g: &[usize], x: &[usize]| matches!((g, x), ([n, c, 1, 1], [m, d, _, _]) if n == m && c == d);
    if a == b {
        Ok(Pairing::SameShape)
    } else if is_gate_of(b, a) {
        Ok(Pairing::Gate { gate: 1 })
    } else if is_gate_of(a, b) {
        Ok(Pairing::Gate { gate: 0 })
    } else {
        Err(Error::InvalidGraph(format!(
            "element-wise product of shapes {a:?} and {b:?}: needs equal shapes or an [N, C, 1, 1] gate"
        )))
    }
}

/// x's channels scaled by the gate's values ([N, C, 1, 1] -> per-sample [N, C] scales).
fn scale_channels(x: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (n, c) = (gate.dim(0)?, gate.dim(1)?);
    x.channel_affine(Some(&gate.reshape(&[n, c])?), None)
}

impl Layer for Mul {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let &[a, b] = inputs else {
            return Err(Error::InvalidGraph("a product node needs two inputs".into()));
        };
        match pairing(a.dims(), b.dims())? {
            Pairing::SameShape => a.mul(b),
            Pairing::Gate { gate } => scale_channels(inputs[1 - gate], inputs[gate]),
        }
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let &[a, b] = inputs else {
            return Err(Error::InvalidGraph("a product node needs two inputs".into()));
        };
        match pairing(a.dims(), b.dims())? {
            Pairing::SameShape => Ok(vec![grad.mul(b)?, grad.mul(a)?]),
            Pairing::Gate { gate } => {
                let x = inputs[1 - gate];
                let to_x = scale_channels(grad, inputs[gate])?;
                // d/dgate = sum over the map of grad * x.
                let (h, w) = (x.dim(2)?, x.dim(3)?);
                let to_gate = grad.mul(x)?.reduce(Reduce::MeanHw)?.affine((h * w) as f64, 0.0)?;
                let mut grads = vec![to_x.clone(), to_x];
                grads[gate] = to_gate;
                Ok(grads)
            }
        }
    }
}
