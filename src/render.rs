//! Heatmaps for people: an attribution [C, H, W] becomes per-pixel relevance (channels summed,
//! as zennit and captum visualise), is normalised (signed maps symmetrically so 0 stays the
//! centre colour, by captum's outlier clipping or zennit's level: [`Scaling`]; unsigned maps
//! min-max), coloured, laid over the photo, and given a colour bar with its value range written
//! at the ends. Output is an `RgbImage` or PNG bytes.

use std::io::Cursor;

use ::image::{ImageFormat, Rgb, RgbImage};
use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// How relevance values become colours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Colormap {
    /// Blue (most negative) to white (0) to red (most positive), symmetric around 0: zennit's `bwr`.
    #[default]
    Bwr,
    /// Black, red, yellow, white over the min-max range: zennit's (and matplotlib's) `hot`.
    Hot,
    /// Black to white over the min-max range.
    Gray,
    /// White (0 or less) to red (the maximum): negative relevance is hidden (zennit's `wred`).
    Positive,
}

impl Colormap {
    pub const ALL: [Colormap; 4] = [Colormap::Bwr, Colormap::Hot, Colormap::Gray, Colormap::Positive];

    pub fn name(self) -> &'static str {
        match self {
            Colormap::Bwr => "bwr",
            Colormap::Hot => "hot",
            Colormap::Gray => "gray",
            Colormap::Positive => "positive",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| {
                c.name().eq_ignore_ascii_case(name) || (name.eq_ignore_ascii_case("grey") && *c == Colormap::Gray)
            })
            .ok_or_else(|| {
                Error::invalid_parameter(
                    "colormap",
                    format!(
                        "unknown colour map `{name}`; known: {}",
                        Self::ALL.map(Colormap::name).join(", ")
                    ),
                )
            })
    }

    /// Whether the map is centred on 0 (values normalised to [-1, 1]) rather than [0, 1].
    pub fn is_signed(self) -> bool {
        self == Colormap::Bwr
    }

    /// Colour stops on [0, 1], linearly interpolated (zennit's colour map sources).
    fn stops(self) -> &'static [(f32, [u8; 3])] {
        match self {
            Colormap::Bwr => &[(0.0, [0, 0, 255]), (0.5, [255, 255, 255]), (1.0, [255, 0, 0])],
            Colormap::Hot => &[
                (0.0, [0, 0, 0]),
                (1.0 / 3.0, [255, 0, 0]),
                (2.0 / 3.0, [255, 255, 0]),
                (1.0, [255, 255, 255]),
            ],
            Colormap::Gray => &[(0.0, [0, 0, 0]), (1.0, [255, 255, 255])],
            Colormap::Positive => &[(0.0, [255, 255, 255]), (1.0, [255, 0, 0])],
        }
    }

    /// The colour of a normalised value: in [-1, 1] for signed maps, [0, 1] for the others
    /// (clamped; NaN counts as 0).
    pub fn color(self, value: f32) -> [u8; 3] {
        let v = if value.is_nan() { 0.0 } else { value };
        let t = if self.is_signed() {
            (v.clamp(-1.0, 1.0) + 1.0) / 2.0
        } else {
            v.clamp(0.0, 1.0)
        };
        let stops = self.stops();
        let i = stops
            .iter()
            .rposition(|(at, _)| *at <= t)
            .unwrap_or(0)
            .min(stops.len() - 2);
        let (a, ca) = stops[i];
        let (b, cb) = stops[i + 1];
        let f = ((t - a) / (b - a)).clamp(0.0, 1.0);
        std::array::from_fn(|c| (ca[c] as f32 + f * (cb[c] as f32 - ca[c] as f32)).round() as u8)
    }
}

