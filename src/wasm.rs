//! The JavaScript API of the browser build (wasm32 only): a thin shell over the library.
//!
//! Everything here runs inside a Web Worker (`web/worker.js`); the page talks to the worker
//! with messages. Every function returns `Result<_, JsError>` carrying the engine's own error
//! message, so nothing panics across the boundary; a panic (a bug) is still reported on the
//! console by `console_error_panic_hook`.
//!
//! Tensors cross the boundary as flat `Float32Array`s with a separate shape array.

use std::rc::Rc;

use candle_core::{DType, Device, Tensor};
use js_sys::{Array, Float32Array, Function, Object, Promise, Reflect, Uint8Array, Uint8ClampedArray};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::error::Error;
use crate::files;
use crate::import::graph_json::GraphSpec;
use crate::methods::catalog;
use crate::metrics::{evaluate_async, EvaluationRequest, Metric, Pooling};
use crate::render::{self, Colormap, Style};
use crate::tuning::{optimize_async, Objective, OptimizeRequest};
use crate::{explain_async, Explanation, LoadOptions, Method, Model, Progress, Request, Share, Targets};

/// Rows per forward/backward pass in the browser when a method's JSON does not say: bounds the
/// memory of a pass (each MobileNetV2 row keeps ~100 MB of activations) and gives the progress
/// bar a step every few IG steps / SmoothGrad samples. It does not change the result.
pub const WEB_ROWS_PER_PASS: usize = 4;

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// An engine error as a JavaScript `Error`. GPU failures (a lost device, a kernel the driver
/// refused, memory exhausted) are named `DeviceError`, so the page can fall back to the CPU.
fn engine_error(e: Error) -> JsValue {
    let error = js_sys::Error::new(&e.to_string());
    if matches!(e, Error::Device(_)) {
        error.set_name("DeviceError");
    }
    error.into()
}

type JsResult<T> = Result<T, JsError>;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The crate's version, for the page's footer and for bug reports.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn set(object: &Object, key: &str, value: impl Into<JsValue>) -> JsResult<()> {
    Reflect::set(object, &JsValue::from_str(key), &value.into())
        .map(|_| ())
        .map_err(|_| JsError::new(&format!("could not set `{key}` on a result object")))
}

fn shape_array(dims: &[usize]) -> Array {
    dims.iter().map(|&d| JsValue::from(d as u32)).collect()
}

fn to_dims(shape: &[u32]) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}

/// A tensor from flat values and a shape, checking that they agree.
fn tensor(values: &[f32], shape: &[u32], what: &str) -> JsResult<Tensor> {
    let dims = to_dims(shape);
    let count: usize = dims.iter().product();
    if count != values.len() {
        return Err(JsError::new(&format!(
            "{what} has {} values but shape {dims:?} needs {count}",
            values.len()
        )));
    }
    Tensor::from_slice(values, dims, &Device::Cpu).map_err(js_error)
}

/// Calls the page's `progress(done, total)`; its returning `false` cancels the run.
fn progress_reporter(progress: Option<Function>) -> impl FnMut(usize, usize) -> bool {
    move |done, total| match &progress {
        Some(f) => f
            .call2(
                &JsValue::NULL,
                &JsValue::from(done as u32),
                &JsValue::from(total as u32),
            )
            .map(|r| r != JsValue::FALSE)
            .unwrap_or(true),
        None => true,
    }
}

fn flat(t: &Tensor) -> JsResult<Vec<f32>> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(js_error)
}

// -------------------------------------------------------------------------------------------
// Methods

/// Every method: `[{name, label, help, method, defaults, parameters, tunables}]` as JSON, the
/// engine's method schema (`candle-xai methods` prints the same), where `method` (as `defaults`)
/// is the method's default parameters as `explain` accepts them.
#[wasm_bindgen]
pub fn methods() -> JsResult<String> {
    let list: Vec<serde_json::Value> = catalog()
        .into_iter()
        .map(|info| {
            let mut entry = serde_json::to_value(&info).map_err(js_error)?;
            entry["method"] = entry["defaults"].clone();
            Ok(entry)
        })
        .collect::<JsResult<_>>()?;
    serde_json::to_string(&list).map_err(js_error)
}

/// Every metric: `[{name, higher_is_better, parameters}]` as JSON, each parameter as the
/// methods' are (`{key, kind, label, help, default, min?, max?, choices?}`); the seed is the
/// request's.
#[wasm_bindgen(js_name = metricCatalog)]
pub fn metric_catalog() -> JsResult<String> {
    serde_json::to_string(&Metric::catalog()).map_err(js_error)
}

