//! The mean over chosen dimensions (`x.mean(dims, keepdim)`: a ViT's token pooling, global
//! pooling written as a function). Written as a matrix product on every backend: the reduced
//! dimensions are moved last and multiplied by a row of 1/K; the input-VJP is the product by
//! its transpose, which spreads each gradient evenly back over its K elements.

use super::{resolve_axis, Layer};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mean {
    /// PyTorch's `dim`: negative counts from the end.
    pub dims: Vec<isize>,
    pub keepdim: bool,
}

/// Where the reduced dimensions go and what comes out, for one input shape.
struct MeanPlan {
    /// The kept dimensions in order, then the reduced ones.
    order: Vec<usize>,
    /// The input's dims under `order`.
    moved_dims: Vec<usize>,
    /// Elements averaged per output element.
    count: usize,
    output_dims: Vec<usize>,
}

impl Mean {
    fn plan(&self, dims: &[usize]) -> Result<MeanPlan> {
        let mut reduced = self
            .dims
            .iter()
            .map(|&d| resolve_axis(d, dims.len()))
            .collect::<Result<Vec<_>>>()?;
        reduced.sort_unstable();
        reduced.dedup();
        if reduced.len() != self.dims.len() || reduced.first() == Some(&0) || reduced.is_empty() {
            return Err(Error::Shape(format!(
                "mean over dims {:?} of a tensor of shape {dims:?}: name each dimension once, never the batch",
                self.dims
            )));
        }
        let kept = (0..dims.len()).filter(|k| !reduced.contains(k));
        let order: Vec<usize> = kept.chain(reduced.iter().copied()).collect();
        let output_dims = (0..dims.len())
            .filter_map(|k| match reduced.contains(&k) {
                false => Some(dims[k]),
                true => self.keepdim.then_some(1),
            })
            .collect();
        Ok(MeanPlan {
            moved_dims: order.iter().map(|&k| dims[k]).collect(),
            count: reduced.iter().map(|&k| dims[k]).product(),
            order,
            output_dims,
        })
    }

    /// The output's dims for an input of `dims`; None where the dims do not fit.
    pub fn output_dims(&self, dims: &[usize]) -> Option<Vec<usize>> {
        self.plan(dims).ok().map(|p| p.output_dims)
    }
}

fn is_identity(order: &[usize]) -> bool {
    order.iter().enumerate().all(|(i, &k)| i == k)
}

/// A [1, count] row of 1/count on `like`'s device.
fn averaging_row(like: &Tensor, count: usize) -> Result<Tensor> {
    like.device().tensor(&vec![1.0 / count as f32; count], &[1, count])
}

impl Layer for Mean {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        let plan = self.plan(x.dims())?;
        let moved = match is_identity(&plan.order) {
            true => x.clone(),
            false => x.permute(&plan.order)?,
        };
        let rows = moved.reshape(&[moved.elem_count() / plan.count.max(1), plan.count])?;
        rows.matmul(&averaging_row(x, plan.count)?, true)?
            .reshape(&plan.output_dims)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let x = inputs[0];
        let plan = self.plan(x.dims())?;
        let column = grad.reshape(&[grad.elem_count(), 1])?;
        let spread = column
            .matmul(&averaging_row(x, plan.count)?, false)?
            .reshape(&plan.moved_dims)?;
        if is_identity(&plan.order) {
            return Ok(vec![spread]);
        }
        let mut inverse = vec![0; plan.order.len()];
        for (k, &from) in plan.order.iter().enumerate() {
            inverse[from] = k;
        }
        Ok(vec![spread.permute(&inverse)?])
    }
}
