#include "peftkit/tensor_io.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <sstream>

#include "io/zip_archive.hpp"
#include "test_util.hpp"

namespace peftkit {
namespace {

class TensorIoTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    auto result = testing::run_command(python("write"));
    ASSERT_EQ(result.exit_code, 0) << result.output;
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string python(const std::string& mode) {
    return std::string(PEFTKIT_PYTHON) + " " TENSOR_FILES_SCRIPT " " + mode + " " +
           dir_->path().string();
  }
  static std::filesystem::path file(const std::string& name) { return dir_->path() / name; }
  static std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }
  static inline testing::TempDir* dir_ = nullptr;
};

TEST_F(TensorIoTest, ReadsWhatTorchSaveWritesAndTorchLoadReadsWhatWeWrite) {
  TensorMap from_dict = read_pth(file("dict.pth"));
  TensorMap from_ordered = read_pth(file("ordered.pth"));
  TensorFile from_safetensors = read_safetensors(file("ref.safetensors"));
  ASSERT_EQ(from_dict.size(), 9u);
  EXPECT_EQ(from_dict.at("emb.weight").scalar_type(), at::kBFloat16);
  EXPECT_EQ(from_dict.at("blocks.0.att.x_r").scalar_type(), at::kHalf);
  EXPECT_EQ(from_dict.at("blocks.0.att.x_r").sizes(), at::IntArrayRef({1, 1, 5}));
  EXPECT_EQ(from_dict.at("scalar").dim(), 0);
  EXPECT_EQ(from_dict.at("scalar").item<float>(), 3.5f);
  EXPECT_EQ(from_dict.at("ids")[0].item<int64_t>(), -3);
  EXPECT_EQ(from_safetensors.metadata.at("format"), "pt");
  for (const auto& [name, tensor] : from_dict) {
    EXPECT_TRUE(at::equal(tensor, from_ordered.at(name))) << name;
    EXPECT_TRUE(at::equal(tensor, from_safetensors.tensors.at(name))) << name;
  }
  std::filesystem::create_directories(file("out"));
  write_pth(file("out/cpp.pth"), from_dict);
  write_safetensors(file("out/cpp.safetensors"), from_safetensors.tensors, {{"format", "pt"}});
  write_pth(file("out/nested.pth"), read_pth(file("nested.pth")));
  // Metadata (issue 16: the record that makes adapters self-describing) rides in an archive record
  // that torch.load does not read.
  const std::map<std::string, std::string> metadata = {{kAdapterRecordKey, "{\"format\": 1}"},
                                                       {"note", "ünïcode"}};
  write_pth(file("out/meta.pth"), from_dict, metadata);
  EXPECT_EQ(read_tensor_file(file("out/meta.pth")).metadata, metadata);
  EXPECT_TRUE(read_tensor_file(file("out/cpp.pth")).metadata.empty());
  auto result = testing::run_command(python("check"));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  // And our own reader reads our own files back identically, by either entry point.
  TensorMap again = read_tensor_file(file("out/cpp.pth")).tensors;
  for (const auto& [name, tensor] : from_dict)
    EXPECT_TRUE(at::equal(tensor, again.at(name))) << name;
}

// An archive in zip64 form (sizes and offsets in zip64 extra fields, the zip64 end-of-directory
// record and locator) reads as the plain one.
TEST_F(TensorIoTest, Zip64ArchivesReadLikePlainOnes) {
  const TensorMap plain = read_pth(file("dict.pth")), zip64 = read_pth(file("zip64.pth"));
  ASSERT_EQ(zip64.size(), plain.size());
  for (const auto& [name, tensor] : plain) {
    ASSERT_TRUE(zip64.count(name)) << name;
    EXPECT_TRUE(zip64.at(name).equal(tensor)) << name;
    EXPECT_EQ(zip64.at(name).scalar_type(), tensor.scalar_type()) << name;
  }
}

TEST_F(TensorIoTest, NestedDictsGiveDottedNamesAndViewsShareStorage) {
  TensorMap tensors = read_pth(file("nested.pth"));
  at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  EXPECT_TRUE(at::equal(tensors.at("model.view.t"), base.t().slice(0, 1, 4)));
  EXPECT_TRUE(at::equal(tensors.at("model.view.row"), base[2]));
}

TEST_F(TensorIoTest, TensorsAreCopyOnWriteViewsThatOutliveNothingElse) {
  at::Tensor emb;
  {
    TensorMap tensors = read_pth(file("dict.pth"));
    emb = tensors.at("emb.weight");
  }
  const float before = emb[0][0].item<float>();
  emb.add_(1.0);  // private pages: the file on disk does not change
  EXPECT_EQ(read_pth(file("dict.pth")).at("emb.weight")[0][0].item<float>(), before);
}

