// Helpers for tests that run `peftkit train`: a learnable token stream and the metrics it writes.
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace peftkit::testing {

// 400 uint16 tokens of a repeating pattern (k * 7 mod 40), written by NumPy; returns its exit code.
inline CommandResult write_token_stream(const std::string& python,
                                        const std::filesystem::path& path) {
  return run_command(python + " -c \"import numpy as np; np.save('" + path.string() +
                     "', (np.arange(400) * 7 % 40).astype('<u2'))\"");
}

#ifdef PEFTKIT_BINARY
// The tiny model (2 layers x 64, vocabulary 1000, seed 1) as `folder`/model.pth, and 4000 tokens
// of a repeating pattern with noise (learnable, never out of the vocabulary) as
// `folder`/tokens.npy, written by NumPy. Returns the first failing command's result.
inline CommandResult write_tiny_training_inputs(const std::string& python,
                                                const std::filesystem::path& folder) {
  CommandResult model = run_command(peftkit_command(
      "init-model --layers 2 --embd 64 --head-size 32 --vocab 1000 --seed 1 --out " +
      (folder / "model.pth").string()));
  if (model.exit_code != 0) return model;
  return run_command(python +
                     " -c \"import numpy as np; r = np.random.default_rng(0); "
                     "t = (np.arange(4000) * 7 % 50 + r.integers(0, 3, 4000)).astype('<u2'); "
                     "np.save('" +
                     (folder / "tokens.npy").string() + "', t)\"");
}
#endif

// The lines of a run's metrics.jsonl.
inline std::vector<nlohmann::json> read_metrics(const std::filesystem::path& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

}  // namespace peftkit::testing
