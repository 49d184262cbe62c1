// The C++ safetensors reader / writer (csrc/nn/safetensors.cpp): round trips every dtype and the
// metadata exactly, and refuses truncated, oversized and hostile files with a ValueError naming
// the problem (never a read out of bounds: scripts/sanitize.sh runs this under ASan/UBSan).
#include <torch/torch.h>

#include "catch.h"
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "qatkit/nn.h"

namespace qnn = qatkit::nn;

namespace {

std::vector<std::uint8_t> file_bytes(const std::string& header, const std::vector<std::uint8_t>& body,
                                     std::uint64_t header_len_override = 0) {
  std::uint64_t n = header_len_override ? header_len_override : header.size();
  std::vector<std::uint8_t> out(8);
  for (int i = 0; i < 8; ++i, n >>= 8) out[i] = static_cast<std::uint8_t>(n & 255u);
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

qnn::TensorFile parse(const std::vector<std::uint8_t>& bytes) {
  return qnn::parse_safetensors(bytes.data(), bytes.size(), "test.safetensors");
}

}  // namespace

CATCH_TEST_CASE("safetensors round trip keeps every dtype, shape, value and the metadata", "[safetensors]") {
  torch::manual_seed(0);
  qnn::TensorFile f;
  f.tensors = {
      {"a.weight", torch::randn({3, 5})},
      {"a.packed", torch::randint(0, 255, {4, 7}, torch::kByte)},
      {"b.codes", torch::randint(-8, 7, {2, 9}, torch::kChar)},
      {"b.zp", torch::randint(-100, 100, {6}, torch::kInt)},
      {"c.half", torch::randn({2, 2}).to(torch::kHalf)},
      {"c.bf16", torch::randn({3}).to(torch::kBFloat16)},
      {"c.f64", torch::randn({1, 1, 2}, torch::kDouble)},
      {"c.long", torch::arange(5)},
      {"c.short", torch::arange(4).to(torch::kShort)},
      {"c.flag", torch::tensor({true, false})},
      {"empty", torch::zeros({0, 3})},
      {"scalar", torch::tensor(3.5)},
  };
  f.metadata = {{"qatkit", "{\"format_version\": 1}"}, {"note", "x"}};
  const std::string path = "qatkit_test_roundtrip.safetensors";
  qnn::write_safetensors(path, f);
  const qnn::TensorFile back = qnn::read_safetensors(path);
  std::remove(path.c_str());
  CATCH_REQUIRE(back.tensors.size() == f.tensors.size());
  for (std::size_t i = 0; i < f.tensors.size(); ++i) {
    CATCH_CHECK(back.tensors[i].first == f.tensors[i].first);
    CATCH_CHECK(back.tensors[i].second.scalar_type() == f.tensors[i].second.scalar_type());
    CATCH_CHECK(back.tensors[i].second.sizes() == f.tensors[i].second.sizes());
    CATCH_CHECK(torch::equal(back.tensors[i].second, f.tensors[i].second));
  }
  CATCH_CHECK(back.metadata == f.metadata);
}

CATCH_TEST_CASE("hostile safetensors files raise ValueError naming the problem", "[safetensors]") {
  const std::vector<std::uint8_t> body(16, 7);
  const auto one = [](const std::string& entry) { return "{\"t\": " + entry + "}"; };
  struct Case {
    const char* what;
    std::vector<std::uint8_t> bytes;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"empty file", {}, "fewer than the 8-byte header length"},
      {"short file", {1, 2, 3}, "fewer than the 8-byte header length"},
      {"header past the end", file_bytes("{}", body, 1000), "runs past the end of the file"},
      {"huge header length", file_bytes("{}", body, std::uint64_t{1} << 62), "exceeds the 100 MB limit"},
      {"not JSON", file_bytes("{nope", body), "test.safetensors"},
      {"not an object", file_bytes("[1, 2]", body), "the header must be a JSON object"},
      {"unknown dtype", file_bytes(one(R"({"dtype": "F8", "shape": [1], "data_offsets": [0, 1]})"), body),
       "unsupported dtype 'F8'"},
      {"negative dim", file_bytes(one(R"({"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]})"), body),
       "negative dimension -1"},
      {"overflowing shape",
       file_bytes(one(R"({"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 4]})"), body),
       "element count overflows"},
      {"offsets past the end", file_bytes(one(R"({"dtype": "U8", "shape": [32], "data_offsets": [0, 32]})"), body),
       "outside the data section of 16 bytes"},
      {"offsets reversed", file_bytes(one(R"({"dtype": "U8", "shape": [0], "data_offsets": [8, 4]})"), body),
       "outside the data section"},
      {"size mismatch", file_bytes(one(R"({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]})"), body),
       "4 bytes of data for 2 elements of 4 bytes"},
      {"overlap",
       file_bytes(R"({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                     "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}})",
                  body),
       "overlap"},
      {"duplicate name",
       file_bytes(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                     "a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                  body),
       "duplicate key 'a'"},
      {"metadata not strings", file_bytes(R"({"__metadata__": {"k": 1}})", body), "__metadata__"},
      {"missing offsets", file_bytes(one(R"({"dtype": "U8", "shape": [4]})"), body), "data_offsets"},
      {"too many dims", file_bytes(one(R"({"dtype": "U8", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 1]})"), body),
       "at most 8 dims"},
      // the format's rule (Python's safetensors: "file not fully covered"): no trailing bytes, no gap
      {"trailing bytes", file_bytes(one(R"({"dtype": "U8", "shape": [8], "data_offsets": [0, 8]})"), body),
       "does not cover the data section of 16 bytes exactly (a gap or trailing bytes from byte 8)"},
      {"a gap",
       file_bytes(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                     "b": {"dtype": "U8", "shape": [8], "data_offsets": [8, 16]}})",
                  body),
       "(a gap or trailing bytes from byte 4)"},
      {"a body and no tensors", file_bytes("{}", body), "(a gap or trailing bytes from byte 0)"},
      // the header is UTF-8 JSON (Python's safetensors refuses any other bytes): a lone continuation
      // byte, an overlong '/', a surrogate, a code point past U+10FFFF, a sequence cut short
      {"lone continuation byte", file_bytes("{\"__metadata__\": {\"k\": \"a\x84\"}}", {}),
       "the header is not valid UTF-8 (byte 25 of the header)"},
      {"overlong", file_bytes("{\"__metadata__\": {\"k\": \"\xC0\xAF\"}}", {}), "not valid UTF-8 (byte 24 of"},
      {"surrogate", file_bytes("{\"__metadata__\": {\"k\": \"\xED\xA0\x80\"}}", {}), "not valid UTF-8 (byte 24 of"},
      {"past U+10FFFF", file_bytes("{\"__metadata__\": {\"k\": \"\xF4\x90\x80\x80\"}}", {}),
       "not valid UTF-8 (byte 24 of"},
      {"cut short", file_bytes("{\"__metadata__\": {\"k\": \"\xE2\x82\"}}", {}), "not valid UTF-8 (byte 24 of"},
  };
  for (const auto& c : cases) {
    CATCH_INFO(c.what);
    CATCH_CHECK_THROWS_WITH(parse(c.bytes), Catch::Contains(c.message));
  }
  CATCH_CHECK_THROWS_WITH(qnn::read_safetensors("/nonexistent/dir/file.safetensors"), Catch::Contains("cannot open"));
  // a directory (std::bad_alloc ended the program: the stream reported a size near 2^63) or a
  // device is no file
  CATCH_CHECK_THROWS_WITH(qnn::read_safetensors(std::filesystem::temp_directory_path().string()),
                          Catch::Contains("is not a file"));
  CATCH_CHECK_THROWS_WITH(qnn::read_safetensors("/dev/null"), Catch::Contains("is not a file"));
  // well-formed UTF-8 of every length passes through as bytes: e-acute, the euro sign, an emoji
  const std::string text = "\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80";
  const qnn::TensorFile ok = parse(file_bytes("{\"__metadata__\": {\"k\": \"" + text + "\"}}", {}));
  CATCH_REQUIRE(ok.metadata.size() == 1);
  CATCH_CHECK(ok.metadata[0].second == text);
}

