//! Photos in, model inputs out: decoding PNG/JPEG/WebP bytes (refusing huge or corrupt files
//! with a clear message) and torchvision-style preprocessing (resize the shorter side with
//! antialiased bilinear filtering, centre-crop, scale to [0, 1], normalise).
//!
//! Everything works on bytes and on `RgbImage`s, never on files, so the browser can use it too.

use std::io::Cursor;
use std::ops::Range;

use ::image::{ImageFormat, ImageReader, Limits, RgbImage};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Images with more pixels than this are refused before decoding.
pub const MAX_IMAGE_PIXELS: u64 = 50_000_000;
/// The most a decoder may allocate: a 50-megapixel RGBA image at 16 bits per channel.
const MAX_DECODE_BYTES: u64 = MAX_IMAGE_PIXELS * 8;

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
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(Error::Image(format!(
            "{what} is a truncated or corrupt JPEG (its image data does not end with the end-of-image \
             marker); decoding it would fill the missing part with grey"
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| Error::Image(format!("could not decode {what} ({}): {e}", format_name(format))))?;
    Ok(image.into_rgb8())
}

/// Whether a JPEG's markers lead to its end-of-image marker after the image data. A truncated
/// JPEG decodes "successfully" with its missing part grey; this tells the two apart. Data
/// after the end-of-image marker (some cameras append their own) is allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const STANDALONE: std::ops::RangeInclusive<u8> = 0xd0..=0xd7; // RST0..RST7
    let mut pos = 2; // past SOI
    loop {
        // A marker: 0xff (fill bytes may repeat it), then its code.
        while bytes.get(pos) == Some(&0xff) && bytes.get(pos + 1) == Some(&0xff) {
            pos += 1;
        }
        let (Some(&0xff), Some(&code)) = (bytes.get(pos), bytes.get(pos + 1)) else {
            return false;
        };
        pos += 2;
        match code {
            0xd9 => return true,
            0x01 => continue,
            c if STANDALONE.contains(&c) => continue,
            _ => {}
        }
        let Some(len) = bytes
            .get(pos..pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return false;
        };
        pos += len;
        if code == 0xda {
            // Entropy-coded data up to the next marker that is neither a stuffed 0xff00 nor a
            // restart marker.
            loop {
                match (bytes.get(pos), bytes.get(pos + 1)) {
                    (Some(&0xff), Some(&next)) if next != 0x00 && !STANDALONE.contains(&next) && next != 0xff => break,
                    (Some(_), Some(_)) => pos += 1,
                    _ => return false,
                }
            }
        }
    }
}

