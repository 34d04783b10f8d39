#include "npy_file.hpp"

#include <cstring>
#include <optional>
#include <set>
#include <string_view>

#include "peftkit/error.hpp"

namespace peftkit::numpy {
namespace {

constexpr unsigned char kMagic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
// Larger than any header NumPy writes (v1 headers stop at 64 KiB; NumPy itself refuses headers
// over 10,000 bytes unless told otherwise); README, "Limits".
constexpr size_t kMaxHeaderBytes = 1 << 20;

size_t element_size(TokenType type) {
  switch (type) {
    case TokenType::kUint16:
      return 2;
    case TokenType::kInt32:
      return 4;
    case TokenType::kInt64:
      return 8;
  }
  return 0;
}

// The header is a Python dict literal: {'descr': '<u2', 'fortran_order': False, 'shape': (5,), }
// Read by a single forward scan (no regular expressions: they backtracked per character on
// padded headers), with every number overflow-checked.
class HeaderScanner {
 public:
  HeaderScanner(std::string_view text, const std::string& where) : text_(text), where_(where) {}

  struct Entries {
    std::string descr;
    std::optional<bool> fortran_order;
    std::optional<std::vector<int64_t>> shape;
  };

  Entries read() {
    Entries entries;
    std::set<std::string> seen;
    expect('{');
    while (!accept('}')) {
      const std::string key = quoted();
      if (!seen.insert(key).second) fail("names '" + key + "' twice");
      expect(':');
      if (key == "descr") {
        entries.descr = quoted();
      } else if (key == "fortran_order") {
        entries.fortran_order = boolean();
      } else if (key == "shape") {
        entries.shape = tuple();
      } else {
        fail("has the unexpected key '" + key +
             "' (a .npy header holds descr, fortran_order and shape)");
      }
      if (!accept(',')) {
        expect('}');
        break;
      }
    }
    skip_space();
    if (pos_ != text_.size()) fail("has text after the closing '}'");
    if (entries.descr.empty() && !seen.count("descr")) fail("has no 'descr' entry");
    if (!entries.fortran_order) fail("has no 'fortran_order' entry");
    if (!entries.shape) fail("has no 'shape' entry");
    return entries;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(where_ + ": the .npy header " + what + " (at character " + std::to_string(pos_) +
                ")");
  }
  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n'))
      ++pos_;
  }
  bool accept(char c) {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!accept(c)) fail(std::string("lacks the expected '") + c + "'");
  }
  std::string quoted() {
    skip_space();
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"'))
      fail("lacks an expected quoted string");
    const char quote = text_[pos_++];
    const size_t end = text_.find(quote, pos_);
    if (end == std::string_view::npos) fail("has an unterminated string");
    std::string value(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return value;
  }
  bool boolean() {
    skip_space();
    for (const auto& [word, value] :
         {std::pair<std::string_view, bool>{"True", true}, {"False", false}})
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return value;
      }
    fail("has a fortran_order that is not True or False");
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> values;
    expect('(');
    while (!accept(')')) {
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9')
        fail("has a shape entry that is not a number");
      int64_t v = 0;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9')
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, text_[pos_++] - '0', &v))
          fail("has a shape entry beyond 64 bits");
      values.push_back(v);
      if (!accept(',')) {
        expect(')');
        break;
      }
    }
    return values;
  }

  std::string_view text_;
  const std::string& where_;
  size_t pos_ = 0;
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace

