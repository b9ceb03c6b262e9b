// CUDA kernels of the fused LD3M denoising step: grid-stride loops computing in float
// (double for float64), with 128-bit loads/stores when every pointer is 16-byte aligned.
#ifdef WITH_CUDA

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

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
__device__ __forceinline__ Pack<scalar_t, kVec> load_pack(const scalar_t* __restrict__ p,
                                                           int64_t i) {
  return *reinterpret_cast<const Pack<scalar_t, kVec>*>(p + i);
}

template <typename scalar_t, int kVec>
__device__ __forceinline__ void store_pack(scalar_t* __restrict__ p, int64_t i,
                                           const Pack<scalar_t, kVec>& v) {
  *reinterpret_cast<Pack<scalar_t, kVec>*>(p + i) = v;
}

// Elements [0, n): packs of kVec elements over the grid-stride loop, then the last
// n % kVec elements one per thread (kVec == 1 makes the first loop the whole job).
template <typename scalar_t, int kVec, bool kNoise, bool kX0>
__global__ void __launch_bounds__(kThreads)
    fwd_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ eps_u,
               const scalar_t* __restrict__ eps_c, const scalar_t* __restrict__ anchor,
               const scalar_t* __restrict__ noise, scalar_t* __restrict__ z_prev,
               scalar_t* __restrict__ x0, int64_t n, FwdCoef<at::opmath_type<scalar_t>> c) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n_packs = n / kVec;
  for (int64_t p = tid; p < n_packs; p += stride) {
    const int64_t i = p * kVec;
    const P pz = load_pack<scalar_t, kVec>(z, i);
    const P pu = load_pack<scalar_t, kVec>(eps_u, i);
    const P pc = load_pack<scalar_t, kVec>(eps_c, i);
    const P pa = load_pack<scalar_t, kVec>(anchor, i);
    P pn;
    if constexpr (kNoise) {
      pn = load_pack<scalar_t, kVec>(noise, i);
    }
    P out_zp, out_x0;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const opmath_t nz = kNoise ? static_cast<opmath_t>(pn.v[k]) : opmath_t(0);
      opmath_t zp, xb;
      step_fwd_math<kNoise>(static_cast<opmath_t>(pz.v[k]), static_cast<opmath_t>(pu.v[k]),
                            static_cast<opmath_t>(pc.v[k]), static_cast<opmath_t>(pa.v[k]), nz,
                            c, zp, xb);
      out_zp.v[k] = static_cast<scalar_t>(zp);
      out_x0.v[k] = static_cast<scalar_t>(xb);
    }
    store_pack<scalar_t, kVec>(z_prev, i, out_zp);
    if constexpr (kX0) {
      store_pack<scalar_t, kVec>(x0, i, out_x0);
    }
  }
  if constexpr (kVec > 1) {
    for (int64_t i = n_packs * kVec + tid; i < n; i += stride) {
      const opmath_t nz = kNoise ? static_cast<opmath_t>(noise[i]) : opmath_t(0);
      opmath_t zp, xb;
      step_fwd_math<kNoise>(static_cast<opmath_t>(z[i]), static_cast<opmath_t>(eps_u[i]),
                            static_cast<opmath_t>(eps_c[i]), static_cast<opmath_t>(anchor[i]),
                            nz, c, zp, xb);
      z_prev[i] = static_cast<scalar_t>(zp);
      if constexpr (kX0) {
        x0[i] = static_cast<scalar_t>(xb);
      }
    }
  }
}

