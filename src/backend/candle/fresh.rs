//! Output vectors the CPU kernels write once, without zeroing them first. The allocator hands
//! back buffers a previous layer freed, so a `vec![0.0; n]` is a memset over the whole output:
//! one more pass over memory than the kernel's own (16 % of a MobileNetV2 SmoothGrad profile
//! for the element-wise maps; the convolutions' outputs likewise). Kernels that accumulate
//! zero their own chunk just before they add into it, while it is in cache.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Elements per parallel task for the kernels that split a tensor into chunks: about 16k, enough
/// to outweigh a task's start, small enough that both threads get several.
pub(super) const TASK_ELEMENTS: usize = 1 << 14;

/// Whole rows of `width` elements per task, for the kernels that work a row (or a plane) at a
/// time: as many as make [`TASK_ELEMENTS`], at least one.
pub(super) fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMENTS / width.max(1)).max(1)
}

/// `slots` set to zero, as initialised floats to accumulate into.
pub(super) fn zeroed(slots: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for slot in slots.iter_mut() {
        slot.write(0.0);
    }
    // SAFETY: every element was just written; MaybeUninit<f32> and f32 share their layout.
    unsafe { &mut *(slots as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A vector of `len` elements built in parallel chunks of `chunk` (the last may be shorter):
/// `build(state, i, chunk i)` adds into its chunk, which arrives zeroed; `state` is per-thread
/// scratch from `init`, as rayon's `for_each_init` gives.
pub(super) fn built_in_chunks<S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    build: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each_init(init, |state, (i, slots)| build(state, i, zeroed(slots)));
    // SAFETY: the chunks cover `len` elements of the capacity, and `zeroed` wrote each of them.
    unsafe { out.set_len(len) };
    out
}

/// A vector as long as `x`, written chunk by chunk in parallel by `fill(i, x's chunk i, the
/// output's chunk i)`.
///
/// # Safety
/// `fill` must write every element of the output chunk it is given.
pub(super) unsafe fn written_in_chunks(
    x: &[f32],
    chunk: usize,
    fill: impl Fn(usize, &[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(chunk.max(1))
        .zip(x.par_chunks(chunk.max(1)))
        .enumerate()
        .for_each(|(i, (dst, src))| fill(i, src, dst));
    // SAFETY: the chunks cover x.len() elements of the capacity, and `fill` wrote each of them.
    unsafe { out.set_len(x.len()) };
    out
}

/// A vector of `len` elements that `write` fills through the slots it is given.
///
/// # Safety
/// `write` must write every one of the `len` slots (through the slice or pointers into it).
pub(super) unsafe fn written_whole(len: usize, write: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    write(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller's promise: `write` wrote all `len` slots.
    unsafe { out.set_len(len) };
    out
}
