// Copyright regserve authors.
//
// Warp benchmark (not a test): prints a table of median times, throughput and
// memory for the CPU and (when built with CUDA) the CUDA warper, the CUDA vs
// CPU differences, and the seed's grid_sample baseline. See
// docs/benchmarks.md for the commands and recorded results.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/warp/warp.h"
#include "core/warp/warp_test_util.h"

#if REGSERVE_HAVE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

ABSL_FLAG(int64_t, width, 18960, "moving/output width");
ABSL_FLAG(int64_t, height, 14960, "moving/output height");
ABSL_FLAG(int, channels, 3, "channels");
ABSL_FLAG(int64_t, field_width, 4473, "field nodes along x");
ABSL_FLAG(int64_t, field_height, 3154, "field nodes along y");
ABSL_FLAG(double, amplitude, 20.0, "field displacement amplitude (px)");
ABSL_FLAG(int, reps, 7, "timed repetitions (median reported)");
ABSL_FLAG(std::string, device, "both", "cpu, cuda or both");
ABSL_FLAG(int, cpu_threads, 2, "CPU warp threads");
ABSL_FLAG(int64_t, cpu_width, 4096, "CPU benchmark size (square)");
ABSL_FLAG(double, budget_mib, 2048, "VRAM budget for the budgeted run");
ABSL_FLAG(bool, baseline, true, "run the seed grid_sample baseline (CUDA)");
ABSL_FLAG(bool, check, true, "compare CUDA against CPU on the full image");
ABSL_FLAG(std::string, canvas_raw, "", "raw interleaved RGB8 file to warp");
ABSL_FLAG(int64_t, canvas_width, 5640, "canvas raw width");
ABSL_FLAG(int64_t, canvas_height, 3172, "canvas raw height");
ABSL_FLAG(int64_t, big_megapixels, 500,
          "size of the budgeted big job (gray), 0 = skip");
ABSL_FLAG(double, big_budget_mib, 512, "VRAM budget of the big job");
ABSL_FLAG(std::string, sweep, "",
          "CUDA one pass only: comma-separated BAND_ROWS:CHUNK_ROWS:SLOTS "
          "settings to time (pinned -> pinned), each with its phase "
          "timeline and checked against the default setting's samples; "
          "empty: the usual cases");

namespace regserve {
namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  std::string name;
  double median_ms = 0;
  double mp = 0;
  double peak_mib = -1;
  double est_mib = -1;
  std::string note;
};
std::vector<Row> g_rows;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Mib(uint64_t b) { return static_cast<double>(b) / (1 << 20); }

// Peak RSS (VmHWM) in bytes; ResetPeakRss() clears it (Linux >= 4.0).
uint64_t PeakRss() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}
uint64_t CurrentRss() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}
void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

// Times `reps` warps; the callback does nothing (the output stays in the
// warper's buffer) unless `dest` is given, then it copies each tile there.
Row TimeWarp(const std::string& name, Warper& w, const Image& m,
             const DisplacementField& f, const WarpOptions& o, int reps,
             Image* dest = nullptr) {
  std::vector<double> ms;
  uint64_t peak = 0;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = Clock::now();
    auto s = w.Warp(m, f, m.width(), m.height(), o,
                    [&](const TileRect& rect, const Image& tile) {
                      if (dest != nullptr) {
                        for (int64_t y = 0; y < rect.h; ++y) {
                          std::memcpy(dest->row(rect.y + y) +
                                          rect.x * m.spec().bytes_per_pixel(),
                                      tile.row(y), tile.row_bytes());
                        }
                      }
                      return absl::OkStatus();
                    });
    const double t =
        std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (!s.ok()) {
      std::printf("%s FAILED: %s\n", name.c_str(),
                  s.status().ToString().c_str());
      return Row{name, -1, 0, -1, -1, "failed"};
    }
    peak = std::max<uint64_t>(peak, s->peak_device_bytes);
    if (r > 0) ms.push_back(t);  // first run is the warm-up
  }
  Row row;
  row.name = name;
  row.median_ms = Median(ms);
  row.mp = m.width() * m.height() / 1e6 / (row.median_ms / 1e3);
  row.peak_mib = w.device() == WarpDevice::kCuda ? Mib(peak) : -1;
  row.est_mib =
      w.device() == WarpDevice::kCuda
          ? Mib(EstimateWarpMemory(m.spec(), m.width(), m.height(), f.width,
                                   f.height, o.tile_size, WarpDevice::kCuda)
                    .device_bytes)
          : -1;
  std::printf("%-44s %9.2f ms  %8.1f MP/s  peak %8.1f MiB  est %8.1f MiB\n",
              name.c_str(), row.median_ms, row.mp, row.peak_mib, row.est_mib);
  std::fflush(stdout);
  g_rows.push_back(row);
  return row;
}