/// Per-pixel relevance, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RelevanceMap {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl RelevanceMap {
    /// Sums the channels of an attribution [C, H, W] (also [1, C, H, W] or [H, W]).
    pub fn from_attribution(attribution: &Tensor) -> Result<Self> {
        let t = attribution.to_dtype(DType::F32)?;
        let t = match t.dims() {
            [1, _, _, _] => t.squeeze(0)?,
            [_, _, _] => t,
            [_, _] => t.unsqueeze(0)?,
            dims => {
                return Err(Error::invalid_parameter(
                    "attribution",
                    format!("a heatmap needs a [C, H, W] attribution; got shape {dims:?}"),
                ))
            }
        };
        let (_, height, width) = t.dims3()?;
        if height == 0 || width == 0 {
            return Err(Error::invalid_parameter("attribution", "the attribution is empty"));
        }
        let values = t.sum(0)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { width, height, values })
    }

    /// Bilinear resize (align_corners = False, as `F.interpolate`), e.g. a Grad-CAM map to the photo.
    pub fn resized(&self, width: usize, height: usize) -> Self {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let source = |out: usize, len_in: usize, len_out: usize| -> (usize, usize, f32) {
            let scale = len_in as f32 / len_out as f32;
            let x = ((out as f32 + 0.5) * scale - 0.5).max(0.0);
            let x0 = (x.floor() as usize).min(len_in - 1);
            let x1 = (x0 + 1).min(len_in - 1);
            (x0, x1, x - x0 as f32)
        };
        let mut values = Vec::with_capacity(width * height);
        for y in 0..height {
            let (y0, y1, fy) = source(y, self.height, height);
            for x in 0..width {
                let (x0, x1, fx) = source(x, self.width, width);
                let at = |yy: usize, xx: usize| self.values[yy * self.width + xx];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                values.push(top * (1.0 - fy) + bottom * fy);
            }
        }
        Self { width, height, values }
    }
}

/// Values scaled for a colour map, with the raw values its two ends stand for.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalised {
    pub values: Vec<f32>,
    /// The value shown at the low end of the colour bar.
    pub low: f32,
    /// The value shown at the high end.
    pub high: f32,
}

/// Which magnitude the ends of a signed (or positive) colour map stand for. Relevance is
/// heavy-tailed: scaled by its largest value, a handful of pixels take the whole colour range
/// and the rest of the map fades to white, so each method family has its field's remedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scaling {
    /// captum's `visualize_image_attr(outlier_perc=percent)`: the ends stand for the smallest
    /// magnitude above which only `percent`% of the map's attribution mass lies; those pixels
    /// saturate. captum's default (2) is the gradient family's.
    Outliers { percent: f32 },
    /// zennit's `imgify(symmetric=True, level=level)`: the ends stand for the largest magnitude
    /// divided by `level`, so above 1 the colours saturate earlier (on min-max maps the palette
    /// is stretched about its middle, as zennit's is).
    Level { level: f32 },
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling::Outliers {
            percent: OUTLIER_PERCENT,
        }
    }
}

impl std::fmt::Display for Scaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scaling::Outliers { percent } => write!(f, "outliers:{percent}"),
            Scaling::Level { level } => write!(f, "level:{level}"),
        }
    }
}

impl Scaling {
    /// `outliers:P` (P in [0, 100), the share of mass clipped) or `level:L` (L > 0); a bare
    /// `outliers` or `level` takes captum's 2 or zennit's 1.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: String| Error::invalid_parameter("scaling", why);
        let (kind, value) = match spec.trim().split_once(':') {
            Some((kind, value)) => (kind.trim(), Some(value.trim())),
            None => (spec.trim(), None),
        };
        let number = |default: f32| -> Result<f32> {
            value.map_or(Ok(default), |v| {
                v.parse::<f32>()
                    .map_err(|_| bad(format!("`{v}` in `{spec}` is not a number")))
            })
        };
        match kind.to_ascii_lowercase().as_str() {
            "outliers" | "outlier" => {
                let percent = number(OUTLIER_PERCENT)?;
                if !(0.0..100.0).contains(&percent) {
                    return Err(bad(format!("the outlier share is a percentage in [0, 100); got {percent}")));
                }
                Ok(Scaling::Outliers { percent })
            }
            "level" => {
                let level = number(1.0)?;
                if !(level.is_finite() && level > 0.0) {
                    return Err(bad(format!("the level is a number above 0; got {level}")));
                }
                Ok(Scaling::Level { level })
            }
            _ => Err(bad(format!(
                "unknown scaling `{spec}`; give `outliers:P` (captum's outlier percentage) or `level:L` (zennit's level)"
            ))),
        }
    }

    /// The magnitude the colour map's end stands for, from the map's (finite, non-negative)
    /// magnitudes.
    fn end(self, magnitudes: impl Iterator<Item = f32>) -> f32 {
        match self {
            Scaling::Outliers { percent } => outlier_threshold(magnitudes, percent),
            Scaling::Level { level } => magnitudes.fold(0.0, f32::max) / level,
        }
    }

    /// How far the min-max position `t` in [0, 1] moves along the palette: zennit's level
    /// stretches it about the middle; captum's clipping leaves min-max maps alone.
    fn stretch(self, t: f32) -> f32 {
        match self {
            Scaling::Outliers { .. } => t,
            Scaling::Level { level } => (((2.0 * t - 1.0) * level + 1.0) / 2.0).clamp(0.0, 1.0),
        }
    }
}

