// token-lines: a dataset plugin that reads one sample per line, each line a list of token ids
// separated by spaces ("33155 40213 34 261"). The model learns to predict every next token.
//
// It shows all a dataset plugin needs: an option schema, strict input checking with file:line
// errors, and a pure sample(i); and the optional writer, which lets `peftkit convert --to
// token-lines` turn any readable dataset into this format.
#include <algorithm>
#include <charconv>
#include <fstream>
#include <peftkit/atomic_file.hpp>
#include <peftkit/dataset.hpp>
#include <peftkit/plugin.hpp>
#include <string>
#include <vector>

namespace {

class TokenLinesDataset final : public peftkit::Dataset {
 public:
  TokenLinesDataset(std::vector<std::vector<int32_t>> lines, std::string description)
      : lines_(std::move(lines)), description_(std::move(description)) {}

  int64_t size() const override { return static_cast<int64_t>(lines_.size()); }

  peftkit::Sample sample(int64_t index) const override {
    const auto& ids = lines_.at(static_cast<size_t>(index));
    peftkit::Sample sample;
    // Inputs are the line without its last token; targets are the line shifted by one.
    sample.input_ids.assign(ids.begin(), ids.end() - 1);
    sample.targets.assign(ids.begin() + 1, ids.end());
    return sample;
  }

  std::string describe() const override { return description_; }

 private:
  std::vector<std::vector<int32_t>> lines_;
  std::string description_;
};

// One line per document, its ids separated by spaces; the file appears only when complete.
class TokenLinesWriter final : public peftkit::DatasetWriter {
 public:
  explicit TokenLinesWriter(const std::filesystem::path& path) : file_(path) {}

  void add(const peftkit::Sample& document) override {
    const std::vector<int32_t> ids = peftkit::document_tokens(document);
    if (ids.size() < 2)  // the reader needs a token to predict
      throw peftkit::Error(file_.path().string() + ": document " + std::to_string(lines_) +
                           " has " + std::to_string(ids.size()) +
                           " token(s); a token-lines sample needs at least 2");
    std::string line;
    for (int32_t id : ids) line += (line.empty() ? "" : " ") + std::to_string(id);
    line += '\n';
    file_.write(line.data(), line.size());
    ++lines_;
  }

  std::string finish() override {
    file_.commit();
    return "wrote " + file_.path().string() + ": " + std::to_string(lines_) +
           " documents, one line of token ids each";
  }

 private:
  peftkit::AtomicFile file_;
  int64_t lines_ = 0;
};

class TokenLinesPlugin final : public peftkit::DatasetPlugin {
 public:
  peftkit::OptionSchema options() const override {
    return peftkit::OptionSchema().add_bool("skip_empty_lines", true,
                                            "ignore blank lines instead of rejecting them");
  }

  std::unique_ptr<peftkit::Dataset> open(const peftkit::DatasetSource& source,
                                         const peftkit::Options& options) const override {
    std::ifstream in(source.path);
    if (!in) throw peftkit::Error(source.path.string() + ": cannot open the dataset file");
    const bool skip_empty = options.get_bool("skip_empty_lines");
    std::vector<std::vector<int32_t>> lines;
    std::string line;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      const std::string where = source.path.string() + ":" + std::to_string(number);
      std::vector<int32_t> ids = parse_ids(line, where, source.vocab_size);
      if (ids.empty() && skip_empty) continue;
      if (ids.size() < 2)
        throw peftkit::Error(where + ": expected at least 2 token ids, found " +
                             std::to_string(ids.size()));
      // A sample holds ctx_len inputs, so a line keeps at most ctx_len + 1 tokens.
      if (source.ctx_len > 0 && static_cast<int64_t>(ids.size()) > source.ctx_len + 1)
        ids.resize(static_cast<size_t>(source.ctx_len + 1));
      lines.push_back(std::move(ids));
    }
    if (lines.empty()) throw peftkit::Error(source.path.string() + ": contains no samples");
    std::string description =
        source.path.string() + ": " + std::to_string(lines.size()) + " lines of token ids";
    return std::make_unique<TokenLinesDataset>(std::move(lines), std::move(description));
  }

  std::string writer_description() const override {
    return "one line of space-separated token ids per document";
  }
  std::unique_ptr<peftkit::DatasetWriter> create_writer(const peftkit::DatasetTarget& target,
                                                        const peftkit::Options&) const override {
    return std::make_unique<TokenLinesWriter>(target.path);
  }

 private:
  static std::vector<int32_t> parse_ids(const std::string& line, const std::string& where,
                                        int64_t vocab_size) {
    std::vector<int32_t> ids;
    const char* p = line.data();
    const char* end = p + line.size();
    while (p < end) {
      if (*p == ' ' || *p == '\t' || *p == '\r') {
        ++p;
        continue;
      }
      int64_t id = 0;
      auto [next, ec] = std::from_chars(p, end, id);
      if (ec != std::errc() || (next < end && *next != ' ' && *next != '\t' && *next != '\r'))
        throw peftkit::Error(where + ": expected a token id, found '" +
                             std::string(p, std::find(p, end, ' ')) + "'");
      if (id < 0 || (vocab_size > 0 && id >= vocab_size))
        throw peftkit::Error(where + ": token id " + std::to_string(id) + " is outside [0, " +
                             std::to_string(vocab_size) + ")");
      ids.push_back(static_cast<int32_t>(id));
      p = next;
    }
    return ids;
  }
};

}  // namespace

PEFTKIT_PLUGIN(TokenLinesPlugin, "token-lines", "1.0.0",
               "example: one sample per line of space-separated token ids")
