#include "io/zip_archive.hpp"

#include <array>
#include <cstring>
#include <set>

#include "io/little_endian.hpp"
#include "peftkit/error.hpp"

namespace peftkit::io {
namespace {

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndOfDirectory = 0x06054b50;
constexpr uint32_t kZip64EndOfDirectory = 0x06064b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kPaddingExtraId = 0x4246;  // "FB", the id PyTorch uses for alignment padding
constexpr uint64_t kAlignment = 64;

// Bounds-checked little-endian reads from the mapped file.
class Cursor {
 public:
  Cursor(const MappedFile& file) : file_(file) {}
  template <class T>
  T read(uint64_t offset, const char* what) const {
    if (offset > file_.size() || file_.size() - offset < sizeof(T))
      throw Error(file_.path().string() + ": truncated zip archive (" + what + " at byte " +
                  std::to_string(offset) + " lies past the end of the " +
                  std::to_string(file_.size()) + "-byte file)");
    T value;
    std::memcpy(&value, file_.data() + offset, sizeof(T));
    return value;
  }
  std::string text(uint64_t offset, uint64_t length, const char* what) const {
    if (offset > file_.size() || file_.size() - offset < length)
      throw Error(file_.path().string() + ": truncated zip archive (" + what + ")");
    return std::string(reinterpret_cast<const char*>(file_.data() + offset), length);
  }

