// Key functions of the SDK's polymorphic interfaces: defining their destructors here makes
// libpeftkit-core.so the one home of their vtables and type information, which plugins share.
#include <nlohmann/json.hpp>

#include "peftkit/dataset.hpp"
#include "peftkit/error.hpp"
#include "peftkit/model.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/quantizer.hpp"
#include "peftkit/tokenizer.hpp"

namespace peftkit {

std::string_view plugin_kind_name(PluginKind kind) {
  switch (kind) {
    case PluginKind::kPeft:
      return "peft";
    case PluginKind::kDataset:
      return "dataset";
    case PluginKind::kQuantizer:
      return "quantizer";
  }
  return "unknown";
}

Plugin::~Plugin() = default;
void Plugin::validate(const Options&) const {}

Tokenizer::~Tokenizer() = default;
Dataset::~Dataset() = default;
FrozenLinear::~FrozenLinear() = default;
LinearAdapter::~LinearAdapter() = default;
StateAdapter::~StateAdapter() = default;
at::Tensor StateAdapter::initial_att_shift(int) const { return {}; }
at::Tensor StateAdapter::initial_ffn_shift(int) const { return {}; }
ModelView::~ModelView() = default;
PeftMethod::~PeftMethod() = default;
void PeftMethod::unmerge_from(TensorMap&) const {
  throw Error("this PEFT method cannot unmerge a merged model (it has no unmerge_from)");
}
Quantizer::~Quantizer() = default;

DatasetWriter::~DatasetWriter() = default;
std::string DatasetPlugin::writer_description() const { return {}; }
std::unique_ptr<DatasetWriter> DatasetPlugin::create_writer(const DatasetTarget& target,
                                                            const Options&) const {
  throw Error(target.path.string() +
              ": this dataset plugin reads its format but does not write it");
}

std::vector<ImportFormat> PeftPlugin::import_formats() const { return {}; }
std::optional<Recognition> PeftPlugin::recognise(const SavedFile&) const { return std::nullopt; }

namespace {
// The host writes these texts from parsed JSON; a SavedFile made elsewhere may hold anything.
nlohmann::json parse_config_value(const SavedFile& file, const std::string& key,
                                  const std::string& text) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    throw Error(file.where() + ": the value of '" + key + "' is not JSON: " + text.substr(0, 200));
  }
}
}  // namespace

std::string SavedFile::where() const {
  return kind == Kind::kHfPeftFolder ? (path / "adapter_config.json").string() : path.string();
}

std::string SavedFile::hint(const std::string& key) const {
  auto it = hints.find(key);
  return it == hints.end() ? std::string() : it->second;
}

std::optional<OptionValue> SavedFile::config_value(const std::string& key) const {
  if (kind != Kind::kHfPeftFolder)
    throw Error(where() + ": not an HF PEFT folder; it has no adapter_config.json");
  auto it = metadata.find(key);
  if (it == metadata.end()) return std::nullopt;
  const nlohmann::json value = parse_config_value(*this, key, it->second);
  if (value.is_null()) return std::nullopt;
  if (value.is_boolean()) return OptionValue(value.get<bool>());
  if (value.is_number_integer()) return OptionValue(value.get<int64_t>());
  if (value.is_number()) return OptionValue(value.get<double>());
  if (value.is_string()) return OptionValue(value.get<std::string>());
  if (value.is_array()) {
    std::vector<std::string> items;
    for (const auto& item : value) {
      if (!item.is_string()) break;
      items.push_back(item.get<std::string>());
    }
    if (items.size() == value.size()) return OptionValue(std::move(items));
  }
  throw Error(where() + ": '" + key + "' = " + it->second.substr(0, 200) +
              " is neither a boolean, a number, a string nor a list of strings");
}

bool SavedFile::config_is_set(const std::string& key) const {
  auto it = metadata.find(key);
  if (it == metadata.end()) return false;
  const nlohmann::json value = parse_config_value(*this, key, it->second);
  return !(value.is_null() || (value.is_boolean() && !value.get<bool>()) ||
           ((value.is_array() || value.is_object()) && value.empty()));
}

}  // namespace peftkit
