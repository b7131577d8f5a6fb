//! The `candle-xai` command: explain a model's predictions on prepared tensors or on photos,
//! list a model's layers and the methods, and convert PyTorch checkpoints to safetensors.

// The command is native-only; in a wasm32 build (the browser's, which compiles every target of the
// crate) this binary is empty and the page uses the library's wasm bindings instead.
#![cfg_attr(target_arch = "wasm32", no_main)]
#![cfg(not(target_arch = "wasm32"))]

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use candle_xai::import::graph_json::GraphSpec;
use candle_xai::lrp::{Bound, Composite, MergeConvention};
use candle_xai::methods::{tunables, Aggregate, Baseline, Quadrature};
use candle_xai::render::Colormap;
use candle_xai::{explain, Error, Explanation, LoadOptions, Method, Model, Progress, Request, Targets};

/// mimalloc keeps freed tensor buffers for reuse; glibc unmaps large ones and the next layer
/// faults fresh pages in again (MobileNetV2 Integrated Gradients: 3.3 -> 2.4 s).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "candle-xai",
    version,
    about = "Explain image classifiers: saliency, SmoothGrad, Integrated Gradients, Grad-CAM and LRP",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Explain predictions: tensors in, tensors out (--input), or photos in, heatmaps out (--image)
    #[command(allow_negative_numbers = true)]
    Explain(Box<ExplainArgs>),
    /// Convert a PyTorch .pth checkpoint (a state_dict) to safetensors
    Convert {
        /// The PyTorch checkpoint (.pth / .pt)
        input: PathBuf,
        /// Where to write the safetensors file
        output: PathBuf,
    },
    /// Print a model's architecture and its layer names (for --layer), one per line with its kind
    Layers(ModelArgs),
    /// Print every method with its tunable parameters as JSON
    Methods,
}

#[derive(Args)]
struct ModelArgs {
    /// Model weights (.safetensors, or a PyTorch .pth state_dict)
    #[arg(long, value_name = "M.safetensors")]
    model: PathBuf,
    /// Force a torchvision architecture (resnet18/34/50/101/152, vgg11/13/16/19[_bn], mobilenet_v2, alexnet)
    #[arg(long, value_name = "NAME")]
    arch: Option<String>,
    /// Describe a custom model with a graph JSON file
    #[arg(long, value_name = "G.json")]
    graph: Option<PathBuf>,
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors with `inputs` [N,C,H,W] f32 (normalised) and optionally `targets` (int64/int32)
    #[arg(
        long,
        value_name = "X.safetensors",
        required_unless_present = "image",
        conflicts_with = "image"
    )]
    input: Option<PathBuf>,
    /// A photo (png/jpg/jpeg/webp) or a folder of photos; ImageNet preprocessing, heatmap PNGs out
    #[arg(long, value_name = "PHOTO|DIR")]
    image: Option<PathBuf>,
    /// The attribution method (see `candle-xai methods`)
    #[arg(long, value_name = "NAME")]
    method: String,
    /// Explain this class for every sample (default: `targets` from the input, else the top-1 prediction)
    #[arg(long, value_name = "N")]
    target: Option<i64>,
    /// Attribute to this layer's output (layer attribution; Grad-CAM's layer)
    #[arg(long, value_name = "NAME")]
    layer: Option<String>,
    /// cpu; wgpu (our WGSL kernels on the default Vulkan/Metal/DX12/GL adapter); or cuda
    /// (cuda:N) when built with the `cuda` feature
    #[arg(long, value_name = "cpu|wgpu|cuda", default_value = "cpu")]
    device: String,
    /// Print one JSON line with load and explain times on stderr
    #[arg(long)]
    timings: bool,
    /// Output: OUT.safetensors with --input; a PNG (or a folder, for a folder of photos) with --image
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
    /// Heatmap colours (with --image) [default: bwr; hot for grad-cam]
    #[arg(
        long,
        value_name = "bwr|hot|gray|positive",
        help_heading = "Heatmap options (--image)"
    )]
    colormap: Option<String>,
    /// Heatmap opacity over the photo, 0..1 (with --image) [default: 0.5]
    #[arg(long, value_name = "A", help_heading = "Heatmap options (--image)")]
    alpha: Option<f32>,
    #[command(flatten)]
    options: MethodOptions,
}

