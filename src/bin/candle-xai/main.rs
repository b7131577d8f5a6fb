//! The `candle-xai` command: explain a model's predictions on prepared tensors or on photos,
//! list a model's layers and the methods, and convert PyTorch checkpoints to safetensors.

// The command is native-only; in a wasm32 build (the browser's, which compiles every target of the
// crate) this binary is empty and the page uses the library's wasm bindings instead.
#![cfg_attr(target_arch = "wasm32", no_main)]
#![cfg(not(target_arch = "wasm32"))]

mod evaluate;
mod method_flags;
mod tuning;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use candle_xai::files::{explanation_safetensors, read_inputs, top_k};
use candle_xai::import::graph_json::GraphSpec;
use candle_xai::methods::catalog;
use candle_xai::render::Style;
use candle_xai::{explain, Error, Explanation, LoadOptions, Method, Model, Progress, Request, Targets};
use method_flags::MethodFlags;

#[global_allocator]
static ALLOCATOR: candle_xai::allocator::Allocator = candle_xai::allocator::Allocator;

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
    /// Score attributions with evaluation metrics (pnpxai's MuFidelity, MoRF, LeRF, AbPC,
    /// Sensitivity, Complexity): from an explanation file, or from a method run here
    #[command(allow_negative_numbers = true)]
    Evaluate(Box<evaluate::EvaluateArgs>),
    /// Tune a method's parameters to maximise metrics (pnpxai's optimizer: TPE, median pruning)
    #[command(allow_negative_numbers = true)]
    Optimize(Box<tuning::OptimizeArgs>),
    /// Rank the methods that apply to a model by metrics
    Recommend(Box<tuning::RecommendArgs>),
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
    /// The most memory (MiB) the passes may hold at once on the CPU or CUDA; multi-pass methods
    /// split their passes to fit. Default: three quarters of the available memory
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u64).range(1..))]
    memory_limit: Option<u64>,
    /// Print one JSON line with load and explain times on stderr
    #[arg(long)]
    timings: bool,
    /// Output: OUT.safetensors with --input; a PNG (or a folder, for a folder of photos) with --image
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
    /// Heatmap colours (with --image) [default: bwr; hot for grad-cam and the attention methods]
    #[arg(
        long,
        value_name = "bwr|hot|gray|positive",
        help_heading = "Heatmap options (--image)"
    )]
    colormap: Option<String>,
    /// Which value the colour map's ends stand for (with --image): `outliers:P` clips P% of the
    /// attribution mass as captum does, `level:L` saturates at 1/L of the largest magnitude as
    /// zennit does [default: level:3 for LRP, outliers:2 for the other methods]
    #[arg(long, value_name = "outliers:P|level:L", help_heading = "Heatmap options (--image)")]
    scaling: Option<String>,
    /// Heatmap opacity over the photo, 0..1 (with --image) [default: 0.5]
    #[arg(long, value_name = "A", help_heading = "Heatmap options (--image)")]
    alpha: Option<f32>,
    #[command(flatten)]
    method_flags: MethodFlags,
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

/// The `producer` metadata of the files the command writes.
const PRODUCER: &str = concat!("candle-xai ", env!("CARGO_PKG_VERSION"));

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
    candle_xai::allocator::keep_freed_memory();
    // Fails only if something built rayon's pool first; the loops then still run, handed over.
    let _ = candle_xai::threads::join_kernel_pool();
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
        Command::Evaluate(args) => evaluate::run_evaluate(&args),
        Command::Optimize(args) => tuning::run_optimize(&args),
        Command::Recommend(args) => tuning::run_recommend(&args),
        Command::Convert { input, output } => convert(&input, &output),
        Command::Layers(args) => layers(&args),
        Command::Methods => methods(),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

fn read(path: &Path) -> CliResult<Vec<u8>> {
    Ok(candle_xai::limits::read_file(path)?)
}

fn write(path: &Path, bytes: &[u8]) -> CliResult<()> {
    std::fs::write(path, bytes).map_err(|source| CliError::Write {
        path: path.to_path_buf(),
        source,
    })
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

// ---------------------------------------------------------------------------------------------
// explain

fn run_explain(args: &ExplainArgs) -> CliResult<()> {
    let method = args.method_flags.method(&args.method)?;
    if args.input.is_some() {
        for (flag, given) in [
            ("--colormap", args.colormap.is_some()),
            ("--scaling", args.scaling.is_some()),
            ("--alpha", args.alpha.is_some()),
        ] {
            if given {
                return Err(CliError::Usage(format!(
                    "option {flag} applies to --image (heatmap PNGs), not to --input"
                )));
            }
        }
    }
    let defaults = method
        .default_style()
        .overridden(args.colormap.as_deref(), args.scaling.as_deref())?;
    let alpha = args.alpha.unwrap_or(defaults.alpha);
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::InvalidParameter {
            parameter: "--alpha".into(),
            reason: format!("{alpha} is not between 0 and 1"),
        }
        .into());
    }
    let style = Style { alpha, ..defaults };
    let device = candle_xai::Device::open(&args.device)?;

    let started = Instant::now();
    let model = load_model(&args.model, &device)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;

    let method_name = method.name();
    let request = Request {
        method,
        targets: Targets::TopPrediction,
        layer: args.layer.clone(),
        memory_limit: args.memory_limit.map(|mib| mib.saturating_mul(1 << 20)),
        share: None,
    };
    if let Some(layer) = &request.layer {
        model.graph().find(layer)?;
    }
    let explain_ms = match (&args.input, &args.image) {
        (Some(input), _) => explain_tensors(&model, request, input, args)?,
        (None, Some(image)) => explain_photos(&model, request, image, &args.out, args.target, style)?,
        (None, None) => return Err(CliError::Usage("give --input X.safetensors or --image PHOTO".into())),
    };
    if args.timings {
        let line = serde_json::json!({
            "load_ms": load_ms,
            "explain_ms": explain_ms,
            "method": method_name,
            "device": device.describe(),
        });
        eprintln!("{line}");
    }
    Ok(())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A progress callback that moves `bar`.
