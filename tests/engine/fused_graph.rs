//! The gradient methods run on `Model::fused_graph`, where each BatchNorm and the ReLU or
//! ReLU6 that alone reads it are one layer (one pass over memory each way instead of two). Its
//! logits and input gradients must be the plain graph's bit for bit: on MobileNetV2 (BatchNorm
//! and ReLU6 after every convolution but the projections) and ResNet-18 (BatchNorm and ReLU,
//! residual sums between).

use candle_xai::graph::Graph;
use candle_xai::layers::Op;
use candle_xai::{Model, Tensor};

/// (logits, d(target logits)/d(input)) through `graph`, as bits.
fn logits_and_gradient(graph: &Graph, model: &Model, input: &candle_core::Tensor, targets: &[i64]) -> Vec<Vec<u32>> {
    let x = model.prepare_input(input).unwrap();
    let activations = graph.forward(&x, None).unwrap();
    let logits = activations.output();
    let classes = logits.dims()[1];
    let mut seed = vec![0f32; targets.len() * classes];
    for (row, &t) in targets.iter().enumerate() {
        seed[row * classes + t as usize] = 1.0;
    }
    let seed = model.device().tensor(&seed, &[targets.len(), classes]).unwrap();
    let gradient = graph.gradient(&activations, graph.output_id(), seed, 0).unwrap();
    let bits = |t: &Tensor| t.to_vec().unwrap().into_iter().map(f32::to_bits).collect();
    vec![bits(logits), bits(&gradient)]
}

#[test]
fn fusing_batch_norms_with_their_activations_keeps_every_bit() {
    for name in ["mobilenet_v2", "resnet18"] {
        let (model, refs) = crate::torchvision_parity::load(name);
        let fused = model.fused_graph().unwrap();
        let fused_away = fused
            .nodes()
            .iter()
            .zip(model.graph().nodes())
            .filter(|(f, plain)| matches!(f.op, Op::Identity) && matches!(plain.op, Op::Activation(_)))
            .count();
        // ResNet-18: the stem and each block's first ReLU (9); the ReLUs after its sums stay apart.
        assert!(fused_away >= 9, "{name}: only {fused_away} activations fused");
        let (input, targets) = (refs.f32("inputs"), refs.targets());
        assert_eq!(
            logits_and_gradient(model.graph(), &model, &input, &targets),
            logits_and_gradient(fused, &model, &input, &targets),
            "{name}: logits or input gradient differ"
        );
    }
}
