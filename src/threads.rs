//! The CPU kernels run on rayon's global thread pool. A parallel loop started from a thread
//! outside the pool hands its work to the pool and sleeps until a pool thread wakes it again:
//! two futex wake-ups and context switches per loop, and an explanation runs hundreds of loops
//! (MobileNetV2's LRP-EpsilonPlus: 13 % of its profile in the kernel's `try_to_wake_up`;
//! 113 -> 88 ms on 2 threads and 209 -> 128 ms on 1 once the explaining thread is in the pool).
//! In the browser rayon already runs every loop on the calling thread.

/// Makes the calling thread one of the pool's threads, so that the parallel loops it starts
/// run where they are started, the pool's other threads joining in. The pool keeps its size
/// (`RAYON_NUM_THREADS`, else one thread per core), this thread counted.
///
/// Call it first thing in `main`, from the thread that explains, before anything uses rayon:
/// it fails when the global pool exists already (the loops then still run, handed over).
pub fn join_kernel_pool() -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new().use_current_thread().build_global()
}
