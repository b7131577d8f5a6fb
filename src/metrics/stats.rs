//! The statistics the metrics reduce to, with the exact conventions of the libraries pnpxai
//! calls: scipy's `spearmanr` (average ranks for ties, NaN for a constant series), numpy's
//! `histogram` (float32 edges, the last bin closed) and scipy's `entropy` (natural log).

/// Ranks from 1, ties sharing the mean of their ranks (scipy's `rankdata`, method "average").
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) share the ranks start+1..=end.
        let shared = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = shared;
        }
        start = end;
    }
    ranks
}

/// Pearson's correlation; NaN when either series is constant (no variation to correlate).
fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

/// Spearman's rank correlation of two equally long series; NaN when a series is constant or
/// holds a NaN, as scipy's `spearmanr`.
pub(crate) fn spearman(x: &[f64], y: &[f64]) -> f64 {
    if x.len() < 2 || x.iter().chain(y).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// The mean of each `size`-wide window centred on each element, the edges mirrored with the
/// edge element repeated (scipy.ndimage's `uniform_filter1d`, mode "reflect").
fn uniform_filter(x: &[f64], size: usize) -> Vec<f64> {
    let n = x.len() as isize;
    let half = (size / 2) as isize;
    let at = |i: isize| -> f64 {
        // Reflect until inside: d c b a | a b c d | d c b a
        let mut i = i;
        loop {
            if i < 0 {
                i = -i - 1;
            } else if i >= n {
                i = 2 * n - i - 1;
            } else {
                return x[i as usize];
            }
        }
    };
    (0..n)
        .map(|i| (i - half..i - half + size as isize).map(at).sum::<f64>() / size as f64)
        .collect()
}

/// The structural similarity of two equally long series, as skimage's
/// `structural_similarity` with Quantus' arguments: a 7-wide uniform window, sample
/// covariances, K1 = 0.01, K2 = 0.03, the data range spanning both series, and the mean over
/// the positions whose window lies inside.
pub(crate) fn ssim(a: &[f64], b: &[f64]) -> f64 {
    const WIN: usize = 7;
    if a.len() < WIN {
        return f64::NAN;
    }
    let (low, high) = a
        .iter()
        .chain(b)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let range = (high - low).abs();
    let (c1, c2) = ((0.01 * range).powi(2), (0.03 * range).powi(2));
    let product = |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p * q).collect() };
    let (ux, uy) = (uniform_filter(a, WIN), uniform_filter(b, WIN));
    let (uxx, uyy, uxy) = (
        uniform_filter(&product(a, a), WIN),
        uniform_filter(&product(b, b), WIN),
        uniform_filter(&product(a, b), WIN),
    );
    let cov_norm = WIN as f64 / (WIN - 1) as f64;
    let pad = (WIN - 1) / 2;
    let inside = pad..a.len() - pad;
    let count = inside.len() as f64;
    inside
        .map(|i| {
            let (vx, vy) = (cov_norm * (uxx[i] - ux[i] * ux[i]), cov_norm * (uyy[i] - uy[i] * uy[i]));
            let vxy = cov_norm * (uxy[i] - ux[i] * uy[i]);
            let numerator = (2.0 * ux[i] * uy[i] + c1) * (2.0 * vxy + c2);
            let denominator = (ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2);
            numerator / denominator
        })
        .sum::<f64>()
        / count
}

/// Counts of `values` in `bins` equal-width bins over [min, max], as `numpy.histogram` of a
/// float32 array: edges are float32 (`linspace` in the array's type), a value's bin is found
/// from its offset and then corrected against the edges, and the last bin includes the
/// maximum. All values in one point: the range is that point ± 0.5.
pub(crate) fn histogram(values: &[f32], bins: usize) -> Vec<u64> {
    let mut counts = vec![0u64; bins];
    let Some((mut first, mut last)) = values.iter().fold(None, |acc: Option<(f32, f32)>, &v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    }) else {
        return counts;
    };
    if first == last {
        first -= 0.5;
        last += 0.5;
    }
    let step = (last - first) / bins as f32;
    let mut edges: Vec<f32> = (0..=bins).map(|i| i as f32 * step + first).collect();
    edges[bins] = last;
    let width = last - first;
    for &v in values {
        let mut index = (((v - first) / width) * bins as f32) as usize;
        if index == bins {
            index -= 1;
        }
        if v < edges[index] {
            index -= 1;
        } else if v >= edges[index + 1] && index != bins - 1 {
            index += 1;
        }
        counts[index] += 1;
    }
    counts
}

/// Shannon entropy (natural log) of the distribution proportional to `counts`; 0 log 0 = 0.
pub(crate) fn entropy(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_share_their_mean_rank() {
        assert_eq!(average_ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    #[test]
    fn spearman_follows_scipy() {
        // scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
        assert!((r - 0.820_782_681_668_123_3).abs() < 1e-15, "{r}");
        assert!(spearman(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]).is_nan());
    }

    #[test]
    fn histogram_follows_numpy() {
        // numpy.histogram(np.float32([0, 0.1, 0.2, 0.3, 1.0]), bins=10)[0]
        assert_eq!(
            histogram(&[0.0, 0.1, 0.2, 0.3, 1.0], 10),
            vec![1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
        );
        // A constant array: range value ± 0.5, everything in the middle bin.
        assert_eq!(histogram(&[2.0; 4], 4), vec![0, 0, 4, 0]);
    }

    #[test]
    fn ssim_follows_skimage() {
        // skimage.metrics.structural_similarity(a, b, data_range=...) on these 1-D arrays,
        // with the data range of both: 0.10632791570942375 (float64 inputs).
        let a: Vec<f64> = (0..20).map(|i| ((i * 7) % 11) as f64 / 10.0).collect();
        let b: Vec<f64> = (0..20).map(|i| ((i * 5) % 13) as f64 / 12.0).collect();
        let s = ssim(&a, &b);
        assert!((s - 0.106_327_915_709_423_75).abs() < 1e-12, "{s}");
        assert!((ssim(&a, &a) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn entropy_is_natural_log() {
        assert!((entropy(&[1, 1, 0, 2]) - 1.039_720_770_839_917_9).abs() < 1e-15);
    }
}
