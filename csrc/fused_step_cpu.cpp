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

// Loads and stores of kStep consecutive elements as two compute-type (at::opmath_type) vectors.
// float/double: two Vectorized<scalar_t>.  bfloat16/half: one Vectorized<scalar_t>
// converted to/from two Vectorized<float> (rounding once, to nearest even, at the store).
template <typename scalar_t, typename Enable = void>
struct VecIO {
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

// Elements [begin, end) of one call: the vector loop, then a scalar tail.
template <typename Args>
void step_chunk(const Args& a, int64_t begin, int64_t end) {
  using Op = typename Args::Op;
  using scalar_t = typename Args::scalar_t;
  using opmath_t = typename Args::opmath_t;
  using IO = VecIO<scalar_t>;
  using fVec = typename IO::fVec;
  const Coef<fVec> cv = make_coef<fVec, opmath_t>(a.coef);
  const Coef<opmath_t> cs = make_coef<opmath_t>(a.coef);

  int64_t i = begin;
  for (; i + IO::kStep <= end; i += IO::kStep) {
    fVec lo[Op::kInputs], hi[Op::kInputs], lo_out[Op::kOutputs], hi_out[Op::kOutputs];
    for (int k = 0; k < Op::kInputs; ++k) {
      IO::load(a.in.p[k] + i, lo[k], hi[k]);
    }
    Op::apply(lo, lo_out, cv);
    Op::apply(hi, hi_out, cv);
    for (int k = 0; k < Op::kOutputs; ++k) {
      IO::store(a.out.p[k] + i, lo_out[k], hi_out[k]);
    }
  }
  for (; i < end; ++i) {
    opmath_t x[Op::kInputs], y[Op::kOutputs];
    for (int k = 0; k < Op::kInputs; ++k) {
      x[k] = static_cast<opmath_t>(a.in.p[k][i]);
    }
    Op::apply(x, y, cs);
    for (int k = 0; k < Op::kOutputs; ++k) {
      a.out.p[k][i] = static_cast<scalar_t>(y[k]);
    }
  }
}

struct CpuDriver {
  template <typename Args>
  static void run(const Args& a) {
    at::parallel_for(0, a.n, kGrainSize,
                     [&](int64_t begin, int64_t end) { step_chunk(a, begin, end); });
  }
};

}  // namespace

void run_step_cpu(const StepCall& call) { dispatch_step<CpuDriver>(call); }

const char* cpu_capability() { return LD3M_CPU_CAPABILITY_NAME; }

}  // namespace ld3m_fast
