// device.hpp (host-internal): the device names recipes and commands accept.
#pragma once

#include <c10/core/Device.h>

#include <string>
#include <string_view>

namespace peftkit::host {

// Throws peftkit::Error unless the text is one of the accepted forms (checks nothing else).
void check_device_name(std::string_view text);

// "auto" (the first GPU when there is one, else the CPU), "cpu", "cuda" or "cuda:N". Throws
// peftkit::Error for other text or when CUDA is asked for on a machine without it.
c10::Device resolve_device(std::string_view text);

// A recipe's [train] precision on a device: "auto" is bf16 on a GPU and fp32 on the CPU (where
// bf16 is slower, not faster); the others stand.
std::string resolve_precision(const std::string& precision, const c10::Device& device);

}  // namespace peftkit::host
