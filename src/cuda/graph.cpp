// CUDA graphs for the training step: tch exposes no graph capture, so this thin C ABI wraps
// at::cuda::CUDAGraph (which handles the private memory pool and the RNG offsets of dropout), a
// side stream to capture on, and the caching allocator's empty_cache. It also holds the one
// autograd function tch cannot express, a SwiGLU that saves less for backward. Compiled only when the build
// links CUDA (INJECTOR_CUDA=1, see build.rs). Every entry point catches C++ exceptions and returns
// the message (malloc'd, freed by the caller with inj_free_error) instead of unwinding into Rust.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>
#include <cstdlib>
#include <cstring>
#include <exception>

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

// Returns the caching allocator's unused blocks to the driver (torch.cuda.empty_cache()).
char* inj_empty_cache() {
  return guarded([&] { c10::cuda::CUDACachingAllocator::emptyCache(); });
}
}