/// The method called `name` with its defaults, overridden by the fields of `params_json` (a JSON
/// object such as `{"n_steps": 16}`; empty or `{}` for the defaults). Rows per pass default to
/// [`WEB_ROWS_PER_PASS`].
pub fn build_method(name: &str, params_json: &str) -> Result<Method, Error> {
    let mut overrides = match params_json.trim() {
        "" => serde_json::Value::Object(Default::default()),
        text => serde_json::from_str(text)
            .map_err(|e| Error::invalid_parameter("parameters", format!("not valid JSON: {e}")))?,
    };
    let takes_batch_size = Method::from_name(name)?
        .parameters()
        .iter()
        .any(|p| p.key == "batch_size");
    if let Some(object) = overrides.as_object_mut().filter(|_| takes_batch_size) {
        if object.get("batch_size").is_none_or(|v| v.is_null()) {
            object.insert("batch_size".into(), WEB_ROWS_PER_PASS.into());
        }
    }
    Method::from_json(name, &overrides)
}

// -------------------------------------------------------------------------------------------
// Images

/// Decodes a PNG/JPEG/WebP photo and applies torchvision's ImageNet preprocessing (shorter side
/// 256, centre crop 224, normalised; for a model that takes another size, the crop is that size
/// and the shorter side size / 0.875), exactly as `candle-xai explain --image` does.
/// Returns `{input: Float32Array, shape, photo: Uint8Array (RGB of the crop), width, height,
/// sourceWidth, sourceHeight}`.
#[wasm_bindgen]
pub fn preprocess(bytes: &[u8], name: &str, size: Option<u32>) -> JsResult<Object> {
    let (_, source_width, source_height) = crate::image::dimensions(bytes, name).map_err(js_error)?;
    let image = crate::image::decode(bytes, name).map_err(js_error)?;
    let p = crate::image::imagenet_preprocess_at(&image, size.map(|s| s as usize)).map_err(js_error)?;
    let out = Object::new();
    let values = flat(&p.tensor)?;
    set(&out, "input", Float32Array::from(values.as_slice()))?;
    set(&out, "shape", shape_array(p.tensor.dims()))?;
    set(&out, "photo", Uint8Array::from(p.image.as_raw().as_slice()))?;
    set(&out, "width", p.image.width())?;
    set(&out, "height", p.image.height())?;
    set(&out, "sourceWidth", source_width)?;
    set(&out, "sourceHeight", source_height)?;
    Ok(out)
}

fn photo_image(photo: &[u8], width: u32, height: u32) -> JsResult<::image::RgbImage> {
    ::image::RgbImage::from_raw(width, height, photo.to_vec()).ok_or_else(|| {
        JsError::new(&format!(
            "the photo has {} bytes, not the {} of a {width}x{height} RGB image",
            photo.len(),
            width as usize * height as usize * 3
        ))
    })
}

/// The first sample of an attribution batch, as the heatmap shows it.
fn first_sample(attributions: &[f32], shape: &[u32]) -> JsResult<Tensor> {
    let t = tensor(attributions, shape, "the attribution")?;
    match t.rank() {
        4 => t.get(0).map_err(js_error),
        _ => Ok(t),
    }
}

/// A heatmap's look as the page sets it (JSON): the method it shows, and its colour map and
/// scaling (`outliers:P` or `level:L`), each the method's default when null.
#[derive(serde::Deserialize)]
struct PageStyle {
    method: String,
    colormap: Option<String>,
    scaling: Option<String>,
    alpha: f32,
}

fn style(style_json: &str) -> JsResult<Style> {
    let page: PageStyle =
        serde_json::from_str(style_json).map_err(|e| js_error(Error::invalid_parameter("style", e.to_string())))?;
    let style = Method::from_name(&page.method)
        .and_then(|m| {
            m.default_style()
                .overridden(page.colormap.as_deref(), page.scaling.as_deref())
        })
        .map_err(js_error)?;
    Ok(Style {
        alpha: page.alpha,
        ..style
    })
}

/// `method`'s default heatmap style: `{colormap, scaling}`, e.g. `bwr` and `level:3` (LRP).
#[wasm_bindgen(js_name = defaultStyle)]
pub fn default_style(method: &str) -> JsResult<Object> {
    let style = Method::from_name(method).map_err(js_error)?.default_style();
    let out = Object::new();
    set(&out, "colormap", style.colormap.name())?;
    set(&out, "scaling", style.scaling.to_string())?;
    Ok(out)
}

