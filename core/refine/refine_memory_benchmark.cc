// Copyright regserve authors.
//
// Memory and time of RefineField against the planner's model
// (EstimateRefineCost): for registration copies of several sizes and
// working sizes, prints the process's peak RSS growth during the call
// (VmHWM, reset through /proc/self/clear_refs), the CUDA caching
// allocator's peak on CUDA, the wall and CPU seconds of the call, and the
// model's figures beside them. The images are smooth random
// texture (no decoder needed, so it builds in the GPU subset).
//
//   build/core/refine/refine_memory_benchmark --copies=1,5,20 --pools=1,2,4
//       --device=cpu --threads=2
#include <malloc.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/refine/refine.h"

ABSL_FLAG(std::string, copies, "1,5", "registration copy sizes (MP)");
ABSL_FLAG(std::string, pools, "1,2,4", "working pooling factors");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(int, threads, 2, "LibTorch CPU threads");
ABSL_FLAG(int, iterations, 40, "Adam steps per level");

namespace regserve {
namespace {

// Freed heap goes back to the system first, so that the next run's peak is
// its own and not memory it reused.
void ResetPeakRss() {
  malloc_trim(0);
  std::ofstream("/proc/self/clear_refs") << "5";
}

double CpuSeconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec +
         1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

uint64_t StatusBytes(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) == 0) {
      return std::strtoull(line.c_str() + std::strlen(key), nullptr, 10) * 1024;
    }
  }
  return 0;
}

// Smooth random texture: a sum of a few hundred random blobs.
Image Texture(int64_t w, int64_t h, uint32_t seed) {
  Image img = Image::AllocateZeroed({.width = w,
                                     .height = h,
                                     .channels = 1,
                                     .type = SampleType::kFloat32})
                  .value();
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  float* p = img.as<float>();
  // Separable sinusoids of random frequencies: texture at every scale.
  std::vector<float> row(w), col(h);
  for (int k = 0; k < 12; ++k) {
    const float fx = 0.002f + 0.2f * u(rng) * u(rng);
    const float fy = 0.002f + 0.2f * u(rng) * u(rng);
    const float px = 6.28f * u(rng), py = 6.28f * u(rng);
    for (int64_t x = 0; x < w; ++x) row[x] = std::sin(fx * x + px);
    for (int64_t y = 0; y < h; ++y) col[y] = std::sin(fy * y + py);
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) p[y * w + x] += row[x] * col[y];
    }
  }
  return img;
}

DisplacementField Identity(int64_t w, int64_t h) {
  DisplacementField f;
  f.width = w;
  f.height = h;
  f.dx.assign(w * h, 0.3f);
  f.dy.assign(w * h, -0.2f);
  return f;
}

int Run() {
  std::vector<double> copies, pools;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_copies), ','))
    copies.push_back(std::stod(std::string(s)));
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_pools), ','))
    pools.push_back(std::stod(std::string(s)));
  const WarpDevice device = absl::GetFlag(FLAGS_device) == "cuda"
                                ? WarpDevice::kCuda
                                : WarpDevice::kCpu;
  std::printf("%8s %5s %9s | %8s %8s | %9s %10s | %7s %7s %8s\n", "copy MP",
              "pool", "work MP", "RSS MB", "model", "device MB", "model VRAM",
              "wall s", "cpu s", "model s");
  for (double mp : copies) {
    const int64_t w = std::llround(std::sqrt(mp * 1e6 * 16 / 9));
    const int64_t h = std::llround(mp * 1e6 / w);
    const Image fixed = Texture(w, h, 1);
    const Image moving = Texture(w, h, 1);
    const DisplacementField field = Identity(w, h);
    for (double pool : pools) {
      RefineOptions o;
      o.fixed_full_width = o.moving_full_width = w;
      o.fixed_full_height = o.moving_full_height = h;
      o.device = device;
      o.threads = absl::GetFlag(FLAGS_threads);
      o.iterations = absl::GetFlag(FLAGS_iterations);
      o.max_pixels =
          (w / static_cast<int64_t>(pool)) * (h / static_cast<int64_t>(pool));
      ResetPeakRss();
      const uint64_t rss0 = StatusBytes("VmRSS:");
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = CpuSeconds();
      absl::StatusOr<RefineResult> r = RefineField(fixed, moving, field, o);
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
              .count();
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
        return 1;
      }
      const double cpu = CpuSeconds() - c0;
      const uint64_t peak = StatusBytes("VmHWM:");
      const RefineCost model = EstimateRefineCost(w, h, w * h, o);
      std::printf(
          "%8.2f %5.0f %9.3f | %8.0f %8.0f | %9.0f %10.0f | %7.2f %7.2f "
          "%8.2f\n",
          mp, pool, r->work_width * r->work_height / 1e6,
          (peak - std::min(peak, rss0)) / 1e6, model.ram_bytes / 1e6,
          r->peak_device_bytes / 1e6, model.vram_bytes / 1e6, s, cpu,
          model.seconds);
    }
  }
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return regserve::Run();
}
