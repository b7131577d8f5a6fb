//! Vision transformers (ViT, DeiT) under the names of the three libraries they come from:
//!
//! - torchvision's `vit_b_16` ... `vit_h_14`: `conv_proj`, `class_token`,
//!   `encoder.pos_embedding`, blocks `encoder.layers.encoder_layer_N` (`ln_1`,
//!   `self_attention` with the packed `in_proj_weight`, `out_proj`, `ln_2`, `mlp.0`, `mlp.3`),
//!   `encoder.ln`, `heads.head`;
//! - timm's `vit_*` and `deit_*`: `patch_embed.proj`, `cls_token` (and the distilled DeiT's
//!   `dist_token` with its second head `head_dist`), `pos_embed`, blocks `blocks.N` (`norm1`,
//!   packed `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`), `norm` then `head`, or
//!   for average pooling (`fc_norm`) the mean of the patch tokens;
//! - Hugging Face transformers' `ViTForImageClassification`: `vit.embeddings.*`,
//!   `vit.encoder.layer.N` (separate `attention.attention.query/key/value`), `vit.layernorm`,
//!   `classifier`.
//!
//! The weights give the patch size, the width, the depth, the classes and, through the
//! position embedding's length, the one image size the model takes. The number of heads is
//! not in them: the published models use heads of width 64, except ViT-H (width 1280, 16
//! heads), and so does this. Attention is written out as the graph JSON's primitive nodes
//! (`<block>.<attention>.q/k/v`, `.scores`, `.softmax`, `.mix`, ...), so that LRP rules can
//! treat its products and its softmax one by one.

use super::builder::Builder;
use crate::import::graph_json::{GeluApproximation, GraphSpec, OpSpec};
use crate::import::StateDict;
use crate::layers::NormAxis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Library {
    Torchvision,
    Timm,
    HuggingFace,
}

pub(super) fn detect(state: &StateDict) -> Option<Library> {
    if state.contains("conv_proj.weight") && state.contains("class_token") {
        Some(Library::Torchvision)
    } else if state.contains("patch_embed.proj.weight") && state.contains("blocks.0.attn.qkv.weight") {
        Some(Library::Timm)
    } else if state.contains("vit.embeddings.patch_embeddings.projection.weight") {
        Some(Library::HuggingFace)
    } else {
        None
    }
}