[[maybe_unused]] Image WarpAll(Warper& w, const Image& m,
                               const DisplacementField& f,
                               const WarpOptions& o) {
  return warp_test::WarpToImage(w, m, f, m.width(), m.height(), o).value();
}

struct Diff {
  int64_t differing = 0;
  int max = 0;
};
[[maybe_unused]] Diff CompareU8(const Image& a, const Image& b) {
  Diff d;
  const uint8_t* x = a.data();
  const uint8_t* y = b.data();
  for (size_t k = 0; k < a.size_bytes(); ++k) {
    const int e = std::abs(static_cast<int>(x[k]) - static_cast<int>(y[k]));
    if (e != 0) ++d.differing;
    d.max = std::max(d.max, e);
  }
  return d;
}

// Largest tile (multiple of 512) whose estimate fits the budget; 0 if the
// one-pass estimate already fits.
[[maybe_unused]] int64_t TileForBudget(const ImageSpec& s,
                                       const DisplacementField& f, double mib) {
  const uint64_t budget = static_cast<uint64_t>(mib * (1 << 20));
  if (EstimateWarpMemory(s, s.width, s.height, f.width, f.height, 0,
                         WarpDevice::kCuda)
          .device_bytes <= budget) {
    return 0;
  }
  for (int64_t t = (std::max(s.width, s.height) / 512) * 512; t >= 512;
       t -= 512) {
    if (EstimateWarpMemory(s, s.width, s.height, f.width, f.height, t,
                           WarpDevice::kCuda)
            .device_bytes <= budget) {
      return t;
    }
  }
  return 256;
}

void CpuBenchmark() {
  auto cpu = Warper::Create(WarpDevice::kCpu).value();
  const int64_t n = absl::GetFlag(FLAGS_cpu_width);
  const Image m = warp_test::RandomImage({n, n, 3, SampleType::kUInt8}, 1);
  const auto f = warp_test::SmoothField(n, n, n / 4, n / 4, 20.0, 1);
  for (int threads : {1, absl::GetFlag(FLAGS_cpu_threads)}) {
    for (int64_t tile : {int64_t{0}, int64_t{1024}}) {
      for (Interpolation interp :
           {Interpolation::kLinear, Interpolation::kCubic}) {
        WarpOptions o;
        o.cpu_threads = threads;
        o.tile_size = tile;
        o.interpolation = interp;
        ResetPeakRss();
        const uint64_t before = CurrentRss();
        Row r =
            TimeWarp(absl::StrFormat("cpu %dx%d RGB8 %s t%d tile %d", n, n,
                                     InterpolationName(interp), threads, tile),
                     *cpu, m, f, o, 3);
        const uint64_t grown = PeakRss() - before;
        const uint64_t est =
            EstimateWarpMemory(m.spec(), n, n, f.width, f.height, tile,
                               WarpDevice::kCpu)
                .host_bytes;
        std::printf("    peak RSS growth %.1f MiB (estimate %.1f MiB)\n",
                    Mib(grown), Mib(est));
        g_rows.back().note =
            absl::StrFormat("RSS +%.0f MiB (est %.0f)", Mib(grown), Mib(est));
      }
    }
  }
}

