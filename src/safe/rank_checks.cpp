#include "safe/rank_checks.h"

#include <fmt/format.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

namespace primus::safe {

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto p = line.find(':');
      return p == std::string::npos ? line : line.substr(p + 2);
    }
  }
  return "unknown CPU";
}

double mem_total_gib() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  double kb = 0;
  while (in >> key >> kb >> unit) {
    if (key == "MemTotal:") return kb / 1048576.0;
  }
  return 0;
}

int numa_nodes() {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/sys/devices/system/node", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("node", 0) == 0 && name.size() > 4 && std::isdigit(static_cast<unsigned char>(name[4]))) ++n;
  }
  return n;
}

}  // namespace

bool RankCompute::ok() const {
  for (const CheckLine& c : checks)
    if (!c.pass) return false;
  return true;
}

void apply_thresholds(RankCompute& r, const ComputeCheckOptions& o) {
  const int64_t largest = r.gemm.empty() ? 0 : r.gemm.back().size;
  if (o.min_gemm_tflops > 0) {
    r.checks.push_back({"min_gemm_tflops", r.gemm_tflops >= o.min_gemm_tflops,
                        fmt::format("GEMM {}^3 at {:.4g} TFLOP/s (--min-gemm-tflops {:g})", largest, r.gemm_tflops,
                                    o.min_gemm_tflops)});
  }
  if (o.min_hbm_gbps > 0) {
    r.checks.push_back({"min_hbm_gbps", r.mem_gbps >= o.min_hbm_gbps,
                        fmt::format("{} copy at {:.4g} GB/s (--min-hbm-gbps {:g})", r.kind == "gpu" ? "HBM" : "DRAM",
                                    r.mem_gbps, o.min_hbm_gbps)});
  }
}

std::string this_hostname() {
  char buf[256] = {};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

std::string host_summary() {
  struct utsname u {};
  uname(&u);
  return fmt::format("{} {} ({}), {} ({} logical cores), {:.1f} GiB, {} NUMA node(s)", u.sysname, u.release, u.machine,
                     cpu_model(), std::thread::hardware_concurrency(), mem_total_gib(), numa_nodes());
}

RankCompute run_compute_checks(const std::string& device, int gpu, const ComputeCheckOptions& o) {
  try {
    return device == "cpu" ? run_cpu_checks(o) : run_gpu_checks(gpu, o);
  } catch (const std::exception& e) {
    RankCompute r;
    r.kind = device == "cpu" ? "cpu" : "gpu";
    r.device = device == "cpu" ? "CPU" : fmt::format("GPU {}", gpu);
    r.checks.push_back({"compute_checks", false, fmt::format("the checks stopped with an error: {}", e.what())});
    return r;
  }
}

nlohmann::json to_json(const RankCompute& r) {
  nlohmann::json j;
  j["kind"] = r.kind;
  j["device"] = r.device;
  j["host_summary"] = r.host_summary;
  j["gemm_tflops"] = r.gemm_tflops;
  j["mem_gbps"] = r.mem_gbps;
  j["gemm"] = nlohmann::json::array();
  for (const GemmPoint& g : r.gemm) j["gemm"].push_back({{"size", g.size}, {"tflops", g.tflops}});
  j["checks"] = nlohmann::json::array();
  for (const CheckLine& c : r.checks) j["checks"].push_back({{"name", c.name}, {"pass", c.pass}, {"detail", c.detail}});
  j["ok"] = r.ok();
  return j;
}

RankCompute rank_compute_from_json(const nlohmann::json& j) {
  RankCompute r;
  r.kind = j.at("kind").get<std::string>();
  r.device = j.at("device").get<std::string>();
  r.host_summary = j.at("host_summary").get<std::string>();
  r.gemm_tflops = j.at("gemm_tflops").get<double>();
  r.mem_gbps = j.at("mem_gbps").get<double>();
  for (const auto& g : j.at("gemm")) r.gemm.push_back({g.at("size").get<int64_t>(), g.at("tflops").get<double>()});
  for (const auto& c : j.at("checks"))
    r.checks.push_back({c.at("name").get<std::string>(), c.at("pass").get<bool>(), c.at("detail").get<std::string>()});
  return r;
}

double gemm_relative_error(const float* a, const float* b, const float* o, int64_t M, int64_t N, int64_t K) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double ref = 0;
      for (int64_t k = 0; k < K; ++k) ref += static_cast<double>(a[i * K + k]) * b[k * N + j];
      num += (o[i * N + j] - ref) * (o[i * N + j] - ref);
      den += ref * ref;
    }
  return std::sqrt(num / den);
}

}  // namespace primus::safe
