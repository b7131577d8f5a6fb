//! The product of two activations (attention's q k^T and its weights times v): [..., M, K] x
//! [..., K, N], or x [..., N, K]^T, over any matching leading dims (batch, heads). Its
//! input-VJP gives each side the gradient times the other side, transposed as the product was.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatMul {
    /// Whether the second input enters transposed (q k^T).
    pub rhs_transposed: bool,
}

/// `t` as [batch, rows, cols], the leading dims folded into one batch.
fn batched(t: &Tensor) -> Result<Tensor> {
    match t.dims() {
        [lead @ .., rows, cols] if !lead.is_empty() => t.reshape(&[lead.iter().product(), *rows, *cols]),
        dims => Err(Error::Shape(format!(
            "a product of activations needs inputs of rank 3 or more, got shape {dims:?}"
        ))),
    }
}

/// A batch of matrices transposed.
fn transposed(t: &Tensor) -> Result<Tensor> {
    t.permute(&[0, 2, 1])
}

impl MatMul {
    fn check(&self, a: &Tensor, b: &Tensor) -> Result<()> {
        let (da, db) = (a.dims(), b.dims());
        let lead = |d: &[usize]| d.len().checked_sub(2).map(|n| d[..n].to_vec());
        if da.len() < 3 || lead(da) != lead(db) {
            return Err(Error::Shape(format!(
                "product of activations of shapes {da:?} and {db:?}: the leading dims must agree"
            )));
        }
        Ok(())
    }
}

impl Layer for MatMul {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let (a, b) = (inputs[0], inputs[1]);
        self.check(a, b)?;
        let y = batched(a)?.batched_matmul(&batched(b)?, self.rhs_transposed)?;
        let (rank, n) = (a.rank(), y.dims()[2]);
        let mut dims = a.dims().to_vec();
        dims[rank - 1] = n;
        y.reshape(&dims)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let (a, b, g) = (batched(inputs[0])?, batched(inputs[1])?, batched(grad)?);
        let (da, db) = match self.rhs_transposed {
            // y = a b: da = g b^T, db = a^T g
            false => (g.batched_matmul(&b, true)?, transposed(&a)?.batched_matmul(&g, false)?),
            // y = a b^T: da = g b, db = g^T a
            true => (g.batched_matmul(&b, false)?, transposed(&g)?.batched_matmul(&a, false)?),
        };
        Ok(vec![da.reshape(inputs[0].dims())?, db.reshape(inputs[1].dims())?])
    }
}
