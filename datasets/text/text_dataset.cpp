// text: plain text, World-tokenised (RWKV-PEFT's `utf-8` / `utf-16le` data types). [data] path is a
// file, a folder (its regular files, in name order) or a glob in the last path component
// ("corpus/*.txt"). Each file is one document, or is split on `separator`; every document is
// tokenised when the data is opened and ends with the end-of-text token 0 (append_eod), and a
// sample is one document cut at ctx_len + 1 tokens, with the loss on every token. UTF-16LE files
// (an optional BOM) are converted to UTF-8 first; a UTF-8 BOM is dropped.
// Written against the SDK alone, as a third-party dataset plugin would be.
#include <fnmatch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/utf8.hpp"

namespace peftkit::text {
namespace {
namespace fs = std::filesystem;

constexpr uintmax_t kMaxFileBytes = uintmax_t{1} << 32;

// The files a path names: itself, a folder's regular files, or a glob's matches (sorted).
std::vector<fs::path> files_of(const fs::path& path) {
  std::vector<fs::path> files;
  const std::string pattern = path.filename().string();
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const auto& entry : fs::directory_iterator(path))
      if (entry.is_regular_file()) files.push_back(entry.path());
    if (files.empty()) throw Error(path.string() + ": the folder holds no files");
  } else if (pattern.find_first_of("*?[") != std::string::npos) {
    const fs::path folder = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    if (!fs::is_directory(folder, ec))
      throw Error(path.string() + ": no folder " + folder.string());
    for (const auto& entry : fs::directory_iterator(folder))
      if (entry.is_regular_file() &&
          fnmatch(pattern.c_str(), entry.path().filename().c_str(), 0) == 0)
        files.push_back(entry.path());
    if (files.empty()) throw Error(path.string() + ": no file matches");
  } else {
    if (!fs::exists(path, ec)) throw Error(path.string() + ": no such file");
    if (!fs::is_regular_file(path, ec)) throw Error(path.string() + ": not a regular file");
    files.push_back(path);
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string read_bytes(const fs::path& file) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(file, ec);
  if (ec) throw Error(file.string() + ": " + ec.message());
  if (size > kMaxFileBytes)
    throw Error(file.string() + ": larger than 4 GiB; split it into several files");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot be read");
  std::string bytes(static_cast<size_t>(size), '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(size));
  if (static_cast<uintmax_t>(in.gcount()) != size)
    throw Error(file.string() + ": could not be read whole");
  return bytes;
}

// UTF-16LE bytes as UTF-8; throws naming the file and the byte offset of a broken surrogate pair.
std::string utf16le_to_utf8(const std::string& bytes, const fs::path& file) {
  if (bytes.size() % 2)
    throw Error(file.string() + ": " + std::to_string(bytes.size()) +
                " bytes, not whole UTF-16 units");
  auto unit = [&](size_t i) {
    return static_cast<uint32_t>(static_cast<unsigned char>(bytes[i]) |
                                 (static_cast<unsigned char>(bytes[i + 1]) << 8));
  };
  size_t i = bytes.size() >= 2 && unit(0) == 0xFEFF ? 2 : 0;
  std::string out;
  out.reserve(bytes.size());
  for (; i < bytes.size(); i += 2) {
    uint32_t code = unit(i);
    if (code >= 0xD800 && code < 0xDC00) {
      if (i + 3 >= bytes.size() || unit(i + 2) < 0xDC00 || unit(i + 2) >= 0xE000)
        throw Error(file.string() + ": byte " + std::to_string(i) +
                    ": a high surrogate without its low half");
      code = 0x10000 + ((code - 0xD800) << 10) + (unit(i + 2) - 0xDC00);
      i += 2;
    } else if (code >= 0xDC00 && code < 0xE000) {
      throw Error(file.string() + ": byte " + std::to_string(i) +
                  ": a low surrogate without its high half");
    }
    append_utf8(out, code);
  }
  return out;
}

class TextDataset final : public Dataset {
 public:
  TextDataset(std::vector<std::vector<int32_t>> documents, std::string description)
      : documents_(std::move(documents)), description_(std::move(description)) {}
  int64_t size() const override { return static_cast<int64_t>(documents_.size()); }
  Sample sample(int64_t index) const override {
    const auto& tokens = documents_.at(static_cast<size_t>(index));
    Sample sample;
    sample.input_ids.assign(tokens.begin(), tokens.end() - 1);
    sample.targets.assign(tokens.begin() + 1, tokens.end());
    return sample;
  }
  std::string describe() const override { return description_; }

 private:
  std::vector<std::vector<int32_t>> documents_;  // each cut at ctx_len + 1 tokens, at least 2
  std::string description_;
};

class TextPlugin final : public DatasetPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema()
        .add_string("encoding", "utf-8", "the files' encoding (RWKV-PEFT's data_type)",
                    {"utf-8", "utf-16le"})
        .add_string("separator", "",
                    "split each file into documents at this text, e.g. \"\\n\\n\" (\"\": a file "
                    "is one document)")
        .add_bool("append_eod", true,
                  "end every document with the end-of-text token 0 (in the loss)");
  }