/// captum's `visualize_image_attr` default `outlier_perc`.
pub const OUTLIER_PERCENT: f32 = 2.0;

/// captum's `_cumulative_sum_threshold`: the smallest |v| at which the sorted magnitudes'
/// running sum reaches (100 - percent)% of their total.
fn outlier_threshold(magnitudes: impl Iterator<Item = f32>, percent: f32) -> f32 {
    let mut sorted: Vec<f32> = magnitudes.collect();
    sorted.sort_by(f32::total_cmp);
    let total: f64 = sorted.iter().map(|&v| v as f64).sum();
    let target = total * (100.0 - percent as f64) / 100.0;
    let mut running = 0.0;
    for &v in &sorted {
        running += v as f64;
        if running >= target {
            return v;
        }
    }
    sorted.last().copied().unwrap_or(0.0)
}

/// Signed maps: divide by the magnitude `scaling` gives and clip to [-1, 1] (0 stays 0).
/// Positive: negatives to 0, the same over the positive values. Others: min-max to [0, 1]
/// (stretched by zennit's level). Non-finite values count as 0; a constant map becomes all 0.
pub fn normalise(values: &[f32], colormap: Colormap, scaling: Scaling) -> Normalised {
    let finite = || values.iter().copied().filter(|v| v.is_finite());
    let clean = |v: f32| if v.is_finite() { v } else { 0.0 };
    let scaled = |f: &dyn Fn(f32) -> f32| values.iter().map(|&v| f(clean(v))).collect::<Vec<_>>();
    match colormap {
        Colormap::Bwr => {
            let m = scaling.end(finite().map(f32::abs));
            let values = if m > 0.0 {
                scaled(&|v| (v / m).clamp(-1.0, 1.0))
            } else {
                vec![0.0; values.len()]
            };
            Normalised {
                values,
                low: -m,
                high: m,
            }
        }
        Colormap::Positive => {
            let m = scaling.end(finite().filter(|v| *v > 0.0));
            let values = if m > 0.0 {
                scaled(&|v| (v.max(0.0) / m).min(1.0))
            } else {
                vec![0.0; values.len()]
            };
            Normalised {
                values,
                low: 0.0,
                high: m,
            }
        }
        Colormap::Hot | Colormap::Gray => {
            let lo = finite().fold(f32::INFINITY, f32::min);
            let hi = finite().fold(f32::NEG_INFINITY, f32::max);
            if !(lo.is_finite() && hi.is_finite()) {
                return Normalised {
                    values: vec![0.0; values.len()],
                    low: 0.0,
                    high: 0.0,
                };
            }
            let values = if hi > lo {
                scaled(&|v| scaling.stretch((v - lo) / (hi - lo)))
            } else {
                vec![0.0; values.len()]
            };
            // The raw values the palette's ends now stand for.
            let (low, high) = match scaling {
                Scaling::Level { level } => {
                    let (middle, half) = ((lo + hi) / 2.0, (hi - lo) / 2.0 / level);
                    (middle - half, middle + half)
                }
                Scaling::Outliers { .. } => (lo, hi),
            };
            Normalised { values, low, high }
        }
    }
}

