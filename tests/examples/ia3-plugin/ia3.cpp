// ia3: IA³ (Liu et al. 2022) as a third-party peftkit plugin that owns its files. Per adapted
// linear site a learned vector l [out] scales the frozen layer's output: y = l ⊙ (W x), l = 1 at
// the start; merged, W' = diag(l) W.
//
// Files it writes and reads again with no line in peftkit's core:
//   - its adapter .pth: <site>.ia3_l [out, 1] (HF PEFT's name and shape), mounted from the record
//     peftkit writes into it, or recognised by the tensor names;
//   - "ia3-text", its own text format: a first line "ia3-text 1", then one line per site,
//     "<site> v1 v2 ... v_out";
//   - HF PEFT IA3 folders (peft_type "IA3", no feed-forward modules): imported.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <charconv>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "peftkit/atomic_file.hpp"
#include "peftkit/error.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/sites.hpp"
#include "peftkit/tensor_io.hpp"

namespace ia3 {
namespace {

using peftkit::TensorMap;

constexpr const char* kSuffix = ".ia3_l";
constexpr const char* kTextHeader = "ia3-text 1";

bool is_scale(const std::string& name) { return name.ends_with(kSuffix); }
std::string site_of(const std::string& name) {
  return name.substr(0, name.size() - std::string(kSuffix).size());
}

class ScaledOutput final : public peftkit::LinearAdapter {
 public:
  explicit ScaledOutput(at::Tensor scale) : scale_(std::move(scale)) {}
  at::Tensor forward(const at::Tensor& x, const peftkit::FrozenLinear& base) override {
    return base.forward(x) * scale_.to(x.scalar_type());
  }

 private:
  at::Tensor scale_;  // [out]
};

class Ia3 final : public peftkit::PeftMethod {
 public:
  explicit Ia3(std::vector<std::string> targets) : targets_(std::move(targets)) {}

  void attach(peftkit::ModelView& model) override {
    const auto options = model.activation_options().dtype(at::kFloat);
    for (const auto& s : model.linear_sites()) {
      if (!peftkit::site_matches_any(s.name, targets_)) continue;
      at::Tensor scale = at::ones({s.out_features}, options).requires_grad_(true);
      model.set_linear_adapter(s.name, std::make_shared<ScaledOutput>(scale));
      sites_.push_back({s.name, scale});
    }
    if (sites_.empty())
      throw peftkit::Error("[peft.ia3] targets match no linear site of the model");
  }

  std::vector<peftkit::TrainableTensor> trainable_tensors() override {
    std::vector<peftkit::TrainableTensor> out;
    for (const auto& s : sites_) out.push_back({s.name + kSuffix, s.scale});
    return out;
  }

  // HF PEFT's shape, [out, 1]; the training tensor is [out].
  TensorMap state_dict() const override {
    TensorMap out;
    for (const auto& s : sites_) out[s.name + kSuffix] = s.scale.detach().to(at::kCPU).unsqueeze(1);
    return out;
  }

  std::map<std::string, std::string> metadata() const override {
    return {{"sites", std::to_string(sites_.size())}};
  }

  void load_state_dict(const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) override {
    if (auto it = metadata.find("sites");
        it != metadata.end() && it->second != std::to_string(sites_.size()))
      throw peftkit::Error("ia3: the adapter recorded " + it->second + " sites, this model has " +
                           std::to_string(sites_.size()) + " targeted ones");
    at::NoGradGuard no_grad;
    for (auto& s : sites_) {
      auto it = tensors.find(s.name + kSuffix);
      if (it == tensors.end()) throw peftkit::Error("ia3: the adapter has no " + s.name + kSuffix);
      if (it->second.numel() != s.scale.numel())
        throw peftkit::Error("ia3: " + s.name + kSuffix + " has " +
                             std::to_string(it->second.numel()) + " values, the site has " +
                             std::to_string(s.scale.numel()) + " outputs");
      s.scale.copy_(it->second.reshape({-1}));
    }
  }

  void merge_into(TensorMap& weights) const override { scale_rows(weights, false); }
  void unmerge_from(TensorMap& weights) const override { scale_rows(weights, true); }

  std::vector<peftkit::ExportFormat> export_formats() const override {
    return {{"rwkv-pth", "the adapter .pth: <site>.ia3_l [out, 1]"},
            {"hf-peft", "HF PEFT IA3 folder (no feed-forward modules)"},
            {"ia3-text", "text: \"ia3-text 1\", then \"<site> v1 ... v_out\" per site"}};
  }

