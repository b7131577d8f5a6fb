//! The native programs' allocator (the `candle-xai` command, the benchmarks): mimalloc, which
//! keeps freed tensor buffers for the next layer where glibc unmaps large ones and faults fresh
//! pages in again (MobileNetV2 Integrated Gradients: 3.3 -> 2.4 s).

/// Install with `#[global_allocator] static ALLOCATOR: Allocator = Allocator;`, then call
/// [`keep_freed_memory`] first thing in `main`.
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v2): how long freed memory stays mapped.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed memory back to the kernel. By default mimalloc purges it 10 ms after it is
/// freed, and one convolution's GEMM outlasts that, so the next layer's buffer came back as fresh
/// pages the kernel had to zero (`clear_page_erms`: 8 % of a ResNet-18 SmoothGrad, 2 % after;
/// the call 760 -> 690 ms). A process's footprint stays at its peak, which the memory budget
/// bounds anyway.
pub fn keep_freed_memory() {
    // SAFETY: sets one of mimalloc's options; called before any thread of ours allocates.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
}
