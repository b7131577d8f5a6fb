//! A vision transformer's learned tensors around its patch tokens: the class (and
//! distillation) tokens put in front of the sequence, and the position embedding added to it.
//! Both are the same for every sample of a batch.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// Learned tokens [K, D] put before the tokens of x [N, T, D]: [N, K + T, D]. The input-VJP
/// drops their rows (the tokens are constants, not inputs).
#[derive(Debug, Clone)]
pub struct PrependTokens {
    tokens: Tensor,
}

/// A learned [T, D] added to every sample of x [N, T, D].
#[derive(Debug, Clone)]
pub struct PositionEmbedding {
    embedding: Tensor,
}

/// `t` ([1, K, D], [K, D] or [D]) as [K, D].
fn as_rows(t: Tensor, what: &str) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = match dims.as_slice() {
        [d] => [1, *d],
        [k, d] | [1, k, d] => [*k, *d],
        _ => {
            return Err(Error::InvalidGraph(format!(
                "{what} has shape {dims:?}; expected [1, K, D] or [K, D]"
            )))
        }
    };
    t.reshape(&rows)
}

/// [N, K * D] copies of `rows` [K, D], as [N, K, D].
fn repeated(rows: &Tensor, n: usize) -> Result<Tensor> {
    let (k, d) = (rows.dims()[0], rows.dims()[1]);
    let zeros = rows.device().tensor(&vec![0.0; n * k * d], &[n, k * d])?;
    zeros
        .channel_affine(None, Some(&rows.reshape(&[k * d])?))?
        .reshape(&[n, k, d])
}

fn check_width(x: &Tensor, width: usize, what: &str) -> Result<()> {
    match x.dims() {
        [_, _, d] if *d == width => Ok(()),
        dims => Err(Error::InputSizeMismatch {
            layer: String::new(),
            kind: what.into(),
            expected: format!("[batch, tokens, {width}]"),
            found: format!("shape {dims:?}"),
        }),
    }
}

impl PrependTokens {
    /// One learned token per tensor of `tokens`, in order.
    pub fn new(tokens: Vec<Tensor>) -> Result<Self> {
        let rows = tokens
            .into_iter()
            .map(|t| as_rows(t, "a learned token"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tokens: Tensor::cat_rows(&rows)?,
        })
    }

    pub fn count(&self) -> usize {
        self.tokens.dims()[0]
    }

    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            tokens: self.tokens.to_device(device)?,
        })
    }
}

impl Layer for PrependTokens {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        check_width(x, self.tokens.dims()[1], "PrependTokens")?;
        Tensor::cat(&[repeated(&self.tokens, x.dims()[0])?, x.clone()], 1)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.narrow(1, self.count(), inputs[0].dims()[1])?])
    }
}

impl PositionEmbedding {
    pub fn new(embedding: Tensor) -> Result<Self> {
        Ok(Self {
            embedding: as_rows(embedding, "a position embedding")?,
        })
    }

    /// Tokens and width: [T, D].
    pub fn dims(&self) -> &[usize] {
        self.embedding.dims()
    }

    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            embedding: self.embedding.to_device(device)?,
        })
    }
}

impl Layer for PositionEmbedding {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        let (tokens, width) = (self.dims()[0], self.dims()[1]);
        check_width(x, width, "PositionEmbedding")?;
        if x.dims()[1] != tokens {
            return Err(Error::InputSizeMismatch {
                layer: String::new(),
                kind: "PositionEmbedding".into(),
                expected: format!(
                    "{tokens} tokens (the image size the model was trained at; other sizes are not interpolated)"
                ),
                found: format!("{} tokens", x.dims()[1]),
            });
        }
        let flat = x.reshape(&[x.dims()[0], tokens * width])?;
        flat.channel_affine(None, Some(&self.embedding.reshape(&[tokens * width])?))?
            .reshape(x.dims())
    }

    fn input_vjp(&self, _inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.clone()])
    }
}
