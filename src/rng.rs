//! A small seeded generator (SplitMix64) so that noise is the same on every platform and
//! device, native or wasm, for the same seed.

pub struct SplitMix64(u64);

/// What a stream of draws is for: each purpose and index (a sample of the batch) gets its own
/// stream of a seed, so draws do not depend on batching or on the other purposes. The fixture
/// script `scripts/make_metric_fixtures.py` replays these streams inside pnpxai.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    MuFidelityNoise = 1,
    MuFidelitySubsets = 2,
    SensitivityNoise = 3,
    /// The parameters of the `index`-th layer randomised (top down) by the sanity check.
    Randomisation = 4,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The stream of `seed` for `purpose` and `index`.
    pub fn stream(seed: u64, purpose: Stream, index: usize) -> Self {
        Self::new(
            seed ^ (purpose as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
        )
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An integer in `low..=high` (modulo bias aside: for test cases, not statistics).
    pub fn pick(&mut self, low: usize, high: usize) -> usize {
        low + (self.next_u64() % (high - low + 1) as u64) as usize
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` standard normal samples (Box-Muller).
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}
