// safetensors (spec formats §1.9): u64 header length N, a JSON header of N bytes, then one byte
// buffer that the tensors cover exactly, without holes or overlaps.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "io/mapped_file.hpp"
#include "io/pth_file.hpp"
#include "io/strict_json.hpp"
#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit {
namespace {

constexpr uint64_t kMaxHeaderSize = 100'000'000;

const std::vector<std::pair<std::string, at::ScalarType>>& dtype_names() {
  static const std::vector<std::pair<std::string, at::ScalarType>> names = {
      {"BOOL", at::kBool},
      {"U8", at::kByte},
      {"I8", at::kChar},
      {"I16", at::kShort},
      {"U16", at::kUInt16},
      {"F16", at::kHalf},
      {"BF16", at::kBFloat16},
      {"I32", at::kInt},
      {"U32", at::kUInt32},
      {"F32", at::kFloat},
      {"F64", at::kDouble},
      {"I64", at::kLong},
      {"U64", at::kUInt64},
      {"F8_E5M2", at::kFloat8_e5m2},
      {"F8_E4M3", at::kFloat8_e4m3fn},
  };
  return names;
}

}  // namespace

TensorFile read_safetensors(const std::filesystem::path& path) {
  const std::string where = path.string();
  auto file = io::MappedFile::open(path);
  if (file->size() < 8) throw Error(where + ": truncated safetensors file (no header length)");
  uint64_t header_size;
  std::memcpy(&header_size, file->data(), 8);
  if (header_size > kMaxHeaderSize)
    throw Error(where + ": safetensors header length " + std::to_string(header_size) +
                " exceeds the limit of " + std::to_string(kMaxHeaderSize) + " bytes");
  if (header_size > file->size() - 8)
    throw Error(where + ": safetensors header length " + std::to_string(header_size) +
                " runs past the end of the " + std::to_string(file->size()) + "-byte file");
  const std::string_view header(reinterpret_cast<const char*>(file->data() + 8), header_size);
  if (header.empty() || header[0] != '{')
    throw Error(where + ": safetensors header must start with '{'");

  // A header is an object of objects holding short arrays: three levels.
  const nlohmann::json json = io::parse_strict_json(header, 3, where + ": safetensors header");
  if (!json.is_object()) throw Error(where + ": safetensors header is not a JSON object");

  const uint64_t buffer_start = 8 + header_size;
  const uint64_t buffer_size = file->size() - buffer_start;
  TensorFile result;
  struct Span {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw Error(where + ": __metadata__ must be an object of strings");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string())
          throw Error(where + ": __metadata__ value of '" + k + "' is not a string");
        result.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (name.size() > kMaxTensorNameBytes)
      throw Error(where + ": a tensor name of " + std::to_string(name.size()) + " bytes ('" +
                  name.substr(0, 64) + "...'); names of at most " +
                  std::to_string(kMaxTensorNameBytes) + " bytes are read");
    const std::string what = where + ": tensor '" + name + "'";
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets"))
      throw Error(what + " needs dtype, shape and data_offsets");
    const std::string dtype_name =
        entry["dtype"].is_string() ? entry["dtype"].get<std::string>() : "";
    auto dtype_it = std::find_if(dtype_names().begin(), dtype_names().end(),
                                 [&](const auto& p) { return p.first == dtype_name; });
    if (dtype_it == dtype_names().end())
      throw Error(what + " has dtype '" + dtype_name + "', which is not supported");
    std::vector<int64_t> shape;
    uint64_t numel = 1, extent = 1;  // extent skips zero dimensions: strides must fit too
    if (!entry["shape"].is_array()) throw Error(what + ": shape is not a list");
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        throw Error(what + ": shape entries must be non-negative 64-bit integers");
      shape.push_back(d.get<int64_t>());
      if (__builtin_mul_overflow(numel, d.get<uint64_t>(), &numel) ||
          __builtin_mul_overflow(extent, std::max<uint64_t>(1, d.get<uint64_t>()), &extent) ||
          extent > static_cast<uint64_t>(INT64_MAX))
        throw Error(what + ": shape " + entry["shape"].dump() + " holds more than 2^63 elements");
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned())
      throw Error(what + ": data_offsets must be [begin, end]");
    const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, c10::elementSize(dtype_it->second), &bytes))
      throw Error(what + ": shape " + entry["shape"].dump() + " needs more than 2^64 bytes");
    if (end < begin || end - begin != bytes)
      throw Error(what + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                  "] hold " + std::to_string(end < begin ? 0 : end - begin) +
                  " bytes but shape and dtype need " + std::to_string(bytes));
    if (end > buffer_size)
      throw Error(what + ": data_offsets end " + std::to_string(end) +
                  " lies past the data buffer (" + std::to_string(buffer_size) +
                  " bytes; the file is truncated)");
    spans.push_back({begin, end, name});
    void* data = file->data() + buffer_start + begin;
    result.tensors[name] =
        bytes == 0
            ? at::empty(shape, at::TensorOptions().dtype(dtype_it->second))
            : at::from_blob(
                  data, shape, [file](void*) {}, at::TensorOptions().dtype(dtype_it->second));
  }
  // The tensors must tile the buffer exactly: no overlaps, no holes, nothing after the last one.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t expected = 0;
  for (const auto& span : spans) {
    if (span.begin == span.end) continue;
    if (span.begin < expected)
      throw Error(where + ": tensor '" + span.name + "' overlaps the tensor before it (bytes " +
                  std::to_string(span.begin) + " to " + std::to_string(expected) + ")");
    if (span.begin > expected)
      throw Error(where + ": the data buffer has a hole of " +
                  std::to_string(span.begin - expected) + " bytes before tensor '" + span.name +
                  "'");
    expected = span.end;
  }
  if (expected != buffer_size)
    throw Error(where + ": " + std::to_string(buffer_size - expected) +
                " bytes after the last tensor belong to no tensor");
  return result;
}