  std::unique_ptr<Dataset> open(const DatasetSource& source,
                                const Options& options) const override {
    if (!source.tokenizer)
      throw Error(source.path.string() + ": the text plugin needs the World tokenizer");
    const bool utf16 = options.get_string("encoding") == "utf-16le";
    const std::string& separator = options.get_string("separator");
    const bool eod = options.get_bool("append_eod");
    std::vector<std::vector<int32_t>> documents;
    const std::vector<fs::path> files = files_of(source.path);
    int64_t tokens_total = 0;
    for (const auto& file : files) {
      std::string text = read_bytes(file);
      if (utf16)
        text = utf16le_to_utf8(text, file);
      else if (text.compare(0, 3, "\xEF\xBB\xBF") == 0)
        text.erase(0, 3);
      std::vector<std::string_view> pieces;
      if (separator.empty()) {
        pieces.push_back(text);
      } else {
        for (size_t begin = 0;;) {
          const size_t end = text.find(separator, begin);
          pieces.push_back(std::string_view(text).substr(
              begin, end == std::string::npos ? std::string::npos : end - begin));
          if (end == std::string::npos) break;
          begin = end + separator.size();
        }
      }
      for (size_t d = 0; d < pieces.size(); ++d) {
        if (pieces[d].find_first_not_of(" \t\r\n") == std::string_view::npos)
          continue;  // blank: no document
        std::vector<int32_t> tokens = source.tokenizer->encode(pieces[d]);
        if (eod) tokens.push_back(0);
        for (size_t t = 0; t < tokens.size(); ++t)
          if (source.vocab_size > 0 && tokens[t] >= source.vocab_size)
            throw Error(file.string() + ": document " + std::to_string(d + 1) + ", token " +
                        std::to_string(t) + ": id " + std::to_string(tokens[t]) +
                        " is outside the model's vocabulary [0, " +
                        std::to_string(source.vocab_size) + ")");
        if (tokens.size() > static_cast<size_t>(source.ctx_len + 1))
          tokens.resize(static_cast<size_t>(source.ctx_len + 1));
        if (tokens.size() < 2) continue;  // one token has no target
        tokens_total += static_cast<int64_t>(tokens.size());
        documents.push_back(std::move(tokens));
      }
    }
    if (documents.empty())
      throw Error(source.path.string() + ": no document of two tokens or more in " +
                  std::to_string(files.size()) + " file(s)");
    std::ostringstream description;
    description << source.path.string() << ": " << documents.size() << " documents from "
                << files.size() << " " << options.get_string("encoding") << " file(s), "
                << tokens_total << " tokens";
    return std::make_unique<TextDataset>(std::move(documents), description.str());
  }
};

}  // namespace
}  // namespace peftkit::text

PEFTKIT_PLUGIN(peftkit::text::TextPlugin, "text", "1.0.0",
               "plain UTF-8 or UTF-16LE text files (a file, a folder or a glob), World-tokenised")