/// The heatmap of an attribution laid over the photo, without the colour bar (the page draws
/// its own), in the style `style_json` describes ([`PageStyle`]): `{rgba: Uint8ClampedArray
/// (width*height*4), width, height, low, high, colormap, scaling}`, where `low`/`high` are the
/// values the colour map's ends stand for and `colormap` and `scaling` those used (the
/// method's defaults where none was given). Same colours as the CLI.
#[wasm_bindgen]
pub fn overlay(
    photo: &[u8],
    width: u32,
    height: u32,
    attributions: &[f32],
    shape: &[u32],
    style_json: &str,
) -> JsResult<Object> {
    let style = style(style_json)?;
    let photo = photo_image(photo, width, height)?;
    let attribution = first_sample(attributions, shape)?;
    let overlay = render::overlay(&photo, &attribution, style).map_err(js_error)?;
    let rgba: Vec<u8> = overlay
        .image
        .pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2], 255])
        .collect();
    let out = Object::new();
    set(&out, "rgba", Uint8ClampedArray::from(rgba.as_slice()))?;
    set(&out, "width", width)?;
    set(&out, "height", height)?;
    set(&out, "low", overlay.low)?;
    set(&out, "high", overlay.high)?;
    set(&out, "colormap", style.colormap.name())?;
    set(&out, "scaling", style.scaling.to_string())?;
    Ok(out)
}

/// `steps` RGB colours of a colour map from its high end to its low end (for a colour bar).
#[wasm_bindgen(js_name = colormapColors)]
pub fn colormap_colors(colormap: &str, steps: u32) -> JsResult<Uint8Array> {
    let colormap = Colormap::parse(colormap).map_err(js_error)?;
    let colours: Vec<u8> = render::colour_bar(colormap, steps as usize).concat();
    Ok(Uint8Array::from(colours.as_slice()))
}

/// The colour map names, default first.
#[wasm_bindgen]
pub fn colormaps() -> Vec<String> {
    Colormap::ALL.iter().map(|c| c.name().to_string()).collect()
}

/// PNG bytes of the heatmap over the photo with its labelled colour bar: the image
/// `candle-xai explain --image` writes.
#[wasm_bindgen(js_name = renderPng)]
pub fn render_png(
    photo: &[u8],
    width: u32,
    height: u32,
    attributions: &[f32],
    shape: &[u32],
    style_json: &str,
) -> JsResult<Vec<u8>> {
    let style = style(style_json)?;
    let photo = photo_image(photo, width, height)?;
    let attribution = first_sample(attributions, shape)?;
    let rendered = render::render(&photo, &attribution, style).map_err(js_error)?;
    render::encode_png(&rendered.image).map_err(js_error)
}

// -------------------------------------------------------------------------------------------
// Safetensors files

/// The `producer` metadata of the files the page saves.
fn producer() -> String {
    format!("candle-xai {} (browser)", version())
}

/// A model input as `candle-xai explain --input` reads it: `inputs` (f32) and, when `target`
/// is given, `targets` (int64).
#[wasm_bindgen(js_name = inputSafetensors)]
pub fn input_safetensors(input: &[f32], shape: &[u32], target: Option<i32>) -> JsResult<Vec<u8>> {
    let input = tensor(input, shape, "the input")?;
    let targets = target.map(|t| vec![t as i64]);
    files::inputs_safetensors(&input, targets.as_deref(), &producer()).map_err(js_error)
}

/// An explanation as `candle-xai explain --input ... --out Y.safetensors` writes it:
/// `attributions`, `logits`, `targets` (int64) and, for Integrated Gradients,
/// `convergence_delta`.
#[wasm_bindgen(js_name = explanationSafetensors)]
pub fn explanation_safetensors(
    attributions: &[f32],
    shape: &[u32],
    logits: &[f32],
    target: u32,
    convergence_delta: Option<f32>,
) -> JsResult<Vec<u8>> {
    let explanation = Explanation {
        attributions: tensor(attributions, shape, "the attribution")?,
        logits: tensor(logits, &[1, logits.len() as u32], "the logits")?,
        targets: vec![target as usize],
        convergence_delta: convergence_delta
            .map(|d| tensor(&[d], &[1], "the convergence delta"))
            .transpose()?,
    };
    files::explanation_safetensors(&explanation, &producer()).map_err(js_error)
}