TEST_F(TensorIoTest, RefusesGlobalsOtherThanTensorsAndDicts) {
  EXPECT_NE(
      error_of([] { read_pth(file("evil.pth")); })
          .find("global 'posix.system' is not allowed: only tensors, dicts and OrderedDicts are "
                "loaded (nothing from the file is executed)"),
      std::string::npos);
}

TEST_F(TensorIoTest, StorageShorterThanItsShapeIsAnError) {
  EXPECT_NE(error_of([] {
              read_pth(file("short.pth"));
            }).find("storage '0' claims 35 elements of 2 bytes but its record holds 35 bytes"),
            std::string::npos)
      << error_of([] { read_pth(file("short.pth")); });
}

TEST_F(TensorIoTest, TruncatedAndForeignFilesAreErrors) {
  const std::string bytes = testing::read_file(file("dict.pth"));
  auto truncated = testing::write_file(file("truncated.pth"), bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(error_of([&] { read_pth(truncated); }).find("no end-of-directory record"),
            std::string::npos);
  auto chopped_tail = testing::write_file(file("chopped.pth"), bytes.substr(0, bytes.size() - 30));
  EXPECT_NE(error_of([&] { read_pth(chopped_tail); }).find(chopped_tail.string() + ": "),
            std::string::npos);
  auto text = testing::write_file(file("text.pth"), "hello, this is not a checkpoint");
  EXPECT_EQ(error_of([&] { read_pth(text); }),
            text.string() +
                ": not a PyTorch .pth file (expected a zip archive, found other bytes; "
                "legacy non-zip torch.save files are not supported)");
  EXPECT_EQ(error_of([&] { read_tensor_file(text); }),
            text.string() + ": neither a PyTorch .pth (zip) file nor a safetensors file");
}

std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_bytes, '\x01');
}

TEST_F(TensorIoTest, SafetensorsHeaderRulesAreEnforced) {
  auto check = [&](const std::string& name, const std::string& header, size_t data,
                   const std::string& expected) {
    auto path = testing::write_file(file(name), safetensors_bytes(header, data));
    EXPECT_EQ(error_of([&] { read_safetensors(path); }), path.string() + ": " + expected);
  };
  check(
      "overlap.safetensors",
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      12, "tensor 'b' overlaps the tensor before it (bytes 4 to 8)");
  check("hole.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8,
        "the data buffer has a hole of 4 bytes before tensor 'a'");
  check("tail.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 6,
        "2 bytes after the last tensor belong to no tensor");
  check("size.safetensors", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8,
        "tensor 'a': data_offsets [0, 8] hold 8 bytes but shape and dtype need 12");
  check(
      "past.safetensors", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})", 8,
      "tensor 'a': data_offsets end 12 lies past the data buffer (8 bytes; the file is truncated)");
  check(
      "dup.safetensors",
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
      8,
      "safetensors header: the key 'a' appears twice in one object; which value counts would be a "
      "guess, so "
      "the file is refused");
  check("dtype.safetensors", R"({"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1,
        "tensor 'a' has dtype 'F4', which is not supported");
  check("meta.safetensors", R"({"__metadata__":{"n":1}})", 0,
        "__metadata__ value of 'n' is not a string");
  check("brace.safetensors", R"( {"a":1})", 0, "safetensors header must start with '{'");
  auto huge = testing::write_file(
      file("huge.safetensors"),
      safetensors_bytes("{}", 0).replace(0, 8, std::string("\xff\xff\xff\x7f\0\0\0\0", 8)));
  EXPECT_NE(error_of([&] { read_safetensors(huge); }).find("exceeds the limit"), std::string::npos);
}

// Issue 14 item 15: a key named twice inside a tensor's entry used to be accepted, the last one
// winning; and headers nest three levels at most (a 98 MB header of nested arrays took 4 GB).
TEST_F(TensorIoTest, SafetensorsDuplicatesAtEveryLevelAndDeepNestingAreRefused) {
  auto error = [&](const std::string& name, const std::string& header, size_t data) {
    auto path = testing::write_file(file(name), safetensors_bytes(header, data));
    return error_of([&] { read_safetensors(path); }).substr(path.string().size());
  };
  EXPECT_EQ(error("inner.safetensors",
                  R"({"a":{"dtype":"F64","dtype":"BF16","shape":[1],"data_offsets":[0,2]}})", 2),
            ": safetensors header: the key 'dtype' appears twice in one object; which value counts "
            "would be a guess, "
            "so the file is refused");
  EXPECT_EQ(
      error("meta-twice.safetensors", R"({"__metadata__":{"k":"1","k":"2"}})", 0).substr(0, 47),
      ": safetensors header: the key 'k' appears twice");
  const std::string deep = "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_EQ(error("deep.safetensors", deep, 0).substr(0, 58),
            ": safetensors header: JSON nests deeper than 3 levels (at ");
  EXPECT_EQ(
      error("overflow.safetensors",
            R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4),
      ": tensor 'a': shape [4294967296,4294967296] holds more than 2^63 elements");
  EXPECT_EQ(
      error("zero-overflow.safetensors",
            R"({"a":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})", 0),
      ": tensor 'a': shape [0,4294967296,4294967296] holds more than 2^63 elements");
  EXPECT_EQ(
      error("negative.safetensors",
            R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]}})", 4),
      ": tensor 'a': shape entries must be non-negative 64-bit integers");
}

