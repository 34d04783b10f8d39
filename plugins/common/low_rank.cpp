#include "low_rank.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit::plugins {
namespace {

// The largest |alpha / r| (or alpha / sqrt(r)) an adapter may carry.
constexpr double kMaxPlausibleScale = 1e4;

}  // namespace

std::string join_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out + "]";
}

std::optional<double> stored_number(const TensorMap& tensors, const std::string& key) {
  auto it = tensors.find(key);
  if (it == tensors.end()) return std::nullopt;
  const at::Tensor& t = it->second;
  if (t.numel() != 1 || !std::isfinite(t.item<double>()))
    throw Error("the stored " + key + " is not one finite number (found " + c10::str(t.sizes()) +
                " holding " + c10::str(t.flatten().slice(0, 0, 4)) + "); the file is damaged");
  return t.item<double>();
}

namespace {
bool ends_with(const std::string& text, std::string_view suffix) {
  return text.size() > suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

StoredPairs find_stored_pairs(const TensorMap& tensors) {
  StoredPairs pairs;
  for (const auto& [name, t] : tensors) {
    // ".init_lora_A" does not end with ".lora_A": the character before "lora_A" is '_'.
    if (ends_with(name, ".lora_A")) {
      const std::string site = name.substr(0, name.size() - 7);
      auto b = tensors.find(site + ".lora_B");
      if (b == tensors.end()) continue;
      pairs.sites.push_back(site);
      pairs.tensors.push_back(name);
      pairs.tensors.push_back(b->first);
      pairs.rank = t.dim() > 0 ? t.size(0) : 0;
      pairs.parameters += t.numel() + b->second.numel();
    } else if (ends_with(name, ".init_lora_A") || ends_with(name, ".init_lora_B")) {
      pairs.init_pairs = true;
      pairs.tensors.push_back(name);
    }
  }
  return pairs;
}

Recognition recognise_stored_pairs(const TensorMap& tensors, const StoredPairs& pairs,
                                   const std::string& method, std::string kind) {
  Recognition r;
  r.kind = std::move(kind);
  r.tensors = pairs.tensors;
  r.parameters = pairs.parameters;
  const std::optional<double> rank = stored_number(tensors, method + ".r");
  const std::optional<double> alpha = stored_number(tensors, method + ".alpha");
  const std::optional<double> rslora = stored_number(tensors, method + ".rslora");
  for (const char* key : {".r", ".alpha", ".rslora"})
    if (tensors.count(method + key)) r.tensors.push_back(method + key);
  auto shown = [](const std::optional<double>& v) {
    return v ? c10::str(*v) : std::string("not stored");
  };
  r.fields = {{"sites", std::to_string(pairs.sites.size())},
              {"rank", std::to_string(pairs.rank)},
              {"alpha", shown(alpha)},
              {"rsLoRA", shown(rslora)}};
  r.settings = {{"r", static_cast<int64_t>(rank.value_or(static_cast<double>(pairs.rank)))},
                {"use_rslora", rslora.value_or(0) != 0},
                {"targets", pairs.sites}};
  if (alpha) r.settings.emplace_back("alpha", *alpha);
  if (rank && alpha) {
    r.certainty = Certainty::kCertain;
  } else {
    r.certainty = Certainty::kGuess;
    r.cannot_mount = "its scale is not stored (no " + method + ".r and " + method +
                     ".alpha, as in RWKV-PEFT's own "
                     ".pth files); pass --recipe with the recipe it was trained with";
  }
  return r;
}

Recognition recognise_hf_lora(const SavedFile& file) {
  const std::string where = file.where();
  // r and alpha decide the scale: a missing one is never guessed.
  for (const char* key : {"r", "lora_alpha"})
    if (!file.config_value(key))
      throw Error(where + ": has no '" + key +
                  "'; it decides how the adapter is scaled, so it is never guessed");
  auto number = [&](const char* key) -> double {
    const OptionValue v = *file.config_value(key);
    if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
    if (const auto* d = std::get_if<double>(&v)) return *d;
    throw Error(where + ": '" + key + "' has the wrong type (found " + file.metadata.at(key) + ")");
  };
  Recognition r;
  r.kind = "LoRA adapter (HF PEFT folder)";
  const auto rank_value = file.config_value("r");
  if (!std::holds_alternative<int64_t>(*rank_value))
    throw Error(where + ": 'r' has the wrong type (found " + file.metadata.at("r") + ")");
  bool rslora = false;
  if (auto v = file.config_value("use_rslora")) {
    if (!std::holds_alternative<bool>(*v))
      throw Error(where + ": 'use_rslora' has the wrong type (found " +
                  file.metadata.at("use_rslora") + ")");
    rslora = std::get<bool>(*v);
  }
  r.settings = {{"r", std::get<int64_t>(*rank_value)},
                {"alpha", number("lora_alpha")},
                {"use_rslora", rslora}};
  if (file.metadata.count("target_modules")) {
    const std::string& text = file.metadata.at("target_modules");
    if (!text.empty() && text.front() == '"')
      throw Error(
          where +
          ": target_modules is a regular expression; only a list of module names is supported");
    if (auto targets = file.config_value("target_modules"))
      r.settings.emplace_back("targets", *targets);
  }
  for (const auto& [name, tensor] : file.tensors) {
    std::string key = name;
    if (ends_with(key, ".lora_A.weight") || ends_with(key, ".lora_B.weight"))
      key.resize(key.size() - 7);
    else
      throw Error(
          file.path.string() + "/adapter_model.safetensors: tensor 'base_model.model." + name +
          "' is not a LORA tensor peftkit reads (expected <site>.lora_A.weight / .lora_B.weight)");
    r.converted[key] = tensor;
    r.tensors.push_back(name);
  }
  const StoredPairs pairs = find_stored_pairs(r.converted);
  r.parameters = pairs.parameters;
  r.fields = {{"sites", std::to_string(pairs.sites.size())},
              {"rank", std::to_string(pairs.rank)},
              {"alpha", c10::str(number("lora_alpha"))},
              {"rsLoRA", rslora ? "1" : "0"}};
  return r;
}

LowRankAdapter::LowRankAdapter(const ModelView& model, at::Tensor a, at::Tensor b, double scale,
                               double dropout)
    : model_(model), a_(std::move(a)), b_(std::move(b)), scale_(scale), dropout_(dropout) {}

namespace {

// y = base(x) + x A^T (s B)^T for x as rows [tokens, in]. Autograd would compute the input's
// gradient as grad W plus grad (s B) A: two GEMMs and an elementwise add of two [tokens, in]
// tensors. Here the second GEMM accumulates into the first's output (beta = 1). The forward adds
// the up-projection into the base's output the same way.
class LowRankLinear : public torch::autograd::Function<LowRankLinear> {
 public:
  // base_out: base(rows) computed by the caller with no graph to rows (one to the base's own
  // weight when it trains); modified in place and returned. Its gradient passes through to that
  // weight. The base outlives the graph: the model owns it.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                at::Tensor rows, at::Tensor base_out, at::Tensor a,
                                                at::Tensor b, double scale,
                                                const FrozenLinear* base) {
    const at::Tensor a_cast = a.to(rows.scalar_type()), up = (b * scale).to(rows.scalar_type());
    const at::Tensor down = at::mm(rows, a_cast.t());
    base_out.addmm_(down, up.t());
    ctx->mark_dirty({base_out});
    ctx->save_for_backward({rows, down, a_cast, up});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["pair_dtype"] = static_cast<int64_t>(a.scalar_type());
    ctx->saved_data["base"] = reinterpret_cast<int64_t>(base);
    return {base_out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &rows = saved[0], &down = saved[1], &a_cast = saved[2], &up = saved[3];
    const at::Tensor grad = grads[0].contiguous();
    const at::Tensor grad_down = grad.mm(up);  // [tokens, r]
    at::Tensor grad_rows, grad_a, grad_b;
    if (ctx->needs_input_grad(0)) {
      const auto* base = reinterpret_cast<const FrozenLinear*>(ctx->saved_data["base"].toInt());
      grad_rows = grad.mm(base->dense_weight().to(grad.scalar_type()));
      grad_rows.addmm_(grad_down, a_cast);
    }
    // As autograd would: the GEMMs in the activation dtype, then the pair's dtype (and B's scale).
    const auto pair = static_cast<at::ScalarType>(ctx->saved_data["pair_dtype"].toInt());
    if (ctx->needs_input_grad(2)) grad_a = grad_down.t().mm(rows).to(pair);
    if (ctx->needs_input_grad(3))
      grad_b = grad.t().mm(down).to(pair).mul(ctx->saved_data["scale"].toDouble());
    const at::Tensor grad_base_out = ctx->needs_input_grad(1) ? grad : at::Tensor();
    return {grad_rows, grad_base_out, grad_a, grad_b, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor LowRankAdapter::forward(const at::Tensor& x, const FrozenLinear& base) {
  // Rows flat: the base's output is then a tensor of its own that the up-projection adds into.
  const at::Tensor rows = x.reshape({-1, x.size(-1)});
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = base.out_features();
  if (dropout_ > 0 && model_.training()) {
    // The input's two paths differ (dropout on the adapter's only): autograd's sum.
    const at::Tensor down = at::linear(at::dropout(rows, dropout_, true), a_.to(x.scalar_type()));
    const at::Tensor up = (b_ * scale_).to(x.scalar_type());
    return at::addmm(base.forward(rows), down, up.t()).view(sizes);
  }
  at::Tensor out = base.forward(rows.detach());
  // Shared (a base that keeps or views its output): a copy of its own to add into.
  if (out.use_count() != 1 || out.is_view()) out = out.clone();
  return LowRankLinear::apply(rows, out, a_, b_, scale_, &base)[0].view(sizes);
}

void add_to_weight(at::Tensor& weight, const at::Tensor& delta) {
  const at::ScalarType compute = at::promote_types(weight.scalar_type(), at::kFloat);
  weight = (weight.to(compute) + delta.to(weight.device(), compute)).to(weight.scalar_type());
}

void load_tensor(const TensorMap& tensors, const std::string& key, at::Tensor& target,
                 std::string_view method) {
  auto it = tensors.find(key);
  if (it == tensors.end()) throw Error(std::string(method) + ": the adapter has no " + key);
  if (it->second.sizes() != target.sizes())
    throw Error(std::string(method) + ": " + key + " has shape " + c10::str(it->second.sizes()) +
                ", expected " + c10::str(target.sizes()) +
                " (another rank or another base model?)");
  at::NoGradGuard no_grad;
  target.copy_(it->second.to(target.options()));
}

void check_stored_scalar(const TensorMap& tensors, const std::string& key, double configured,
                         std::string_view recipe_key) {
  auto it = tensors.find(key);
  if (it == tensors.end()) return;
  const double stored = it->second.item<double>();
  if (stored != configured)
    throw Error("the adapter was trained with " + key + " = " + c10::str(stored) + " but " +
                std::string(recipe_key) + " = " + c10::str(configured) + "; set it to " +
                c10::str(stored) + " (a different value would mis-scale the adapter)");
}

LowRankPairs::LowRankPairs(std::string method, int64_t r, double alpha, bool rslora)
    : method_(std::move(method)), r_(r), alpha_(alpha), rslora_(rslora) {}

double LowRankPairs::scale() const {
  return rslora_ ? alpha_ / std::sqrt(static_cast<double>(r_)) : alpha_ / static_cast<double>(r_);
}

void LowRankPairs::add(std::string site, at::Tensor a, at::Tensor b) {
  pairs_.push_back({std::move(site), std::move(a), std::move(b)});
}

std::vector<TrainableTensor> LowRankPairs::trainable_tensors() const {
  std::vector<TrainableTensor> out;
  for (const auto& p : pairs_) {
    out.push_back({p.name + ".lora_A", p.a, 1.0, true});
    out.push_back({p.name + ".lora_B", p.b, 1.0, true});
  }
  return out;
}

void LowRankPairs::store(TensorMap& out) const {
  for (const auto& p : pairs_) {
    out[p.name + ".lora_A"] = p.a.detach().to(at::kCPU);
    out[p.name + ".lora_B"] = p.b.detach().to(at::kCPU);
  }
  out[method_ + ".r"] = at::scalar_tensor(r_, at::kLong);
  out[method_ + ".alpha"] = at::scalar_tensor(alpha_, at::kDouble);
  out[method_ + ".rslora"] = at::scalar_tensor(rslora_ ? 1 : 0, at::kLong);
}

void LowRankPairs::load(const TensorMap& tensors) {
  const std::string table = "[peft." + method_ + "] ";
  // A stored hyper-parameter is checked against sense before it is used: a damaged alpha would
  // merge to finite garbage.
  for (const char* key : {".r", ".alpha", ".rslora"}) {
    try {
      stored_number(tensors, method_ + key);
    } catch (const Error& e) {
      throw Error(method_ + ": " + e.what());
    }
  }
  if (!std::isfinite(scale()) || std::abs(scale()) > kMaxPlausibleScale)
    throw Error(
        method_ + ": alpha = " + c10::str(alpha_) + " with r = " + std::to_string(r_) +
        " gives the update scale " + c10::str(scale()) + "; scales beyond " +
        c10::str(kMaxPlausibleScale) +
        " are refused as implausible (published adapters use 0.01 to 100): check the file's " +
        method_ + ".alpha or the recipe");
  check_stored_scalar(tensors, method_ + ".r", static_cast<double>(r_), table + "r");
  check_stored_scalar(tensors, method_ + ".alpha", alpha_, table + "alpha");
  check_stored_scalar(tensors, method_ + ".rslora", rslora_ ? 1 : 0, table + "use_rslora");
  for (auto& p : pairs_) {
    load_tensor(tensors, p.name + ".lora_A", p.a, method_);
    load_tensor(tensors, p.name + ".lora_B", p.b, method_);
  }
}

void LowRankPairs::add_to_weights(TensorMap& weights, double sign,
                                  const std::function<at::Tensor(size_t)>& extra) const {
  auto f64 = [](const at::Tensor& t) { return t.detach().to(at::kCPU, at::kDouble); };
  for (size_t i = 0; i < pairs_.size(); ++i) {
    const Pair& p = pairs_[i];
    auto it = weights.find(p.name + ".weight");
    if (it == weights.end())
      throw Error(method_ + ": the model has no " + p.name + ".weight to merge into");
    at::Tensor delta = at::matmul(f64(p.b), f64(p.a));
    if (extra) delta = delta + extra(i);
    add_to_weight(it->second, delta * (sign * scale()));
  }
}

void LowRankPairs::write_hf_folder(const std::filesystem::path& folder, double dropout) const {
  std::filesystem::create_directories(folder);
  TensorMap tensors;
  std::vector<std::string> modules;
  for (const auto& p : pairs_) {
    tensors["base_model.model." + p.name + ".lora_A.weight"] =
        p.a.detach().to(at::kCPU, at::kFloat).contiguous();
    tensors["base_model.model." + p.name + ".lora_B.weight"] =
        p.b.detach().to(at::kCPU, at::kFloat).contiguous();
    modules.push_back(p.name);
  }
  write_safetensors(folder / "adapter_model.safetensors", tensors, {{"format", "pt"}});
  const nlohmann::json json = {{"peft_type", "LORA"},
                               {"task_type", "CAUSAL_LM"},
                               {"r", r_},
                               {"lora_alpha", alpha_},
                               {"lora_dropout", dropout},
                               {"use_rslora", rslora_},
                               {"target_modules", modules},
                               {"bias", "none"},
                               {"fan_in_fan_out", false},
                               {"init_lora_weights", true},
                               {"inference_mode", false},
                               {"base_model_name_or_path", nullptr},
                               {"use_dora", false},
                               {"modules_to_save", nullptr}};
  write_text_file(folder / "adapter_config.json", json.dump(2) + "\n");
}

}  // namespace peftkit::plugins
