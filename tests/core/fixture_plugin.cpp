// Test-only PEFT plugin "fixture": an option schema with a cross-key rule, for the registry and
// recipe tests. FIXTURE_MISMATCH builds variants the host must refuse.
#include <peftkit/peft_method.hpp>
#include <peftkit/plugin.hpp>

namespace {

class FixturePlugin final : public peftkit::PeftPlugin {
 public:
  peftkit::OptionSchema options() const override {
    return peftkit::OptionSchema()
        .add_int("r", 8, "rank", 1, 4096)
        .add_float("alpha", 16.0, "scale numerator", peftkit::Bound{0, true})
        .add_string("init", "zero", "initialisation", {"zero", "random"})
        .add_int("block", 0, "block size that must divide r (0: off)", 0);
  }
  void validate(const peftkit::Options& options) const override {
    const int64_t block = options.get_int("block");
    if (block > 0 && options.get_int("r") % block != 0)
      throw options.error("block", "must divide r = " + std::to_string(options.get_int("r")) +
                                       ", found " + std::to_string(block));
  }
  std::unique_ptr<peftkit::PeftMethod> create(const peftkit::Options&) const override {
    throw peftkit::Error("the fixture plugin only has a schema; it creates no method");
  }
#if defined(FIXTURE_OLDER_MINOR)
  // Its handshake claims SDK 2.1, which had no recognise(): the host must never call it (a real
  // 2.1 plugin's vtable ends before it).
  std::optional<peftkit::Recognition> recognise(const peftkit::SavedFile&) const override {
    throw peftkit::Error("recognise() was called on a plugin built against SDK 2.1");
  }
#endif
};

}  // namespace

#if defined(FIXTURE_WRONG_API_MAJOR)
PEFTKIT_PLUGIN_HANDSHAKE_(FixturePlugin, "wrong-major", "1.0.0", "built for SDK API 2",
                          PEFTKIT_API_MAJOR + 1, 0, PEFTKIT_ABI_TAG)
#elif defined(FIXTURE_WRONG_ABI)
PEFTKIT_PLUGIN_HANDSHAKE_(FixturePlugin, "wrong-abi", "1.0.0", "built for another LibTorch",
                          PEFTKIT_API_MAJOR, PEFTKIT_API_MINOR,
                          "torch=0.0.0-fixture;cxx11abi=1;cuda=" PEFTKIT_CUDA_TAG
                          ";compiler=" PEFTKIT_COMPILER_TAG)
#elif defined(FIXTURE_OLDER_MINOR)
PEFTKIT_PLUGIN_HANDSHAKE_(FixturePlugin, "older-minor", "1.0.0", "built against SDK 2.1",
                          PEFTKIT_API_MAJOR, 1, PEFTKIT_ABI_TAG)
#elif defined(FIXTURE_NEWER_MINOR)
PEFTKIT_PLUGIN_HANDSHAKE_(FixturePlugin, "newer-minor", "1.0.0", "needs a newer SDK",
                          PEFTKIT_API_MAJOR, PEFTKIT_API_MINOR + 1, PEFTKIT_ABI_TAG)
#else
PEFTKIT_PLUGIN(FixturePlugin, "fixture", "0.0.1", "test fixture: a PEFT schema without a method")
#endif
