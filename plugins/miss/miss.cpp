// miss: MiSS (Matrix Shard Sharing; formerly Bone/DiSHA), exactly as HF PEFT's miss/layer.py
// (spec formats §1.7). W [out, in], block size r, trainable D (zero at the start):
//   balance  D [r, out]: y = W x + (sum of the r-wide blocks of dropout(x), zero-padded) D,
//            i.e. every r-wide column block of W gets Dᵀ added (the tail block its first in % r
//            columns);
//   mini     D [r, mini_r], tiled out / mini_r times along the output axis, then as balance;
//   bat      D [out/r, r, r]: every r x r block W[a, b] becomes W[a, b] (I + D[a]) + D[a] (shared
//            along the output axis a, like HF PEFT); needs in % r == 0 and out % r == 0.
// Merges add that update; unmerge subtracts it (bat: (W' - D) (I + D)^-1), so it is exact.
//
// Outputs: the HF PEFT MiSS folder (adapter_config.json + adapter_model.safetensors with
// base_model.model.<site>.miss_block) and the .pth (<site>.miss_block with miss.r, miss.mini_r,
// miss.mode = 0 balance, 1 mini, 2 bat).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <nlohmann/json.hpp>

#include "low_rank.hpp"
#include "peftkit/log.hpp"
#include "peftkit/peft_method.hpp"
#include "peftkit/plugin.hpp"
#include "peftkit/sites.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::miss {
namespace {

enum class Mode : int64_t { kBalance = 0, kMini = 1, kBat = 2 };

Mode parse_mode(const std::string& text) {
  return text == "bat" ? Mode::kBat : text == "mini" ? Mode::kMini : Mode::kBalance;
}
const char* mode_name(Mode mode) {
  return mode == Mode::kBat ? "bat" : mode == Mode::kMini ? "mini" : "balance";
}

struct Settings {
  int64_t r = 64;
  Mode mode = Mode::kBalance;
  int64_t mini_r = 1;
  double dropout = 0;
  std::vector<std::string> targets;
};

// balance/mini: D as the [r, out] matrix applied to the block sums.
at::Tensor shared_block(const at::Tensor& d, Mode mode, int64_t out) {
  return mode == Mode::kMini ? d.repeat({1, out / d.size(1)}) : d;
}

// bat: ΔW with ΔW[a, b] = W[a, b] D[a] + D[a] for r x r blocks (a: output block, b: input block).
at::Tensor bat_delta(const at::Tensor& w, const at::Tensor& d) {
  const int64_t out = w.size(0), in = w.size(1), r = d.size(1);
  const at::Tensor blocks = w.view({out / r, r, in / r, r}).permute({0, 2, 1, 3});  // [a, b, r, r]
  const at::Tensor per_output_block = d.unsqueeze(1);                               // [a, 1, r, r]
  return (at::matmul(blocks, per_output_block) + per_output_block)
      .permute({0, 2, 1, 3})
      .reshape({out, in});
}

// balance/mini: ΔW [out, in] with ΔW[:, k r + j] = D[j, :]ᵀ.
at::Tensor shard_delta(const at::Tensor& block, int64_t in) {
  const int64_t r = block.size(0);
  return block.t().repeat({1, (in + r - 1) / r}).narrow(1, 0, in);
}

class MissAdapter final : public LinearAdapter {
 public:
  // The model owns its adapters, so `model` outlives this one.
  MissAdapter(const ModelView& model, at::Tensor d, Mode mode, double dropout)
      : model_(model), d_(std::move(d)), mode_(mode), dropout_(dropout) {}

  at::Tensor forward(const at::Tensor& x, const FrozenLinear& base) override {
    if (mode_ == Mode::kBat) {
      const at::Tensor w = base.dense_weight();
      const at::ScalarType compute = at::promote_types(w.scalar_type(), at::kFloat);
      return base.forward(x) +
             at::linear(x, bat_delta(w.to(compute), d_.to(compute)).to(x.scalar_type()));
    }
    const at::Tensor dropped =
        dropout_ > 0 && model_.training() ? at::dropout(x, dropout_, true) : x;
    const int64_t in = x.size(-1), r = d_.size(0), padding = (r - in % r) % r;
    at::Tensor padded = padding ? at::constant_pad_nd(dropped, {0, padding}) : dropped;
    std::vector<int64_t> blocks(padded.sizes().begin(), padded.sizes().end());
    blocks.back() = (in + padding) / r;
    blocks.push_back(r);
    const at::Tensor summed = padded.reshape(blocks).sum(-2);  // [..., r]
    return base.forward(x) +
           at::matmul(summed, shared_block(d_, mode_, base.out_features()).to(x.scalar_type()));
  }