NpyFile::NpyFile(const std::filesystem::path& path) : bytes_(path) {
  const std::string where = path.string();
  const size_t file_size = bytes_.size();
  {
    const auto* bytes = bytes_.data();
    if (file_size < 10 || std::memcmp(bytes, kMagic, sizeof kMagic) != 0)
      throw Error(where + ": expected the .npy magic string \\x93NUMPY at the start");
    version_ = bytes[6];
    size_t header_length = 0;
    size_t header_start = 0;
    if (version_ == 1) {
      header_length = bytes[8] | (size_t{bytes[9]} << 8);
      header_start = 10;
    } else if (version_ == 2 || version_ == 3) {
      if (file_size < 12) throw Error(where + ": truncated .npy header");
      header_length = bytes[8] | (size_t{bytes[9]} << 8) | (size_t{bytes[10]} << 16) |
                      (size_t{bytes[11]} << 24);
      header_start = 12;
    } else {
      throw Error(where + ": .npy format version " + std::to_string(version_) + "." +
                  std::to_string(bytes[7]) + " is not supported (expected 1.0, 2.0 or 3.0)");
    }
    if (header_start + header_length > file_size)
      throw Error(where + ": the header length " + std::to_string(header_length) +
                  " runs past the end of the file (" + std::to_string(file_size) + " bytes)");
    if (header_length > kMaxHeaderBytes)
      throw Error(where + ": the header is " + std::to_string(header_length) +
                  " bytes long; peftkit reads "
                  ".npy headers of at most " +
                  std::to_string(kMaxHeaderBytes) + " bytes");
    const std::string_view header(reinterpret_cast<const char*>(bytes + header_start),
                                  header_length);
    const HeaderScanner::Entries entries = HeaderScanner(header, where).read();

    const std::string& descr = entries.descr;
    if (descr == "<u2" || descr == "|u2") {
      type_ = TokenType::kUint16;
    } else if (descr == "<i4") {
      type_ = TokenType::kInt32;
    } else if (descr == "<i8") {
      type_ = TokenType::kInt64;
    } else if (!descr.empty() && descr[0] == '>') {
      throw Error(where + ": dtype '" + descr +
                  "' is big-endian; expected little-endian token ids "
                  "('<u2', '<i4' or '<i8'), e.g. arr.astype('<u2')");
    } else {
      throw Error(where + ": dtype '" + descr +
                  "' is not a token-id type; expected '<u2' "
                  "(uint16), '<i4' (int32) or '<i8' (int64)");
    }
    if (*entries.fortran_order)
      throw Error(where +
                  ": the array is in Fortran order; expected C order "
                  "(np.ascontiguousarray before saving)");

    shape_ = *entries.shape;
    const std::string shape_string = shape_text(shape_);
    if (shape_.empty() || shape_.size() > 2)
      throw Error(where + ": shape " + shape_string + " has " + std::to_string(shape_.size()) +
                  " dimensions; expected a 1-D token stream or a 2-D [samples, length] array");
    element_count_ = 1;
    for (int64_t d : shape_)
      if (__builtin_mul_overflow(element_count_, d, &element_count_))
        throw Error(where + ": shape " + shape_string + " holds more than 2^63 elements");
    if (element_count_ == 0)
      throw Error(where + ": the array " + shape_string + " holds no tokens");

    const size_t data_offset = header_start + header_length;
    const uint64_t available = file_size - data_offset;
    uint64_t needed = 0;
    const bool overflow =
        __builtin_mul_overflow(static_cast<uint64_t>(element_count_), element_size(type_), &needed);
    if (overflow || needed > available)
      throw Error(where + ": shape " + shape_string + " needs " +
                  (overflow ? std::string("more than 2^64") : std::to_string(needed)) +
                  " bytes of data but the file holds " + std::to_string(available));
    data_ = bytes + data_offset;
  }
}

int NpyFile::element_bytes() const { return static_cast<int>(element_size(type_)); }

std::string NpyFile::type_name() const {
  switch (type_) {
    case TokenType::kUint16:
      return "uint16";
    case TokenType::kInt32:
      return "int32";
    case TokenType::kInt64:
      return "int64";
  }
  return "?";
}

int64_t NpyFile::at(int64_t index) const {
  // memcpy: the data need not be aligned for the element type.
  switch (type_) {
    case TokenType::kUint16: {
      uint16_t v;
      std::memcpy(&v, data_ + index * 2, 2);
      return v;
    }
    case TokenType::kInt32: {
      int32_t v;
      std::memcpy(&v, data_ + index * 4, 4);
      return v;
    }
    case TokenType::kInt64: {
      int64_t v;
      std::memcpy(&v, data_ + index * 8, 8);
      return v;
    }
  }
  return 0;
}

}  // namespace peftkit::numpy
