//! Deterministic "seeded" weights shared with `scripts/xai_reference.py` (the fixture scripts import them).
//!
//! The reference fixtures in `tests/fixtures/*_refs.safetensors` do not store the model weights.
//! Instead each file's safetensors `__metadata__["weights"]` holds a JSON list
//! `[{"name": ..., "shape": [...], "lo": f32, "hi": f32}, ...]` (state_dict order, no
//! `num_batches_tracked`), and every tensor is regenerated bit-exactly by a counter-based PRNG:
//!
//! ```text
//! key = FNV-1a 64 of the name's UTF-8 bytes (offset 0xcbf29ce484222325, prime 0x100000001b3)
//! for i in 0..numel (row-major):
//!   z = key + (i+1) * 0x9E3779B97F4A7C15            (wrapping u64)
//!   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9          (wrapping)
//!   z = (z ^ (z >> 27)) * 0x94D049BB133111EB          (wrapping)
//!   z = z ^ (z >> 31)
//!   u = (z >> 40) as f32 / 16777216.0                 (exact, in [0, 1))
//!   value = lo + (hi - lo) * u                        (all f32: d = hi - lo; p = d * u; lo + p)
//! ```
//!
//! This module depends only on `safetensors` (0.6) and `serde_json`; it is meant to be
//! `mod`-included by integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

/// FNV-1a 64-bit hash of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Uniform value in [0, 1) (24-bit resolution, exact in f32) for element `i` of the tensor with `key`.
#[inline]
pub fn seeded_unit(key: u64, i: u64) -> f32 {
    let mut z = key.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / 16_777_216.0f32
}

/// The `numel` values of tensor `name` drawn uniformly from [lo, hi) (f32 arithmetic).
pub fn seeded_values(name: &str, numel: usize, lo: f32, hi: f32) -> Vec<f32> {
    let key = fnv1a64(name.as_bytes());
    let d: f32 = hi - lo;
    (0..numel as u64)
        .map(|i| {
            let u = seeded_unit(key, i);
            let p: f32 = d * u;
            lo + p
        })
        .collect()
}

fn as_f32(v: &serde_json::Value, what: &str, name: &str) -> f32 {
    // The Python side writes repr(float(np.float32(x))): the f64 is exactly an f32 value,
    // so the f64 -> f32 conversion is exact.
    v.as_f64()
        .unwrap_or_else(|| panic!("weights entry {name:?}: `{what}` is not a number: {v}")) as f32
}

/// Regenerates all weights from the `weights` metadata JSON.
///
/// `json` is the value of `__metadata__["weights"]` (a JSON array of
/// `{"name", "shape", "lo", "hi"}` objects). For convenience a JSON object with a `weights`
/// field (array, or string holding the array) is accepted too.
/// Returns `(name, shape, values)` in the listed (state_dict) order.
pub fn weights_from_metadata(json: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let parsed: serde_json::Value = serde_json::from_str(json).expect("weights metadata is not valid JSON");
    let list = match parsed {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) => match o.remove("weights") {
            Some(serde_json::Value::Array(a)) => a,
            Some(serde_json::Value::String(s)) => {
                return weights_from_metadata(&s);
            }
            _ => panic!("weights metadata object has no `weights` array"),
        },
        _ => panic!("weights metadata must be a JSON array"),
    };
    list.iter()
        .map(|e| {
            let name = e["name"]
                .as_str()
                .expect("weights entry without a string `name`")
                .to_string();
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap_or_else(|| panic!("weights entry {name:?} has no `shape` array"))
                .iter()
                .map(|d| {
                    d.as_u64()
                        .unwrap_or_else(|| panic!("weights entry {name:?}: bad dim {d}")) as usize
                })
                .collect();
            let lo = as_f32(&e["lo"], "lo", &name);
            let hi = as_f32(&e["hi"], "hi", &name);
            let numel: usize = shape.iter().product();
            let values = seeded_values(&name, numel, lo, hi);
            (name, shape, values)
        })
        .collect()
}

/// Writes the weights as an F32 safetensors file (little-endian), e.g. for a model loader that
/// reads PyTorch-style state_dict names.
pub fn write_safetensors(weights: &[(String, Vec<usize>, Vec<f32>)], path: &Path) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(name, shape, values)| {
            assert_eq!(
                shape.iter().product::<usize>(),
                values.len(),
                "tensor {name:?}: shape {shape:?} does not match {} values",
                values.len()
            );
            let mut b = Vec::with_capacity(values.len() * 4);
            for v in values {
                b.extend_from_slice(&v.to_le_bytes());
            }
            (name.clone(), shape.clone(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).expect("tensor view");
            (name.clone(), view)
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None::<HashMap<String, String>>, path)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
