//! Wall-clock timings of every method on one model, for `scripts/bench.sh`.
//!
//! ```text
//! cargo run --release --example bench -- --model /tmp/candle-xai-bench/resnet18.safetensors \
//!     --arch-name resnet18 --input /tmp/candle-xai-bench/input.safetensors --reps 5 --json
//! ```
//!
//! Each row times one `explain` call (top-1 target, so it includes the prediction forward,
//! and for LRP the per-call BatchNorm merge): one warm-up, then `--reps` timed calls; the
//! median and the minimum are reported. Threads: candle's default (RAYON_NUM_THREADS, else
//! all cores). The parameters mirror `scripts/bench_torch.py` row for row; rows a model
//! cannot run are skipped (the transformer methods on a CNN; on a transformer, the CNN LRP
//! composites, which the PyTorch side has only for CNNs). With
//! `--device wgpu` the weights are uploaded once before timing; each call includes reading
//! the logits and the attributions back.

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_xai::lrp::{Composite, MergeConvention};
use candle_xai::methods::{
    AttentionRolloutParams, GradCamParams, GradientParams, IntegratedGradientsParams, LrpParams, Quadrature,
    SmoothGradParams,
};
use candle_xai::{explain, LoadOptions, Method, Model, Progress, Request};
use clap::Parser;

/// The same allocator as the `candle-xai` command, so these are the command's timings.
#[global_allocator]
static ALLOCATOR: candle_xai::allocator::Allocator = candle_xai::allocator::Allocator;

#[derive(Parser)]
struct Args {
    /// A torchvision state dict as safetensors.
    #[arg(long)]
    model: std::path::PathBuf,
    /// The torchvision architecture (also the `model` field of each row).
    #[arg(long)]
    arch_name: String,
    /// The architecture to load the weights as, where candle-xai names it otherwise (timm's
    /// `deit_small_patch16_224` is `timm_vit_small_patch16_224`); default: `--arch-name`.
    #[arg(long)]
    arch: Option<String>,
    /// A safetensors file with an `input` tensor [N, 3, H, W] (N rows, each explained for its
    /// top-1 class); without it, a fixed pseudo-random [1, 3, size, size] input.
    #[arg(long)]
    input: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Timed repetitions per row (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Only rows whose method name contains this.
    #[arg(long)]
    only: Option<String>,
    /// One JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// `cpu`, or `wgpu` (our WGSL kernels on the default adapter, named in each row).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// One line of `--json` output.
#[derive(serde::Serialize)]
struct Row<'a> {
    model: &'a str,
    method: &'a str,
    /// Rows of the input, each explained for its own top-1 class.
    batch: usize,
    ms_median: f64,
    ms_min: f64,
    reps: usize,
    threads: usize,
    device: &'a str,
}

/// The benchmarked methods that `model` can run, with the parameters `scripts/bench_torch.py`
/// gives captum/zennit/lxt.
fn methods(model: &Model) -> Vec<Method> {
    let transformer = Method::GenericAttention.applies_to(model);
    let mut methods = vec![
        Method::Gradient(GradientParams { abs: false }),
        Method::InputXGradient,
        Method::IntegratedGradients(IntegratedGradientsParams {
            n_steps: 32,
            quadrature: Quadrature::GaussLegendre,
            batch_size: Some(32),
            ..Default::default()
        }),
        Method::SmoothGrad(SmoothGradParams {
            n_samples: 8,
            noise_level: 0.1,
            batch_size: Some(8),
            ..Default::default()
        }),
        // pytorch-grad-cam's recipe; on a ViT the last block's first LayerNorm, on a CNN the last
        // spatial layer.
        Method::GradCam(GradCamParams::default()),
    ];
    for composite in Composite::ALL {
        // zennit's composites are CNN rules, AttnLRP and CP-LRP transformer rules.
        if matches!(composite, Composite::AttnLrp | Composite::CpLrp) != transformer {
            continue;
        }
        let mut params = LrpParams::new(composite);
        // zennit 0.5.1's merge, which the torch side runs.
        params.merge_convention = MergeConvention::KeepEps;
        methods.push(Method::Lrp(params));
    }
    // pnpxai's defaults: head fusion min, discard ratio 0.9.
    methods.push(Method::AttentionRollout(AttentionRolloutParams::default()));
    methods.push(Method::GenericAttention);
    methods.retain(|method| method.applies_to(model));
    methods
}

fn load_input(args: &Args) -> candle_xai::Result<Tensor> {
    if let Some(path) = &args.input {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        return Ok(tensors.remove("input").expect("the input file has no `input` tensor"));
    }
    let n = 3 * args.size * args.size;
    let values: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 12.9898).sin() * 43758.545).fract() * 2.0)
        .collect();
    Ok(Tensor::from_vec(values, (1, 3, args.size, args.size), &Device::Cpu)?)
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn main() -> candle_xai::Result<()> {
    candle_xai::allocator::keep_freed_memory();
    candle_xai::threads::join_kernel_pool().expect("rayon's pool is built here first");
    let args = Args::parse();
    let reps = args.reps.max(1);
    let bytes = std::fs::read(&args.model).expect("cannot read --model");
    let options = LoadOptions {
        arch: Some(args.arch.clone().unwrap_or_else(|| args.arch_name.clone())),
        graph: None,
    };
    let device = match args.device.as_str() {
        "cpu" => candle_xai::Device::cpu(),
        #[cfg(feature = "wgpu")]
        "wgpu" => candle_xai::Device::Wgpu(candle_xai::backend::wgpu::WgpuDevice::new()?),
        other => panic!("unknown --device {other}: use cpu or wgpu"),
    };
    let device_name = device.describe();
    let model = Model::from_safetensors(&bytes, &args.model.display().to_string(), &options, &Device::Cpu)?
        .to_device(&device)?;
    let input = load_input(&args)?;
    let threads = candle_core::utils::get_num_threads();
    if !args.json {
        println!(
            "{} on {:?}, {device_name}, {threads} threads, {reps} reps",
            args.arch_name,
            input.dims()
        );
        println!("{:<32} {:>12} {:>12}", "method", "median ms", "min ms");
    }
    for method in methods(&model) {
        let name = method.name();
        if args.only.as_ref().is_some_and(|only| !name.contains(only.as_str())) {
            continue;
        }
        let request = Request::new(method);
        explain(&model, &input, &request, &mut Progress::none())?; // warm-up
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = Instant::now();
            let explanation = explain(&model, &input, &request, &mut Progress::none())?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
            drop(explanation);
        }
        times.sort_by(f64::total_cmp);
        let (ms_median, ms_min) = (median(&times), times[0]);
        if args.json {
            let row = Row {
                model: &args.arch_name,
                method: &name,
                batch: input.dim(0)?,
                ms_median,
                ms_min,
                reps,
                threads,
                device: &device_name,
            };
            println!("{}", serde_json::to_string(&row).expect("a row serialises"));
        } else {
            println!("{name:<32} {ms_median:>12.1} {ms_min:>12.1}");
        }
    }
    Ok(())
}
