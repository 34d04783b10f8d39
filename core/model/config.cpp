#include "model/config.hpp"

#include <cmath>
#include <map>
#include <regex>
#include <set>
#include <utility>

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

std::optional<std::vector<int64_t>> merged_state_shape(const ModelConfig& config,
                                                       const std::string& name) {
  const std::regex& kName = merged_state_pattern();
  std::smatch match;
  if (!std::regex_match(name, match, kName) || std::stoll(match[1]) >= config.n_layer)
    return std::nullopt;
  if (match[2] == "att.time_state")
    return std::vector<int64_t>{config.n_head, config.head_size, config.head_size};
  return std::vector<int64_t>{config.n_embd};
}

const char* architecture_name(Architecture arch) {
  return arch == Architecture::kX060 ? "x060" : "x070";
}

const char* architecture_title(Architecture arch) {
  return arch == Architecture::kX060 ? "RWKV-6" : "RWKV-7";
}

Architecture parse_architecture(const std::string& text) {
  if (text == "x060" || text == "rwkv6" || text == "v6") return Architecture::kX060;
  if (text == "x070" || text == "rwkv7" || text == "v7") return Architecture::kX070;
  throw Error("architecture '" + text + "': expected x060 (RWKV-6) or x070 (RWKV-7)");
}

