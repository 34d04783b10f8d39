// variants.hpp (host-internal): several variants of one base model (the base alone, with one
// adapter, with another...) evaluated on the same samples, one loaded at a time; what
// `peftkit eval --compare-with base` and `peftkit compare` print side by side.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "eval/evaluator.hpp"
#include "host/adapters.hpp"

namespace peftkit::eval {

struct ModelVariant {
  std::string name;                          // "base", "out/lora/rwkv-1.pth", a compare run's name
  std::vector<host::SavedAdapter> adapters;  // mounted together; none: the base alone
};

struct VariantEvaluation {
  std::string name;
  EvalResult result;
};

// The samples to evaluate, opened once the first model says its vocabulary size.
using OpenEvalData =
    std::function<std::pair<std::shared_ptr<Dataset>, SampleRange>(int64_t vocab_size)>;
// Progress: variant name, samples done, samples in all.
using VariantProgress = std::function<void(const std::string&, int64_t, int64_t)>;

// Called with each variant's model once it is evaluated (compare generates from it).
using WithLoadedVariant = std::function<void(size_t variant, model::RwkvModel& model)>;

std::vector<VariantEvaluation> evaluate_variants(
    const std::filesystem::path& base, const std::vector<ModelVariant>& variants,
    const host::PluginRegistry& plugins, const model::ModelOptions& options,
    const OpenEvalData& open_data, const EvalSettings& settings, bool keep_per_sample,
    const VariantProgress& progress = {}, const WithLoadedVariant& then = {});

// A progress callback that redraws one line on stderr when it is a terminal (else does nothing).
VariantProgress terminal_progress(const std::string& what);

}  // namespace peftkit::eval
