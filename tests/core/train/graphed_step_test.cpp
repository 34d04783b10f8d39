// GraphedStep on the GPU: a step whose capture fails (it reads a value back to the host, which a
// CUDA graph cannot hold) falls back to eager steps that compute the same loss, and stays eager.
// Skips without a GPU.
#include "train/graphed_step.hpp"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <gtest/gtest.h>

namespace peftkit::train {
namespace {

TEST(GraphedStep, AFailedCaptureFallsBackToEagerStepsThatComputeTheSameLoss) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device device(at::kCUDA, 0);
  // As in training: a side stream, since the default stream cannot be captured.
  c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool(false, 0));
  int calls = 0;
  GraphedStep step(
      [&](const at::Tensor& inputs, const at::Tensor&) {
        ++calls;
        const at::Tensor x = inputs.to(device, at::kFloat);
        // A host read: legal eagerly, an error while capturing.
        const double total = x.sum().item<double>();
        return (x * 2).sum() + 0 * total;
      },
      device, true);
  const at::Tensor inputs = at::arange(12, at::kLong).reshape({3, 4}), targets = inputs;
  for (int i = 0; i < 4; ++i) {
    const at::Tensor loss = step.run(inputs, targets);
    EXPECT_EQ(loss.item<double>(), 132.0) << "step " << i;
  }
  EXPECT_FALSE(step.enabled()) << "graphs stay off after a failed capture";
  EXPECT_EQ(step.replays(), 0);
  EXPECT_EQ(calls, 5) << "four eager steps and the one failed capture";
}

}  // namespace
}  // namespace peftkit::train
