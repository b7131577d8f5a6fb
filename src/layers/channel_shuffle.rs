//! ShuffleNet's channel shuffle (`nn.ChannelShuffle`): the channels of [N, C, H, W] read as a
//! [groups, C / groups] grid and transposed. Its input-VJP is the shuffle with the grid's
//! other side as groups.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelShuffle {
    pub groups: usize,
}

fn shuffle(x: &Tensor, groups: usize) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (n, c) = match dims.as_slice() {
        [n, c, ..] if groups > 0 && c % groups == 0 => (*n, *c),
        _ => {
            return Err(Error::InvalidGraph(format!(
                "channel shuffle in {groups} groups of an input of shape {dims:?}"
            )))
        }
    };
    let plane = x.elem_count() / (n * c).max(1);
    x.reshape(&[n, groups, c / groups, plane])?
        .permute(&[0, 2, 1, 3])?
        .reshape(&dims)
}

impl Layer for ChannelShuffle {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        shuffle(inputs[0], self.groups)
    }

    fn input_vjp(&self, _inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let c = grad.dim(1)?;
        Ok(vec![shuffle(grad, c / self.groups.max(1))?])
    }
}
