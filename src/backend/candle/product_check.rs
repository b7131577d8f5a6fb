//! The product kernels' shared test: products of every edge (rows and columns past the last
//! whole tile, more blocks than threads, reductions longer than a run and of one tap or none,
//! A read through swapped strides as the transposed convolution reads its filters, B's rows
//! wider than the product), each checked against a float64 product.

/// One product: A [m, k] at `a` through `a_strides`, B [k, n] at `b` with rows `b_stride`
/// apart, the reduction in runs of `run`.
pub(super) struct Case {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub run: usize,
    pub a: Vec<f32>,
    pub a_strides: (isize, isize),
    pub b: Vec<f32>,
    pub b_stride: usize,
}

/// The cases: (m, n, k, run, A transposed, extra columns in B's rows).
pub(super) fn cases() -> impl Iterator<Item = Case> {
    [
        (8, 48, 16, 128, false, 0),
        (7, 13, 300, 128, false, 0),
        (1, 1, 1, 128, false, 0),
        (9, 30, 129, 65, true, 5),
        (5, 8, 3, 2, true, 0),
        (300, 1000, 40, 16, false, 3),
        (147, 500, 64, 128, true, 0),
        (12, 17, 0, 128, false, 0),
    ]
    .into_iter()
    .map(|(m, n, k, run, transposed, extra)| {
        let value = |i: usize| ((i * 7919 % 211) as f32 - 105.0) / 37.0;
        let b_stride = n + extra;
        Case {
            m,
            n,
            k,
            run,
            a: (0..m * k).map(value).collect(),
            // A [m, k] row-major, or stored [k, m] and read through swapped strides.
            a_strides: if transposed { (1, m as isize) } else { (k as isize, 1) },
            b: (0..k * b_stride).map(|i| value(i + 31)).collect(),
            b_stride,
        }
    })
}

impl Case {
    /// Asserts that `dst` [m, n] is A @ B within float32 rounding of each sum.
    pub fn assert_equals_float64(&self, dst: &[f32]) {
        let Self { m, n, k, run, .. } = *self;
        let a_at =
            |i: usize, p: usize| self.a[(i as isize * self.a_strides.0 + p as isize * self.a_strides.1) as usize];
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| a_at(i, p) as f64 * self.b[p * self.b_stride + j] as f64);
                let exact: f64 = terms.clone().sum();
                let scale: f64 = terms.map(f64::abs).sum();
                let got = dst[i * n + j];
                assert!(
                    (got as f64 - exact).abs() <= 1e-6 * scale.max(1.0),
                    "m={m} n={n} k={k} run={run}: [{i}, {j}] = {got}, expected {exact}"
                );
            }
        }
    }
}