#[derive(Args, Default)]
#[command(next_help_heading = "Method options")]
struct MethodOptions {
    /// gradient, smoothgrad: absolute value of the gradient
    #[arg(long)]
    abs: bool,
    /// smoothgrad: number of noisy samples [default: 20]
    #[arg(long, value_name = "N")]
    n_iter: Option<usize>,
    /// smoothgrad: noise std relative to each sample's value range (max - min) [default: 0.1]
    #[arg(long, value_name = "L")]
    noise_level: Option<f64>,
    /// smoothgrad: absolute noise std (instead of --noise-level)
    #[arg(long, value_name = "S")]
    stdev: Option<f64>,
    /// smoothgrad, integrated-gradients with a uniform baseline: random seed [default: 0]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// smoothgrad: mean (SmoothGrad), squared (SmoothGrad-squared) or variance (VarGrad) [default: mean]
    #[arg(long, value_name = "mean|squared|variance")]
    smoothgrad_type: Option<String>,
    /// integrated-gradients: number of steps [default: 50]
    #[arg(long, value_name = "N")]
    n_steps: Option<usize>,
    /// integrated-gradients: gausslegendre, riemann-left, riemann-right, riemann-middle, riemann-trapezoid
    #[arg(long, value_name = "RULE")]
    ig_method: Option<String>,
    /// integrated-gradients: zero, <float>, blur:<sigma> or uniform:<low>:<high> [default: zero]
    #[arg(long, value_name = "B")]
    baseline: Option<String>,
    /// integrated-gradients: return the path integral without multiplying by (input - baseline)
    #[arg(long)]
    no_multiply_by_inputs: bool,
    /// smoothgrad, integrated-gradients: rows per forward/backward pass
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// grad-cam: keep negative values (no ReLU on the map)
    #[arg(long)]
    no_relu: bool,
    /// grad-cam: keep the layer's resolution (no bilinear upsampling to the input)
    #[arg(long)]
    no_upsample: bool,
    /// lrp-*: epsilon of the Epsilon rule
    #[arg(long, value_name = "E")]
    epsilon: Option<f64>,
    /// lrp-epsilon-gamma-box: gamma of the Gamma rule [default: 0.25]
    #[arg(long, value_name = "G")]
    gamma: Option<f64>,
    /// lrp-epsilon-gamma-box: ZBox lower bound, one value or one per channel (v1,v2,v3) [default: -3]
    #[arg(long, value_name = "V")]
    low: Option<String>,
    /// lrp-epsilon-gamma-box: ZBox upper bound, one value or one per channel [default: 3]
    #[arg(long, value_name = "V")]
    high: Option<String>,
    /// lrp-*: start from the target's logit instead of 1
    #[arg(long)]
    start_from_logit: bool,
    /// lrp-*: what remains of a merged BatchNorm: exact (zennit >= 1.0) or keep-eps (zennit 0.5)
    #[arg(long, value_name = "exact|keep-eps")]
    bn_merge: Option<String>,
}

/// What can go wrong in the command, beyond the engine's own errors.
#[derive(Debug)]
enum CliError {
    Engine(Error),
    /// An option that does not fit the rest of the command line.
    Usage(String),
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Some photos of a folder failed (each already reported).
    SomeFailed {
        failed: usize,
        total: usize,
    },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Engine(e) => e.fmt(f),
            CliError::Usage(message) => f.write_str(message),
            CliError::Write { path, source } => write!(f, "could not write {}: {source}", path.display()),
            CliError::SomeFailed { failed, total } => write!(f, "{failed} of {total} images failed"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Engine(e) => e.source(),
            CliError::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Engine(e)
    }
}

impl From<candle_core::Error> for CliError {
    fn from(e: candle_core::Error) -> Self {
        CliError::Engine(Error::Tensor(e))
    }
}

type CliResult<T> = Result<T, CliError>;

