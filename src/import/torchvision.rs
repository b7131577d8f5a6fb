//! torchvision's own state-dict layouts, recognised from tensor names and shapes.
//!
//! Each family (`torchvision/resnet.rs`, `vgg.rs`, `mobilenet_v2.rs`, `alexnet.rs`,
//! `efficientnet.rs`, `mobilenet_v3.rs`, `convnext.rs`, `densenet.rs`, `regnet.rs`,
//! `shufflenet_v2.rs`, `squeezenet.rs`, and `vit.rs` for vision transformers under torchvision's,
//! timm's and Hugging Face's names) writes its architectures down as a `GraphSpec` whose
//! nodes carry torchvision's module names, so the state dict's tensor names are the graph's
//! parameter names. Recognition tries every known architecture and keeps the one that reads
//! every tensor with the right shape (`torchvision/fit.rs`): depths differ in block counts,
//! `_bn` variants in their BatchNorm tensors; variants that differ only in widths are named by
//! them (`variant`). timm's names for the families it shares are mapped in `torchvision/timm.rs`.
//!
//! Node names (see `torchvision/builder.rs`): a module torchvision applies more than once
//! gets `<module>_<k>` for its k-th further use — a ResNet BasicBlock runs `layer1.0.relu`
//! and `layer1.0.relu_1`, a Bottleneck `relu`, `relu_1`, `relu_2`. Residual sums are
//! `<block>.add`. A block's output node also answers to the block's name (`layer1.0`,
//! `features.5`) and, for the last block of a ResNet stage, the stage's (`layer1`).

mod alexnet;
mod builder;
mod convnext;
mod densenet;
mod efficientnet;
mod fit;
mod mobilenet_v2;
mod mobilenet_v3;
mod regnet;
mod resnet;
mod shufflenet_v2;
mod squeezenet;
mod timm;
mod vgg;
mod vit;

use super::graph_json::GraphSpec;
use super::StateDict;
use crate::error::{Error, Result};

/// Every architecture `spec_for` knows, in the order recognition tries them.
pub fn architectures() -> Vec<String> {
    let mut names: Vec<String> = resnet::names().map(str::to_string).collect();
    names.extend(vgg::names());
    names.push(mobilenet_v2::NAME.to_string());
    names.push(alexnet::NAME.to_string());
    names.extend(efficientnet::names().map(str::to_string));
    names.extend(mobilenet_v3::names().map(str::to_string));
    names.extend(convnext::names().map(str::to_string));
    names.extend(densenet::names().map(str::to_string));
    names.extend(regnet::names().map(str::to_string));
    names.extend(shufflenet_v2::names().map(str::to_string));
    names.extend(squeezenet::names().map(str::to_string));
    names
}

/// The graph of a known architecture, without checking it against the weights.
fn layout(arch: &str, state: &StateDict) -> Option<GraphSpec> {
    resnet::spec(arch)
        .or_else(|| vgg::spec(arch))
        .or_else(|| mobilenet_v2::spec(arch, state))
        .or_else(|| alexnet::spec(arch))
        .or_else(|| efficientnet::spec(arch, state))
        .or_else(|| mobilenet_v3::spec(arch, state))
        .or_else(|| convnext::spec(arch, state))
        .or_else(|| densenet::spec(arch))
        .or_else(|| regnet::spec(arch, state))
        .or_else(|| shufflenet_v2::spec(arch, state))
        .or_else(|| squeezenet::spec(arch))
}

/// The name of the variant a state dict that fits `arch` is: some variants share their
/// depths and differ only in widths, so the first of them fits all (EfficientNet B1 and B2,
/// ConvNeXt S/B/L, ShuffleNetV2), and their widths name them.
fn variant(arch: &str, state: &StateDict) -> String {
    efficientnet::variant(arch, state)
        .or_else(|| shufflenet_v2::variant(arch, state))
        .unwrap_or_else(|| convnext::variant(arch, state))
}

/// Finds the torchvision architecture whose layout these tensors have, under torchvision's
/// names or timm's (`timm_efficientnet_b0`, with timm's module paths).
pub fn recognise(state: &StateDict) -> Result<(String, GraphSpec)> {
    if let Some(library) = vit::detect(state) {
        return vit::recognise(library, state).ok_or_else(|| Error::UnknownLayout {
            tried: "a vision transformer".into(),
            unmatched: "its patch embedding or position embedding has an unexpected shape (the position \
                        embedding must hold a square grid of patches and the learned tokens)"
                .into(),
        });
    }
    if let Some(family) = timm::detect(state) {
        let modules = timm::Modules::of(family, state);
        let (arch, spec) = recognise_torchvision(&modules.to_torchvision(state))?;
        return Ok((format!("{}{arch}", timm::PREFIX), modules.to_timm(spec)));
    }
    recognise_torchvision(state)
}

fn recognise_torchvision(state: &StateDict) -> Result<(String, GraphSpec)> {
    let archs = architectures();
    // The closest candidate: most tensors read with the right shape, then fewest problems.
    let mut closest: Option<(String, fit::Fit)> = None;
    for arch in &archs {
        let spec = layout(arch, state).expect("every listed architecture has a layout");
        let fit = fit::fit(&spec, state);
        if fit.is_exact() {
            return Ok((variant(arch, state), spec));
        }
        let better = match &closest {
            None => true,
            Some((_, best)) => {
                (fit.matched, std::cmp::Reverse(fit.problems())) > (best.matched, std::cmp::Reverse(best.problems()))
            }
        };
        if better {
            closest = Some((arch.clone(), fit));
        }
    }
    let (arch, fit) = closest.expect("at least one architecture is known");
    Err(Error::UnknownLayout {
        tried: format!(
            "tried {}; closest: {arch}, which fits {} of the file's {} tensors",
            archs.join(", "),
            fit.matched,
            state.names().count()
        ),
        unmatched: fit.unmatched(),
    })
}

/// The graph of a named torchvision architecture (`resnet50`, `vgg16_bn`, ...), sized from the
/// tensors' shapes. Fails with `ArchitectureMismatch` unless the weights fit it exactly.
pub fn spec_for(arch: &str, state: &StateDict) -> Result<GraphSpec> {
    if let Some((found, spec)) = vit::detect(state).and_then(|library| vit::recognise(library, state)) {
        return match found == arch {
            true => Ok(spec),
            false => Err(Error::ArchitectureMismatch {
                arch: arch.to_string(),
                reason: format!("the file holds a vision transformer, {found}"),
            }),
        };
    }
    if let Some(torchvision_arch) = arch.strip_prefix(timm::PREFIX) {
        let family = timm::detect(state).ok_or_else(|| Error::ArchitectureMismatch {
            arch: arch.to_string(),
            reason: "the file does not have timm's names for an EfficientNet or ConvNeXt".into(),
        })?;
        let modules = timm::Modules::of(family, state);
        return Ok(modules.to_timm(spec_for(torchvision_arch, &modules.to_torchvision(state))?));
    }
    let spec = layout(arch, state).ok_or_else(|| Error::UnknownArchitecture(arch.to_string()))?;
    let fit = fit::fit(&spec, state);
    if !fit.is_exact() {
        return Err(Error::ArchitectureMismatch {
            arch: arch.to_string(),
            reason: fit.describe(),
        });
    }
    Ok(spec)
}
