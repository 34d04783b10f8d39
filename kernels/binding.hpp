// binding.hpp: what the LibTorch bindings of the kernels (the *_cpu.cpp files) share.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "cuda_place.hpp"

namespace peftkit::kernels {

// Tests: fill the kernels' outputs with NaN before they run, so an element a kernel forgets to
// write shows up as NaN instead of stale memory.
void poison_kernel_outputs_for_testing(bool on);

namespace binding {

// The CPU kernels' arithmetic type: fp64 for fp64 inputs, else fp32.
inline at::ScalarType accumulate_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A kernel output: NaN-filled while testing for unwritten elements, else uninitialised.
at::Tensor output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Whether autograd will ask for a backward of an op on these inputs.
inline bool needs_backward(std::initializer_list<const at::Tensor*> inputs) {
  return at::GradMode::is_enabled() &&
         std::any_of(inputs.begin(), inputs.end(),
                     [](const at::Tensor* x) { return x->defined() && x->requires_grad(); });
}

// The CUDA kernels take bf16 or fp32 inputs as they are; everything else is made fp32.
inline at::ScalarType cuda_input_type(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
}
// Contiguous and 16-byte aligned: the CUDA kernels copy rows in 16-byte pieces, so a view that
// starts inside an element group of its allocation (a narrowed or offset tensor) is copied.
inline at::Tensor contiguous_aligned(const at::Tensor& x) {
  at::Tensor c = x.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}
inline cuda::InputType cuda_type(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? cuda::InputType::kBFloat16 : cuda::InputType::kFloat32;
}

}  // namespace binding
}  // namespace peftkit::kernels
