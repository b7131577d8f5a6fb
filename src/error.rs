//! One error type for the whole engine. Every variant says, in the user's terms, what was
//! expected and what was found, so the CLI and the page can show it as it is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} is empty (0 bytes)")]
    EmptyFile { what: String },

    #[error(
        "{what} needs about {needed_mib} MiB of memory, more than the {budget_mib} MiB it may use: use a \
         smaller input or raise the memory limit"
    )]
    OverMemoryBudget {
        what: String,
        needed_mib: u64,
        budget_mib: u64,
    },

    #[error("{what} is larger than the {limit_mib} MiB candle-xai reads from one file")]
    FileTooLarge { what: String, limit_mib: u64 },

    #[error("{what} is not a valid safetensors file: {reason}")]
    InvalidSafetensors { what: String, reason: String },

    #[error("{what} is not a PyTorch checkpoint candle-xai can read: {reason}")]
    InvalidCheckpoint { what: String, reason: String },

    #[error("tensor `{name}` in {what} {reason}")]
    BadWeights { name: String, what: String, reason: String },

    #[error("tensor `{name}` is missing from {what}")]
    MissingTensor { name: String, what: String },

    #[error("tensor `{name}` has shape {found:?}, expected {expected}")]
    TensorShape {
        name: String,
        expected: String,
        found: Vec<usize>,
    },

    #[error("tensor `{name}` has dtype {found}, expected {expected}")]
    TensorDtype {
        name: String,
        expected: String,
        found: String,
    },

    #[error(
        "the weights fit no known architecture ({tried}); tensors that did not fit: {unmatched}. \
         Pass --arch NAME to force one, or describe the model with a graph JSON file"
    )]
    UnknownLayout { tried: String, unmatched: String },

    #[error("unknown architecture `{0}`; known: resnet18/34/50/101/152, vgg11/13/16/19[_bn], mobilenet_v2, alexnet")]
    UnknownArchitecture(String),

    #[error("architecture `{arch}` does not fit these weights: {reason}")]
    ArchitectureMismatch { arch: String, reason: String },

    #[error("invalid model graph: {0}")]
    InvalidGraph(String),

    #[error("layer `{layer}` ({kind}) is not supported: {reason}")]
    UnsupportedLayer {
        layer: String,
        kind: String,
        reason: String,
    },

    #[error("no layer named `{name}`; layers are: {available}")]
    UnknownLayerName { name: String, available: String },

    #[error("input has shape {found:?}; the model expects [N, {channels}, H, W] with N >= 1")]
    InputShape { found: Vec<usize>, channels: usize },

    #[error("input is {height}x{width} pixels, too small for this model (at least {min}x{min})")]
    InputTooSmall { height: usize, width: usize, min: usize },

    #[error(
        "input is {height}x{width} pixels; this model takes exactly {size}x{size} (its position embedding was \
         trained at that size)"
    )]
    InputSizeFixed { height: usize, width: usize, size: usize },

    /// A layer's window does not fit the feature map it receives: the input is too small.
    #[error(
        "the input is too small for this model: layer `{layer}` receives a {height}x{width} feature map \
         but needs at least {min}x{min}"
    )]
    FeatureMapTooSmall {
        layer: String,
        height: usize,
        width: usize,
        min: usize,
    },

    #[error(
        "layer `{layer}` ({kind}) expects {expected} but receives {found}: the input's size does not fit this model"
    )]
    InputSizeMismatch {
        layer: String,
        kind: String,
        expected: String,
        found: String,
    },

    /// A layer receives a shape its weights do not take, and no input size would change it.
    #[error(
        "layer {layer} expects {expected} but receives {found} {because}: the model's weights do not fit \
         together (a tensor from another model, or a graph that does not describe these weights)"
    )]
    WeightsDoNotFit {
        /// The layer's name and kind: "`fc` (Linear)".
        layer: String,
        expected: String,
        found: String,
        /// Why the shape is fixed: `from <layer>` or `at every input size`.
        because: String,
    },

    #[error("layer `{layer}` ({kind}): {message}")]
    InLayer {
        layer: String,
        kind: String,
        message: String,
    },

    #[error("input contains {0} non-finite values (NaN or infinity)")]
    NonFiniteInput(usize),

    #[error("target class {target} is out of range: the model has {num_classes} classes (0..={max})", max = num_classes - 1)]
    TargetOutOfRange { target: i64, num_classes: usize },

    #[error("{found} targets given for a batch of {batch}")]
    TargetCount { found: usize, batch: usize },

    #[error("invalid value for {parameter}: {reason}")]
    InvalidParameter { parameter: String, reason: String },

    #[error("{parameter} does not apply to method `{method}`; it is used by {used_by}")]
    ParameterNotApplicable {
        parameter: String,
        method: String,
        used_by: String,
    },

    #[error("`{value}` is not {what}; expected {expected}")]
    Unparsable {
        value: String,
        what: &'static str,
        expected: String,
    },

    #[error("unknown method `{name}`; known: {known}")]
    UnknownMethod { name: String, known: String },

    #[error("{0}")]
    Image(String),

    #[error("cancelled")]
    Cancelled,

    #[error("device: {0}")]
    Device(String),

    #[error("tensor shapes do not fit: {0}")]
    Shape(String),

    #[error("an operation mixed tensors of two devices")]
    DeviceMismatch,

    #[error("tensor computation failed: {}", candle_message(.0))]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is
/// set: a user gets the reason, not the engine's stack.
pub(crate) fn candle_message(error: &candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other.to_string(),
    }
}

impl Error {
    pub(crate) fn invalid_parameter(parameter: &str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter {
            parameter: parameter.to_string(),
            reason: reason.into(),
        }
    }

    /// The one of `all` whose `name` is `text`, in any case and with `_` for `-`; otherwise an
    /// error listing the names. Enum parameters parse with it.
    pub(crate) fn choose<T: Copy>(text: &str, what: &'static str, all: &[T], name: fn(T) -> &'static str) -> Result<T> {
        let canonical = text.trim().replace('_', "-").to_ascii_lowercase();
        all.iter()
            .copied()
            .find(|&choice| name(choice) == canonical)
            .ok_or_else(|| Self::unknown_choice(text, what, all.iter().map(|&c| name(c))))
    }

    /// `value` is not one of `choices`, the names of `what`.
    pub(crate) fn unknown_choice<'a>(
        value: &str,
        what: &'static str,
        choices: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Error::Unparsable {
            value: value.to_string(),
            what,
            expected: format!("one of {}", choices.into_iter().collect::<Vec<_>>().join(", ")),
        }
    }
}
