#include "npy_file.hpp"

#include <cstring>
#include <regex>

#include "peftkit/error.hpp"

namespace peftkit::numpy {
namespace {

constexpr unsigned char kMagic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

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
std::string header_value(const std::string& header, const std::string& key, const std::string& where) {
  const std::regex pattern("['\"]" + key + "['\"]\\s*:\\s*('[^']*'|\"[^\"]*\"|True|False|\\([^)]*\\))");
  std::smatch match;
  if (!std::regex_search(header, match, pattern))
    throw Error(where + ": the header has no '" + key + "' entry: " + header);
  return match[1].str();
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
    const std::string header(reinterpret_cast<const char*>(bytes + header_start), header_length);

    std::string descr = header_value(header, "descr", where);
    descr = descr.substr(1, descr.size() - 2);
    if (descr == "<u2" || descr == "|u2") {
      type_ = TokenType::kUint16;
    } else if (descr == "<i4") {
      type_ = TokenType::kInt32;
    } else if (descr == "<i8") {
      type_ = TokenType::kInt64;
    } else if (!descr.empty() && descr[0] == '>') {
      throw Error(where + ": dtype '" + descr + "' is big-endian; expected little-endian token ids "
                  "('<u2', '<i4' or '<i8'), e.g. arr.astype('<u2')");
    } else {
      throw Error(where + ": dtype '" + descr + "' is not a token-id type; expected '<u2' "
                  "(uint16), '<i4' (int32) or '<i8' (int64)");
    }
    if (header_value(header, "fortran_order", where) != "False")
      throw Error(where + ": the array is in Fortran order; expected C order "
                  "(np.ascontiguousarray before saving)");

    std::string shape_text = header_value(header, "shape", where);
    static const std::regex kNumber("[0-9]+");
    element_count_ = 1;
    for (auto it = std::sregex_iterator(shape_text.begin(), shape_text.end(), kNumber);
         it != std::sregex_iterator(); ++it) {
      shape_.push_back(std::stoll(it->str()));
      element_count_ *= shape_.back();
    }
    if (shape_.empty() || shape_.size() > 2)
      throw Error(where + ": shape " + shape_text + " has " + std::to_string(shape_.size()) +
                  " dimensions; expected a 1-D token stream or a 2-D [samples, length] array");
    if (element_count_ == 0) throw Error(where + ": the array " + shape_text + " holds no tokens");

    const size_t data_offset = header_start + header_length;
    const size_t needed = static_cast<size_t>(element_count_) * element_size(type_);
    if (file_size - data_offset < needed)
      throw Error(where + ": shape " + shape_text + " needs " + std::to_string(needed) +
                  " bytes of data but the file holds " + std::to_string(file_size - data_offset));
    data_ = bytes + data_offset;
  }
}

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
