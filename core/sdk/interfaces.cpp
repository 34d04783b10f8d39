// Key functions of the SDK's polymorphic interfaces: defining their destructors here makes
// libpeftkit-core.so the one home of their vtables and type information, which plugins share.
#include "peftkit/dataset.hpp"
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

}  // namespace peftkit
