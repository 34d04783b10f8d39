// data_split.hpp: a recipe's [data] opened with its dataset plugin and split into the training
// samples and the held-out evaluation samples, as training and `peftkit compare` both need it.
//
//   DataSplit split = open_data_split(recipe, registry, model.config().vocab, tokenizer.get());
//   evaluate(model, *split.eval, split.eval_range, settings);
#pragma once

#include <memory>

#include "eval/evaluator.hpp"
#include "host/recipe.hpp"
#include "peftkit/dataset.hpp"

namespace peftkit::eval {

struct DataSplit {
  std::shared_ptr<Dataset> train, eval;  // eval: null without eval data; may be `train` itself
  SampleRange train_range, eval_range;
};

// [data] path, and eval_file or the last eval_fraction of path's samples held out; with
// [train] ctx_len and seed. Errors name the recipe key.
DataSplit open_data_split(const host::Recipe& recipe, const host::PluginRegistry& plugins,
                          int64_t vocab_size, const Tokenizer* tokenizer);

}  // namespace peftkit::eval
