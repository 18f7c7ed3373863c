// LoRA dropout on the GPU (ops/cuda/dropout.cu): the CUDA mask kernel against the CPU reference
// op (the same Philox words, so the same mask: fp32 bit for bit, bf16 up to the rounding of the
// scaled value), on a micro-batch of more rows than one launch's keys (kDropoutKeys = 64), with
// row and column offsets (a sequence-parallel rank's rows, a row-parallel rank's features); and
// a bf16 LoRA model's training step with lora_dropout against the fp32 CPU model on the same
// weights and masks.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "core/rng.h"
#include "gpu_test_util.h"
#include "model/decoder.h"
#include "ops/dropout.h"
#include "ops/ops.h"
#include "parallel/lora.h"

namespace primus {
namespace {

ops::DropoutMask mask_of(double p, int64_t T, int64_t rows, int64_t first_row, int64_t first_col) {
  ops::DropoutMask m;
  m.key = parallel::lora_dropout_key(77, "decoder.layers.1.self_attention.linear_proj.lora_A.weight");
  m.threshold = ops::dropout_threshold(p);
  m.scale = static_cast<float>(1.0 / (1.0 - p));
  m.T = T;
  m.first_row = first_row;
  m.first_col = first_col;
  std::vector<int64_t> samples;
  for (int64_t b = 0; b < rows; ++b) samples.push_back(1000 + 3 * b);
  m.row_keys = parallel::lora_dropout_row_keys(12, samples, rows);
  return m;
}

TEST(CudaLoraDropout, MaskKernelEqualsCpu) {
  PRIMUS_REQUIRE_GPU();
  ops::Context cpu = ops::Context::cpu(), cuda = ops::Context::cuda();
  auto rng = gputest::fresh_rng();
  struct Shape3 {
    int64_t B, T, W, first_row, first_col;
    double p;
  };
  for (const Shape3 s : {Shape3{150, 3, 37, 0, 0, 0.1}, Shape3{150, 3, 37, 17, 5, 0.5}, Shape3{2, 129, 1024, 0, 1024, 0.05},
                         Shape3{4, 7, 6, 3, 2, 0.9}}) {
    const int64_t R = s.B * s.T - s.first_row;
    const ops::DropoutMask m = mask_of(s.p, s.T, s.B, s.first_row, s.first_col);
    for (DType dt : {DType::F32, DType::BF16}) {
      const std::vector<float> x = gputest::randn(rng, static_cast<size_t>(R * s.W));
      Tensor ref = gputest::cpu_f32(x, {R, s.W}), ref_out = Tensor::empty({R, s.W}, DType::F32);
      ops::dropout(cpu, ref_out, ref, m);
      Tensor dx = gputest::gpu(x, {R, s.W}, dt), out = Tensor::empty({R, s.W}, dt, Device::CUDA);
      gputest::poison(cuda, out);
      ops::dropout(cuda, out, dx, m);
      ops::dropout(cuda, dx, dx, m);  // in place: the backward's use
      const std::vector<float> want = gputest::round_to(ref_out.to_float_vector(), dt);
      const std::vector<float> got = out.to_float_vector(), got_inplace = dx.to_float_vector();
      ASSERT_EQ(got.size(), want.size());
      int64_t bad = 0;
      for (size_t i = 0; i < want.size(); ++i) bad += got[i] != want[i] || got_inplace[i] != want[i];
      std::printf("[check] dropout B %lld T %lld W %lld rows from %lld cols from %lld p %.2f %s: %lld of %zu differ\n",
                  static_cast<long long>(s.B), static_cast<long long>(s.T), static_cast<long long>(s.W),
                  static_cast<long long>(s.first_row), static_cast<long long>(s.first_col), s.p,
                  std::string(dtype_name(dt)).c_str(),
                  static_cast<long long>(bad), want.size());
      EXPECT_EQ(bad, 0);
    }
  }
}

// A LoRA model (every target) in bf16 on the GPU and fp32 on the CPU, the same weights, one
// training micro-batch with lora_dropout 0.3: the adapters' gradients agree within bf16
// tolerance, and differ clearly from the step without dropout (the masks took effect).
TEST(CudaLoraDropout, LoraTrainingStepMatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  ModelConfig c = gputest::tiny_llama("lora-dropout-gpu", true);
  c.max_position_embeddings = 64;
  c.init_method_std = 0.1;
  const int64_t B = 3, T = 24;
  ops::Context cpu = ops::Context::cpu(), cuda = ops::Context::cuda();
  DecoderOptions dev;
  dev.param_dtype = DType::BF16;
  dev.lora.rank = 8;
  dev.lora.alpha = 16;
  DecoderOptions host = dev;
  host.param_dtype = DType::F32;
  DecoderModel gpu_model(c, cuda, dev), cpu_model(c, cpu, host);
  for (NamedTensor* p : gpu_model.parameters())  // B = 0 at init: random B gives A a gradient
    if (p->name.find("lora_B") != std::string::npos) {
      Tensor h = Tensor::empty(p->value.shape(), DType::F32);
      CounterRng(4, stream_id(p->name)).fill_normal(h, 0.f, 0.05f);
      p->value.copy_from(Tensor::from_floats(h.to_float_vector(), h.shape(), DType::BF16));
    }
  auto copy_all = [](const std::vector<NamedTensor*>& from, const std::vector<NamedTensor*>& to) {
    ASSERT_EQ(from.size(), to.size());
    for (size_t i = 0; i < from.size(); ++i)
      to[i]->value.copy_from(Tensor::from_floats(from[i]->value.to_float_vector(), to[i]->value.shape()));
  };
  copy_all(gpu_model.parameters(), cpu_model.parameters());
  copy_all(gpu_model.buffers(), cpu_model.buffers());

  Tensor tokens = Tensor::empty({B, T}, DType::I32), labels = Tensor::empty({B, T}, DType::I32);
  const CounterRng rng(3, 9);
  for (int64_t i = 0; i < B * T; ++i) {
    tokens.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(static_cast<uint64_t>(i)) % c.padded_vocab_size);
    labels.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(static_cast<uint64_t>(i + 999)) % c.padded_vocab_size);
  }
  Tensor mask = Tensor::from_floats(std::vector<float>(static_cast<size_t>(B * T), 1.f), {B, T});
  const parallel::LoraDropout drop{0.3, 5, parallel::lora_dropout_row_keys(2, {40, 41, 42}, B)};
  MicroBatchExtras e;
  e.lora_dropout = &drop;
  auto step = [&](DecoderModel& m, Device d, const MicroBatchExtras& extras) {
    m.zero_grads();
    m.forward_backward(tokens.to(d), labels.to(d), mask.to(d), 1.f / static_cast<float>(B * T), 0.f, extras);
    return test::grads_of(m);
  };
  const auto want = step(cpu_model, Device::CPU, e), plain = step(cpu_model, Device::CPU, {});
  const auto got = step(gpu_model, Device::CUDA, e);
  for (const auto& [name, w] : want) {
    gputest::expect_close("lora dropout grad " + name, Tensor::from_floats(got.at(name), {static_cast<int64_t>(w.size())}), w,
                          5e-2);
    const gputest::Compare moved = gputest::compare(plain.at(name), w);
    EXPECT_GT(moved.rel, 0.1) << name << ": dropout barely changed the gradient (" << moved.rel << ")";
  }
}

}  // namespace
}  // namespace primus