CATCH_TEST_CASE("empty tensors sit at any boundary of the data section", "[safetensors]") {
  // Python's safetensors writes an empty tensor at [k, k], k the next tensor's start, and reads it
  // back; sorted by start alone, [0, 0] after [0, 16] read as an overlap here (2026-12-07)
  const std::vector<std::uint8_t> body(16, 7);
  for (const char* names : {R"("a", "z")", R"("z", "a")"}) {
    CATCH_INFO(names);
    const std::string empty = std::string(names).substr(0, 3), full = std::string(names).substr(5, 3);
    for (const char* at : {"0, 0", "8, 8", "16, 16"}) {
      CATCH_INFO(at);
      const std::string header = "{" + full + R"(: {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}, "mid": )" +
                                 R"({"dtype": "U8", "shape": [8], "data_offsets": [8, 16]}, )" + empty +
                                 R"(: {"dtype": "F32", "shape": [0, 3], "data_offsets": [)" + at + "]}}";
      const qnn::TensorFile f = parse(file_bytes(header, body));
      CATCH_REQUIRE(f.tensors.size() == 3);
    }
    // an empty tensor inside another's bytes is still refused
    const std::string inside = "{" + full + R"(: {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}, )" + empty +
                               R"(: {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})";
    CATCH_CHECK_THROWS_WITH(parse(file_bytes(inside, body)), Catch::Contains("overlap"));
  }
}

