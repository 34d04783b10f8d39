#include "model/rwkv7_config.hpp"

#include <cmath>
#include <map>
#include <regex>
#include <set>

#include "peftkit/error.hpp"

namespace peftkit::model {
namespace {

std::string shape_text(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

int64_t round_to_32(double x) {
  // Python's round() (half to even) of x / 32, times 32, at least 32.
  return std::max<int64_t>(32, static_cast<int64_t>(std::nearbyint(x / 32.0)) * 32);
}

}  // namespace

namespace {
const std::regex& merged_state_pattern() {
  static const std::regex kName(
      R"(blocks\.(\d{1,9})\.(att\.time_state|att\.time_shift|ffn\.time_shift))");
  return kName;
}
}  // namespace

bool is_merged_state_name(const std::string& name) {
  return std::regex_match(name, merged_state_pattern());
}

std::optional<std::vector<int64_t>> merged_state_shape(const Rwkv7Config& config,
                                                       const std::string& name) {
  const std::regex& kName = merged_state_pattern();
  std::smatch match;
  if (!std::regex_match(name, match, kName) || std::stoll(match[1]) >= config.n_layer)
    return std::nullopt;
  if (match[2] == "att.time_state")
    return std::vector<int64_t>{config.n_head, config.head_size, config.head_size};
  return std::vector<int64_t>{config.n_embd};
}

Rwkv7Config Rwkv7Config::from_tensors(const TensorMap& tensors, const std::string& where) {
  for (const auto& [name, tensor] : tensors)
    if (name.find("time_maa_x") != std::string::npos)
      throw Error(where + ": RWKV-6 (x060) checkpoints are not supported yet");
  auto get = [&](const std::string& name) -> const at::Tensor& {
    auto it = tensors.find(name);
    if (it == tensors.end())
      throw Error(where + ": missing tensor '" + name + "' (not an RWKV-7 x070 model?)");
    return it->second;
  };
  Rwkv7Config c;
  const at::Tensor& emb = get("emb.weight");
  if (emb.dim() != 2)
    throw Error(where + ": emb.weight must be [V, C], found " + shape_text(emb.sizes()));
  c.vocab = emb.size(0);
  c.n_embd = emb.size(1);
  while (tensors.count("blocks." + std::to_string(c.n_layer) + ".ln1.weight")) ++c.n_layer;
  if (c.n_layer == 0) throw Error(where + ": no blocks.0.ln1.weight: not an RWKV model");
  const at::Tensor& r_k = get("blocks.0.att.r_k");
  if (r_k.dim() != 2)
    throw Error(where + ": blocks.0.att.r_k must be [H, N], found " + shape_text(r_k.sizes()));
  c.n_head = r_k.size(0);
  c.head_size = r_k.size(1);
  if (c.n_head * c.head_size != c.n_embd)
    throw Error(where + ": r_k says H*N = " + std::to_string(c.n_head * c.head_size) +
                " but C = " + std::to_string(c.n_embd));
  c.dim_w = get("blocks.0.att.w1").size(-1);
  c.dim_a = get("blocks.0.att.a1").size(-1);
  c.dim_g = get("blocks.0.att.g1").size(-1);
  c.dim_v = c.n_layer > 1
                ? get("blocks.1.att.v1").size(-1)
                : (tensors.count("blocks.0.att.v1") ? get("blocks.0.att.v1").size(-1) : 32);
  c.ffn = get("blocks.0.ffn.key.weight").size(0);
  c.layer0_value_lora = tensors.count("blocks.0.att.v0") != 0;

  // Every expected tensor with its shape; then nothing else may be present.
  const int64_t C = c.n_embd;
  std::map<std::string, std::vector<int64_t>> expected = {
      {"emb.weight", {c.vocab, C}}, {"blocks.0.ln0.weight", {C}}, {"blocks.0.ln0.bias", {C}},
      {"ln_out.weight", {C}},       {"ln_out.bias", {C}},         {"head.weight", {c.vocab, C}},
  };
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    for (const char* ln : {"ln1", "ln2"}) {
      expected[p + ln + ".weight"] = {C};
      expected[p + ln + ".bias"] = {C};
    }
    for (const char* x : {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"})
      expected[p + "att." + x] = {1, 1, C};
    expected[p + "att.w1"] = {C, c.dim_w};
    expected[p + "att.w2"] = {c.dim_w, C};
    expected[p + "att.a1"] = {C, c.dim_a};
    expected[p + "att.a2"] = {c.dim_a, C};
    expected[p + "att.g1"] = {C, c.dim_g};
    expected[p + "att.g2"] = {c.dim_g, C};
    if (l > 0 || c.layer0_value_lora) {
      expected[p + "att.v0"] = {1, 1, C};
      expected[p + "att.v1"] = {C, c.dim_v};
      expected[p + "att.v2"] = {c.dim_v, C};
    }
    expected[p + "att.r_k"] = {c.n_head, c.head_size};
    for (const char* lin : {"receptance", "key", "value", "output"})
      expected[p + "att." + lin + ".weight"] = {C, C};
    expected[p + "att.ln_x.weight"] = {C};
    expected[p + "att.ln_x.bias"] = {C};
    expected[p + "ffn.x_k"] = {1, 1, C};
    expected[p + "ffn.key.weight"] = {c.ffn, C};
    expected[p + "ffn.value.weight"] = {C, c.ffn};
  }
  for (const auto& [name, shape] : expected) {
    const at::Tensor& t = get(name);
    if (t.sizes() != at::IntArrayRef(shape))
      throw Error(where + ": " + name + " has shape " + shape_text(t.sizes()) + ", expected " +
                  shape_text(shape) + " for " + c.describe());
    if (!at::isFloatingType(t.scalar_type()))
      throw Error(where + ": " + name + " has dtype " +
                  std::string(c10::toString(t.scalar_type())) + ", expected a floating-point type");
  }
  std::string unknown;
  int unknown_count = 0;
  for (const auto& [name, tensor] : tensors) {
    if (expected.count(name)) continue;
    if (const auto shape = merged_state_shape(c, name)) {  // a state merged into the model file
      if (tensor.sizes() != at::IntArrayRef(*shape))
        throw Error(where + ": " + name + " has shape " + shape_text(tensor.sizes()) +
                    ", expected " + shape_text(*shape) + " for " + c.describe() +
                    " (a state trained on another base?)");
      continue;
    }
    if (++unknown_count <= 8) unknown += (unknown.empty() ? "" : ", ") + name;
  }
  if (unknown_count)
    throw Error(where + ": " + std::to_string(unknown_count) +
                " unexpected tensor(s) for an RWKV-7 x070 model: " + unknown +
                (unknown_count > 8 ? ", ..." : "") +
                " (DeepEmbed and other variants are not supported)");
  return c;
}

Rwkv7Config Rwkv7Config::for_size(int64_t n_layer, int64_t n_embd, int64_t vocab,
                                  int64_t head_size) {
  if (n_layer < 1 || n_embd < 1 || vocab < 1 || head_size < 1)
    throw Error("model geometry: layers, embd, vocab and head size must be positive");
  // Far beyond any RWKV model, and small enough that every count below fits in 64 bits.
  if (n_layer > (1 << 16) || n_embd > (1 << 20) || vocab > (1 << 26) || head_size > (1 << 12))
    throw Error("model geometry: layers " + std::to_string(n_layer) + ", embd " +
                std::to_string(n_embd) + ", vocab " + std::to_string(vocab) + ", head size " +
                std::to_string(head_size) + " exceed the limits 65536, 1048576, 67108864 and 4096");
  if (n_embd % head_size != 0)
    throw Error("model geometry: embd " + std::to_string(n_embd) +
                " is not a multiple of the head size " + std::to_string(head_size));
  Rwkv7Config c;
  c.n_layer = n_layer;
  c.n_embd = n_embd;
  c.head_size = head_size;
  c.n_head = n_embd / head_size;
  c.vocab = vocab;
  c.ffn = 4 * n_embd;
  // The formulas that reproduce the released 0.1B/1.5B/2.9B models (spec §1.6, "old").
  const double root = std::sqrt(static_cast<double>(n_embd));
  c.dim_w = c.dim_a = round_to_32(1.8 * root);
  c.dim_v = round_to_32(1.3 * root);
  c.dim_g = n_embd == 1024 ? 128 : round_to_32(0.6 * std::pow(static_cast<double>(n_embd), 0.8));
  return c;
}

int64_t Rwkv7Config::parameter_count() const {
  const int64_t C = n_embd;
  int64_t count = 2 * vocab * C + 4 * C;
  count += n_layer * (4 * C * C + 2 * C * ffn + 2 * C * (dim_w + dim_a + dim_v + dim_g) + 19 * C);
  if (!layer0_value_lora) count -= C + 2 * C * dim_v;
  return count;
}

std::string Rwkv7Config::describe() const {
  return "L" + std::to_string(n_layer) + " C" + std::to_string(n_embd) + " H" +
         std::to_string(n_head) + " N" + std::to_string(head_size) + " V" + std::to_string(vocab) +
         " F" + std::to_string(ffn) + " lora " + std::to_string(dim_w) + "/" +
         std::to_string(dim_a) + "/" + std::to_string(dim_v) + "/" + std::to_string(dim_g);
}

}  // namespace peftkit::model
