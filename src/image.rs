//! Photos in, model inputs out: decoding PNG/JPEG/WebP bytes (refusing huge or corrupt files
//! with a clear message) and torchvision-style preprocessing (resize the shorter side with
//! antialiased bilinear filtering, centre-crop, scale to [0, 1], normalise).
//!
//! Everything works on bytes and on `RgbImage`s, never on files, so the browser can use it too.

use std::io::Cursor;

use ::image::{ImageFormat, ImageReader, Limits, RgbImage};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Images with more pixels than this are refused before decoding.
pub const MAX_IMAGE_PIXELS: u64 = 50_000_000;

/// torchvision's ImageNet statistics.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// `Resize(256)` then `CenterCrop(224)`.
pub const IMAGENET_RESIZE: u32 = 256;
pub const IMAGENET_CROP: u32 = 224;

/// A model input with the image it was made from.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// [1, 3, crop, crop], normalised, on the CPU.
    pub tensor: Tensor,
    /// The resized and cropped photo, for overlaying the heatmap on.
    pub image: RgbImage,
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        other => other.extensions_str().first().copied().unwrap_or("unknown"),
    }
}

/// The format and (width, height) of an encoded image, read from its header only.
pub fn dimensions(bytes: &[u8], what: &str) -> Result<(ImageFormat, u32, u32)> {
    if bytes.is_empty() {
        return Err(Error::EmptyFile { what: what.to_string() });
    }
    let format = ::image::guess_format(bytes).map_err(|_| {
        Error::Image(format!(
            "{what} is not a PNG, JPEG or WebP image (its contents match no known image format)"
        ))
    })?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) {
        return Err(Error::Image(format!(
            "{what} is a {} image; candle-xai reads PNG, JPEG and WebP",
            format_name(format).to_uppercase()
        )));
    }
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| Error::Image(format!("{what} is not a valid {} image: {e}", format_name(format))))?;
    Ok((format, width, height))
}

/// Decodes PNG, JPEG or WebP bytes to 8-bit RGB (alpha dropped, grey expanded). `what` names
/// the bytes in error messages. Images over [`MAX_IMAGE_PIXELS`] are refused before decoding.
pub fn decode(bytes: &[u8], what: &str) -> Result<RgbImage> {
    let (format, width, height) = dimensions(bytes, what)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_IMAGE_PIXELS {
        return Err(Error::Image(format!(
            "{what} is {width}x{height} pixels ({:.1} megapixels); images over {} megapixels are refused",
            pixels as f64 / 1e6,
            MAX_IMAGE_PIXELS / 1_000_000
        )));
    }
    if width == 0 || height == 0 {
        return Err(Error::Image(format!("{what} has no pixels ({width}x{height})")));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| Error::Image(format!("could not decode {what} ({}): {e}", format_name(format))))?;
    Ok(image.into_rgb8())
}

/// Per-output-pixel (first source index, weights) of PIL's antialiased bilinear resampling
/// (a triangle filter widened by the downscaling factor), as torchvision uses.
fn resample_weights(in_len: usize, out_len: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_len as f64 / out_len as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    (0..out_len)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64)
                .min(in_len as i64)
                .max(start as i64 + 1) as usize;
            let mut weights: Vec<f64> = (start..end)
                .map(|x| {
                    let t = (x as f64 - center + 0.5) / filter_scale;
                    (1.0 - t.abs()).max(0.0)
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total > 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            } else {
                weights = vec![0.0; end - start];
                weights[0] = 1.0;
            }
            (start, weights.into_iter().map(|w| w as f32).collect())
        })
        .collect()
}

fn round_u8(v: f32) -> u8 {
    (v + 0.5).floor().clamp(0.0, 255.0) as u8
}