// -------------------------------------------------------------------------------------------
// The model

/// The browser's WebGPU device, opened once per worker and shared by the models moved onto
/// it. Exported to JavaScript as `GpuDevice`.
#[wasm_bindgen(js_name = GpuDevice)]
pub struct WasmGpu {
    device: crate::Device,
}

#[wasm_bindgen(js_class = GpuDevice)]
impl WasmGpu {
    /// Opens the high-performance WebGPU adapter with its own limits; rejects with the reason
    /// when the browser has none (no `navigator.gpu`, no adapter, or the device refused).
    pub async fn request() -> Result<WasmGpu, JsValue> {
        let device = crate::backend::wgpu::WgpuDevice::new_async()
            .await
            .map_err(engine_error)?;
        Ok(Self {
            device: crate::Device::Wgpu(device),
        })
    }

    /// Loses the device on purpose, as a driver reset would: the next explanation on it
    /// rejects with a `DeviceError`. For testing the page's fallback to the CPU.
    #[wasm_bindgen(js_name = loseForTesting)]
    pub fn lose_for_testing(&self) {
        if let crate::Device::Wgpu(device) = &self.device {
            device.lose_for_testing();
        }
    }

    /// The adapter, as the page names it: its name, backend and kind.
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.device.describe()
    }
}

/// A loaded model. Exported to JavaScript as `Model`.
#[wasm_bindgen(js_name = Model)]
pub struct WasmModel {
    /// Shared with the explanations in flight, which outlive the call that started them.
    model: Rc<Model>,
}

#[wasm_bindgen(js_class = Model)]
impl WasmModel {
    /// Loads a model from `.safetensors` or PyTorch `.pth` bytes; `name` names them in error
    /// messages. `graph_json` describes a custom model (the CLI's `--graph`); `arch` forces a
    /// torchvision architecture. Unusable files give the engine's message.
    pub fn load(bytes: &[u8], name: &str, graph_json: Option<String>, arch: Option<String>) -> JsResult<WasmModel> {
        let graph = match graph_json.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(text) => Some(GraphSpec::from_json(text).map_err(js_error)?),
            None => None,
        };
        let options = LoadOptions {
            arch: arch.filter(|a| !a.trim().is_empty()),
            graph,
        };
        let model = Model::from_bytes(bytes, name, &options, &Device::Cpu).map_err(js_error)?;
        Ok(Self { model: Rc::new(model) })
    }

    /// This model with its weights uploaded to `gpu`, where its explanations then run.
    #[wasm_bindgen(js_name = onGpu)]
    pub fn on_gpu(&self, gpu: &WasmGpu) -> Result<WasmModel, JsValue> {
        let model = self.model.to_device(&gpu.device).map_err(engine_error)?;
        Ok(Self { model: Rc::new(model) })
    }

    /// Where this model runs: `cpu`, or the WebGPU adapter's name.
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.model.device().describe()
    }

    /// `resnet18`, `mobilenet_v2`, ..., or `custom`.
    #[wasm_bindgen(getter)]
    pub fn architecture(&self) -> String {
        self.model.architecture().to_string()
    }

    #[wasm_bindgen(getter, js_name = inputChannels)]
    pub fn input_channels(&self) -> u32 {
        self.model.input_channels() as u32
    }

    /// The number of classes, when the model ends in a linear layer.
    #[wasm_bindgen(getter, js_name = numClasses)]
    pub fn num_classes(&self) -> Option<u32> {
        self.model.num_classes().map(|n| n as u32)
    }

    /// Layer names, in order, for Grad-CAM and layer attribution.
    #[wasm_bindgen(js_name = layerNames)]
    pub fn layer_names(&self) -> Vec<String> {
        self.model.layer_names().into_iter().map(String::from).collect()
    }

    /// The names of the methods that can explain this model (Grad-CAM needs a spatial layer,
    /// the transformer methods attention).
    #[wasm_bindgen(js_name = applicableMethods)]
    pub fn applicable_methods(&self) -> Vec<String> {
        crate::methods::Method::applicable_to(&self.model)
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// The one image side the model takes (a vision transformer's), or undefined.
    #[wasm_bindgen(js_name = inputSize)]
    pub fn input_size(&self) -> Option<u32> {
        self.model.input_size().and_then(|s| u32::try_from(s).ok())
    }

    /// The layer Grad-CAM explains when none is named.
    #[wasm_bindgen(js_name = defaultCamLayer)]
    pub fn default_cam_layer(&self) -> Option<String> {
        let id = self.model.default_cam_layer().ok()?;
        Some(self.model.graph().node(id).name.clone())
    }

    /// The logits `[N, classes]` (flat) of a normalised `[N, C, H, W]` input.
    pub fn predict(&self, input: &[f32], shape: &[u32]) -> JsResult<Float32Array> {
        let x = tensor(input, shape, "the input")?;
        let logits = self.model.predict(&x).map_err(js_error)?;
        Ok(Float32Array::from(flat(&logits)?.as_slice()))
    }

    /// Explains a normalised `[1, C, H, W]` input with the method called `method` (see
    /// `methods()`), its defaults overridden by `params_json`. `target` is the class to explain
    /// (default: the top prediction); `layer` a layer for Grad-CAM or layer attribution.
    /// `progress(done, total)` is called as the method advances; returning `false` cancels.
    /// `share` = `[index, count]` explains only that share of IG's path points or SmoothGrad's
    /// noisy copies (see `shares`): the shares' attributions and convergence deltas add up to
    /// the whole's, so workers can split one explanation.
    /// Resolves to `{attributions: Float32Array, shape, logits: Float32Array, target,
    /// convergenceDelta, method, params, device}`; rejects with the engine's message (an error
    /// named `DeviceError` when the GPU failed).
    #[allow(clippy::too_many_arguments)]
    pub fn explain(
        &self,
        input: &[f32],
        shape: &[u32],
        method: &str,
        params_json: Option<String>,
        target: Option<i32>,
        layer: Option<String>,
        share: Option<Vec<u32>>,
        progress: Option<Function>,
    ) -> Result<Promise, JsValue> {
        let x = tensor(input, shape, "the input")?;
        let method = build_method(method, params_json.as_deref().unwrap_or("")).map_err(engine_error)?;
        let share = match share.as_deref() {
            None => None,
            Some(&[index, count]) => Some(Share {
                index: index as usize,
                count: count as usize,
            }),
            Some(other) => {
                return Err(engine_error(Error::invalid_parameter(
                    "share",
                    format!("expected [index, count]; got {other:?}"),
                )))
            }
        };
        let request = Request {
            targets: match target {
                Some(t) => Targets::Classes(vec![t as i64]),
                None => Targets::TopPrediction,
            },
            layer: layer.filter(|l| !l.trim().is_empty()),
            share,
            ..Request::new(method)
        };
        let model = self.model.clone();
        Ok(future_to_promise(async move {
            let mut report = progress_reporter(progress);
            let explanation = explain_async(&model, &x, &request, &mut Progress::new(&mut report))
                .await
                .map_err(engine_error)?;
            let out = explanation_object(&explanation, &request)?;
            set(&out, "device", model.device().describe())?;
            Ok(out.into())
        }))
    }
}

