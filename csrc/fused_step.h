// Fused LD3M denoising step: the elementwise math, the call description and the one dispatch
// from runtime arguments to compiled kernels, shared by the CPU (.cpp) and CUDA (.cu) drivers.
//
// The math is written once, as functors over a value type V that is either a scalar (float /
// double: the CPU tail loop and the CUDA kernels) or an at::vec::Vectorized<float / double>
// (the CPU vector loop).  Its operation order is exactly the one of the PyTorch reference
// (ld3m_fast/engine/fused_step.py, docs/design.md §4), so that results agree with it to within
// rounding of single operations.
//
// Forward (r_t, s_t, r_p, d, sigma, g, w_x, w_o):
//   eps    = eps_u + g (eps_c - eps_u)
//   x0     = (z - s_t eps) / r_t
//   x0b    = (1 - w_x) x0 + w_x anchor
//   z_prev = (1 - w_o) (r_p x0b + d eps) + w_o anchor  [+ sigma noise]
// Backward (G = dL/dz_prev, H = dL/dx0b or absent):
//   gm = (1 - w_o) G;  gx0b = r_p gm [+ H];  gx0 = (1 - w_x) gx0b
//   g_anchor = w_o G + w_x gx0b;  g_eps = d gm - (s_t / r_t) gx0;  g_z = gx0 / r_t
//   g_eps_u = (1 - g) g_eps;  g_eps_c = g g_eps
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <array>
#include <cstdint>
#include <type_traits>

namespace ld3m_fast {

// The 8 scalars in StepCoefficients order, as Python floats (double).
struct StepCoef {
  double r_t, s_t, r_p, d, sigma, g, w_x, w_o;
};

// The coefficients of the math, combined in double on the host (like the reference does with
// Python floats), each rounded once to the compute type S and broadcast to the value type V.
template <typename V>
struct Coef {
  V g, one_m_g, s_t, r_t, s_over_r, r_p, d, sigma, w_x, one_m_wx, w_o, one_m_wo;
};

template <typename V, typename S = V>
Coef<V> make_coef(const StepCoef& c) {
  const auto k = [](double x) { return V(static_cast<S>(x)); };
  return {k(c.g),   k(1.0 - c.g), k(c.s_t),   k(c.r_t),       k(c.s_t / c.r_t), k(c.r_p),
          k(c.d),   k(c.sigma),   k(c.w_x),   k(1.0 - c.w_x), k(c.w_o),         k(1.0 - c.w_o)};
}

// Every step kernel is an elementwise map of Op::kInputs tensors to Op::kOutputs tensors,
// Op::apply(in, out, coef) on values V.  Optional tensors come last, so that absent ones are
// simply cut off.

// Inputs z, eps_u, eps_c, anchor [, noise]; outputs z_prev [, x0b].
template <bool kNoise, bool kX0>
struct StepForward {
  static constexpr int kInputs = kNoise ? 5 : 4;
  static constexpr int kOutputs = kX0 ? 2 : 1;

  template <typename V>
  static C10_HOST_DEVICE C10_ALWAYS_INLINE void apply(const V* in, V* out, const Coef<V>& c) {
    const V& z = in[0];
    const V& eps_u = in[1];
    const V& eps_c = in[2];
    const V& anchor = in[3];
    const V eps = eps_u + c.g * (eps_c - eps_u);
    const V x0 = (z - c.s_t * eps) / c.r_t;
    const V x0b = c.one_m_wx * x0 + c.w_x * anchor;
    const V mean = c.r_p * x0b + c.d * eps;
    V z_prev = c.one_m_wo * mean + c.w_o * anchor;
    if constexpr (kNoise) {
      z_prev = z_prev + c.sigma * in[4];
    }
    out[0] = z_prev;
    if constexpr (kX0) {
      out[1] = x0b;
    }
  }
};

// Inputs G [, H]; outputs g_z, g_eps_u, g_eps_c, g_anchor.
template <bool kH>
struct StepBackward {
  static constexpr int kInputs = kH ? 2 : 1;
  static constexpr int kOutputs = 4;