// A data.pkl built by hand: protocol 2, the opcodes torch.save writes.
class Pickle {
 public:
  Pickle& op(const std::string& bytes) {
    out += bytes;
    return *this;
  }
  Pickle& text(const std::string& s) {
    const uint32_t n = static_cast<uint32_t>(s.size());
    out += 'X';
    out.append(reinterpret_cast<const char*>(&n), 4);
    out += s;
    return *this;
  }
  Pickle& integer(int64_t v) {
    out += '\x8a';  // LONG1, 8 bytes
    out += '\x08';
    out.append(reinterpret_cast<const char*>(&v), 8);
    return *this;
  }
  Pickle& ints(const std::vector<int64_t>& values) {
    out += '(';
    for (int64_t v : values) integer(v);
    out += 't';
    return *this;
  }
  // name -> _rebuild_tensor_v2(storage `key` of `storage_class`, offset, sizes, strides)
  Pickle& tensor(const std::string& name, const std::string& storage_class, int64_t numel,
                 int64_t offset, const std::vector<int64_t>& sizes,
                 const std::vector<int64_t>& strides) {
    text(name).op("ctorch._utils\n_rebuild_tensor_v2\n((").text("storage");
    op("c" + storage_class + "\n").text("0").text("cpu").integer(numel).op("tQ").integer(offset);
    return ints(sizes).ints(strides).op(
        "\x89"
        "ccollections\nOrderedDict\n)RtR");
  }
  std::string out = "\x80\x02";
};

std::filesystem::path write_pickle(const std::filesystem::path& path, const std::string& pickle,
                                   size_t storage_bytes = 64) {
  std::FILE* out = std::fopen(path.c_str(), "wb");
  io::ZipWriter zip(out, path);
  zip.add("archive/data.pkl", pickle.data(), pickle.size());
  const std::string storage(storage_bytes, '\0');
  zip.add("archive/data/0", storage.data(), storage.size());
  zip.finish();
  std::fclose(out);
  return path;
}

// Issue 14 items 1 and 2: self-referential, shared and deeply nested pickles used to recurse
// forever or overflow the stack; each is now a clear error, in bounded memory.
TEST_F(TensorIoTest, CyclicSharedAndDeepPicklesAreRefused) {
  EXPECT_EQ(error_of([] { read_pth(file("cycle.pth")); }),
            file("cycle.pth").string() +
                ": 'self' is a dict that already appears elsewhere in data.pkl (a cycle or "
                "a shared sub-dict); a state dict is a tree of dicts of tensors");
  // {"a": d, "b": d} with one d: flattening it twice per level would multiply the work.
  const Pickle shared = Pickle().op("}(").text("a").op("}q\x01").text("b").op(
      "h\x01"
      "u.");
  EXPECT_NE(error_of([&] {
              read_pth(write_pickle(file("shared.pth"), shared.out));
            }).find("'b' is a dict that already appears elsewhere"),
            std::string::npos);
  // Dicts nested 50,000 deep and lists nested 1,000,000 deep (about 1 MB each).
  Pickle dicts = Pickle().op("}");
  for (int i = 0; i < 50000; ++i) dicts.text("a").op("}");
  dicts.op(std::string(50000, 's') + ".");
  EXPECT_NE(error_of([&] {
              read_pth(write_pickle(file("deep-dicts.pth"), dicts.out));
            }).find("dicts nest deeper than 64 levels"),
            std::string::npos);
  const Pickle lists =
      Pickle().op("}").text("a").op(std::string(1000000, ']') + std::string(999999, 'a') + "s.");
  EXPECT_NE(error_of([&] {
              read_pth(write_pickle(file("deep-lists.pth"), lists.out));
            }).find("the pickle builds more than"),
            std::string::npos);
}

