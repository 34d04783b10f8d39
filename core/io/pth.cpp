// .pth files: PyTorch's zip archive holding data.pkl (a pickled dict of tensors) and one entry per
// storage (data/<key>). The reader runs a small pickle machine that knows only the data-only
// subset torch.load(weights_only=True) accepts; any other opcode or global is refused, never run.
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <unordered_set>
#include <variant>

#include "io/mapped_file.hpp"
#include "io/pth_file.hpp"
#include "io/strict_json.hpp"
#include "io/zip_archive.hpp"
#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"

namespace peftkit {
namespace {

using io::MappedFile;

// ---------------------------------------------------------------------------------------------
// Pickle values: just what state dicts are made of. They live in an arena owned by the unpickler
// and refer to each other by plain pointers, so a self-referential pickle cannot leak and a deeply
// nested one is destroyed without recursion.
struct Value;
struct Global {
  std::string module, name;
};
struct StorageRef {
  at::ScalarType dtype;
  std::string key;
  int64_t numel;
};
struct Mark {};
struct Dict {
  std::vector<std::pair<Value*, Value*>> items;
};
struct List {
  std::vector<Value*> items;
};
struct Tuple {
  std::vector<Value*> items;
};
struct Value {
  std::variant<std::monostate, bool, int64_t, double, std::string, Tuple, List, Dict, Global,
               StorageRef, at::Tensor, Mark>
      v;
};

// Bounds on what a data.pkl may build (README, "Limits"): a state dict holds a few values per
// tensor, so a pickle that builds far more than one value per four of its bytes, or nests dicts
// deeper than this, is not one.
constexpr int64_t kMaxDictDepth = 64;
int64_t max_pickle_values(size_t pickle_bytes) {
  return 65536 + static_cast<int64_t>(pickle_bytes / 4);
}

const std::map<std::string, at::ScalarType>& storage_types() {
  static const std::map<std::string, at::ScalarType> types = {
      {"FloatStorage", at::kFloat},       {"HalfStorage", at::kHalf},
      {"BFloat16Storage", at::kBFloat16}, {"DoubleStorage", at::kDouble},
      {"LongStorage", at::kLong},         {"IntStorage", at::kInt},
      {"ShortStorage", at::kShort},       {"CharStorage", at::kChar},
      {"ByteStorage", at::kByte},         {"BoolStorage", at::kBool},
  };
  return types;
}

class Unpickler {
 public:
  Unpickler(const std::string& where, const uint8_t* data, size_t size,
            std::function<at::Tensor(const StorageRef&)> load_storage)
      : where_(where),
        data_(data),
        size_(size),
        max_values_(max_pickle_values(size)),
        load_storage_(std::move(load_storage)) {}

