// jsonl: one JSON object per line, tokenised with the host's World tokenizer. A line is one of
//   {"text": "..."}                                 loss on every token
//   {"prompt": "...", "response": "..."}            loss on the response only
//   {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...]}
//        rendered in the RWKV World chat format "User: ...\n\nAssistant: ...\n\n", with the loss on
//        the assistant replies only (roles: system, user, assistant)
// followed by the end-of-document token 0 (append_eod) so the model learns to stop. One document
// per sample, truncated to ctx_len + 1 tokens; the trainer pads on the right with ignored targets.
// Every line is checked when the file is opened; tokenisation happens per sample.
#include <cstring>
#include <nlohmann/json.hpp>

#include "mapped_bytes.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/json_limits.hpp"
#include "peftkit/log.hpp"
#include "peftkit/plugin.hpp"

namespace peftkit::jsonl {
namespace {

struct Piece {
  std::string text;
  bool in_loss;
};

// The pieces of one line, or an empty string in `problem` naming what is wrong with it.
std::vector<Piece> render(const nlohmann::json& line, std::string& problem) {
  auto string_field = [&](const nlohmann::json& object, const char* key) -> const std::string* {
    auto it = object.find(key);
    if (it == object.end() || !it->is_string()) return nullptr;
    return it->get_ptr<const std::string*>();
  };
  if (!line.is_object()) {
    problem = "expected a JSON object";
    return {};
  }
  if (line.contains("text")) {
    if (const std::string* text = string_field(line, "text")) return {{*text, true}};
    problem = "\"text\" must be a string";
    return {};
  }
  if (line.contains("prompt") || line.contains("response")) {
    const std::string *prompt = string_field(line, "prompt"),
                      *response = string_field(line, "response");
    if (prompt && response) return {{*prompt, false}, {*response, true}};
    problem = "\"prompt\" and \"response\" must both be strings";
    return {};
  }
  if (line.contains("messages")) {
    const auto& messages = line["messages"];
    if (!messages.is_array() || messages.empty()) {
      problem = "\"messages\" must be a non-empty array";
      return {};
    }
    std::vector<Piece> pieces;
    for (const auto& message : messages) {
      const std::string* role = message.is_object() ? string_field(message, "role") : nullptr;
      const std::string* content = message.is_object() ? string_field(message, "content") : nullptr;
      if (!role || !content || (*role != "system" && *role != "user" && *role != "assistant")) {
        problem = "each message needs \"role\" (system, user or assistant) and \"content\" strings";
        return {};
      }
      if (*role == "assistant") {
        pieces.push_back({"Assistant:", false});
        pieces.push_back({" " + *content + "\n\n", true});
      } else {
        pieces.push_back({(*role == "user" ? "User: " : "System: ") + *content + "\n\n", false});
      }
    }
    return pieces;
  }
  problem = "expected a \"text\", \"prompt\"/\"response\" or \"messages\" field";
  return {};
}

// Limits on a line (README, "Limits"): valid lines nest three levels ({"messages": [{...}]}).
constexpr int kMaxLineNesting = 32;
constexpr size_t kMaxLineBytes = 16 << 20;

class JsonlDataset final : public Dataset {
 public:
  JsonlDataset(const DatasetSource& source, bool skip_bad_lines, bool append_eod)
      : bytes_(source.path),
        tokenizer_(*source.tokenizer),
        ctx_len_(source.ctx_len),
        vocab_size_(source.vocab_size),
        append_eod_(append_eod) {
    const std::string where = source.path.string();
    const char* data = reinterpret_cast<const char*>(bytes_.data());
    size_t begin = 0;
    bool any_target = false;
    for (int64_t number = 1; begin < bytes_.size(); ++number) {
      const char* newline =
          static_cast<const char*>(std::memchr(data + begin, '\n', bytes_.size() - begin));
      const size_t end = newline ? static_cast<size_t>(newline - data) : bytes_.size();
      std::string_view text(data + begin, end - begin);
      if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
      if (text.find_first_not_of(" \t") != std::string_view::npos) {
        const std::string line_where = where + ":" + std::to_string(number);
        std::string problem;
        try {
          if (text.size() > kMaxLineBytes)
            throw Error(line_where + ": the line is " + std::to_string(text.size()) +
                        " bytes long; lines of at most " + std::to_string(kMaxLineBytes) +
                        " bytes are read");
          check_json_nesting(text, kMaxLineNesting, line_where);
          render(nlohmann::json::parse(text), problem);
        } catch (const nlohmann::json::exception& e) {
          problem = std::string("not valid JSON (") + e.what() + ")";
        } catch (const Error& e) {
          problem = e.what();
        }
        if (problem.empty()) {
          lines_.push_back({begin, text.size(), number});
          // Every line is tokenised once here: ids outside the model's vocabulary are found now,
          // not when the line is drawn, and a file without any target to learn is refused.
          any_target = sample(static_cast<int64_t>(lines_.size()) - 1).has_target() || any_target;
        } else if (skip_bad_lines) {
          ++skipped_;
        } else {
          throw Error((problem.rfind(line_where, 0) == 0 ? problem : line_where + ": " + problem) +
                      " (set skip_bad_lines = true in [data.jsonl] to skip such lines)");
        }
      }
      begin = end + 1;
    }
    if (skipped_) log::warn(where + ": skipped " + std::to_string(skipped_) + " bad lines");
    if (lines_.empty()) throw Error(where + ": contains no usable lines");
    if (!any_target)
      throw Error(
          where + ": no line has a token to learn within ctx_len = " + std::to_string(ctx_len_) +
          " (empty texts, or prompts that fill the whole context); every step would be skipped");
  }

