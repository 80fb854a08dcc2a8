// Copyright regserve authors.
//
// Engine benchmark on the CPU: for a real photo scaled to several sizes and
// deformed by a known smooth field, prints per stage the time, the time per
// megapixel, the planner's memory estimate and the measured peak RSS.
//
//   build/tests/bench/engine_benchmark tests/data/photos/seeding_5312x2988.jpg
//       --sizes=4,16,64 --max_registration_mp=20 --threads=2
//
// Peak RSS per stage: /proc/self/clear_refs ("5") resets VmHWM before each
// stage; elastix/transformix run as children, whose peak (VmHWM) the
// registration runner samples while they run.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/image/image_io.h"
#include "core/plan/plan.h"
#include "core/registration/registration.h"
#include "core/warp/warp.h"

namespace regserve {
namespace {

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void ResetPeakRss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
}

uint64_t PeakRssBytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0)
      return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

DisplacementField SmoothField(int64_t w, int64_t h, double amplitude) {
  DisplacementField f;
  f.width = 33;
  f.height = 25;
  f.spacing_x = static_cast<double>(w - 1) / (f.width - 1);
  f.spacing_y = static_cast<double>(h - 1) / (f.height - 1);
  f.dx.resize(f.width * f.height);
  f.dy.resize(f.width * f.height);
  for (int64_t y = 0; y < f.height; ++y)
    for (int64_t x = 0; x < f.width; ++x) {
      f.dx[y * f.width + x] = static_cast<float>(
          amplitude * std::sin(2 * M_PI * y / (f.height - 1)));
      f.dy[y * f.width + x] = static_cast<float>(
          0.7 * amplitude * std::cos(M_PI * x / (f.width - 1)));
    }
  return f;
}

// Warps `src` through `field` into a w x h image (output grid spacing given).
absl::StatusOr<Image> WarpInto(Warper& warper, const Image& src,
                               const DisplacementField& field, int64_t w,
                               int64_t h, double spacing, int64_t tile,
                               int threads) {
  ImageSpec spec = src.spec();
  spec.width = w;
  spec.height = h;
  absl::StatusOr<Image> out = Image::Allocate(spec);
  if (!out.ok()) return out.status();
  WarpOptions o;
  o.tile_size = tile;
  o.cpu_threads = threads;
  o.output_spacing_x = o.output_spacing_y = spacing;
  auto st =
      warper.Warp(src, field, w, h, o, [&](const TileRect& r, const Image& t) {
        for (int64_t j = 0; j < r.h; ++j)
          std::copy_n(t.row(j), t.row_bytes(),
                      out->row(r.y + j) + r.x * spec.bytes_per_pixel());
        return absl::OkStatus();
      });
  if (!st.ok()) return st.status();
  return out;
}