CATCH_TEST_CASE("write_safetensors replaces a file in one step, through a symlink, keeping its mode", "[safetensors]") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("qatkit_replace_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  qnn::TensorFile a, b;
  a.tensors = {{"w", torch::arange(8, torch::kFloat)}};
  b.tensors = {{"w", torch::arange(16, torch::kFloat)}};
  const std::string file = (dir / "m.safetensors").string(), link = (dir / "link.safetensors").string();
  qnn::write_safetensors(file, a);
  fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  fs::create_symlink("m.safetensors", link);
  qnn::write_safetensors(link, b);
  CATCH_CHECK(fs::is_symlink(link));
  CATCH_CHECK(qnn::read_safetensors(file).tensors[0].second.numel() == 16);
  CATCH_CHECK((fs::status(file).permissions() & fs::perms::all) ==
              (fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read));
  // a directory that does not exist: refused, and nothing written
  CATCH_CHECK_THROWS_WITH(qnn::write_safetensors((dir / "no" / "m.safetensors").string(), a),
                          Catch::Contains("cannot open"));
  // a directory at the path: refused, naming why (Python's check_out_path refuses it up front)
  fs::create_directories(dir / "sub");
  CATCH_CHECK_THROWS_WITH(qnn::write_safetensors((dir / "sub").string(), a), Catch::Contains("Is a directory"));
  fs::remove(dir / "sub");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  CATCH_CHECK(names == std::vector<std::string>{"link.safetensors", "m.safetensors"});  // no temporary left
  fs::remove_all(dir);
}

CATCH_TEST_CASE("every truncation of a valid file is refused cleanly", "[safetensors]") {
  qnn::TensorFile f;
  f.tensors = {{"w", torch::randn({4, 4})}, {"p", torch::randint(0, 255, {3, 5}, torch::kByte)}};
  f.metadata = {{"qatkit", "{}"}};
  const std::string path = "qatkit_test_truncate.safetensors";
  qnn::write_safetensors(path, f);
  std::FILE* fp = std::fopen(path.c_str(), "rb");
  std::vector<std::uint8_t> bytes(4096);
  bytes.resize(std::fread(bytes.data(), 1, bytes.size(), fp));
  std::fclose(fp);
  std::remove(path.c_str());
  CATCH_REQUIRE(parse(bytes).tensors.size() == 2);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    const std::vector<std::uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    CATCH_INFO("truncated to " << n << " bytes");
    CATCH_CHECK_THROWS_AS(parse(cut), c10::ValueError);
  }
}

namespace {
struct OddImpl : torch::nn::Cloneable<OddImpl> {
  void reset() override {}
  torch::Tensor forward(torch::Tensor x) { return x * 2; }
};
TORCH_MODULE(Odd);

std::string save_error(const torch::nn::Sequential& m) {
  try {
    qatkit::nn::save(m, "/tmp/qatkit_save_refused.safetensors");
  } catch (const c10::ValueError& e) {
    return e.what_without_backtrace();
  }
  return "";
}
}  // namespace

CATCH_TEST_CASE("qatkit::nn::save round trips a QAT model and refuses what it cannot write", "[save]") {
  namespace nn = torch::nn;
  torch::manual_seed(0);
  nn::Sequential model(nn::Linear(16, 8), nn::ReLU(), nn::Linear(8, 4));
  model->eval();
  auto q = qatkit::nn::prepare_qat(model, qatkit::nn::QATConfig::preset("w8a8"));
  const torch::Tensor x = torch::randn({6, 16});
  qatkit::nn::calibrate(*q, {x}, [&](const torch::Tensor& b) { q->forward(b); });
  const std::string path = "/tmp/qatkit_save_roundtrip.safetensors";
  qatkit::nn::save(q, path);
  for (const auto& m : q->modules(false)) {  // the caller's model is not converted
    if (auto l = std::dynamic_pointer_cast<qatkit::nn::QuantLinearImpl>(m)) CATCH_CHECK(!l->converted());
  }
  qatkit::nn::convert(*q);
  torch::NoGradGuard ng;
  CATCH_CHECK(torch::equal(qatkit::nn::load(path, "float")->forward(x), q->forward(x)));
  // the default: integer kernels, as the converted model in integer compute (both Linears on linear_int8)
  CATCH_CHECK(qatkit::nn::set_compute(*q, "integer") == 2);
  CATCH_CHECK(torch::equal(qatkit::nn::load(path)->forward(x), q->forward(x)));
  CATCH_CHECK(qatkit::nn::set_compute(*q, "float") == 0);
  CATCH_CHECK_THROWS_WITH(qatkit::nn::set_compute(*q, "int8"), Catch::Contains("compute must be 'integer' or 'float'"));
  std::remove(path.c_str());

  CATCH_CHECK_THAT(save_error(model), Catch::Contains("holds no quantized layer"));
  nn::Sequential odd(nn::Linear(16, 8), Odd());
  auto qo = qatkit::nn::prepare_qat(odd, qatkit::nn::QATConfig::preset("int8_weight_only"));
  CATCH_CHECK_THAT(save_error(qo), Catch::Contains("module '1'"));
  CATCH_CHECK_THAT(save_error(qo), Catch::Contains("has no file form"));
  qatkit::nn::convert(*qo);  // written as it is: the same refusal
  CATCH_CHECK_THAT(save_error(qo), Catch::Contains("has no file form"));
}

