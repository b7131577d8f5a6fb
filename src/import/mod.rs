//! From bytes to a model graph: safetensors state dicts, torchvision layouts recognised from
//! tensor names and shapes, the custom graph JSON format, and PyTorch `.pth` checkpoints.

pub mod graph_json;
pub mod pth;
pub mod torchvision;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// A key a safetensors header (`bytes`' JSON after the length) holds twice: the safetensors
/// reader keeps one and then misreports the other's data as an invalid offset. None when
/// every key is unique or the header is not readable JSON (the reader then says why).
pub fn duplicated_header_key(bytes: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct FirstDuplicate;
    impl<'de> Visitor<'de> for FirstDuplicate {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(FirstDuplicate)
        .ok()
        .flatten()
}

/// Named tensors as PyTorch's `state_dict()` has them, already on the model's device as f32.
#[derive(Debug, Clone)]
pub struct StateDict {
    tensors: HashMap<String, Tensor>,
    /// Where the tensors came from, for error messages ("model.safetensors").
    source: String,
}

impl StateDict {
    pub fn new(tensors: HashMap<String, Tensor>, source: impl Into<String>) -> Self {
        Self {
            tensors,
            source: source.into(),
        }
    }

    /// Parses safetensors bytes, converting floating-point tensors to f32 on `device`
    /// (integer bookkeeping such as `num_batches_tracked` is dropped). Returns the
    /// `__metadata__` map as well.
    pub fn from_safetensors(bytes: &[u8], source: &str, device: &Device) -> Result<(Self, HashMap<String, String>)> {
        if bytes.is_empty() {
            return Err(Error::EmptyFile {
                what: source.to_string(),
            });
        }
        let invalid = |reason: String| Error::InvalidSafetensors {
            what: source.to_string(),
            reason,
        };
        if let Some(key) = duplicated_header_key(bytes) {
            return Err(invalid(format!("its header names tensor `{key}` twice")));
        }
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| invalid(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            use safetensors::Dtype as S;
            let dtype = match view.dtype() {
                S::F32 => DType::F32,
                S::F16 => DType::F16,
                S::BF16 => DType::BF16,
                S::F64 => DType::F64,
                S::I64 | S::I32 | S::U8 | S::BOOL | S::I8 | S::I16 | S::U16 | S::U32 | S::U64 => continue,
                other => return Err(invalid(format!("tensor `{name}` has unsupported dtype {other:?}"))),
            };
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .map_err(|e| invalid(format!("tensor `{name}`: {e}")))?
                .to_dtype(DType::F32)?
                .to_device(device)?;
            tensors.insert(name, t);
        }
        if tensors.is_empty() {
            return Err(invalid("it holds no floating-point tensors".into()));
        }
        Ok((Self::new(tensors, source), metadata))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.dims())
    }

    /// The tensor `name`, which must have `rank` dimensions.
    pub fn require(&self, name: &str, rank: usize) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            what: self.source.clone(),
        })?;
        if t.rank() != rank {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: format!("{rank} dimensions"),
                found: t.dims().to_vec(),
            });
        }
        self.check_finite(name, t)?;
        Ok(t.clone())
    }

    /// NaN or infinite weights would load and "explain" with NaN attributions: refused,
    /// naming the tensor and the first bad value.
    fn check_finite(&self, name: &str, t: &Tensor) -> Result<()> {
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        match values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(self.bad_weights(
                name,
                format!(
                    "holds {} at element {i} ({} of its {} values are not finite): the file is corrupt",
                    values[i],
                    values.iter().filter(|v| !v.is_finite()).count(),
                    values.len()
                ),
            )),
        }
    }

    /// The error for tensor `name` of these weights, which is unusable because of `reason`.
    pub fn bad_weights(&self, name: &str, reason: String) -> Error {
        Error::BadWeights {
            name: name.to_string(),
            what: self.source.clone(),
            reason,
        }
    }

    /// The tensor `name` with exactly `shape`.
    /// A per-channel vector stored in any shape with one non-unit dimension ([C], [C, 1, 1],
    /// [1, 1, C]), as [C].
    pub fn require_vector(&self, name: &str) -> Result<Tensor> {
        let dims = self.shape(name).map(<[usize]>::to_vec).unwrap_or_default();
        let t = self.require(name, dims.len())?;
        if dims.iter().filter(|&&d| d != 1).count() > 1 || dims.is_empty() {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: "one value per channel: [C] or [C, 1, 1]".into(),
                found: dims,
            });
        }
        Ok(t.flatten_all()?)
    }

    pub fn require_shape(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.require(name, shape.len())?;
        if t.dims() != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: format!("{shape:?}"),
                found: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// The tensors as safetensors bytes (f32, names sorted), with `metadata` as `__metadata__`.
    /// What `candle-xai convert model.pth model.safetensors` writes.
    pub fn to_safetensors(&self, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let mut buffers = Vec::with_capacity(names.len());
        for name in &names {
            let t = self.tensors[*name].to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            buffers.push((name.as_str(), t.dims().to_vec(), bytes));
        }
        let views = buffers
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|view| (*name, view))
                    .map_err(|e| Error::InvalidSafetensors {
                        what: self.source.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::tensor::serialize(views, metadata).map_err(|e| Error::InvalidSafetensors {
            what: self.source.clone(),
            reason: e.to_string(),
        })
    }
}

/// Writes `state` as a safetensors file at `path` (see `StateDict::to_safetensors`).
#[cfg(not(target_arch = "wasm32"))]
pub fn write_safetensors(
    state: &StateDict,
    path: &std::path::Path,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = state.to_safetensors(metadata)?;
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