/// Into how many shares one explanation with `method` and `params_json` can be split, for
/// explaining on several workers at once (`Model.explain`'s `share`): IG's path points or
/// SmoothGrad's (mean or squared) noisy copies; 1 for the other methods.
#[wasm_bindgen]
pub fn shares(method: &str, params_json: Option<String>) -> JsResult<u32> {
    let method = build_method(method, params_json.as_deref().unwrap_or("")).map_err(js_error)?;
    Ok(Request::new(method).shares_possible() as u32)
}

/// Perturbed inputs per forward pass of a metric in the browser when its JSON does not say.
pub const WEB_METRIC_ROWS_PER_PASS: usize = 8;

/// The metrics of `metrics_json`: a JSON array of names (`"abpc"`) or of objects with the
/// name under `metric` and parameters beside it (`{"metric": "abpc", "n_steps": 20}`).
/// Rows per pass default to [`WEB_METRIC_ROWS_PER_PASS`].
pub fn build_metrics(metrics_json: &str) -> Result<Vec<Metric>, Error> {
    let list: Vec<serde_json::Value> = serde_json::from_str(metrics_json)
        .map_err(|e| Error::invalid_parameter("metrics", format!("not a JSON array: {e}")))?;
    list.into_iter()
        .map(|entry| {
            let (name, mut overrides) = match entry {
                serde_json::Value::String(name) => (name, serde_json::Map::new()),
                serde_json::Value::Object(mut object) => match object.remove("metric") {
                    Some(serde_json::Value::String(name)) => (name, object),
                    _ => return Err(Error::invalid_parameter("metrics", "each object names its `metric`")),
                },
                other => return Err(Error::invalid_parameter("metrics", format!("{other} is not a metric"))),
            };
            let metric = Metric::from_name(&name)?;
            if metric.parameters().iter().any(|p| p.key == "batch_size") {
                overrides.entry("batch_size").or_insert(WEB_METRIC_ROWS_PER_PASS.into());
            }
            Metric::from_json(&name, &serde_json::Value::Object(overrides))
        })
        .collect()
}