fn bar_progress(bar: &ProgressBar) -> impl FnMut(usize, usize) -> bool + '_ {
    |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        true
    }
}

/// The classes to explain: `--target` for every sample, else the file's `targets`, else
/// each sample's top-1 prediction.
fn targets_from(flag: Option<i64>, file: Option<Vec<i64>>) -> Targets {
    match (flag, file) {
        (Some(t), _) => Targets::Classes(vec![t]),
        (None, Some(ts)) => Targets::Classes(ts),
        (None, None) => Targets::TopPrediction,
    }
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
            let mut report = bar_progress(bar);
            explain(model, input, request, &mut Progress::new(&mut report))?
        }
        None => explain(model, input, request, &mut Progress::none())?,
    };
    Ok((explanation, started.elapsed().as_secs_f64() * 1e3))
}

fn explain_tensors(model: &Model, mut request: Request, input: &Path, args: &ExplainArgs) -> CliResult<f64> {
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(CliError::Usage(format!(
            "--out {}: the explanation of an input tensor file is written as .safetensors",
            args.out.display()
        )));
    }
    let file = read_inputs(&read(input)?, &input.display().to_string())?;
    request.targets = targets_from(args.target, file.targets);
    let bar = progress_bar(1, "{spinner} explaining [{bar:40}] {pos}/{len} ({elapsed})");
    let (explanation, explain_ms) = timed_explain(model, &file.inputs, &request, Some(&bar))?;
    bar.finish_and_clear();

    let n = explanation.targets.len();
    let out = &args.out;
    write(out, &explanation_safetensors(&explanation, PRODUCER)?)?;
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
    style: Style,
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
        // Refused before the work, not after it.
        candle_xai::render::format_for(&out.display().to_string())?;
        let photo = explain_photo(model, &request, image, &out, style)?;
        println!("{}", photo.summary);
        return Ok(photo.explain_ms);
    }
    let photos = photos_in(image)?;
    std::fs::create_dir_all(out).map_err(|source| CliError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let bar = progress_bar(photos.len() as u64, "[{bar:40}] {pos}/{len} {wide_msg}");
    let mut failed = 0;
    let mut explain_ms = 0.0;
    for path in &photos {
        bar.set_message(path.file_name().unwrap_or_default().to_string_lossy().into_owned());
        match explain_photo(model, &request, path, &out.join(png_name(path)), style) {
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

/// The photo `input`, or the photos in the folder `input` (sorted); an error when there are none.
fn photos_in(input: &Path) -> CliResult<Vec<PathBuf>> {
    if !input.is_dir() {
        return match is_photo(input) {
            true => Ok(vec![input.to_path_buf()]),
            false => Err(CliError::Usage(format!(
                "--input {}: give a .safetensors tensor file, a png/jpg/jpeg/webp photo or a folder of them",
                input.display()
            ))),
        };
    }
    let entries = std::fs::read_dir(input).map_err(|source| Error::Io {
        path: input.to_path_buf(),
        source,
    })?;
    let mut photos: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_photo(p))
        .collect();
    photos.sort();
    match photos.is_empty() {
        true => Err(CliError::Usage(format!(
            "{} holds no png, jpg, jpeg or webp images",
            input.display()
        ))),
        false => Ok(photos),
    }
}

fn png_name(photo: &Path) -> PathBuf {
    let stem = photo.file_stem().unwrap_or_default();
    PathBuf::from(stem).with_extension("png")
}

struct PhotoResult {
    summary: String,
    explain_ms: f64,
}

fn explain_photo(model: &Model, request: &Request, path: &Path, out: &Path, style: Style) -> CliResult<PhotoResult> {
    let bytes = read(path)?;
    let photo = candle_xai::image::decode(&bytes, &path.display().to_string())?;
    let prepared = candle_xai::image::imagenet_preprocess_at(&photo, model.input_size())?;
    let (explanation, explain_ms) = timed_explain(model, &prepared.tensor, request, None)?;
    let logits = explanation.logits.get(0)?.to_vec1::<f32>()?;
    let (predicted, probability) = top_k(&logits, 1)[0];
    let attribution = explanation.attributions.get(0)?;
    let rendered = candle_xai::render::render(&prepared.image, &attribution, style)?;
    let format = candle_xai::render::format_for(&out.display().to_string())?;
    write(out, &candle_xai::render::encode(&rendered.image, format)?)?;
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

/// The methods' schema (`candle_xai::methods::catalog`), each entry with its `method` name and
/// the `options` (flags) that set its parameters.
fn methods() -> CliResult<()> {
    let list = catalog()
        .into_iter()
        .map(|info| {
            let method = Method::from_name(&info.name)?;
            let mut entry = serde_json::to_value(&info).expect("the catalog serialises: its maps have string keys");
            entry["method"] = info.name.clone().into();
            entry["options"] = MethodFlags::applicable(&method).into();
            Ok(entry)
        })
        .collect::<Result<Vec<_>, Error>>()?;
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