/// How a library computes q, k and v.
enum Projections {
    /// One Linear to [q | k | v]: its node name and, where they are not `<node>.weight` and
    /// `<node>.bias`, its tensors' names.
    Packed {
        module: &'static str,
        tensors: Option<(&'static str, &'static str)>,
    },
    /// Three Linears.
    Separate([&'static str; 3]),
}

/// One library's module paths (a block's relative to the block).
struct Names {
    patch: &'static str,
    tokens: Vec<&'static str>,
    position: &'static str,
    block: &'static str,
    norm1: &'static str,
    attention: &'static str,
    projections: Projections,
    out_proj: &'static str,
    norm2: &'static str,
    fc1: &'static str,
    act: &'static str,
    fc2: &'static str,
    final_norm: &'static str,
    heads: Vec<&'static str>,
    eps: f64,
}

impl Names {
    fn of(library: Library, state: &StateDict) -> Self {
        match library {
            Library::Torchvision => Names {
                patch: "conv_proj",
                tokens: vec!["class_token"],
                position: "encoder.pos_embedding",
                block: "encoder.layers.encoder_layer_",
                norm1: "ln_1",
                attention: "self_attention",
                projections: Projections::Packed {
                    module: "self_attention.in_proj",
                    tensors: Some(("self_attention.in_proj_weight", "self_attention.in_proj_bias")),
                },
                out_proj: "self_attention.out_proj",
                norm2: "ln_2",
                fc1: "mlp.0",
                act: "mlp.1",
                fc2: "mlp.3",
                final_norm: "encoder.ln",
                heads: vec!["heads.head"],
                eps: 1e-6,
            },
            Library::Timm => {
                let distilled = state.contains("dist_token");
                Names {
                    patch: "patch_embed.proj",
                    tokens: if distilled {
                        vec!["cls_token", "dist_token"]
                    } else {
                        vec!["cls_token"]
                    },
                    position: "pos_embed",
                    block: "blocks.",
                    norm1: "norm1",
                    attention: "attn",
                    projections: Projections::Packed {
                        module: "attn.qkv",
                        tensors: None,
                    },
                    out_proj: "attn.proj",
                    norm2: "norm2",
                    fc1: "mlp.fc1",
                    act: "mlp.act",
                    fc2: "mlp.fc2",
                    final_norm: if state.contains("fc_norm.weight") {
                        "fc_norm"
                    } else {
                        "norm"
                    },
                    heads: if distilled {
                        vec!["head", "head_dist"]
                    } else {
                        vec!["head"]
                    },
                    eps: 1e-6,
                }
            }
            Library::HuggingFace => Names {
                patch: "vit.embeddings.patch_embeddings.projection",
                tokens: vec!["vit.embeddings.cls_token"],
                position: "vit.embeddings.position_embeddings",
                block: "vit.encoder.layer.",
                norm1: "layernorm_before",
                attention: "attention.attention",
                projections: Projections::Separate([
                    "attention.attention.query",
                    "attention.attention.key",
                    "attention.attention.value",
                ]),
                out_proj: "attention.output.dense",
                norm2: "layernorm_after",
                fc1: "intermediate.dense",
                act: "intermediate.intermediate_act_fn",
                fc2: "output.dense",
                final_norm: "vit.layernorm",
                heads: vec!["classifier"],
                eps: 1e-12,
            },
        }
    }
}

/// What the weights say about the model.
struct Dims {
    patch: usize,
    width: usize,
    depth: usize,
    /// Tokens of the position embedding: the patches and the learned tokens.
    tokens: usize,
}

impl Dims {
    fn read(names: &Names, state: &StateDict) -> Option<Self> {
        let patch = state.shape(&format!("{}.weight", names.patch))?;
        let position = state.shape(names.position)?;
        let depth = (0..)
            .take_while(|i| state.names().any(|n| n.starts_with(&format!("{}{i}.", names.block))))
            .count();
        Some(Dims {
            patch: *patch.get(2)?,
            width: *patch.first()?,
            depth,
            tokens: *position.get(1)?,
        })
    }

    /// Heads of width 64, as every published ViT and DeiT has but ViT-H (16 heads of 80).
    fn heads(&self) -> usize {
        match self.width {
            1280 => 16,
            w if w % 64 == 0 => w / 64,
            w => (1..=w).rev().find(|h| w % h == 0 && w / h >= 64).unwrap_or(1),
        }
    }

    /// The image side whose patches, with the learned tokens, fill the position embedding.
    fn image_size(&self, learned_tokens: usize) -> Option<usize> {
        let patches = self.tokens.checked_sub(learned_tokens)?;
        let side = (patches as f64).sqrt().round() as usize;
        (side * side == patches && side > 0).then_some(side * self.patch)
    }
}

/// The architecture's name: `vit_b_16`, `timm_deit_small_distilled_patch16_224`,
/// `hf_vit_base_patch16_224`; widths and depths off the published ones get `vit_w<W>_d<D>`.
fn name(library: Library, dims: &Dims, image: usize, distilled: bool) -> String {
    let (short, long) = match (dims.width, dims.depth) {
        (192, 12) => (None, Some("tiny")),
        (384, 12) => (None, Some("small")),
        (768, 12) => (Some("b"), Some("base")),
        (1024, 24) => (Some("l"), Some("large")),
        (1280, 32) => (Some("h"), Some("huge")),
        _ => (None, None),
    };
    let custom = format!("w{}_d{}", dims.width, dims.depth);
    let p = dims.patch;
    match library {
        Library::Torchvision => format!("vit_{}_{p}", short.map_or(custom, str::to_string)),
        Library::Timm if distilled => {
            format!(
                "timm_deit_{}_distilled_patch{p}_{image}",
                long.map_or(custom, str::to_string)
            )
        }
        Library::Timm => format!("timm_vit_{}_patch{p}_{image}", long.map_or(custom, str::to_string)),
        Library::HuggingFace => format!("hf_vit_{}_patch{p}_{image}", long.map_or(custom, str::to_string)),
    }
}

/// The recognised architecture and its graph, or None where the weights do not give the
/// sizes (the graph's build then names what is missing).
pub(super) fn recognise(library: Library, state: &StateDict) -> Option<(String, GraphSpec)> {
    let mut names = Names::of(library, state);
    // timm's ViTs without a class token (`class_token=False`, average pooling) have none.
    names.tokens.retain(|t| state.contains(t));
    let dims = Dims::read(&names, state)?;
    let image = dims.image_size(names.tokens.len())?;
    let spec = graph(&names, &dims, image, state);
    Some((name(library, &dims, image, names.tokens.len() > 1), spec))
}

fn linear_named(b: &mut Builder, module: &str, tensors: Option<(String, String)>) {
    let node = b.linear(module);
    if let Some((weight, bias)) = tensors {
        node.op = OpSpec::Linear {
            weight: Some(weight),
            bias: Some(bias),
        };
    }
}

fn layer_norm(b: &mut Builder, module: &str, eps: f64) {
    b.node(
        module,
        OpSpec::LayerNorm {
            eps,
            axis: NormAxis::Last,
        },
    );
}

fn graph(names: &Names, dims: &Dims, image: usize, state: &StateDict) -> GraphSpec {
    let (width, heads) = (dims.width, dims.heads());
    let mut b = Builder::new();
    b.conv(names.patch, dims.patch, dims.patch, 0, 1);
    b.node(
        "patch_tokens",
        OpSpec::Reshape {
            shape: vec![width as isize, -1],
        },
    );
    b.node("patch_tokens.transpose", OpSpec::Transpose { dim0: 1, dim1: 2 });
    if !names.tokens.is_empty() {
        b.node(
            "tokens",
            OpSpec::PrependTokens {
                tensors: names.tokens.iter().map(|t| t.to_string()).collect(),
            },
        );
    }
    b.node(
        names.position,
        OpSpec::PositionEmbedding {
            tensor: names.position.to_string(),
        },
    );
    for i in 0..dims.depth {
        block(&mut b, names, &format!("{}{i}", names.block), width, heads);
    }
    let pooled = state.contains("fc_norm.weight");
    if pooled {
        // timm's average pooling: the mean of the patch tokens, then `fc_norm`.
        let learned = names.tokens.len();
        let patches = dims.tokens - learned;
        b.node(
            "patch_tokens.pooled",
            OpSpec::Narrow {
                dim: 1,
                start: learned,
                length: patches,
            },
        );
        b.node(
            "global_pool",
            OpSpec::Mean {
                dim: crate::import::graph_json::Dims(vec![1]),
                keepdim: false,
            },
        );
        layer_norm(&mut b, names.final_norm, names.eps);
        b.linear(names.heads[0]);
    } else {
        layer_norm(&mut b, names.final_norm, names.eps);
        for (token, head) in names.heads.iter().enumerate() {
            let select = format!("{head}.token");
            b.node(
                &select,
                OpSpec::Narrow {
                    dim: 1,
                    start: token,
                    length: 1,
                },
            )
            .inputs = Some(vec![names.final_norm.to_string()]);
            b.node(
                &format!("{head}.squeeze"),
                OpSpec::Reshape {
                    shape: vec![width as isize],
                },
            );
            b.linear(head);
        }
        if let [first, second] = names.heads[..] {
            // The distilled DeiT in eval: the mean of its two heads.
            b.add("heads.sum", [first, second]);
            b.node("heads.mean", OpSpec::Scale { factor: 0.5 });
        }
    }
    // pytorch-grad-cam's ViT recipe: the last block's first LayerNorm.
    let cam_layer = match dims.depth {
        0 => names.patch.to_string(),
        depth => format!("{}{}.{}", names.block, depth - 1, names.norm1),
    };
    let mut spec = b.finish(&cam_layer);
    spec.min_input_size = Some(image);
    spec.input_size = Some(image);
    spec
}

/// One pre-norm encoder block: x + attention(norm1(x)), then + mlp(norm2(.)).
fn block(b: &mut Builder, names: &Names, p: &str, width: usize, heads: usize) {
    let input = b.last();
    layer_norm(b, &format!("{p}.{}", names.norm1), names.eps);
    let normed = b.last();
    let attention = format!("{p}.{}", names.attention);
    let head_width = width / heads;
    let mut parts = Vec::new();
    for (j, part) in ["q", "k", "v"].into_iter().enumerate() {
        let node = format!("{attention}.{part}");
        match &names.projections {
            Projections::Packed { module, tensors } => {
                let packed = format!("{p}.{module}");
                if j == 0 {
                    let tensors = tensors.map(|(w, bias)| (format!("{p}.{w}"), format!("{p}.{bias}")));
                    linear_named(b, &packed, tensors);
                }
                b.node(
                    &node,
                    OpSpec::Narrow {
                        dim: 2,
                        start: j * width,
                        length: width,
                    },
                )
                .inputs = Some(vec![packed]);
            }
            Projections::Separate(modules) => {
                b.linear(&format!("{p}.{}", modules[j])).inputs = Some(vec![normed.clone()]);
                b.alias_last([node.clone()]);
            }
        }
        b.node(
            &format!("{node}.heads"),
            OpSpec::Reshape {
                shape: vec![-1, heads as isize, head_width as isize],
            },
        );
        b.node(&format!("{node}.transpose"), OpSpec::Transpose { dim0: 1, dim1: 2 });
        parts.push(b.last());
    }
    b.node(
        &format!("{attention}.q.scaled"),
        OpSpec::Scale {
            factor: (head_width as f64).powf(-0.5),
        },
    )
    .inputs = Some(vec![parts[0].clone()]);
    let scaled = b.last();
    b.node(&format!("{attention}.scores"), OpSpec::MatMul { transpose_rhs: true })
        .inputs = Some(vec![scaled, parts[1].clone()]);
    b.node(&format!("{attention}.softmax"), OpSpec::Softmax { dim: -1 });
    let weights = b.last();
    b.node(&format!("{attention}.mix"), OpSpec::MatMul { transpose_rhs: false })
        .inputs = Some(vec![weights, parts[2].clone()]);
    b.node(&format!("{attention}.merge"), OpSpec::Transpose { dim0: 1, dim1: 2 });
    b.node(
        &format!("{attention}.concat"),
        OpSpec::Reshape {
            shape: vec![-1, width as isize],
        },
    );
    b.linear(&format!("{p}.{}", names.out_proj));
    let attended = b.last();
    b.add(&format!("{p}.add"), [&attended, &input]);
    let mid = b.last();
    layer_norm(b, &format!("{p}.{}", names.norm2), names.eps);
    b.linear(&format!("{p}.{}", names.fc1));
    b.node(
        &format!("{p}.{}", names.act),
        OpSpec::GELU {
            approximate: GeluApproximation::None,
        },
    );
    b.linear(&format!("{p}.{}", names.fc2));
    let mlp = b.last();
    b.add(&format!("{p}.add_1"), [&mlp, &mid]);
    b.alias_last([p]);
}