// Issue 14 item 22: crafted tensor headers used to end in "internal error" (map::at, "Stride
// calculation overflowed", huge allocations); each is now an error naming the file.
TEST_F(TensorIoTest, CraftedTensorHeadersGivePreciseErrors) {
  auto error = [&](const std::string& name, const Pickle& pickle) {
    return error_of([&] { read_pth(write_pickle(file(name), pickle.out + "u.")); });
  };
  auto dict = [] { return Pickle().op("}("); };
  EXPECT_NE(error("strides.pth",
                  dict().tensor("w", "torch\nFloatStorage", 16, 0,
                                {int64_t{1} << 40, int64_t{1} << 40}, {int64_t{1} << 40, 1}))
                .find("overflows 64-bit sizes"),
            std::string::npos);
  EXPECT_NE(
      error("empty-overflow.pth", dict().tensor("w", "torch\nFloatStorage", 16, 0,
                                                {0, int64_t{1} << 40, int64_t{1} << 40}, {1, 1, 1}))
          .find("overflows 64-bit sizes"),
      std::string::npos);
  EXPECT_NE(
      error("storage-class.pth", dict().tensor("w", "collections\nOrderedDict", 16, 0, {4}, {1}))
          .find("'collections.OrderedDict' is not a torch storage class"),
      std::string::npos);
  EXPECT_NE(
      error("numel.pth", dict().tensor("w", "torch\nFloatStorage", int64_t{1} << 62, 0, {4}, {1}))
          .find("storage '0' claims 4611686018427387904 elements of 4 bytes but its record holds "
                "64 bytes"),
      std::string::npos);
  EXPECT_EQ(
      read_pth(
          write_pickle(file("fine.pth"),
                       dict().tensor("w", "torch\nFloatStorage", 16, 0, {4, 4}, {4, 1}).out + "u."))
          .at("w")
          .sizes(),
      at::IntArrayRef({4, 4}));
}

// Issue 14 item 10: CRC-32s are verified: data.pkl always, every record when asked (checkpoints,
// adapters); a flipped bit is an error naming the entry.
TEST_F(TensorIoTest, DamagedRecordsAreFoundByTheirCrc) {
  testing::TempDir dir;
  write_pth(dir / "x.pth", TensorMap{{"a", at::arange(64, at::kFloat)}});
  std::string bytes = testing::read_file(dir / "x.pth");
  const size_t at = bytes.find(std::string("\x00\x00\x80\x3f", 4));  // the float 1.0 in the storage
  ASSERT_NE(at, std::string::npos);
  bytes[at + 1] ^= 0x10;
  auto damaged = testing::write_file(dir / "damaged.pth", bytes);
  EXPECT_EQ(read_pth(damaged).at("a").numel(), 64);  // lazy loading reads no more than it must
  EXPECT_NE(
      error_of([&] {
        read_pth(damaged, Checksums::kVerify);
      }).find(damaged.string() + ": entry 'archive/data/0' is damaged (its bytes give CRC-32 "),
      std::string::npos)
      << error_of([&] { read_pth(damaged, Checksums::kVerify); });
  std::string pickle_damaged = testing::read_file(dir / "x.pth");
  pickle_damaged[pickle_damaged.find("rebuild") + 2] ^= 0x01;
  auto broken = testing::write_file(dir / "pickle.pth", pickle_damaged);
  EXPECT_NE(error_of([&] { read_pth(broken); }).find("entry 'archive/data.pkl' is damaged"),
            std::string::npos);
}

TEST(Crc32, MatchesTheStandardCheckValueAndZlibOnEveryLength) {
  EXPECT_EQ(io::crc32("123456789", 9), 0xCBF43926u);  // the CRC-32/ISO-HDLC check value
  // Lengths around the 8-byte stride against Python's zlib.crc32.
  std::string bytes;
  for (int i = 0; i < 37; ++i) bytes += static_cast<char>(i * 29 + 7);
  std::string expected_list;
  auto result =
      testing::run_command(std::string(PEFTKIT_PYTHON) +
                           " -c \"import zlib; b = bytes((i * 29 + 7) % 256 for i in range(37)); "
                           "print(' '.join(str(zlib.crc32(b[:n])) for n in range(38)))\"");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  std::istringstream values(result.output);
  for (size_t n = 0; n <= bytes.size(); ++n) {
    uint64_t want = 0;
    values >> want;
    EXPECT_EQ(io::crc32(bytes.data(), n), want) << n;
  }
}

TEST_F(TensorIoTest, WritesAreAtomicAndLeaveNoTemporaryFiles) {
  testing::TempDir dir;
  TensorMap tensors{{"a", at::ones({3})}};
  write_pth(dir / "x.pth", tensors);
  write_pth(dir / "x.pth", TensorMap{{"a", at::zeros({3})}});  // replaces in place
  EXPECT_TRUE(at::equal(read_pth(dir / "x.pth").at("a"), at::zeros({3})));
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    files += entry.is_regular_file();
  EXPECT_EQ(files, 1u);
  EXPECT_TRUE(testing::throws_with([&] { write_pth(dir / "missing-folder" / "x.pth", tensors); },
                                   "missing-folder/x.pth: cannot create "));
}

}  // namespace
}  // namespace peftkit