int Main(int argc, char** argv) {
  std::string photo = "tests/data/photos/seeding_5312x2988.jpg";
  std::vector<double> sizes = {4, 16};
  double max_mp = 20;
  int threads = 2;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--sizes=", 0) == 0) {
      sizes.clear();
      for (absl::string_view s : absl::StrSplit(a.substr(8), ',')) {
        double v;
        if (absl::SimpleAtod(s, &v)) sizes.push_back(v);
      }
    } else if (a.rfind("--max_registration_mp=", 0) == 0) {
      max_mp = std::atof(a.c_str() + 22);
    } else if (a.rfind("--threads=", 0) == 0) {
      threads = std::atoi(a.c_str() + 10);
    } else if (a.rfind("--", 0) != 0) {
      photo = a;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  auto src = ReadImageFile(photo);
  if (!src.ok()) {
    std::fprintf(stderr, "%s\n", src.status().ToString().c_str());
    return 1;
  }
  auto warper = Warper::Create(WarpDevice::kCpu);
  if (!warper.ok()) return 1;
  std::printf("engine benchmark: %s, threads=%d, max_registration_mp=%g\n",
              photo.c_str(), threads, max_mp);
  std::printf("%8s %9s | %8s %8s %9s %9s | %8s %8s %9s %9s | %8s %8s\n",
              "full MP", "reg MP", "reg s", "reg s/MP", "reg est", "reg peak",
              "warp s", "warp s/MP", "warp est", "warp peak", "gray s", "tile");
  for (double mp : sizes) {
    const double scale = std::sqrt(mp * 1e6 / (src->width() * src->height()));
    const int64_t w = std::llround(src->width() * scale),
                  h = std::llround(src->height() * scale);
    DisplacementField none;
    none.width = none.height = 1;
    none.dx = {0};
    none.dy = {0};
    auto fixed =
        WarpInto(**warper, *src, none, w, h, 1.0 / scale, 4096, threads);
    if (!fixed.ok()) return 1;
    DisplacementField known = SmoothField(w, h, 0.002 * w);
    auto moving = WarpInto(**warper, *fixed, known, w, h, 1.0, 4096, threads);
    if (!moving.ok()) return 1;

    JobOptions opts;
    opts.max_registration_megapixels = max_mp;
    opts.device = DevicePreference::kCpu;
    Budgets b;
    b.ram_bytes = 16ull << 30;
    b.cpu_threads = threads;
    auto plan = MakePlan(fixed->spec(), moving->spec(), opts, b);
    if (!plan.ok()) {
      std::fprintf(stderr, "%s\n", plan.status().ToString().c_str());
      return 1;
    }
    double t0 = Now();
    auto fg = MakeGrayscaleCopy(*fixed, plan->registration_fixed_width,
                                plan->registration_fixed_height, threads);
    auto mg = MakeGrayscaleCopy(*moving, plan->registration_moving_width,
                                plan->registration_moving_height, threads);
    const double gray_s = Now() - t0;
    if (!fg.ok() || !mg.ok()) return 1;
    const std::string work = std::filesystem::temp_directory_path() /
                             ("regserve_bench_" + std::to_string(getpid()));
    RegistrationRequest req;
    req.work_dir = work;
    req.fixed = &*fg;
    req.moving = &*mg;
    req.fixed_full_width = w;
    req.fixed_full_height = h;
    req.moving_full_width = w;
    req.moving_full_height = h;
    req.threads = threads;
    t0 = Now();
    auto reg = Register(req, ElastixConfig{});
    const double reg_s = Now() - t0;
    if (!reg.ok()) {
      std::fprintf(stderr, "%s\n", reg.status().ToString().c_str());
      return 1;
    }
    // The runner samples each child's VmHWM; RUSAGE_CHILDREN would count
    // this (large) process's own pages at spawn time.
    const uint64_t reg_peak =
        std::max(reg->elastix_peak_rss_bytes, reg->transformix_peak_rss_bytes);
    ResetPeakRss();
    const uint64_t base = PeakRssBytes();
    t0 = Now();
    int64_t tiles = 0;
    WarpOptions wo;
    wo.tile_size = plan->tile_size;
    wo.cpu_threads = threads;
    auto st = (*warper)->Warp(*moving, reg->field, w, h, wo,
                              [&](const TileRect&, const Image&) {
                                ++tiles;
                                return absl::OkStatus();
                              });
    const double warp_s = Now() - t0;
    if (!st.ok()) return 1;
    const uint64_t warp_peak = PeakRssBytes() - base + moving->size_bytes();
    const double reg_mp =
        plan->registration_fixed_width * plan->registration_fixed_height / 1e6;
    std::printf(
        "%8.1f %9.2f | %8.1f %8.2f %8.0fM %8.0fM | %8.2f %8.3f %8.0fM %8.0fM | "
        "%8.2f %8lld\n",
        w * h / 1e6, reg_mp, reg_s, reg_s / reg_mp,
        RegistrationRamBytes(plan->registration_fixed_width *
                             plan->registration_fixed_height) /
            1e6,
        reg_peak / 1e6, warp_s, warp_s / (w * h / 1e6),
        plan->warp.ram_bytes / 1e6, warp_peak / 1e6, gray_s,
        static_cast<long long>(plan->tile_size));
    std::fflush(stdout);
    std::filesystem::remove_all(work);
  }
  std::printf(
      "reg est: planner's elastix/transformix model; reg peak: the larger of "
      "elastix's and transformix's sampled peak RSS.\n"
      "warp est: planner's warp-stage RAM (moving image + working set); warp "
      "peak: "
      "moving image + growth of this process's peak RSS during the warp.\n");
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) { return regserve::Main(argc, argv); }
