//! timm's names for the families whose timm models compute exactly what torchvision's do
//! (checked against timm 1.0.31: same tensors in the same order, float64 logits equal):
//! `resnet*` (the same names as torchvision's, nothing to map), `efficientnet_b*` and
//! `convnext_*`.
//!
//! A timm state dict is read under torchvision's names, recognised as torchvision's
//! architecture, and its graph is renamed back to timm's module paths, so `--layer` and the
//! layer list speak timm. One table of module pairs (torchvision path, timm path), built from
//! the file's tensors, serves both directions. Where timm fuses a BatchNorm with its
//! activation (`BatchNormAct2d`), the module's output is the activation's: that node is
//! `<module>.act` and answers to `<module>` too, and the normalisation before it is
//! `<module>.bn` (reading the module's tensors); torchvision's grouping modules that timm lacks
//! (`Conv2dNormActivation`, `features.0`) answer to the timm module holding their output.

use std::collections::HashMap;

use crate::import::graph_json::{GraphSpec, OpSpec};
use crate::import::StateDict;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    EfficientNet,
    ConvNext,
}

/// The prefix timm's architecture names get here: `timm_efficientnet_b0`.
pub(super) const PREFIX: &str = "timm_";

/// (torchvision module path, timm module path) pairs.
pub(super) struct Modules(Vec<(String, String)>);

pub(super) fn detect(state: &StateDict) -> Option<Family> {
    if state.contains("conv_stem.weight") && state.contains("conv_head.weight") {
        Some(Family::EfficientNet)
    } else if state.contains("stem.0.weight") && state.names().any(|n| n.starts_with("stages.0.blocks.0.conv_dw.")) {
        Some(Family::ConvNext)
    } else {
        None
    }
}

/// How many `prefix.N` there are, counting N from 0.
fn count(state: &StateDict, prefix: &str) -> usize {
    (0..)
        .take_while(|i| state.names().any(|n| n.starts_with(&format!("{prefix}.{i}."))))
        .count()
}

impl Modules {
    pub(super) fn of(family: Family, state: &StateDict) -> Self {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut pair = |tv: String, timm: String| pairs.push((tv, timm));
        match family {
            Family::EfficientNet => {
                pair("features.0.0".into(), "conv_stem".into());
                pair("features.0.1".into(), "bn1".into());
                pair("features.0.2".into(), "bn1.act".into());
                pair("features.0".into(), "bn1.act".into());
                let stages = count(state, "blocks");
                for s in 0..stages {
                    let stage = format!("features.{}", s + 1);
                    pair(stage.clone(), format!("blocks.{s}"));
                    for b in 0..count(state, &format!("blocks.{s}")) {
                        let (q, p) = (format!("{stage}.{b}"), format!("blocks.{s}.{b}"));
                        efficientnet_block(&mut pair, state, &q, &p);
                    }
                }
                let head = format!("features.{}", stages + 1);
                pair(format!("{head}.0"), "conv_head".into());
                pair(format!("{head}.1"), "bn2".into());
                pair(format!("{head}.2"), "bn2.act".into());
                pair(head, "bn2.act".into());
                pair("avgpool".into(), "global_pool".into());
                pair("flatten".into(), "global_pool.flatten".into());
                pair("classifier.0".into(), "drop".into());
                pair("classifier.1".into(), "classifier".into());
            }
            Family::ConvNext => {
                pair("features.0.0".into(), "stem.0".into());
                pair("features.0.1".into(), "stem.1".into());
                pair("features.0".into(), "stem".into());
                for s in 0..count(state, "stages") {
                    if s > 0 {
                        let down = format!("features.{}", 2 * s);
                        pair(format!("{down}.0"), format!("stages.{s}.downsample.0"));
                        pair(format!("{down}.1"), format!("stages.{s}.downsample.1"));
                        pair(down, format!("stages.{s}.downsample"));
                    }
                    let stage = format!("features.{}", 2 * s + 1);
                    pair(stage.clone(), format!("stages.{s}"));
                    for b in 0..count(state, &format!("stages.{s}.blocks")) {
                        let (q, p) = (format!("{stage}.{b}"), format!("stages.{s}.blocks.{b}"));
                        for (tv, timm) in [
                            ("block.0", "conv_dw"),
                            ("block.1", "permute"),
                            ("block.2", "norm"),
                            ("block.3", "mlp.fc1"),
                            ("block.4", "mlp.act"),
                            ("block.5", "mlp.fc2"),
                            ("block.6", "permute_back"),
                            ("block", "mlp"),
                            ("layer_scale", "gamma"),
                            ("stochastic_depth", "drop_path"),
                        ] {
                            pair(format!("{q}.{tv}"), format!("{p}.{timm}"));
                        }
                        pair(q, p);
                    }
                }
                pair("avgpool".into(), "head.global_pool".into());
                pair("classifier.0".into(), "head.norm".into());
                pair("classifier.1".into(), "head.flatten".into());
                pair("classifier.2".into(), "head.fc".into());
            }
        }
        Modules(pairs)
    }

    /// `name` with its longest mapped module path replaced by the other side's.
    fn map(&self, name: &str, to_timm: bool) -> String {
        self.0
            .iter()
            .map(|(tv, timm)| if to_timm { (tv, timm) } else { (timm, tv) })
            .filter_map(|(from, to)| {
                let rest = name.strip_prefix(from.as_str())?;
                (rest.is_empty() || rest.starts_with('.')).then_some((from.len(), to, rest))
            })
            .max_by_key(|(len, _, _)| *len)
            .map_or_else(|| name.to_string(), |(_, to, rest)| format!("{to}{rest}"))
    }

