// Copyright regserve authors.
//
// Result writer benchmark (not a test; docs/benchmarks.md, "Result
// writer"). Makes an RGB uint8 image of --width x --height at run time from
// a real photo (upscaled bilinearly, or mirror-tiled at its own scale with
// --source=mirror), then stores it as the warp stage does: bands of
// --tile rows, full width, through OpenTiledTiffWriter with a pyramid, for
// every --compressions x --threads. Prints wall and CPU seconds, MB/s of
// raw pixels, the file's size, the writer's own peak (TiledTiffStats), the
// process's peak RSS above its baseline, and the planner's estimate.
// --oiio_baseline adds the writer this replaced: OpenImageIO, zip, one
// thread, tile by tile, no pyramid.
//
// Built with -DREGSERVE_RESULT_WRITER_STANDALONE it needs neither
// OpenImageIO nor the planner (no baseline, no estimate), so that it runs on
// the GPU machine: scripts/gpu/result_writer_benchmark.sh.
//
//   result_writer_benchmark --threads 1,2 --oiio_baseline
//   result_writer_benchmark --source mirror --compressions deflate,zstd
#ifndef REGSERVE_RESULT_WRITER_STANDALONE
#include <OpenImageIO/imageio.h>
#endif
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/image/tiled_tiff_writer.h"
#ifndef REGSERVE_RESULT_WRITER_STANDALONE
#include "core/plan/plan.h"
#endif

// After <cstdio>: jpeglib.h needs FILE and size_t.
#include <jpeglib.h>

ABSL_FLAG(std::string, photo, "tests/data/photos/seeding_5312x2988.jpg",
          "the real photo the image is made from");
ABSL_FLAG(std::string, source, "upscale",
          "upscale (bilinear to the size) or mirror (tiled at its own scale)");
ABSL_FLAG(int64_t, width, 18960, "image width");
ABSL_FLAG(int64_t, height, 14960, "image height");
ABSL_FLAG(int, tile, 512, "TIFF tile edge (= band height)");
ABSL_FLAG(std::string, threads, "1,2", "writer thread counts to run");
ABSL_FLAG(std::string, compressions, "none,deflate,zstd,jpeg",
          "compressions to run");
ABSL_FLAG(int, jpeg_quality, 90, "JPEG quality");
ABSL_FLAG(bool, pyramid, true, "write the reduced-resolution levels");
ABSL_FLAG(bool, oiio_baseline, false, "also run the OpenImageIO writer");
ABSL_FLAG(std::string, out_dir, "/tmp", "where the files go (removed after)");
ABSL_FLAG(bool, keep, false, "keep the written files");

