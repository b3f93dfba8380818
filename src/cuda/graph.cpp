// CUDA graphs for the training step: tch exposes no graph capture, so this thin C ABI wraps
// at::cuda::CUDAGraph (which handles the private memory pool and the RNG offsets of dropout), a
// side stream to capture on, and the caching allocator's empty_cache. It also holds the one
// autograd function tch cannot express, a SwiGLU that saves less for backward. Compiled only when the build
// links CUDA (INJECTOR_CUDA=1, see build.rs). Every entry point catches C++ exceptions and returns
// the message (malloc'd, freed by the caller with inj_free_error) instead of unwinding into Rust.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <cuda_runtime_api.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>

namespace {
char* copy_message(const char* what) {
  char* s = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (s) std::strcpy(s, what);
  return s;
}

template <typename F>
char* guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

// h = silu(g) * u. Autograd through silu and mul would save g, u and silu(g); this saves g and u
// and recomputes silu(g) in backward (one more elementwise kernel, a third less saved memory).
struct SwiGlu : public torch::autograd::Function<SwiGlu> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& g,
                            const at::Tensor& u) {
    ctx->save_for_backward({g, u});
    return at::silu(g) * u;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& g = saved[0];
    const auto& u = saved[1];
    const auto& dh = grads[0];
    return {at::silu_backward(dh * u, g), dh * at::silu(g)};
  }
};
}  // namespace

extern "C" {

void inj_free_error(char* e) { std::free(e); }

// Makes a fresh (non-default) stream of `device` current on this thread; graphs cannot be captured
// on the default stream. The returned guard restores the previous stream when freed.
char* inj_stream_enter(int device, void** guard) {
  return guarded([&] {
    auto stream = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device));
    *guard = new c10::cuda::CUDAStreamGuard(stream);
  });
}

char* inj_stream_exit(void* guard) {
  return guarded([&] { delete static_cast<c10::cuda::CUDAStreamGuard*>(guard); });
}

char* inj_graph_new(void** graph) {
  return guarded([&] { *graph = new at::cuda::CUDAGraph(); });
}

char* inj_graph_free(void* graph) {
  return guarded([&] { delete static_cast<at::cuda::CUDAGraph*>(graph); });
}

// Starts capturing the current stream's work into `graph` (its own private memory pool).
char* inj_graph_begin(void* graph) {
  return guarded([&] { static_cast<at::cuda::CUDAGraph*>(graph)->capture_begin(); });
}

char* inj_graph_end(void* graph) {
  return guarded([&] { static_cast<at::cuda::CUDAGraph*>(graph)->capture_end(); });
}

char* inj_graph_replay(void* graph) {
  return guarded([&] { static_cast<at::cuda::CUDAGraph*>(graph)->replay(); });
}

// *out = SwiGlu(*g, *u), a new tensor owned by the caller (tch frees it).
char* inj_swiglu(const at::Tensor* g, const at::Tensor* u, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(SwiGlu::apply(*g, *u)); });
}

// An uninitialised uint8 tensor of `bytes` bytes in page-locked host memory (torch.empty(...,
// pin_memory=True); tch's pin_memory(device) takes the path libtorch now warns about).
char* inj_pinned_empty(int64_t bytes, at::Tensor** out) {
  return guarded([&] {
    *out = new at::Tensor(at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true)));
  });
}

// `count` tensors of standard normals (float32, on the host), numels[i] values each, drawn in order
// from a CPU generator of their own seeded with `seed`: the values torch.manual_seed(seed) and the
// same torch.randn calls give, without touching the global generator, so another thread can draw
// while this one captures graphs. Each outs[i] is a new tensor owned by the caller.
char* inj_randn_private(uint64_t seed, int64_t count, const int64_t* numels, at::Tensor** outs) {
  return guarded([&] {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (int64_t i = 0; i < count; ++i) {
      outs[i] = new at::Tensor(at::randn({numels[i]}, gen, at::TensorOptions().dtype(at::kFloat)));
    }
  });
}

// The caching allocator's peak of allocated bytes on `device` since its last reset
// (torch.cuda.max_memory_allocated), then the peak reset (torch.cuda.reset_peak_memory_stats).
char* inj_peak_allocated(int device, int64_t* peak) {
  return guarded([&] {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *peak = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  });
}

void check_cuda(cudaError_t err) {
  if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
}

// Set by a host function that the copy stream runs after the copies of inj_copy_to_host_async,
// waited on without any CUDA call (so the waiting thread never trips another's graph capture).
struct CopiesDone {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
};

void CUDART_CB copies_done(void* p) {
  auto* d = static_cast<CopiesDone*>(p);
  {
    std::lock_guard<std::mutex> lock(d->m);
    d->done = true;
  }
  d->cv.notify_all();
}

// Copies srcs[i] (tensors on one GPU) into dsts[i] (page-locked host tensors of the same shape and
// dtype) without holding the host: on a stream of libtorch's pool that first waits for the work
// already queued on this thread's current stream (so the copies see every write queued before
// them), and which that stream's later work waits for (so no later write reaches them). *done
// (owned by the caller: inj_copies_wait, then inj_copies_free) is set once the copies are complete. The sources are marked as used on that stream, so their memory is not handed out
// again before the copies are done even if they are freed meanwhile.
char* inj_copy_to_host_async(int64_t count, const at::Tensor* const* srcs, const at::Tensor* const* dsts,
                             void** done) {
  return guarded([&] {
    if (count <= 0) throw std::invalid_argument("no tensors to copy");
    auto index = srcs[0]->device().index();
    auto current = c10::cuda::getCurrentCUDAStream(index);
    auto copying = c10::cuda::getStreamFromPool(false, index);
    // `later` waits on the GPU for the work queued on `earlier` so far (the event may be destroyed
    // once the wait is queued).
    auto order = [](cudaStream_t earlier, cudaStream_t later) {
      cudaEvent_t e;
      check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      check_cuda(cudaEventRecord(e, earlier));
      check_cuda(cudaStreamWaitEvent(later, e, 0));
      check_cuda(cudaEventDestroy(e));
    };
    order(current.stream(), copying.stream());
    {
      c10::cuda::CUDAStreamGuard guard(copying);
      for (int64_t i = 0; i < count; ++i) {
        at::Tensor dst = *dsts[i];
        dst.copy_(*srcs[i], /*non_blocking=*/true);
        srcs[i]->record_stream(copying.unwrap());
      }
    }
    // Work queued on the current stream from now on (a merge writing the sources) waits for the
    // copies; the host is not held.
    order(copying.stream(), current.stream());
    auto* d = new CopiesDone();
    auto err = cudaLaunchHostFunc(copying.stream(), copies_done, d);
    if (err != cudaSuccess) delete d;
    check_cuda(err);
    *done = d;
  });
}

// Blocks this thread until the copies behind `done` (from inj_copy_to_host_async) are complete.
char* inj_copies_wait(void* done) {
  return guarded([&] {
    auto* d = static_cast<CopiesDone*>(done);
    std::unique_lock<std::mutex> lock(d->m);
    d->cv.wait(lock, [d] { return d->done; });
  });
}

// Frees `done`; only after inj_copies_wait returned (the host function writes it until then).
char* inj_copies_free(void* done) {
  return guarded([&] { delete static_cast<CopiesDone*>(done); });
}

// Returns the caching allocator's unused blocks to the driver (torch.cuda.empty_cache()).
char* inj_empty_cache() {
  return guarded([&] { c10::cuda::CUDACachingAllocator::emptyCache(); });
}
}