#if REGSERVE_HAVE_CUDA
// The seed's way, written the obvious way: per 4096^2 output tile with a
// 128 px overlap, upload the source region as float32, build the sampling
// grid with grid_sample on the field, grid_sample the image, download.
double SeedBaselineMs(const Image& m, const DisplacementField& f, Image* out,
                      uint64_t* peak) {
  const int64_t T = 4096, ov = 128, W = m.width(), H = m.height(),
                C = m.channels();
  c10::cuda::CUDACachingAllocator::emptyCache();
  c10::cuda::CUDACachingAllocator::resetPeakStats(0);
  const auto t0 = Clock::now();
  const auto cuda = at::TensorOptions().device(at::kCUDA, 0).dtype(at::kFloat);
  at::Tensor field =
      at::stack(
          {at::from_blob(const_cast<float*>(f.dx.data()), {f.height, f.width}),
           at::from_blob(const_cast<float*>(f.dy.data()), {f.height, f.width})})
          .unsqueeze(0)
          .to(cuda);
  at::Tensor host =
      at::from_blob(const_cast<uint8_t*>(m.data()), {H, W, C}, at::kByte);
  for (int64_t y = 0; y < H; y += T) {
    for (int64_t x = 0; x < W; x += T) {
      const int64_t tw = std::min(T, W - x), th = std::min(T, H - y);
      const int64_t x0 = std::max<int64_t>(0, x - ov),
                    y0 = std::max<int64_t>(0, y - ov);
      const int64_t x1 = std::min(W, x + tw + ov),
                    y1 = std::min(H, y + th + ov);
      at::Tensor src = host.slice(0, y0, y1)
                           .slice(1, x0, x1)
                           .to(at::kFloat)
                           .permute({2, 0, 1})
                           .contiguous()
                           .unsqueeze(0)
                           .to(cuda);
      at::Tensor px =
          at::arange(x, x + tw, cuda).view({1, tw}).expand({th, tw});
      at::Tensor py =
          at::arange(y, y + th, cuda).view({th, 1}).expand({th, tw});
      at::Tensor gfx = (px - static_cast<float>(f.origin_x)) /
                       static_cast<float>(f.spacing_x);
      at::Tensor gfy = (py - static_cast<float>(f.origin_y)) /
                       static_cast<float>(f.spacing_y);
      at::Tensor fgrid = at::stack({gfx * (2.0 / (f.width - 1)) - 1,
                                    gfy * (2.0 / (f.height - 1)) - 1},
                                   -1)
                             .unsqueeze(0);
      at::Tensor d =
          at::grid_sampler(field, fgrid, 0, 1, true);  // bilinear, border
      at::Tensor sx = px + d[0][0], sy = py + d[0][1];
      at::Tensor grid = at::stack({(sx - x0) * (2.0 / (x1 - x0 - 1)) - 1,
                                   (sy - y0) * (2.0 / (y1 - y0 - 1)) - 1},
                                  -1)
                            .unsqueeze(0);
      at::Tensor o = at::grid_sampler(src, grid, 0, 0, true);
      at::Tensor o8 = o.round()
                          .clamp(0, 255)
                          .to(at::kByte)[0]
                          .permute({1, 2, 0})
                          .contiguous()
                          .cpu();
      for (int64_t r = 0; r < th; ++r) {
        std::memcpy(out->row(y + r) + x * C,
                    o8.data_ptr<uint8_t>() + r * tw * C, tw * C);
      }
    }
  }
  const double ms =
      std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  *peak = c10::cuda::CUDACachingAllocator::getDeviceStats(0)
              .allocated_bytes[0]
              .peak;
  return ms;
}