const std::vector<std::string>& ModelConfig::block_linear_names() const {
  static const std::vector<std::string> x060 = {"att.receptance", "att.key",    "att.value",
                                                "att.gate",       "att.output", "ffn.key",
                                                "ffn.receptance", "ffn.value"};
  static const std::vector<std::string> x070 = {"att.receptance", "att.key", "att.value",
                                                "att.output",     "ffn.key", "ffn.value"};
  return arch == Architecture::kX060 ? x060 : x070;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ModelConfig::expected_tensors() const {
  const int64_t C = n_embd;
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"emb.weight", {vocab, C}}, {"blocks.0.ln0.weight", {C}}, {"blocks.0.ln0.bias", {C}},
      {"ln_out.weight", {C}},     {"ln_out.bias", {C}},         {"head.weight", {vocab, C}},
  };
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    expected.emplace_back(name, std::move(shape));
  };
  for (int64_t l = 0; l < n_layer; ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    for (const char* ln : {"ln1", "ln2"}) {
      add(p + ln + ".weight", {C});
      add(p + ln + ".bias", {C});
    }
    if (arch == Architecture::kX060) {
      for (const char* x : {"time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r",
                            "time_maa_g", "time_decay"})
        add(p + "att." + x, {1, 1, C});
      add(p + "att.time_maa_w1", {C, 5 * dim_mix});
      add(p + "att.time_maa_w2", {5, dim_mix, C});
      add(p + "att.time_decay_w1", {C, dim_decay});
      add(p + "att.time_decay_w2", {dim_decay, C});
      add(p + "att.time_faaaa", {n_head, head_size});
      add(p + "ffn.time_maa_k", {1, 1, C});
      add(p + "ffn.time_maa_r", {1, 1, C});
    } else {
      for (const char* x : {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"})
        add(p + "att." + x, {1, 1, C});
      add(p + "att.w1", {C, dim_w});
      add(p + "att.w2", {dim_w, C});
      add(p + "att.a1", {C, dim_a});
      add(p + "att.a2", {dim_a, C});
      add(p + "att.g1", {C, dim_g});
      add(p + "att.g2", {dim_g, C});
      if (l > 0 || layer0_value_lora) {
        add(p + "att.v0", {1, 1, C});
        add(p + "att.v1", {C, dim_v});
        add(p + "att.v2", {dim_v, C});
      }
      add(p + "att.r_k", {n_head, head_size});
      add(p + "ffn.x_k", {1, 1, C});
    }
    for (const std::string& site : block_linear_names()) {
      const int64_t out = site == "ffn.key" ? ffn : C, in = site == "ffn.value" ? ffn : C;
      add(p + site + ".weight", {out, in});
    }
    add(p + "att.ln_x.weight", {C});
    add(p + "att.ln_x.bias", {C});
  }
  return expected;
}

ModelConfig ModelConfig::from_tensors(const TensorMap& tensors, const std::string& where) {
  auto get = [&](const std::string& name, const char* what) -> const at::Tensor& {
    auto it = tensors.find(name);
    if (it == tensors.end())
      throw Error(where + ": missing tensor '" + name + "' (not " + what + " model?)");
    return it->second;
  };
  ModelConfig c;
  const bool x060 = tensors.count("blocks.0.att.time_maa_x") != 0;
  const bool x070 = tensors.count("blocks.0.att.r_k") != 0;
  if (x060 && x070)
    throw Error(where + ": holds both blocks.0.att.time_maa_x (RWKV-6) and blocks.0.att.r_k " +
                "(RWKV-7): not one model");
  if (!x060 && !x070) {
    if (tensors.count("blocks.0.att.time_mix_k") || tensors.count("blocks.0.att.time_first"))
      throw Error(where + ": an RWKV-4/5 model (time_mix_k / time_first); peftkit reads RWKV-6 " +
                  "(x060) and RWKV-7 (x070)");
    if (!tensors.count("emb.weight") || !tensors.count("blocks.0.ln1.weight"))
      throw Error(where + ": no emb.weight or blocks.0.ln1.weight: not an RWKV model");
    throw Error(where + ": neither blocks.0.att.time_maa_x (RWKV-6 x060) nor blocks.0.att.r_k " +
                "(RWKV-7 x070): not a supported RWKV model");
  }
  c.arch = x060 ? Architecture::kX060 : Architecture::kX070;
  const char* what = x060 ? "an RWKV-6 x060" : "an RWKV-7 x070";
  const at::Tensor& emb = get("emb.weight", what);
  if (emb.dim() != 2)
    throw Error(where + ": emb.weight must be [V, C], found " + shape_text(emb.sizes()));
  c.vocab = emb.size(0);
  c.n_embd = emb.size(1);
  while (tensors.count("blocks." + std::to_string(c.n_layer) + ".ln1.weight")) ++c.n_layer;
  if (c.n_layer == 0) throw Error(where + ": no blocks.0.ln1.weight: not an RWKV model");
  const std::string heads_name = x060 ? "blocks.0.att.time_faaaa" : "blocks.0.att.r_k";
  const at::Tensor& heads = get(heads_name, what);
  if (heads.dim() != 2)
    throw Error(where + ": " + heads_name + " must be [H, N], found " + shape_text(heads.sizes()));
  c.n_head = heads.size(0);
  c.head_size = heads.size(1);
  if (c.n_head * c.head_size != c.n_embd)
    throw Error(where + ": " + heads_name + " says H*N = " +
                std::to_string(c.n_head * c.head_size) + " but C = " + std::to_string(c.n_embd) +
                (x060 ? " (a dim_att other than n_embd is not supported)" : ""));
  c.ffn = get("blocks.0.ffn.key.weight", what).size(0);
  if (x060) {
    const at::Tensor& mix = get("blocks.0.att.time_maa_w1", what);
    if (mix.dim() != 2 || mix.size(-1) % 5 != 0)
      throw Error(where + ": blocks.0.att.time_maa_w1 must be [C, 5 * D], found " +
                  shape_text(mix.sizes()));
    c.dim_mix = mix.size(-1) / 5;
    c.dim_decay = get("blocks.0.att.time_decay_w1", what).size(-1);
  } else {
    c.dim_w = get("blocks.0.att.w1", what).size(-1);
    c.dim_a = get("blocks.0.att.a1", what).size(-1);
    c.dim_g = get("blocks.0.att.g1", what).size(-1);
    c.dim_v = c.n_layer > 1
                  ? get("blocks.1.att.v1", what).size(-1)
                  : (tensors.count("blocks.0.att.v1") ? get("blocks.0.att.v1", what).size(-1) : 32);
    c.layer0_value_lora = tensors.count("blocks.0.att.v0") != 0;
  }

  // Every expected tensor with its shape; then nothing else may be present.
  std::set<std::string> known;
  for (const auto& [name, shape] : c.expected_tensors()) {
    known.insert(name);
    const at::Tensor& t = get(name, what);
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
    if (known.count(name)) continue;
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
    throw Error(where + ": " + std::to_string(unknown_count) + " unexpected tensor(s) for " + what +
                " model: " + unknown + (unknown_count > 8 ? ", ..." : "") +
                " (DeepEmbed and other variants are not supported)");
  return c;
}

ModelConfig ModelConfig::for_size(Architecture arch, int64_t n_layer, int64_t n_embd, int64_t vocab,
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
  ModelConfig c;
  c.arch = arch;
  c.n_layer = n_layer;
  c.n_embd = n_embd;
  c.head_size = head_size;
  c.n_head = n_embd / head_size;
  c.vocab = vocab;
  if (arch == Architecture::kX060) {
    // RWKV-LM x060: F = int(3.5 C / 32) * 32; the mix and decay LoRAs double at C = 4096.
    c.ffn = std::max<int64_t>(32, static_cast<int64_t>(3.5 * n_embd / 32) * 32);
    c.dim_mix = n_embd >= 4096 ? 64 : 32;
    c.dim_decay = n_embd >= 4096 ? 128 : 64;
    return c;
  }
  c.ffn = 4 * n_embd;
  // The formulas that reproduce the released 0.1B/1.5B/2.9B models (spec §1.6, "old").
  const double root = std::sqrt(static_cast<double>(n_embd));
  c.dim_w = c.dim_a = round_to_32(1.8 * root);
  c.dim_v = round_to_32(1.3 * root);
  c.dim_g = n_embd == 1024 ? 128 : round_to_32(0.6 * std::pow(static_cast<double>(n_embd), 0.8));
  return c;
}

int64_t ModelConfig::parameter_count() const {
  int64_t count = 0;
  for (const auto& [name, shape] : expected_tensors()) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    count += n;
  }
  return count;
}

std::string ModelConfig::describe() const {
  std::string text = std::string(architecture_title(arch)) + " L" + std::to_string(n_layer) + " C" +
                     std::to_string(n_embd) + " H" + std::to_string(n_head) + " N" +
                     std::to_string(head_size) + " V" + std::to_string(vocab) + " F" +
                     std::to_string(ffn);
  if (arch == Architecture::kX060)
    return text + " mix " + std::to_string(dim_mix) + " decay " + std::to_string(dim_decay);
  return text + " lora " + std::to_string(dim_w) + "/" + std::to_string(dim_a) + "/" +
         std::to_string(dim_v) + "/" + std::to_string(dim_g);
}

}  // namespace peftkit::model
