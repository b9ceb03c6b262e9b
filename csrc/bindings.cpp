// Python bindings of ld3m_fast._C: argument checks, output allocation, device dispatch.
#include <torch/extension.h>

#include <cstddef>
#include <optional>
#include <tuple>
#include <vector>

#include "fused_step.h"

namespace ld3m_fast {
namespace {

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// Checks call.inputs[k], named names[k]: the first has a supported dtype and device, every other
// one its shape, dtype and device, and all are contiguous.  Inputs from `n_required` on are
// optional: undefined means absent.
void check_inputs(const char* fn, const StepCall& call, const std::vector<const char*>& names,
                  std::size_t n_required) {
  const at::Tensor& ref = call.inputs[0];
  for (std::size_t k = 0; k < names.size(); ++k) {
    const at::Tensor& t = call.inputs[k];
    if (k >= n_required && !t.defined()) {
      continue;
    }
    TORCH_CHECK(t.defined(), fn, ": ", names[k], " is an undefined tensor");
    if (k == 0) {
      TORCH_CHECK(supported_dtype(t.scalar_type()), fn, ": ", names[k], " has dtype ",
                  t.scalar_type(), "; supported dtypes are float32, float64, bfloat16, float16");
#ifdef WITH_CUDA
      TORCH_CHECK(t.device().is_cpu() || t.device().is_cuda(), fn, ": ", names[k], " is on ",
                  t.device(), "; only CPU and CUDA tensors are supported");
#else
      TORCH_CHECK(t.device().is_cpu(), fn, ": ", names[k], " is on ", t.device(),
                  "; this build of ld3m_fast._C supports CPU tensors only (compiled without CUDA)");
#endif
    } else {
      TORCH_CHECK(t.sizes() == ref.sizes(), fn, ": ", names[k], " has shape ", t.sizes(), " but ",
                  names[0], " has shape ", ref.sizes(), "; all step tensors must have one shape");
      TORCH_CHECK(t.scalar_type() == ref.scalar_type(), fn, ": ", names[k], " has dtype ",
                  t.scalar_type(), " but ", names[0], " has dtype ", ref.scalar_type(),
                  "; all step tensors must have one dtype");
      TORCH_CHECK(t.device() == ref.device(), fn, ": ", names[k], " is on ", t.device(), " but ",
                  names[0], " is on ", ref.device(), "; all step tensors must be on one device");
    }
    TORCH_CHECK(t.is_contiguous(), fn, ": ", names[k], " must be contiguous (call .contiguous())");
  }
}

StepCoef parse_coeffs(const std::vector<double>& coeffs, const char* fn) {
  TORCH_CHECK(coeffs.size() == 8, fn, ": coeffs must hold 8 floats (r_t, s_t, r_p, d, sigma, ",
              "g, w_x, w_o), got ", coeffs.size());
  const double* c = coeffs.data();
  return StepCoef{c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]};
}

at::Tensor empty_like_contiguous(const at::Tensor& t) {
  return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
}

// Runs a checked call on its tensors' device (a CUDA build accepts CUDA tensors, see check_inputs).
void run_step(const StepCall& call) {
#ifdef WITH_CUDA
  if (call.inputs[0].is_cuda()) {
    run_step_cuda(call);
    return;
  }
#endif
  run_step_cpu(call);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> step_forward(const at::Tensor& z, const at::Tensor& eps_u,
                                                const at::Tensor& eps_c, const at::Tensor& anchor,
                                                const std::optional<at::Tensor>& noise,
                                                const std::vector<double>& coeffs, bool want_x0) {
  constexpr const char* fn = "ld3m_fast._C.step_forward";
  StepCall call{true, {}, {z, eps_u, eps_c, anchor, noise.value_or(at::Tensor())}, {}};
  check_inputs(fn, call, {"z", "eps_u", "eps_c", "anchor", "noise"}, 4);
  call.coef = parse_coeffs(coeffs, fn);
  call.outputs[0] = empty_like_contiguous(z);
  if (want_x0) {
    call.outputs[1] = empty_like_contiguous(z);
  }
  run_step(call);
  return {call.outputs[0], call.outputs[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> step_backward(const at::Tensor& G,
                                                             const std::optional<at::Tensor>& H,
                                                             const std::vector<double>& coeffs) {
  constexpr const char* fn = "ld3m_fast._C.step_backward";
  StepCall call{false, {}, {G, H.value_or(at::Tensor())}, {}};
  check_inputs(fn, call, {"grad_z_prev", "grad_x0"}, 1);
  call.coef = parse_coeffs(coeffs, fn);
  // g_eps_u and g_eps_c are the two halves of one (2, *shape) tensor: the gradient of a
  // doubled-batch denoiser output [uncond; cond] as it is.
  std::vector<int64_t> pair_shape{2};
  pair_shape.insert(pair_shape.end(), G.sizes().begin(), G.sizes().end());
  const at::Tensor g_eps_pair =
      at::empty(pair_shape, G.options().memory_format(at::MemoryFormat::Contiguous));
  call.outputs = {empty_like_contiguous(G), g_eps_pair[0], g_eps_pair[1], empty_like_contiguous(G)};
  run_step(call);
  return {call.outputs[0], g_eps_pair, call.outputs[3]};
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
