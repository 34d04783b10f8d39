#include "eval/data_split.hpp"

#include <cmath>

namespace peftkit::eval {

DataSplit open_data_split(const host::Recipe& recipe, const host::PluginRegistry& plugins,
                          int64_t vocab_size, const Tokenizer* tokenizer) {
  const auto plugin = plugins.get<DatasetPlugin>(recipe.dataset->plugin);
  auto open = [&](const std::filesystem::path& path) {
    DatasetSource source{path, recipe.train.get_int("ctx_len"), vocab_size,
                         static_cast<uint64_t>(recipe.train.get_int("seed")), tokenizer};
    return host::keep_loaded(plugin->open(source, recipe.dataset->options), plugin);
  };
  DataSplit split;
  split.train = open(recipe.resolve_path(recipe.data.get_string("path")));
  split.train_range = {0, split.train->size()};
  const std::string& eval_file = recipe.data.get_string("eval_file");
  const double eval_fraction = recipe.data.get_float("eval_fraction");
  if (!eval_file.empty() && eval_fraction > 0)
    throw recipe.data.error("eval_fraction", "give either eval_file or eval_fraction, not both");
  if (!eval_file.empty()) {
    split.eval = open(recipe.resolve_path(eval_file));
    split.eval_range = {0, split.eval->size()};
  } else if (eval_fraction > 0) {
    // The last samples are held out.
    const int64_t size = split.train->size();
    const int64_t held_out = std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil(eval_fraction * static_cast<double>(size))));
    if (held_out >= size)
      throw recipe.data.error("eval_fraction",
                              "leaves no training samples (" + std::to_string(size) + " in all)");
    split.eval = split.train;
    split.train_range = {0, size - held_out};
    split.eval_range = {size - held_out, size};
  }
  return split;
}

}  // namespace peftkit::eval
