// safetensors: round trip of several dtypes + metadata, the byte layout of the format,
// and clear errors for truncated or corrupt files.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/safetensors.h"

using namespace primus;
namespace fs = std::filesystem;

namespace {

std::string temp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("primus_st_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Expects `fn` to throw a primus::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F fn, std::initializer_list<const char*> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    for (const char* p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Safetensors, RoundTripDtypesShapesMetadata) {
  const std::string path = temp_path("round.safetensors");
  Tensor a = Tensor::from_floats({1.5f, -2.f, 3.25f, 0.f, 5.f, 6.f}, {2, 3});
  Tensor b = Tensor::from_floats({1.f, 0.5f, -3.f}, {3}, DType::BF16);
  Tensor c = Tensor::empty({4}, DType::I32);
  for (int i = 0; i < 4; ++i) c.data<int32_t>()[i] = i * 1000 - 7;
  Tensor scalar = Tensor::from_floats({42.f}, {});
  save_safetensors(path, {{"layer.weight", a}, {"norm", b}, {"ids", c}, {"step", scalar}},
                   {{"format", "pt"}, {"iteration", "12"}});
  EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));

  SafetensorsFile f(path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"layer.weight", "norm", "ids", "step"}));
  EXPECT_EQ(f.metadata().at("iteration"), "12");
  EXPECT_EQ(f.entry("norm").dtype, DType::BF16);
  EXPECT_EQ(f.entry("layer.weight").shape, (Shape{2, 3}));
  EXPECT_EQ(f.load("layer.weight").to_float_vector(), a.to_float_vector());
  EXPECT_EQ(f.load("norm").to_float_vector(), b.to_float_vector());
  EXPECT_EQ(std::vector<int32_t>(f.view("ids").data<int32_t>(), f.view("ids").data<int32_t>() + 4),
            std::vector<int32_t>(c.data<int32_t>(), c.data<int32_t>() + 4));
  EXPECT_EQ(f.load("step").shape(), Shape{});
  EXPECT_EQ(f.load("step").to_float_vector()[0], 42.f);
  fs::remove(path);
}

TEST(Safetensors, ByteLayoutFollowsTheFormat) {
  const std::string path = temp_path("layout.safetensors");
  save_safetensors(path, {{"x", Tensor::from_floats({1.f, 2.f}, {2})}});
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);  // padded so the data section is aligned
  ASSERT_EQ(bytes.size(), 8 + n + 8);
  const std::string header = bytes.substr(8, n);
  EXPECT_NE(header.find(R"("x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), std::string::npos) << header;
  float v[2];
  std::memcpy(v, bytes.data() + 8 + n, 8);
  EXPECT_EQ(v[0], 1.f);
  EXPECT_EQ(v[1], 2.f);
  fs::remove(path);
}

TEST(Safetensors, TruncatedAndCorruptFilesNameFileAndTensor) {
  const std::string path = temp_path("bad.safetensors");
  save_safetensors(path, {{"embedding.weight", Tensor::zeros({4, 4}, DType::F32)},
                          {"decoder.final_layernorm.weight", Tensor::zeros({4}, DType::F32)}});
  const std::string good = read_bytes(path);

  write_bytes(path, good.substr(0, good.size() - 4));  // last tensor cut short
  expect_error([&] { SafetensorsFile f(path); }, {"bad.safetensors", "truncated", "decoder.final_layernorm.weight"});

  write_bytes(path, good.substr(0, 5));
  expect_error([&] { SafetensorsFile f(path); }, {"bad.safetensors", "8-byte"});

  std::string huge = good;
  huge[5] = 0x7f;  // header length far beyond the file
  write_bytes(path, huge);
  expect_error([&] { SafetensorsFile f(path); }, {"bad.safetensors", "header claims"});

  std::string bad_json = good;
  bad_json[8] = '[';
  bad_json[9] = '?';
  write_bytes(path, bad_json);
  expect_error([&] { SafetensorsFile f(path); }, {"bad.safetensors", "not valid JSON"});

  std::string extra = good + "xxxx";  // bytes no tensor claims
  write_bytes(path, extra);
  expect_error([&] { SafetensorsFile f(path); }, {"bad.safetensors", "cover"});

  write_bytes(path, good);
  SafetensorsFile ok(path);
  expect_error([&] { ok.entry("embedding.weights"); }, {"embedding.weights", "did you mean", "embedding.weight"});
  expect_error([&] { SafetensorsFile f(temp_path("missing.safetensors")); }, {"missing.safetensors"});
  expect_error([&] { save_safetensors(path, {{"a", Tensor::zeros({1}, DType::F32)}, {"a", Tensor::zeros({1}, DType::F32)}}); },
               {"appears twice"});
  fs::remove_all(fs::path(path).parent_path());
}