/// The coloured heatmap of normalised values.
pub fn colorize(values: &[f32], width: usize, height: usize, colormap: Colormap) -> RgbImage {
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        Rgb(colormap.color(values[y as usize * width + x as usize]))
    })
}

/// `(1 - alpha) * photo + alpha * heat`, pixel by pixel (same sizes).
pub fn blend(photo: &RgbImage, heat: &RgbImage, alpha: f32) -> RgbImage {
    RgbImage::from_fn(photo.width(), photo.height(), |x, y| {
        let (p, h) = (photo.get_pixel(x, y).0, heat.get_pixel(x, y).0);
        Rgb(std::array::from_fn(|c| {
            ((1.0 - alpha) * p[c] as f32 + alpha * h[c] as f32)
                .round()
                .clamp(0.0, 255.0) as u8
        }))
    })
}

/// A rendered overlay with the value range of its colour bar.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub image: RgbImage,
    pub low: f32,
    pub high: f32,
}

const BAR_GAP: u32 = 8;
const BAR_WIDTH: u32 = 14;
const LABEL_GAP: u32 = 4;
const FONT_SCALE: u32 = 2;
const MARGIN: u32 = 6;

/// How a heatmap looks: its colours, how values are scaled onto them, and its opacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    pub colormap: Colormap,
    pub scaling: Scaling,
    /// The heatmap's opacity over the photo, in [0, 1].
    pub alpha: f32,
}

impl Default for Style {
    fn default() -> Self {
        Self {
            colormap: Colormap::default(),
            scaling: Scaling::default(),
            alpha: 0.5,
        }
    }
}

impl Style {
    /// This style with the colour map and the scaling named (as [`Colormap::parse`] and
    /// [`Scaling::parse`] read them) in place of its own, where given: a method's defaults
    /// under a user's choices.
    pub fn overridden(self, colormap: Option<&str>, scaling: Option<&str>) -> Result<Self> {
        Ok(Self {
            colormap: colormap.map_or(Ok(self.colormap), Colormap::parse)?,
            scaling: scaling.map_or(Ok(self.scaling), Scaling::parse)?,
            ..self
        })
    }
}

/// The heatmap of `attribution` ([C, H, W]) over `photo`, resized to the photo when needed,
/// without a colour bar (the page draws its own); `low`/`high` are the values the colour map's
/// ends stand for.
pub fn overlay(photo: &RgbImage, attribution: &Tensor, style: Style) -> Result<Rendered> {
    let Style {
        colormap,
        scaling,
        alpha,
    } = style;
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::invalid_parameter(
            "alpha",
            format!("{alpha} is not between 0 and 1"),
        ));
    }
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let map = RelevanceMap::from_attribution(attribution)?.resized(w, h);
    let normalised = normalise(&map.values, colormap, scaling);
    let heat = colorize(&normalised.values, w, h, colormap);
    Ok(Rendered {
        image: blend(photo, &heat, alpha),
        low: normalised.low,
        high: normalised.high,
    })
}

/// [`overlay`] with a colour bar on the right labelled with the values of its ends: the image
/// `candle-xai explain --image` writes.
pub fn render(photo: &RgbImage, attribution: &Tensor, style: Style) -> Result<Rendered> {
    let overlay = overlay(photo, attribution, style)?;
    Ok(Rendered {
        image: with_colour_bar(&overlay.image, style.colormap, overlay.low, overlay.high),
        ..overlay
    })
}

/// `steps` RGB colours of `colormap` from its high end to its low end (a colour bar).
pub fn colour_bar(colormap: Colormap, steps: usize) -> Vec<[u8; 3]> {
    let steps = steps.max(2);
    (0..steps)
        .map(|i| {
            let t = 1.0 - i as f32 / (steps - 1) as f32;
            colormap.color(if colormap.is_signed() { 2.0 * t - 1.0 } else { t })
        })
        .collect()
}

/// A label as the colour bar prints it, e.g. `-1.25e-3`.
pub fn format_value(v: f32) -> String {
    format!("{v:.2e}")
}

