#include "eval/lambada.hpp"

#include <cmath>
#include <limits>

#include "io/mapped_file.hpp"
#include "io/strict_json.hpp"
#include "peftkit/error.hpp"

namespace peftkit::eval {
namespace {

constexpr int kMaxLineDepth = 8;

class LambadaDataset final : public Dataset {
 public:
  LambadaDataset(std::vector<Sample> samples, std::string description)
      : samples_(std::move(samples)), description_(std::move(description)) {}
  int64_t size() const override { return static_cast<int64_t>(samples_.size()); }
  Sample sample(int64_t index) const override { return samples_.at(static_cast<size_t>(index)); }
  std::string describe() const override { return description_; }

 private:
  std::vector<Sample> samples_;
  std::string description_;
};

}  // namespace

std::unique_ptr<Dataset> open_lambada(const std::filesystem::path& file, const Tokenizer& tokenizer,
                                      int64_t vocab_size) {
  io::require_regular_file(file, "LAMBADA file");
  const std::string text = io::read_small_file(file, size_t{1} << 30, "LAMBADA file");
  std::vector<Sample> samples;
  size_t line_start = 0;
  for (int64_t line_number = 1; line_start < text.size(); ++line_number) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    const std::string_view line(text.data() + line_start, line_end - line_start);
    line_start = line_end + 1;
    const std::string where = file.string() + ":" + std::to_string(line_number);
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const nlohmann::json json = io::parse_strict_json(line, kMaxLineDepth, where);
    if (!json.is_object() || !json.contains("text") || !json["text"].is_string())
      throw Error(where + ": expected {\"text\": \"...\"}, found " +
                  std::string(line.substr(0, 80)));
    const std::string& document = json["text"].get_ref<const std::string&>();
    const size_t space = document.rfind(' ');
    if (space == std::string::npos || space + 1 == document.size())
      throw Error(where + ": the text has no last word after a space to predict");
    std::vector<int32_t> context = tokenizer.encode(std::string_view(document).substr(0, space));
    context.insert(context.begin(), 0);
    const std::vector<int32_t> target = tokenizer.encode(std::string_view(document).substr(space));
    Sample sample;
    sample.input_ids = context;
    sample.input_ids.insert(sample.input_ids.end(), target.begin(), target.end() - 1);
    sample.targets.assign(context.size() - 1, kIgnoreIndex);
    sample.targets.insert(sample.targets.end(), target.begin(), target.end());
    for (const std::vector<int32_t>* ids :
         std::initializer_list<const std::vector<int32_t>*>{&context, &target})
      for (int32_t id : *ids)
        if (vocab_size > 0 && id >= vocab_size)
          throw Error(where + ": token " + std::to_string(id) +
                      " is outside the model's vocabulary [0, " + std::to_string(vocab_size) + ")");
    samples.push_back(std::move(sample));
  }
  if (samples.empty())
    throw Error(file.string() + ": no documents (expected one {\"text\": ...} per line)");
  const std::string description =
      file.string() + ": " + std::to_string(samples.size()) + " LAMBADA documents";
  return std::make_unique<LambadaDataset>(std::move(samples), description);
}

int64_t longest_sample(const Dataset& data) {
  int64_t longest = 1;
  for (int64_t i = 0; i < data.size(); ++i)
    longest = std::max<int64_t>(longest, static_cast<int64_t>(data.sample(i).input_ids.size()));
  return longest;
}

double LambadaScore::accuracy() const {
  return documents > 0 ? static_cast<double>(correct) / static_cast<double>(documents)
                       : std::numeric_limits<double>::quiet_NaN();
}
double LambadaScore::perplexity() const {
  return documents > 0 ? std::exp(-log_probability / static_cast<double>(documents))
                       : std::numeric_limits<double>::quiet_NaN();
}

LambadaScore lambada_score(const EvalResult& result) {
  LambadaScore score;
  for (const auto& doc : result.per_sample) {
    ++score.documents;
    score.log_probability -= doc.nll_sum;
    if (doc.correct == doc.tokens) ++score.correct;
  }
  return score;
}

}  // namespace peftkit::eval
