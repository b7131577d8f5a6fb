// kernels.cu's CUDA kernels run on the host, one loop iteration per CUDA thread, against the
// CPU kernels' loops (max_pool.rs, depthwise.rs) written out again here in their scatter form,
// over random shapes (strides, dilations, padding, ceil-mode overhang), with tied pooling
// windows and values whose sums round differently in another order. The CUDA kernels
// gather where the CPU kernels scatter, and promise the same sums in the same order: the
// comparison is exact. Built and run by tests/cuda_kernels_on_host.rs; exits 1 on a mismatch.

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

struct Index {
    unsigned x;
};
static Index blockIdx, blockDim, threadIdx;
#define __global__
#define __device__
#include "../../src/backend/candle/kernels.cu"

// Runs `kernel` once per thread of a launch over `len` outputs, 256 threads per block.
template <class Kernel>
static void launch(u64 len, Kernel kernel) {
    blockDim.x = 256;
    for (u64 i = 0; i < len; ++i) {
        blockIdx.x = (unsigned)(i / 256);
        threadIdx.x = (unsigned)(i % 256);
        kernel();
    }
}

static std::mt19937_64 rng(7);
static unsigned pick(unsigned low, unsigned high) {
    return std::uniform_int_distribution<unsigned>(low, high)(rng);
}
// Values on a coarse grid, so pooling windows have ties.
static std::vector<float> tied_values(size_t len) {
    std::vector<float> v(len);
    for (float& x : v) x = (float)pick(0, 6) - 3.0f + (pick(0, 3) == 0 ? 0.25f : 0.0f);
    return v;
}
// Values of many magnitudes, so sums taken in another order round differently.
static std::vector<float> rounding_values(size_t len) {
    std::vector<float> v(len);
    std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
    for (float& x : v) x = std::ldexp(mantissa(rng), (int)pick(0, 24) - 12);
    return v;
}
static unsigned outputs(unsigned len, unsigned k, unsigned s, unsigned p, unsigned d, bool ceil) {
    unsigned span = d * (k - 1) + 1;
    unsigned out = (len + 2 * p - span) / s + 1;
    // PyTorch's ceil mode: one more window when it starts inside the input or left padding.
    if (ceil && (len + 2 * p - span) % s != 0 && out * s < len + p) ++out;
    return out;
}
static int failures = 0;
static void expect_equal(const char* what, int trial, const std::vector<float>& ours,
                         const std::vector<float>& reference) {
    for (size_t i = 0; i < ours.size(); ++i) {
        if (ours[i] != reference[i]) {
            std::printf("%s, trial %d: element %zu is %.9g, the CPU loop gives %.9g\n", what, trial, i,
                        ours[i], reference[i]);
            ++failures;
            return;
        }
    }
}

static void max_pool_trial(int trial) {
    PoolShape k;
    k.kh = pick(1, 4), k.kw = pick(1, 4), k.sh = pick(1, 3), k.sw = pick(1, 3);
    k.dh = pick(1, 2), k.dw = pick(1, 2);
    // PyTorch: padding at most half the kernel.
    k.ph = pick(0, k.kh / 2), k.pw = pick(0, k.kw / 2);
    k.h = pick(k.dh * (k.kh - 1) + 1, 12), k.w = pick(k.dw * (k.kw - 1) + 1, 12);
    bool ceil = pick(0, 1);
    k.oh = outputs(k.h, k.kh, k.sh, k.ph, k.dh, ceil), k.ow = outputs(k.w, k.kw, k.sw, k.pw, k.dw, ceil);
    unsigned planes = pick(1, 5);
    std::vector<float> x = tied_values((size_t)planes * k.h * k.w);
    std::vector<float> grad = rounding_values((size_t)planes * k.oh * k.ow);

    // The CPU loops: each window's first maximum, and the gradient added to it in window order.
    std::vector<float> pooled(planes * k.oh * k.ow, -INFINITY), dx(planes * k.h * k.w, 0.0f);
    for (unsigned p = 0; p < planes; ++p) {
        const float* plane = &x[(size_t)p * k.h * k.w];
        for (unsigned oy = 0; oy < k.oh; ++oy)
            for (unsigned ox = 0; ox < k.ow; ++ox) {
                long long best = -1;
                for (unsigned a = 0; a < k.kh; ++a) {
                    long long y = (long long)(oy * k.sh + a * k.dh) - k.ph;
                    if (y < 0 || y >= k.h) continue;
                    for (unsigned b = 0; b < k.kw; ++b) {
                        long long xx = (long long)(ox * k.sw + b * k.dw) - k.pw;
                        if (xx < 0 || xx >= k.w) continue;
                        long long at = y * k.w + xx;
                        if (best < 0 || plane[at] > plane[best]) best = at;
                    }
                }
                size_t o = ((size_t)p * k.oh + oy) * k.ow + ox;
                if (best >= 0) {
                    pooled[o] = plane[best];
                    dx[(size_t)p * k.h * k.w + best] += grad[o];
                }
            }
    }

    std::vector<float> ours(pooled.size()), ours_dx(dx.size());
    launch(ours.size(), [&] { max_pool_forward(ours.data(), ours.size(), x.data(), k); });
    launch(ours_dx.size(), [&] { max_pool_vjp(ours_dx.data(), ours_dx.size(), x.data(), grad.data(), k); });
    expect_equal("max_pool_forward", trial, ours, pooled);
    expect_equal("max_pool_vjp", trial, ours_dx, dx);
}