template <typename scalar_t, int kVec, bool kH>
__global__ void __launch_bounds__(kThreads)
    bwd_kernel(const scalar_t* __restrict__ G, const scalar_t* __restrict__ H,
               scalar_t* __restrict__ g_z, scalar_t* __restrict__ g_eps_u,
               scalar_t* __restrict__ g_eps_c, scalar_t* __restrict__ g_anchor, int64_t n,
               BwdCoef<at::opmath_type<scalar_t>> c) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n_packs = n / kVec;
  for (int64_t p = tid; p < n_packs; p += stride) {
    const int64_t i = p * kVec;
    const P pG = load_pack<scalar_t, kVec>(G, i);
    P pH;
    if constexpr (kH) {
      pH = load_pack<scalar_t, kVec>(H, i);
    }
    P o_z, o_u, o_c, o_a;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const opmath_t h = kH ? static_cast<opmath_t>(pH.v[k]) : opmath_t(0);
      opmath_t gz, gu, gc, ga;
      step_bwd_math<kH>(static_cast<opmath_t>(pG.v[k]), h, c, gz, gu, gc, ga);
      o_z.v[k] = static_cast<scalar_t>(gz);
      o_u.v[k] = static_cast<scalar_t>(gu);
      o_c.v[k] = static_cast<scalar_t>(gc);
      o_a.v[k] = static_cast<scalar_t>(ga);
    }
    store_pack<scalar_t, kVec>(g_z, i, o_z);
    store_pack<scalar_t, kVec>(g_eps_u, i, o_u);
    store_pack<scalar_t, kVec>(g_eps_c, i, o_c);
    store_pack<scalar_t, kVec>(g_anchor, i, o_a);
  }
  if constexpr (kVec > 1) {
    for (int64_t i = n_packs * kVec + tid; i < n; i += stride) {
      const opmath_t h = kH ? static_cast<opmath_t>(H[i]) : opmath_t(0);
      opmath_t gz, gu, gc, ga;
      step_bwd_math<kH>(static_cast<opmath_t>(G[i]), h, c, gz, gu, gc, ga);
      g_z[i] = static_cast<scalar_t>(gz);
      g_eps_u[i] = static_cast<scalar_t>(gu);
      g_eps_c[i] = static_cast<scalar_t>(gc);
      g_anchor[i] = static_cast<scalar_t>(ga);
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Enough blocks to cover the work, capped at a few waves of the device (grid-stride loop).
// (cudaDeviceGetAttribute is a cheap query, unlike cudaGetDeviceProperties.)
unsigned int num_blocks(int64_t work_items, c10::DeviceIndex device) {
  int sm_count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  const int64_t max_blocks = static_cast<int64_t>(std::max(sm_count, 1)) * 8;
  const int64_t needed = (work_items + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(needed, max_blocks)));
}

template <typename scalar_t, bool kNoise, bool kX0>
void fwd_launch(const at::Tensor& z, const at::Tensor& eps_u, const at::Tensor& eps_c,
                const at::Tensor& anchor, const at::Tensor& noise, const StepCoef& coef,
                at::Tensor& z_prev, at::Tensor& x0) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const FwdCoef<opmath_t> c = make_fwd_coef<opmath_t>(coef);
  const int64_t n = z.numel();
  const scalar_t* pz = z.const_data_ptr<scalar_t>();
  const scalar_t* pu = eps_u.const_data_ptr<scalar_t>();
  const scalar_t* pc = eps_c.const_data_ptr<scalar_t>();
  const scalar_t* pa = anchor.const_data_ptr<scalar_t>();
  const scalar_t* pn = kNoise ? noise.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* pzp = z_prev.mutable_data_ptr<scalar_t>();
  scalar_t* px0 = kX0 ? x0.mutable_data_ptr<scalar_t>() : nullptr;
  const bool vec_ok = aligned16(pz) && aligned16(pu) && aligned16(pc) && aligned16(pa) &&
                      (!kNoise || aligned16(pn)) && aligned16(pzp) && (!kX0 || aligned16(px0));
  const c10::DeviceIndex dev = z.device().index();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev);
  if (vec_ok) {
    fwd_kernel<scalar_t, kVec, kNoise, kX0><<<num_blocks(n / kVec, dev), kThreads, 0, stream>>>(
        pz, pu, pc, pa, pn, pzp, px0, n, c);
  } else {
    fwd_kernel<scalar_t, 1, kNoise, kX0><<<num_blocks(n, dev), kThreads, 0, stream>>>(
        pz, pu, pc, pa, pn, pzp, px0, n, c);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kH>
void bwd_launch(const at::Tensor& G, const at::Tensor& H, const StepCoef& coef, at::Tensor& g_z,
                at::Tensor& g_eps_pair, at::Tensor& g_anchor) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const BwdCoef<opmath_t> c = make_bwd_coef<opmath_t>(coef);
  const int64_t n = G.numel();
  const scalar_t* pG = G.const_data_ptr<scalar_t>();
  const scalar_t* pH = kH ? H.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* pgz = g_z.mutable_data_ptr<scalar_t>();
  scalar_t* pgu = g_eps_pair.mutable_data_ptr<scalar_t>();
  scalar_t* pgc = pgu + n;  // second half of the pair; aligned only if n*sizeof is
  scalar_t* pga = g_anchor.mutable_data_ptr<scalar_t>();
  const bool vec_ok = aligned16(pG) && (!kH || aligned16(pH)) && aligned16(pgz) &&
                      aligned16(pgu) && aligned16(pgc) && aligned16(pga);
  const c10::DeviceIndex dev = G.device().index();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev);
  if (vec_ok) {
    bwd_kernel<scalar_t, kVec, kH><<<num_blocks(n / kVec, dev), kThreads, 0, stream>>>(
        pG, pH, pgz, pgu, pgc, pga, n, c);
  } else {
    bwd_kernel<scalar_t, 1, kH><<<num_blocks(n, dev), kThreads, 0, stream>>>(pG, pH, pgz, pgu, pgc,
                                                                        pga, n, c);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void step_forward_cuda(const at::Tensor& z, const at::Tensor& eps_u, const at::Tensor& eps_c,
                       const at::Tensor& anchor, const at::Tensor& noise, const StepCoef& coef,
                       at::Tensor& z_prev, at::Tensor& x0) {
  if (z.numel() == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(z.device());
  const bool has_noise = noise.defined();
  const bool want_x0 = x0.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, z.scalar_type(), "ld3m_fast_step_forward_cuda", [&] {
        if (has_noise) {
          if (want_x0) {
            fwd_launch<scalar_t, true, true>(z, eps_u, eps_c, anchor, noise, coef, z_prev, x0);
          } else {
            fwd_launch<scalar_t, true, false>(z, eps_u, eps_c, anchor, noise, coef, z_prev, x0);
          }
        } else {
          if (want_x0) {
            fwd_launch<scalar_t, false, true>(z, eps_u, eps_c, anchor, noise, coef, z_prev, x0);
          } else {
            fwd_launch<scalar_t, false, false>(z, eps_u, eps_c, anchor, noise, coef, z_prev, x0);
          }
        }
      });
}

void step_backward_cuda(const at::Tensor& G, const at::Tensor& H, const StepCoef& coef,
                        at::Tensor& g_z, at::Tensor& g_eps_pair, at::Tensor& g_anchor) {
  if (G.numel() == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(G.device());
  const bool has_h = H.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, G.scalar_type(), "ld3m_fast_step_backward_cuda", [&] {
        if (has_h) {
          bwd_launch<scalar_t, true>(G, H, coef, g_z, g_eps_pair, g_anchor);
        } else {
          bwd_launch<scalar_t, false>(G, H, coef, g_z, g_eps_pair, g_anchor);
        }
      });
}

}  // namespace ld3m_fast

#endif  // WITH_CUDA