 private:
  const ModelView& model_;
  at::Tensor d_;
  Mode mode_;
  double dropout_;
};

class Miss final : public PeftMethod {
 public:
  explicit Miss(Settings settings) : settings_(std::move(settings)) {}

  void attach(ModelView& model) override {
    const auto options = model.activation_options().dtype(at::kFloat);
    const int64_t r = settings_.r;
    for (const auto& site : model.linear_sites()) {
      if (!site_matches_any(site.name, settings_.targets)) continue;
      const std::string shape =
          "[" + std::to_string(site.out_features) + ", " + std::to_string(site.in_features) + "]";
      std::vector<int64_t> d_shape;
      switch (settings_.mode) {
        case Mode::kBalance:
          d_shape = {r, site.out_features};
          break;
        case Mode::kMini:
          if (site.out_features % settings_.mini_r != 0)
            throw Error("[peft.miss] mini_r = " + std::to_string(settings_.mini_r) +
                        " does not divide the " + std::to_string(site.out_features) +
                        " outputs of " + site.name);
          d_shape = {r, settings_.mini_r};
          break;
        case Mode::kBat:
          if (site.in_features % r != 0 || site.out_features % r != 0)
            throw Error("[peft.miss] mode \"bat\" needs r = " + std::to_string(r) +
                        " to divide both dimensions of " + site.name + " " + shape);
          d_shape = {site.out_features / r, r, r};
          break;
      }
      Site entry{site.name, at::zeros(d_shape, options).requires_grad_(true), site.in_features};
      model.set_linear_adapter(site.name, std::make_shared<MissAdapter>(
                                              model, entry.d, settings_.mode, settings_.dropout));
      sites_.push_back(entry);
    }
    if (sites_.empty())
      throw Error("[peft.miss] targets " + plugins::join_list(settings_.targets) +
                  " match no linear site of the model");
    log::info(std::string("miss: ") + mode_name(settings_.mode) + ", r " + std::to_string(r) +
              " on " + std::to_string(sites_.size()) + " sites");
  }

  std::vector<TrainableTensor> trainable_tensors() override {
    std::vector<TrainableTensor> out;
    for (const auto& s : sites_) out.push_back({s.name + ".miss_block", s.d, 1.0, true});
    return out;
  }

  TensorMap state_dict() const override {
    TensorMap out;
    for (const auto& s : sites_) out[s.name + ".miss_block"] = s.d.detach().to(at::kCPU);
    out["miss.r"] = at::scalar_tensor(settings_.r, at::kLong);
    out["miss.mini_r"] = at::scalar_tensor(settings_.mini_r, at::kLong);
    out["miss.mode"] = at::scalar_tensor(static_cast<int64_t>(settings_.mode), at::kLong);
    return out;
  }

  std::map<std::string, std::string> metadata() const override {
    return {{"method", "miss"},
            {"r", std::to_string(settings_.r)},
            {"mode", mode_name(settings_.mode)},
            {"mini_r", std::to_string(settings_.mini_r)}};
  }

  void load_state_dict(const TensorMap& tensors,
                       const std::map<std::string, std::string>&) override {
    plugins::check_stored_scalar(tensors, "miss.r", static_cast<double>(settings_.r),
                                 "[peft.miss] r");
    plugins::check_stored_scalar(tensors, "miss.mode", static_cast<double>(settings_.mode),
                                 "[peft.miss] mode (0 balance, 1 mini, 2 bat)");
    if (settings_.mode == Mode::kMini)
      plugins::check_stored_scalar(tensors, "miss.mini_r", static_cast<double>(settings_.mini_r),
                                   "[peft.miss] mini_r");
    for (auto& s : sites_) plugins::load_tensor(tensors, s.name + ".miss_block", s.d, "miss");
  }

  void merge_into(TensorMap& weights) const override {
    for (const auto& s : sites_) {
      at::Tensor& w = weight(weights, s.name);
      plugins::add_to_weight(w, delta(w, s));
    }
  }

