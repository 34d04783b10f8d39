// One dataset plugin (its source is linked in; FUZZ_FORMAT names it): the input is opened as a data
// file and a few samples are drawn, which must stay inside the file.
//   numpy   the input is the .npy file
//   binidx  the first two bytes give the .bin's length L; the next L bytes are the .bin, the rest
//           the .idx; opened in pad and in stream mode
//   jsonl   the input is the .jsonl file, World-tokenised
#include "fuzz_input.hpp"
#include "host/recipe.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace {

const peftkit::Tokenizer* tokenizer() {
  static const auto loaded =
      peftkit::tokenizer::WorldTokenizer::load(peftkit::tokenizer::find_world_vocab());
  return loaded.get();
}

void draw(const peftkit::Dataset& dataset) {
  const int64_t n = dataset.size();
  for (int64_t i : {int64_t{0}, n / 2, n - 1})
    if (i >= 0 && i < n) (void)dataset.sample(i);
  (void)dataset.describe();
}

void open_and_draw(const std::filesystem::path& path, const std::string& mode) {
  const auto& plugin = peftkit::fuzz::linked_plugin<peftkit::DatasetPlugin>();
  peftkit::Options options = peftkit::host::default_options(plugin.options(), "data." FUZZ_FORMAT);
  if (!mode.empty()) options.set("mode", mode, peftkit::OptionSource::kRecipe);
  peftkit::DatasetSource source{path, 16, 1000, 7, tokenizer()};
  draw(*plugin.open(source, options));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using peftkit::fuzz::write_input;
  const std::string format = FUZZ_FORMAT;
  if (format != "binidx") {
    const auto path = write_input("input." + format, data, size);
    return peftkit::fuzz::expect_ok_or_error([&] { open_and_draw(path, ""); });
  }
  if (size < 2) return 0;
  const size_t bin = std::min<size_t>(size - 2, data[0] | (size_t{data[1]} << 8));
  write_input("input.bin", data + 2, bin);
  const auto idx = write_input("input.idx", data + 2 + bin, size - 2 - bin);
  for (const char* mode : {"pad", "stream"})
    peftkit::fuzz::expect_ok_or_error([&] { open_and_draw(idx.parent_path() / "input", mode); });
  return 0;
}
