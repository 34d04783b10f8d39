// device.hpp (host-internal): the device names recipes and commands accept.
#pragma once

#include <string_view>

#include <c10/core/Device.h>

namespace peftkit::host {

// Throws peftkit::Error unless the text is one of the accepted forms (checks nothing else).
void check_device_name(std::string_view text);

// "auto" (the first GPU when there is one, else the CPU), "cpu", "cuda" or "cuda:N". Throws
// peftkit::Error for other text or when CUDA is asked for on a machine without it.
c10::Device resolve_device(std::string_view text);

}  // namespace peftkit::host