  void unmerge_from(TensorMap& weights) const override {
    for (const auto& s : sites_) {
      at::Tensor& w = weight(weights, s.name);
      if (settings_.mode != Mode::kBat) {
        plugins::add_to_weight(w, -delta(w, s));
        continue;
      }
      // W'[a, b] = W[a, b] (I + D[a]) + D[a]  =>  W[a, b] = (W'[a, b] - D[a]) (I + D[a])^-1.
      const int64_t out = w.size(0), in = w.size(1), r = settings_.r;
      const at::Tensor d = s.d.detach().to(at::kCPU, at::kDouble).unsqueeze(1);  // [a, 1, r, r]
      const at::Tensor merged =
          w.to(at::kCPU, at::kDouble).view({out / r, r, in / r, r}).permute({0, 2, 1, 3});
      const at::Tensor eye = at::eye(r, at::kDouble);
      // X (I + D) = W' - D, solved from the right: (I + D)ᵀ Xᵀ = (W' - D)ᵀ.
      const at::Tensor base =
          at::linalg_solve((eye + d).transpose(-1, -2), (merged - d).transpose(-1, -2))
              .transpose(-1, -2)
              .permute({0, 2, 1, 3})
              .reshape({out, in});
      w = base.to(w.device(), w.scalar_type());
    }
  }

  std::vector<ExportFormat> export_formats() const override {
    return {{"hf-peft",
             "HF PEFT MiSS adapter folder: adapter_config.json + adapter_model.safetensors "
             "(miss_block)"},
            {"rwkv-pth", "peftkit .pth: <site>.miss_block with miss.r, miss.mini_r and miss.mode"}};
  }

  void export_to(std::string_view format, const std::filesystem::path& destination) const override {
    if (format == "rwkv-pth") return write_pth(destination, state_dict());
    if (format != "hf-peft")
      throw Error("miss: no export format '" + std::string(format) +
                  "' (formats: hf-peft, rwkv-pth)");
    std::filesystem::create_directories(destination);
    TensorMap tensors;
    std::vector<std::string> modules;
    for (const auto& s : sites_) {
      tensors["base_model.model." + s.name + ".miss_block"] =
          s.d.detach().to(at::kCPU, at::kFloat).contiguous();
      modules.push_back(s.name);
    }
    write_safetensors(destination / "adapter_model.safetensors", tensors, {{"format", "pt"}});
    nlohmann::json init_weights = true;
    if (settings_.mode != Mode::kBalance) init_weights = mode_name(settings_.mode);
    const nlohmann::json config = {{"peft_type", "MISS"},
                                   {"task_type", nullptr},
                                   {"r", settings_.r},
                                   {"mini_r", settings_.mini_r},
                                   {"init_weights", init_weights},
                                   {"miss_dropout", settings_.dropout},
                                   {"target_modules", modules},
                                   {"bias", "none"},
                                   {"inference_mode", false},
                                   {"base_model_name_or_path", nullptr},
                                   {"modules_to_save", nullptr},
                                   {"exclude_modules", nullptr}};
    write_text_file(destination / "adapter_config.json", config.dump(2) + "\n");
  }

 private:
  struct Site {
    std::string name;
    at::Tensor d;  // fp32 on the model's device
    int64_t in_features = 0;
  };

  static at::Tensor& weight(TensorMap& weights, const std::string& site) {
    auto it = weights.find(site + ".weight");
    if (it == weights.end())
      throw Error("miss: the model has no " + site + ".weight to merge into");
    return it->second;
  }

  // The merged update for W, in fp64 on the CPU.
  at::Tensor delta(const at::Tensor& w, const Site& s) const {
    const at::Tensor d = s.d.detach().to(at::kCPU, at::kDouble);
    if (settings_.mode == Mode::kBat) return bat_delta(w.to(at::kCPU, at::kDouble), d);
    return shard_delta(shared_block(d, settings_.mode, w.size(0)), s.in_features);
  }

  Settings settings_;
  std::vector<Site> sites_;
};

class MissPlugin final : public PeftPlugin {
 public:
  OptionSchema options() const override {
    return OptionSchema()
        .add_int("r", 64, "block size (HF PEFT's r)", 1, 65536)
        .add_string("mode", "balance",
                    "balance: D [r, out]; mini: D [r, mini_r] tiled; bat: D [out/r, r, r]",
                    {"balance", "mini", "bat"})
        .add_int("mini_r", 1,
                 "width of D in mode \"mini\" (must divide every adapted site's outputs)", 1)
        .add_float("dropout", 0.0, "dropout on the adapter's input (balance and mini)", Bound{0},
                   Bound{1, true})
        .add_string_list("targets", default_linear_targets(),
                         "adapted sites: suffixes of their names (default: the six x070 linears)");
  }
  void validate(const Options& options) const override {
    if (options.get_string_list("targets").empty()) throw options.error("targets", "names no site");
    if (options.get_string("mode") == "bat" && options.get_float("dropout") > 0)
      throw options.error(
          "dropout",
          "mode \"bat\" applies W + ΔW to the input itself, so it has no adapter-only "
          "input to drop; set dropout = 0 or use balance/mini");
  }
  std::vector<ImportFormat> import_formats() const override {
    return {{"hf-peft MISS", "HF PEFT folder of peft_type MISS"},
            {"rwkv-pth", "<site>.miss_block with miss.r, miss.mini_r and miss.mode"}};
  }
  std::optional<Recognition> recognise(const SavedFile& file) const override {
    return file.kind == SavedFile::Kind::kHfPeftFolder ? recognise_hf(file)
                                                       : recognise_pth(file.tensors);
  }
  std::unique_ptr<PeftMethod> create(const Options& o) const override {
    return std::make_unique<Miss>(Settings{o.get_int("r"), parse_mode(o.get_string("mode")),
                                           o.get_int("mini_r"), o.get_float("dropout"),
                                           o.get_string_list("targets")});
  }

