//! How well a state dict fits a graph description: which tensors the graph reads and finds
//! with the right shape, which it misses, which have the wrong shape, and which it leaves over.
//! Shapes are checked by following channel counts through the graph, so a weight that is
//! there but belongs to another model size shows up here, not as a failure in the forward pass.

use std::collections::{HashMap, HashSet};

use crate::import::graph_json::{GraphSpec, OpSpec, INPUT};
use crate::import::StateDict;
use crate::layers::NormAxis;

/// Names listed in a message before the rest is only counted.
const LIST_CAP: usize = 10;

#[derive(Debug, Default)]
pub(super) struct Fit {
    /// Tensors the graph reads and finds with the expected shape.
    pub matched: usize,
    /// Tensors in the state dict the graph does not read, sorted.
    pub stray: Vec<String>,
    /// Tensors the graph reads that the state dict lacks.
    pub missing: Vec<String>,
    /// Tensors with the wrong shape: (name, what was expected, found).
    pub misshapen: Vec<(String, String, Vec<usize>)>,
}

impl Fit {
    pub fn is_exact(&self) -> bool {
        self.stray.is_empty() && self.missing.is_empty() && self.misshapen.is_empty()
    }

    pub fn problems(&self) -> usize {
        self.stray.len() + self.missing.len() + self.misshapen.len()
    }

    /// The tensors that did not fit (left over or misshapen, sorted), then what is missing.
    pub fn unmatched(&self) -> String {
        let mut misfits: Vec<String> = self.stray.clone();
        misfits.extend(
            self.misshapen
                .iter()
                .map(|(name, expected, found)| format!("{name} (shape {found:?}, expected {expected})")),
        );
        misfits.sort();
        let mut text = if misfits.is_empty() {
            "none".to_string()
        } else {
            capped(&misfits)
        };
        if !self.missing.is_empty() {
            text.push_str(&format!("; missing from the file: {}", capped(&self.missing)));
        }
        text
    }

    /// A one-line reason for `ArchitectureMismatch`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} tensors it needs are missing: {}",
                self.missing.len(),
                capped(&self.missing)
            ));
        }
        if !self.misshapen.is_empty() {
            let list: Vec<String> = self
                .misshapen
                .iter()
                .map(|(n, e, f)| format!("`{n}` has shape {f:?}, expected {e}"))
                .collect();
            parts.push(capped(&list));
        }
        if !self.stray.is_empty() {
            parts.push(format!(
                "{} tensors it does not use: {}",
                self.stray.len(),
                capped(&self.stray)
            ));
        }
        parts.join("; ")
    }
}

/// `a, b, c, ... and 12 more`.
pub(super) fn capped(names: &[String]) -> String {
    let mut text = names.iter().take(LIST_CAP).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > LIST_CAP {
        text.push_str(&format!(" and {} more", names.len() - LIST_CAP));
    }
    text
}

/// What is known about a node's output.
#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    channels: Option<usize>,
    /// Spatial size, known only after an adaptive pool.
    hw: Option<(usize, usize)>,
    /// Features of a flattened (or linear) output.
    features: Option<usize>,
}

struct Checker<'a> {
    state: &'a StateDict,
    seen: HashSet<String>,
    fit: Fit,
}

