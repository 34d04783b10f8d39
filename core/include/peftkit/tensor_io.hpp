// tensor_io.hpp: reading and writing named tensors in the files RWKV tools exchange.
//
//   .pth          PyTorch's zip archive with a pickled dict/OrderedDict of tensors, as
//                 torch.save(model.state_dict()) writes it. Only the data-only subset of pickle is
//                 read (what torch.load(weights_only=True) allows); anything else is refused,
//                 never executed.
//   .safetensors  the safetensors format (header rules checked strictly).
//
// Reading memory-maps the file: tensors are views of the mapping (copy-on-write, the file is never
// modified), so loading a model needs little more RAM than the tensors actually touched.
//
//   peftkit::TensorFile file = peftkit::read_tensor_file("rwkv7-0.1b.pth");
//   at::Tensor emb = file.tensors.at("emb.weight");
//   peftkit::write_safetensors("adapter.safetensors", tensors, {{"format", "pt"}});
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "peftkit/error.hpp"
#include "peftkit/model.hpp"

namespace peftkit {

struct TensorFile {
  TensorMap tensors;
  // safetensors __metadata__; for a .pth, what peftkit recorded in it (a JSON record of the archive
  // that torch.load does not read), empty for other .pth files.
  std::map<std::string, std::string> metadata;
};

// Tensor names longer than this are refused when a file is read (real names are a few dozen bytes).
inline constexpr size_t kMaxTensorNameBytes = 1024;

// The safetensors metadata key that records how a state file lays out its WKV states: "ai00"
// (Ai00/web-rwkv: the last two dimensions of RWKV-PEFT's time_state transposed) or "rwkv-peft".
inline constexpr const char* kStateLayoutKey = "peftkit.state_layout";

// The metadata key under which peftkit records, in every adapter it saves, the methods that made it
// with their options and metadata() (JSON), so that the file alone can be mounted again.
inline constexpr const char* kAdapterRecordKey = "peftkit.adapter";

// Whether reading a .pth also checks every record's CRC-32 against its bytes. data.pkl is always
// checked; kVerify reads the whole file (for checkpoints and adapters, where a flipped bit must be
// found), kSkip keeps a large model's load lazy.
enum class Checksums { kSkip, kVerify };

// Chooses the format by content (zip magic or safetensors header); throws peftkit::Error naming
// the file and the problem.
TensorFile read_tensor_file(const std::filesystem::path& path);
TensorFile read_tensor_file(const std::filesystem::path& path, Checksums checksums);
TensorMap read_pth(const std::filesystem::path& path);
TensorMap read_pth(const std::filesystem::path& path, Checksums checksums);
TensorFile read_safetensors(const std::filesystem::path& path);

// Throws peftkit::Error naming `where` and the first floating-point tensor that holds NaN or
// infinity (checked when models, adapters and states are loaded: such a file would train or
// generate garbage without a word).
void require_finite(const TensorMap& tensors, const std::string& where);

// Writes atomically (a temporary file in the same folder, fsync, rename): an interrupted write
// never leaves a half-written file under the final name. Tensors may live on any device.
void write_pth(const std::filesystem::path& path, const TensorMap& tensors);
// With metadata, stored as a record of the archive that torch.load ignores (SDK 2.2).
void write_pth(const std::filesystem::path& path, const TensorMap& tensors,
               const std::map<std::string, std::string>& metadata);
void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// A text file (an adapter_config.json beside the tensors), written atomically the same way; a
// failed write names the file and the system's reason.
void write_text_file(const std::filesystem::path& path, const std::string& text);

}  // namespace peftkit
