// .pth files: the zip directory and the restricted pickle machine (core/io/pth.cpp), with every
// record's CRC checked; every tensor read is copied so a view past its storage would fault.
#include <ATen/ATen.h>

#include "fuzz_input.hpp"
#include "peftkit/tensor_io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = peftkit::fuzz::write_input("input.pth", data, size);
  return peftkit::fuzz::expect_ok_or_error([&] {
    for (const auto& [name, tensor] : peftkit::read_pth(path, peftkit::Checksums::kVerify))
      (void)tensor.contiguous();
  });
}