    /// The state dict under torchvision's names (ConvNeXt's `gamma` [C] becomes `layer_scale`).
    pub(super) fn to_torchvision(&self, state: &StateDict) -> StateDict {
        let tensors: HashMap<String, candle_core::Tensor> = state
            .names()
            .map(|name| (self.map(name, false), state.get(name).expect("listed").clone()))
            .collect();
        StateDict::new(tensors, state.source())
    }

    /// The graph description under timm's module paths, reading timm's tensor names.
    pub(super) fn to_timm(&self, mut spec: GraphSpec) -> GraphSpec {
        let rename = |name: &str| self.map(name, true);
        for node in &mut spec.nodes {
            let params = node.params.clone().unwrap_or_else(|| node.name.clone());
            if let OpSpec::LayerScale { tensor } = &mut node.op {
                // The tensor is `<block>.layer_scale` in torchvision, `<block>.gamma` in timm.
                let full = rename(&format!("{params}.{tensor}"));
                if let Some((prefix, last)) = full.rsplit_once('.') {
                    node.params = Some(prefix.to_string());
                    *tensor = last.to_string();
                }
            } else if node.params.is_some() {
                node.params = Some(rename(&params));
            }
            node.name = rename(&node.name);
            if let Some(inputs) = &mut node.inputs {
                inputs.iter_mut().for_each(|i| *i = rename(i));
            }
            let mut aliases: Vec<String> = node.aliases.iter().map(|a| rename(a)).collect();
            aliases.retain(|a| *a != node.name);
            aliases.dedup();
            node.aliases = aliases;
        }
        // BatchNormAct2d: `<module>` names the activation's output, as the module's output is.
        let fused: Vec<String> = spec
            .nodes
            .iter()
            .filter_map(|n| n.name.strip_suffix(".act").map(str::to_string))
            .filter(|module| spec.nodes.iter().any(|n| n.name == *module))
            .collect();
        for node in &mut spec.nodes {
            if fused.contains(&node.name) {
                node.params.get_or_insert_with(|| node.name.clone());
                node.name = format!("{}.bn", node.name);
            } else if let Some(module) = node.name.strip_suffix(".act").filter(|m| fused.iter().any(|f| f == m)) {
                node.aliases.insert(0, module.to_string());
            }
            if let Some(inputs) = &mut node.inputs {
                for input in inputs.iter_mut().filter(|i| fused.contains(i)) {
                    *input = format!("{input}.bn");
                }
            }
        }
        // A grouping module torchvision has and timm lacks answers to the same timm name as
        // the node it groups: keep each name once, on its first node.
        let mut seen = std::collections::HashSet::new();
        for node in &mut spec.nodes {
            seen.insert(node.name.clone());
        }
        for node in &mut spec.nodes {
            node.aliases.retain(|a| !seen.contains(a));
            seen.extend(node.aliases.iter().cloned());
        }
        spec.default_cam_layer = spec.default_cam_layer.as_deref().map(rename);
        spec
    }
}

/// One EfficientNet block's modules: timm's `DepthwiseSeparableConv` (stages without an
/// expansion: conv_dw, bn1, se, conv_pw, bn2) or `InvertedResidual` (conv_pw, bn1, conv_dw,
/// bn2, se, conv_pwl, bn3), in torchvision's `MBConv` numbering (`block.K`).
fn efficientnet_block(pair: &mut impl FnMut(String, String), state: &StateDict, q: &str, p: &str) {
    let inverted = state.contains(&format!("{p}.conv_pwl.weight"));
    let se = state.contains(&format!("{p}.se.conv_reduce.weight"));
    let mut parts: Vec<(&str, &str)> = Vec::new();
    if inverted {
        parts.push(("conv_pw", "bn1"));
        parts.push(("conv_dw", "bn2"));
    } else {
        parts.push(("conv_dw", "bn1"));
    }
    let mut k = parts.len();
    for (i, (conv, bn)) in parts.iter().enumerate() {
        pair(format!("{q}.block.{i}.0"), format!("{p}.{conv}"));
        pair(format!("{q}.block.{i}.1"), format!("{p}.{bn}"));
        pair(format!("{q}.block.{i}.2"), format!("{p}.{bn}.act"));
        pair(format!("{q}.block.{i}"), format!("{p}.{bn}.act"));
    }
    if se {
        for (tv, timm) in [
            ("", "se"),
            (".avgpool", "se.pool"),
            (".fc1", "se.conv_reduce"),
            (".activation", "se.act1"),
            (".fc2", "se.conv_expand"),
            (".scale_activation", "se.gate"),
            (".mul", "se.mul"),
        ] {
            pair(format!("{q}.block.{k}{tv}"), format!("{p}.{timm}"));
        }
        k += 1;
    }
    let (conv, bn) = if inverted {
        ("conv_pwl", "bn3")
    } else {
        ("conv_pw", "bn2")
    };
    pair(format!("{q}.block.{k}.0"), format!("{p}.{conv}"));
    pair(format!("{q}.block.{k}.1"), format!("{p}.{bn}"));
    pair(format!("{q}.stochastic_depth"), format!("{p}.drop_path"));
    pair(q.to_string(), p.to_string());
}