CATCH_TEST_CASE("a learned step size SGD took below zero is written as the layer uses it", "[save]") {
  // the op clamps a learned step size at float32's epsilon; the raw negative value made a file
  // the loaders refused ("the input's scale must be finite and positive")
  namespace nn = torch::nn;
  torch::manual_seed(0);
  nn::Sequential model(nn::Linear(16, 8), nn::ReLU(), nn::Linear(8, 4));
  auto cfg = qatkit::nn::QATConfig::preset("w4a4_lsq");
  cfg.first_last = "";  // both layers LSQ
  auto q = qatkit::nn::prepare_qat(model, cfg);
  const torch::Tensor x = torch::randn({6, 16});
  q->forward(x);  // initializes the step sizes
  q->eval();
  auto lin = q->ptr(2)->as<qatkit::nn::QuantLinearImpl>();
  {
    torch::NoGradGuard ng;
    lin->input_fake_quant->named_parameters(false)["scale"].fill_(-2.5e-4);
  }
  const std::string path = "/tmp/qatkit_save_negative_step.safetensors";
  qatkit::nn::save(q, path);
  qatkit::nn::convert(*q);
  torch::NoGradGuard ng;
  CATCH_CHECK(torch::equal(qatkit::nn::load(path, "float")->forward(x), q->forward(x)));
  std::remove(path.c_str());
}

CATCH_TEST_CASE("qatkit::nn::save and load keep 'same' / 'valid' padding and padding modes", "[save]") {
  namespace nn = torch::nn;
  torch::manual_seed(1);
  // 'same' with a reflect mode (padded first), 'same' with an odd total (1: the extra column on the
  // right), 'valid' with circular padding ignored (no padding): float and integer compute
  nn::Sequential model(nn::Conv2d(nn::Conv2dOptions(2, 4, 3).padding(torch::kSame).padding_mode(torch::kReflect)),
                       nn::ReLU(), nn::Conv2d(nn::Conv2dOptions(4, 8, 2).padding(torch::kSame)), nn::ReLU(),
                       nn::Conv2d(nn::Conv2dOptions(8, 8, 3).padding(torch::kValid)), nn::ReLU(),
                       nn::Conv2d(nn::Conv2dOptions(8, 4, 3).padding(1).padding_mode(torch::kCircular)), nn::Flatten());
  model->eval();
  auto q = qatkit::nn::prepare_qat(model, qatkit::nn::QATConfig::preset("w8a8"));
  const torch::Tensor x = torch::randn({3, 2, 7, 6});
  qatkit::nn::calibrate(*q, {x}, [&](const torch::Tensor& b) { q->forward(b); });
  const std::string path = "/tmp/qatkit_save_padding.safetensors";
  qatkit::nn::save(q, path);
  qatkit::nn::convert(*q);
  torch::NoGradGuard ng;
  const torch::Tensor want = q->forward(x);
  CATCH_CHECK(want.sizes() == torch::IntArrayRef({3, 4 * 5 * 4}));
  CATCH_CHECK(torch::equal(qatkit::nn::load(path, "float")->forward(x), want));
  CATCH_CHECK(qatkit::nn::set_compute(*q, "integer") == 4);  // every conv on conv2d_int8
  CATCH_CHECK(torch::equal(qatkit::nn::load(path)->forward(x), q->forward(x)));
  std::remove(path.c_str());
}

CATCH_TEST_CASE("qatkit::nn::save and load keep activations, pooling and float modules with their arguments", "[save]") {
  namespace nn = torch::nn;
  torch::manual_seed(2);
  // every leaf Python's qatkit.load rebuilds too, with non-default arguments (docs/format.md)
  nn::Sequential model(nn::Conv1d(nn::Conv1dOptions(3, 8, 3).padding(1)), nn::PReLU(nn::PReLUOptions().num_parameters(8)),
                       nn::MaxPool1d(nn::MaxPool1dOptions(3).stride(2).ceil_mode(true)), nn::Conv1d(8, 8, 3), qatkit::nn::Hardswish(),
                       nn::AvgPool1d(nn::AvgPool1dOptions(2).ceil_mode(true)), nn::AdaptiveAvgPool1d(2), nn::Flatten(),
                       nn::Linear(16, 16), nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(0.2)), nn::Linear(16, 16),
                       nn::ELU(nn::ELUOptions().alpha(0.5)), nn::Linear(16, 16),
                       nn::Hardtanh(nn::HardtanhOptions().min_val(-0.5).max_val(2.0)), nn::Linear(16, 16), nn::ReLU6(),
                       nn::Linear(16, 16), nn::Mish(), nn::Linear(16, 16), qatkit::nn::Hardsigmoid(), nn::Linear(16, 8),
                       nn::LogSoftmax(1));
  model->eval();
  auto q = qatkit::nn::prepare_qat(model, qatkit::nn::QATConfig::preset("w8a8"));
  const torch::Tensor x = torch::randn({5, 3, 12});
  qatkit::nn::calibrate(*q, {x}, [&](const torch::Tensor& b) { q->forward(b); });
  const std::string path = "/tmp/qatkit_save_leaves.safetensors";
  qatkit::nn::save(q, path);
  qatkit::nn::convert(*q);
  torch::NoGradGuard ng;
  const torch::Tensor want = q->forward(x);
  CATCH_CHECK(torch::equal(qatkit::nn::load(path, "float")->forward(x), want));
  CATCH_CHECK(qatkit::nn::set_compute(*q, "integer") >= 6);
  CATCH_CHECK(torch::equal(qatkit::nn::load(path)->forward(x), q->forward(x)));
  std::remove(path.c_str());
  // the two modules torch::nn lacks compute what at::hardswish / at::hardsigmoid do
  const torch::Tensor t = torch::linspace(-5, 5, 101);
  CATCH_CHECK(torch::equal(qatkit::nn::Hardswish()->forward(t), torch::hardswish(t)));
  CATCH_CHECK(torch::equal(qatkit::nn::Hardsigmoid()->forward(t), torch::hardsigmoid(t)));
}

