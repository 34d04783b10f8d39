// TOML recipes: the limits scan, toml++ and the schema checks of every core section (no plugin is
// installed, so a [peft] method is refused by name), and a --set override built from the input.
#include "fuzz_input.hpp"
#include "host/plugin_registry.hpp"
#include "host/recipe.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto registry = peftkit::host::PluginRegistry::discover({});
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  peftkit::fuzz::expect_ok_or_error(
      [&] { peftkit::host::parse_recipe(text, "fuzz.toml", {}, registry); });
  peftkit::fuzz::expect_ok_or_error([&] {
    const auto recipe = peftkit::fuzz::write_input("recipe.toml", data, size);
    peftkit::host::load_recipe(
        recipe, {peftkit::host::parse_override("train." + std::string(text.substr(0, 200)))},
        registry);
  });
  return 0;
}