/// The error's message followed by the messages of its sources that it does not already include.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Output piped into a reader that stops early (`| head`) makes `println!` panic: stay
    // quiet then, as a command killed by SIGPIPE would.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(&panic_message(info.payload())) {
            default_hook(info);
        }
    }));
    // Any other panic is a bug; report it as an error rather than abort with a backtrace prompt.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli.command)));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(1)
        }
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            if is_broken_pipe(&message) {
                return ExitCode::from(141);
            }
            eprintln!("error: internal error (a bug in candle-xai, please report it): {message}");
            ExitCode::from(1)
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

fn is_broken_pipe(message: &str) -> bool {
    message.contains("failed printing to stdout") && message.contains("Broken pipe")
}

fn run(command: Command) -> CliResult<()> {
    match command {
        Command::Explain(args) => run_explain(&args),
        Command::Convert { input, output } => convert(&input, &output),
        Command::Layers(args) => layers(&args),
        Command::Methods => methods(),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

fn read(path: &Path) -> CliResult<Vec<u8>> {
    std::fs::read(path).map_err(|source| {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

fn write(path: &Path, bytes: &[u8]) -> CliResult<()> {
    std::fs::write(path, bytes).map_err(|source| CliError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// `cpu`, `cuda`/`cuda:N` (candle) or `wgpu` (our WGSL kernels on the default adapter).
fn parse_device(name: &str) -> CliResult<candle_xai::Device> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(candle_xai::Device::cpu());
    }
    if name == "wgpu" || name == "webgpu" {
        return open_wgpu();
    }
    let ordinal = match name.as_str() {
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(Error::Device(format!("unknown device `{other}`; use cpu, wgpu, cuda or cuda:N")).into()),
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Device(
            "this candle-xai was built without CUDA support; rebuild it with `cargo build --release --features cuda`, \
             or use --device cpu"
                .into(),
        )
        .into());
    }
    Device::new_cuda(ordinal)
        .map(candle_xai::Device::from)
        .map_err(|e| Error::Device(format!("could not open CUDA device {ordinal}: {e}")).into())
}

#[cfg(feature = "wgpu")]
fn open_wgpu() -> CliResult<candle_xai::Device> {
    Ok(candle_xai::Device::Wgpu(candle_xai::backend::wgpu::WgpuDevice::new()?))
}

#[cfg(not(feature = "wgpu"))]
fn open_wgpu() -> CliResult<candle_xai::Device> {
    Err(Error::Device("this candle-xai was built without the `wgpu` feature; use --device cpu".into()).into())
}

/// Loads the model on the host, then puts its weights on `device` once.
fn load_model(args: &ModelArgs, device: &candle_xai::Device) -> CliResult<Model> {
    let graph = match &args.graph {
        Some(path) => {
            let bytes = read(path)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::InvalidGraph(format!("{} is not a UTF-8 text file", path.display())))?;
            let spec = GraphSpec::from_json(&text).map_err(|e| match e {
                Error::InvalidGraph(reason) => Error::InvalidGraph(format!("{}: {reason}", path.display())),
                other => other,
            })?;
            Some(spec)
        }
        None => None,
    };
    let options = LoadOptions {
        arch: args.arch.clone(),
        graph,
    };
    Ok(Model::load(&args.model, &options, &Device::Cpu)?.to_device(device)?)
}

/// `inputs` as f32 and `targets` (when present) from a safetensors file.
fn read_inputs(path: &Path) -> CliResult<(Tensor, Option<Vec<i64>>)> {
    let bytes = read(path)?;
    let what = path.display().to_string();
    if bytes.is_empty() {
        return Err(Error::EmptyFile { what }.into());
    }
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::InvalidSafetensors {
        what: what.clone(),
        reason: e.to_string(),
    })?;
    let missing = |name: &str| Error::MissingTensor {
        name: name.into(),
        what: what.clone(),
    };
    let view = file.tensor("inputs").map_err(|_| missing("inputs"))?;
    use safetensors::Dtype as S;
    let dtype = match view.dtype() {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        other => {
            return Err(Error::TensorDtype {
                name: "inputs".into(),
                expected: "f32 (or another floating-point type)".into(),
                found: format!("{other:?}"),
            }
            .into())
        }
    };
    let inputs = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?.to_dtype(DType::F32)?;
    let targets = match file.tensor("targets") {
        Err(_) => None,
        Ok(view) => {
            if view.shape().len() > 1 {
                return Err(Error::TensorShape {
                    name: "targets".into(),
                    expected: "[N] (one class per sample)".into(),
                    found: view.shape().to_vec(),
                }
                .into());
            }
            let dtype = match view.dtype() {
                S::I64 => DType::I64,
                S::I32 => DType::I32,
                S::U8 => DType::U8,
                S::U32 => DType::U32,
                other => {
                    return Err(Error::TensorDtype {
                        name: "targets".into(),
                        expected: "int64 or int32".into(),
                        found: format!("{other:?}"),
                    }
                    .into())
                }
            };
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?;
            let values = if dtype == DType::I32 {
                // candle has no i32 -> i64 cast on every backend; widen by hand.
                view.data()
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                    .collect()
            } else {
                t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?
            };
            Some(values)
        }
    };
    Ok((inputs, targets))
}

// ---------------------------------------------------------------------------------------------
// Methods and their options

/// Which methods use an option.
fn uses(flag: &str, method: &Method) -> bool {
    match flag {
        "--abs" => matches!(method, Method::Gradient(_) | Method::SmoothGrad(_)),
        "--n-iter" | "--noise-level" | "--stdev" | "--smoothgrad-type" => matches!(method, Method::SmoothGrad(_)),
        "--seed" | "--batch-size" => matches!(method, Method::SmoothGrad(_) | Method::IntegratedGradients(_)),
        "--n-steps" | "--ig-method" | "--baseline" | "--no-multiply-by-inputs" => {
            matches!(method, Method::IntegratedGradients(_))
        }
        "--no-relu" | "--no-upsample" => matches!(method, Method::GradCam(_)),
        "--epsilon" | "--start-from-logit" | "--bn-merge" => matches!(method, Method::Lrp(_)),
        "--gamma" | "--low" | "--high" => {
            matches!(method, Method::Lrp(p) if p.composite == Composite::EpsilonGammaBox)
        }
        _ => false,
    }
}

const METHOD_FLAGS: [&str; 19] = [
    "--abs",
    "--n-iter",
    "--noise-level",
    "--stdev",
    "--seed",
    "--smoothgrad-type",
    "--n-steps",
    "--ig-method",
    "--baseline",
    "--no-multiply-by-inputs",
    "--batch-size",
    "--no-relu",
    "--no-upsample",
    "--epsilon",
    "--gamma",
    "--low",
    "--high",
    "--start-from-logit",
    "--bn-merge",
];

fn methods_using(flag: &str) -> Vec<&'static str> {
    Method::NAMES
        .into_iter()
        .filter(|name| Method::from_name(name).is_ok_and(|m| uses(flag, &m)))
        .collect()
}

impl MethodOptions {
    /// The method flags present on the command line.
    fn given(&self) -> Vec<&'static str> {
        let present = [
            self.abs,
            self.n_iter.is_some(),
            self.noise_level.is_some(),
            self.stdev.is_some(),
            self.seed.is_some(),
            self.smoothgrad_type.is_some(),
            self.n_steps.is_some(),
            self.ig_method.is_some(),
            self.baseline.is_some(),
            self.no_multiply_by_inputs,
            self.batch_size.is_some(),
            self.no_relu,
            self.no_upsample,
            self.epsilon.is_some(),
            self.gamma.is_some(),
            self.low.is_some(),
            self.high.is_some(),
            self.start_from_logit,
            self.bn_merge.is_some(),
        ];
        METHOD_FLAGS
            .iter()
            .zip(present)
            .filter(|(_, p)| *p)
            .map(|(f, _)| *f)
            .collect()
    }
}

