// The LibTorch headers that most translation units of the core, the kernels, the program and the
// tests parse; precompiled once (cmake/PeftkitPch.cmake) they cut such a compile to about a third.
// Only what LibTorch owns belongs here: peftkit's own headers change too often, and spdlog must
// never meet LibTorch's fmt.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
