// Helpers shared by the test programs: temporary folders, files, and running a command.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace peftkit::testing {

// Deletes a folder tree. Not std::filesystem::remove_all: the torch wheel's libtorch.so exports
// its own copy of that function, which crashes where it wins symbol lookup (seen with Ubuntu's
// toolchain on the GPU machine).
inline void remove_tree(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(std::filesystem::symlink_status(path, ec))) {
    std::vector<std::filesystem::path> children;
    for (const auto& entry : std::filesystem::directory_iterator(path, ec))
      children.push_back(entry.path());
    for (const auto& child : children) remove_tree(child);
  }
  std::filesystem::remove(path, ec);
}

// A fresh folder under the system temp folder, removed with its contents afterwards.
class TempDir {
 public:
  TempDir() {
    std::random_device device;
    path_ = std::filesystem::temp_directory_path() /
            ("peftkit-test-" + std::to_string(::getpid()) + "-" + std::to_string(device()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { remove_tree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline std::filesystem::path write_file(const std::filesystem::path& path,
                                        const std::string& text) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs a shell command line and collects its output.
inline CommandResult run_command(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    result.output.append(buffer.data(), n);
  int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

#ifdef PEFTKIT_BINARY
// A command line running the peftkit program under test.
inline std::string peftkit_command(const std::string& args) {
  return std::string(PEFTKIT_BINARY) + " " + args;
}
#endif

// Passes when `action` throws an exception whose message contains `fragment`: a refusal must be
// the one expected, not any error (EXPECT_TRUE(throws_with([&] { ... }, "...")).
template <class Action>
::testing::AssertionResult throws_with(Action&& action, std::string_view fragment) {
  try {
    action();
  } catch (const std::exception& e) {
    if (std::string_view(e.what()).find(fragment) != std::string_view::npos)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "threw \"" << e.what() << "\", which does not contain \"" << fragment << "\"";
  }
  return ::testing::AssertionFailure() << "did not throw (expected \"" << fragment << "\")";
}

}  // namespace peftkit::testing