 private:
  static bool is_block(const std::string& name) {
    return name.size() > 11 && name.compare(name.size() - 11, 11, ".miss_block") == 0;
  }

  static std::optional<Recognition> recognise_pth(const TensorMap& tensors) {
    Recognition r;
    r.kind = "MiSS adapter";
    for (const auto& [name, t] : tensors)
      if (is_block(name)) {
        r.tensors.push_back(name);
        r.parameters += t.numel();
      }
    if (r.tensors.empty()) return std::nullopt;
    const auto rank = plugins::stored_number(tensors, "miss.r");
    const auto mode = plugins::stored_number(tensors, "miss.mode");
    const auto mini_r = plugins::stored_number(tensors, "miss.mini_r");
    for (const char* key : {"miss.r", "miss.mode", "miss.mini_r"})
      if (tensors.count(key)) r.tensors.push_back(key);
    const bool known_mode = mode && (*mode == 0 || *mode == 1 || *mode == 2);
    const Mode parsed =
        known_mode ? static_cast<Mode>(static_cast<int64_t>(*mode)) : Mode::kBalance;
    std::vector<std::string> sites;
    for (const auto& name : r.tensors)
      if (is_block(name)) sites.push_back(name.substr(0, name.size() - 11));
    r.fields = {{"sites", std::to_string(sites.size())},
                {"mode", known_mode ? mode_name(parsed) : "not stored"},
                {"r", rank ? c10::str(*rank) : "not stored"}};
    if (!rank || !known_mode) {
      r.certainty = Certainty::kGuess;
      r.cannot_mount =
          "its block size and mode are not stored (no miss.r and miss.mode); pass --recipe with "
          "the "
          "recipe it was trained with";
      return r;
    }
    r.settings = {{"r", static_cast<int64_t>(*rank)},
                  {"mode", std::string(mode_name(parsed))},
                  {"targets", sites}};
    if (mini_r) r.settings.emplace_back("mini_r", static_cast<int64_t>(*mini_r));
    return r;
  }

  static std::optional<Recognition> recognise_hf(const SavedFile& file) {
    if (file.config_value("peft_type") != OptionValue(std::string("MISS"))) return std::nullopt;
    const std::string where = file.where();
    const auto rank = file.config_value("r");
    if (!rank)
      throw Error(where + ": has no 'r'; it decides the block size, so it is never guessed");
    if (!std::holds_alternative<int64_t>(*rank)) throw Error(where + ": 'r' is not an integer");
    std::string mode = "balance";
    if (auto init = file.config_value("init_weights");
        init && std::holds_alternative<std::string>(*init))
      mode = std::get<std::string>(*init);
    Recognition r;
    r.kind = "MiSS adapter (HF PEFT folder)";
    r.settings = {{"r", *rank}, {"mode", mode}};
    if (auto mini_r = file.config_value("mini_r")) r.settings.emplace_back("mini_r", *mini_r);
    if (file.metadata.count("target_modules")) {
      if (file.metadata.at("target_modules").front() == '"')
        throw Error(
            where +
            ": target_modules is a regular expression; only a list of module names is supported");
      if (auto targets = file.config_value("target_modules"))
        r.settings.emplace_back("targets", *targets);
    }
    for (const auto& [name, t] : file.tensors) {
      if (!is_block(name))
        throw Error(file.path.string() + "/adapter_model.safetensors: tensor 'base_model.model." +
                    name + "' is not a MISS tensor peftkit reads (expected <site>.miss_block)");
      r.tensors.push_back(name);
      r.parameters += t.numel();
    }
    r.fields = {{"sites", std::to_string(r.tensors.size())},
                {"mode", mode},
                {"r", std::to_string(std::get<int64_t>(*rank))}};
    return r;
  }
};

}  // namespace
}  // namespace peftkit::miss

PEFTKIT_PLUGIN(peftkit::miss::MissPlugin, "miss", "0.1.0",
               "MiSS (Bone/DiSHA): shared weight shards, modes balance, mini and bat")