 private:
  const MappedFile& file_;
};

// Slicing-by-8 tables: table[k][b] is the CRC of byte b followed by k zero bytes, so eight input
// bytes are folded per step (checkpoints of gigabytes are written every save).
const std::array<std::array<uint32_t, 256>, 8>& crc_tables() {
  static const auto tables = [] {
    std::array<std::array<uint32_t, 256>, 8> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
    return t;
  }();
  return tables;
}

}  // namespace

uint32_t crc32(const void* data, uint64_t size) {
  const auto& t = crc_tables();
  uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint32_t low, high;
    std::memcpy(&low, p + i, 4);
    std::memcpy(&high, p + i + 4, 4);
    low ^= c;  // little-endian: the first byte is the lowest
    c = t[7][low & 0xFF] ^ t[6][(low >> 8) & 0xFF] ^ t[5][(low >> 16) & 0xFF] ^ t[4][low >> 24] ^
        t[3][high & 0xFF] ^ t[2][(high >> 8) & 0xFF] ^ t[1][(high >> 16) & 0xFF] ^ t[0][high >> 24];
  }
  for (; i < size; ++i) c = t[0][(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::vector<ZipEntry> read_zip_directory(const MappedFile& file) {
  const std::string where = file.path().string();
  Cursor cursor(file);
  if (file.size() < 22) throw Error(where + ": truncated zip archive (no end-of-directory record)");
  // The end-of-directory record sits in the last 22 + 65535 (comment) bytes.
  uint64_t eocd = 0;
  bool found = false;
  const uint64_t lowest = file.size() > 22 + 65535 ? file.size() - 22 - 65535 : 0;
  for (uint64_t p = file.size() - 22 + 1; p-- > lowest;) {
    if (cursor.read<uint32_t>(p, "end-of-directory record") == kEndOfDirectory) {
      eocd = p;
      found = true;
      break;
    }
  }
  if (!found)
    throw Error(where + ": not a zip archive or truncated (no end-of-directory record found)");
  uint64_t count = cursor.read<uint16_t>(eocd + 10, "entry count");
  uint64_t directory_offset = cursor.read<uint32_t>(eocd + 16, "directory offset");
  if (count == 0xFFFF || directory_offset == 0xFFFFFFFF) {
    if (eocd < 20 || cursor.read<uint32_t>(eocd - 20, "zip64 locator") != kZip64Locator)
      throw Error(where + ": zip64 archive without a zip64 end-of-directory locator");
    const uint64_t eocd64 = cursor.read<uint64_t>(eocd - 20 + 8, "zip64 record offset");
    if (cursor.read<uint32_t>(eocd64, "zip64 end-of-directory record") != kZip64EndOfDirectory)
      throw Error(where + ": bad zip64 end-of-directory record");
    count = cursor.read<uint64_t>(eocd64 + 32, "zip64 entry count");
    directory_offset = cursor.read<uint64_t>(eocd64 + 48, "zip64 directory offset");
  }

  std::vector<ZipEntry> entries;
  std::set<std::string> names;
  uint64_t p = directory_offset;
  for (uint64_t i = 0; i < count; ++i) {
    if (cursor.read<uint32_t>(p, "central directory entry") != kCentralHeader)
      throw Error(where + ": malformed zip central directory (entry " + std::to_string(i) +
                  " at byte " + std::to_string(p) + ")");
    ZipEntry entry;
    entry.method = cursor.read<uint16_t>(p + 10, "compression method");
    entry.crc = cursor.read<uint32_t>(p + 16, "CRC-32");
    uint64_t compressed = cursor.read<uint32_t>(p + 20, "compressed size");
    uint64_t size = cursor.read<uint32_t>(p + 24, "size");
    const uint16_t name_length = cursor.read<uint16_t>(p + 28, "name length");
    const uint16_t extra_length = cursor.read<uint16_t>(p + 30, "extra length");
    const uint16_t comment_length = cursor.read<uint16_t>(p + 32, "comment length");
    uint64_t header_offset = cursor.read<uint32_t>(p + 42, "local header offset");
    entry.name = cursor.text(p + 46, name_length, "entry name");
    // Zip64 extra field: the 64-bit values of whichever fields are 0xFFFFFFFF, in this order.
    uint64_t extra = p + 46 + name_length;
    const uint64_t extra_end = extra + extra_length;
    while (extra + 4 <= extra_end) {
      const uint16_t id = cursor.read<uint16_t>(extra, "extra field");
      const uint16_t length = cursor.read<uint16_t>(extra + 2, "extra field");
      if (id == kZip64ExtraId) {
        uint64_t q = extra + 4;
        if (size == 0xFFFFFFFF) size = cursor.read<uint64_t>(q, "zip64 size"), q += 8;
        if (compressed == 0xFFFFFFFF) compressed = cursor.read<uint64_t>(q, "zip64 size"), q += 8;
        if (header_offset == 0xFFFFFFFF) header_offset = cursor.read<uint64_t>(q, "zip64 offset");
      }
      extra += 4 + length;
    }
    if (cursor.read<uint32_t>(header_offset, "local header") != kLocalHeader)
      throw Error(where + ": malformed zip archive (bad local header of '" + entry.name + "')");
    entry.data_offset = header_offset + 30 +
                        cursor.read<uint16_t>(header_offset + 26, "name length") +
                        cursor.read<uint16_t>(header_offset + 28, "extra length");
    entry.size = entry.method == 0 ? size : compressed;
    if (entry.data_offset > file.size() || file.size() - entry.data_offset < entry.size)
      throw Error(where + ": truncated zip archive ('" + entry.name + "' needs " +
                  std::to_string(entry.size) + " bytes at byte " +
                  std::to_string(entry.data_offset) + ", the file has " +
                  std::to_string(file.size()) + ")");
    if (!names.insert(entry.name).second)
      throw Error(where + ": malformed zip archive (entry '" + entry.name + "' appears twice)");
    entries.push_back(std::move(entry));
    p += 46 + name_length + extra_length + comment_length;
  }
  return entries;
}

void verify_crc(const MappedFile& file, const ZipEntry& entry) {
  const uint32_t actual = crc32(file.data() + entry.data_offset, entry.size);
  if (actual != entry.crc) {
    char text[96];
    std::snprintf(text, sizeof text, "CRC-32 %08x, the archive records %08x", actual, entry.crc);
    throw Error(file.path().string() + ": entry '" + entry.name + "' is damaged (its bytes give " +
                text + "): the file was corrupted after it was written");
  }
}

void ZipWriter::put(const void* data, size_t size) {
  write_all(out_, data, size, path_);
  offset_ += size;
}

void ZipWriter::add(const std::string& name, const void* data, uint64_t size) {
  const uint32_t crc = crc32(data, size);
  const bool zip64 = size >= 0xFFFFFFFFull;
  std::string header;
  append_le<uint32_t>(header, kLocalHeader);
  append_le<uint16_t>(header, zip64 ? 45 : 20);  // version needed
  append_le<uint16_t>(header, 0);                // flags
  append_le<uint16_t>(header, 0);                // stored
  append_le<uint16_t>(header, 0);                // time
  append_le<uint16_t>(header, 0x21);             // date: 1980-01-01
  append_le<uint32_t>(header, crc);
  append_le<uint32_t>(header, zip64 ? 0xFFFFFFFFu : static_cast<uint32_t>(size));
  append_le<uint32_t>(header, zip64 ? 0xFFFFFFFFu : static_cast<uint32_t>(size));
  append_le<uint16_t>(header, static_cast<uint16_t>(name.size()));
  std::string extra;
  if (zip64) {
    append_le<uint16_t>(extra, kZip64ExtraId);
    append_le<uint16_t>(extra, 16);
    append_le<uint64_t>(extra, size);
    append_le<uint64_t>(extra, size);
  }
  // Pad with an extra field so that the data starts at a multiple of 64 bytes.
  const uint64_t unpadded = offset_ + header.size() + 2 + name.size() + extra.size() + 4;
  const uint64_t padding = (kAlignment - unpadded % kAlignment) % kAlignment;
  append_le<uint16_t>(extra, kPaddingExtraId);
  append_le<uint16_t>(extra, static_cast<uint16_t>(padding));
  extra.append(padding, 'Z');
  append_le<uint16_t>(header, static_cast<uint16_t>(extra.size()));
  written_.push_back({name, offset_, size, crc});
  put(header.data(), header.size());
  put(name.data(), name.size());
  put(extra.data(), extra.size());
  put(data, size);
}

void ZipWriter::finish() {
  const uint64_t directory_offset = offset_;
  for (const auto& w : written_) {
    const bool zip64 = w.size >= 0xFFFFFFFFull || w.header_offset >= 0xFFFFFFFFull;
    std::string extra;
    if (zip64) {
      append_le<uint16_t>(extra, kZip64ExtraId);
      append_le<uint16_t>(extra, 24);
      append_le<uint64_t>(extra, w.size);
      append_le<uint64_t>(extra, w.size);
      append_le<uint64_t>(extra, w.header_offset);
    }
    std::string entry;
    append_le<uint32_t>(entry, kCentralHeader);
    append_le<uint16_t>(entry, 45);  // version made by
    append_le<uint16_t>(entry, zip64 ? 45 : 20);
    append_le<uint16_t>(entry, 0);
    append_le<uint16_t>(entry, 0);
    append_le<uint16_t>(entry, 0);
    append_le<uint16_t>(entry, 0x21);
    append_le<uint32_t>(entry, w.crc);
    append_le<uint32_t>(entry, zip64 ? 0xFFFFFFFFu : static_cast<uint32_t>(w.size));
    append_le<uint32_t>(entry, zip64 ? 0xFFFFFFFFu : static_cast<uint32_t>(w.size));
    append_le<uint16_t>(entry, static_cast<uint16_t>(w.name.size()));
    append_le<uint16_t>(entry, static_cast<uint16_t>(extra.size()));
    append_le<uint16_t>(entry, 0);  // comment
    append_le<uint16_t>(entry, 0);  // disk
    append_le<uint16_t>(entry, 0);  // internal attributes
    append_le<uint32_t>(entry, 0);  // external attributes
    append_le<uint32_t>(entry, zip64 ? 0xFFFFFFFFu : static_cast<uint32_t>(w.header_offset));
    put(entry.data(), entry.size());
    put(w.name.data(), w.name.size());
    put(extra.data(), extra.size());
  }
  const uint64_t directory_size = offset_ - directory_offset;
  const bool zip64 = written_.size() >= 0xFFFF || directory_offset >= 0xFFFFFFFFull;
  if (zip64) {
    const uint64_t record_offset = offset_;
    std::string record;
    append_le<uint32_t>(record, kZip64EndOfDirectory);
    append_le<uint64_t>(record, 44);  // size of the rest of this record
    append_le<uint16_t>(record, 45);
    append_le<uint16_t>(record, 45);
    append_le<uint32_t>(record, 0);
    append_le<uint32_t>(record, 0);
    append_le<uint64_t>(record, written_.size());
    append_le<uint64_t>(record, written_.size());
    append_le<uint64_t>(record, directory_size);
    append_le<uint64_t>(record, directory_offset);
    append_le<uint32_t>(record, kZip64Locator);
    append_le<uint32_t>(record, 0);
    append_le<uint64_t>(record, record_offset);
    append_le<uint32_t>(record, 1);
    put(record.data(), record.size());
  }
  std::string end;
  append_le<uint32_t>(end, kEndOfDirectory);
  append_le<uint16_t>(end, 0);
  append_le<uint16_t>(end, 0);
  append_le<uint16_t>(end, zip64 ? 0xFFFF : static_cast<uint16_t>(written_.size()));
  append_le<uint16_t>(end, zip64 ? 0xFFFF : static_cast<uint16_t>(written_.size()));
  append_le<uint32_t>(end, zip64 ? 0xFFFFFFFFu : static_cast<uint32_t>(directory_size));
  append_le<uint32_t>(end, zip64 ? 0xFFFFFFFFu : static_cast<uint32_t>(directory_offset));
  append_le<uint16_t>(end, 0);
  put(end.data(), end.size());
}

}  // namespace peftkit::io
