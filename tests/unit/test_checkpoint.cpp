// Checkpoints: bit-exact round trips, the Megatron layout, optional parts, async save,
// stale temp-dir cleanup, clear errors for corrupt or mismatched files, and crash safety
// (a child process SIGKILLed at random moments while saving, 24 times).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "../test_util.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "checkpoint/checkpoint.h"

namespace fs = std::filesystem;
using namespace primus;
using namespace primus::checkpoint;

namespace {

using primus::test::error_of;
using primus::test::read_file;
using primus::test::temp_dir;

// A tensor whose bytes depend on (seed, index) only, so any copy can be checked.
Tensor pattern(Shape shape, DType dtype, uint32_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<uint8_t*>(t.raw());
  uint32_t x = seed * 2654435761u + 12345u;
  for (size_t i = 0; i < t.nbytes(); ++i) {
    x = x * 1664525u + 1013904223u;  // LCG: distinct, non-trivial bit patterns (NaN payloads included)
    p[i] = static_cast<uint8_t>(x >> 24);
  }
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

CheckpointContent make_content(int64_t it, int64_t scale = 1) {
  CheckpointContent c;
  c.iteration = it;
  c.consumed_train_samples = it * 512;
  c.consumed_valid_samples = it * 7;
  const uint32_t s = static_cast<uint32_t>(it) * 100;
  c.model = {{"embedding.word_embeddings.weight", pattern({64 * scale, 256}, DType::BF16, s + 1)},
             {"decoder.layers.0.self_attention.linear_qkv.weight", pattern({96 * scale, 64}, DType::F32, s + 2)},
             {"decoder.final_layernorm.weight", pattern({64}, DType::F32, s + 3)}};
  c.optimizer = {{"exp_avg.embedding.word_embeddings.weight", pattern({64 * scale, 256}, DType::F32, s + 4)},
                 {"exp_avg_sq.embedding.word_embeddings.weight", pattern({64 * scale, 256}, DType::F32, s + 5)},
                 {"step", pattern({1}, DType::I64, s + 6)}};
  c.rng = {{"seed", 1234}, {"data_rng_offset", it * 3}};
  c.config = {{"train_iters", 1000}, {"lr", 3e-4}};
  c.extra = {{"tokens_consumed", it * 4096}, {"data", {{"epoch", 0}, {"index", it * 512}}}};
  return c;
}

void expect_equal_tensors(const NamedTensorList& got, const NamedTensorList& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    EXPECT_TRUE(same_bytes(got[i].second, want[i].second)) << want[i].first;
  }
}

}  // namespace