  void export_to(std::string_view format, const std::filesystem::path& destination) const override {
    if (format == "rwkv-pth") return peftkit::write_pth(destination, state_dict());
    if (format == "hf-peft") {
      std::filesystem::create_directories(destination);
      TensorMap tensors;
      std::string modules;
      for (const auto& [name, tensor] : state_dict()) {
        tensors["base_model.model." + name] = tensor.contiguous();
        modules += (modules.empty() ? "\"" : ", \"") + site_of(name) + "\"";
      }
      peftkit::write_safetensors(destination / "adapter_model.safetensors", tensors,
                                 {{"format", "pt"}});
      peftkit::write_text_file(destination / "adapter_config.json",
                               "{\"peft_type\": \"IA3\", \"target_modules\": [" + modules +
                                   "], \"feedforward_modules\": [], \"init_ia3_weights\": true}\n");
      return;
    }
    if (format == "ia3-text") {
      std::ostringstream text;
      text << kTextHeader << "\n" << std::setprecision(9);
      for (const auto& s : sites_) {
        text << s.name;
        const at::Tensor values = s.scale.detach().to(at::kCPU).contiguous();
        for (int64_t i = 0; i < values.numel(); ++i) text << ' ' << values.data_ptr<float>()[i];
        text << "\n";
      }
      peftkit::AtomicFile out(destination);
      const std::string bytes = text.str();
      out.write(bytes.data(), bytes.size());
      out.commit();
      return;
    }
    throw peftkit::Error("ia3: no export format '" + std::string(format) + "'");
  }

 private:
  struct Site {
    std::string name;
    at::Tensor scale;
  };

  void scale_rows(TensorMap& weights, bool inverse) const {
    for (const auto& s : sites_) {
      auto it = weights.find(s.name + ".weight");
      if (it == weights.end()) throw peftkit::Error("ia3: the model has no " + s.name + ".weight");
      at::Tensor l = s.scale.detach().to(at::kCPU, at::kDouble).unsqueeze(1);
      if (inverse) l = 1.0 / l;
      it->second = (it->second.to(at::kCPU, at::kDouble) * l).to(it->second.scalar_type());
    }
  }

  std::vector<std::string> targets_;
  std::vector<Site> sites_;
};

class Ia3Plugin final : public peftkit::PeftPlugin {
 public:
  peftkit::OptionSchema options() const override {
    return peftkit::OptionSchema().add_string_list("targets", {"att.key", "att.value", "ffn.value"},
                                                   "scaled sites: ends of their names");
  }
  std::unique_ptr<peftkit::PeftMethod> create(const peftkit::Options& o) const override {
    return std::make_unique<Ia3>(o.get_string_list("targets"));
  }

  std::vector<peftkit::ImportFormat> import_formats() const override {
    return {{"hf-peft IA3", "HF PEFT folder of peft_type IA3 without feed-forward modules"},
            {"ia3-text", "its own text format"}};
  }

  std::optional<peftkit::Recognition> recognise(const peftkit::SavedFile& file) const override {
    using Kind = peftkit::SavedFile::Kind;
    peftkit::Recognition r;
    r.kind = "IA3 adapter";
    if (file.kind == Kind::kOtherFile) {
      if (!read_text(file.path, r.converted)) return std::nullopt;
      r.kind = "IA3 adapter (ia3-text)";
    } else if (file.kind == Kind::kHfPeftFolder) {
      if (file.config_value("peft_type") != peftkit::OptionValue(std::string("IA3")))
        return std::nullopt;
      if (file.config_is_set("feedforward_modules"))
        throw peftkit::Error(
            file.where() +
            ": feedforward_modules scale a layer's input; this plugin scales outputs");
      r.kind = "IA3 adapter (HF PEFT folder)";
    }
    const TensorMap& tensors = r.converted.empty() ? file.tensors : r.converted;
    std::vector<std::string> sites;
    for (const auto& [name, tensor] : tensors) {
      if (!is_scale(name)) continue;
      r.tensors.push_back(name);
      r.parameters += tensor.numel();
      sites.push_back(site_of(name));
    }
    if (sites.empty()) return std::nullopt;
    r.settings = {{"targets", sites}};
    r.fields = {{"sites", std::to_string(sites.size())}};
    return r;
  }

 private:
  // The ia3-text file at `path` as <site>.ia3_l tensors; false when it is not one (another format).
  static bool read_text(const std::filesystem::path& path, TensorMap& out) {
    std::ifstream in(path);
    std::string line;
    if (!std::getline(in, line) || line != kTextHeader) return false;
    for (int64_t number = 2; std::getline(in, line); ++number) {
      std::istringstream fields(line);
      std::string site, value;
      fields >> site;
      std::vector<float> values;
      while (fields >> value) {
        float v = 0;
        auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
        if (ec != std::errc() || end != value.data() + value.size())
          throw peftkit::Error(path.string() + ":" + std::to_string(number) +
                               ": expected a number, found '" + value + "'");
        values.push_back(v);
      }
      if (site.empty() || values.empty())
        throw peftkit::Error(path.string() + ":" + std::to_string(number) +
                             ": expected \"<site> v1 ... v_out\"");
      out[site + kSuffix] = at::tensor(values).unsqueeze(1);
    }
    return true;
  }
};

}  // namespace
}  // namespace ia3

PEFTKIT_PLUGIN(ia3::Ia3Plugin, "ia3", "1.0.0",
               "IA3 output scaling (test plugin: own file and import formats)")
