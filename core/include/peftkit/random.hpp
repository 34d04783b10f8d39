// random.hpp: stateless mixing for reproducible choices derived from a seed.
//
// Sampling decisions in peftkit (window offsets, sample order) are pure functions of (seed, index),
// so a resumed run makes the same choices as an uninterrupted one:
//
//   uint64_t offset = peftkit::mix64(peftkit::mix64(seed) ^ index) % positions;
#pragma once

#include <cstdint>

namespace peftkit {

// SplitMix64's finaliser: a bijective mix of 64 bits.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace peftkit
