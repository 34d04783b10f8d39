// The out-of-memory error of a training step: what it names and what it advises.
#include "train/settings.hpp"

#include <gtest/gtest.h>

namespace peftkit::train {
namespace {

TEST(OutOfMemoryMessage, NamesTheStepDeviceAndSizeAndOnlyAdviceNotInEffect) {
  TrainSettings s;
  s.micro_bsz = 8;
  s.ctx_len = 4096;
  s.quant_method = "none";
  const std::string allocator =
      "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 79.1 GiB";
  EXPECT_EQ(out_of_memory_message(s, 12, "cuda:0", allocator),
            "step 12 ran out of memory on cuda:0 (Tried to allocate 2.50 GiB); to lower the peak "
            "try a smaller [train] micro_bsz (now 8; accumulate_grad_batches keeps the batch), "
            "[train] grad_cp = true (recomputes each block's activations), [train] chunk_ctx = "
            "512 (trains the 4096-token samples in segments that carry the state), or a quantized "
            "base ([quant] method = \"nf4\" or \"int8\")");
  // Everything already in effect: only the last resort remains.
  s.micro_bsz = 1;
  s.grad_cp = true;
  s.chunk_ctx = 256;
  s.quant_method = "nf4";
  EXPECT_EQ(out_of_memory_message(s, 3, "cpu", ""),
            "step 3 ran out of memory on cpu; to lower the peak try a smaller model or a device "
            "with more memory");
  s.grad_cp = false;
  EXPECT_EQ(out_of_memory_message(s, 3, "cpu", "no size here"),
            "step 3 ran out of memory on cpu; to lower the peak try [train] grad_cp = true "
            "(recomputes each block's activations)");
}

}  // namespace
}  // namespace peftkit::train
