#include "binding.hpp"

#include <atomic>
#include <limits>

namespace peftkit::kernels {
namespace {
std::atomic<bool> poison_outputs{false};
}  // namespace

void poison_kernel_outputs_for_testing(bool on) { poison_outputs = on; }

at::Tensor binding::output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return poison_outputs ? at::full(sizes, std::numeric_limits<float>::quiet_NaN(), options)
                        : at::empty(sizes, options);
}

}  // namespace peftkit::kernels
