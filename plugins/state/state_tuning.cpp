// state: state tuning. One trainable initial WKV state per layer, [H, N, N] in the value-major
// layout of RWKV-PEFT's blocks.{i}.att.time_state, used as the initial state of every sequence of
// the batch (so its gradient is the sum over the batch of dL/dS0); everything else stays frozen.
// Optionally the two token-shift states of each layer are tuned too.
//
// Outputs: the RWKV-PEFT .pth (bf16 time_state tensors only, as RWKV Runner loads them) and, for
// Ai00/web-rwkv, safetensors with F16 states whose last two dimensions are transposed.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <regex>

#include "peftkit/log.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::state {
namespace {

std::string wkv_name(int layer) { return "blocks." + std::to_string(layer) + ".att.time_state"; }
std::string att_shift_name(int layer) {
  return "blocks." + std::to_string(layer) + ".att.time_shift";
}
std::string ffn_shift_name(int layer) {
  return "blocks." + std::to_string(layer) + ".ffn.time_shift";
}

// What the model reads: the tensors being trained.
class TunedStates final : public StateAdapter {
 public:
  std::vector<at::Tensor> wkv, att_shift, ffn_shift;
  at::Tensor initial_wkv_state(int layer) const override { return wkv.at(layer); }
  at::Tensor initial_att_shift(int layer) const override {
    return att_shift.empty() ? at::Tensor() : att_shift.at(layer);
  }
  at::Tensor initial_ffn_shift(int layer) const override {
    return ffn_shift.empty() ? at::Tensor() : ffn_shift.at(layer);
  }
};

class StateTuning final : public PeftMethod {
 public:
  StateTuning(std::string init_file, bool tune_shift)
      : init_file_(std::move(init_file)), tune_shift_(tune_shift) {}

  void attach(ModelView& model) override {
    sites_ = model.state_sites();
    const auto options = model.activation_options().dtype(at::kFloat);
    for (const auto& site : sites_) {
      states_->wkv.push_back(
          at::zeros({site.heads, site.head_size, site.head_size}, options).requires_grad_(true));
      if (tune_shift_) {
        states_->att_shift.push_back(at::zeros({site.n_embd}, options).requires_grad_(true));
        states_->ffn_shift.push_back(at::zeros({site.n_embd}, options).requires_grad_(true));
      }
    }
    model.set_state_adapter(states_);
    if (!init_file_.empty()) {
      TensorFile file = read_tensor_file(init_file_, Checksums::kVerify);
      auto layout = file.metadata.find(kStateLayoutKey);
      if (layout != file.metadata.end() && layout->second == "ai00") {
        for (auto& [name, tensor] : file.tensors)
          if (name.find("time_state") != std::string::npos)
            tensor = tensor.transpose(-1, -2).contiguous();
      } else if (!file.metadata.empty() && layout == file.metadata.end()) {
        throw Error("state: init_file " + init_file_ +
                    " is a safetensors state that does not record its layout "
                    "(RWKV-PEFT's value-major or Ai00's transposed); give a .pth state file");
      }
      require_finite(file.tensors, init_file_);
      load_state_dict(file.tensors, {});
      log::info("state: continuing from " + init_file_);
    }
  }

  std::vector<TrainableTensor> trainable_tensors() override { return named_tensors(); }

  // RWKV-PEFT's file: bf16 time_state tensors (and our shift states when tuned).
  TensorMap state_dict() const override {
    TensorMap out;
    for (const auto& t : named_tensors())
      out[t.name] = t.tensor.detach().to(at::kCPU, at::kBFloat16);
    return out;
  }

  std::map<std::string, std::string> metadata() const override {
    return {{"method", "state"},
            {"layers", std::to_string(sites_.size())},
            {"tune_shift", tune_shift_ ? "true" : "false"}};
  }

