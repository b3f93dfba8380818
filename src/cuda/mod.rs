//! CUDA graphs for the training step, through the C++ shim `src/cuda/graph.cpp` (tch exposes no
//! graph capture). A step of a small model is a few thousand small kernels; launched one by one from
//! the host they cost far more than their arithmetic, and replaying them as one captured graph
//! removes that cost (bench/NOTES.md). Builds without CUDA (`cfg(injector_cuda)` unset) compile the
//! same API, where [`available`] is false and nothing else is ever called.
use crate::error::{Error, Result};

#[cfg(injector_cuda)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub fn inj_free_error(e: *mut c_char);
        pub fn inj_stream_enter(device: c_int, guard: *mut *mut c_void) -> *mut c_char;
        pub fn inj_stream_exit(guard: *mut c_void) -> *mut c_char;
        pub fn inj_graph_new(graph: *mut *mut c_void) -> *mut c_char;
        pub fn inj_graph_free(graph: *mut c_void) -> *mut c_char;
        pub fn inj_graph_begin(graph: *mut c_void) -> *mut c_char;
        pub fn inj_graph_end(graph: *mut c_void) -> *mut c_char;
        pub fn inj_graph_replay(graph: *mut c_void) -> *mut c_char;
        pub fn inj_empty_cache() -> *mut c_char;
        pub fn inj_peak_allocated(device: c_int, peak: *mut i64) -> *mut c_char;
        pub fn inj_pinned_empty(bytes: i64, out: *mut *mut c_void) -> *mut c_char;
        pub fn inj_randn_private(seed: u64, count: i64, numels: *const i64, outs: *mut *mut c_void) -> *mut c_char;
        /// Tensors are tch's `C_tensor`, i.e. `at::Tensor*`.
        pub fn inj_swiglu(g: *const c_void, u: *const c_void, out: *mut *mut c_void) -> *mut c_char;
    }
}

#[cfg(injector_cuda)]
fn check(e: *mut std::ffi::c_char) -> Result<()> {
    if e.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated message malloc'd by the shim, freed here once.
    let msg = unsafe {
        let m = std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned();
        ffi::inj_free_error(e);
        m
    };
    Err(Error::Torch(tch::TchError::Torch(format!("CUDA graph: {msg}"))))
}

#[cfg(not(injector_cuda))]
fn unavailable() -> Error {
    Error::Torch(tch::TchError::Torch(
        "this build has no CUDA graphs (INJECTOR_CUDA=1)".into(),
    ))
}

/// Whether training steps on `device` are captured and replayed as CUDA graphs: a CUDA build on a
/// GPU, unless `INJECTOR_CUDA_GRAPHS=0` asks for eager launches (for comparison and debugging).
pub fn available(device: tch::Device) -> bool {
    cfg!(injector_cuda) && device.is_cuda() && std::env::var("INJECTOR_CUDA_GRAPHS").as_deref() != Ok("0")
}

/// A non-default stream of the device made current on this thread (graphs cannot be captured on
/// the default stream). Entering and leaving synchronise the device, so work on either side of the
/// switch needs no further ordering; leaving also returns the cached blocks to the driver.
#[cfg_attr(not(injector_cuda), allow(dead_code))]
pub struct SideStream {
    guard: *mut std::ffi::c_void,
    device: i64,
}