#[wasm_bindgen(js_class = Model)]
impl WasmModel {
    /// Scores `attributions` (flat, `attributions_shape`: like the input, or pooled over
    /// channels) of a normalised `[1, C, H, W]` input explained for class `target` with the
    /// metrics of `metrics_json` (see [`build_metrics`]). `method` and `params_json` name the
    /// method that made them, which Sensitivity needs. `progress(done, total)` as for
    /// `explain`. Resolves to the JSON of `{targets, scores: [{metric, higher_is_better,
    /// values, morf_curves?, lerf_curves?}]}` (an undefined value is null).
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate(
        &self,
        input: &[f32],
        shape: &[u32],
        attributions: &[f32],
        attributions_shape: &[u32],
        metrics_json: &str,
        target: i32,
        method: Option<String>,
        params_json: Option<String>,
        progress: Option<Function>,
    ) -> Result<Promise, JsValue> {
        let x = tensor(input, shape, "the input")?;
        let a = tensor(attributions, attributions_shape, "the attributions")?;
        let metrics = build_metrics(metrics_json).map_err(engine_error)?;
        let explainer = match method {
            Some(name) => Some(Request::new(
                build_method(&name, params_json.as_deref().unwrap_or("")).map_err(engine_error)?,
            )),
            None => None,
        };
        let request = EvaluationRequest {
            metrics,
            targets: Targets::Classes(vec![target as i64]),
            explainer,
            memory_limit: None,
            pooling: Pooling::None,
        };
        let model = self.model.clone();
        Ok(future_to_promise(async move {
            let mut report = progress_reporter(progress);
            let evaluation = evaluate_async(&model, &x, &a, &request, &mut Progress::new(&mut report))
                .await
                .map_err(engine_error)?;
            Ok(JsValue::from_str(
                &serde_json::to_string(&evaluation).map_err(js_error)?,
            ))
        }))
    }
}

#[wasm_bindgen(js_class = Model)]
impl WasmModel {
    /// Tunes the method called `method` (its other parameters from `params_json`) for a
    /// normalised `[1, C, H, W]` input explained for class `target`: `n_trials` trials of TPE
    /// maximising `objective` (`abpc`, or weighted metrics `abpc:1,complexity:0.1`), seeded.
    /// `progress(done, total)` counts trials; returning `false` cancels. Resolves to the JSON
    /// of `{method, defaults, best, best_method, trials}` (see `candle-xai optimize`).
    #[allow(clippy::too_many_arguments)]
    pub fn optimize(
        &self,
        input: &[f32],
        shape: &[u32],
        method: &str,
        params_json: Option<String>,
        target: i32,
        objective: &str,
        n_trials: u32,
        seed: u32,
        progress: Option<Function>,
    ) -> Result<Promise, JsValue> {
        let x = tensor(input, shape, "the input")?;
        let method = build_method(method, params_json.as_deref().unwrap_or("")).map_err(engine_error)?;
        let request = OptimizeRequest {
            method,
            objective: Objective::parse(objective).map_err(engine_error)?,
            n_trials: n_trials as usize,
            seed: seed as u64,
            targets: Targets::Classes(vec![target as i64]),
            prune: true,
            tune_pooling: false,
            memory_limit: None,
        };
        let model = self.model.clone();
        Ok(future_to_promise(async move {
            let mut report = progress_reporter(progress);
            let found = optimize_async(&model, &x, &request, &mut Progress::new(&mut report))
                .await
                .map_err(engine_error)?;
            Ok(JsValue::from_str(&serde_json::to_string(&found).map_err(js_error)?))
        }))
    }
}