/// Per-output-pixel (first source index, weights) of PIL's antialiased bilinear resampling
/// (a triangle filter widened by the downscaling factor), as torchvision uses, for the output
/// pixels `window` of `out_len`.
fn resample_weights(in_len: usize, out_len: u64, window: Range<u64>) -> Vec<(usize, Vec<f32>)> {
    let scale = in_len as f64 / out_len as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    window
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

/// A window of `image` resized to `width` x `height` with antialiased bilinear filtering
/// (PIL's `Image.resize(..., BILINEAR)`: horizontal pass, then vertical, rounding to 8 bits
/// after each): the `columns` x `rows` output pixels only, computed from the source rows they
/// need. Each output pixel is what the whole resize gives it, at the cost of the window.
fn resize_window(image: &RgbImage, (width, height): (u64, u64), columns: Range<u64>, rows: Range<u64>) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let src = image.as_raw();
    let columns = resample_weights(in_w, width, columns);
    let rows = resample_weights(in_h, height, rows);
    let out_w = columns.len();
    // Horizontal pass over the source rows the vertical pass reads.
    let first = rows.first().map_or(0, |(start, _)| *start);
    let last = rows.iter().map(|(start, w)| start + w.len()).max().unwrap_or(0);
    let mut wide = vec![0u8; (last - first) * out_w * 3];
    for y in first..last {
        for (x, (start, weights)) in columns.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, w) in weights.iter().enumerate() {
                let p = (y * in_w + start + k) * 3;
                for c in 0..3 {
                    acc[c] += w * src[p + c] as f32;
                }
            }
            let q = ((y - first) * out_w + x) * 3;
            for c in 0..3 {
                wide[q + c] = round_u8(acc[c]);
            }
        }
    }
    // Vertical pass.
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (y, (start, weights)) in rows.iter().enumerate() {
        for x in 0..out_w {
            let mut acc = [0f32; 3];
            for (k, w) in weights.iter().enumerate() {
                let p = ((start - first + k) * out_w + x) * 3;
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
    RgbImage::from_raw(out_w as u32, rows.len() as u32, out).expect("buffer sized for the image")
}

/// Resizes to exactly `width` x `height` with antialiased bilinear filtering (PIL's
/// `Image.resize(..., BILINEAR)`).
pub fn resize_bilinear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    let size = (u64::from(width), u64::from(height));
    resize_window(image, size, 0..size.0, 0..size.1)
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)`.
fn shorter_side_to(image: &RgbImage, size: u32) -> (u64, u64) {
    let (w, h) = (u64::from(image.width()), u64::from(image.height()));
    let size = u64::from(size);
    let (new_w, new_h) = if w <= h {
        (size, size * h / w)
    } else {
        (size * w / h, size)
    };
    (new_w.max(1), new_h.max(1))
}

/// torchvision's `Resize(size)` with an int (see [`preprocess`] for resizing and cropping
/// without the whole intermediate image).
pub fn resize_shorter_side(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = shorter_side_to(image, size);
    resize_bilinear(image, w as u32, h as u32)
}

/// torchvision's `CenterCrop(size)` offset along one side: `round((side - size) / 2)`,
/// rounding half to even.
fn crop_offset(side: u64, size: u64) -> u64 {
    ((side - size) as f64 / 2.0).round_ties_even() as u64
}

fn crop_error(size: u32, (w, h): (u64, u64)) -> Error {
    Error::invalid_parameter(
        "crop",
        format!("cannot crop {size}x{size} pixels out of a {w}x{h} image"),
    )
}

/// torchvision's `CenterCrop(size)`: offsets `round((side - size) / 2)`, rounding half to even.
pub fn center_crop(image: &RgbImage, size: u32) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    if size == 0 || size > w || size > h {
        return Err(crop_error(size, (w.into(), h.into())));
    }
    let top = crop_offset(h.into(), size.into()) as u32;
    let left = crop_offset(w.into(), size.into()) as u32;
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
    // Only the crop's pixels of the resized image are computed: an extreme aspect ratio
    // (100000x1) would make the whole intermediate gigabytes.
    let resized = shorter_side_to(image, resize);
    if crop == 0 || u64::from(crop) > resized.0.min(resized.1) {
        return Err(crop_error(crop, resized));
    }
    let (left, top) = (crop_offset(resized.0, crop.into()), crop_offset(resized.1, crop.into()));
    let crop = u64::from(crop);
    let cropped = resize_window(image, resized, left..left + crop, top..top + crop);
    let tensor = to_tensor(&cropped, mean, std)?;
    Ok(Preprocessed { tensor, image: cropped })
}

/// The standard ImageNet preprocessing: shorter side to 256, centre 224x224, normalised.
pub fn imagenet_preprocess(image: &RgbImage) -> Result<Preprocessed> {
    preprocess(image, IMAGENET_RESIZE, IMAGENET_CROP, IMAGENET_MEAN, IMAGENET_STD)
}

/// The ImageNet preprocessing for a model that takes `size` x `size` images (a vision
/// transformer trained at 384; None: ImageNet's 224): the shorter side to `size` / 0.875 (256
/// for 224), then the centre crop, normalised.
pub fn imagenet_preprocess_at(image: &RgbImage, size: Option<usize>) -> Result<Preprocessed> {
    let crop = size.map_or(IMAGENET_CROP, |s| u32::try_from(s).unwrap_or(u32::MAX));
    let pixels = u64::from(crop) * u64::from(crop);
    if pixels > crate::limits::MAX_INPUT_PIXELS as u64 {
        return Err(Error::invalid_parameter(
            "crop",
            format!(
                "a {crop}x{crop} crop is more than the {} pixels a model input may have",
                crate::limits::MAX_INPUT_PIXELS
            ),
        ));
    }
    let resize = (f64::from(crop) * f64::from(IMAGENET_RESIZE) / f64::from(IMAGENET_CROP)).round() as u32;
    preprocess(image, resize, crop, IMAGENET_MEAN, IMAGENET_STD)
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

    /// A photo-like pattern: varied pixels, so that resampling errors show.
    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let v = |k: u32| ((x * 37 + y * 91 + k * 53) % 251) as u8;
            [v(0), v(1), v(2)].into()
        })
    }

    #[test]
    fn preprocessing_computes_only_the_crop_and_equals_resize_then_crop() {
        for (w, h) in [(300, 200), (201, 333), (224, 224), (97, 1000)] {
            let image = pattern(w, h);
            let whole = center_crop(&resize_shorter_side(&image, 256), 224).unwrap();
            assert_eq!(imagenet_preprocess(&image).unwrap().image, whole, "{w}x{h}");
        }
        // 100000x1 resized whole would be 25.6 million x 256 pixels (19 GB); the crop is
        // all that is made. Both orientations.
        for (w, h) in [(100_000, 1), (1, 100_000)] {
            let p = imagenet_preprocess(&pattern(w, h)).unwrap();
            assert_eq!(p.tensor.dims(), &[1, 3, 224, 224]);
        }
    }

    #[test]
    fn truncated_jpegs_are_refused_and_trailing_data_is_not() {
        let bytes = encode(&pattern(64, 48), ImageFormat::Jpeg);
        assert!(decode(&bytes, "photo.jpg").is_ok());
        for keep in [bytes.len() / 3, bytes.len() - 2] {
            let err = decode(&bytes[..keep], "photo.jpg").unwrap_err().to_string();
            assert!(err.contains("truncated"), "{keep} bytes: {err}");
        }
        let trailing = [&bytes[..], b"camera data"].concat();
        assert!(decode(&trailing, "photo.jpg").is_ok());
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