/// `image` with a colour bar (top = `high`, bottom = `low`) and its labels on the right.
pub fn with_colour_bar(image: &RgbImage, colormap: Colormap, low: f32, high: f32) -> RgbImage {
    let labels = [format_value(high), format_value(low)];
    let label_width = labels.iter().map(|l| text_width(l)).max().unwrap_or(0);
    let (w, h) = image.dimensions();
    let total_w = w + BAR_GAP + BAR_WIDTH + LABEL_GAP + label_width + MARGIN;
    let total_h = h.max(2 * GLYPH_H * FONT_SCALE + 4);
    let mut canvas = RgbImage::from_pixel(total_w, total_h, Rgb([255, 255, 255]));
    ::image::imageops::replace(&mut canvas, image, 0, 0);
    let bar_x = w + BAR_GAP;
    let bar_h = h.max(2);
    for y in 0..bar_h {
        let t = 1.0 - y as f32 / (bar_h - 1) as f32;
        let v = if colormap.is_signed() { 2.0 * t - 1.0 } else { t };
        let inside = Rgb(colormap.color(v));
        for x in 0..BAR_WIDTH {
            let edge = x == 0 || x == BAR_WIDTH - 1 || y == 0 || y == bar_h - 1;
            canvas.put_pixel(bar_x + x, y, if edge { Rgb([0, 0, 0]) } else { inside });
        }
    }
    let text_x = bar_x + BAR_WIDTH + LABEL_GAP;
    draw_text(&mut canvas, &labels[0], text_x, 0);
    draw_text(&mut canvas, &labels[1], text_x, total_h - GLYPH_H * FONT_SCALE);
    canvas
}

/// PNG bytes of `image`.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    encode(image, ImageFormat::Png)
}

/// The format a heatmap file named `file` is written in, from its extension: PNG, JPEG or
/// WebP (lossless). Any other name is refused rather than given bytes it does not say.
pub fn format_for(file: &str) -> Result<ImageFormat> {
    let extension = file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("png") => Ok(ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg),
        Some("webp") => Ok(ImageFormat::WebP),
        _ => Err(Error::Image(format!(
            "{file}: a heatmap is written as .png, .jpg or .webp; name the file with one of those"
        ))),
    }
}

/// `image` encoded as `format` (PNG, JPEG at quality 95, or lossless WebP).
pub fn encode(image: &RgbImage, format: ImageFormat) -> Result<Vec<u8>> {
    let mut bytes = Cursor::new(Vec::new());
    let written = match format {
        ImageFormat::Jpeg => ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95).encode_image(image),
        other => image.write_to(&mut bytes, other),
    };
    written.map_err(|e| Error::Image(format!("could not encode the {format:?} image: {e}")))?;
    Ok(bytes.into_inner())
}

// A 3x5 pixel font for the characters numbers need.
const GLYPH_W: u32 = 3;
const GLYPH_H: u32 = 5;

fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '+' => [0b000, 0b010, 0b111, 0b010, 0b000],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        'e' => [0b000, 0b111, 0b111, 0b100, 0b111],
        'N' => [0b101, 0b111, 0b111, 0b111, 0b101],
        'a' => [0b000, 0b011, 0b101, 0b101, 0b011],
        'i' => [0b010, 0b000, 0b010, 0b010, 0b010],
        'n' => [0b000, 0b110, 0b101, 0b101, 0b101],
        'f' => [0b011, 0b010, 0b111, 0b010, 0b010],
        _ => [0; 5],
    }
}

fn text_width(text: &str) -> u32 {
    let n = text.chars().count() as u32;
    (n * (GLYPH_W + 1)).saturating_sub(1) * FONT_SCALE
}