fn explanation_object(explanation: &Explanation, request: &Request) -> JsResult<Object> {
    let out = Object::new();
    set(
        &out,
        "attributions",
        Float32Array::from(flat(&explanation.attributions)?.as_slice()),
    )?;
    set(&out, "shape", shape_array(explanation.attributions.dims()))?;
    set(
        &out,
        "logits",
        Float32Array::from(flat(&explanation.logits)?.as_slice()),
    )?;
    set(&out, "target", explanation.targets.first().copied().unwrap_or(0) as u32)?;
    let delta = match &explanation.convergence_delta {
        Some(d) => JsValue::from(flat(d)?.first().copied().unwrap_or(f32::NAN)),
        None => JsValue::NULL,
    };
    set(&out, "convergenceDelta", delta)?;
    set(&out, "method", request.method.name())?;
    set(
        &out,
        "params",
        serde_json::to_string(&request.method).map_err(js_error)?,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::Quadrature;
    use std::collections::HashMap;
    use wasm_bindgen_test::*;

    wasm_bindgen_test_configure!(run_in_dedicated_worker);

    #[wasm_bindgen_test]
    fn every_method_is_listed_with_json_defaults() {
        let list: serde_json::Value = serde_json::from_str(&methods().unwrap()).unwrap();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), Method::NAMES.len());
        for entry in list {
            let name = entry["name"].as_str().unwrap();
            let method = build_method(name, "").unwrap();
            assert_eq!(method.name(), name);
        }
    }

    #[wasm_bindgen_test]
    fn parameters_override_defaults_and_unknown_ones_are_refused() {
        match build_method(
            "integrated-gradients",
            r#"{"n_steps": 7, "quadrature": "riemann-middle"}"#,
        )
        .unwrap()
        {
            Method::IntegratedGradients(p) => {
                assert_eq!(p.n_steps, 7);
                assert_eq!(p.quadrature, Quadrature::RiemannMiddle);
                assert_eq!(p.batch_size, Some(WEB_ROWS_PER_PASS));
            }
            other => panic!("{other:?}"),
        }
        // Every choice `tunables()` offers is accepted.
        for q in Quadrature::ALL {
            let json = format!(r#"{{"quadrature": "{}"}}"#, q.name());
            assert!(build_method("integrated-gradients", &json).is_ok(), "{json}");
        }
        let err = build_method("gradient", r#"{"n_steps": 7}"#).unwrap_err().to_string();
        assert!(err.contains("n_steps"), "{err}");
        assert!(build_method("no-such-method", "").is_err());
        assert!(build_method("gradient", "[1]").is_err());
        assert!(build_method("gradient", "{nope").is_err());
    }

    #[wasm_bindgen_test]
    fn bad_model_bytes_give_a_message() {
        let err = WasmModel::load(b"not a model", "notes.txt", None, None).err().unwrap();
        let message: JsValue = err.into();
        let text = Reflect::get(&message, &"message".into()).unwrap().as_string().unwrap();
        assert!(text.contains("notes.txt"), "{text}");
        assert!(WasmModel::load(b"", "empty.safetensors", None, None).is_err());
    }

    #[wasm_bindgen_test]
    fn bad_images_give_a_message() {
        let err = preprocess(b"hello, I am text", "notes.png", None).err().unwrap();
        let message: JsValue = err.into();
        let text = Reflect::get(&message, &"message".into()).unwrap().as_string().unwrap();
        assert!(text.contains("notes.png"), "{text}");
    }

    #[wasm_bindgen_test]
    fn preprocesses_a_png() {
        let image = ::image::RgbImage::from_fn(300, 200, |x, y| [x as u8, y as u8, 100].into());
        let mut bytes = std::io::Cursor::new(Vec::new());
        image.write_to(&mut bytes, ::image::ImageFormat::Png).unwrap();
        let out = preprocess(bytes.get_ref(), "a.png", None).unwrap();
        let get = |k: &str| Reflect::get(&out, &k.into()).unwrap();
        assert_eq!(get("width").as_f64(), Some(224.0));
        assert_eq!(get("sourceWidth").as_f64(), Some(300.0));
        assert_eq!(Float32Array::from(get("input")).length(), 3 * 224 * 224);
        assert_eq!(Uint8Array::from(get("photo")).length(), 3 * 224 * 224);
    }

    /// A model's explanation, awaited; a rejection comes back as its message.
    async fn explained(promise: Result<Promise, JsValue>) -> Result<Object, String> {
        let message = |v: JsValue| Reflect::get(&v, &"message".into()).unwrap().as_string().unwrap();
        let result = wasm_bindgen_futures::JsFuture::from(promise.map_err(message)?).await;
        result.map(Object::from).map_err(message)
    }

    /// A tiny convolutional model through the whole path: load, predict, every method, render.
    #[wasm_bindgen_test]
    async fn explains_a_small_model_with_every_method() {
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        let values =
            |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * scale).collect() };
        tensors.insert(
            "features.0.weight".to_string(),
            Tensor::from_vec(values(4 * 3 * 3 * 3, 0.05), (4, 3, 3, 3), &device).unwrap(),
        );
        tensors.insert(
            "features.0.bias".to_string(),
            Tensor::from_vec(values(4, 0.01), 4, &device).unwrap(),
        );
        tensors.insert(
            "classifier.weight".to_string(),
            Tensor::from_vec(values(5 * 4 * 8 * 8, 0.02), (5, 4 * 8 * 8), &device).unwrap(),
        );
        tensors.insert(
            "classifier.bias".to_string(),
            Tensor::from_vec(values(5, 0.01), 5, &device).unwrap(),
        );
        let graph = r#"{"input_channels": 3, "nodes": [
            {"name": "features.0", "op": "Conv2d", "kernel_size": 3, "padding": 1},
            {"name": "relu", "op": "ReLU"},
            {"name": "flatten", "op": "Flatten"},
            {"name": "classifier", "op": "Linear"}
        ]}"#;
        let state = crate::import::StateDict::new(tensors, "tiny");
        let bytes = state.to_safetensors(None).unwrap();
        let model = match WasmModel::load(&bytes, "tiny.safetensors", Some(graph.into()), None) {
            Ok(m) => m,
            Err(e) => {
                let v: JsValue = e.into();
                panic!("{:?}", Reflect::get(&v, &"message".into()).unwrap());
            }
        };
        assert_eq!(model.num_classes(), Some(5));
        let input = values(3 * 8 * 8, 0.1);
        let shape = [1u32, 3, 8, 8];
        assert_eq!(model.predict(&input, &shape).unwrap().length(), 5);
        let photo = vec![128u8; 8 * 8 * 3];
        let applicable = model.applicable_methods();
        assert!(
            !applicable.iter().any(|m| m == "attention-rollout"),
            "a CNN has no attention"
        );
        for name in applicable.iter().map(String::as_str) {
            let params = match name {
                "integrated-gradients" => r#"{"n_steps": 4}"#,
                "smoothgrad" => r#"{"n_samples": 3}"#,
                _ => "",
            };
            let out = explained(model.explain(&input, &shape, name, Some(params.into()), Some(2), None, None, None))
                .await
                .unwrap_or_else(|e| panic!("{name} failed: {e}"));
            assert_eq!(
                Reflect::get(&out, &"device".into()).unwrap().as_string().unwrap(),
                "cpu"
            );
            let attributions = Float32Array::from(Reflect::get(&out, &"attributions".into()).unwrap()).to_vec();
            let dims: Vec<u32> = Array::from(&Reflect::get(&out, &"shape".into()).unwrap())
                .iter()
                .map(|v| v.as_f64().unwrap() as u32)
                .collect();
            assert!(attributions.iter().all(|v| v.is_finite()), "{name}");
            let style = format!(r#"{{"method": "{name}", "colormap": null, "scaling": null, "alpha": 0.5}}"#);
            let o = overlay(&photo, 8, 8, &attributions, &dims, &style).unwrap();
            assert_eq!(
                Uint8ClampedArray::from(Reflect::get(&o, &"rgba".into()).unwrap()).length(),
                8 * 8 * 4
            );
            // The method's own style where none is given.
            let default = Method::from_name(name).unwrap().default_style();
            let used = |key: &str| Reflect::get(&o, &key.into()).unwrap().as_string().unwrap();
            assert_eq!(used("colormap"), default.colormap.name());
            assert_eq!(used("scaling"), default.scaling.to_string());
            let style = format!(r#"{{"method": "{name}", "colormap": "hot", "scaling": "level:2", "alpha": 0.5}}"#);
            let png = render_png(&photo, 8, 8, &attributions, &dims, &style).unwrap();
            assert!(png.starts_with(b"\x89PNG"));
        }
        // Cancelling through the progress callback ends the run with "cancelled".
        let cancel = Function::new_no_args("return false");
        let text = explained(model.explain(
            &input,
            &shape,
            "integrated-gradients",
            None,
            None,
            None,
            None,
            Some(cancel),
        ))
        .await
        .err()
        .unwrap();
        assert!(text.contains("cancelled"), "{text}");
        // Bad input is refused before anything runs.
        let text = explained(model.explain(&input[1..], &shape, "gradient", None, None, None, None, None))
            .await
            .err()
            .unwrap();
        assert!(text.contains("values"), "{text}");
    }
}
