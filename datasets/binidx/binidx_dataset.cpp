// binidx: the Megatron/GPT-NeoX mmap format (spec formats §3.1) that json2binidx and RWKV-LM's
// make_data.py write: PREFIX.idx (header, sizes, byte pointers, document index) and PREFIX.bin
// (the tokens). Modes:
//   pad     one item (document) per sample, truncated to ctx_len + 1 tokens; the trainer pads.
//           (RWKV-PEFT reads on into the next documents and masks their targets: the same loss.)
//   stream  the .bin as one token stream, windows as in token_windows.hpp (`order`).
#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "mapped_bytes.hpp"
#include "peftkit/atomic_file.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/plugin.hpp"
#include "token_windows.hpp"

namespace peftkit::binidx {
namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
constexpr size_t kHeaderSize = 34;

struct TokenType {
  const char* name;
  int size;
  bool is_signed;
};

// Codes 1-5 and 8 are integers; 6 and 7 are floats, which never hold token ids.
std::optional<TokenType> token_type(uint8_t code) {
  switch (code) {
    case 1:
      return TokenType{"uint8", 1, false};
    case 2:
      return TokenType{"int8", 1, true};
    case 3:
      return TokenType{"int16", 2, true};
    case 4:
      return TokenType{"int32", 4, true};
    case 5:
      return TokenType{"int64", 8, true};
    case 8:
      return TokenType{"uint16", 2, false};
    default:
      return std::nullopt;
  }
}

template <class T>
T read_at(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

class BinidxDataset final : public Dataset {
 public:
  BinidxDataset(const std::filesystem::path& prefix, const DatasetSource& source, bool stream,
                datasets::WindowOrder order)
      : idx_(prefix.string() + ".idx"),
        bin_(prefix.string() + ".bin"),
        ctx_len_(source.ctx_len),
        vocab_size_(source.vocab_size) {
    const std::string where = idx_.path().string();
    const uint8_t* p = idx_.data();
    if (idx_.size() >= 8 && std::memcmp(p, "TNTIDX\0\0", 8) == 0)
      throw Error(where +
                  ": the legacy fairseq \"cached\" index (TNTIDX) is not supported; re-create the "
                  "data with json2binidx's --dataset-impl mmap");
    if (idx_.size() < kHeaderSize || std::memcmp(p, kMagic, 9) != 0)
      throw Error(where + ": not a binidx index (expected the magic MMIDIDX\\0\\0 at the start)");
    if (const uint64_t version = read_at<uint64_t>(p + 9); version != 1)
      throw Error(where + ": index version " + std::to_string(version) +
                  " is not supported (expected 1)");
    const uint8_t code = p[17];
    auto type = token_type(code);
    if (!type)
      throw Error(where + ": dtype code " + std::to_string(code) +
                  (code == 6 || code == 7 ? " is a float type" : " is unknown") +
                  "; token ids need an integer type (8 = uint16 or 4 = int32 as json2binidx and "
                  "make_data.py write)");
    type_ = *type;
    // Every size and pointer comes from the file: each is checked once here, overflow-safe, so
    // sample() can trust them.
    const uint64_t count = read_at<uint64_t>(p + 18);
    const uint64_t documents = read_at<uint64_t>(p + 26);
    const uint64_t room = idx_.size() - kHeaderSize;
    if (count > room / 12 || documents > (room - 12 * count) / 8)
      throw Error(where + ": truncated index: the header announces " + std::to_string(count) +
                  " items and " + std::to_string(documents) +
                  " document entries, which need more than the " + std::to_string(idx_.size()) +
                  " bytes of the file");
    count_ = static_cast<int64_t>(count);
    sizes_ = p + kHeaderSize;
    pointers_ = sizes_ + 4 * count_;
    if (bin_.size() % type_.size != 0)
      throw Error(bin_.path().string() + ": " + std::to_string(bin_.size()) +
                  " bytes is not a whole number of " + type_.name + " tokens");
    tokens_ = static_cast<int64_t>(bin_.size()) / type_.size;
    int64_t longest = 0;
    for (int64_t i = 0; i < count_; ++i) {
      const int64_t size = item_size(i), pointer = item_pointer(i);
      const std::string item = where + ": item " + std::to_string(i);
      if (size < 0) throw Error(item + " has the negative size " + std::to_string(size));
      if (pointer < 0 || pointer % type_.size != 0)
        throw Error(item + " has the byte pointer " + std::to_string(pointer) + ", which is " +
                    (pointer < 0 ? "negative"
                                 : "not a multiple of the " + std::to_string(type_.size) +
                                       "-byte token size"));
      if (pointer / type_.size > tokens_ - size)
        throw Error(item + " covers tokens " + std::to_string(pointer / type_.size) + " to " +
                    std::to_string(pointer / type_.size + size) + " but " + bin_.path().string() +
                    " holds " + std::to_string(tokens_) + " tokens");
      longest = std::max(longest, size);
    }
    // The document index: non-decreasing item numbers from 0 up to the item count.
    const uint8_t* document_index = pointers_ + 8 * count_;
    for (uint64_t d = 0; d < documents; ++d) {
      const int64_t value = read_at<int64_t>(document_index + 8 * d);
      const int64_t previous = d == 0 ? 0 : read_at<int64_t>(document_index + 8 * (d - 1));
      if (value < previous || value > count_ || (d == 0 && value != 0) ||
          (d + 1 == documents && value != count_))
        throw Error(where + ": document index entry " + std::to_string(d) + " is " +
                    std::to_string(value) +
                    "; expected non-decreasing item numbers from 0 to the item count " +
                    std::to_string(count_));
    }
    datasets::check_token_ids(bin_.data(), tokens_, type_.size, type_.is_signed, vocab_size_,
                              bin_.path().string());
    if (!stream && count_ > 0 && longest < 2)
      throw Error(
          where +
          ": no item holds two tokens or more, so no sample has a target to learn (mode = \"pad\" "
          "takes one item per sample)");
    if (stream) windows_.emplace(tokens_, ctx_len_, order, source.seed, bin_.path().string());
    size_ = stream ? windows_->size() : count_;
    if (size_ == 0) throw Error(where + ": the dataset holds no items");
  }

  int64_t size() const override { return size_; }

  Sample sample(int64_t index) const override {
    if (index < 0 || index >= size_)
      throw Error(bin_.path().string() + ": sample " + std::to_string(index) + " is outside [0, " +
                  std::to_string(size_) + ")");
    int64_t begin, length;
    if (windows_) {
      begin = windows_->offset(index);
      length = ctx_len_ + 1;
    } else {
      begin = item_pointer(index) / type_.size;
      length = std::min(item_size(index), ctx_len_ + 1);  // checked at open
    }
    return datasets::tokens_to_sample([this](int64_t e) { return token(e); }, begin, length,
                                      vocab_size_, bin_.path().string());
  }

  std::string describe() const override {
    std::string text = bin_.path().string() + ": " + std::to_string(tokens_) + " " + type_.name +
                       " tokens in " + std::to_string(count_) + " items, ";
    return text + (windows_ ? windows_->describe() : "one document per sample");
  }

 private:
  int64_t item_size(int64_t i) const { return read_at<int32_t>(sizes_ + 4 * i); }
  int64_t item_pointer(int64_t i) const { return read_at<int64_t>(pointers_ + 8 * i); }
  int64_t token(int64_t e) const {
    const uint8_t* p = bin_.data() + e * type_.size;
    switch (type_.size) {
      case 1:
        return type_.is_signed ? int64_t{read_at<int8_t>(p)} : int64_t{*p};
      case 2:
        return type_.is_signed ? int64_t{read_at<int16_t>(p)} : int64_t{read_at<uint16_t>(p)};
      case 4:
        return read_at<int32_t>(p);
      default:
        return read_at<int64_t>(p);
    }
  }

  datasets::MappedBytes idx_, bin_;
  int64_t ctx_len_, vocab_size_;
  TokenType type_{};
  int64_t count_ = 0, tokens_ = 0, size_ = 0;
  const uint8_t *sizes_ = nullptr, *pointers_ = nullptr;
  std::optional<datasets::TokenWindows> windows_;
};

// json2binidx's output: PREFIX.bin with every document and its end token 0, uint16 when the
// vocabulary fits (int32 otherwise), and PREFIX.idx with sizes, byte pointers and the document
// index 0..N. Neither file appears under its name before both are complete.
class BinidxWriter final : public DatasetWriter {
 public:
  explicit BinidxWriter(const DatasetTarget& target)
      : prefix_(strip_extension(target.path)),
        narrow_(target.vocab_size > 0 && target.vocab_size <= 65536),
        bin_(prefix_.string() + ".bin") {}

  void add(const Sample& document) override {
    std::vector<int32_t> ids = document_tokens(document);
    if (ids.empty()) return;
    if (ids.back() != 0) ids.push_back(0);  // end of document
    std::string bytes;
    for (int32_t id : ids) {
      if (narrow_)
        append(bytes, static_cast<uint16_t>(id));
      else
        append(bytes, id);
    }
    pointers_.push_back(static_cast<int64_t>(bin_.bytes_written()));
    bin_.write(bytes.data(), bytes.size());
    sizes_.push_back(static_cast<int32_t>(ids.size()));
    tokens_ += static_cast<int64_t>(ids.size());
  }

  std::string finish() override {
    std::string index(kMagic, sizeof kMagic);
    append<uint64_t>(index, 1);
    index += static_cast<char>(narrow_ ? 8 : 4);  // dtype code: uint16 or int32
    append<uint64_t>(index, sizes_.size());
    append<uint64_t>(index, sizes_.size() + 1);  // document index: 0, 1, ..., N
    for (int32_t size : sizes_) append(index, size);
    for (int64_t pointer : pointers_) append(index, pointer);
    for (uint64_t d = 0; d <= sizes_.size(); ++d) append(index, static_cast<int64_t>(d));
    AtomicFile idx(prefix_.string() + ".idx");
    idx.write(index.data(), index.size());
    bin_.commit();
    idx.commit();
    return "wrote " + prefix_.string() + ".bin and " + prefix_.string() +
           ".idx: " + std::to_string(sizes_.size()) + " documents, " + std::to_string(tokens_) +
           " tokens (" + (narrow_ ? "uint16" : "int32") + ")";
  }

 private:
  template <class T>
  static void append(std::string& out, T value) {
    char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));  // little-endian hosts only, as the reader
    out.append(bytes, sizeof(T));
  }
  static std::filesystem::path strip_extension(std::filesystem::path path) {
    if (path.extension() == ".bin" || path.extension() == ".idx") path.replace_extension();
    return path;
  }

