// CUDA twins of the CPU kernels in max_pool.rs and depthwise.rs: the same arithmetic in the same
// order, one thread per output element. Backward passes gather rather than scatter (no atomics),
// so every sum is taken in the order the CPU kernel takes it and the results are deterministic.
// Compiled to PTX by build.rs with the `cuda` feature; launched from cuda.rs.

typedef unsigned int u32;
typedef unsigned long long u64;

// Every kernel writes `len` outputs, one thread each, to `out` (its first argument): the
// launcher in cuda.rs passes (out, len, inputs..., shape).

// A max pooling over [h, w] planes to [oh, ow] (max_pool.rs's PoolWindow).
struct PoolShape {
    u32 h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
};

// Index in the [h, w] plane of the window's first maximum in row-major order (PyTorch's tie
// rule; cells in the padding never win), or -1 when the window covers only padding.
__device__ long long window_winner(const float* plane, PoolShape k, u32 oy, u32 ox) {
    long long best = -1;
    float best_value = 0.0f;
    for (u32 a = 0; a < k.kh; ++a) {
        long long y = (long long)(oy * k.sh + a * k.dh) - k.ph;
        if (y < 0 || y >= k.h) continue;
        for (u32 b = 0; b < k.kw; ++b) {
            long long x = (long long)(ox * k.sw + b * k.dw) - k.pw;
            if (x < 0 || x >= k.w) continue;
            long long at = y * k.w + x;
            if (best < 0 || plane[at] > best_value) {
                best = at;
                best_value = plane[at];
            }
        }
    }
    return best;
}

// The output row (or column) whose window reaches input row y through tap a, if there is one.
__device__ bool window_through(long long y, u32 a, u32 stride, u32 dilation, u32 pad, u32 outputs,
                               u32* o) {
    long long offset = y + pad - (long long)a * dilation;
    if (offset < 0 || offset % stride != 0) return false;
    long long index = offset / stride;
    if (index >= outputs) return false;
    *o = (u32)index;
    return true;
}

// out [planes, oh, ow] = each window's maximum (-inf for a window of padding only).
extern "C" __global__ void max_pool_forward(float* out, u64 len, const float* x, PoolShape k) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    u32 ox = i % k.ow, oy = (i / k.ow) % k.oh;
    const float* plane = x + (i / ((u64)k.oh * k.ow)) * k.h * k.w;
    long long at = window_winner(plane, k, oy, ox);
    out[i] = at < 0 ? -INFINITY : plane[at];
}

// dx [planes, h, w]: each input cell gathers the gradients of the windows it wins, in the
// row-major order of the windows, as the CPU kernel adds them.
extern "C" __global__ void max_pool_vjp(float* dx, u64 len, const float* x, const float* grad,
                                        PoolShape k) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    u32 xx = i % k.w, yy = (i / k.w) % k.h;
    u64 p = i / ((u64)k.h * k.w);
    const float* plane = x + p * k.h * k.w;
    const float* g = grad + p * k.oh * k.ow;
    long long self = (long long)yy * k.w + xx;
    float sum = 0.0f;
    // Taps in decreasing order visit the windows in increasing order.
    for (int a = (int)k.kh - 1; a >= 0; --a) {
        u32 oy;
        if (!window_through(yy, a, k.sh, k.dh, k.ph, k.oh, &oy)) continue;
        for (int b = (int)k.kw - 1; b >= 0; --b) {
            u32 ox;
            if (!window_through(xx, b, k.sw, k.dw, k.pw, k.ow, &ox)) continue;
            if (window_winner(plane, k, oy, ox) == self) sum += g[oy * k.ow + ox];
        }
    }
    dx[i] = sum;
}

// A depthwise convolution of [n*c, h, w] planes to [oh, ow] with one [kh, kw] filter per channel
// (depthwise.rs's Sliding: one stride and dilation for both axes, top/left padding).
struct DepthwiseShape {
    u32 c, h, w, oh, ow, kh, kw, stride, dilation, pad_top, pad_left;
};

// out [n*c, oh, ow]: the input correlated with its channel's filter, taps in row-major order.
extern "C" __global__ void depthwise_forward(float* out, u64 len, const float* x,
                                             const float* kernel, DepthwiseShape s) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    u32 ox = i % s.ow, oy = (i / s.ow) % s.oh;
    u64 p = i / ((u64)s.oh * s.ow);
    const float* plane = x + p * s.h * s.w;
    const float* filter = kernel + (p % s.c) * s.kh * s.kw;
    float sum = 0.0f;
    for (u32 a = 0; a < s.kh; ++a) {
        long long y = (long long)(oy * s.stride + a * s.dilation) - s.pad_top;
        if (y < 0 || y >= s.h) continue;
        for (u32 b = 0; b < s.kw; ++b) {
            long long x = (long long)(ox * s.stride + b * s.dilation) - s.pad_left;
            if (x < 0 || x >= s.w) continue;
            sum += filter[a * s.kw + b] * plane[y * s.w + x];
        }
    }
    out[i] = sum;
}

// dx [n*c, h, w]: the transpose of depthwise_forward; each input cell gathers, tap by tap, the
// gradients of the outputs it fed.
extern "C" __global__ void depthwise_transposed(float* dx, u64 len, const float* grad,
                                                const float* kernel, DepthwiseShape s) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    u32 xx = i % s.w, yy = (i / s.w) % s.h;
    u64 p = i / ((u64)s.h * s.w);
    const float* g = grad + p * s.oh * s.ow;
    const float* filter = kernel + (p % s.c) * s.kh * s.kw;
    float sum = 0.0f;
    for (u32 a = 0; a < s.kh; ++a) {
        u32 oy;
        if (!window_through(yy, a, s.stride, s.dilation, s.pad_top, s.oh, &oy)) continue;
        for (u32 b = 0; b < s.kw; ++b) {
            u32 ox;
            if (!window_through(xx, b, s.stride, s.dilation, s.pad_left, s.ow, &ox)) continue;
            sum += filter[a * s.kw + b] * g[oy * s.ow + ox];
        }
    }
    dx[i] = sum;
}