CATCH_TEST_CASE("load fuses conv and Linear activations; save writes them back and refuses a clamp it would drop",
                "[save]") {
  namespace nn = torch::nn;
  torch::manual_seed(2);
  nn::Sequential model(nn::Conv2d(nn::Conv2dOptions(3, 8, 3).padding(1)), nn::ReLU(),
                       nn::Conv2d(nn::Conv2dOptions(8, 8, 1)), nn::Hardtanh(nn::HardtanhOptions().min_val(-0.5).max_val(0.5)),
                       nn::Conv2d(nn::Conv2dOptions(8, 4, 1)), nn::LeakyReLU(), nn::Flatten(), nn::Linear(4 * 6 * 6, 16),
                       nn::ReLU6(), nn::Linear(16, 3));
  model->eval();
  auto q = qatkit::nn::prepare_qat(model, qatkit::nn::QATConfig::preset("w8a8"));
  const torch::Tensor x = torch::randn({3, 3, 6, 6}) * 2;
  qatkit::nn::calibrate(*q, {x}, [&](const torch::Tensor& b) { q->forward(b); });
  const std::string path = "/tmp/qatkit_save_fused.safetensors", again = "/tmp/qatkit_save_fused_again.safetensors";
  qatkit::nn::save(q, path);
  torch::NoGradGuard ng;
  auto fused = qatkit::nn::load(path), plain = qatkit::nn::load(path, "integer", false);
  int places = 0;
  for (const auto& m : fused->modules(false)) places += std::dynamic_pointer_cast<qatkit::nn::FusedActivationImpl>(m) != nullptr;
  CATCH_CHECK(places == 3);  // the ReLU, the Hardtanh and the Linear's ReLU6; the LeakyReLU is no clamp
  const auto lin = fused->ptr(7)->as<qatkit::nn::QuantLinearImpl>();
  CATCH_CHECK((lin->frozen.clamp_min == 0.0 && lin->frozen.clamp_max == 6.0));
  CATCH_CHECK(std::dynamic_pointer_cast<nn::LeakyReLUImpl>(fused->ptr(5)) != nullptr);
  const auto conv0 = fused->ptr(0)->as<qatkit::nn::QuantConv2dImpl>();
  CATCH_CHECK((conv0->frozen.clamp_min == 0.0 && !conv0->frozen.clamp_max));
  CATCH_CHECK(torch::equal(fused->forward(x), plain->forward(x)));
  for (const auto& m : qatkit::nn::load(path, "float")->modules(false)) {  // float compute: not fused
    CATCH_CHECK(std::dynamic_pointer_cast<qatkit::nn::FusedActivationImpl>(m) == nullptr);
  }
  // the fused conv alone in float compute clamps after its conv
  qatkit::nn::set_compute(*fused, "float");
  CATCH_CHECK(torch::equal(fused->forward(x), qatkit::nn::load(path, "float")->forward(x)));
  qatkit::nn::set_compute(*fused, "integer");
  qatkit::nn::save(fused, again);  // the activations written back: the file loads as the first
  CATCH_CHECK(torch::equal(qatkit::nn::load(again, "integer", false)->forward(x), plain->forward(x)));
  // a clamp with no FusedActivation after it, a FusedActivation whose conv has none: refused
  fused->ptr(4)->as<qatkit::nn::QuantConv2dImpl>()->frozen.clamp_max = 1.0;
  CATCH_CHECK_THAT(save_error(fused), Catch::Contains("layer '4' has a fused activation"));
  fused->ptr(4)->as<qatkit::nn::QuantConv2dImpl>()->frozen.clamp_max.reset();
  fused->ptr(2)->as<qatkit::nn::QuantConv2dImpl>()->frozen.clamp_min.reset();
  fused->ptr(2)->as<qatkit::nn::QuantConv2dImpl>()->frozen.clamp_max.reset();
  CATCH_CHECK_THAT(save_error(fused), Catch::Contains("'3' is a FusedActivation (Hardtanh) with no layer before it"));
  CATCH_CHECK_THROWS_WITH(qatkit::nn::FusedActivation("GELU"), Catch::Contains("kind must be 'ReLU', 'ReLU6' or 'Hardtanh'"));
  std::remove(path.c_str());
  std::remove(again.c_str());
}

