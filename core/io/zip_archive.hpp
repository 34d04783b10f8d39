// zip_archive.hpp (internal): the part of the zip format PyTorch's .pth files use — stored
// (uncompressed) entries, zip64 for large files, data aligned for direct mapping.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "io/mapped_file.hpp"

namespace peftkit::io {

struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // where the stored bytes start in the file
  uint64_t size = 0;
  uint16_t method = 0;  // 0 = stored
  uint32_t crc = 0;     // CRC-32 of the stored bytes, as the central directory records it
};

// Lists the entries; throws peftkit::Error naming the file on a truncated or malformed archive
// (or one that names an entry twice).
std::vector<ZipEntry> read_zip_directory(const MappedFile& file);

class ZipWriter {
 public:
  // path: the file being written, for messages.
  ZipWriter(std::FILE* out, std::filesystem::path path) : out_(out), path_(std::move(path)) {}
  // Appends a stored entry whose data starts at a multiple of 64 bytes.
  void add(const std::string& name, const void* data, uint64_t size);
  // Writes the central directory.
  void finish();

 private:
  struct Written {
    std::string name;
    uint64_t header_offset;
    uint64_t size;
    uint32_t crc;
  };
  void put(const void* data, size_t size);
  std::FILE* out_;
  std::filesystem::path path_;
  uint64_t offset_ = 0;
  std::vector<Written> written_;
};

uint32_t crc32(const void* data, uint64_t size);

// Throws peftkit::Error naming the file and the entry when the entry's bytes do not match its CRC.
void verify_crc(const MappedFile& file, const ZipEntry& entry);

}  // namespace peftkit::io
