// Python bindings of ld3m_fast._C: argument checks, output allocation, device dispatch.
#include <torch/extension.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "fused_step.h"

namespace ld3m_fast {
namespace {

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// `ref` is the tensor every other one must match; it is checked first.
void check_ref(const at::Tensor& ref, const char* fn, const char* name) {
  TORCH_CHECK(ref.defined(), fn, ": ", name, " is an undefined tensor");
  TORCH_CHECK(supported_dtype(ref.scalar_type()), fn, ": ", name, " has dtype ",
              ref.scalar_type(), "; supported dtypes are float32, float64, bfloat16, float16");
#ifdef WITH_CUDA
  TORCH_CHECK(ref.device().is_cpu() || ref.device().is_cuda(), fn, ": ", name, " is on ",
              ref.device(), "; only CPU and CUDA tensors are supported");
#else
  TORCH_CHECK(ref.device().is_cpu(), fn, ": ", name, " is on ", ref.device(),
              "; this build of ld3m_fast._C supports CPU tensors only (compiled without CUDA)");
#endif
  TORCH_CHECK(ref.is_contiguous(), fn, ": ", name, " must be contiguous (call .contiguous())");
}

void check_like(const at::Tensor& t, const at::Tensor& ref, const char* fn, const char* name,
                const char* ref_name) {
  TORCH_CHECK(t.defined(), fn, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.sizes() == ref.sizes(), fn, ": ", name, " has shape ", t.sizes(), " but ",
              ref_name, " has shape ", ref.sizes(), "; all step tensors must have one shape");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), fn, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type(),
              "; all step tensors must have one dtype");
  TORCH_CHECK(t.device() == ref.device(), fn, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device(), "; all step tensors must be on one device");
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous (call .contiguous())");
}

StepCoef parse_coeffs(const std::vector<double>& coeffs, const char* fn) {
  TORCH_CHECK(coeffs.size() == 8, fn, ": coeffs must hold 8 floats (r_t, s_t, r_p, d, sigma, ",
              "g, w_x, w_o), got ", coeffs.size());
  std::array<double, 8> a{};
  for (size_t i = 0; i < 8; ++i) {
    a[i] = coeffs[i];
  }
  return StepCoef::from_array(a);
}

at::Tensor empty_like_contiguous(const at::Tensor& t) {
  return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> step_forward(const at::Tensor& z, const at::Tensor& eps_u,
                                                const at::Tensor& eps_c, const at::Tensor& anchor,
                                                const std::optional<at::Tensor>& noise,
                                                const std::vector<double>& coeffs, bool want_x0) {
  constexpr const char* fn = "ld3m_fast._C.step_forward";
  check_ref(z, fn, "z");
  check_like(eps_u, z, fn, "eps_u", "z");
  check_like(eps_c, z, fn, "eps_c", "z");
  check_like(anchor, z, fn, "anchor", "z");
  const bool has_noise = noise.has_value() && noise->defined();
  at::Tensor noise_t;
  if (has_noise) {
    noise_t = *noise;
    check_like(noise_t, z, fn, "noise", "z");
  }
  const StepCoef coef = parse_coeffs(coeffs, fn);

  at::Tensor z_prev = empty_like_contiguous(z);
  at::Tensor x0;
  if (want_x0) {
    x0 = empty_like_contiguous(z);
  }
  if (z.device().is_cuda()) {
#ifdef WITH_CUDA
    step_forward_cuda(z, eps_u, eps_c, anchor, noise_t, coef, z_prev, x0);
#endif
  } else {
    step_forward_cpu(z, eps_u, eps_c, anchor, noise_t, coef, z_prev, x0);
  }
  return {z_prev, x0};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> step_backward(const at::Tensor& G,
                                                             const std::optional<at::Tensor>& H,
                                                             const std::vector<double>& coeffs) {
  constexpr const char* fn = "ld3m_fast._C.step_backward";
  check_ref(G, fn, "grad_z_prev");
  const bool has_h = H.has_value() && H->defined();
  at::Tensor H_t;
  if (has_h) {
    H_t = *H;
    check_like(H_t, G, fn, "grad_x0", "grad_z_prev");
  }
  const StepCoef coef = parse_coeffs(coeffs, fn);

  at::Tensor g_z = empty_like_contiguous(G);
  at::Tensor g_anchor = empty_like_contiguous(G);
  std::vector<int64_t> pair_shape;
  pair_shape.reserve(G.dim() + 1);
  pair_shape.push_back(2);
  for (const int64_t s : G.sizes()) {
    pair_shape.push_back(s);
  }
  at::Tensor g_eps_pair =
      at::empty(pair_shape, G.options().memory_format(at::MemoryFormat::Contiguous));
  if (G.device().is_cuda()) {
#ifdef WITH_CUDA
    step_backward_cuda(G, H_t, coef, g_z, g_eps_pair, g_anchor);
#endif
  } else {
    step_backward_cpu(G, H_t, coef, g_z, g_eps_pair, g_anchor);
  }
  return {g_z, g_eps_pair, g_anchor};
}

bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace ld3m_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ld3m_fast compiled kernels: the fused LD3M denoising step (CPU, and CUDA if built).";
  m.def("step_forward", &ld3m_fast::step_forward, pybind11::arg("z"), pybind11::arg("eps_u"),
        pybind11::arg("eps_c"), pybind11::arg("anchor"), pybind11::arg("noise"),
        pybind11::arg("coeffs"), pybind11::arg("want_x0"),
        "Fused step forward. coeffs = [r_t, s_t, r_p, d, sigma, g, w_x, w_o]; noise may be None.\n"
        "Returns (z_prev, x0) with x0 None unless want_x0.");
  m.def("step_backward", &ld3m_fast::step_backward, pybind11::arg("grad_z_prev"),
        pybind11::arg("grad_x0"), pybind11::arg("coeffs"),
        "Fused step backward; grad_x0 may be None.\n"
        "Returns (grad_z, grad_eps_pair of shape (2, *grad_z_prev.shape), grad_anchor).");
  m.def("has_cuda", &ld3m_fast::has_cuda, "True if this build contains the CUDA kernels.");
  m.def("cpu_capability", &ld3m_fast::cpu_capability,
        "SIMD instruction set of the CPU kernels: 'AVX2' or 'DEFAULT' (portable).");
}
