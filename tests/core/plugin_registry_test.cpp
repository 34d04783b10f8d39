#include "host/plugin_registry.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "host/adapters.hpp"
#include "peftkit/dataset.hpp"
#include "peftkit/peft_method.hpp"
#include "test_util.hpp"

namespace peftkit::host {
namespace {

const PluginRecord* find_record(const PluginRegistry& registry, std::string_view file_name) {
  for (const auto& record : registry.records())
    if (record.file.filename() == file_name) return &record;
  return nullptr;
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(PluginRegistry, LoadsValidPluginsWithTheirHandshake) {
  auto registry = PluginRegistry::discover({FIXTURE_VALID_DIR, FIXTURE_EXAMPLE_DIR});
  ASSERT_EQ(registry.records().size(), 2u);
  EXPECT_EQ(registry.available(PluginKind::kPeft), std::vector<std::string>{"fixture"});
  EXPECT_EQ(registry.available(PluginKind::kDataset), std::vector<std::string>{"token-lines"});
  const PluginRecord* record = find_record(registry, "peftkit-peft-fixture.so");
  ASSERT_NE(record, nullptr);
  EXPECT_TRUE(record->usable());
  EXPECT_EQ(record->version, "0.0.1");
  EXPECT_EQ(record->api_major, PEFTKIT_API_MAJOR);
  EXPECT_EQ(record->abi_tag, host_abi_tag());
  auto fixture = registry.get<PeftPlugin>("fixture");
  EXPECT_NE(fixture->options().find("r"), nullptr);
}

TEST(PluginRegistry, RefusesWrongApiMajorNamingFileAndField) {
  auto registry = PluginRegistry::discover({FIXTURE_MISMATCHED_DIR});
  const PluginRecord* record = find_record(registry, "peftkit-peft-wrong-major.so");
  ASSERT_NE(record, nullptr);
  EXPECT_FALSE(record->usable());
  const std::string expected = "SDK API major version is " + std::to_string(PEFTKIT_API_MAJOR + 1) +
                               " in the plugin but " + std::to_string(PEFTKIT_API_MAJOR) +
                               " in this host; rebuild the plugin against peftkit SDK " +
                               std::to_string(PEFTKIT_API_MAJOR) + ".x";
  EXPECT_EQ(record->refusal, expected);
  const std::string message = error_of([&] { registry.find(PluginKind::kPeft, "wrong-major"); });
  EXPECT_NE(message.find("peftkit-peft-wrong-major.so"), std::string::npos) << message;
  EXPECT_NE(message.find(expected), std::string::npos) << message;
}

TEST(PluginRegistry, RefusesWrongAbiTagNamingTheDifferingField) {
  auto registry = PluginRegistry::discover({FIXTURE_MISMATCHED_DIR});
  const PluginRecord* record = find_record(registry, "peftkit-peft-wrong-abi.so");
  ASSERT_NE(record, nullptr);
  EXPECT_EQ(record->refusal, "ABI tag field 'torch' is '0.0.0-fixture' in the plugin but '" +
                                 std::string(TORCH_VERSION) +
                                 "' in this host; rebuild the plugin with the same LibTorch, "
                                 "compiler and peftkit");
}

TEST(PluginRegistry, RefusesPluginNeedingANewerMinor) {
  auto registry = PluginRegistry::discover({FIXTURE_MISMATCHED_DIR});
  const PluginRecord* record = find_record(registry, "peftkit-peft-newer-minor.so");
  ASSERT_NE(record, nullptr);
  const std::string major = std::to_string(PEFTKIT_API_MAJOR);
  EXPECT_NE(record->refusal.find(
                "plugin needs SDK API " + major + "." + std::to_string(PEFTKIT_API_MINOR + 1) +
                " but this host provides " + major + "." + std::to_string(PEFTKIT_API_MINOR)),
            std::string::npos)
      << record->refusal;
}

// Issue 16: SDK 2.2 added virtual functions (PeftPlugin::recognise, DatasetPlugin::create_writer).
// A plugin built against 2.1 keeps loading and working, and the host never calls what its vtable
// lacks: the fixture's recognise() throws if called.
TEST(PluginRegistry, PluginsOfAnOlderMinorLoadAndAreNotAskedWhatTheyCannotAnswer) {
  auto registry = PluginRegistry::discover({FIXTURE_OLDER_DIR, FIXTURE_VALID_DIR});
  const PluginRecord* record = find_record(registry, "peftkit-peft-older-minor.so");
  ASSERT_NE(record, nullptr);
  EXPECT_TRUE(record->usable()) << record->refusal;
  EXPECT_EQ(record->api_minor, 1);
  EXPECT_EQ(registry.api_minor(PluginKind::kPeft, "older-minor"), 1);
  EXPECT_EQ(registry.api_minor(PluginKind::kPeft, "fixture"), PEFTKIT_API_MINOR);
  std::vector<std::string> asked;
  for (const auto& [name, plugin] : registry.all<PeftPlugin>(2)) asked.push_back(name);
  EXPECT_EQ(asked, std::vector<std::string>{"fixture"});
  SavedFile file;
  file.path = "x.pth";
  file.tensors = {{"blocks.0.att.key.lora_A", at::zeros({2, 4})}};
  EXPECT_NO_THROW(recognise(file, registry));
}

TEST(PluginRegistry, RefusesFilesThatAreNotPlugins) {
  testing::TempDir dir;
  testing::write_file(dir / "peftkit-peft-garbage.so", "not an ELF file");
  auto registry = PluginRegistry::discover({dir.path()});
  ASSERT_EQ(registry.records().size(), 1u);
  EXPECT_NE(registry.records()[0].refusal.find("cannot be loaded"), std::string::npos);
}

TEST(PluginRegistry, DuplicateKindAndNameIsAnErrorNamingBothFiles) {
  const std::string message = error_of([] { PluginRegistry::discover({FIXTURE_DUPLICATE_DIR}); });
  EXPECT_NE(message.find("two peft plugins are named 'fixture'"), std::string::npos) << message;
  EXPECT_NE(message.find("peftkit-peft-fixture.so"), std::string::npos) << message;
  EXPECT_NE(message.find("peftkit-peft-fixture-copy.so"), std::string::npos) << message;
}

TEST(PluginRegistry, SameFolderTwiceLoadsEachFileOnce) {
  auto registry = PluginRegistry::discover({FIXTURE_VALID_DIR, FIXTURE_VALID_DIR});
  EXPECT_EQ(registry.records().size(), 1u);
}

TEST(PluginRegistry, UnknownNameListsTheAvailableOnesOfThatKind) {
  auto registry = PluginRegistry::discover({FIXTURE_VALID_DIR, FIXTURE_EXAMPLE_DIR});
  EXPECT_EQ(error_of([&] { registry.find(PluginKind::kPeft, "lorra"); }),
            "no peft plugin named 'lorra'; available: fixture");
  EXPECT_EQ(error_of([&] { registry.find(PluginKind::kQuantizer, "nf4"); }),
            "no quantizer plugin named 'nf4'; available: none");
}

TEST(PluginRegistry, ObjectsKeepTheirPluginLoadedAfterTheRegistryIsGone) {
  testing::TempDir dir;
  testing::write_file(dir / "ids.txt", "1 2 3\n4 5\n");
  std::shared_ptr<Dataset> dataset;
  {
    auto registry = PluginRegistry::discover({FIXTURE_EXAMPLE_DIR});
    auto plugin = registry.get<DatasetPlugin>("token-lines");
    Options options("data.token-lines");
    options.set("skip_empty_lines", true, OptionSource::kDefault);
    DatasetSource source{dir / "ids.txt", 16, 100, 0, nullptr};
    dataset = keep_loaded(plugin->open(source, options), plugin);
  }
  // The registry and every plugin handle are gone; the dataset's code must still be mapped.
  ASSERT_EQ(dataset->size(), 2);
  Sample sample = dataset->sample(0);
  EXPECT_EQ(sample.input_ids, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(sample.targets, (std::vector<int32_t>{2, 3}));
}

TEST(PluginRegistry, PluginErrorsCrossTheLibraryBoundaryAsPeftkitErrors) {
  testing::TempDir dir;
  testing::write_file(dir / "ids.txt", "1 2 x\n");
  auto registry = PluginRegistry::discover({FIXTURE_EXAMPLE_DIR});
  auto plugin = registry.get<DatasetPlugin>("token-lines");
  Options options("data.token-lines");
  options.set("skip_empty_lines", true, OptionSource::kDefault);
  DatasetSource source{dir / "ids.txt", 16, 100, 0, nullptr};
  EXPECT_EQ(error_of([&] { plugin->open(source, options); }),
            (dir / "ids.txt").string() + ":1: expected a token id, found 'x'");
}

TEST(AbiTag, ComparesFieldByField) {
  EXPECT_EQ(compare_abi_tags("torch=2.11.0;cuda=cpu", "torch=2.11.0;cuda=cpu"), "");
  EXPECT_EQ(compare_abi_tags("torch=2.11.0;cuda=cpu", "cuda=13.0;torch=2.11.0"),
            "ABI tag field 'cuda' is 'cpu' in the plugin but '13.0' in this host");
  EXPECT_NE(
      compare_abi_tags("torch=2.11.0", "torch=2.11.0;cxx11abi=1").find("'cxx11abi' is missing"),
      std::string::npos);
}

TEST(PluginSearchPath, BinaryFolderFirstThenCommandLineThenEnvironment) {
  ::setenv("PEFTKIT_PLUGIN_PATH", "/env/a::/env/b", 1);
  auto dirs = plugin_search_path({"/cli"});
  ::unsetenv("PEFTKIT_PLUGIN_PATH");
  ASSERT_EQ(dirs.size(), 4u);
  EXPECT_EQ(dirs[0].filename(), "plugins");
  EXPECT_EQ(dirs[0].parent_path().filename(), "peftkit");
  EXPECT_EQ(dirs[1], "/cli");
  EXPECT_EQ(dirs[2], "/env/a");
  EXPECT_EQ(dirs[3], "/env/b");
}

}  // namespace
}  // namespace peftkit::host