namespace {

// A custom module (its own forward, its layers typed members) built as the Sequential below computes
// after C++'s PTQ (the BatchNorm folded into the conv): load_into's target. The variants break one
// thing each.
struct IntoNetImpl : torch::nn::Module {
  struct Variant {
    std::int64_t hidden = 16;
    bool batch_norm = false, layer_norm = true, last = true, extra = false;
  };
  explicit IntoNetImpl(const Variant& v) {
    namespace nn = torch::nn;
    const qatkit::nn::LayerSpec s = qatkit::nn::QATConfig::w8a8().default_spec;  // any: load_into sets the file's
    conv = register_module("0", qatkit::nn::QuantConv2d(nn::Conv2dOptions(3, 8, 3).padding(1), s));
    if (v.batch_norm) bn = register_module("1", nn::BatchNorm2d(8));
    relu = register_module("2", nn::ReLU());
    fc1 = register_module("4", qatkit::nn::QuantLinear(nn::LinearOptions(8 * 6 * 6, v.hidden), s));
    if (v.layer_norm) ln = register_module("5", nn::LayerNorm(nn::LayerNormOptions({v.hidden})));
    if (v.last) fc2 = register_module("6", qatkit::nn::QuantLinear(nn::LinearOptions(v.hidden, 3), s));
    if (v.extra) head = register_module("7", qatkit::nn::QuantLinear(nn::LinearOptions(3, 3), s));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = conv(x);
    if (bn) x = bn(x);
    x = fc1(torch::flatten(relu(x), 1));
    if (ln) x = ln(x);
    return fc2 ? fc2(x) : x;
  }
  qatkit::nn::QuantConv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  torch::nn::ReLU relu{nullptr};
  qatkit::nn::QuantLinear fc1{nullptr}, fc2{nullptr}, head{nullptr};
  torch::nn::LayerNorm ln{nullptr};
};
TORCH_MODULE(IntoNet);

std::string load_into_error(IntoNet& net, const std::string& path, const std::string& compute = "integer") {
  try {
    qatkit::nn::load_into(*net, path, compute);
  } catch (const c10::ValueError& e) {
    return e.what_without_backtrace();
  }
  return "(no error)";
}

}  // namespace

