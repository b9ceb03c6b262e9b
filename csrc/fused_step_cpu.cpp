// CPU kernels of the fused LD3M denoising step: at::parallel_for over chunks, each chunk a
// vector loop on at::vec::Vectorized<float/double> plus a scalar tail.
//
// SIMD width: ATen's Vectorized picks its implementation from CPU_CAPABILITY_* macros, which
// torch sets only for its own per-ISA kernel builds.  A default build of this extension
// therefore uses the portable 32-byte Vectorized (plain arrays, vectorised by the compiler
// for the baseline ISA, SSE2 on x86-64).  When the compiler targets AVX2+FMA+F16C itself
// (LD3M_FAST_NATIVE=1 -> -march=native on such a machine) we select ATen's AVX2 intrinsics
// implementation.  This must happen before any ATen header is included.
#if !defined(CPU_CAPABILITY) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define LD3M_CPU_CAPABILITY_NAME "AVX2"
#else
#define LD3M_CPU_CAPABILITY_NAME "DEFAULT"
#endif

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <tuple>
#include <type_traits>

#include "fused_step.h"

namespace ld3m_fast {
namespace {

using at::vec::Vectorized;

// Elements per parallel task: large enough that threading pays off for a memory-bound
// elementwise op, like ATen's own GRAIN_SIZE.
constexpr int64_t kGrainSize = 32768;

// Loads and stores of kStep consecutive elements as two compute-type vectors.
// float/double: two Vectorized<scalar_t>.  bfloat16/half: one Vectorized<scalar_t>
// converted to/from two Vectorized<float> (rounding once, to nearest even, at the store).
template <typename scalar_t, typename Enable = void>
struct VecIO {
  using opmath_t = scalar_t;
  using fVec = Vectorized<scalar_t>;
  static constexpr int64_t kStep = 2 * fVec::size();

  static C10_ALWAYS_INLINE void load(const scalar_t* p, fVec& a, fVec& b) {
    a = fVec::loadu(p);
    b = fVec::loadu(p + fVec::size());
  }
  static C10_ALWAYS_INLINE void store(scalar_t* p, const fVec& a, const fVec& b) {
    a.store(p);
    b.store(p + fVec::size());
  }
};

template <typename scalar_t>
struct VecIO<scalar_t, std::enable_if_t<at::vec::is_reduced_floating_point_v<scalar_t>>> {
  using opmath_t = float;
  using fVec = Vectorized<float>;
  using rVec = Vectorized<scalar_t>;
  static constexpr int64_t kStep = rVec::size();
  static_assert(rVec::size() == 2 * fVec::size(), "unexpected Vectorized widths");

