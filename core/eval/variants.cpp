#include "eval/variants.hpp"

#include <unistd.h>

#include <cstdio>

#include "host/loaded_model.hpp"

namespace peftkit::eval {

std::vector<VariantEvaluation> evaluate_variants(
    const std::filesystem::path& base, const std::vector<ModelVariant>& variants,
    const host::PluginRegistry& plugins, const model::ModelOptions& options,
    const OpenEvalData& open_data, const EvalSettings& settings, bool keep_per_sample,
    const VariantProgress& progress, const WithLoadedVariant& then) {
  std::vector<VariantEvaluation> out;
  std::shared_ptr<Dataset> data;
  SampleRange range;
  for (size_t v = 0; v < variants.size(); ++v) {
    const ModelVariant& variant = variants[v];
    host::LoadedModel loaded = host::load_model(base, variant.adapters, plugins, options);
    if (!data) std::tie(data, range) = open_data(loaded.model->config().vocab);
    EvalProgress on_batch;
    if (progress) on_batch = [&](int64_t done, int64_t all) { progress(variant.name, done, all); };
    out.push_back(
        {variant.name, evaluate(*loaded.model, *data, range, settings, keep_per_sample, on_batch)});
    if (then) then(v, *loaded.model);
  }
  return out;
}

VariantProgress terminal_progress(const std::string& what) {
  if (!::isatty(STDERR_FILENO)) return {};
  return [what](const std::string& name, int64_t done, int64_t all) {
    std::fprintf(stderr, "\r%s %s: %lld/%lld samples\033[K", what.c_str(), name.c_str(),
                 static_cast<long long>(done), static_cast<long long>(all));
    if (done == all) std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  };
}

}  // namespace peftkit::eval