CATCH_TEST_CASE("load_into fills a custom module's typed qatkit layers with a file's and refuses one that does not fit",
                "[save]") {
  namespace nn = torch::nn;
  torch::manual_seed(3);
  nn::Sequential model(nn::Conv2d(nn::Conv2dOptions(3, 8, 3).padding(1)), nn::BatchNorm2d(8), nn::ReLU(), nn::Flatten(),
                       nn::Linear(8 * 6 * 6, 16), nn::LayerNorm(nn::LayerNormOptions({16})), nn::Linear(16, 3));
  model->eval();
  {  // a LayerNorm that is not the identity (the float tensors load by name)
    torch::NoGradGuard ng;
    // (torch::rand, not uniform_: GCC's -O2 sanitizer build warns maybe-uninitialized in uniform_'s
    // std::optional<Generator>)
    model->ptr(5)->as<nn::LayerNormImpl>()->weight.copy_(torch::rand({16}) + 0.5);
    model->ptr(5)->as<nn::LayerNormImpl>()->bias.copy_(torch::rand({16}) - 0.5);
  }
  const torch::Tensor x = torch::randn({4, 3, 6, 6});
  const std::string path = "/tmp/qatkit_load_into.safetensors";
  for (const char* preset : {"w8a8", "w4a8", "ternary_twn", "xnor_w1a1", "int8_weight_only"}) {
    CATCH_INFO(preset);
    nn::Sequential m(std::dynamic_pointer_cast<nn::SequentialImpl>(model->clone()));
    qatkit::nn::ptq(*m, {x}, [&](const torch::Tensor& b) { m->forward(b); }, qatkit::nn::QATConfig::preset(preset));
    qatkit::nn::save(m, path);
    torch::NoGradGuard ng;
    for (const char* compute : {"integer", "float"}) {
      IntoNet net(IntoNetImpl::Variant{});
      CATCH_CHECK(qatkit::nn::load_into(*net, path, compute) == 4 - 1);  // the two Linears and the conv
      CATCH_CHECK(!net->is_training());
      CATCH_CHECK(net->conv->converted());
      // the file's function bit for bit: the Sequential loader's on the same file
      CATCH_CHECK(torch::equal(net->forward(x), qatkit::nn::load(path, compute, false)->forward(x)));
    }
  }
  {  // a model no shared_ptr holds (on the stack): load_into and set_compute walk it too (set_compute
     // threw LibTorch's "top-level module as a shared_ptr" error before 2026-12-08)
    IntoNetImpl on_stack(IntoNetImpl::Variant{});
    CATCH_CHECK(qatkit::nn::load_into(on_stack, path) == 3);
    auto seq = qatkit::nn::load(path, "integer", false);
    CATCH_CHECK(qatkit::nn::set_compute(on_stack, "integer") == qatkit::nn::set_compute(*seq, "integer"));
    torch::NoGradGuard ng;
    CATCH_CHECK(torch::equal(on_stack.forward(x), seq->forward(x)));
  }
  {  // a custom module written by save: no structure (load refuses it naming the type); load_into reads it
    IntoNet src(IntoNetImpl::Variant{});
    {
      torch::NoGradGuard g;
      src->ln->weight.copy_(torch::rand({16}) + 0.5);
    }
    qatkit::nn::calibrate(*src, {x}, [&](const torch::Tensor& b) { src->forward(b); });
    const std::string custom = "/tmp/qatkit_save_custom.safetensors";
    // not a Cloneable: its QAT layers cannot be converted on a copy
    CATCH_CHECK_THROWS_WITH(qatkit::nn::save(*src, custom), Catch::Contains("call qatkit::nn::convert on it first"));
    qatkit::nn::convert(*src);
    qatkit::nn::save(*src, custom);
    CATCH_CHECK_THROWS_WITH(qatkit::nn::load(custom), Catch::Contains("IntoNetImpl (its own forward)"));
    IntoNet dst(IntoNetImpl::Variant{});
    CATCH_CHECK(qatkit::nn::load_into(*dst, custom) == 3);
    CATCH_CHECK(qatkit::nn::set_compute(*src, "integer") == 3);
    torch::NoGradGuard ng;
    CATCH_CHECK(torch::equal(dst->forward(x), src->forward(x)));
    // the LayerNorm's tensors travel by name
    CATCH_CHECK(torch::equal(dst->ln->weight, src->ln->weight));
    std::remove(custom.c_str());
  }
  IntoNet fine(IntoNetImpl::Variant{});
  CATCH_CHECK_THAT(load_into_error(fine, path, "int8"), Catch::Contains("compute must be 'integer' or 'float'"));
  // what does not fit is named, and the model is left as it was
  IntoNet wide(IntoNetImpl::Variant{20});
  CATCH_CHECK_THAT(load_into_error(wide, path),
                   Catch::Contains("layer '4': the model's QuantLinear has in_features=288, out_features=20, bias=true; "
                                   "the file's layer has in_features=288, out_features=16"));
  CATCH_CHECK(!wide->conv->converted());  // (conv '0' fit: checked, not yet changed)
  IntoNet with_bn(IntoNetImpl::Variant{16, true});
  CATCH_CHECK_THAT(load_into_error(with_bn, path), Catch::Contains("has Identity at '1'"));
  CATCH_CHECK_THAT(load_into_error(with_bn, path), Catch::Contains("BatchNorm2d"));
  IntoNet no_ln(IntoNetImpl::Variant{16, false, false});
  CATCH_CHECK_THAT(load_into_error(no_ln, path), Catch::Contains("the file's float tensors ['5.bias', '5.weight'] are not in the model"));
  IntoNet no_last(IntoNetImpl::Variant{16, false, true, false});
  CATCH_CHECK_THAT(load_into_error(no_last, path), Catch::Contains("the file holds layer '6', which the model does not have"));
  IntoNet extra(IntoNetImpl::Variant{16, false, true, true, true});
  CATCH_CHECK_THAT(load_into_error(extra, path), Catch::Contains("the model's qatkit layers ['7'] are not packed layers"));
  CATCH_CHECK(!extra->fc1->converted());
  // a float layer where the file holds a packed one
  struct FloatFirst : nn::Module {
    FloatFirst() { register_module("0", nn::Conv2d(nn::Conv2dOptions(3, 8, 3).padding(1))); }
  } float_first;
  CATCH_CHECK_THROWS_WITH(qatkit::nn::load_into(float_first, path),
                          Catch::Contains("layer '0' is a torch::nn::Conv2dImpl in the model, where the file holds a "
                                          "packed QuantConv2d: build it as qatkit::nn::QuantConv2d"));
  std::remove(path.c_str());
}

namespace {

// A custom module that trains with Conv2d + BatchNorm2d folded (QuantConvBn2d members) at the names of
// the Sequential below (whose BatchNorms at '1' and '4' the fold removes): load_into fills it from
// that Sequential's file, and from its own (save of the module), the same class for QAT and deployment.
struct BnNetImpl : torch::nn::Module {
  explicit BnNetImpl(const qatkit::nn::LayerSpec& s) {
    namespace nn = torch::nn;
    c0 = register_module("0", qatkit::nn::QuantConvBn2d(nn::Conv2d(nn::Conv2dOptions(3, 8, 3).padding(1)), nn::BatchNorm2d(8), s));
    relu = register_module("2", nn::ReLU());
    c3 = register_module("3", qatkit::nn::QuantConvBn2d(nn::Conv2d(nn::Conv2dOptions(8, 8, 3).padding(1).groups(8)),
                                                        nn::BatchNorm2d(8), s));
    fc = register_module("6", qatkit::nn::QuantLinear(nn::LinearOptions(8 * 5 * 5, 4), s));
  }
  torch::Tensor forward(torch::Tensor x) { return fc(torch::flatten(c3(relu(c0(x))), 1)); }
  qatkit::nn::QuantConvBn2d c0{nullptr}, c3{nullptr};
  torch::nn::ReLU relu{nullptr};
  qatkit::nn::QuantLinear fc{nullptr};
};
TORCH_MODULE(BnNet);

}  // namespace