  // The root value; it lives as long as this unpickler.
  Value* run() {
    while (true) {
      const size_t at_opcode = pos_;
      const uint8_t op = byte();
      switch (op) {
        case 0x80:
          byte();
          break;  // PROTO
        case 0x95:
          fixed<uint64_t>();
          break;  // FRAME
        case '.':
          return pop(at_opcode);  // STOP
        case '(':
          stack_.push_back(make(Mark{}));
          break;
        case '}':
          stack_.push_back(make(Dict{}));
          break;
        case ']':
          stack_.push_back(make(List{}));
          break;
        case ')':
          stack_.push_back(make(Tuple{}));
          break;
        case 'N':
          stack_.push_back(make(std::monostate{}));
          break;
        case 0x88:
          stack_.push_back(make(true));
          break;  // NEWTRUE
        case 0x89:
          stack_.push_back(make(false));
          break;  // NEWFALSE
        case 'K':
          stack_.push_back(make(int64_t{byte()}));
          break;
        case 'M':
          stack_.push_back(make(int64_t{fixed<uint16_t>()}));
          break;
        case 'J':
          stack_.push_back(make(int64_t{fixed<int32_t>()}));
          break;
        case 0x8a:
          stack_.push_back(make(long1(at_opcode)));
          break;     // LONG1
        case 'G': {  // BINFLOAT, big-endian
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | byte();
          double d;
          std::memcpy(&d, &bits, 8);
          stack_.push_back(make(d));
          break;
        }
        case 'X':
          stack_.push_back(make(text(fixed<uint32_t>())));
          break;
        case 0x8c:
          stack_.push_back(make(text(byte())));
          break;  // SHORT_BINUNICODE
        case 0x8d:
          stack_.push_back(make(text(fixed<uint64_t>())));
          break;  // BINUNICODE8
        case 't':
          stack_.push_back(make(Tuple{pop_to_mark(at_opcode)}));
          break;
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1..3
          std::vector<Value*> items(op - 0x84);
          for (size_t i = items.size(); i-- > 0;) items[i] = pop(at_opcode);
          stack_.push_back(make(Tuple{std::move(items)}));
          break;
        }
        case 'q':
          memo_[byte()] = top(at_opcode);
          break;  // BINPUT
        case 'r':
          memo_[fixed<uint32_t>()] = top(at_opcode);
          break;  // LONG_BINPUT
        case 0x94:
          memo_[memo_.size()] = top(at_opcode);
          break;  // MEMOIZE
        case 'h':
          stack_.push_back(memo(byte(), at_opcode));
          break;  // BINGET
        case 'j':
          stack_.push_back(memo(fixed<uint32_t>(), at_opcode));
          break;
        case 'c': {  // GLOBAL "module\nname\n"
          std::string module = line(), name = line();
          stack_.push_back(make(allowed_global(module, name, at_opcode)));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          std::string name = as_string(pop(at_opcode), at_opcode);
          std::string module = as_string(pop(at_opcode), at_opcode);
          stack_.push_back(make(allowed_global(module, name, at_opcode)));
          break;
        }
        case 'Q':
          stack_.push_back(persistent_load(pop(at_opcode), at_opcode));
          break;     // BINPERSID
        case 'R': {  // REDUCE
          Value* args = pop(at_opcode);
          Value* callable = pop(at_opcode);
          stack_.push_back(reduce(callable, args, at_opcode));
          break;
        }
        case 's': {  // SETITEM
          Value* value = pop(at_opcode);
          Value* key = pop(at_opcode);
          as<Dict>(top(at_opcode), "SETITEM on a non-dict", at_opcode)
              .items.emplace_back(key, value);
          break;
        }
        case 'u': {  // SETITEMS
          auto items = pop_to_mark(at_opcode);
          if (items.size() % 2) fail(at_opcode, "SETITEMS with an odd number of items");
          auto& dict = as<Dict>(top(at_opcode), "SETITEMS on a non-dict", at_opcode);
          for (size_t i = 0; i < items.size(); i += 2)
            dict.items.emplace_back(items[i], items[i + 1]);
          break;
        }
        case 'a': {  // APPEND
          Value* value = pop(at_opcode);
          as<List>(top(at_opcode), "APPEND to a non-list", at_opcode).items.push_back(value);
          break;
        }
        case 'e': {  // APPENDS
          auto items = pop_to_mark(at_opcode);
          auto& list = as<List>(top(at_opcode), "APPENDS to a non-list", at_opcode).items;
          list.insert(list.end(), items.begin(), items.end());
          break;
        }
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          fail(at_opcode, std::string("pickle opcode ") + hex +
                              " is not allowed (only the data-only subset that "
                              "torch.load(weights_only=True) accepts is read)");
        }
      }
    }
  }

