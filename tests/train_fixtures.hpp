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

// The lines of a run's metrics.jsonl.
inline std::vector<nlohmann::json> read_metrics(const std::filesystem::path& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

}  // namespace peftkit::testing