fn invalid(parameter: &str, reason: impl Into<String>) -> CliError {
    Error::InvalidParameter {
        parameter: parameter.into(),
        reason: reason.into(),
    }
    .into()
}

fn parse_bound(flag: &str, text: &str) -> CliResult<Bound> {
    let values = text
        .split(',')
        .map(|v| v.trim().parse::<f64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            invalid(
                flag,
                format!("`{text}` is not a number or a comma-separated list of numbers"),
            )
        })?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(invalid(flag, format!("`{text}` is not finite")));
    }
    Ok(match values.as_slice() {
        [v] => Bound::Scalar(*v),
        _ => Bound::PerChannel(values),
    })
}

fn parse_baseline(text: &str, seed: u64) -> CliResult<Baseline> {
    let bad = || {
        invalid(
            "--baseline",
            format!("expected zero, a number, blur:<sigma> or uniform:<low>:<high>; got `{text}`"),
        )
    };
    let number = |s: &str| s.trim().parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(bad);
    let parts: Vec<&str> = text.split(':').collect();
    Ok(match parts.as_slice() {
        ["zero"] => Baseline::Zero,
        ["blur", sigma] => Baseline::Blur { sigma: number(sigma)? },
        ["uniform", low, high] => Baseline::UniformNoise {
            low: number(low)?,
            high: number(high)?,
            seed,
        },
        [value] => Baseline::Constant { value: number(value)? },
        _ => return Err(bad()),
    })
}