// Transfer floors on this machine: plain copies of the same bytes, one
// way, and both ways at once on two streams (the duplex floor that an
// overlapped one-pass warp approaches).
void TransferFloors(const ImageSpec& spec, const Image& pinned,
                    const Image& pageable, const DisplacementField& f) {
  void* dev = nullptr;
  void* dev2 = nullptr;
  void* back = nullptr;
  cudaMalloc(&dev, spec.bytes());
  cudaMalloc(&dev2, spec.bytes());
  cudaHostAlloc(&back, spec.bytes(), cudaHostAllocDefault);
  auto report = [](const std::string& what, const std::vector<double>& ms,
                   double bytes) {
    const double m = Median(ms);
    std::printf("floor: %-36s %8.2f ms  %6.1f GB/s\n", what.c_str(), m,
                bytes / 1e6 / m);
    g_rows.push_back(Row{absl::StrFormat("floor %s", what), m, 0, -1, -1,
                         absl::StrFormat("%.1f GB/s", bytes / 1e6 / m)});
  };
  auto time_copy = [&](const char* what, void* dst, const void* src, size_t n,
                       cudaMemcpyKind kind) {
    std::vector<double> ms;
    for (int r = 0; r < 4; ++r) {
      const auto t0 = Clock::now();
      cudaMemcpy(dst, src, n, kind);
      ms.push_back(
          std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    report(what, ms, static_cast<double>(n));
  };
  time_copy("H2D pinned image", dev, pinned.data(), spec.bytes(),
            cudaMemcpyHostToDevice);
  time_copy("D2H pinned image", back, dev, spec.bytes(),
            cudaMemcpyDeviceToHost);
  time_copy("H2D pageable image", dev, pageable.data(), spec.bytes(),
            cudaMemcpyHostToDevice);
  time_copy("H2D pageable field dx (half)", dev, f.dx.data(), f.dx.size() * 4,
            cudaMemcpyHostToDevice);
  cudaStream_t up = nullptr, down = nullptr;
  cudaStreamCreateWithFlags(&up, cudaStreamNonBlocking);
  cudaStreamCreateWithFlags(&down, cudaStreamNonBlocking);
  std::vector<double> ms;
  for (int r = 0; r < 4; ++r) {
    const auto t0 = Clock::now();
    cudaMemcpyAsync(dev, pinned.data(), spec.bytes(), cudaMemcpyHostToDevice,
                    up);
    cudaMemcpyAsync(back, dev2, spec.bytes(), cudaMemcpyDeviceToHost, down);
    cudaStreamSynchronize(up);
    cudaStreamSynchronize(down);
    ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  report("H2D + D2H pinned at once (duplex)", ms,
         static_cast<double>(spec.bytes()));
  cudaStreamDestroy(up);
  cudaStreamDestroy(down);
  cudaFree(dev);
  cudaFree(dev2);
  cudaFreeHost(back);
}

// The one-pass and tiled warps, pinned and pageable.
void TimedCases(Warper& cuda, const ImageSpec& spec, const Image& pinned,
                const Image& pageable, const DisplacementField& f) {
  const int reps = absl::GetFlag(FLAGS_reps);
  WarpOptions o;
  TimeWarp("cuda one-pass, pinned src -> pinned out", cuda, pinned, f, o, reps);
  TimeWarp("cuda one-pass, pageable src -> pinned out", cuda, pageable, f, o,
           reps);
  Image dest = Image::Allocate(spec).value();
  std::memset(dest.data(), 1, dest.size_bytes());
  TimeWarp("cuda one-pass, pinned src -> pageable copy", cuda, pinned, f, o, 3,
           &dest);
  const int64_t budget_tile =
      TileForBudget(spec, f, absl::GetFlag(FLAGS_budget_mib));
  o.tile_size = budget_tile;
  TimeWarp(absl::StrFormat("cuda budget %.0f MiB (tile %d), pinned",
                           absl::GetFlag(FLAGS_budget_mib), budget_tile),
           cuda, pinned, f, o, reps);
  for (int64_t t : {8192, 4096, 2048}) {
    o.tile_size = t;
    TimeWarp(absl::StrFormat("cuda tiled %d, pinned src", t), cuda, pinned, f,
             o, reps);
  }
  o.tile_size = 4096;
  TimeWarp("cuda tiled 4096, pageable src", cuda, pageable, f, o, 3);
}

// --sweep: the one pass under other band, chunk and slot settings.
void SweepOnePass(Warper& cuda, const Image& pinned,
                  const DisplacementField& f) {
  const int reps = absl::GetFlag(FLAGS_reps);
  const Image reference = WarpAll(cuda, pinned, f, WarpOptions());
  for (absl::string_view item :
       absl::StrSplit(absl::GetFlag(FLAGS_sweep), ',', absl::SkipEmpty())) {
    const std::vector<std::string> v = absl::StrSplit(item, ':');
    WarpOptions o;
    if (v.size() != 3 || !absl::SimpleAtoi(v[0], &o.cuda_band_rows) ||
        !absl::SimpleAtoi(v[1], &o.cuda_chunk_rows) ||
        !absl::SimpleAtoi(v[2], &o.cuda_band_slots)) {
      std::printf("--sweep: bad setting '%s' (BAND:CHUNK:SLOTS)\n",
                  std::string(item).c_str());
      continue;
    }
    const std::string name =
        absl::StrFormat("cuda one-pass, bands %d rows, chunks %d, %d slots",
                        o.cuda_band_rows, o.cuda_chunk_rows, o.cuda_band_slots);
    const Row row = TimeWarp(name, cuda, pinned, f, o, reps);
    const Diff d = CompareU8(reference, WarpAll(cuda, pinned, f, o));
    o.cuda_timeline = true;
    absl::StatusOr<WarpStats> s = cuda.Warp(
        pinned, f, pinned.width(), pinned.height(), o,
        [](const TileRect&, const Image&) { return absl::OkStatus(); });
    std::string line;
    if (s.ok()) {
      for (const auto& [phase, ms] : s->timeline_ms) {
        absl::StrAppendFormat(&line, "%s%s %.1f", line.empty() ? "" : "; ",
                              phase, ms);
      }
    }
    std::printf(
        "  %s: median %.1f ms; vs default %ld differing samples\n"
        "    timeline (ms): %s\n",
        name.c_str(), row.median_ms, d.differing,
        s.ok() ? line.c_str() : s.status().ToString().c_str());
  }
}

// --check: tiled against one pass on the GPU, and the GPU against the CPU.
void CheckAgainstCpu(Warper& cuda, const Image& pinned, const Image& pageable,
                     const DisplacementField& f) {
  WarpOptions o;
  const Image g1 = WarpAll(cuda, pinned, f, o);
  o.tile_size = 4096;
  const Image g2 = WarpAll(cuda, pinned, f, o);
  o.tile_size = 0;
  o.cpu_threads = 16;
  auto cpu = Warper::Create(WarpDevice::kCpu).value();
  const auto t0 = Clock::now();
  const Image c1 = WarpAll(*cpu, pageable, f, o);
  const double cpu_ms =
      std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  const Diff tiled = CompareU8(g1, g2), vs_cpu = CompareU8(g1, c1);
  std::printf("check: tiled(4096) vs one-pass: %ld differing samples, max %d\n",
              tiled.differing, tiled.max);
  std::printf(
      "check: CUDA vs CPU (16 threads, %.0f ms): %ld differing samples, max "
      "%d\n",
      cpu_ms, vs_cpu.differing, vs_cpu.max);
  g_rows.push_back(
      Row{"check cuda tiled vs one-pass", 0, 0, -1, -1,
          absl::StrFormat("%d diff, max %d", tiled.differing, tiled.max)});
  g_rows.push_back(
      Row{"check cuda vs cpu (283 MP)", 0, 0, -1, -1,
          absl::StrFormat("%d diff, max %d", vs_cpu.differing, vs_cpu.max)});
}

// --baseline: the seed's way (4096 tiles, float32 grid_sample).
void SeedBaseline(const ImageSpec& spec, const Image& pageable,
                  const DisplacementField& f) {
  Image out = Image::Allocate(spec).value();
  uint64_t peak = 0;
  SeedBaselineMs(pageable, f, &out, &peak);  // warm-up
  const double ms = SeedBaselineMs(pageable, f, &out, &peak);
  std::printf(
      "seed baseline (4096 tiles, float32 grid_sample): %.1f ms, peak %.1f "
      "MiB\n",
      ms, Mib(peak));
  g_rows.push_back(Row{"seed baseline grid_sample 4096+128", ms,
                       spec.pixels() / 1e6 / (ms / 1e3), Mib(peak), -1, ""});
}

// --canvas_raw: a real photo, CUDA against the CPU for each interpolation.
void CanvasCheck(Warper& cuda, const std::string& path) {
  const ImageSpec cs{absl::GetFlag(FLAGS_canvas_width),
                     absl::GetFlag(FLAGS_canvas_height), 3, SampleType::kUInt8};
  Image cm = Image::Allocate(cs).value();
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(cm.data()), cs.bytes());
  if (!in) {
    std::printf("cannot read %s\n", path.c_str());
    return;
  }
  const auto cf = warp_test::SmoothField(cs.width, cs.height, cs.width / 8,
                                         cs.height / 8, 15.0, 7);
  auto cpu = Warper::Create(WarpDevice::kCpu).value();
  WarpOptions co;
  co.cpu_threads = 16;
  for (Interpolation interp : {Interpolation::kLinear, Interpolation::kCubic,
                               Interpolation::kNearest}) {
    co.interpolation = interp;
    co.tile_size = 0;
    const Image a = WarpAll(cuda, cm, cf, co);
    const Image b = WarpAll(*cpu, cm, cf, co);
    co.tile_size = 1000;
    const Image c = WarpAll(cuda, cm, cf, co);
    const Diff d1 = CompareU8(a, b), d2 = CompareU8(a, c);
    std::printf(
        "canvas %s: CUDA vs CPU %ld diff (max %d); tiled vs one-pass %ld "
        "diff\n",
        std::string(InterpolationName(interp)).c_str(), d1.differing, d1.max,
        d2.differing);
    g_rows.push_back(
        Row{absl::StrFormat("check canvas %s", InterpolationName(interp)), 0, 0,
            -1, -1,
            absl::StrFormat("cpu %d diff max %d; tiled %d diff", d1.differing,
                            d1.max, d2.differing)});
  }
}

// --big_megapixels: a square grey image under --big_budget_mib.
void BigImage(Warper& cuda, int64_t megapixels) {
  const int64_t side = static_cast<int64_t>(std::sqrt(megapixels * 1e6));
  const ImageSpec bs{side, side, 1, SampleType::kUInt8};
  const Image bm = warp_test::RandomImage(bs, 5);
  const auto bf =
      warp_test::SmoothField(side, side, side / 6, side / 6, 30.0, 5);
  WarpOptions bo;
  bo.tile_size = TileForBudget(bs, bf, absl::GetFlag(FLAGS_big_budget_mib));
  TimeWarp(absl::StrFormat("cuda %.0f MP gray, budget %.0f MiB, tile %d",
                           bs.pixels() / 1e6,
                           absl::GetFlag(FLAGS_big_budget_mib), bo.tile_size),
           cuda, bm, bf, bo, 2);
}

void CudaBenchmark() {
  auto made = Warper::Create(WarpDevice::kCuda, 0);
  if (!made.ok()) {
    std::printf("CUDA unavailable: %s\n", made.status().ToString().c_str());
    return;
  }
  auto cuda = std::move(made).value();
  const ImageSpec spec{absl::GetFlag(FLAGS_width), absl::GetFlag(FLAGS_height),
                       absl::GetFlag(FLAGS_channels), SampleType::kUInt8};
  std::printf("image %s (%.1f MP, %.0f MB), field %ldx%ld\n",
              spec.DebugString().c_str(), spec.pixels() / 1e6,
              spec.bytes() / 1e6, absl::GetFlag(FLAGS_field_width),
              absl::GetFlag(FLAGS_field_height));
  const Image pageable = warp_test::RandomImage(spec, 42);
  Image pinned = Image::Allocate(spec, PinnedHostAllocator()).value();
  std::memcpy(pinned.data(), pageable.data(), spec.bytes());
  const auto f = warp_test::SmoothField(
      spec.width, spec.height, absl::GetFlag(FLAGS_field_width),
      absl::GetFlag(FLAGS_field_height), absl::GetFlag(FLAGS_amplitude), 42);
  TransferFloors(spec, pinned, pageable, f);
  if (!absl::GetFlag(FLAGS_sweep).empty()) {
    SweepOnePass(*cuda, pinned, f);
    return;
  }
  TimedCases(*cuda, spec, pinned, pageable, f);
  if (absl::GetFlag(FLAGS_check)) CheckAgainstCpu(*cuda, pinned, pageable, f);
  if (absl::GetFlag(FLAGS_baseline)) SeedBaseline(spec, pageable, f);
  const std::string canvas = absl::GetFlag(FLAGS_canvas_raw);
  if (!canvas.empty()) CanvasCheck(*cuda, canvas);
  const int64_t big = absl::GetFlag(FLAGS_big_megapixels);
  if (big > 0) BigImage(*cuda, big);
}
#endif

void PrintTable() {
  std::printf(
      "\n| case | median ms | MP/s | peak VRAM MiB | estimate MiB | note |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const Row& r : g_rows) {
    std::printf(
        "| %s | %s | %s | %s | %s | %s |\n", r.name.c_str(),
        r.median_ms > 0 ? absl::StrFormat("%.1f", r.median_ms).c_str() : "",
        r.mp > 0 ? absl::StrFormat("%.0f", r.mp).c_str() : "",
        r.peak_mib >= 0 ? absl::StrFormat("%.0f", r.peak_mib).c_str() : "",
        r.est_mib >= 0 ? absl::StrFormat("%.0f", r.est_mib).c_str() : "",
        r.note.c_str());
  }
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string device = absl::GetFlag(FLAGS_device);
#if REGSERVE_HAVE_CUDA
  if (device != "cpu") regserve::CudaBenchmark();
#else
  if (device == "cuda") std::printf("built without CUDA\n");
#endif
  if (device != "cuda") regserve::CpuBenchmark();
  regserve::PrintTable();
  return 0;
}