thread_local! {
    /// How many [`SideStream`]s this thread is inside.
    static ENTERED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl SideStream {
    /// Errors: not a CUDA device, or not a CUDA build.
    pub fn enter(device: tch::Device) -> Result<Self> {
        let tch::Device::Cuda(d) = device else {
            return Err(Error::BadDevice("CUDA graphs need a CUDA device".into()));
        };
        tch::Cuda::synchronize(d as i64);
        #[cfg(injector_cuda)]
        {
            let mut guard = std::ptr::null_mut();
            // SAFETY: the shim writes a heap-allocated guard into `guard` on success.
            check(unsafe { ffi::inj_stream_enter(d as i32, &mut guard) })?;
            ENTERED.with(|n| n.set(n.get() + 1));
            // Made before anything else can fail, so that its drop leaves the stream again.
            let stream = SideStream {
                guard,
                device: d as i64,
            };
            // Blocks cached for the default stream (the model's loading, earlier evaluation) cannot
            // serve the side stream's allocations: hand them back so they do not add to the peak.
            empty_cache()?;
            Ok(stream)
        }
        #[cfg(not(injector_cuda))]
        Err(unavailable())
    }

    /// A side stream to capture on, unless this thread is already inside one (a run's training
    /// keeps one for its whole loop; entering another there would cache blocks on one more stream
    /// of libtorch's pool with each call).
    pub fn unless_inside(device: tch::Device) -> Result<Option<Self>> {
        match ENTERED.with(|n| n.get()) {
            0 => Self::enter(device).map(Some),
            _ => Ok(None),
        }
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        tch::Cuda::synchronize(self.device);
        #[cfg(injector_cuda)]
        // SAFETY: `guard` came from inj_stream_enter and is freed exactly once.
        unsafe {
            let _ = check(ffi::inj_stream_exit(self.guard));
            let _ = check(ffi::inj_empty_cache());
        }
        ENTERED.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Returns the caching allocator's unused blocks to the driver (before a capture, so the graph's
/// private pool does not come on top of memory the eager warm-up steps left cached).
pub fn empty_cache() -> Result<()> {
    #[cfg(injector_cuda)]
    // SAFETY: no arguments; errors come back as a message.
    return check(unsafe { ffi::inj_empty_cache() });
    #[cfg(not(injector_cuda))]
    Err(unavailable())
}

/// `silu(g) · u`, the SwiGLU of the MLP. When it will be differentiated on a GPU of a CUDA build,
/// through the shim's autograd function, which saves g and u for backward and recomputes silu(g)
/// there, instead of saving silu(g) as well: at the Llama-7B shape that is 17 MB less per layer
/// (bench/NOTES.md). Elsewhere, the two libtorch kernels.
pub fn swiglu(g: &tch::Tensor, u: &tch::Tensor) -> tch::Tensor {
    #[cfg(injector_cuda)]
    if g.device().is_cuda() && (g.requires_grad() || u.requires_grad()) {
        let mut out = std::ptr::null_mut();
        // SAFETY: g and u are live tensors; on success the shim hands over a new at::Tensor that
        // `from_ptr` owns from here on.
        match check(unsafe { ffi::inj_swiglu(g.as_ptr().cast(), u.as_ptr().cast(), &mut out) }) {
            Ok(()) => return unsafe { tch::Tensor::from_ptr(out.cast()) },
            Err(e) => panic!("{e}"),
        }
    }
    g.silu() * u
}

/// A captured sequence of kernels with its private memory pool. Tensors created while capturing
/// live in that pool: each replay rewrites them in place, so they are the graph's outputs, valid
/// until the next replay. State carried from one replay to the next must be updated in place in
/// tensors created before the capture.
#[cfg_attr(not(injector_cuda), allow(dead_code))]
pub struct Graph(*mut std::ffi::c_void);

// SAFETY: a captured graph has no thread affinity (CUDA launches it from any thread) and is only
// replayed and freed; a model keeps its graphs behind a mutex.
unsafe impl Send for Graph {}

impl Graph {
    /// Captures the kernels `f` launches on the current (side) stream. Nothing runs: replay to
    /// execute them.
    pub fn capture<T>(f: impl FnOnce() -> T) -> Result<(Graph, T)> {
        #[cfg(injector_cuda)]
        {
            let mut g = std::ptr::null_mut();
            // SAFETY: the shim allocates the graph; it is owned by the returned `Graph`.
            check(unsafe { ffi::inj_graph_new(&mut g) })?;
            let graph = Graph(g);
            check(unsafe { ffi::inj_graph_begin(graph.0) })?;
            let out = f();
            check(unsafe { ffi::inj_graph_end(graph.0) })?;
            Ok((graph, out))
        }
        #[cfg(not(injector_cuda))]
        {
            let _ = f;
            Err(unavailable())
        }
    }

    /// Launches the captured kernels on the current stream.
    pub fn replay(&self) -> Result<()> {
        #[cfg(injector_cuda)]
        // SAFETY: `self.0` is a live graph from inj_graph_new.
        return check(unsafe { ffi::inj_graph_replay(self.0) });
        #[cfg(not(injector_cuda))]
        Err(unavailable())
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        #[cfg(injector_cuda)]
        // SAFETY: `self.0` came from inj_graph_new and is freed exactly once.
        unsafe {
            let _ = check(ffi::inj_graph_free(self.0));
        }
    }
}

/// `bytes` uninitialised bytes (uint8 [bytes]) in page-locked host memory, which the GPU copies
/// into at the bus's speed (a pageable buffer goes through a staging copy). Without a CUDA build,
/// ordinary host memory.
pub fn pinned_empty(bytes: i64) -> Result<tch::Tensor> {
    #[cfg(injector_cuda)]
    {
        let mut out = std::ptr::null_mut();
        // SAFETY: on success the shim hands over a new at::Tensor that `from_ptr` owns from here on.
        check(unsafe { ffi::inj_pinned_empty(bytes, &mut out) })?;
        Ok(unsafe { tch::Tensor::from_ptr(out.cast()) })
    }
    #[cfg(not(injector_cuda))]
    Ok(tch::Tensor::empty([bytes], (tch::Kind::Uint8, tch::Device::Cpu)))
}

/// Standard normal draws of the given shapes (float32, on the host), in order, from a generator of
/// their own seeded with `seed`: bit for bit what `tch::manual_seed(seed)` and the same
/// `Tensor::randn` calls on the CPU give, without libtorch's global generator, so a thread can draw
/// while another captures or replays graphs (which read the global CUDA generator's state). `None`
/// without a CUDA build (tch has no private generators).
///
/// Errors: libtorch's (an allocation that fails).
pub fn randn_private(seed: u64, shapes: &[Vec<i64>]) -> Option<Result<Vec<tch::Tensor>>> {
    #[cfg(injector_cuda)]
    {
        let numels: Vec<i64> = shapes.iter().map(|s| s.iter().product()).collect();
        let mut outs = vec![std::ptr::null_mut(); shapes.len()];
        // SAFETY: the shim writes `count` new at::Tensor pointers into `outs` on success, which
        // `from_ptr` owns from here on; on failure the ones it made leak (an allocation failed).
        let made =
            check(unsafe { ffi::inj_randn_private(seed, numels.len() as i64, numels.as_ptr(), outs.as_mut_ptr()) });
        Some(made.map(|()| {
            outs.into_iter()
                .zip(shapes)
                .map(|(t, s)| unsafe { tch::Tensor::from_ptr(t.cast()) }.view(s.as_slice()))
                .collect()
        }))
    }
    #[cfg(not(injector_cuda))]
    {
        let _ = (seed, shapes);
        None
    }
}

/// The most bytes the caching allocator held allocated on `device` since the last call (or since
/// the process started), as torch.cuda.max_memory_allocated reports; the peak is reset for the next
/// call. `None` off a GPU or without a CUDA build.
pub fn peak_allocated(device: tch::Device) -> Option<i64> {
    let tch::Device::Cuda(_d) = device else { return None };
    #[cfg(injector_cuda)]
    {
        let mut peak = 0i64;
        // SAFETY: the shim writes one i64 into `peak` on success.
        check(unsafe { ffi::inj_peak_allocated(_d as i32, &mut peak) }).ok()?;
        Some(peak)
    }
    #[cfg(not(injector_cuda))]
    None
}