namespace regserve {
namespace {

double CpuSeconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec +
         1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

long StatusKb(const char* key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

// Resets VmHWM to the current RSS (Linux: clear_refs 5).
void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

// The photo, RGB (libjpeg exits with its message on a bad file).
Image ReadJpeg(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    std::fprintf(stderr, "cannot open %s\n", path.c_str());
    std::exit(1);
  }
  jpeg_decompress_struct d;
  jpeg_error_mgr err;
  d.err = jpeg_std_error(&err);
  jpeg_create_decompress(&d);
  jpeg_stdio_src(&d, f);
  jpeg_read_header(&d, TRUE);
  d.out_color_space = JCS_RGB;
  jpeg_start_decompress(&d);
  ImageSpec spec;
  spec.width = d.output_width;
  spec.height = d.output_height;
  spec.channels = 3;
  spec.type = SampleType::kUInt8;
  Image img = *Image::Allocate(spec);
  while (d.output_scanline < d.output_height) {
    JSAMPROW row = img.row(d.output_scanline);
    jpeg_read_scanlines(&d, &row, 1);
  }
  jpeg_finish_decompress(&d);
  jpeg_destroy_decompress(&d);
  std::fclose(f);
  return img;
}

Image MakeSource(const Image& photo, int64_t w, int64_t h, bool mirror) {
  ImageSpec spec = photo.spec();
  spec.width = w;
  spec.height = h;
  Image out = *Image::Allocate(spec);
  const int64_t pw = photo.width(), ph = photo.height();
  const int c = photo.channels();
  auto rows = [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y) {
      uint8_t* o = out.row(y);
      if (mirror) {
        const int64_t period = 2 * ph, m = y % period;
        const uint8_t* r = photo.row(m < ph ? m : period - 1 - m);
        for (int64_t x = 0; x < w; ++x) {
          const int64_t q = x % (2 * pw), sx = q < pw ? q : 2 * pw - 1 - q;
          for (int ch = 0; ch < c; ++ch) o[x * c + ch] = r[sx * c + ch];
        }
        continue;
      }
      const double fy = std::clamp((y + 0.5) * ph / h - 0.5, 0.0, ph - 1.0);
      const int64_t iy = std::min<int64_t>(static_cast<int64_t>(fy), ph - 2);
      const double wy = fy - iy;
      const uint8_t* r0 = photo.row(iy);
      const uint8_t* r1 = photo.row(iy + 1);
      for (int64_t x = 0; x < w; ++x) {
        const double fx = std::clamp((x + 0.5) * pw / w - 0.5, 0.0, pw - 1.0);
        const int64_t ix = std::min<int64_t>(static_cast<int64_t>(fx), pw - 2);
        const double wx = fx - ix;
        for (int ch = 0; ch < c; ++ch) {
          const double v =
              (1 - wy) *
                  ((1 - wx) * r0[ix * c + ch] + wx * r0[(ix + 1) * c + ch]) +
              wy * ((1 - wx) * r1[ix * c + ch] + wx * r1[(ix + 1) * c + ch]);
          o[x * c + ch] = static_cast<uint8_t>(v + 0.5);
        }
      }
    }
  };
  std::thread t(rows, 0, h / 2);
  rows(h / 2, h);
  t.join();
  return out;
}

int64_t FileBytes(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

struct Row {
  char name[16] = {0};
  int threads = 1;
  double wall = 0, cpu = 0;
  int64_t file = 0;
  uint64_t writer_peak = 0, estimate = 0;
  long rss_kb = 0;
  int levels = 1;
};

// Runs `f` in a child process, so that its peak RSS is its own (the source
// image is shared with the parent, already resident).
template <typename F>
Row InChild(F&& f) {
  int fds[2];
  if (::pipe(fds) != 0) std::exit(1);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    const Row r = f();
    const ssize_t n = ::write(fds[1], &r, sizeof(r));
    ::_exit(n == static_cast<ssize_t>(sizeof(r)) ? 0 : 1);
  }
  ::close(fds[1]);
  Row r;
  const ssize_t n = ::read(fds[0], &r, sizeof(r));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (n != static_cast<ssize_t>(sizeof(r)) || status != 0) std::exit(1);
  return r;
}

void Print(const Row& r, double raw) {
  const std::string plan =
      r.estimate > 0 ? absl::StrFormat(" (plan %6.1f MB)", r.estimate / 1e6)
                     : std::string();
  std::printf(
      "%-8s threads=%-2d %6.2f s wall %6.2f s cpu %7.0f MB/s %8.1f MB file "
      "%3d levels  writer peak %6.1f MB%s  RSS +%6.1f MB\n",
      r.name, r.threads, r.wall, r.cpu, raw / r.wall / 1e6, r.file / 1e6,
      r.levels, r.writer_peak / 1e6, plan.c_str(), r.rss_kb / 1e3);
  std::fflush(stdout);
}

Row RunWriter(const Image& src, Compression c, int threads,
              const std::string& path) {
  const int tile = absl::GetFlag(FLAGS_tile);
  TiledTiffOptions o;
  o.tile = tile;
  o.compression = c;
  o.jpeg_quality = absl::GetFlag(FLAGS_jpeg_quality);
  o.threads = threads;
  o.pyramid = absl::GetFlag(FLAGS_pyramid);
  Row row;
  std::snprintf(row.name, sizeof(row.name), "%s",
                std::string(CompressionName(c)).c_str());
  row.threads = threads;
  // The bands are the warp's memory, not the writer's: made (and resident)
  // before the peak is reset.
  ImageSpec band_spec = src.spec();
  band_spec.height = std::min<int64_t>(tile, src.height());
  Image band = *Image::AllocateZeroed(band_spec);
  band_spec.height = src.height() % tile;
  Image last =
      band_spec.height > 0 ? *Image::AllocateZeroed(band_spec) : Image();
  ResetPeakRss();
  const long base = StatusKb("VmRSS:");
  const absl::Time t0 = absl::Now();
  const double c0 = CpuSeconds();
  auto w = OpenTiledTiffWriter(path, src.spec(), o);
  if (!w.ok()) {
    std::fprintf(stderr, "%s\n", w.status().ToString().c_str());
    std::exit(1);
  }
  for (int64_t y = 0; y < src.height(); y += tile) {
    Image& b = y + tile <= src.height() ? band : last;
    std::memcpy(b.data(), src.row(y), b.size_bytes());
    absl::Status s = (*w)->WriteRegion(0, y, b);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      std::exit(1);
    }
  }
  const TiledTiffStats stats = (*w)->stats();
  absl::Status s = (*w)->Close();
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::exit(1);
  }
  row.wall = absl::ToDoubleSeconds(absl::Now() - t0);
  row.cpu = CpuSeconds() - c0;
  row.rss_kb = StatusKb("VmHWM:") - base;
  row.file = FileBytes(path);
  row.levels = (*w)->stats().levels;
  row.writer_peak =
      std::max(stats.peak_ram_bytes, (*w)->stats().peak_ram_bytes);