  template <typename V>
  static C10_HOST_DEVICE C10_ALWAYS_INLINE void apply(const V* in, V* out, const Coef<V>& c) {
    const V& G = in[0];
    const V gm = c.one_m_wo * G;
    V gx0b = c.r_p * gm;
    if constexpr (kH) {
      gx0b = gx0b + in[1];
    }
    const V gx0 = c.one_m_wx * gx0b;
    const V g_anchor = c.w_o * G + c.w_x * gx0b;
    const V g_eps = c.d * gm - c.s_over_r * gx0;
    out[0] = gx0 / c.r_t;
    out[1] = c.one_m_g * g_eps;
    out[2] = c.g * g_eps;
    out[3] = g_anchor;
  }
};

// One call of the step, as the bindings checked and allocated it: every defined tensor is
// contiguous, of one shape, dtype and device.  Undefined tensors are absent optional ones
// (forward: noise, x0; backward: H).
struct StepCall {
  bool forward;
  StepCoef coef;
  std::array<at::Tensor, 5> inputs;   // forward: z, eps_u, eps_c, anchor, noise; backward: G, H
  // forward: z_prev, x0; backward: g_z, g_eps_u, g_eps_c, g_anchor
  std::array<at::Tensor, 4> outputs;
};

// The data pointers of one side (inputs or outputs) of a call.
template <typename T, int N>
struct Ptrs {
  T* p[N];
};

template <typename T, int N, std::size_t M>
Ptrs<T, N> data_ptrs(const std::array<at::Tensor, M>& tensors) {
  static_assert(N <= static_cast<int>(M), "more pointers than tensors");
  using S = std::remove_const_t<T>;
  Ptrs<T, N> r{};
  for (int k = 0; k < N; ++k) {
    if constexpr (std::is_const_v<T>) {
      r.p[k] = tensors[k].template const_data_ptr<S>();
    } else {
      r.p[k] = tensors[k].template mutable_data_ptr<S>();
    }
  }
  return r;
}

// What a device driver runs: Op on n elements of scalar_t, computing in opmath_t.
template <typename Op_, typename scalar_t_>
struct StepArgs {
  using Op = Op_;
  using scalar_t = scalar_t_;
  using opmath_t = at::opmath_type<scalar_t_>;
  Ptrs<const scalar_t_, Op_::kInputs> in;
  Ptrs<scalar_t_, Op_::kOutputs> out;
  int64_t n;
  StepCoef coef;
};

// f(std::bool_constant<flags>...): runtime flags turned into compile-time constants.
template <typename F>
void with_flags(F&& f) {
  f();
}

template <typename F, typename... Flags>
void with_flags(F&& f, bool first, Flags... rest) {
  if (first) {
    with_flags([&](auto... k) { f(std::true_type{}, k...); }, rest...);
  } else {
    with_flags([&](auto... k) { f(std::false_type{}, k...); }, rest...);
  }
}

// Runs `call` with Driver::run(StepArgs<Op, scalar_t>) for its dtype and its optional tensors.
template <typename Driver>
void dispatch_step(const StepCall& call) {
  const at::Tensor& ref = call.inputs[0];
  if (ref.numel() == 0) {
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, ref.scalar_type(), "ld3m_fast_step", [&] {
    const auto run = [&](auto op) {
      using Op = decltype(op);
      Driver::run(StepArgs<Op, scalar_t>{data_ptrs<const scalar_t, Op::kInputs>(call.inputs),
                                         data_ptrs<scalar_t, Op::kOutputs>(call.outputs),
                                         ref.numel(), call.coef});
    };
    if (call.forward) {
      with_flags(
          [&](auto noise, auto x0) {
            run(StepForward<decltype(noise)::value, decltype(x0)::value>{});
          },
          call.inputs[4].defined(), call.outputs[1].defined());
    } else {
      with_flags([&](auto h) { run(StepBackward<decltype(h)::value>{}); },
                 call.inputs[1].defined());
    }
  });
}

// The device drivers (fused_step_cpu.cpp, fused_step_cuda.cu).
void run_step_cpu(const StepCall& call);
#ifdef WITH_CUDA
void run_step_cuda(const StepCall& call);
#endif
// Name of the SIMD instruction set the CPU kernels were compiled for ("AVX2" or "DEFAULT").
const char* cpu_capability();

}  // namespace ld3m_fast