/// The method named `name` with the command line's options, after checking that each option
/// given is one the method uses.
fn build_method(name: &str, o: &MethodOptions) -> CliResult<Method> {
    let mut method = Method::from_name(name)?;
    let canonical = method.name();
    for flag in o.given() {
        if !uses(flag, &method) {
            return Err(CliError::Usage(format!(
                "option {flag} does not apply to method `{canonical}`; it is used by {}",
                methods_using(flag).join(", ")
            )));
        }
    }
    if o.batch_size == Some(0) {
        return Err(invalid("--batch-size", "must be at least 1"));
    }
    match &mut method {
        Method::Gradient(p) => p.abs = o.abs,
        Method::InputXGradient => {}
        Method::SmoothGrad(p) => {
            if o.stdev.is_some() && o.noise_level.is_some() {
                return Err(CliError::Usage(
                    "give either --noise-level (relative) or --stdev (absolute), not both".into(),
                ));
            }
            p.abs = o.abs;
            if let Some(n) = o.n_iter {
                p.n_samples = n;
            }
            if let Some(l) = o.noise_level {
                p.noise_level = l;
            }
            p.stdev = o.stdev;
            if let Some(s) = o.seed {
                p.seed = s;
            }
            if let Some(kind) = &o.smoothgrad_type {
                p.aggregate = match kind.to_ascii_lowercase().as_str() {
                    "mean" | "smoothgrad" => Aggregate::Mean,
                    "squared" | "smoothgrad_sq" | "smoothgrad-sq" => Aggregate::Squared,
                    "variance" | "vargrad" => Aggregate::Variance,
                    other => {
                        return Err(invalid(
                            "--smoothgrad-type",
                            format!("`{other}`; expected mean, squared or variance"),
                        ))
                    }
                };
            }
            p.batch_size = o.batch_size;
            p.validate()?;
        }
        Method::IntegratedGradients(p) => {
            if let Some(n) = o.n_steps {
                p.n_steps = n;
            }
            if let Some(rule) = &o.ig_method {
                p.quadrature = Quadrature::parse(rule).ok_or_else(|| {
                    invalid(
                        "--ig-method",
                        format!(
                            "`{rule}`; expected one of {}",
                            Quadrature::ALL.map(Quadrature::name).join(", ")
                        ),
                    )
                })?;
            }
            if let Some(b) = &o.baseline {
                p.baseline = parse_baseline(b, o.seed.unwrap_or(0))?;
            }
            if o.seed.is_some() && !matches!(p.baseline, Baseline::UniformNoise { .. }) {
                return Err(CliError::Usage(
                    "option --seed is used by integrated-gradients only with --baseline uniform:<low>:<high>".into(),
                ));
            }
            p.multiply_by_inputs = !o.no_multiply_by_inputs;
            p.batch_size = o.batch_size;
        }
        Method::GradCam(p) => {
            p.relu = !o.no_relu;
            p.upsample = !o.no_upsample;
        }
        Method::Lrp(p) => {
            if let Some(e) = o.epsilon {
                p.params.epsilon = e;
            }
            if let Some(g) = o.gamma {
                p.params.gamma = g;
            }
            if let Some(low) = &o.low {
                p.params.low = parse_bound("--low", low)?;
            }
            if let Some(high) = &o.high {
                p.params.high = parse_bound("--high", high)?;
            }
            p.start_from_logit = o.start_from_logit;
            if let Some(m) = &o.bn_merge {
                p.merge_convention = match m.to_ascii_lowercase().as_str() {
                    "exact" => MergeConvention::Exact,
                    "keep-eps" | "keep_eps" => MergeConvention::KeepEps,
                    other => return Err(invalid("--bn-merge", format!("`{other}`; expected exact or keep-eps"))),
                };
            }
            p.validate()?;
        }
    }
    Ok(method)
}

