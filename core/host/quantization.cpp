#include "host/quantization.hpp"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <sstream>

#include "peftkit/error.hpp"
#include "peftkit/log.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::host {
namespace fs = std::filesystem;

namespace {
constexpr const char* kSignatureKey = "peftkit.quantized_from";
}

QuantizedBase quantized_base(const Recipe& recipe, const PluginRegistry& plugins,
                             const fs::path& model) {
  QuantizedBase q;
  if (!recipe.quantizer) return q;
  auto plugin = plugins.get<QuantizerPlugin>(recipe.quantizer->plugin);
  q.quantizer = keep_loaded(plugin->create(recipe.quantizer->options), plugin);
  q.method = recipe.quantizer->plugin;
  q.targets = recipe.quant.get_string_list("targets");
  q.head = recipe.quant.get_bool("head");
  std::ostringstream signature;
  std::error_code ec;
  struct stat info {};
  const int64_t mtime_ns =
      ::stat(model.c_str(), &info) == 0
          ? static_cast<int64_t>(info.st_mtim.tv_sec) * 1'000'000'000 + info.st_mtim.tv_nsec
          : 0;  // nanoseconds since the Unix epoch, as `stat` shows them
  signature << fs::absolute(model).lexically_normal().string()
            << ";size=" << fs::file_size(model, ec) << ";mtime_ns=" << mtime_ns
            << ";method=" << q.method << ";targets=" << format_option_value(q.targets)
            << ";head=" << q.head;
  for (const auto& name : recipe.quantizer->options.names())
    signature << ";" << name << "=" << format_option_value(recipe.quantizer->options.get(name));
  q.signature = signature.str();
  const std::string cache = recipe.quant.get_string("cache_file");
  if (cache.empty()) return q;
  q.cache_file = recipe.resolve_path(cache);
  if (!fs::exists(q.cache_file)) return q;
  TensorFile file = read_safetensors(q.cache_file);
  auto it = file.metadata.find(kSignatureKey);
  if (it == file.metadata.end() || it->second != q.signature) {
    log::warn(q.cache_file.string() +
              " was quantized from another model or with other settings; quantizing again "
              "and replacing it");
    return q;
  }
  q.prequantized = std::move(file.tensors);
  q.cache_loaded = true;
  log::info("pre-quantized base " + q.cache_file.string());
  return q;
}

void QuantizedBase::apply(model::ModelOptions& options) const {
  options.quantizer = quantizer;
  options.quantize_targets = targets;
  options.quantize_head = head;
  options.prequantized = cache_loaded ? &prequantized : nullptr;
}

void QuantizedBase::save_cache(const model::RwkvModel& model) const {
  if (!quantizer || cache_file.empty() || cache_loaded) return;
  TensorMap packed;
  for (const auto& [name, tensor] : model.quantized_weights())
    packed[name] = tensor.to(at::kCPU).contiguous();
  write_safetensors(cache_file, packed, {{kSignatureKey, signature}});
  log::info("wrote the pre-quantized base " + cache_file.string());
}

}  // namespace peftkit::host
