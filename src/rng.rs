//! A small seeded generator (SplitMix64) so that noise is the same on every platform and
//! device, native or wasm, for the same seed.

use rayon::prelude::*;

pub struct SplitMix64(u64);

/// What each draw adds to the state.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

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
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
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

    /// `n` standard normal samples (Box-Muller), drawn in parallel: the generator is a
    /// counter (after k draws its state has moved by k golden gammas), so each chunk of pairs
    /// starts where the draws before it leave off, and the values are those of one draw after
    /// the other. (A SmoothGrad of 8 copies of a 224x224 photo spent 19 ms here on one core.)
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        const PAIRS_PER_CHUNK: usize = 4096;
        let pairs = n.div_ceil(2);
        let start = self.0;
        let mut out = vec![0.0; 2 * pairs];
        out.par_chunks_mut(2 * PAIRS_PER_CHUNK)
            .enumerate()
            .for_each(|(chunk, values)| {
                let draws_before = (2 * chunk * PAIRS_PER_CHUNK) as u64;
                let mut rng = Self(start.wrapping_add(draws_before.wrapping_mul(GOLDEN_GAMMA)));
                for pair in values.chunks_exact_mut(2) {
                    let u1 = 1.0 - rng.uniform(); // (0, 1]: ln is finite
                    let u2 = rng.uniform();
                    let r = (-2.0 * u1.ln()).sqrt();
                    let theta = std::f64::consts::TAU * u2;
                    pair[0] = (r * theta.cos()) as f32;
                    pair[1] = (r * theta.sin()) as f32;
                }
            });
        self.0 = start.wrapping_add((2 * pairs as u64).wrapping_mul(GOLDEN_GAMMA));
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks drawn in parallel are the draws one after the other, and leave the
    /// generator where those leave it: odd counts, and counts across chunk boundaries.
    #[test]
    fn parallel_normals_are_the_sequential_draws() {
        for n in [1, 2, 7, 8192, 8193, 3 * 8192 + 5] {
            let mut sequential = SplitMix64::new(42);
            let mut expected = Vec::with_capacity(n + 1);
            while expected.len() < n {
                let u1 = 1.0 - sequential.uniform();
                let u2 = sequential.uniform();
                let r = (-2.0 * u1.ln()).sqrt();
                let theta = std::f64::consts::TAU * u2;
                expected.push((r * theta.cos()) as f32);
                expected.push((r * theta.sin()) as f32);
            }
            expected.truncate(n);
            let mut parallel = SplitMix64::new(42);
            let got = parallel.normals(n);
            assert!(
                got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()) && got.len() == n,
                "n = {n}: the parallel draws differ"
            );
            assert_eq!(
                parallel.next_u64(),
                sequential.next_u64(),
                "n = {n}: the state after differs"
            );
        }
    }
}