 private:
  Value* make(auto&& x) {
    if (static_cast<int64_t>(values_.size()) >= max_values_)
      fail(pos_, "the pickle builds more than " + std::to_string(max_values_) + " values for its " +
                     std::to_string(size_) +
                     " bytes; a state dict needs far fewer (not a tensor file)");
    values_.emplace_back();
    values_.back().v = std::forward<decltype(x)>(x);
    return &values_.back();
  }
  [[noreturn]] void fail(size_t at, const std::string& message) const {
    throw Error(where_ + " at byte " + std::to_string(at) + ": " + message);
  }
  uint8_t byte() {
    if (pos_ >= size_) fail(pos_, "pickle data ends before STOP (truncated data.pkl)");
    return data_[pos_++];
  }
  template <class T>
  T fixed() {
    if (size_ - pos_ < sizeof(T))
      fail(pos_, "pickle data ends inside an argument (truncated data.pkl)");
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  std::string text(uint64_t length) {
    if (size_ - pos_ < length) fail(pos_, "pickle string runs past the end of data.pkl");
    std::string s(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return s;
  }
  std::string line() {
    std::string s;
    for (uint8_t c; (c = byte()) != '\n';) s += static_cast<char>(c);
    return s;
  }
  int64_t long1(size_t at) {
    const uint8_t n = byte();
    if (n > 8) fail(at, "integer of " + std::to_string(n) + " bytes is too large");
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t{byte()} << (8 * i);
    if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<int64_t>(v);
  }
  Value* pop(size_t at) {
    if (stack_.empty()) fail(at, "pickle stack underflow");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top(size_t at) {
    if (stack_.empty()) fail(at, "pickle stack underflow");
    return stack_.back();
  }
  std::vector<Value*> pop_to_mark(size_t at) {
    std::vector<Value*> items;
    while (true) {
      Value* v = pop(at);
      if (std::holds_alternative<Mark>(v->v)) break;
      items.push_back(v);
    }
    return {items.rbegin(), items.rend()};
  }
  Value* memo(uint64_t index, size_t at) {
    auto it = memo_.find(index);
    if (it == memo_.end())
      fail(at, "pickle memo entry " + std::to_string(index) + " is not defined");
    return it->second;
  }
  template <class T>
  T& as(Value* v, const char* what, size_t at) {
    if (auto* p = std::get_if<T>(&v->v)) return *p;
    fail(at, what);
  }
  std::string as_string(Value* v, size_t at) { return as<std::string>(v, "expected a string", at); }
  int64_t as_int(Value* v, size_t at) { return as<int64_t>(v, "expected an integer", at); }
  std::vector<int64_t> as_ints(Value* v, size_t at) {
    std::vector<int64_t> out;
    for (const auto& item : as<Tuple>(v, "expected a tuple of integers", at).items)
      out.push_back(as_int(item, at));
    return out;
  }

  Global allowed_global(const std::string& module, const std::string& name, size_t at) {
    const bool allowed = (module == "collections" && name == "OrderedDict") ||
                         (module == "torch._utils" &&
                          (name == "_rebuild_tensor_v2" || name == "_rebuild_parameter")) ||
                         (module == "torch" && storage_types().count(name));
    if (!allowed)
      fail(at, "global '" + module + "." + name +
                   "' is not allowed: only tensors, dicts and "
                   "OrderedDicts are loaded (nothing from the file is executed)");
    return {module, name};
  }

  Value* persistent_load(Value* id, size_t at) {
    const auto& items = as<Tuple>(id, "persistent id is not a tuple", at).items;
    if (items.size() != 5 || as_string(items[0], at) != "storage")
      fail(at, "persistent id is not ('storage', type, key, location, numel)");
    const Global& type = as<Global>(items[1], "storage type is not a torch storage class", at);
    auto dtype = storage_types().find(type.name);
    if (type.module != "torch" || dtype == storage_types().end())
      fail(at, "'" + type.module + "." + type.name + "' is not a torch storage class");
    return make(StorageRef{dtype->second, as_string(items[2], at), as_int(items[4], at)});
  }

  Value* reduce(Value* callable, Value* args_value, size_t at) {
    const Global& f = as<Global>(callable, "REDUCE of something that is not a known function", at);
    const auto& args = as<Tuple>(args_value, "REDUCE arguments are not a tuple", at).items;
    if (f.name == "OrderedDict") {
      if (!args.empty()) fail(at, "OrderedDict(...) with arguments is not supported");
      return make(Dict{});
    }
    if (f.name == "_rebuild_parameter") {
      if (args.size() < 1) fail(at, "_rebuild_parameter without arguments");
      as<at::Tensor>(args[0], "_rebuild_parameter of something that is not a tensor", at);
      return args[0];
    }
    if (f.name == "_rebuild_tensor_v2") {
      if (args.size() < 4)
        fail(at, "_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)");
      const StorageRef& ref = as<StorageRef>(args[0], "tensor without a storage", at);
      const int64_t offset = as_int(args[1], at);
      const auto sizes = as_ints(args[2], at);
      const auto strides = as_ints(args[3], at);
      if (sizes.size() != strides.size()) fail(at, "tensor size and stride have different ranks");
      at::Tensor storage = storage_for(ref);
      // The furthest element the view reaches must lie inside the storage; every product is
      // overflow-checked, since sizes and strides come from the file.
      int64_t last = offset, numel = 1;  // numel: of the non-zero sizes (strides must fit)
      bool empty = false;
      for (size_t d = 0; d < sizes.size(); ++d) {
        if (sizes[d] < 0 || strides[d] < 0) fail(at, "negative tensor size or stride");
        if (sizes[d] == 0) empty = true;
      }
      for (size_t d = 0; d < sizes.size(); ++d) {
        int64_t reach = 0;
        if (__builtin_mul_overflow(numel, std::max<int64_t>(1, sizes[d]), &numel) ||
            (!empty && (__builtin_mul_overflow(sizes[d] - 1, strides[d], &reach) ||
                        __builtin_add_overflow(last, reach, &last))))
          fail(at, "tensor with shape " + c10::str(at::IntArrayRef(sizes)) + " and stride " +
                       c10::str(at::IntArrayRef(strides)) + " overflows 64-bit sizes");
      }
      if (!empty && (offset < 0 || last >= storage.numel()))
        fail(at, "tensor with shape " + c10::str(at::IntArrayRef(sizes)) + " needs element " +
                     std::to_string(last) + " of storage '" + ref.key + "', which holds " +
                     std::to_string(storage.numel()) + " elements");
      if (empty) return make(at::empty(sizes, storage.options()));
      return make(storage.as_strided(sizes, strides, offset));
    }
    fail(at, "cannot call '" + f.module + "." + f.name + "'");
  }

  at::Tensor storage_for(const StorageRef& ref) {
    auto it = storages_.find(ref.key);
    if (it != storages_.end()) return it->second;
    at::Tensor storage = load_storage_(ref);
    storages_[ref.key] = storage;
    return storage;
  }

  std::string where_;
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  int64_t max_values_;
  std::deque<Value> values_;  // the arena: stable addresses, destroyed without recursion
  std::vector<Value*> stack_;
  std::map<uint64_t, Value*> memo_;
  std::map<std::string, at::Tensor> storages_;
  std::function<at::Tensor(const StorageRef&)> load_storage_;
};

// Flattens nested dicts into dotted names: {"model": {"emb.weight": t}} -> "model.emb.weight".
// Iterative, with the depth bounded and every dict visited once: a pickle whose dicts refer to
// themselves or share a sub-dict is refused instead of looping or multiplying.
void flatten(const Value& root, TensorMap& out, const std::string& where) {
  if (!std::holds_alternative<Dict>(root.v))
    throw Error(where + ": data.pkl does not hold a dict of tensors");
  struct Pending {
    const Dict* dict;
    std::string prefix;
    int64_t depth;
  };
  std::vector<Pending> pending{{&std::get<Dict>(root.v), "", 1}};
  std::unordered_set<const Dict*> seen{pending.front().dict};
  while (!pending.empty()) {
    Pending current = std::move(pending.back());
    pending.pop_back();
    for (const auto& [key_value, item] : current.dict->items) {
      const auto* key = std::get_if<std::string>(&key_value->v);
      if (!key) throw Error(where + ": a key of the state dict is not a string");
      const std::string name = current.prefix.empty() ? *key : current.prefix + "." + *key;
      if (name.size() > kMaxTensorNameBytes)
        throw Error(where + ": a tensor name of " + std::to_string(name.size()) + " bytes ('" +
                    name.substr(0, 64) + "...'); names of at most " +
                    std::to_string(kMaxTensorNameBytes) + " bytes are read");
      if (const auto* tensor = std::get_if<at::Tensor>(&item->v)) {
        if (!out.emplace(name, *tensor).second)
          throw Error(where + ": tensor '" + name + "' appears twice");
      } else if (const auto* dict = std::get_if<Dict>(&item->v)) {
        if (!seen.insert(dict).second)
          throw Error(where + ": '" + name +
                      "' is a dict that already appears elsewhere in data.pkl (a cycle "
                      "or a shared sub-dict); a state dict is a tree of dicts of tensors");
        if (current.depth + 1 > kMaxDictDepth)
          throw Error(where + ": dicts nest deeper than " + std::to_string(kMaxDictDepth) +
                      " levels at '" + name.substr(0, 200) + "...'");
        pending.push_back({dict, name, current.depth + 1});
      } else {
        throw Error(where + ": '" + name + "' is not a tensor or a dict of tensors");
      }
    }
  }
}

// The pickle that torch.save writes for a dict of tensors (protocol 2).
class PickleWriter {
 public:
  void op(uint8_t code) { out_ += static_cast<char>(code); }
  void text(const std::string& s) {
    op('X');
    raw<uint32_t>(static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      op(static_cast<uint8_t>(v));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      raw<int32_t>(static_cast<int32_t>(v));
    } else {
      op(0x8a);  // LONG1, 8 bytes little-endian two's complement
      op(8);
      raw<int64_t>(v);
    }
  }
  void global(const std::string& module, const std::string& name) {
    op('c');
    out_ += module + "\n" + name + "\n";
  }
  void int_tuple(at::IntArrayRef values) {
    if (values.empty()) return op(')');
    op('(');
    for (int64_t v : values) integer(v);
    op('t');
  }
  const std::string& bytes() const { return out_; }

 private:
  template <class T>
  void raw(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  std::string out_;
};

std::string storage_name(at::ScalarType dtype, const std::string& tensor_name) {
  for (const auto& [name, type] : storage_types())
    if (type == dtype) return name;
  throw Error("cannot save tensor '" + tensor_name + "' of dtype " +
              std::string(c10::toString(dtype)) + " in a .pth file");
}

// The archive record that holds a .pth's metadata (torch.load reads only the records it knows).
constexpr const char* kMetadataRecord = "peftkit.json";
constexpr size_t kMaxMetadataBytes = 1 << 20;

std::string metadata_json(const std::map<std::string, std::string>& metadata) {
  nlohmann::json object = nlohmann::json::object();
  for (const auto& [key, value] : metadata) object[key] = value;
  return object.dump();
}

std::map<std::string, std::string> parse_metadata(const uint8_t* data, uint64_t size,
                                                  const std::string& where) {
  if (size > kMaxMetadataBytes)
    throw Error(where + ": " + std::to_string(size) + " bytes of metadata, more than the " +
                std::to_string(kMaxMetadataBytes) + " peftkit writes at most");
  const nlohmann::json json =
      io::parse_strict_json(std::string_view(reinterpret_cast<const char*>(data), size), 2, where);
  if (!json.is_object()) throw Error(where + ": expected a JSON object of strings");
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : json.items()) {
    if (!value.is_string()) throw Error(where + ": the value of '" + key + "' is not a string");
    out[key] = value.get<std::string>();
  }
  return out;
}

}  // namespace

void write_pth(const std::filesystem::path& path, const TensorMap& tensors) {
  write_pth(path, tensors, {});
}

void write_pth(const std::filesystem::path& path, const TensorMap& tensors,
               const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> storages;
  PickleWriter pickle;
  pickle.op(0x80);  // PROTO 2
  pickle.op(2);
  pickle.op('}');
  pickle.op('(');
  for (const auto& [name, tensor] : tensors) {
    at::Tensor data = tensor.detach().to(at::kCPU).contiguous();
    const std::string key = std::to_string(storages.size());
    pickle.text(name);
    pickle.global("torch._utils", "_rebuild_tensor_v2");
    pickle.op('(');
    pickle.op('(');
    pickle.text("storage");
    pickle.global("torch", storage_name(data.scalar_type(), name));
    pickle.text(key);
    pickle.text("cpu");
    pickle.integer(data.numel());
    pickle.op('t');
    pickle.op('Q');  // BINPERSID
    pickle.integer(0);
    pickle.int_tuple(data.sizes());
    pickle.int_tuple(data.strides());
    pickle.op(0x89);  // requires_grad = False
    pickle.global("collections", "OrderedDict");
    pickle.op(')');
    pickle.op('R');
    pickle.op('t');
    pickle.op('R');
    storages.push_back(data);
  }
  pickle.op('u');
  pickle.op('.');
  io::write_file_atomically(path, [&](std::FILE* out) {
    io::ZipWriter zip(out, path);
    zip.add("archive/data.pkl", pickle.bytes().data(), pickle.bytes().size());
    zip.add("archive/byteorder", "little", 6);
    for (size_t i = 0; i < storages.size(); ++i)
      zip.add("archive/data/" + std::to_string(i), storages[i].data_ptr(), storages[i].nbytes());
    zip.add("archive/version", "3\n", 2);
    if (!metadata.empty()) {
      const std::string json = metadata_json(metadata);
      zip.add(std::string("archive/") + kMetadataRecord, json.data(), json.size());
    }
    zip.finish();
  });
}

TensorMap read_pth(const std::filesystem::path& path) { return read_pth(path, Checksums::kSkip); }

TensorMap read_pth(const std::filesystem::path& path, Checksums checksums) {
  return io::read_pth_file(path, checksums).tensors;
}

TensorFile io::read_pth_file(const std::filesystem::path& path, Checksums checksums) {
  const std::string where = path.string();
  auto file = MappedFile::open(path);
  if (file->size() < 4 || std::memcmp(file->data(), "PK\x03\x04", 4) != 0)
    throw Error(where +
                ": not a PyTorch .pth file (expected a zip archive, found other bytes; "
                "legacy non-zip torch.save files are not supported)");
  const auto entries = io::read_zip_directory(*file);
  const io::ZipEntry* pickle = nullptr;
  std::string prefix;
  for (const auto& e : entries) {
    if (e.name.size() >= 9 && e.name.ends_with("/data.pkl")) {
      pickle = &e;
      prefix = e.name.substr(0, e.name.size() - 8);
    }
  }
  if (!pickle) throw Error(where + ": the archive has no data.pkl record");
  std::map<std::string, const io::ZipEntry*> by_name;
  for (const auto& e : entries) {
    if (e.method != 0)
      throw Error(where + ": record '" + e.name + "' is compressed (method " +
                  std::to_string(e.method) + "); PyTorch writes stored records only");
    by_name[e.name] = &e;
  }
  if (auto it = by_name.find(prefix + "byteorder"); it != by_name.end()) {
    std::string order(reinterpret_cast<const char*>(file->data() + it->second->data_offset),
                      it->second->size);
    if (order != "little")
      throw Error(where + ": byte order '" + order + "' is not supported (expected little)");
  }
  auto load_storage = [&](const StorageRef& ref) {
    auto it = by_name.find(prefix + "data/" + ref.key);
    if (it == by_name.end()) throw Error(where + ": storage '" + ref.key + "' has no data record");
    const int64_t element_size = static_cast<int64_t>(c10::elementSize(ref.dtype));
    if (ref.numel < 0 ||
        static_cast<uint64_t>(ref.numel) > it->second->size / static_cast<uint64_t>(element_size))
      throw Error(where + ": storage '" + ref.key + "' claims " + std::to_string(ref.numel) +
                  " elements of " + std::to_string(element_size) + " bytes but its record holds " +
                  std::to_string(it->second->size) + " bytes");
    // A view of the mapping; the deleter keeps the mapping alive as long as any tensor uses it.
    void* data = file->data() + it->second->data_offset;
    return at::from_blob(
        data, {ref.numel}, [file](void*) {}, at::TensorOptions().dtype(ref.dtype));
  };
  io::verify_crc(*file, *pickle);
  if (checksums == Checksums::kVerify)
    for (const auto& e : entries) io::verify_crc(*file, e);
  Unpickler unpickler(where + ": data.pkl", file->data() + pickle->data_offset, pickle->size,
                      load_storage);
  const Value* root = unpickler.run();
  TensorFile out;
  flatten(*root, out.tensors, where);
  if (auto it = by_name.find(prefix + kMetadataRecord); it != by_name.end())
    out.metadata = parse_metadata(file->data() + it->second->data_offset, it->second->size,
                                  where + ": " + kMetadataRecord);
  return out;
}

}  // namespace peftkit
