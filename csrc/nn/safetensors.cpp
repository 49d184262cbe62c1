// A safetensors reader for qatkit's model files (docs/format.md): the container a LibTorch program
// loads exported weights from. The input is untrusted: every length, shape and offset is checked
// before it is used (header length inside the file and at most 100 MB, valid UTF-8; dtype known; each dimension
// non-negative and the element count free of overflow; offsets inside the data section, ordered,
// non-overlapping, covering it without a gap or trailing bytes, and exactly as long as dtype x
// shape); any violation is a ValueError naming the file and the tensor, never a read out of bounds
// (tests/cpp/test_safetensors.cpp feeds it truncated, oversized and hostile headers;
// scripts/sanitize.sh runs it under ASan/UBSan).
#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <limits>

#include "json.h"
#include "qatkit/nn.h"

namespace qatkit::nn {
namespace {

constexpr std::uint64_t kMaxHeader = 100ull << 20;

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  std::size_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo& dtype_of(at::ScalarType t, const std::string& where) {
  for (const auto& d : kDtypes) {
    if (d.type == t) return d;
  }
  TORCH_CHECK_TYPE(false, fmt::format("{}: dtype {} cannot be stored in a safetensors file", where, c10::toString(t)));
}

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

TensorFile parse_safetensors(const std::uint8_t* data, std::size_t size, const std::string& source) {
  const auto fail = [&](const std::string& msg) { TORCH_CHECK_VALUE(false, fmt::format("{}: {}", source, msg)); };
  if (size < 8) fail(fmt::format("not a safetensors file: {} bytes, fewer than the 8-byte header length", size));
  const std::uint64_t n = read_u64_le(data);
  if (n > kMaxHeader) fail(fmt::format("header length {} exceeds the 100 MB limit", n));
  if (n > size - 8) fail(fmt::format("header length {} runs past the end of the file ({} bytes)", n, size));
  const std::string_view text(reinterpret_cast<const char*>(data + 8), static_cast<std::size_t>(n));
  if (const std::size_t bad = json::invalid_utf8_at(text); bad != std::string_view::npos) {
    fail(fmt::format("the header is not valid UTF-8 (byte {} of the header)", bad));
  }
  const json::Value header = json::parse(text, source);
  if (header.type != json::Value::Type::kObject) fail("the header must be a JSON object");
  const std::uint8_t* body = data + 8 + n;
  const std::uint64_t body_size = size - 8 - n;

  TensorFile out;
  struct Span {
    std::uint64_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;
  for (const auto& [name, entry] : header.object) {  // (the JSON parser refuses duplicate names)
    if (name == "__metadata__") {
      if (entry.type != json::Value::Type::kObject) fail("__metadata__ must be an object of strings");
      for (const auto& [k, v] : entry.object) out.metadata.emplace_back(k, v.as_string(source + ": __metadata__"));
      continue;
    }
    const std::string where = fmt::format("{}: tensor '{}'", source, name);
    if (entry.type != json::Value::Type::kObject) fail(fmt::format("tensor '{}' must be described by an object", name));
    const DtypeInfo* dt = find_dtype(entry.at("dtype", where).as_string(where));
    if (dt == nullptr) fail(fmt::format("tensor '{}' has an unsupported dtype '{}'", name, entry.at("dtype", where).string));
    const json::Value& shape_v = entry.at("shape", where);
    if (shape_v.type != json::Value::Type::kArray || shape_v.array.size() > 8) {
      fail(fmt::format("tensor '{}': shape must be an array of at most 8 dims", name));
    }
    std::vector<std::int64_t> shape;
    std::uint64_t numel = 1;
    for (const auto& d : shape_v.array) {
      const std::int64_t v = d.as_int(where + " shape");
      if (v < 0) fail(fmt::format("tensor '{}': negative dimension {}", name, v));
      if (v != 0 && numel > std::numeric_limits<std::uint64_t>::max() / static_cast<std::uint64_t>(v) / dt->size) {
        fail(fmt::format("tensor '{}': the shape's element count overflows", name));
      }
      numel *= static_cast<std::uint64_t>(v);
      shape.push_back(v);
    }
    const json::Value& off = entry.at("data_offsets", where);
    if (off.type != json::Value::Type::kArray || off.array.size() != 2) {
      fail(fmt::format("tensor '{}': data_offsets must be [begin, end]", name));
    }
    const std::int64_t b = off.array[0].as_int(where), e = off.array[1].as_int(where);
    if (b < 0 || e < b || static_cast<std::uint64_t>(e) > body_size) {
      fail(fmt::format("tensor '{}': data_offsets [{}, {}] outside the data section of {} bytes", name, b, e,
                       body_size));
    }
    if (static_cast<std::uint64_t>(e - b) != numel * dt->size) {
      fail(fmt::format("tensor '{}': {} bytes of data for {} elements of {} bytes", name, e - b, numel, dt->size));
    }
    spans.push_back({static_cast<std::uint64_t>(b), static_cast<std::uint64_t>(e), name});
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dt->type));
    if (numel > 0) std::memcpy(t.data_ptr(), body + b, static_cast<std::size_t>(e - b));
    out.tensors.emplace_back(name, std::move(t));
  }
  // (by begin, then end: an empty tensor at [k, k] comes before the tensor starting at k, as
  // safetensors' own reader orders them; sorted by begin alone it read as an overlap)
  std::sort(spans.begin(), spans.end(),
            [](const Span& x, const Span& y) { return x.begin != y.begin ? x.begin < y.begin : x.end < y.end; });
  for (std::size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[i - 1].end) {
      fail(fmt::format("tensors '{}' and '{}' overlap", spans[i - 1].name, spans[i].name));
    }
  }
  // The tensors cover the data section exactly, one after another from byte 0, as the format
  // requires (the safetensors library Python's loader reads with refuses a gap or trailing bytes:
  // "file not fully covered")
  std::uint64_t at = 0;
  for (const Span& sp : spans) {
    if (sp.begin != at) break;
    at = sp.end;
  }
  if (at != body_size) {
    fail(fmt::format("the tensors' data does not cover the data section of {} bytes exactly (a gap or trailing "
                     "bytes from byte {})", body_size, at));
  }
  return out;
}

