// CUDA kernels of the fused LD3M denoising step: grid-stride loops computing in float
// (double for float64), with 128-bit loads/stores when every pointer is 16-byte aligned.
#ifdef WITH_CUDA

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "fused_step.h"

namespace ld3m_fast {
namespace {

constexpr int kThreads = 256;

// kVec elements of scalar_t in one 16-byte (kVec * sizeof == 16) or scalar (kVec == 1) access.
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

template <typename scalar_t, int kVec>
__device__ __forceinline__ Pack<scalar_t, kVec> load_pack(const scalar_t* p, int64_t i) {
  return *reinterpret_cast<const Pack<scalar_t, kVec>*>(p + i);
}

template <typename scalar_t, int kVec>
__device__ __forceinline__ void store_pack(scalar_t* p, int64_t i, const Pack<scalar_t, kVec>& v) {
  *reinterpret_cast<Pack<scalar_t, kVec>*>(p + i) = v;
}

// Op on the kWidth elements [i, i + kWidth) of every tensor: one access per tensor, the math
// per element.  p holds the Op::kInputs input pointers, then the Op::kOutputs output pointers.
template <typename Op, typename scalar_t, int kWidth>
__device__ __forceinline__ void step_at(int64_t i, const Coef<at::opmath_type<scalar_t>>& c,
                                        scalar_t* const* p) {
  using opmath_t = at::opmath_type<scalar_t>;
  Pack<scalar_t, kWidth> x[Op::kInputs], y[Op::kOutputs];
#pragma unroll
  for (int k = 0; k < Op::kInputs; ++k) {
    x[k] = load_pack<scalar_t, kWidth>(p[k], i);
  }
#pragma unroll
  for (int e = 0; e < kWidth; ++e) {
    opmath_t in[Op::kInputs], out[Op::kOutputs];
#pragma unroll
    for (int k = 0; k < Op::kInputs; ++k) {
      in[k] = static_cast<opmath_t>(x[k].v[e]);
    }
    Op::apply(in, out, c);
#pragma unroll
    for (int k = 0; k < Op::kOutputs; ++k) {
      y[k].v[e] = static_cast<scalar_t>(out[k]);
    }
  }
#pragma unroll
  for (int k = 0; k < Op::kOutputs; ++k) {
    store_pack<scalar_t, kWidth>(p[Op::kInputs + k], i, y[k]);
  }
}

// Elements [0, n): packs of kVec elements over the grid-stride loop, then the last n % kVec
// elements one per thread (kVec == 1 makes the first loop the whole job).  The data pointers
// are separate __restrict__ parameters (inputs const, then outputs), as the contract says:
// read-only inputs that alias no output, so loads take the read-only path.
template <typename Op, typename scalar_t, int kVec, typename... T>
__global__ void __launch_bounds__(kThreads)
    step_kernel(const Coef<at::opmath_type<scalar_t>> c, const int64_t n, T* __restrict__... ptrs) {
  static_assert(sizeof...(T) == Op::kInputs + Op::kOutputs, "one pointer per tensor");
  scalar_t* const p[] = {const_cast<scalar_t*>(ptrs)...};  // indexable; inputs are only read
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n_packs = n / kVec;
  for (int64_t j = tid; j < n_packs; j += stride) {
    step_at<Op, scalar_t, kVec>(j * kVec, c, p);
  }
  if constexpr (kVec > 1) {
    for (int64_t i = n_packs * kVec + tid; i < n; i += stride) {
      step_at<Op, scalar_t, 1>(i, c, p);
    }
  }
}

template <typename T, int N>
bool aligned16(const Ptrs<T, N>& ptrs) {
  return std::all_of(ptrs.p, ptrs.p + N,
                     [](T* q) { return reinterpret_cast<std::uintptr_t>(q) % 16 == 0; });
}

// Enough blocks to cover the work, capped at a few waves of the device (grid-stride loop).
// (cudaDeviceGetAttribute is a cheap query, unlike cudaGetDeviceProperties.)
unsigned int num_blocks(int64_t work_items) {
  int device = 0;
  int sm_count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  const int64_t max_blocks = static_cast<int64_t>(std::max(sm_count, 1)) * 8;
  const int64_t needed = (work_items + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(needed, max_blocks)));
}

// Launches step_kernel with kVec-element accesses on the current device and stream.
template <int kVec, typename Args, std::size_t... I, std::size_t... O>
void launch(const Args& a, std::index_sequence<I...>, std::index_sequence<O...>) {
  using Op = typename Args::Op;
  const Coef<typename Args::opmath_t> c = make_coef<typename Args::opmath_t>(a.coef);
  step_kernel<Op, typename Args::scalar_t, kVec>
      <<<num_blocks(a.n / kVec), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          c, a.n, a.in.p[I]..., a.out.p[O]...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// 128-bit accesses where every pointer is 16-byte aligned (the second half of the backward's
// (2, *shape) g_eps pair is aligned only if n * sizeof(scalar_t) is), else one element each.
struct CudaDriver {
  template <typename Args>
  static void run(const Args& a) {
    const auto in = std::make_index_sequence<Args::Op::kInputs>();
    const auto out = std::make_index_sequence<Args::Op::kOutputs>();
    if (aligned16(a.in) && aligned16(a.out)) {
      launch<16 / sizeof(typename Args::scalar_t)>(a, in, out);
    } else {
      launch<1>(a, in, out);
    }
  }
};

}  // namespace

void run_step_cuda(const StepCall& call) {
  const c10::cuda::CUDAGuard guard(call.inputs[0].device());
  dispatch_step<CudaDriver>(call);
}

}  // namespace ld3m_fast

#endif  // WITH_CUDA