impl Checker<'_> {
    /// Looks up `name`, expecting these dimensions (`None`: any). Returns its shape when it fits.
    fn expect(&mut self, name: &str, expected: &[Option<usize>]) -> Option<Vec<usize>> {
        let Some(shape) = self.state.shape(name) else {
            self.fit.missing.push(name.to_string());
            return None;
        };
        self.seen.insert(name.to_string());
        let fits = shape.len() == expected.len() && shape.iter().zip(expected).all(|(&d, e)| e.is_none_or(|e| e == d));
        if fits {
            self.fit.matched += 1;
            Some(shape.to_vec())
        } else {
            let text = expected
                .iter()
                .map(|e| e.map_or("_".to_string(), |d| d.to_string()))
                .collect::<Vec<_>>()
                .join(", ");
            self.fit
                .misshapen
                .push((name.to_string(), format!("[{text}]"), shape.to_vec()));
            None
        }
    }

    /// An optional bias of `len` entries.
    fn optional_bias(&mut self, prefix: &str, len: Option<usize>) {
        let name = format!("{prefix}.bias");
        if self.state.contains(&name) {
            self.expect(&name, &[len]);
        }
    }

    fn node(&mut self, prefix: &str, op: &OpSpec, input: Flow) -> Flow {
        match *op {
            OpSpec::Conv2d {
                kernel_size, groups, ..
            } => {
                let (kh, kw) = kernel_size.hw();
                let per_group = input
                    .channels
                    .filter(|c| groups > 0 && c % groups == 0)
                    .map(|c| c / groups);
                let shape = self.expect(
                    &format!("{prefix}.weight"),
                    &[None, per_group.or(input.channels.map(|_| 0)), Some(kh), Some(kw)],
                );
                let out = shape.map(|s| s[0]);
                if let Some(o) = out.filter(|o| groups == 0 || o % groups != 0) {
                    self.fit.misshapen.push((
                        format!("{prefix}.weight"),
                        format!("output channels divisible by {groups} groups"),
                        vec![o],
                    ));
                }
                self.optional_bias(prefix, out);
                Flow {
                    channels: out,
                    ..Flow::default()
                }
            }
            OpSpec::BatchNorm2d { .. } => {
                let mut channels = input.channels;
                for suffix in ["running_mean", "running_var", "weight", "bias"] {
                    if let Some(shape) = self.expect(&format!("{prefix}.{suffix}"), &[channels]) {
                        channels = Some(shape[0]);
                    }
                }
                Flow { channels, ..input }
            }
            OpSpec::Linear { .. } => {
                let shape = self.expect(&format!("{prefix}.weight"), &[None, input.features]);
                let out = shape.map(|s| s[0]);
                self.optional_bias(prefix, out);
                Flow {
                    features: out,
                    ..Flow::default()
                }
            }
            OpSpec::LayerNorm { axis, .. } => {
                let width = match axis {
                    NormAxis::Last => input.features,
                    NormAxis::Channels | NormAxis::Groups(_) => input.channels,
                };
                for suffix in ["weight", "bias"] {
                    let name = format!("{prefix}.{suffix}");
                    if self.state.contains(&name) {
                        self.expect(&name, &[width]);
                    }
                }
                input
            }
            OpSpec::LayerNorm2d { .. } | OpSpec::GroupNorm { .. } => {
                for suffix in ["weight", "bias"] {
                    self.expect(&format!("{prefix}.{suffix}"), &[input.channels]);
                }
                input
            }
            OpSpec::LayerScale { ref tensor } => {
                let name = format!("{prefix}.{tensor}");
                let rank = self.state.shape(&name).map_or(1, <[usize]>::len);
                let mut expected = vec![Some(1); rank];
                expected[0] = input.channels;
                self.expect(&name, &expected);
                input
            }
            // Channels to the last place (NCHW -> NHWC) and back.
            OpSpec::Permute { ref dims } if dims.len() > 2 && dims.last() == Some(&1) => Flow {
                features: input.channels,
                channels: None,
                ..input
            },
            OpSpec::Permute { ref dims } if dims.len() > 2 && dims[1] == dims.len() - 1 => Flow {
                channels: input.features,
                features: None,
                ..input
            },
            OpSpec::AdaptiveAvgPool2d { output_size } | OpSpec::AdaptiveMaxPool2d { output_size } => Flow {
                hw: Some(output_size.hw()),
                ..input
            },
            OpSpec::MaxPool2d { .. } | OpSpec::AvgPool2d { .. } | OpSpec::Upsample { .. } => Flow { hw: None, ..input },
            // Shapes the checker does not follow: nothing after them is expected of.
            OpSpec::Reshape { .. } | OpSpec::Mean { .. } | OpSpec::Transpose { .. } | OpSpec::MatMul { .. } => {
                Flow::default()
            }
            OpSpec::Flatten => {
                let features = match (input.channels, input.hw) {
                    (Some(c), Some((h, w))) => Some(c * h * w),
                    _ => input.features,
                };
                Flow {
                    features,
                    ..Flow::default()
                }
            }
            _ => input,
        }
    }
}

/// Checks every tensor the graph reads, and lists the ones it leaves over.
pub(super) fn fit(spec: &GraphSpec, state: &StateDict) -> Fit {
    let mut checker = Checker {
        state,
        seen: HashSet::new(),
        fit: Fit::default(),
    };
    let mut flows = vec![Flow {
        channels: Some(spec.input_channels),
        ..Flow::default()
    }];
    let mut names: HashMap<&str, usize> = HashMap::from([(INPUT, 0)]);
    for node in &spec.nodes {
        let inputs: Vec<Flow> = match &node.inputs {
            Some(list) => list
                .iter()
                .map(|n| names.get(n.as_str()).map_or_else(Flow::default, |&i| flows[i]))
                .collect(),
            None => vec![*flows.last().expect("the input is there")],
        };
        let input = inputs.first().copied().unwrap_or_default();
        if matches!(node.op, OpSpec::Add | OpSpec::Mul) {
            let channels: Vec<usize> = inputs.iter().filter_map(|f| f.channels).collect();
            if channels.windows(2).any(|w| w[0] != w[1]) {
                checker.fit.misshapen.push((
                    format!("{} (a sum or product of branches)", node.name),
                    "equal channel counts".into(),
                    channels,
                ));
            }
        }
        let prefix = node.params.as_deref().unwrap_or(&node.name);
        let mut out = checker.node(prefix, &node.op, input);
        match node.op {
            OpSpec::Concat { dim: 1 } => out.channels = inputs.iter().map(|f| f.channels).sum(),
            OpSpec::Narrow { dim: 1, length, .. } => out.channels = Some(length),
            _ => {}
        }
        names.insert(node.name.as_str(), flows.len());
        for alias in &node.aliases {
            names.insert(alias.as_str(), flows.len());
        }
        flows.push(out);
    }
    let mut stray: Vec<String> = state
        .names()
        .filter(|n| !checker.seen.contains(*n))
        .map(str::to_string)
        .collect();
    stray.sort();
    checker.fit.stray = stray;
    checker.fit.missing.sort();
    checker.fit.missing.dedup();
    checker.fit
}