fn draw_text(canvas: &mut RgbImage, text: &str, x: u32, y: u32) {
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c);
        let gx = x + i as u32 * (GLYPH_W + 1) * FONT_SCALE;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits >> (GLYPH_W - 1 - col) & 1 == 1 {
                    for dy in 0..FONT_SCALE {
                        for dx in 0..FONT_SCALE {
                            let (px, py) = (gx + col * FONT_SCALE + dx, y + r as u32 * FONT_SCALE + dy);
                            if px < canvas.width() && py < canvas.height() {
                                canvas.put_pixel(px, py, Rgb([0, 0, 0]));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bwr_is_symmetric_around_white() {
        assert_eq!(Colormap::Bwr.color(0.0), [255, 255, 255]);
        assert_eq!(Colormap::Bwr.color(1.0), [255, 0, 0]);
        assert_eq!(Colormap::Bwr.color(-1.0), [0, 0, 255]);
        assert_eq!(Colormap::Bwr.color(0.5), [255, 128, 128]);
        assert_eq!(Colormap::Bwr.color(-0.5), [128, 128, 255]);
        assert_eq!(Colormap::Bwr.color(f32::NAN), [255, 255, 255]);
    }

    #[test]
    fn signed_normalisation_maps_extremes() {
        let n = normalise(&[-2.0, 0.0, 1.0, 4.0], Colormap::Bwr, Scaling::default());
        assert_eq!(n.values, vec![-0.5, 0.0, 0.25, 1.0]);
        assert_eq!((n.low, n.high), (-4.0, 4.0));
        let colours: Vec<_> = n.values.iter().map(|&v| Colormap::Bwr.color(v)).collect();
        assert_eq!(colours[1], [255, 255, 255]);
        assert_eq!(colours[3], [255, 0, 0]);
        let n = normalise(&[-3.0, 1.0], Colormap::Bwr, Scaling::default());
        assert_eq!(Colormap::Bwr.color(n.values[0]), [0, 0, 255]);
    }

    #[test]
    fn outliers_are_clipped_as_captum_does() {
        // 2% of the mass sits in one pixel: it is clipped and the rest keeps the colour range.
        let mut values = vec![1.0f32; 1000];
        values.push(-15.0);
        let n = normalise(&values, Colormap::Bwr, Scaling::default());
        assert_eq!((n.low, n.high), (-1.0, 1.0));
        assert_eq!(n.values[0], 1.0);
        assert_eq!(n.values[1000], -1.0);
    }

    #[test]
    fn levels_scale_by_the_largest_magnitude_as_zennit_does() {
        // zennit's imgify(symmetric=True, level=L): v / max|v| * L, clipped.
        let values = [-4.0, -1.0, 0.0, 0.5, 2.0];
        let n = normalise(&values, Colormap::Bwr, Scaling::Level { level: 1.0 });
        assert_eq!(n.values, vec![-1.0, -0.25, 0.0, 0.125, 0.5]);
        assert_eq!((n.low, n.high), (-4.0, 4.0));
        let n = normalise(&values, Colormap::Bwr, Scaling::Level { level: 4.0 });
        assert_eq!(n.values, vec![-1.0, -1.0, 0.0, 0.5, 1.0]);
        assert_eq!((n.low, n.high), (-1.0, 1.0));
        let n = normalise(&values, Colormap::Positive, Scaling::Level { level: 2.0 });
        assert_eq!(n.values, vec![0.0, 0.0, 0.0, 0.5, 1.0]);
        assert_eq!((n.low, n.high), (0.0, 1.0));
        // Min-max maps: the palette stretched about its middle; the ends' values follow.
        let n = normalise(&[0.0, 1.0, 2.0, 4.0], Colormap::Hot, Scaling::Level { level: 2.0 });
        assert_eq!(n.values, vec![0.0, 0.0, 0.5, 1.0]);
        assert_eq!((n.low, n.high), (1.0, 3.0));
    }

    #[test]
    fn the_outlier_share_is_adjustable() {
        // 10 pixels of 1 and one of 90: 90% of the mass is the one pixel.
        let mut values = vec![1.0f32; 10];
        values.push(90.0);
        let clip = |percent| normalise(&values, Colormap::Bwr, Scaling::Outliers { percent }).high;
        assert_eq!(clip(2.0), 90.0);
        assert_eq!(clip(95.0), 1.0);
        assert_eq!(clip(0.0), 90.0);
    }

    #[test]
    fn scalings_parse_and_print() {
        for spec in ["outliers:2", "outliers:0.5", "level:1", "level:3.5"] {
            assert_eq!(Scaling::parse(spec).unwrap().to_string(), spec);
        }
        assert_eq!(Scaling::parse("outliers").unwrap(), Scaling::default());
        assert_eq!(Scaling::parse(" Level ").unwrap(), Scaling::Level { level: 1.0 });
        for (bad, named) in [
            ("level:0", "above 0"),
            ("level:inf", "above 0"),
            ("outliers:100", "[0, 100)"),
            ("outliers:-1", "[0, 100)"),
            ("level:x", "`x`"),
            ("percentile:99", "unknown scaling"),
        ] {
            let message = Scaling::parse(bad).unwrap_err().to_string();
            assert!(message.contains(named), "{bad}: {message}");
        }
    }

    #[test]
    fn unsigned_maps() {
        let n = normalise(&[2.0, 4.0, 6.0], Colormap::Hot, Scaling::default());
        assert_eq!(n.values, vec![0.0, 0.5, 1.0]);
        assert_eq!(Colormap::Hot.color(0.0), [0, 0, 0]);
        assert_eq!(Colormap::Hot.color(1.0), [255, 255, 255]);
        assert_eq!(Colormap::Hot.color(1.0 / 3.0), [255, 0, 0]);
        assert_eq!(Colormap::Gray.color(0.0), [0, 0, 0]);
        assert_eq!(Colormap::Gray.color(1.0), [255, 255, 255]);
        let n = normalise(&[-5.0, 0.0, 2.0], Colormap::Positive, Scaling::default());
        assert_eq!(n.values, vec![0.0, 0.0, 1.0]);
        assert_eq!(Colormap::Positive.color(0.0), [255, 255, 255]);
        assert_eq!(Colormap::Positive.color(1.0), [255, 0, 0]);
        // constant and non-finite input do not divide by zero
        assert_eq!(
            normalise(&[3.0, 3.0], Colormap::Gray, Scaling::default()).values,
            vec![0.0, 0.0]
        );
        assert_eq!(
            normalise(&[0.0, 0.0], Colormap::Bwr, Scaling::default()).values,
            vec![0.0, 0.0]
        );
        assert_eq!(
            normalise(&[f32::NAN, 1.0], Colormap::Bwr, Scaling::default()).values,
            vec![0.0, 1.0]
        );
    }

    #[test]
    fn parses_names() {
        for c in Colormap::ALL {
            assert_eq!(Colormap::parse(c.name()).unwrap(), c);
        }
        assert!(Colormap::parse("jet").unwrap_err().to_string().contains("jet"));
    }

    #[test]
    fn channels_are_summed_and_maps_resized() {
        let t = Tensor::from_vec(
            vec![1f32, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0],
            (2, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let map = RelevanceMap::from_attribution(&t).unwrap();
        assert_eq!(map.values, vec![11.0, 22.0, 33.0, 44.0]);
        let big = map.resized(4, 4);
        assert_eq!(big.values.len(), 16);
        assert_eq!(big.values[0], 11.0);
        assert_eq!(big.values[15], 44.0);
        assert!(RelevanceMap::from_attribution(&Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap()).is_err());
    }

    #[test]
    fn renders_overlay_with_bar() {
        let photo = RgbImage::from_pixel(32, 24, Rgb([100, 100, 100]));
        let attribution = Tensor::ones((3, 32, 24), DType::F32, &Device::Cpu).unwrap();
        // 32 rows, 24 columns in the attribution do not match 24 rows, 32 columns: resized.
        let r = render(&photo, &attribution, Style::default()).unwrap();
        assert!(r.image.width() > 32);
        assert_eq!(r.image.height(), 24);
        assert_eq!(r.image.get_pixel(5, 5).0, [178, 50, 50]);
        let png = encode_png(&r.image).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        assert!(render(
            &photo,
            &attribution,
            Style {
                alpha: 1.5,
                ..Style::default()
            }
        )
        .is_err());
    }
}
