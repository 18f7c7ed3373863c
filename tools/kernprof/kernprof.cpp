// kernprof: a kernel-time profile of any CUDA process, for the GPU machine where no Nsight is
// installed. Preload it (LD_PRELOAD=libkernprof.so primus ...): it turns on CUPTI's activity
// records for kernels, memcpys and memsets, and at exit prints where the device time went in
// the last part of the run (steady state, not start-up and tuning):
//
//   kernprof: window 812.4 ms of 1623.0 ms (the last 50%), busy 771.2 ms (94.9%), 14,210 kernels
//   kernprof:   31.2%  240.7 ms   3,072 x  78.4 us  sm90_xmma_gemm_bf16bf16_bf16f32...
//
// Environment (this is a tool, not the engine: its knobs are environment variables):
//   KERNPROF_TAIL  fraction of the profiled span, counted back from its end, that is summarised (0.5)
//   KERNPROF_TOP   rows printed (40)
//   KERNPROF_OUT   also write the summary as JSON to this file
//   KERNPROF_WIDTH characters of each demangled name (110)
// "busy" is the union of the records' intervals over all streams: window − busy is time the
// device had nothing to run (launch-bound gaps, host synchronisation).
#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Rec {
  uint64_t start, end;
  uint32_t name;
};

std::mutex g_mu;
std::vector<Rec> g_recs;
std::unordered_map<std::string, uint32_t> g_ids;
std::vector<std::string> g_names;
bool g_atexit_registered = false;
bool g_done = false;

void report();

uint32_t intern(const std::string& s) {
  auto it = g_ids.find(s);
  if (it != g_ids.end()) return it->second;
  const auto id = static_cast<uint32_t>(g_names.size());
  g_names.push_back(s);
  g_ids.emplace(s, id);
  return id;
}

std::string demangle(const char* name) {
  if (name == nullptr) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = (status == 0 && d != nullptr) ? d : name;
  std::free(d);
  return out;
}

const char* copy_kind(uint8_t k) {
  switch (k) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "[memcpy HtoD]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "[memcpy DtoH]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "[memcpy DtoD]";
    default: return "[memcpy other]";
  }
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = 8u << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_atexit_registered) {  // registered after the CUDA runtime's: runs before its teardown
    g_atexit_registered = true;
    std::atexit(report);
  }
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* r = nullptr;
  std::lock_guard<std::mutex> lock(g_mu);
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(r);
      g_recs.push_back({k->start, k->end, intern(demangle(k->name))});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(r);
      g_recs.push_back({m->start, m->end, intern(copy_kind(m->copyKind))});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(r);
      g_recs.push_back({m->start, m->end, intern("[memset]")});
    }
  }
  std::free(buffer);
}

void CUPTIAPI on_callback(void*, CUpti_CallbackDomain domain, CUpti_CallbackId cbid, const void*) {
  if (domain == CUPTI_CB_DOMAIN_RESOURCE && cbid == CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING)
    cuptiActivityFlushAll(0);
}

double env_double(const char* k, double d) {
  const char* v = std::getenv(k);
  return v != nullptr && *v != 0 ? std::atof(v) : d;
}

void report() {
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_done) return;
  g_done = true;
  if (g_recs.empty()) {
    std::fprintf(stderr, "kernprof: no device activity recorded\n");
    return;
  }
  uint64_t t0 = UINT64_MAX, t1 = 0;
  for (const Rec& r : g_recs) {
    t0 = std::min(t0, r.start);
    t1 = std::max(t1, r.end);
  }
  const double tail = std::clamp(env_double("KERNPROF_TAIL", 0.5), 0.0, 1.0);
  const uint64_t w0 = t1 - static_cast<uint64_t>(tail * static_cast<double>(t1 - t0));
  std::vector<Rec> win;
  for (const Rec& r : g_recs)
    if (r.start >= w0) win.push_back(r);
  std::sort(win.begin(), win.end(), [](const Rec& a, const Rec& b) { return a.start < b.start; });
  double busy = 0;
  uint64_t cs = 0, ce = 0;
  for (const Rec& r : win) {
    if (r.start > ce) {
      busy += static_cast<double>(ce - cs);
      cs = r.start;
      ce = r.end;
    } else {
      ce = std::max(ce, r.end);
    }
  }
  busy += static_cast<double>(ce - cs);
  struct Agg {
    double ns = 0;
    uint64_t n = 0;
  };
  std::vector<Agg> agg(g_names.size());
  double total = 0;
  for (const Rec& r : win) {
    agg[r.name].ns += static_cast<double>(r.end - r.start);
    agg[r.name].n += 1;
    total += static_cast<double>(r.end - r.start);
  }
  std::vector<uint32_t> order;
  for (uint32_t i = 0; i < agg.size(); ++i)
    if (agg[i].n > 0) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return agg[a].ns > agg[b].ns; });
  const double window = static_cast<double>(t1 - w0);
  const auto top = static_cast<size_t>(env_double("KERNPROF_TOP", 40));
  const auto width = static_cast<size_t>(env_double("KERNPROF_WIDTH", 110));
  std::fprintf(stderr,
               "kernprof: window %.1f ms of %.1f ms (the last %.0f%%), busy %.1f ms (%.1f%%), kernel+copy time %.1f ms, "
               "%zu records\n",
               window / 1e6, static_cast<double>(t1 - t0) / 1e6, tail * 100, busy / 1e6, 100 * busy / window,
               total / 1e6, win.size());
  for (size_t i = 0; i < order.size() && i < top; ++i) {
    const Agg& a = agg[order[i]];
    std::string name = g_names[order[i]];
    if (name.size() > width) name = name.substr(0, width);
    std::fprintf(stderr, "kernprof: %6.2f%% %9.3f ms %8llu x %9.2f us  %s\n", 100 * a.ns / total, a.ns / 1e6,
                 static_cast<unsigned long long>(a.n), a.ns / 1e3 / static_cast<double>(a.n), name.c_str());
  }
  if (const char* out = std::getenv("KERNPROF_OUT"); out != nullptr && *out != 0) {
    if (FILE* f = std::fopen(out, "w")) {
      std::fprintf(f, "{\"window_ms\": %.4f, \"busy_ms\": %.4f, \"kernel_ms\": %.4f, \"kernels\": [", window / 1e6,
                   busy / 1e6, total / 1e6);
      for (size_t i = 0; i < order.size(); ++i) {
        std::string name = g_names[order[i]];
        std::string esc;
        for (char c : name) {
          if (c == '"' || c == '\\') esc += '\\';
          if (static_cast<unsigned char>(c) >= 0x20) esc += c;
        }
        std::fprintf(f, "%s\n {\"name\": \"%s\", \"ms\": %.4f, \"count\": %llu}", i ? "," : "", esc.c_str(),
                     agg[order[i]].ns / 1e6, static_cast<unsigned long long>(agg[order[i]].n));
      }
      std::fprintf(f, "]}\n");
      std::fclose(f);
    }
  }
}

__attribute__((constructor)) void kernprof_init() {
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernprof: CUPTI could not be enabled; no profile\n");
    return;
  }
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  CUpti_SubscriberHandle sub;
  if (cuptiSubscribe(&sub, on_callback, nullptr) == CUPTI_SUCCESS)
    cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RESOURCE, CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING);
}

}  // namespace