TensorFile read_safetensors(const std::string& path) {
  // a regular file (or a symlink to one): a directory opened as a stream reports a size near 2^63
  // at its end, and the buffer for it threw std::bad_alloc, which ended the program (2026-12-07)
  std::error_code ec;
  const bool exists = std::filesystem::exists(path, ec);
  TORCH_CHECK_VALUE(!exists || std::filesystem::is_regular_file(path, ec),
                    fmt::format("read_safetensors: '{}' is not a file", path));
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  TORCH_CHECK_VALUE(f.good(), fmt::format("read_safetensors: cannot open '{}'", path));
  const std::streamoff size = f.tellg();
  TORCH_CHECK_VALUE(size >= 0, fmt::format("read_safetensors: cannot read '{}'", path));
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  f.seekg(0);
  if (size > 0) f.read(reinterpret_cast<char*>(bytes.data()), size);
  TORCH_CHECK_VALUE(f.good() || size == 0, fmt::format("read_safetensors: cannot read '{}'", path));
  return parse_safetensors(bytes.data(), bytes.size(), path);
}

void write_safetensors(const std::string& path, const TensorFile& file) {
  json::Value header;
  header.type = json::Value::Type::kObject;
  if (!file.metadata.empty()) {
    json::Value meta;
    meta.type = json::Value::Type::kObject;
    for (const auto& [k, v] : file.metadata) meta.set(k, json::Value::of(v));
    header.set("__metadata__", meta);
  }
  // The data in order of element size, largest first (stable), as the safetensors library lays it
  // out: from the 8-byte aligned data section every tensor then starts at a multiple of its element
  // size, so a reader that maps the file (Python's safetensors) hands out aligned float pointers.
  // Written in the tensors' order before 2026-12-08, a float32 scale after an odd-sized uint8 weight
  // sat misaligned (UBSan: "load of misaligned address" in a kernel reading it). The header keeps
  // the tensors' order; the format requires no gaps, so ordering is the only way to align.
  std::vector<std::size_t> order(file.tensors.size());
  std::vector<torch::Tensor> data(file.tensors.size());
  std::vector<const DtypeInfo*> dts(file.tensors.size());
  for (std::size_t i = 0; i < file.tensors.size(); ++i) {
    const auto& [name, tensor] = file.tensors[i];
    dts[i] = &dtype_of(tensor.scalar_type(), fmt::format("write_safetensors: tensor '{}'", name));
    data[i] = tensor.detach().to(torch::kCPU).contiguous();
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return dts[a]->size > dts[b]->size; });
  std::vector<std::uint64_t> begin(file.tensors.size());
  std::uint64_t offset = 0;
  for (const std::size_t i : order) {
    begin[i] = offset;
    offset += static_cast<std::uint64_t>(data[i].numel()) * dts[i]->size;
  }
  for (std::size_t i = 0; i < file.tensors.size(); ++i) {
    const torch::Tensor& t = data[i];
    json::Value entry, shape, offs;
    entry.type = json::Value::Type::kObject;
    shape.type = offs.type = json::Value::Type::kArray;
    for (const auto d : t.sizes()) shape.array.push_back(json::Value::of(static_cast<std::int64_t>(d)));
    const std::uint64_t nbytes = static_cast<std::uint64_t>(t.numel()) * dts[i]->size;
    offs.array = {json::Value::of(static_cast<std::int64_t>(begin[i])),
                  json::Value::of(static_cast<std::int64_t>(begin[i] + nbytes))};
    entry.set("dtype", json::Value::of(dts[i]->name));
    entry.set("shape", shape);
    entry.set("data_offsets", offs);
    header.set(file.tensors[i].first, entry);
  }
  std::string text = json::dump(header);
  text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  // written beside the file, then moved over it in one step (std::rename: POSIX rename(2)), as
  // Python's writers do (serialization.replacing): a failed or interrupted write leaves the file
  // that was there, not a truncated one; a symlink at `path` is written through
  std::error_code ec;
  std::string real = path;
  if (std::filesystem::is_symlink(path, ec)) {
    const std::filesystem::path target = std::filesystem::canonical(path, ec);
    if (!ec) real = target.string();
  }
  const bool existed = std::filesystem::exists(real, ec);
  static std::atomic<std::uint64_t> writes{0};  // (two threads of one process writing one path)
  const std::string tmp = fmt::format("{}.{}-{}.tmp", real, static_cast<long>(::getpid()), writes++);
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    TORCH_CHECK_VALUE(f.good(), fmt::format("write_safetensors: cannot open '{}' for writing", path));
    std::uint8_t len[8];
    std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i, n >>= 8) len[i] = static_cast<std::uint8_t>(n & 255u);
    f.write(reinterpret_cast<const char*>(len), 8);
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const std::size_t i : order) {
      const torch::Tensor& t = data[i];
      f.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * t.element_size()));
    }
    f.close();
    if (!f.good()) {
      std::remove(tmp.c_str());
      TORCH_CHECK_VALUE(false, fmt::format("write_safetensors: writing '{}' failed", path));
    }
  }
  if (existed) {  // keep the replaced file's mode
    std::filesystem::permissions(tmp, std::filesystem::status(real, ec).permissions(), ec);
  }
  if (std::rename(tmp.c_str(), real.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    TORCH_CHECK_VALUE(false, fmt::format("write_safetensors: cannot replace '{}' ({})", path, why));
  }
}

}  // namespace qatkit::nn