  std::filesystem::path prefix_;
  bool narrow_;
  AtomicFile bin_;
  std::vector<int32_t> sizes_;
  std::vector<int64_t> pointers_;
  int64_t tokens_ = 0;
};

class BinidxPlugin final : public DatasetPlugin {
 public:
  OptionSchema options() const override {
    OptionSchema schema;
    schema.add_string("mode", "pad",
                      "\"pad\": one document per sample; \"stream\": the data as one token stream",
                      {"pad", "stream"});
    datasets::add_window_order_option(schema);
    return schema;
  }
  void validate(const Options& options) const override {
    if (options.get_string("mode") == "pad" && options.source("order") != OptionSource::kDefault)
      throw options.error("order", "applies to mode = \"stream\" only");
  }
  std::unique_ptr<Dataset> open(const DatasetSource& source,
                                const Options& options) const override {
    // The recipe may name the prefix or either file.
    std::filesystem::path prefix = source.path;
    if (prefix.extension() == ".bin" || prefix.extension() == ".idx") prefix.replace_extension();
    return std::make_unique<BinidxDataset>(prefix, source, options.get_string("mode") == "stream",
                                           datasets::window_order(options));
  }
  std::string writer_description() const override {
    return "PREFIX.bin + PREFIX.idx as json2binidx writes them (no loss mask; end token 0 after "
           "each document)";
  }
  std::unique_ptr<DatasetWriter> create_writer(const DatasetTarget& target,
                                               const Options&) const override {
    return std::make_unique<BinidxWriter>(target);
  }
};

}  // namespace
}  // namespace peftkit::binidx

PEFTKIT_PLUGIN(peftkit::binidx::BinidxPlugin, "binidx", "0.1.0",
               "Megatron/GPT-NeoX binidx (.bin + .idx), as json2binidx and RWKV-LM write it")