  // Takes the state tensors of `tensors` (other keys belong to methods trained alongside).
  void load_state_dict(const TensorMap& tensors,
                       const std::map<std::string, std::string>&) override {
    at::NoGradGuard no_grad;
    for (const auto& [name, tensor] : tensors) {
      at::Tensor* target = find(name);
      if (!target) continue;
      if (tensor.sizes() != target->sizes())
        throw Error("state: " + name + " has shape " + c10::str(tensor.sizes()) +
                    " but this base needs " + c10::str(target->sizes()) +
                    "; the state was trained on a base of another shape");
      target->copy_(tensor.to(target->options()));
    }
    for (size_t l = 0; l < sites_.size(); ++l)
      if (!tensors.count(wkv_name(static_cast<int>(l))))
        throw Error("state: the file has no " + wkv_name(static_cast<int>(l)) + " (the base has " +
                    std::to_string(sites_.size()) + " layers)");
  }

  // Like RWKV-PEFT's merge_state.py: the model file then carries its initial states.
  void merge_into(TensorMap& model_weights) const override {
    for (const auto& [name, tensor] : state_dict()) model_weights[name] = tensor;
  }

  std::vector<ExportFormat> export_formats() const override {
    return {
        {"rwkv-pth", "RWKV-PEFT / RWKV Runner .pth: bf16 blocks.{i}.att.time_state [H, N, N]"},
        {"ai00",
         "Ai00 / web-rwkv safetensors: F16 time_state with the last two dimensions transposed"}};
  }

  void export_to(std::string_view format, const std::filesystem::path& destination) const override {
    if (format == "rwkv-pth") return write_pth(destination, state_dict());
    if (format == "ai00") {
      if (tune_shift_)
        throw Error(
            "state: the ai00 format holds only the WKV states (blocks.{i}.att.time_state); this "
            "adapter also "
            "tuned the token-shift states (blocks.{i}.att.time_shift, blocks.{i}.ffn.time_shift), "
            "which it "
            "would lose: export rwkv-pth instead");
      TensorMap out;
      for (size_t l = 0; l < states_->wkv.size(); ++l)
        out[wkv_name(static_cast<int>(l))] =
            states_->wkv[l].detach().to(at::kCPU, at::kHalf).transpose(-1, -2).contiguous();
      return write_safetensors(destination, out, {{"format", "pt"}, {kStateLayoutKey, "ai00"}});
    }
    throw Error("state: no export format '" + std::string(format) + "' (formats: rwkv-pth, ai00)");
  }

 private:
  // Every tuned tensor under its file name (tensors share storage: training updates them in place).
  std::vector<TrainableTensor> named_tensors() const {
    std::vector<TrainableTensor> out;
    for (size_t l = 0; l < states_->wkv.size(); ++l) {
      out.push_back({wkv_name(static_cast<int>(l)), states_->wkv[l]});
      if (tune_shift_) {
        out.push_back({att_shift_name(static_cast<int>(l)), states_->att_shift[l]});
        out.push_back({ffn_shift_name(static_cast<int>(l)), states_->ffn_shift[l]});
      }
    }
    return out;
  }

  // The tensor a state key names; nullptr for keys that are not states; throws for a state this
  // model or this configuration has no place for.
  at::Tensor* find(const std::string& name) {
    static const std::regex kName(
        R"(blocks\.(\d{1,9})\.(att\.time_state|att\.time_shift|ffn\.time_shift))");
    std::smatch match;
    if (!std::regex_match(name, match, kName)) return nullptr;
    const size_t layer = std::stoul(match[1]);
    if (layer >= sites_.size())
      throw Error("state: '" + name + "' is not a state of this model: the base has " +
                  std::to_string(sites_.size()) +
                  " layers; the state was trained on a base of another shape");
    if (match[2] == "att.time_state") return &states_->wkv[layer];
    if (!tune_shift_)
      throw Error("state: the file has the token-shift state '" + name +
                  "'; set [peft.state] tune_shift = true");
    return match[2] == "att.time_shift" ? &states_->att_shift[layer] : &states_->ffn_shift[layer];
  }