CATCH_TEST_CASE("a converted QuantConvBn2d runs on the integer kernels as the loaded conv does", "[save]") {
  // prepare_qat folds Conv2d + BatchNorm2d into QuantConvBn2d; converted in place it is a conv with
  // the folded weight and bias (Python's convert makes it a QuantizedConv2d), and set_compute puts it
  // on conv2d_int8 / conv2d_w1a1 / conv2d_w4a8: the file's Sequential loader's bits (before
  // 2026-12-08 it kept float math: set_compute counted the Linear alone)
  namespace nn = torch::nn;
  torch::manual_seed(4);
  nn::Sequential model(nn::Conv2d(nn::Conv2dOptions(3, 8, 3).padding(1)), nn::BatchNorm2d(8), nn::ReLU(),
                       nn::Conv2d(nn::Conv2dOptions(8, 8, 3).padding(1).groups(8)), nn::BatchNorm2d(8), nn::Flatten(),
                       nn::Linear(8 * 5 * 5, 4));
  model->eval();
  {
    torch::NoGradGuard ng;
    for (int i : {1, 4}) {
      model->ptr(i)->as<nn::BatchNorm2dImpl>()->running_mean.copy_(torch::rand({8}) - 0.5);
      model->ptr(i)->as<nn::BatchNorm2dImpl>()->running_var.copy_(torch::rand({8}) + 0.5);
    }
  }
  const torch::Tensor x = torch::randn({3, 3, 5, 5});
  const std::string path = "/tmp/qatkit_convbn_integer.safetensors";
  for (const char* preset : {"w8a8", "w4a8", "xnor_w1a1"}) {
    CATCH_INFO(preset);
    nn::Sequential q = qatkit::nn::prepare_qat(model, qatkit::nn::QATConfig::preset(preset));
    int convbn = 0;
    for (const auto& m : q->modules(false)) convbn += std::dynamic_pointer_cast<qatkit::nn::QuantConvBn2dImpl>(m) != nullptr;
    CATCH_REQUIRE(convbn == 2);
    qatkit::nn::calibrate(*q, {x}, [&](const torch::Tensor& b) { q->forward(b); });
    qatkit::nn::save(q, path);
    qatkit::nn::convert(*q);
    torch::NoGradGuard ng;
    const torch::Tensor y_float = q->forward(x);
    auto loaded = qatkit::nn::load(path, "integer", false);
    const std::int64_t on_kernels = qatkit::nn::set_compute(*loaded, "integer");
    CATCH_CHECK(qatkit::nn::set_compute(*q, "integer") == on_kernels);
    CATCH_CHECK(on_kernels == 3);
    CATCH_CHECK(q->ptr(0)->as<qatkit::nn::QuantConvBn2dImpl>()->frozen.integer != nullptr);
    CATCH_CHECK(torch::equal(q->forward(x), loaded->forward(x)));
    CATCH_CHECK(torch::equal(q->ptr(0)->as<qatkit::nn::QuantConvBn2dImpl>()->forward(x[0]),  // unbatched
                             loaded->ptr(0)->as<qatkit::nn::QuantConv2dImpl>()->forward(x[0])));
    CATCH_CHECK(qatkit::nn::set_compute(*q, "float") == 0);
    CATCH_CHECK(torch::equal(q->forward(x), y_float));
    // load_into a custom module whose QuantConvBn2d layers take the file's convs
    const qatkit::nn::LayerSpec s = qatkit::nn::QATConfig::w8a8().default_spec;
    BnNet net(s);
    CATCH_CHECK(qatkit::nn::load_into(*net, path) == 3);
    CATCH_CHECK(net->c0->converted());
    CATCH_CHECK(net->c0->frozen.integer != nullptr);
    CATCH_CHECK(torch::equal(net->forward(x), loaded->forward(x)));
    // ... and the same class the other way: trained (calibrated) with its BatchNorms, saved, loaded
    BnNet src(qatkit::nn::QATConfig::preset(preset).default_spec);
    src->train();
    {
      torch::NoGradGuard g;
      src->c0->bn->running_var.copy_(torch::rand({8}) + 0.5);
    }
    qatkit::nn::calibrate(*src, {x}, [&](const torch::Tensor& b) { src->forward(b); });
    qatkit::nn::convert(*src);
    const std::string own = "/tmp/qatkit_convbn_own.safetensors";
    qatkit::nn::save(*src, own);
    BnNet dst(s);
    CATCH_CHECK(qatkit::nn::load_into(*dst, own) == 3);
    qatkit::nn::set_compute(*src, "integer");
    CATCH_CHECK(torch::equal(dst->forward(x), src->forward(x)));
    CATCH_CHECK_THROWS_WITH(qatkit::nn::load_into(*dst, own), Catch::Contains("layer '0' is a converted QuantConvBn2d"));
    std::remove(own.c_str());
  }
  std::remove(path.c_str());
}
