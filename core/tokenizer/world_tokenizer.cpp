#include "tokenizer/world_tokenizer.hpp"

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <cstdlib>
#include <fstream>

#include "io/mapped_file.hpp"
#include "peftkit/error.hpp"
#include "peftkit/utf8.hpp"

namespace peftkit::tokenizer {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A Python str or bytes literal -> its bytes. In a str, \xHH and \uXXXX are code points (encoded
// as UTF-8); in bytes, \xHH is a raw byte. Unknown escapes keep their backslash, as in Python.
std::string parse_python_literal(std::string_view literal, const std::string& where) {
  bool is_bytes = false;
  if (!literal.empty() && literal[0] == 'b') {
    is_bytes = true;
    literal.remove_prefix(1);
  }
  if (literal.size() < 2 || (literal[0] != '\'' && literal[0] != '"') ||
      literal.back() != literal[0])
    throw Error(where + ": expected a Python string or bytes literal, found " +
                std::string(literal));
  std::string_view body = literal.substr(1, literal.size() - 2);
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\') {
      out += body[i];
      continue;
    }
    if (++i >= body.size()) throw Error(where + ": literal ends with a lone backslash");
    const char c = body[i];
    auto read_hex = [&](size_t digits) {
      uint32_t v = 0;
      for (size_t k = 1; k <= digits; ++k) {
        const int h = i + k < body.size() ? hex_value(body[i + k]) : -1;
        if (h < 0)
          throw Error(where + ": bad \\" + std::string(1, c) + " escape in " +
                      std::string(literal));
        v = v * 16 + static_cast<uint32_t>(h);
      }
      i += digits;
      return v;
    };
    switch (c) {
      case 'n':
        out += '\n';
        break;
      case 't':
        out += '\t';
        break;
      case 'r':
        out += '\r';
        break;
      case 'a':
        out += '\a';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'v':
        out += '\v';
        break;
      case '\\':
        out += '\\';
        break;
      case '\'':
        out += '\'';
        break;
      case '"':
        out += '"';
        break;
      case 'x': {
        const uint32_t v = read_hex(2);
        if (is_bytes)
          out += static_cast<char>(v);
        else
          append_utf8(out, v);
        break;
      }
      case 'u':
      case 'U':
        if (is_bytes) {
          out += '\\';
          out += c;
        } else {
          append_utf8(out, read_hex(c == 'u' ? 4 : 8));
        }
        break;
      default:
        out += '\\';
        out += c;
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<WorldTokenizer> WorldTokenizer::load(const std::filesystem::path& vocab_file) {
  io::require_regular_file(vocab_file, "tokenizer vocabulary");
  std::ifstream in(vocab_file, std::ios::binary);
  if (!in) throw Error(vocab_file.string() + ": cannot open the tokenizer vocabulary");
  auto tokenizer = std::unique_ptr<WorldTokenizer>(new WorldTokenizer());
  tokenizer->tokens_.emplace_back();  // id 0
  tokenizer->nodes_.emplace_back();
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    const std::string where = vocab_file.string() + ":" + std::to_string(number);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    // "<id> <literal> <length>": the literal itself may contain spaces.
    const size_t first = line.find(' '), last = line.rfind(' ');
    if (first == std::string::npos || last == first)
      throw Error(where + ": expected '<id> <literal> <byte length>', found '" + line + "'");
    int64_t id = 0, length = 0;
    try {
      size_t used = 0;
      id = std::stoll(line.substr(0, first), &used);
      if (used != first) throw std::invalid_argument("id");
      length = std::stoll(line.substr(last + 1), &used);
      if (used != line.size() - last - 1) throw std::invalid_argument("length");
    } catch (const std::exception&) {
      throw Error(where + ": expected '<id> <literal> <byte length>', found '" + line + "'");
    }
    if (id != static_cast<int64_t>(tokenizer->tokens_.size()))
      throw Error(where + ": expected id " + std::to_string(tokenizer->tokens_.size()) +
                  ", found " + std::to_string(id) + " (ids must count up from 1)");
    std::string bytes =
        parse_python_literal(std::string_view(line).substr(first + 1, last - first - 1), where);
    if (static_cast<int64_t>(bytes.size()) != length)
      throw Error(where + ": the literal holds " + std::to_string(bytes.size()) +
                  " bytes but the line says " + std::to_string(length));
    if (bytes.empty()) throw Error(where + ": empty token");
    // Insert into the trie.
    int32_t node = 0;
    for (unsigned char b : bytes) {
      int32_t next = tokenizer->child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(tokenizer->nodes_.size());
        auto& children = tokenizer->nodes_[node].children;
        children.insert(
            std::lower_bound(children.begin(), children.end(), std::make_pair(b, int32_t{0})),
            {b, next});
        tokenizer->nodes_.emplace_back();
      }
      node = next;
    }
    if (tokenizer->nodes_[node].token >= 0)
      throw Error(where + ": duplicate token (same bytes as id " +
                  std::to_string(tokenizer->nodes_[node].token) + ")");
    tokenizer->nodes_[node].token = static_cast<int32_t>(id);
    tokenizer->tokens_.push_back(std::move(bytes));
  }
  for (int b = 0; b < 256; ++b) {
    const int32_t node = tokenizer->child(0, static_cast<uint8_t>(b));
    if (node < 0 || tokenizer->nodes_[node].token < 0)
      throw Error(vocab_file.string() + ": the vocabulary has no token for the single byte " +
                  std::to_string(b));
  }
  return tokenizer;
}

int32_t WorldTokenizer::child(int32_t node, uint8_t byte) const {
  const auto& children = nodes_[node].children;
  auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, int32_t{0}));
  return it != children.end() && it->first == byte ? it->second : -1;
}

std::vector<int32_t> WorldTokenizer::encode(std::string_view bytes) const {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos < bytes.size()) {
    int32_t node = 0, best = -1;
    size_t best_length = 0;
    for (size_t k = pos; k < bytes.size(); ++k) {
      node = child(node, static_cast<uint8_t>(bytes[k]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        best_length = k - pos + 1;
      }
    }
    ids.push_back(best);  // always found: every single byte is a token
    pos += best_length;
  }
  return ids;
}

const std::string& WorldTokenizer::token(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(tokens_.size()))
    throw Error("tokenizer: id " + std::to_string(id) + " is outside [0, " +
                std::to_string(tokens_.size()) + ")");
  return tokens_[id];
}

std::string WorldTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) out += token(id);
  return out;
}

std::filesystem::path find_world_vocab() {
  if (const char* env = std::getenv("PEFTKIT_VOCAB")) {
    if (!std::filesystem::exists(env))
      throw Error(std::string("PEFTKIT_VOCAB=") + env + ": no such file");
    return env;
  }
  std::error_code ec;
  const std::filesystem::path exe = boost::dll::program_location(ec);
  const auto candidate =
      exe.parent_path().parent_path() / "share" / "peftkit" / "rwkv_vocab_v20230424.txt";
  if (!ec && std::filesystem::exists(candidate)) return candidate;
  throw Error(
      "the RWKV World vocabulary rwkv_vocab_v20230424.txt was not found at " + candidate.string() +
      "; run scripts/setup.sh (it fetches it) and rebuild, or set PEFTKIT_VOCAB to its path");
}

}  // namespace peftkit::tokenizer