#ifndef REGSERVE_RESULT_WRITER_STANDALONE
  // The warp hands over whole bands: warp tile = one pass (0).
  row.estimate = ResultWriterRamBytes(0, src.width(), src.height(), tile,
                                      src.spec(), threads, o.pyramid);
#endif
  return row;
}

#ifndef REGSERVE_RESULT_WRITER_STANDALONE
Row RunOiio(const Image& src, const std::string& path) {
  const int tile = absl::GetFlag(FLAGS_tile);
  Row row;
  std::snprintf(row.name, sizeof(row.name), "oiio-zip");
  ResetPeakRss();
  const long base = StatusKb("VmRSS:");
  const absl::Time t0 = absl::Now();
  const double c0 = CpuSeconds();
  auto out = OIIO::ImageOutput::create(path);
  OIIO::ImageSpec s(static_cast<int>(src.width()),
                    static_cast<int>(src.height()), src.channels(),
                    OIIO::TypeDesc::UINT8);
  s.tile_width = s.tile_height = tile;
  s.attribute("compression", "zip");
  out->open(path, s);
  const int c = src.channels();
  std::vector<uint8_t> t(static_cast<size_t>(tile) * tile * c);
  for (int64_t ty = 0; ty < src.height(); ty += tile) {
    for (int64_t tx = 0; tx < src.width(); tx += tile) {
      const int64_t vw = std::min<int64_t>(tile, src.width() - tx);
      const int64_t vh = std::min<int64_t>(tile, src.height() - ty);
      for (int64_t y = 0; y < vh; ++y) {
        std::memcpy(&t[y * tile * c], src.row(ty + y) + tx * c, vw * c);
      }
      out->write_tile(static_cast<int>(tx), static_cast<int>(ty), 0,
                      OIIO::TypeDesc::UINT8, t.data());
    }
  }
  out->close();
  row.wall = absl::ToDoubleSeconds(absl::Now() - t0);
  row.cpu = CpuSeconds() - c0;
  row.rss_kb = StatusKb("VmHWM:") - base;
  row.file = FileBytes(path);
  return row;
}
#endif

int Main() {
  Image photo = ReadJpeg(absl::GetFlag(FLAGS_photo));
  const absl::Time t0 = absl::Now();
  const Image src =
      MakeSource(photo, absl::GetFlag(FLAGS_width), absl::GetFlag(FLAGS_height),
                 absl::GetFlag(FLAGS_source) == "mirror");
  photo = Image();
  const double raw = static_cast<double>(src.size_bytes());
  std::printf(
      "source: %s (%s of %s), %.0f MB raw, made in %.1f s; %u cores, "
      "pyramid %s\n",
      src.spec().DebugString().c_str(), absl::GetFlag(FLAGS_source).c_str(),
      absl::GetFlag(FLAGS_photo).c_str(), raw / 1e6,
      absl::ToDoubleSeconds(absl::Now() - t0),
      std::thread::hardware_concurrency(),
      absl::GetFlag(FLAGS_pyramid) ? "on" : "off");
  std::fflush(stdout);
  const std::string dir = absl::GetFlag(FLAGS_out_dir);
#ifndef REGSERVE_RESULT_WRITER_STANDALONE
  if (absl::GetFlag(FLAGS_oiio_baseline)) {
    const std::string path = dir + "/result_writer_oiio.tif";
    Print(InChild([&] { return RunOiio(src, path); }), raw);
    if (!absl::GetFlag(FLAGS_keep)) std::remove(path.c_str());
  }
#endif
  for (absl::string_view name :
       absl::StrSplit(absl::GetFlag(FLAGS_compressions), ',')) {
    absl::StatusOr<Compression> c = ParseCompression(name);
    if (!c.ok()) {
      std::fprintf(stderr, "%s\n", c.status().ToString().c_str());
      return 1;
    }
    for (absl::string_view t :
         absl::StrSplit(absl::GetFlag(FLAGS_threads), ',')) {
      int threads = 1;
      if (!absl::SimpleAtoi(t, &threads) || threads < 1) return 1;
      const std::string path =
          absl::StrCat(dir, "/result_writer_", name, "_", threads, ".tif");
      const Compression comp = *c;
      Print(InChild([&] { return RunWriter(src, comp, threads, path); }), raw);
      if (!absl::GetFlag(FLAGS_keep)) std::remove(path.c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return regserve::Main();
}
