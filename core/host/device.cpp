#include "host/device.hpp"

#include <ATen/Context.h>

#include <regex>
#include <string>

#include "peftkit/error.hpp"

namespace peftkit::host {

void check_device_name(std::string_view text) {
  static const std::regex kDevice("auto|cpu|cuda(:[0-9]+)?");
  const std::string name(text);
  if (!std::regex_match(name, kDevice))
    throw Error("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", found \"" + name + "\"");
}

c10::Device resolve_device(std::string_view text) {
  check_device_name(text);
  const std::string name(text);
  if (name == "auto") return at::hasCUDA() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (name == "cpu") return c10::kCPU;
  if (!at::hasCUDA()) throw Error(name + ": no CUDA device is available on this machine");
  // Always an explicit index: "cuda" is the first GPU (per-device calls refuse index -1).
  const c10::Device device = name == "cuda" ? c10::Device(c10::kCUDA, 0) : c10::Device(name);
  const int64_t count = at::getNumGPUs();
  if (device.index() >= count)
    throw Error(name + ": this machine has " + std::to_string(count) + " CUDA device" +
                (count == 1 ? "" : "s"));
  return device;
}

std::string resolve_precision(const std::string& precision, const c10::Device& device) {
  if (precision != "auto") return precision;
  return device.is_cuda() ? "bf16" : "fp32";
}

}  // namespace peftkit::host
