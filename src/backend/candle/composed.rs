//! The operations whose CPU kernels have no CUDA twin, composed of candle ops for CUDA (whose
//! convolution is candle's im2col + cuBLAS, and element-wise ops candle's kernels). They run on
//! any candle device, so the tests below check them on the CPU against our CPU kernels: what a
//! CUDA run computes is then candle's CUDA ops applied as tested here.

use candle_core::{DType, Tensor};

use super::activation;
use super::padding::{flip_hw, insert_zeros_hw, pad_or_crop_hw};
use crate::backend::{Map, WindowGeometry, Zip};
use crate::error::Result;

fn mask(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

/// An element-wise map.
pub fn map(x: &Tensor, op: Map) -> Result<Tensor> {
    Ok(match op {
        Map::Affine { mul, add } => x.affine(mul as f64, add as f64)?,
        Map::Abs => x.abs()?,
        Map::Sqr => x.sqr()?,
        Map::Clamp { low, high } => x.clamp(low, high)?,
        Map::Stabilize { epsilon } => {
            let sign = mask(&x.ge(0f64)?)?.affine(2.0, -1.0)?;
            (x + sign.affine(epsilon as f64, 0.0)?)?
        }
        Map::PositiveMask => mask(&x.gt(0f32)?)?,
        Map::NegativeMask => mask(&x.lt(0f32)?)?,
        Map::Fill { value } => Tensor::full(value, x.dims(), x.device())?,
        Map::Activation(a) => activation::forward(a, x)?,
    })
}

/// An element-wise map of two tensors of one shape.
pub fn zip(a: &Tensor, b: &Tensor, op: Zip) -> Result<Tensor> {
    Ok(match op {
        Zip::Add => (a + b)?,
        Zip::Sub => (a - b)?,
        Zip::Mul => (a * b)?,
        Zip::Div => (a / b)?,
        Zip::ActivationVjp(act) => (b * activation::derivative(act, a)?)?,
    })
}

/// Correlation of `x` [N, C, H, W] with `kernel` [C_out, C/groups, kh, kw]; uneven padding is
/// applied by a padded copy (candle's conv2d pads all sides alike).
pub fn conv2d(x: &Tensor, kernel: &Tensor, geometry: &WindowGeometry) -> Result<Tensor> {
    let (t, b, l, r) = geometry.padding;
    let (stride, dilation, groups) = (geometry.stride, geometry.dilation, geometry.groups);
    if t == b && l == r && t == l {
        return Ok(x.conv2d(kernel, t, stride, dilation, groups)?);
    }
    let padded = pad_or_crop_hw(x, t as isize, b as isize, l as isize, r as isize, 0.0)?;
    Ok(padded.conv2d(kernel, 0, stride, dilation, groups)?)
}

/// The input-VJP of [`conv2d`]: the zero-inserted gradient, framed to the input's size,
/// correlated with the flipped, in/out-swapped kernel.
pub fn conv2d_transposed(
    grad: &Tensor,
    kernel: &Tensor,
    geometry: &WindowGeometry,
    input_hw: (usize, usize),
) -> Result<Tensor> {
    let (kh, kw) = geometry.kernel;
    let (t, _, l, _) = geometry.padding;
    let spread = insert_zeros_hw(grad, geometry.stride, geometry.stride)?;
    let (sh, sw) = (spread.dim(2)?, spread.dim(3)?);
    let reach_h = (geometry.dilation * (kh - 1)) as isize;
    let reach_w = (geometry.dilation * (kw - 1)) as isize;
    let top = reach_h - t as isize;
    let left = reach_w - l as isize;
    let bottom = input_hw.0 as isize - sh as isize + reach_h - top;
    let right = input_hw.1 as isize - sw as isize + reach_w - left;
    let framed = pad_or_crop_hw(&spread, top, bottom, left, right, 0.0)?;
    let flipped = transpose_kernel(kernel, geometry.groups)?;
    Ok(framed.conv2d(&flipped, 0, 1, geometry.dilation, geometry.groups)?)
}

/// In/out channels swapped per group and flipped in space: the kernel of the transposed
/// convolution as a plain correlation.
fn transpose_kernel(kernel: &Tensor, groups: usize) -> Result<Tensor> {
    let (c_out, c_in_per_group, kh, kw) = kernel.dims4()?;
    let g = groups;
    let swapped = kernel
        .reshape((g, c_out / g, c_in_per_group, kh, kw))?
        .transpose(1, 2)?
        .reshape((g * c_in_per_group, c_out / g, kh, kw))?
        .contiguous()?;
    flip_hw(&swapped)
}

/// x * scale + shift with [C] or [N, C] parameters broadcast as [1 or N, C, 1, ...].
pub fn channel_affine(x: &Tensor, scale: Option<&Tensor>, shift: Option<&Tensor>) -> Result<Tensor> {
    let broadcastable = |p: &Tensor| -> Result<Tensor> {
        let mut dims = vec![1; x.rank()];
        let pd = p.dims();
        dims[1] = pd[pd.len() - 1];
        if pd.len() == 2 {
            dims[0] = pd[0];
        }
        Ok(p.reshape(dims)?)
    };
    let mut y = x.clone();
    if let Some(s) = scale {
        y = y.broadcast_mul(&broadcastable(s)?)?;
    }
    if let Some(s) = shift {
        y = y.broadcast_add(&broadcastable(s)?)?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    //! Each composition against the CPU kernel it stands in for, on the CPU: random shapes
    //! across strides, dilations, groups and uneven padding; every activation at its kinks.

    use candle_core::{Device, Tensor};

    use super::super::elementwise;
    use super::super::im2col::{col2im_transpose, im2col_correlate, Sliding};
    use super::*;
    use crate::backend::{Activation, Map, Zip};
    use crate::rng::SplitMix64;

    fn random(stream: &mut SplitMix64, dims: &[usize]) -> Tensor {
        let len = dims.iter().product();
        let values: Vec<f32> = (0..len).map(|_| (stream.uniform() * 2.0 - 1.0) as f32).collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// max |a - b| <= 1e-5 * max |b|: the two sum in different orders.
    fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
        assert_eq!(a.dims(), b.dims(), "{what}");
        let scale = b
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let gap = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let gap = gap.to_scalar::<f32>().unwrap();
        assert!(
            gap <= 1e-5 * scale.max(1e-6),
            "{what}: differs by {gap} (scale {scale})"
        );
    }

    #[test]
    fn convolutions_equal_the_cpu_kernels() {
        let mut stream = SplitMix64::new(11);
        for case in 0..60 {
            let groups = [1, 2, 3][case % 3];
            let (kh, kw) = (stream.pick(1, 3), stream.pick(1, 3));
            let (stride, dilation) = (stream.pick(1, 2), stream.pick(1, 2));
            let padding = (
                stream.pick(0, 2),
                stream.pick(0, 2),
                stream.pick(0, 2),
                stream.pick(0, 2),
            );
            let (c_in, c_out) = (groups * stream.pick(1, 3), groups * stream.pick(1, 2));
            let (h, w) = (stream.pick(5, 9), stream.pick(5, 9));
            let geometry = WindowGeometry {
                kernel: (kh, kw),
                stride,
                dilation,
                padding,
                groups,
            };
            let what = format!("case {case}: {geometry:?} on {c_in}x{h}x{w}");
            let out_hw = geometry.output_hw((h, w)).expect("the shapes fit");
            let sliding = Sliding {
                stride,
                dilation,
                groups,
                pad_top: padding.0,
                pad_left: padding.2,
                out_hw,
            };
            let x = random(&mut stream, &[2, c_in, h, w]);
            let kernel = random(&mut stream, &[c_out, c_in / groups, kh, kw]);
            let ours = im2col_correlate(&x, &kernel, sliding).unwrap();
            assert_close(&what, &conv2d(&x, &kernel, &geometry).unwrap(), &ours);
            let grad = random(&mut stream, &[2, c_out, out_hw.0, out_hw.1]);
            let ours = col2im_transpose(&grad, &kernel, sliding, (h, w)).unwrap();
            let composed = conv2d_transposed(&grad, &kernel, &geometry, (h, w)).unwrap();
            assert_close(&format!("{what}, transposed"), &composed, &ours);
        }
    }

    #[test]
    fn channel_affine_equals_the_cpu_kernel() {
        let mut stream = SplitMix64::new(12);
        let x = random(&mut stream, &[2, 3, 4, 5]);
        let (scale, shift) = (random(&mut stream, &[3]), random(&mut stream, &[3]));
        let (s, t) = (scale.to_vec1().unwrap(), shift.to_vec1().unwrap());
        let kernel = elementwise::channel_affine_activation(&x, &s, &t, None).unwrap();
        assert_close(
            "channel affine",
            &channel_affine(&x, Some(&scale), Some(&shift)).unwrap(),
            &kernel,
        );
    }

    /// Every map and arithmetic zip, bit for bit: the CPU loops must give what candle's ops
    /// give, signed zeros, infinities and NaN included.
    #[test]
    fn maps_and_zips_equal_the_cpu_kernels_bit_for_bit() {
        let maps = [
            Map::Affine { mul: 0.3, add: -1.7 },
            Map::Abs,
            Map::Sqr,
            Map::Clamp {
                low: 0.0,
                high: f32::INFINITY,
            },
            Map::Clamp {
                low: f32::NEG_INFINITY,
                high: 0.0,
            },
            Map::Clamp { low: -1.0, high: 2.5 },
            Map::Stabilize { epsilon: 1e-6 },
            Map::PositiveMask,
            Map::NegativeMask,
            Map::Fill { value: 0.25 },
        ];
        let mut values = vec![-3.0f32, -1e-3, 0.0, -0.0, 1e-3, 2.5, 7.0, 1e-30, -1e-30];
        values.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, f32::MIN_POSITIVE]);
        values.extend((0..40).map(|i| (i as f32 - 20.0) * 0.45));
        let x = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        let mut shifted = values.clone();
        shifted.rotate_left(5);
        let rhs = Tensor::new(shifted.as_slice(), &Device::Cpu).unwrap();
        let bits = |t: Tensor| -> Vec<u32> {
            let canonical = |v: f32| if v.is_nan() { f32::NAN.to_bits() } else { v.to_bits() };
            t.to_vec1::<f32>().unwrap().into_iter().map(canonical).collect()
        };
        for op in maps {
            let (composed, ours) = (map(&x, op).unwrap(), elementwise::map(&x, op).unwrap());
            assert_eq!(bits(composed), bits(ours), "{op:?}");
        }
        for op in [Zip::Add, Zip::Sub, Zip::Mul, Zip::Div] {
            let (composed, ours) = (zip(&x, &rhs, op).unwrap(), elementwise::zip(&x, &rhs, op).unwrap());
            assert_eq!(bits(composed), bits(ours), "{op:?}");
        }
    }

    #[test]
    fn activations_equal_the_cpu_kernels_at_their_kinks() {
        let activations = [
            Activation::Relu,
            Activation::Relu6,
            Activation::LeakyRelu { negative_slope: 0.1 },
            Activation::Silu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Hardswish,
            Activation::Hardsigmoid,
        ];
        // The kinks of ReLU, ReLU6, hardswish and hardsigmoid, either side of them, and a spread.
        let mut values = vec![-6.0f32, -3.0, -1e-3, 0.0, 1e-3, 3.0, 6.0, -3.001, 2.999, 6.001];
        values.extend((0..40).map(|i| (i as f32 - 20.0) * 0.45));
        let x = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        let grad = Tensor::new(vec![1.5f32; values.len()], &Device::Cpu).unwrap();
        for activation in activations {
            let what = format!("{activation:?}");
            let forward = activation::forward(activation, &x).unwrap();
            assert_close(
                &what,
                &forward,
                &elementwise::map(&x, Map::Activation(activation)).unwrap(),
            );
            let vjp = (&grad * activation::derivative(activation, &x).unwrap()).unwrap();
            assert_close(
                &format!("{what} VJP"),
                &vjp,
                &elementwise::zip(&x, &grad, Zip::ActivationVjp(activation)).unwrap(),
            );
        }
    }

    /// A BatchNorm with its ReLU or ReLU6 fused (`Graph::with_fused_activations`) must give
    /// what the two layers give in turn, bit for bit, forward and back; back, the fused VJP
    /// reads the activation's derivative from the fused output, which must agree with the
    /// derivative at the activation's input at the kinks (0, 6), signed zeros, infinities and NaN.
    #[test]
    fn fused_batch_norm_and_activation_equal_the_two_kernels_bit_for_bit() {
        let mut values = vec![-3.0f32, -1e-3, 0.0, -0.0, 1e-3, 2.5, 6.0, 5.999_999_5, 6.000_000_5, 7.0];
        values.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
            -1e-30,
        ]);
        values.extend((0..48).map(|i| (i as f32 - 20.0) * 0.3));
        let n = values.len();
        // Channel 0 keeps the values; channel 1 moves them onto the kinks from elsewhere.
        let x = Tensor::from_vec([values.clone(), values].concat(), (1, 2, 1, n), &Device::Cpu).unwrap();
        let (scale, shift) = ([1.0f32, 0.5], [0.0f32, 3.0]);
        let grad_values: Vec<f32> = (0..2 * n).map(|i| [1.5, -0.0, -2.25, 0.0][i % 4]).collect();
        let grad = Tensor::from_vec(grad_values, (1, 2, 1, n), &Device::Cpu).unwrap();
        let bits = |t: Tensor| -> Vec<u32> {
            let canonical = |v: f32| if v.is_nan() { f32::NAN.to_bits() } else { v.to_bits() };
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(canonical)
                .collect()
        };
        for activation in [Activation::Relu, Activation::Relu6] {
            let normed = elementwise::channel_affine_activation(&x, &scale, &shift, None).unwrap();
            let apart = elementwise::map(&normed, Map::Activation(activation)).unwrap();
            let fused = elementwise::channel_affine_activation(&x, &scale, &shift, Some(activation)).unwrap();
            assert_eq!(bits(apart.clone()), bits(fused.clone()), "{activation:?} forward");
            let through = elementwise::zip(&normed, &grad, Zip::ActivationVjp(activation)).unwrap();
            let apart_vjp = elementwise::channel_affine_activation(&through, &scale, &[0.0; 2], None).unwrap();
            let fused_vjp = elementwise::activation_channel_scale_vjp(&fused, &grad, &scale, activation).unwrap();
            assert_eq!(bits(apart_vjp), bits(fused_vjp), "{activation:?} VJP");
        }
    }
}
