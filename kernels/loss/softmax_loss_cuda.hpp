// softmax_loss_cuda.hpp: the loss's per-row kernels (softmax_loss.hpp) on raw device pointers (no
// LibTorch here), run on `place`'s stream. One block per row; logits [rows, V] contiguous in
// `type`, labels int64, V < 2^31. Functions return "" or the CUDA error.
#pragma once

#include <cstdint>
#include <string>

#include "cuda_place.hpp"

namespace peftkit::kernels::cuda {

std::string softmax_nll_forward(Place place, InputType type, int64_t rows, int64_t V,
                                const void* logits, const int64_t* labels, int64_t ignore_index,
                                float* nll);

// ce_scale and wrap_scale: device scalars; grad [rows, V] in `type`.
std::string softmax_nll_l2wrap_backward(Place place, InputType type, int64_t rows, int64_t V,
                                        const void* logits, const int64_t* labels,
                                        int64_t ignore_index, const float* ce_scale,
                                        const float* wrap_scale, void* grad);

}  // namespace peftkit::kernels::cuda