  std::string init_file_;
  bool tune_shift_;
  std::vector<StateSite> sites_;
  std::shared_ptr<TunedStates> states_ = std::make_shared<TunedStates>();
};

class StatePlugin final : public PeftPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema()
        .add_path("init_file", "",
                  "continue from this state file (RWKV-PEFT time_state layout); \"\": zeros")
        .add_bool("tune_shift", false, "also tune the two token-shift states of every layer");
  }
  std::unique_ptr<PeftMethod> create(const Options& options) const override {
    return std::make_unique<StateTuning>(options.get_string("init_file"),
                                         options.get_bool("tune_shift"));
  }

  std::vector<ImportFormat> import_formats() const override {
    return {{"rwkv-peft state",
             "RWKV-PEFT / RWKV Runner .pth or safetensors: blocks.{i}.att.time_state [H, N, N]"},
            {"ai00 state",
             "Ai00 / web-rwkv safetensors: time_state with the last two dimensions transposed "
             "(recorded as peftkit.state_layout = ai00, or --state-layout ai00)"}};
  }

  std::optional<Recognition> recognise(const SavedFile& file) const override {
    if (file.kind != SavedFile::Kind::kTensorFile) return std::nullopt;
    static const std::regex kState(
        R"(blocks\.\d{1,9}\.(att\.time_state|att\.time_shift|ffn\.time_shift))");
    Recognition r;
    int64_t layers = 0;
    bool shift = false;
    std::string shape;
    for (const auto& [name, t] : file.tensors) {
      if (!std::regex_match(name, kState)) continue;
      r.tensors.push_back(name);
      r.parameters += t.numel();
      if (name.ends_with(".att.time_state")) {
        ++layers;
        shape = c10::str(t.sizes());
      } else {
        shift = true;
      }
    }
    if (r.tensors.empty()) return std::nullopt;
    const Layout layout = layout_of(file);
    r.kind = "state file (" + describe(layout) + ")";
    r.fields = {{"layers", std::to_string(layers)}};
    if (!shape.empty()) r.fields.emplace_back("state shape", shape + " per layer");
    if (shift) r.fields.emplace_back("shift states", "yes (tune_shift)");
    r.settings = {{"tune_shift", shift}};
    if (layout == Layout::kUnknown)
      r.cannot_mount =
          "a safetensors state file may hold RWKV-PEFT's value-major states or Ai00/web-rwkv's "
          "transposed ones, and this one does not record which; pass --state-layout ai00 or "
          "--state-layout rwkv-peft";
    if (layout == Layout::kAi00)
      for (const auto& name : r.tensors) {
        const at::Tensor& t = file.tensors.at(name);
        r.converted[name] = name.ends_with("time_state") ? t.transpose(-1, -2).contiguous() : t;
      }
    return r;
  }

 private:
  enum class Layout { kRwkvPeft, kAi00, kUnknown };

  // The user's --state-layout, else what the file records, else a .pth is RWKV-PEFT's own.
  static Layout layout_of(const SavedFile& file) {
    const std::string hint = file.hint("state-layout");
    if (hint == "rwkv-peft") return Layout::kRwkvPeft;
    if (hint == "ai00") return Layout::kAi00;
    if (!hint.empty() && hint != "auto")
      throw Error("--state-layout: expected auto, rwkv-peft or ai00, found '" + hint + "'");
    auto recorded = file.metadata.find(kStateLayoutKey);
    if (recorded != file.metadata.end()) {
      if (recorded->second == "ai00") return Layout::kAi00;
      if (recorded->second == "rwkv-peft") return Layout::kRwkvPeft;
      throw Error(file.path.string() + ": records the state layout '" + recorded->second +
                  "', which peftkit does not know; pass --state-layout rwkv-peft or ai00");
    }
    if (file.metadata.count(kAdapterRecordKey))
      return Layout::kRwkvPeft;  // peftkit trains value-major
    return file.path.extension() == ".safetensors" ? Layout::kUnknown : Layout::kRwkvPeft;
  }

  static std::string describe(Layout layout) {
    switch (layout) {
      case Layout::kAi00:
        return "Ai00/web-rwkv layout: RWKV-PEFT's time_state with the last two dimensions "
               "transposed";
      case Layout::kRwkvPeft:
        return "RWKV-PEFT time_state layout, value-major";
      default:
        return "layout not recorded: RWKV-PEFT's value-major or Ai00's transposed; --state-layout "
               "decides when "
               "mounted";
    }
  }
};

}  // namespace
}  // namespace peftkit::state

PEFTKIT_PLUGIN(peftkit::state::StatePlugin, "state", "0.1.0",
               "state tuning: a trainable initial WKV state per layer (RWKV-PEFT time_state)")