TEST(Checkpoint, RoundTripIsBitExactInMegatronLayout) {
  const fs::path dir = temp_dir("ckpt_roundtrip");
  const CheckpointContent c = make_content(100);
  CheckpointWriter(dir.string()).save(c);

  EXPECT_EQ(read_file(dir / "latest_checkpointed_iteration.txt"), "100");
  for (const char* f : {"meta.json", "model.safetensors", "optimizer.safetensors", "rng.json", "config.json"})
    EXPECT_TRUE(fs::is_regular_file(dir / "iter_0000100" / f)) << f;
  EXPECT_EQ(latest_iteration(dir.string()), 100);
  EXPECT_EQ(complete_checkpoints(dir.string()), std::vector<int64_t>{100});

  const LoadedCheckpoint l = load_checkpoint(dir.string());
  EXPECT_EQ(l.iteration, 100);
  EXPECT_EQ(l.format_version, kCheckpointFormatVersion);
  EXPECT_EQ(l.path, (dir / "iter_0000100").string());
  EXPECT_EQ(l.consumed_train_samples, 100 * 512);
  EXPECT_EQ(l.consumed_valid_samples, 700);
  EXPECT_TRUE(l.parts.model && l.parts.optimizer && l.parts.rng && l.parts.config);
  expect_equal_tensors(l.model, c.model);
  expect_equal_tensors(l.optimizer, c.optimizer);
  EXPECT_EQ(l.rng, c.rng);
  EXPECT_EQ(l.config, c.config);
  EXPECT_EQ(l.extra, c.extra);

  // The iter directory itself can be given, and an explicit iteration.
  EXPECT_EQ(load_checkpoint((dir / "iter_0000100").string()).iteration, 100);
  EXPECT_EQ(load_checkpoint(dir.string(), 100).iteration, 100);
  EXPECT_NE(error_of([&] { load_checkpoint(dir.string(), 50); }).find("iter_0000050"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Checkpoint, OptionalPartsAreReported) {
  const fs::path dir = temp_dir("ckpt_parts");
  CheckpointContent c = make_content(3);
  c.optimizer.clear();  // no_save_optim
  c.rng = nullptr;      // no_save_rng
  CheckpointWriter(dir.string()).save(c);
  EXPECT_FALSE(fs::exists(dir / "iter_0000003" / "optimizer.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "iter_0000003" / "rng.json"));
  const LoadedCheckpoint l = load_checkpoint(dir.string());
  EXPECT_TRUE(l.parts.model);
  EXPECT_FALSE(l.parts.optimizer);
  EXPECT_FALSE(l.parts.rng);
  EXPECT_TRUE(l.optimizer.empty());
  EXPECT_TRUE(l.rng.is_null());
  const CheckpointReader r(dir.string());
  EXPECT_NE(error_of([&] { r.optimizer_file(); }).find("no_load_optim"), std::string::npos);
  EXPECT_NE(error_of([&] { r.rng(); }).find("no_load_rng"), std::string::npos);
  // load_optim=false / load_rng=false skip parts that do exist.
  CheckpointWriter(dir.string()).save(make_content(4));
  const LoadedCheckpoint w = load_checkpoint(dir.string(), std::nullopt, false, false);
  EXPECT_TRUE(w.parts.optimizer && w.parts.rng);
  EXPECT_TRUE(w.optimizer.empty());
  EXPECT_TRUE(w.rng.is_null());
  fs::remove_all(dir);
}

TEST(Checkpoint, AsyncSaveSnapshotsBeforeReturning) {
  const fs::path dir = temp_dir("ckpt_async");
  std::vector<SaveResult> done;
  CheckpointWriterOptions o;
  o.async = true;
  o.on_saved = [&](const SaveResult& r) { done.push_back(r); };
  CheckpointContent c = make_content(10, 8);
  const CheckpointContent original = make_content(10, 8);
  {
    CheckpointWriter w(dir.string(), o);
    w.save(c);
    // Training goes on and overwrites the live tensors while the write runs.
    for (auto& [name, t] : c.model) std::memset(t.raw(), 0xAB, t.nbytes());
    for (auto& [name, t] : c.optimizer) std::memset(t.raw(), 0xCD, t.nbytes());
    w.save(make_content(20, 8));  // waits for the first: at most one in flight
    EXPECT_TRUE(w.in_flight());
    w.wait();
    EXPECT_FALSE(w.in_flight());
    ASSERT_TRUE(w.last_result().has_value());
    EXPECT_EQ(w.last_result()->iteration, 20);
  }
  ASSERT_EQ(done.size(), 2u);
  EXPECT_GT(done[0].bytes, 0u);
  expect_equal_tensors(load_checkpoint(dir.string(), 10).model, original.model);
  expect_equal_tensors(load_checkpoint(dir.string(), 10).optimizer, original.optimizer);
  EXPECT_EQ(latest_iteration(dir.string()), 20);
  fs::remove_all(dir);
}

TEST(Checkpoint, AsyncErrorSurfacesOnWait) {
  const fs::path dir = temp_dir("ckpt_async_err");
  CheckpointWriterOptions o;
  o.async = true;
  CheckpointWriter w(dir.string(), o);
  CheckpointContent c = make_content(1);
  c.model.push_back(c.model[0]);  // duplicate name: save_safetensors refuses it
  w.save(c);
  EXPECT_NE(error_of([&] { w.wait(); }).find("appears twice"), std::string::npos);
  EXPECT_FALSE(latest_iteration(dir.string()).has_value());
  fs::remove_all(dir);
}

// A save that runs out of space (here: the file-size limit, EFBIG) leaves no temp directory
// behind, and the checkpoint before it stays the latest.
TEST(Checkpoint, FailedWriteRemovesItsTempDirectory) {
  const fs::path dir = temp_dir("ckpt_full_disk");
  CheckpointWriter w(dir.string());
  w.save(make_content(1));
  ::signal(SIGXFSZ, SIG_IGN);
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 16 * 1024;  // the next model file is bigger
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string err = error_of([&] { w.save(make_content(2, 8)); });
  ::setrlimit(RLIMIT_FSIZE, &old);
  EXPECT_NE(err.find("partial files were removed"), std::string::npos) << err;
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  EXPECT_EQ(latest_iteration(dir.string()), 1);
  fs::remove_all(dir);
}

// A save directory that cannot be made is found when the writer is made (at start-up), not at
// the first save: here its parent is a file (root may write anywhere else).
TEST(Checkpoint, UnusableSaveDirectoryIsRefusedAtOnce) {
  const fs::path dir = temp_dir("ckpt_not_a_dir");
  std::ofstream(dir / "a_file") << "x";
  const std::string err = error_of([&] { CheckpointWriter w((dir / "a_file" / "ckpt").string()); });
  EXPECT_NE(err.find("save: cannot create the checkpoint directory"), std::string::npos) << err;
  fs::remove_all(dir);
}

// A tracker with a NUL byte (a torn write on some file systems) is named with the byte shown,
// not a message cut at it.
TEST(Checkpoint, TrackerWithANulByteIsShownWhole) {
  const fs::path dir = temp_dir("ckpt_nul_tracker");
  std::ofstream(dir / kTrackerFileName, std::ios::binary) << std::string("12\0junk", 7);
  const std::string err = error_of([&] { (void)latest_iteration(dir.string()); });
  EXPECT_NE(err.find("found '12\\x00junk'"), std::string::npos) << err;
  fs::remove_all(dir);
}

TEST(Checkpoint, SavingTheSameIterationAgainReplacesIt) {
  const fs::path dir = temp_dir("ckpt_resave");
  CheckpointWriter w(dir.string());
  w.save(make_content(5));
  CheckpointContent again = make_content(6);
  again.iteration = 5;
  w.save(again);
  expect_equal_tensors(load_checkpoint(dir.string()).model, again.model);
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".trash-"), std::string::npos) << e.path();
  fs::remove_all(dir);
}

TEST(Checkpoint, StaleTempDirsAreCleanedAndCompleteOnesKept) {
  const fs::path dir = temp_dir("ckpt_stale");
  CheckpointWriter w(dir.string());
  w.save(make_content(1));
  // A save killed half way (pid 999999 does not exist), and one by a live process.
  const long dead = 999999, live = ::getppid();
  fs::create_directories(dir / fmt::format("iter_0000002.tmp-{}", dead));
  std::ofstream(dir / fmt::format("iter_0000002.tmp-{}", dead) / "model.safetensors") << "partial";
  fs::create_directories(dir / fmt::format("iter_0000002.tmp-{}", live));
  std::ofstream(dir / fmt::format("latest_checkpointed_iteration.txt.tmp-{}", dead)) << "2";
  // A crash between the two renames of an overwrite of iteration 7: only the trash copy is left.
  CheckpointWriter(dir.string()).save(make_content(7));
  fs::rename(dir / "iter_0000007", dir / fmt::format("iter_0000007.trash-{}", dead));
  // The tracker still names 7: the reader finds the trash copy.
  EXPECT_EQ(load_checkpoint(dir.string()).iteration, 7);

  w.save(make_content(3));
  EXPECT_FALSE(fs::exists(dir / fmt::format("iter_0000002.tmp-{}", dead)));
  EXPECT_TRUE(fs::exists(dir / fmt::format("iter_0000002.tmp-{}", live)));  // not ours, still running
  EXPECT_FALSE(fs::exists(dir / fmt::format("latest_checkpointed_iteration.txt.tmp-{}", dead)));
  EXPECT_TRUE(fs::is_directory(dir / "iter_0000007"));  // put back, not deleted
  EXPECT_EQ(complete_checkpoints(dir.string()), (std::vector<int64_t>{1, 3, 7}));
  EXPECT_EQ(latest_iteration(dir.string()), 3);
  fs::remove_all(dir);
}

TEST(Checkpoint, PartialTempDirDoesNotAffectLoading) {
  const fs::path dir = temp_dir("ckpt_partial");
  CheckpointWriter(dir.string()).save(make_content(1));
  // Everything but meta.json written for iteration 2, then a crash.
  write_checkpoint_files((dir / "iter_0000002.tmp-999999").string(), make_content(2));
  fs::remove(dir / "iter_0000002.tmp-999999" / "meta.json");
  EXPECT_EQ(load_checkpoint(dir.string()).iteration, 1);
  EXPECT_EQ(complete_checkpoints(dir.string()), std::vector<int64_t>{1});
  fs::remove_all(dir);
}

TEST(Checkpoint, RetentionKeepsTheNewest) {
  const fs::path dir = temp_dir("ckpt_keep");
  CheckpointWriterOptions o;
  o.keep_last = 2;
  CheckpointWriter w(dir.string(), o);
  for (int it = 1; it <= 4; ++it) w.save(make_content(it));
  EXPECT_EQ(complete_checkpoints(dir.string()), (std::vector<int64_t>{3, 4}));
  fs::remove_all(dir);
}

TEST(Checkpoint, CorruptOrMismatchedFilesGiveClearErrors) {
  const fs::path dir = temp_dir("ckpt_corrupt");
  CheckpointWriter(dir.string()).save(make_content(9));
  const fs::path it = dir / "iter_0000009";
  const CheckpointContent c = make_content(9);

  // Loading into a model: unknown name, missing name, wrong shape.
  {
    const CheckpointReader r(dir.string());
    NamedTensorList targets;
    for (const auto& [name, t] : c.model) targets.emplace_back(name, Tensor::zeros(t.shape(), t.dtype()));
    load_tensors_into(r.model_file(), targets);
    for (size_t i = 0; i < targets.size(); ++i) EXPECT_TRUE(same_bytes(targets[i].second, c.model[i].second));

    NamedTensorList fewer(targets.begin(), targets.end() - 1);
    std::string e = error_of([&] { load_tensors_into(r.model_file(), fewer); });
    EXPECT_NE(e.find("unknown tensor 'decoder.final_layernorm.weight'"), std::string::npos) << e;
    EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
    load_tensors_into(r.model_file(), fewer, /*strict=*/false);  // allowed when not strict

    NamedTensorList renamed = targets;
    renamed[2].first = "decoder.final_layernorm.bias";
    e = error_of([&] { load_tensors_into(r.model_file(), renamed, false); });
    EXPECT_NE(e.find("missing tensor 'decoder.final_layernorm.bias'"), std::string::npos) << e;
    EXPECT_NE(e.find("did you mean"), std::string::npos) << e;

    NamedTensorList wrong = targets;
    wrong[1].second = Tensor::zeros({64, 96}, DType::F32);
    e = error_of([&] { load_tensors_into(r.model_file(), wrong); });
    EXPECT_NE(e.find("'decoder.layers.0.self_attention.linear_qkv.weight' has shape [96, 64] in the checkpoint "
                     "but the model expects [64, 96]"), std::string::npos) << e;

    // F32 <-> BF16 converts (bf16 values are exact in f32).
    NamedTensorList f32 = {{"embedding.word_embeddings.weight", Tensor::zeros({64, 256}, DType::F32)}};
    load_tensors_into(r.model_file(), f32, false);
    const std::vector<float> got = f32[0].second.to_float_vector(), want = c.model[0].second.to_float_vector();
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0);  // bitwise: NaN payloads included
  }

  // A truncated weights file: size mismatch naming the file.
  const auto size = fs::file_size(it / "model.safetensors");
  fs::resize_file(it / "model.safetensors", size - 10);
  std::string e = error_of([&] { load_checkpoint(dir.string()); });
  EXPECT_NE(e.find("model.safetensors: size mismatch"), std::string::npos) << e;
  EXPECT_NE(e.find(std::to_string(size - 10)), std::string::npos) << e;

  // A missing optimizer file listed in meta.json.
  fs::resize_file(it / "model.safetensors", size);
  fs::remove(it / "optimizer.safetensors");
  e = error_of([&] { load_checkpoint(dir.string()); });
  EXPECT_NE(e.find("optimizer.safetensors: missing"), std::string::npos) << e;

  // Garbage meta.json and tracker.
  std::ofstream(it / "meta.json") << "{not json";
  e = error_of([&] { load_checkpoint(dir.string()); });
  EXPECT_NE(e.find("meta.json: not valid JSON"), std::string::npos) << e;
  std::ofstream(dir / "latest_checkpointed_iteration.txt") << "hello";
  e = error_of([&] { latest_iteration(dir.string()); });
  EXPECT_NE(e.find("latest_checkpointed_iteration.txt: expected an iteration number, found 'hello'"),
            std::string::npos) << e;
  e = error_of([&] { load_checkpoint((dir / "nope").string()); });
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  fs::remove_all(dir);
}

// Crash safety: a child process saves checkpoints back to back (sync and async writers
// alternate between rounds) and is SIGKILLed at a random moment. After every kill the
// tracker must name a complete checkpoint whose content is exactly what was saved for
// that iteration. The same directory is reused, so each round also cleans the debris
// of the previous kill.
TEST(Checkpoint, SurvivesSigkillAtRandomMoments) {
  const fs::path dir = temp_dir("ckpt_kill");
  // Kill moments spread over ~3 save durations of this machine, so rounds land both
  // between saves (the tracker advances) and inside them (debris is left).
  const auto t0 = std::chrono::steady_clock::now();
  CheckpointWriter(dir.string()).save(make_content(1, 4));
  const auto save_us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
  std::mt19937 gen(20240611);
  std::uniform_int_distribution<int64_t> delay_us(0, 3 * save_us.count() + 20000);
  constexpr int kRounds = 24;
  int advanced = 0, killed_mid_save = 0;
  int64_t last = 1;
  for (int round = 0; round < kRounds; ++round) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      try {
        CheckpointWriterOptions o;
        o.async = round % 2 == 1;
        CheckpointWriter w(dir.string(), o);
        for (int64_t it = last + 1;; ++it) w.save(make_content(it, 4));
      } catch (...) {
      }
      ::_exit(3);  // only reached on an error
    }
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(gen)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited on its own (status " << status << "): a save failed";

    bool debris = false;
    for (const auto& e : fs::directory_iterator(dir))
      debris |= e.path().filename().string().find(".tmp-") != std::string::npos;
    killed_mid_save += debris;

    const std::optional<int64_t> t = latest_iteration(dir.string());
    ASSERT_TRUE(t.has_value()) << "round " << round << ": tracker missing";
    ASSERT_GE(*t, last) << "round " << round << ": tracker went backwards";
    advanced += *t > last;
    last = *t;
    const LoadedCheckpoint l = load_checkpoint(dir.string());
    const CheckpointContent want = make_content(*t, 4);
    ASSERT_EQ(l.iteration, *t);
    expect_equal_tensors(l.model, want.model);
    expect_equal_tensors(l.optimizer, want.optimizer);
    ASSERT_EQ(l.rng, want.rng);
    ASSERT_EQ(l.consumed_train_samples, want.consumed_train_samples);
  }
  // The test must actually have probed both outcomes.
  EXPECT_GT(advanced, 0);
  EXPECT_GT(killed_mid_save, 0);
  std::printf("[ kill test ] %d rounds: tracker advanced in %d, killed mid-save in %d, last iteration %ld\n",
              kRounds, advanced, killed_mid_save, static_cast<long>(last));
  // The next save clears all debris.
  CheckpointWriter(dir.string()).save(make_content(last + 1, 4));
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    EXPECT_EQ(name.find(".tmp-"), std::string::npos) << name;
    EXPECT_EQ(name.find(".trash-"), std::string::npos) << name;
  }
  fs::remove_all(dir);
}