  static C10_ALWAYS_INLINE void load(const scalar_t* p, fVec& a, fVec& b) {
    std::tie(a, b) = at::vec::convert_to_float<scalar_t>(rVec::loadu(p));
  }
  static C10_ALWAYS_INLINE void store(scalar_t* p, const fVec& a, const fVec& b) {
    at::vec::convert_from_float<scalar_t>(a, b).store(p);
  }
};

template <typename scalar_t, bool kNoise, bool kX0>
void fwd_chunk(const scalar_t* __restrict__ z, const scalar_t* __restrict__ eps_u,
               const scalar_t* __restrict__ eps_c, const scalar_t* __restrict__ anchor,
               const scalar_t* __restrict__ noise, scalar_t* __restrict__ z_prev,
               scalar_t* __restrict__ x0, const FwdCoef<typename VecIO<scalar_t>::opmath_t>& cs,
               int64_t begin, int64_t end) {
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using fVec = typename IO::fVec;
  const FwdCoef<fVec> cv = broadcast<fVec>(cs);

  int64_t i = begin;
  for (; i + IO::kStep <= end; i += IO::kStep) {
    fVec z0, z1, u0, u1, c0, c1, a0, a1, n0, n1;
    IO::load(z + i, z0, z1);
    IO::load(eps_u + i, u0, u1);
    IO::load(eps_c + i, c0, c1);
    IO::load(anchor + i, a0, a1);
    if constexpr (kNoise) {
      IO::load(noise + i, n0, n1);
    }
    fVec zp0, zp1, x00, x01;
    step_fwd_math<kNoise>(z0, u0, c0, a0, n0, cv, zp0, x00);
    step_fwd_math<kNoise>(z1, u1, c1, a1, n1, cv, zp1, x01);
    IO::store(z_prev + i, zp0, zp1);
    if constexpr (kX0) {
      IO::store(x0 + i, x00, x01);
    }
  }
  for (; i < end; ++i) {
    const opmath_t nz = kNoise ? static_cast<opmath_t>(noise[i]) : opmath_t(0);
    opmath_t zp, xb;
    step_fwd_math<kNoise>(static_cast<opmath_t>(z[i]), static_cast<opmath_t>(eps_u[i]),
                          static_cast<opmath_t>(eps_c[i]), static_cast<opmath_t>(anchor[i]), nz,
                          cs, zp, xb);
    z_prev[i] = static_cast<scalar_t>(zp);
    if constexpr (kX0) {
      x0[i] = static_cast<scalar_t>(xb);
    }
  }
}

template <typename scalar_t, bool kH>
void bwd_chunk(const scalar_t* __restrict__ G, const scalar_t* __restrict__ H,
               scalar_t* __restrict__ g_z, scalar_t* __restrict__ g_eps_u,
               scalar_t* __restrict__ g_eps_c, scalar_t* __restrict__ g_anchor,
               const BwdCoef<typename VecIO<scalar_t>::opmath_t>& cs, int64_t begin,
               int64_t end) {
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using fVec = typename IO::fVec;
  const BwdCoef<fVec> cv = broadcast<fVec>(cs);

  int64_t i = begin;
  for (; i + IO::kStep <= end; i += IO::kStep) {
    fVec G0, G1, H0, H1;
    IO::load(G + i, G0, G1);
    if constexpr (kH) {
      IO::load(H + i, H0, H1);
    }
    fVec gz0, gz1, gu0, gu1, gc0, gc1, ga0, ga1;
    step_bwd_math<kH>(G0, H0, cv, gz0, gu0, gc0, ga0);
    step_bwd_math<kH>(G1, H1, cv, gz1, gu1, gc1, ga1);
    IO::store(g_z + i, gz0, gz1);
    IO::store(g_eps_u + i, gu0, gu1);
    IO::store(g_eps_c + i, gc0, gc1);
    IO::store(g_anchor + i, ga0, ga1);
  }
  for (; i < end; ++i) {
    const opmath_t h = kH ? static_cast<opmath_t>(H[i]) : opmath_t(0);
    opmath_t gz, gu, gc, ga;
    step_bwd_math<kH>(static_cast<opmath_t>(G[i]), h, cs, gz, gu, gc, ga);
    g_z[i] = static_cast<scalar_t>(gz);
    g_eps_u[i] = static_cast<scalar_t>(gu);
    g_eps_c[i] = static_cast<scalar_t>(gc);
    g_anchor[i] = static_cast<scalar_t>(ga);
  }
}

template <typename scalar_t, bool kNoise, bool kX0>
void fwd_launch(const at::Tensor& z, const at::Tensor& eps_u, const at::Tensor& eps_c,
                const at::Tensor& anchor, const at::Tensor& noise, const StepCoef& coef,
                at::Tensor& z_prev, at::Tensor& x0) {
  using opmath_t = typename VecIO<scalar_t>::opmath_t;
  const FwdCoef<opmath_t> cs = make_fwd_coef<opmath_t>(coef);
  const scalar_t* pz = z.const_data_ptr<scalar_t>();
  const scalar_t* pu = eps_u.const_data_ptr<scalar_t>();
  const scalar_t* pc = eps_c.const_data_ptr<scalar_t>();
  const scalar_t* pa = anchor.const_data_ptr<scalar_t>();
  const scalar_t* pn = kNoise ? noise.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* pzp = z_prev.mutable_data_ptr<scalar_t>();
  scalar_t* px0 = kX0 ? x0.mutable_data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, z.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
    fwd_chunk<scalar_t, kNoise, kX0>(pz, pu, pc, pa, pn, pzp, px0, cs, begin, end);
  });
}

template <typename scalar_t, bool kH>
void bwd_launch(const at::Tensor& G, const at::Tensor& H, const StepCoef& coef, at::Tensor& g_z,
                at::Tensor& g_eps_pair, at::Tensor& g_anchor) {
  using opmath_t = typename VecIO<scalar_t>::opmath_t;
  const BwdCoef<opmath_t> cs = make_bwd_coef<opmath_t>(coef);
  const int64_t n = G.numel();
  const scalar_t* pG = G.const_data_ptr<scalar_t>();
  const scalar_t* pH = kH ? H.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* pgz = g_z.mutable_data_ptr<scalar_t>();
  scalar_t* pgu = g_eps_pair.mutable_data_ptr<scalar_t>();
  scalar_t* pgc = pgu + n;
  scalar_t* pga = g_anchor.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
    bwd_chunk<scalar_t, kH>(pG, pH, pgz, pgu, pgc, pga, cs, begin, end);
  });
}

}  // namespace

void step_forward_cpu(const at::Tensor& z, const at::Tensor& eps_u, const at::Tensor& eps_c,
                      const at::Tensor& anchor, const at::Tensor& noise, const StepCoef& coef,
                      at::Tensor& z_prev, at::Tensor& x0) {
  if (z.numel() == 0) {
    return;
  }
  const bool has_noise = noise.defined();
  const bool want_x0 = x0.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, z.scalar_type(), "ld3m_fast_step_forward_cpu", [&] {
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

void step_backward_cpu(const at::Tensor& G, const at::Tensor& H, const StepCoef& coef,
                       at::Tensor& g_z, at::Tensor& g_eps_pair, at::Tensor& g_anchor) {
  if (G.numel() == 0) {
    return;
  }
  const bool has_h = H.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, G.scalar_type(), "ld3m_fast_step_backward_cpu", [&] {
        if (has_h) {
          bwd_launch<scalar_t, true>(G, H, coef, g_z, g_eps_pair, g_anchor);
        } else {
          bwd_launch<scalar_t, false>(G, H, coef, g_z, g_eps_pair, g_anchor);
        }
      });
}

const char* cpu_capability() { return LD3M_CPU_CAPABILITY_NAME; }

}  // namespace ld3m_fast