// ---------------------------------------------------------------------------------------------
// explain

fn run_explain(args: &ExplainArgs) -> CliResult<()> {
    let method = build_method(&args.method, &args.options)?;
    if args.input.is_some() {
        for (flag, given) in [
            ("--colormap", args.colormap.is_some()),
            ("--alpha", args.alpha.is_some()),
        ] {
            if given {
                return Err(CliError::Usage(format!(
                    "option {flag} applies to --image (heatmap PNGs), not to --input"
                )));
            }
        }
    }
    let colormap = match &args.colormap {
        Some(name) => Colormap::parse(name)?,
        None if matches!(method, Method::GradCam(_)) => Colormap::Hot,
        None => Colormap::Bwr,
    };
    let alpha = args.alpha.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&alpha) {
        return Err(invalid("--alpha", format!("{alpha} is not between 0 and 1")));
    }
    let device = parse_device(&args.device)?;

    let started = Instant::now();
    let model = load_model(&args.model, &device)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;

    let request = Request {
        method,
        targets: Targets::TopPrediction,
        layer: args.layer.clone(),
    };
    if let Some(layer) = &request.layer {
        model.graph().find(layer)?;
    }
    let explain_ms = match (&args.input, &args.image) {
        (Some(input), _) => explain_tensors(&model, request, input, args)?,
        (None, Some(image)) => explain_photos(&model, request, image, &args.out, args.target, colormap, alpha)?,
        (None, None) => return Err(CliError::Usage("give --input X.safetensors or --image PHOTO".into())),
    };
    if args.timings {
        let line = serde_json::json!({
            "load_ms": load_ms,
            "explain_ms": explain_ms,
            "method": request_method_name(&args.method),
            "device": device.describe(),
        });
        eprintln!("{line}");
    }
    Ok(())
}

fn request_method_name(name: &str) -> String {
    Method::from_name(name)
        .map(|m| m.name())
        .unwrap_or_else(|_| name.to_string())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs `explain`, showing its progress; returns the explanation and the milliseconds it took.
fn timed_explain(
    model: &Model,
    input: &Tensor,
    request: &Request,
    bar: Option<&ProgressBar>,
) -> CliResult<(Explanation, f64)> {
    let started = Instant::now();
    let explanation = match bar {
        Some(bar) => {
            let mut report = |done: usize, total: usize| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                true
            };
            explain(model, input, request, &mut Progress::new(&mut report))?
        }
        None => explain(model, input, request, &mut Progress::none())?,
    };
    Ok((explanation, started.elapsed().as_secs_f64() * 1e3))
}

/// A tensor as safetensors stores it.
struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

