// Copyright regserve authors.
//
// Multi-GPU warp benchmark: one Warper per GPU (each owns its streams,
// pinned buffers and device memory), warps of the 283.6 MP RGB image run at
// the same time, one per GPU, against the same warps on one GPU alone, in
// the same process. Prints per-GPU times and peak VRAM and the combined
// throughput ratio (target on 2 GPUs: >= 1.8x one GPU).
//
//   build-gpu/core/warp/multi_gpu_benchmark --gpus=0,1 --iters=7
//   build-gpu/core/warp/multi_gpu_benchmark --gpus=0,1 --tile=4096
//
// Every GPU's output is checked against GPU 0's (checksums of one warp).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/common/types.h"
#include "core/warp/warp.h"
#include "core/warp/warp_test_util.h"

#if REGSERVE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

ABSL_FLAG(std::string, gpus, "", "CUDA ordinals, e.g. 0,1 (default: all)");
ABSL_FLAG(int, iters, 7, "warps per GPU per measurement");
ABSL_FLAG(int64_t, tile, 0, "tile size (0 = one pass)");
ABSL_FLAG(int64_t, width, 18960, "image width");
ABSL_FLAG(int64_t, height, 14960, "image height");

namespace regserve {
namespace {

[[maybe_unused]] double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Gpu {
  int ordinal = 0;
  std::unique_ptr<Warper> warper;
  Image src;
  std::vector<double> seconds;
  uint64_t peak_bytes = 0;
  uint64_t checksum = 0;
  std::string error;
};

// One warp; optionally a checksum of every output byte (not timed).
[[maybe_unused]] absl::Status WarpOnce(Gpu& g, const DisplacementField& field,
                                       int64_t w, int64_t h, int64_t tile,
                                       bool checksum) {
  WarpOptions o;
  o.tile_size = tile;
  uint64_t sum = 0;
  auto st = g.warper->Warp(g.src, field, w, h, o,
                           [&](const TileRect&, const Image& t) {
                             if (checksum) {
                               const uint8_t* p = t.data();
                               for (size_t i = 0; i < t.size_bytes(); ++i)
                                 sum = sum * 131 + p[i];
                             }
                             return absl::OkStatus();
                           });
  if (!st.ok()) return st.status();
  g.peak_bytes = std::max(g.peak_bytes, st->peak_device_bytes);
  if (checksum) g.checksum = sum;
  return absl::OkStatus();
}

[[maybe_unused]] double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

#if REGSERVE_HAVE_CUDA
// --gpus, or every GPU; empty after printing why on a bad list.
std::vector<int> SelectOrdinals(int count) {
  std::vector<int> ordinals;
  const std::string list = absl::GetFlag(FLAGS_gpus);
  if (list.empty()) {
    for (int i = 0; i < count; ++i) ordinals.push_back(i);
    return ordinals;
  }
  absl::StatusOr<DeviceSelection> sel = ParseDeviceSelection("cuda:" + list);
  if (!sel.ok()) {
    std::fprintf(stderr, "%s\n", sel.status().ToString().c_str());
    return {};
  }
  return sel->gpus;
}

// A warper and its own pinned copy of the source on each GPU, and a first
// (checksummed) warp there.
absl::Status PrepareGpus(const Image& random, const DisplacementField& field,
                         int64_t tile, std::vector<Gpu>* gpus) {
  for (Gpu& g : *gpus) {
    auto warper = Warper::Create(WarpDevice::kCuda, g.ordinal);
    if (!warper.ok()) return warper.status();
    g.warper = *std::move(warper);
    auto src = Image::Allocate(random.spec(), PinnedHostAllocator());
    if (!src.ok()) return src.status();
    std::copy_n(random.data(), random.size_bytes(), src->data());
    g.src = *std::move(src);
    absl::Status s = WarpOnce(g, field, random.width(), random.height(), tile,
                              /*checksum=*/true);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// Seconds of the whole run: each GPU's thread runs `iters` warps at once.
double RunConcurrently(std::vector<Gpu>* gpus, const DisplacementField& field,
                       int64_t tile, int iters) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (Gpu& g : *gpus) {
    threads.emplace_back([&, gp = &g] {
      ++ready;
      while (!go.load()) std::this_thread::yield();
      for (int k = 0; k < iters; ++k) {
        const double t0 = Now();
        absl::Status s = WarpOnce(*gp, field, gp->src.width(), gp->src.height(),
                                  tile, false);
        if (!s.ok()) {
          gp->error = s.ToString();
          return;
        }
        gp->seconds.push_back(Now() - t0);
      }
    });
  }
  while (ready.load() < static_cast<int>(gpus->size()))
    std::this_thread::yield();
  const double t0 = Now();
  go = true;
  for (auto& t : threads) t.join();
  return Now() - t0;
}

void PrintTables(const std::vector<Gpu>& gpus, double mp, double single_s,
                 double wall, int iters) {
  const double single_mps = mp / single_s;
  const double combined_mps = gpus.size() * iters * mp / wall;
  std::printf(
      "\n| GPU | median ms (concurrent) | peak VRAM MiB | error "
      "|\n|---|---|---|---|\n");
  for (const Gpu& g : gpus) {
    std::printf("| %d | %.1f | %.1f | %s |\n", g.ordinal,
                1e3 * Median(g.seconds), g.peak_bytes / 1048576.0,
                g.error.empty() ? "" : g.error.c_str());
  }
  std::printf("\n| measurement | value |\n|---|---|\n");
  std::printf("| one GPU alone, median | %.1f ms (%.0f MP/s) |\n",
              1e3 * single_s, single_mps);
  std::printf(
      "| %zu GPUs at once, wall for %d warps each | %.1f ms (%.0f MP/s) |\n",
      gpus.size(), iters, 1e3 * wall, combined_mps);
  std::printf("| combined / single throughput | %.2fx |\n",
              combined_mps / single_mps);
}
#endif

int Main() {
#if !REGSERVE_HAVE_CUDA
  std::printf("multi_gpu_benchmark: built without CUDA; nothing to measure\n");
  return 0;
#else
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("multi_gpu_benchmark: no CUDA device\n");
    return 1;
  }
  const std::vector<int> ordinals = SelectOrdinals(count);
  if (ordinals.empty()) return 2;
  const int64_t w = absl::GetFlag(FLAGS_width), h = absl::GetFlag(FLAGS_height);
  const int64_t tile = absl::GetFlag(FLAGS_tile);
  const int iters = absl::GetFlag(FLAGS_iters);
  const DisplacementField field =
      warp_test::SmoothField(w, h, 4473, 3154, 20.0, 7);
  const Image random =
      warp_test::RandomImage(ImageSpec{w, h, 3, SampleType::kUInt8}, 11);
  std::vector<Gpu> gpus(ordinals.size());
  for (size_t i = 0; i < gpus.size(); ++i) gpus[i].ordinal = ordinals[i];
  absl::Status prepared = PrepareGpus(random, field, tile, &gpus);
  if (!prepared.ok()) {
    std::fprintf(stderr, "%s\n", prepared.ToString().c_str());
    return 1;
  }
  const double mp = w * h / 1e6;
  std::printf(
      "image %lldx%lld RGB uint8 (%.1f MP), field 4473x3154, %s, %d iters\n",
      static_cast<long long>(w), static_cast<long long>(h), mp,
      tile == 0 ? "one pass" : ("tiles " + std::to_string(tile)).c_str(),
      iters);
  bool same = true;
  for (const Gpu& g : gpus) same = same && g.checksum == gpus[0].checksum;
  std::printf("check: outputs of all GPUs identical: %s\n",
              same ? "yes" : "NO");
  std::vector<double> alone;  // one GPU alone
  for (int k = 0; k < iters; ++k) {
    const double t0 = Now();
    if (!WarpOnce(gpus[0], field, w, h, tile, false).ok()) return 1;
    alone.push_back(Now() - t0);
  }
  const double wall = RunConcurrently(&gpus, field, tile, iters);
  PrintTables(gpus, mp, Median(alone), wall, iters);
  return same ? 0 : 1;
#endif
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return regserve::Main();
}
