//! The tensor files the CLI and the page exchange, one safetensors layout each:
//! - an inputs file: `inputs` [N, C, H, W] (float, already normalised) and optionally
//!   `targets` [N] (int64 or int32);
//! - an explanation file (which the metrics read back): `attributions`, `logits` [N, classes], `targets` [N] (int64) and, for
//!   Integrated Gradients, `convergence_delta` [N].

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::methods::Explanation;

/// What an inputs file holds.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// [N, C, H, W] f32 on the CPU.
    pub inputs: Tensor,
    /// One class per sample, when the file names them.
    pub targets: Option<Vec<i64>>,
}

/// Reads an inputs file; `what` names it in error messages.
pub fn read_inputs(bytes: &[u8], what: &str) -> Result<Inputs> {
    let (inputs, targets) = read_floats_and_targets(bytes, what, "inputs")?;
    Ok(Inputs { inputs, targets })
}

/// What an explanation file holds that the metrics read.
#[derive(Debug, Clone)]
pub struct Attributions {
    /// As `explain` wrote them, f32 on the CPU.
    pub attributions: Tensor,
    /// The class each sample was explained for, when the file names them.
    pub targets: Option<Vec<i64>>,
}

/// Reads the attributions (and targets) of an explanation file; `what` names it in errors.
pub fn read_attributions(bytes: &[u8], what: &str) -> Result<Attributions> {
    let (attributions, targets) = read_floats_and_targets(bytes, what, "attributions")?;
    Ok(Attributions { attributions, targets })
}

/// The floating-point tensor `name` (as f32) and the optional `targets` of a safetensors file.
fn read_floats_and_targets(bytes: &[u8], what: &str, name: &str) -> Result<(Tensor, Option<Vec<i64>>)> {
    if bytes.is_empty() {
        return Err(Error::EmptyFile { what: what.into() });
    }
    if let Some(key) = crate::import::duplicated_header_key(bytes) {
        return Err(Error::InvalidSafetensors {
            what: what.into(),
            reason: format!("its header names tensor `{key}` twice"),
        });
    }
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::InvalidSafetensors {
        what: what.into(),
        reason: e.to_string(),
    })?;
    let view = file.tensor(name).map_err(|_| Error::MissingTensor {
        name: name.into(),
        what: what.into(),
    })?;
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        other => {
            return Err(Error::TensorDtype {
                name: name.into(),
                expected: "f32 (or another floating-point type)".into(),
                found: format!("{other:?}"),
            })
        }
    };
    let values = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?.to_dtype(DType::F32)?;
    let targets = match file.tensor("targets") {
        Err(_) => None,
        Ok(view) => Some(read_targets(&view)?),
    };
    Ok((values, targets))
}

fn read_targets(view: &TensorView<'_>) -> Result<Vec<i64>> {
    if view.shape().len() > 1 {
        return Err(Error::TensorShape {
            name: "targets".into(),
            expected: "[N] (one class per sample)".into(),
            found: view.shape().to_vec(),
        });
    }
    let width = match view.dtype() {
        Dtype::I64 => 8,
        Dtype::I32 | Dtype::U32 => 4,
        Dtype::U8 => 1,
        other => {
            return Err(Error::TensorDtype {
                name: "targets".into(),
                expected: "int64 or int32".into(),
                found: format!("{other:?}"),
            })
        }
    };
    let dtype = view.dtype();
    Ok(view
        .data()
        .chunks_exact(width)
        .map(|b| match dtype {
            Dtype::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")),
            Dtype::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64,
            Dtype::U32 => u32::from_le_bytes(b.try_into().expect("4 bytes")) as i64,
            _ => b[0] as i64,
        })
        .collect())
}

/// A tensor as safetensors stores it.
struct Stored {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Stored {
    fn f32(name: &'static str, t: &Tensor) -> Result<Self> {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            name,
            dtype: Dtype::F32,
            shape: t.dims().to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    fn i64(name: &'static str, values: &[i64]) -> Self {
        Self {
            name,
            dtype: Dtype::I64,
            shape: vec![values.len()],
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

fn serialize(tensors: &[Stored], producer: &str) -> Result<Vec<u8>> {
    let invalid = |e: safetensors::SafeTensorError| Error::InvalidSafetensors {
        what: "the file being written".into(),
        reason: e.to_string(),
    };
    let views = tensors
        .iter()
        .map(|t| TensorView::new(t.dtype, t.shape.clone(), &t.bytes).map(|view| (t.name, view)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let metadata = HashMap::from([("producer".to_string(), producer.to_string())]);
    safetensors::tensor::serialize(views, Some(metadata)).map_err(invalid)
}

/// An inputs file of `inputs` [N, C, H, W] and, when given, `targets`.
pub fn inputs_safetensors(inputs: &Tensor, targets: Option<&[i64]>, producer: &str) -> Result<Vec<u8>> {
    let mut tensors = vec![Stored::f32("inputs", inputs)?];
    tensors.extend(targets.map(|t| Stored::i64("targets", t)));
    serialize(&tensors, producer)
}

/// An explanation file: what `candle-xai explain --input ... --out Y.safetensors` writes and
/// the page's "download attributions" saves.
pub fn explanation_safetensors(explanation: &Explanation, producer: &str) -> Result<Vec<u8>> {
    let targets: Vec<i64> = explanation.targets.iter().map(|&t| t as i64).collect();
    let mut tensors = vec![
        Stored::f32("attributions", &explanation.attributions)?,
        Stored::f32("logits", &explanation.logits)?,
        Stored::i64("targets", &targets),
    ];
    if let Some(delta) = &explanation.convergence_delta {
        tensors.push(Stored::f32("convergence_delta", delta)?);
    }
    serialize(&tensors, producer)
}

/// Softmax probabilities of one row of logits (max-shifted, so large logits do not overflow).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// The `k` most probable classes of one row of logits, most probable first: (class, probability).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = softmax(logits).into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_explanations_round_trip() {
        let inputs = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2, 2))
            .unwrap();
        let bytes = inputs_safetensors(&inputs, Some(&[4, 1]), "test").unwrap();
        let read = read_inputs(&bytes, "x").unwrap();
        assert_eq!(read.targets, Some(vec![4, 1]));
        let diff = (read.inputs - &inputs).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);

        let explanation = Explanation {
            attributions: inputs.clone(),
            logits: Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap(),
            targets: vec![1, 0],
            convergence_delta: Some(Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap()),
        };
        let bytes = explanation_safetensors(&explanation, "test").unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = file.names();
        names.sort();
        assert_eq!(names, ["attributions", "convergence_delta", "logits", "targets"]);
        assert_eq!(file.tensor("targets").unwrap().dtype(), Dtype::I64);
    }

    #[test]
    fn bad_inputs_files_say_what_is_wrong() {
        assert!(read_inputs(b"", "e.safetensors")
            .unwrap_err()
            .to_string()
            .contains("e.safetensors"));
        assert!(read_inputs(b"garbage!", "g.safetensors").is_err());
        let other = inputs_safetensors(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(), None, "t").unwrap();
        // A file with `inputs` only under another name.
        let renamed = String::from_utf8_lossy(&other).replace("inputs", "photos");
        let err = read_inputs(renamed.as_bytes(), "r.safetensors")
            .unwrap_err()
            .to_string();
        assert!(err.contains("inputs"), "{err}");
    }

    #[test]
    fn softmax_and_top_k() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] < 1e-30);
        assert_eq!(
            top_k(&[0.1, 3.0, 2.0], 2).iter().map(|c| c.0).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