/// Resizes to exactly `width` x `height` with antialiased bilinear filtering (PIL's
/// `Image.resize(..., BILINEAR)`: horizontal pass, then vertical, rounding to 8 bits after each).
pub fn resize_bilinear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (in_w, in_h) == (out_w, out_h) {
        return image.clone();
    }
    let src = image.as_raw();
    // Horizontal pass: in_h rows of out_w pixels.
    let columns = resample_weights(in_w, out_w);
    let mut wide = vec![0u8; in_h * out_w * 3];
    for y in 0..in_h {
        for (x, (start, weights)) in columns.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, w) in weights.iter().enumerate() {
                let p = (y * in_w + start + k) * 3;
                for c in 0..3 {
                    acc[c] += w * src[p + c] as f32;
                }
            }
            let q = (y * out_w + x) * 3;
            for c in 0..3 {
                wide[q + c] = round_u8(acc[c]);
            }
        }
    }
    // Vertical pass.
    let rows = resample_weights(in_h, out_h);
    let mut out = vec![0u8; out_h * out_w * 3];
    for (y, (start, weights)) in rows.iter().enumerate() {
        for x in 0..out_w {
            let mut acc = [0f32; 3];
            for (k, w) in weights.iter().enumerate() {
                let p = ((start + k) * out_w + x) * 3;
                for c in 0..3 {
                    acc[c] += w * wide[p + c] as f32;
                }
            }
            let q = (y * out_w + x) * 3;
            for c in 0..3 {
                out[q + c] = round_u8(acc[c]);
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer sized for the image")
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)`.
pub fn resize_shorter_side(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = (image.width() as u64, image.height() as u64);
    let size = size as u64;
    let (new_w, new_h) = if w <= h {
        (size, size * h / w)
    } else {
        (size * w / h, size)
    };
    resize_bilinear(image, new_w.max(1) as u32, new_h.max(1) as u32)
}

/// torchvision's `CenterCrop(size)`: offsets `round((side - size) / 2)`, rounding half to even.
pub fn center_crop(image: &RgbImage, size: u32) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    if size == 0 || size > w || size > h {
        return Err(Error::invalid_parameter(
            "crop",
            format!("cannot crop {size}x{size} pixels out of a {w}x{h} image"),
        ));
    }
    let top = ((h - size) as f64 / 2.0).round_ties_even() as u32;
    let left = ((w - size) as f64 / 2.0).round_ties_even() as u32;
    Ok(::image::imageops::crop_imm(image, left, top, size, size).to_image())
}

/// [1, 3, H, W] f32 on the CPU: pixels / 255, then (v - mean) / std per channel.
pub fn to_tensor(image: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Result<Tensor> {
    for (c, s) in std.iter().enumerate() {
        if !(s.is_finite() && *s > 0.0 && mean[c].is_finite()) {
            return Err(Error::invalid_parameter(
                "std",
                format!("channel {c}: mean {} and std {s} must be finite with std > 0", mean[c]),
            ));
        }
    }
    let (w, h) = (image.width() as usize, image.height() as usize);
    let raw = image.as_raw();
    let mut planar = vec![0f32; 3 * h * w];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planar[c * h * w + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    Ok(Tensor::from_vec(planar, (1, 3, h, w), &Device::Cpu)?)
}

/// torchvision's `Resize(resize)`, `CenterCrop(crop)`, `ToTensor()`, `Normalize(mean, std)`.
pub fn preprocess(image: &RgbImage, resize: u32, crop: u32, mean: [f32; 3], std: [f32; 3]) -> Result<Preprocessed> {
    if resize == 0 || image.width() == 0 || image.height() == 0 {
        return Err(Error::invalid_parameter(
            "resize",
            format!(
                "cannot resize a {}x{} image to {resize} pixels",
                image.width(),
                image.height()
            ),
        ));
    }
    let resized = resize_shorter_side(image, resize);
    let cropped = center_crop(&resized, crop)?;
    let tensor = to_tensor(&cropped, mean, std)?;
    Ok(Preprocessed { tensor, image: cropped })
}

/// The standard ImageNet preprocessing: shorter side to 256, centre 224x224, normalised.
pub fn imagenet_preprocess(image: &RgbImage) -> Result<Preprocessed> {
    preprocess(image, IMAGENET_RESIZE, IMAGENET_CROP, IMAGENET_MEAN, IMAGENET_STD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn imagenet_shape_and_constant_normalisation() {
        let image = RgbImage::from_pixel(300, 200, ::image::Rgb([128, 64, 255]));
        let p = imagenet_preprocess(&image).unwrap();
        assert_eq!(p.tensor.dims(), &[1, 3, 224, 224]);
        assert_eq!(p.image.dimensions(), (224, 224));
        let values = p.tensor.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
        for (c, v) in [128f32, 64.0, 255.0].into_iter().enumerate() {
            let expected = (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            for row in &values[c] {
                for &x in row {
                    assert!((x - expected).abs() < 1e-6, "channel {c}: {x} vs {expected}");
                }
            }
        }
    }

    #[test]
    fn resize_follows_torchvision_sizes() {
        let image = RgbImage::new(300, 200);
        assert_eq!(resize_shorter_side(&image, 256).dimensions(), (384, 256));
        let image = RgbImage::new(201, 333);
        // int(256 * 333 / 201) = 424
        assert_eq!(resize_shorter_side(&image, 256).dimensions(), (256, 424));
    }

    #[test]
    fn crop_is_centred() {
        let mut image = RgbImage::new(6, 5);
        image.put_pixel(2, 1, ::image::Rgb([9, 9, 9]));
        // left = round(1.5) = 2, top = round(1.0) = 1
        let crop = center_crop(&image, 3).unwrap();
        assert_eq!(crop.get_pixel(0, 0).0, [9, 9, 9]);
        // round(0.5) = 0: Python rounds half to even
        let mut image = RgbImage::new(4, 4);
        image.put_pixel(0, 0, ::image::Rgb([7, 7, 7]));
        assert_eq!(center_crop(&image, 3).unwrap().get_pixel(0, 0).0, [7, 7, 7]);
        assert!(center_crop(&image, 5).is_err());
    }

    #[test]
    fn downscaling_averages() {
        // A 2-pixel-period stripe pattern halved becomes uniform grey.
        let image = RgbImage::from_fn(64, 64, |x, _| {
            if x % 2 == 0 {
                [0, 0, 0].into()
            } else {
                [200, 200, 200].into()
            }
        });
        let small = resize_bilinear(&image, 32, 32);
        for p in small.pixels().skip(1).take(20) {
            assert!((p.0[0] as i32 - 100).abs() <= 1, "{:?}", p.0);
        }
    }

    #[test]
    fn decodes_png_and_jpeg() {
        let image = RgbImage::from_fn(40, 30, |x, y| [x as u8 * 5, y as u8 * 5, 100].into());
        let png = decode(&encode(&image, ImageFormat::Png), "a.png").unwrap();
        assert_eq!(png, image);
        let jpeg = decode(&encode(&image, ImageFormat::Jpeg), "a.jpg").unwrap();
        assert_eq!(jpeg.dimensions(), (40, 30));
    }

    #[test]
    fn refuses_bad_bytes() {
        let err = decode(b"hello, I am text", "notes.png").unwrap_err().to_string();
        assert!(
            err.contains("notes.png") && err.contains("not a PNG, JPEG or WebP"),
            "{err}"
        );
        assert!(matches!(decode(b"", "empty.png"), Err(Error::EmptyFile { .. })));
        let image = RgbImage::new(40, 30);
        let png = encode(&image, ImageFormat::Png);
        let err = decode(&png[..png.len() / 2], "half.png").unwrap_err();
        assert!(matches!(err, Error::Image(_)), "{err}");
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn refuses_huge_images_before_decoding() {
        // A PNG header claiming 10000x10000 pixels, with no pixel data at all.
        let image = RgbImage::new(1, 1);
        let mut png = encode(&image, ImageFormat::Png);
        // IHDR width and height live at bytes 16..24.
        png[16..20].copy_from_slice(&10_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&10_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&png, "huge.png").unwrap_err().to_string();
        assert!(err.contains("megapixels"), "{err}");
    }
}