void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, at::Tensor>> ordered;
  for (const auto& [name, tensor] : tensors)
    ordered.emplace_back(name, tensor.detach().to(at::kCPU).contiguous());
  // Largest alignment first, then by name, as the reference writer lays tensors out.
  std::stable_sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
    return a.second.element_size() > b.second.element_size();
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : ordered) {
    const at::ScalarType dtype = tensor.scalar_type();
    auto it = std::find_if(dtype_names().begin(), dtype_names().end(),
                           [dtype](const auto& p) { return p.second == dtype; });
    if (it == dtype_names().end())
      throw Error(path.string() + ": cannot store tensor '" + name + "' of dtype " +
                  std::string(c10::toString(tensor.scalar_type())) + " in safetensors");
    const uint64_t bytes = tensor.nbytes();
    header[name] = {{"dtype", it->first},
                    {"shape", tensor.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data buffer 8-byte aligned
  io::write_file_atomically(path, [&](std::FILE* out) {
    const uint64_t size = text.size();
    io::write_all(out, &size, 8, path);
    io::write_all(out, text.data(), text.size(), path);
    for (const auto& [name, tensor] : ordered)
      io::write_all(out, tensor.data_ptr(), tensor.nbytes(), path);
  });
}

TensorFile read_tensor_file(const std::filesystem::path& path) {
  return read_tensor_file(path, Checksums::kSkip);
}

TensorFile read_tensor_file(const std::filesystem::path& path, Checksums checksums) {
  const auto file = io::MappedFile::open(path);
  const uint8_t* head = file->data();
  if (file->size() >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0)
    return io::read_pth_file(path, checksums);
  if (file->size() >= 9 && head[8] == '{') return read_safetensors(path);
  throw Error(path.string() + ": neither a PyTorch .pth (zip) file nor a safetensors file");
}

}  // namespace peftkit
