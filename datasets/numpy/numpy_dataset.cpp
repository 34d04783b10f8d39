// numpy: token ids from a .npy file (spec formats §3.2), memory-mapped.
//   1-D array: one token stream; sample i is a window of ctx_len + 1 tokens (token_windows.hpp).
//   2-D array: [samples, length]; sample i is row i, truncated to ctx_len + 1 tokens.
#include <memory>
#include <optional>

#include "npy_file.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/plugin.hpp"
#include "token_windows.hpp"

namespace peftkit::numpy {
namespace {

class NumpyDataset final : public Dataset {
 public:
  NumpyDataset(std::unique_ptr<NpyFile> file, const DatasetSource& source,
               datasets::WindowOrder order)
      : file_(std::move(file)), ctx_len_(source.ctx_len), vocab_size_(source.vocab_size) {
    const std::string where = file_->path().string();
    datasets::check_token_ids(file_->data(), file_->element_count(), file_->element_bytes(),
                              file_->type() != TokenType::kUint16, vocab_size_, where);
    if (file_->shape().size() == 2) {
      if (file_->shape()[1] < 2)
        throw Error(where + ": rows of length " + std::to_string(file_->shape()[1]) +
                    " are too short; a sample needs at least 2 tokens");
      size_ = file_->shape()[0];
    } else {
      windows_.emplace(file_->element_count(), ctx_len_, order, source.seed, where);
      size_ = windows_->size();
    }
  }

  int64_t size() const override { return size_; }

  Sample sample(int64_t index) const override {
    if (index < 0 || index >= size_)
      throw Error(file_->path().string() + ": sample " + std::to_string(index) +
                  " is outside [0, " + std::to_string(size_) + ")");
    int64_t begin, length;
    if (windows_) {
      begin = windows_->offset(index);
      length = ctx_len_ + 1;
    } else {
      const int64_t row_length = file_->shape()[1];
      begin = index * row_length;
      length = std::min(row_length, ctx_len_ + 1);
    }
    return datasets::tokens_to_sample([this](int64_t e) { return file_->at(e); }, begin, length,
                                      vocab_size_, file_->path().string());
  }

  std::string describe() const override {
    const auto& shape = file_->shape();
    std::string text = file_->path().string() + ": " + file_->type_name() + " .npy v" +
                       std::to_string(file_->version()) + ", ";
    if (!windows_)
      return text + std::to_string(shape[0]) + " rows of " + std::to_string(shape[1]) + " tokens";
    return text + std::to_string(shape[0]) + " tokens, " + windows_->describe();
  }

 private:
  std::unique_ptr<NpyFile> file_;
  int64_t ctx_len_, vocab_size_;
  std::optional<datasets::TokenWindows> windows_;  // 1-D streams only
  int64_t size_ = 0;
};

class NumpyPlugin final : public DatasetPlugin {
 public:
  OptionSchema options() const override {
    OptionSchema schema;
    datasets::add_window_order_option(schema);
    return schema;
  }

  std::unique_ptr<Dataset> open(const DatasetSource& source,
                                const Options& options) const override {
    auto file = std::make_unique<NpyFile>(source.path);
    if (file->shape().size() == 2 && options.source("order") != OptionSource::kDefault)
      throw options.error("order",
                          source.path.string() +
                              " is a 2-D [samples, length] array, "
                              "whose rows are the samples; order applies to 1-D streams only");
    return std::make_unique<NumpyDataset>(std::move(file), source, datasets::window_order(options));
  }
};

}  // namespace
}  // namespace peftkit::numpy

PEFTKIT_PLUGIN(peftkit::numpy::NumpyPlugin, "numpy", "0.1.0",
               "token ids in a .npy file: a 1-D stream or 2-D [samples, length]")