impl Raw {
    /// f32 (or i64) bytes of `t`, on the CPU.
    fn new(t: &Tensor) -> CliResult<Self> {
        let t = t.to_device(&Device::Cpu)?;
        let shape = t.dims().to_vec();
        let flat = t.flatten_all()?;
        let (dtype, data) = if t.dtype() == DType::I64 {
            let v = flat.to_vec1::<i64>()?;
            (
                safetensors::Dtype::I64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        } else {
            let v = flat.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            (
                safetensors::Dtype::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        };
        Ok(Self { dtype, shape, data })
    }
}

fn safetensors_bytes(tensors: &[(String, Raw)], what: &str) -> CliResult<Vec<u8>> {
    safetensors::serialize(tensors.iter().map(|(name, raw)| (name.as_str(), raw)), None).map_err(|e| {
        Error::InvalidSafetensors {
            what: what.into(),
            reason: e.to_string(),
        }
        .into()
    })
}

fn explain_tensors(model: &Model, mut request: Request, input: &Path, args: &ExplainArgs) -> CliResult<f64> {
    let (inputs, file_targets) = read_inputs(input)?;
    request.targets = match (args.target, file_targets) {
        (Some(t), _) => Targets::Classes(vec![t]),
        (None, Some(ts)) => Targets::Classes(ts),
        (None, None) => Targets::TopPrediction,
    };
    let bar = progress_bar(1, "{spinner} explaining [{bar:40}] {pos}/{len} ({elapsed})");
    let (explanation, explain_ms) = timed_explain(model, &inputs, &request, Some(&bar))?;
    bar.finish_and_clear();

    let n = explanation.targets.len();
    let targets = Tensor::from_vec(
        explanation.targets.iter().map(|&t| t as i64).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )?;
    let mut tensors = vec![
        ("attributions".to_string(), Raw::new(&explanation.attributions)?),
        ("logits".to_string(), Raw::new(&explanation.logits)?),
        ("targets".to_string(), Raw::new(&targets)?),
    ];
    if let Some(delta) = &explanation.convergence_delta {
        tensors.push(("convergence_delta".to_string(), Raw::new(delta)?));
    }
    let out = &args.out;
    write(out, &safetensors_bytes(&tensors, &out.display().to_string())?)?;
    println!(
        "wrote {}: attributions {:?} ({}, {} sample{})",
        out.display(),
        explanation.attributions.dims(),
        request.method.name(),
        n,
        if n == 1 { "" } else { "s" }
    );
    Ok(explain_ms)
}

fn is_photo(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["png", "jpg", "jpeg", "webp"].contains(&e.to_ascii_lowercase().as_str()))
}

fn explain_photos(
    model: &Model,
    mut request: Request,
    image: &Path,
    out: &Path,
    target: Option<i64>,
    colormap: Colormap,
    alpha: f32,
) -> CliResult<f64> {
    if model.input_channels() != 3 {
        return Err(CliError::Usage(format!(
            "--image needs a model that takes RGB images (3 input channels); this one takes {}. \
             Use --input with a prepared tensor instead",
            model.input_channels()
        )));
    }
    request.targets = match target {
        Some(t) => Targets::Classes(vec![t]),
        None => Targets::TopPrediction,
    };
    if !image.is_dir() {
        // One photo: --out is the PNG (or a folder to put <stem>.png in).
        let out = if out.is_dir() {
            out.join(png_name(image))
        } else {
            out.to_path_buf()
        };
        let photo = explain_photo(model, &request, image, &out, colormap, alpha)?;
        println!("{}", photo.summary);
        return Ok(photo.explain_ms);
    }
    let entries = std::fs::read_dir(image).map_err(|source| Error::Io {
        path: image.to_path_buf(),
        source,
    })?;
    let mut photos: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_photo(p))
        .collect();
    photos.sort();
    if photos.is_empty() {
        return Err(CliError::Usage(format!(
            "{} holds no png, jpg, jpeg or webp images",
            image.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|source| CliError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let bar = progress_bar(photos.len() as u64, "[{bar:40}] {pos}/{len} {wide_msg}");
    let mut failed = 0;
    let mut explain_ms = 0.0;
    for path in &photos {
        bar.set_message(path.file_name().unwrap_or_default().to_string_lossy().into_owned());
        match explain_photo(model, &request, path, &out.join(png_name(path)), colormap, alpha) {
            Ok(photo) => {
                explain_ms += photo.explain_ms;
                bar.suspend(|| println!("{}", photo.summary));
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("error: {}: {}", path.display(), error_chain(&e)));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if failed > 0 {
        return Err(CliError::SomeFailed {
            failed,
            total: photos.len(),
        });
    }
    Ok(explain_ms)
}

fn png_name(photo: &Path) -> PathBuf {
    let stem = photo.file_stem().unwrap_or_default();
    PathBuf::from(stem).with_extension("png")
}

struct PhotoResult {
    summary: String,
    explain_ms: f64,
}

fn explain_photo(
    model: &Model,
    request: &Request,
    path: &Path,
    out: &Path,
    colormap: Colormap,
    alpha: f32,
) -> CliResult<PhotoResult> {
    let bytes = read(path)?;
    let photo = candle_xai::image::decode(&bytes, &path.display().to_string())?;
    let prepared = candle_xai::image::imagenet_preprocess(&photo)?;
    let (explanation, explain_ms) = timed_explain(model, &prepared.tensor, request, None)?;
    let logits = explanation.logits.get(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let (predicted, probability) = top1_softmax(&logits);
    let attribution = explanation.attributions.get(0)?;
    let rendered = candle_xai::render::render(&prepared.image, &attribution, colormap, alpha)?;
    write(out, &candle_xai::render::encode_png(&rendered.image)?)?;
    let target = explanation.targets[0];
    let summary = format!(
        "{}: predicted class {predicted} (p = {probability:.4}); explained class {target} with {}; \
         heatmap range [{}, {}] -> {}",
        path.display(),
        request.method.name(),
        candle_xai::render::format_value(rendered.low),
        candle_xai::render::format_value(rendered.high),
        out.display()
    );
    Ok(PhotoResult { summary, explain_ms })
}

/// The arg-max class and its softmax probability.
fn top1_softmax(logits: &[f32]) -> (usize, f32) {
    let (best, max) =
        logits.iter().copied().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |acc, (i, v)| if v > acc.1 { (i, v) } else { acc },
        );
    let total: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    (best, 1.0 / total)
}

// ---------------------------------------------------------------------------------------------
// layers, methods, convert

fn layers(args: &ModelArgs) -> CliResult<()> {
    let model = load_model(args, &candle_xai::Device::cpu())?;
    println!("architecture: {}", model.architecture());
    let cam = model.default_cam_layer().ok();
    for (id, node) in model.graph().nodes().iter().enumerate().skip(1) {
        let note = if Some(id) == cam { "\t(Grad-CAM default)" } else { "" };
        println!("{}\t{}{note}", node.name, node.op.kind());
    }
    Ok(())
}

fn methods() -> CliResult<()> {
    let list: Vec<serde_json::Value> = Method::NAMES
        .iter()
        .map(|name| {
            let method = Method::from_name(name)?;
            let options: Vec<&str> = METHOD_FLAGS.iter().copied().filter(|f| uses(f, &method)).collect();
            Ok(serde_json::json!({
                "method": name,
                "tunables": tunables(&method),
                "options": options,
            }))
        })
        .collect::<Result<_, Error>>()?;
    println!(
        "{}",
        serde_json::to_string_pretty(&list).expect("JSON values always serialise")
    );
    Ok(())
}

fn convert(input: &Path, output: &Path) -> CliResult<()> {
    let bytes = read(input)?;
    let source = input.display().to_string();
    if bytes.is_empty() {
        return Err(Error::EmptyFile { what: source }.into());
    }
    let state = candle_xai::import::pth::state_dict_from_pth(&bytes, &source, &Device::Cpu)?;
    write(output, &state.to_safetensors(None)?)?;
    println!("wrote {} tensors to {}", state.names().count(), output.display());
    match Model::from_state_dict(&state, None, None, &Device::Cpu) {
        Ok(model) => println!("recognised architecture: {}", model.architecture()),
        Err(e) => println!(
            "note: not a recognised torchvision layout ({}); load it with --arch or --graph",
            error_chain(&e)
        ),
    }
    Ok(())
}