  int64_t size() const override { return static_cast<int64_t>(lines_.size()); }

  Sample sample(int64_t index) const override {
    const Line& line = lines_.at(static_cast<size_t>(index));
    const std::string where = bytes_.path().string() + ":" + std::to_string(line.number);
    std::string problem;
    const auto pieces =
        render(nlohmann::json::parse(std::string_view(
                   reinterpret_cast<const char*>(bytes_.data()) + line.begin, line.length)),
               problem);
    std::vector<int32_t> ids;
    std::vector<bool> in_loss;
    for (const auto& piece : pieces) {
      for (int32_t id : tokenizer_.encode(piece.text)) {
        ids.push_back(id);
        in_loss.push_back(piece.in_loss);
      }
    }
    if (append_eod_) {
      ids.push_back(0);
      in_loss.push_back(true);
    }
    const size_t length = std::min(ids.size(), static_cast<size_t>(ctx_len_ + 1));
    Sample sample;
    for (size_t t = 0; t < length; ++t)
      if (vocab_size_ > 0 && ids[t] >= vocab_size_)
        throw Error(where + ": token id " + std::to_string(ids[t]) +
                    " is outside the model's vocabulary [0, " + std::to_string(vocab_size_) + ")");
    for (size_t t = 0; t + 1 < length; ++t) {
      sample.input_ids.push_back(ids[t]);
      sample.targets.push_back(in_loss[t + 1] ? ids[t + 1] : kIgnoreIndex);
    }
    return sample;
  }

  std::string describe() const override {
    return bytes_.path().string() + ": " + std::to_string(lines_.size()) + " documents" +
           (skipped_ ? " (" + std::to_string(skipped_) + " bad lines skipped)" : "");
  }

 private:
  struct Line {
    size_t begin, length;
    int64_t number;
  };
  datasets::MappedBytes bytes_;
  const Tokenizer& tokenizer_;
  int64_t ctx_len_, vocab_size_;
  bool append_eod_;
  std::vector<Line> lines_;
  int64_t skipped_ = 0;
};

class JsonlPlugin final : public DatasetPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema()
        .add_bool("skip_bad_lines", false,
                  "skip and count lines that do not parse instead of stopping")
        .add_bool("append_eod", true,
                  "end every document with the end-of-text token 0 (in the loss)");
  }
  std::unique_ptr<Dataset> open(const DatasetSource& source,
                                const Options& options) const override {
    if (!source.tokenizer)
      throw Error(source.path.string() +
                  ": jsonl data needs the RWKV World tokenizer; run scripts/setup.sh "
                  "or set PEFTKIT_VOCAB");
    return std::make_unique<JsonlDataset>(source, options.get_bool("skip_bad_lines"),
                                          options.get_bool("append_eod"));
  }
};

}  // namespace
}  // namespace peftkit::jsonl

PEFTKIT_PLUGIN(peftkit::jsonl::JsonlPlugin, "jsonl", "0.1.0",
               "JSON lines: text, prompt/response or chat messages, World-tokenised")