static void depthwise_trial(int trial) {
    DepthwiseShape s;
    s.kh = pick(1, 5), s.kw = pick(1, 5), s.stride = pick(1, 3), s.dilation = pick(1, 2);
    s.pad_top = pick(0, s.kh), s.pad_left = pick(0, s.kw);
    s.h = pick(s.dilation * (s.kh - 1) + 1, 11), s.w = pick(s.dilation * (s.kw - 1) + 1, 11);
    s.oh = outputs(s.h, s.kh, s.stride, s.pad_top, s.dilation, false);
    s.ow = outputs(s.w, s.kw, s.stride, s.pad_left, s.dilation, false);
    // Asymmetric padding: the output may stop short of the bottom/right padding.
    if (s.oh > 1 && pick(0, 1)) --s.oh;
    s.c = pick(1, 4);
    unsigned n = pick(1, 3), planes = n * s.c;
    std::vector<float> x = rounding_values((size_t)planes * s.h * s.w);
    std::vector<float> kernel = rounding_values((size_t)s.c * s.kh * s.kw);
    std::vector<float> grad = rounding_values((size_t)planes * s.oh * s.ow);

    // The CPU loops: taps outermost, each tap adding to every output (forward) or input (transpose).
    std::vector<float> out(planes * s.oh * s.ow, 0.0f), dx(planes * s.h * s.w, 0.0f);
    for (unsigned p = 0; p < planes; ++p) {
        const float* filter = &kernel[(size_t)(p % s.c) * s.kh * s.kw];
        for (unsigned a = 0; a < s.kh; ++a)
            for (unsigned b = 0; b < s.kw; ++b)
                for (unsigned i = 0; i < s.oh; ++i)
                    for (unsigned j = 0; j < s.ow; ++j) {
                        long long y = (long long)(i * s.stride + a * s.dilation) - s.pad_top;
                        long long xx = (long long)(j * s.stride + b * s.dilation) - s.pad_left;
                        if (y < 0 || y >= s.h || xx < 0 || xx >= s.w) continue;
                        size_t at = (size_t)p * s.h * s.w + y * s.w + xx;
                        size_t o = ((size_t)p * s.oh + i) * s.ow + j;
                        out[o] += filter[a * s.kw + b] * x[at];
                        dx[at] += filter[a * s.kw + b] * grad[o];
                    }
    }

    std::vector<float> ours(out.size()), ours_dx(dx.size());
    launch(ours.size(), [&] { depthwise_forward(ours.data(), ours.size(), x.data(), kernel.data(), s); });
    launch(ours_dx.size(),
           [&] { depthwise_transposed(ours_dx.data(), ours_dx.size(), grad.data(), kernel.data(), s); });
    expect_equal("depthwise_forward", trial, ours, out);
    expect_equal("depthwise_transposed", trial, ours_dx, dx);
}

int main() {
    const int trials = 2000;
    for (int trial = 0; trial < trials; ++trial) {
        max_pool_trial(trial);
        depthwise_trial(trial);
    }
    if (failures > 0) return 1;
    std::printf("%d random shapes per kernel: equal to the CPU loops\n", trials);
    return 0;
}
