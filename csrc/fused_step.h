// Fused LD3M denoising step: shared declarations and the elementwise math.
//
// The math is written once, as templates over a value type V that is either a scalar
// (float / double, used by the CPU tail loop and by the CUDA kernels) or an
// at::vec::Vectorized<float / double> (the CPU vector loop).  Its operation order is
// exactly the one of ld3m_fast/backends/torch_backend.py so that results agree with the
// reference to within rounding of single operations.
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

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <array>

namespace ld3m_fast {

// The 8 scalars in StepCoefficients order, as Python floats (double).
struct StepCoef {
  double r_t, s_t, r_p, d, sigma, g, w_x, w_o;

  static StepCoef from_array(const std::array<double, 8>& a) {
    return StepCoef{a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]};
  }
};

// Coefficients of the forward pass, combined in double on the host (like the Python
// reference does with Python floats) and then converted once to the compute type V.
template <typename V>
struct FwdCoef {
  V g, s_t, r_t, one_m_wx, w_x, r_p, d, one_m_wo, w_o, sigma;
};

template <typename V>
struct BwdCoef {
  V one_m_wo, r_p, one_m_wx, w_o, w_x, d, s_over_r, r_t, one_m_g, g;
};

template <typename S>
inline FwdCoef<S> make_fwd_coef(const StepCoef& c) {
  FwdCoef<S> r;
  r.g = static_cast<S>(c.g);
  r.s_t = static_cast<S>(c.s_t);
  r.r_t = static_cast<S>(c.r_t);
  r.one_m_wx = static_cast<S>(1.0 - c.w_x);
  r.w_x = static_cast<S>(c.w_x);
  r.r_p = static_cast<S>(c.r_p);
  r.d = static_cast<S>(c.d);
  r.one_m_wo = static_cast<S>(1.0 - c.w_o);
  r.w_o = static_cast<S>(c.w_o);
  r.sigma = static_cast<S>(c.sigma);
  return r;
}

template <typename S>
inline BwdCoef<S> make_bwd_coef(const StepCoef& c) {
  BwdCoef<S> r;
  r.one_m_wo = static_cast<S>(1.0 - c.w_o);
  r.r_p = static_cast<S>(c.r_p);
  r.one_m_wx = static_cast<S>(1.0 - c.w_x);
  r.w_o = static_cast<S>(c.w_o);
  r.w_x = static_cast<S>(c.w_x);
  r.d = static_cast<S>(c.d);
  r.s_over_r = static_cast<S>(c.s_t / c.r_t);
  r.r_t = static_cast<S>(c.r_t);
  r.one_m_g = static_cast<S>(1.0 - c.g);
  r.g = static_cast<S>(c.g);
  return r;
}

// Converts a coefficient set from one value type to another (scalar -> vector broadcast).
template <typename V, typename S>
inline FwdCoef<V> broadcast(const FwdCoef<S>& c) {
  return FwdCoef<V>{V(c.g), V(c.s_t), V(c.r_t), V(c.one_m_wx), V(c.w_x),
                    V(c.r_p), V(c.d), V(c.one_m_wo), V(c.w_o), V(c.sigma)};
}

template <typename V, typename S>
inline BwdCoef<V> broadcast(const BwdCoef<S>& c) {
  return BwdCoef<V>{V(c.one_m_wo), V(c.r_p), V(c.one_m_wx), V(c.w_o), V(c.w_x),
                    V(c.d), V(c.s_over_r), V(c.r_t), V(c.one_m_g), V(c.g)};
}

template <bool kNoise, typename V>
C10_HOST_DEVICE C10_ALWAYS_INLINE void step_fwd_math(const V& z, const V& eps_u, const V& eps_c,
                                                     const V& anchor, const V& noise,
                                                     const FwdCoef<V>& c, V& z_prev, V& x0b) {
  const V eps = eps_u + c.g * (eps_c - eps_u);
  const V x0 = (z - c.s_t * eps) / c.r_t;
  x0b = c.one_m_wx * x0 + c.w_x * anchor;
  const V mean = c.r_p * x0b + c.d * eps;
  V out = c.one_m_wo * mean + c.w_o * anchor;
  if constexpr (kNoise) {
    out = out + c.sigma * noise;
  }
  z_prev = out;
}

template <bool kH, typename V>
C10_HOST_DEVICE C10_ALWAYS_INLINE void step_bwd_math(const V& G, const V& H, const BwdCoef<V>& c,
                                                     V& g_z, V& g_eps_u, V& g_eps_c,
                                                     V& g_anchor) {
  const V gm = c.one_m_wo * G;
  V gx0b = c.r_p * gm;
  if constexpr (kH) {
    gx0b = gx0b + H;
  }
  const V gx0 = c.one_m_wx * gx0b;
  g_anchor = c.w_o * G + c.w_x * gx0b;
  const V g_eps = c.d * gm - c.s_over_r * gx0;
  g_z = gx0 / c.r_t;
  g_eps_u = c.one_m_g * g_eps;
  g_eps_c = c.g * g_eps;
}

// Device launchers.  Callers (bindings.cpp) have checked that every tensor is defined
// where required, contiguous, of one shape, dtype and device, and allocated the outputs
// (contiguous, same dtype/device; g_eps_pair of shape (2, *G.shape)).  `noise`, `x0`, `H`
// may be undefined tensors meaning "absent" / "not wanted".
void step_forward_cpu(const at::Tensor& z, const at::Tensor& eps_u, const at::Tensor& eps_c,
                      const at::Tensor& anchor, const at::Tensor& noise, const StepCoef& coef,
                      at::Tensor& z_prev, at::Tensor& x0);
void step_backward_cpu(const at::Tensor& G, const at::Tensor& H, const StepCoef& coef,
                       at::Tensor& g_z, at::Tensor& g_eps_pair, at::Tensor& g_anchor);
// Name of the SIMD instruction set the CPU kernels were compiled for ("AVX2" or "DEFAULT").
const char* cpu_capability();

#ifdef WITH_CUDA
void step_forward_cuda(const at::Tensor& z, const at::Tensor& eps_u, const at::Tensor& eps_c,
                       const at::Tensor& anchor, const at::Tensor& noise, const StepCoef& coef,
                       at::Tensor& z_prev, at::Tensor& x0);
void step_backward_cuda(const at::Tensor& G, const at::Tensor& H, const StepCoef& coef,
                        at::Tensor& g_z, at::Tensor& g_eps_pair, at::Tensor& g_anchor);
#endif

}  // namespace ld3m_fast
