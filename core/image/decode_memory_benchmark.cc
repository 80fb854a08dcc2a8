// Copyright regserve authors.
//
// Decode memory benchmark (not a test; see docs/benchmarks.md, "Decode
// memory"). Writes synthetic RGB uint8 images of two sizes in the layouts
// users send (PNG, JPEG, striped TIFF, tiled TIFF, single-strip TIFF), then
// decodes each with ReadImageFile in a fresh child process and prints the
// peak RSS above the decoded image: the scratch the planner's decode estimate
// must cover (core/plan/plan.cc, kDecodeScratchBytes).
//
// With --input, instead: for each given file (e.g. a large real photo), the
// peak RSS of the two ways the decode stage can make a grayscale copy of
// --target_mp megapixels: the image read whole + MakeGrayscaleCopy, and
// ReadGrayscaleCopyFile streaming it in strips (streamed_gray.h), each in a
// fresh child, next to the planner's estimate of each and a hash of the
// copy (the two must agree bit for bit).
//
//   decode_memory_benchmark [--dir /tmp]
//   decode_memory_benchmark --input=a.tif,b.jpg [--target_mp=4] [--threads=2]
#include <OpenImageIO/imageio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/image/image_io.h"
#include "core/image/streamed_gray.h"

ABSL_FLAG(std::string, dir, "/tmp", "where the synthetic images are written");
ABSL_FLAG(std::string, input, "",
          "comma-separated image files: compare the whole and the streamed "
          "grayscale copy instead of the synthetic table");
ABSL_FLAG(double, target_mp, 4.0, "--input: the copy's size in megapixels");
ABSL_FLAG(int, threads, 2, "--input: decoding and reducing threads");
ABSL_FLAG(double, chunk_mb, 0,
          "--input: decoded MB of rows the streamed path reads at a time (0: "
          "its default)");

namespace {

long PeakRssKb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

struct Layout {
  const char* name;
  const char* ext;
  int rows_per_strip;  // TIFF only; 0: writer default
  int tile;            // TIFF only; 0: strips
};

bool WriteSynthetic(const std::string& path, int w, int h, const Layout& l) {
  std::vector<unsigned char> px(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < px.size(); ++i) {
    px[i] = static_cast<unsigned char>((i * 2654435761u) >> 24);
  }
  OIIO::ImageSpec spec(w, h, 3, OIIO::TypeDesc::UINT8);
  if (l.rows_per_strip > 0)
    spec.attribute("tiff:RowsPerStrip", l.rows_per_strip);
  if (l.tile > 0) spec.tile_width = spec.tile_height = l.tile;
  auto out = OIIO::ImageOutput::create(path);
  if (!out || !out->open(path, spec)) return false;
  const bool ok = out->write_image(OIIO::TypeDesc::UINT8, px.data());
  return out->close() && ok;
}

// Decodes in a child so that its peak RSS is this read's alone.
void Measure(const std::string& path, const char* label, uint64_t bytes) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return;
  const pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    const long before = PeakRssKb();
    regserve::ReadOptions options;
    options.threads = 1;
    absl::StatusOr<regserve::Image> image =
        regserve::ReadImageFile(path, options);
    const long after = PeakRssKb();
    const std::string line =
        image.ok() ? absl::StrCat((after - before) * 1024) : "error";
    (void)!write(pipefd[1], line.data(), line.size());
    _exit(image.ok() ? 0 : 1);
  }
  close(pipefd[1]);
  char buf[64] = {};
  const ssize_t n = read(pipefd[0], buf, sizeof(buf) - 1);
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (n <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::printf("| %s | %.1f | decode failed |\n", label, bytes / 1e6);
    return;
  }
  const double grew = std::atof(buf);
  absl::StatusOr<regserve::ImageSpec> spec = regserve::ReadImageSpecFile(path);
  const double planned =
      spec.ok() ? static_cast<double>(spec->decode_scratch_bytes) : -1;
  std::printf("| %s | %.1f | %.1f | %+.1f | %.1f |\n", label, bytes / 1e6,
              grew / 1e6, (grew - static_cast<double>(bytes)) / 1e6,
              planned / 1e6);
}

uint64_t ChunkBytes() {
  return static_cast<uint64_t>(absl::GetFlag(FLAGS_chunk_mb) * 1e6);
}

// FNV-1a of the copy's bytes, to show the two paths agree.
uint64_t Hash(const regserve::Image& image) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < image.size_bytes(); ++i) {
    h = (h ^ image.data()[i]) * 1099511628211ull;
  }
  return h;
}

// In a child: the copy made one way; "growth_bytes seconds hash".
std::string CopyInChild(const std::string& path, int64_t tw, int64_t th,
                        bool streamed) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return "error";
  const pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    const int threads = absl::GetFlag(FLAGS_threads);
    const long before = PeakRssKb();
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<regserve::Image> gray;
    if (streamed) {
      regserve::StreamedGrayOptions o;
      o.threads = threads;
      o.chunk_bytes = ChunkBytes();
      gray = regserve::ReadGrayscaleCopyFile(path, tw, th, o);
    } else {
      regserve::ReadOptions o;
      o.threads = threads;
      absl::StatusOr<regserve::Image> whole = regserve::ReadImageFile(path, o);
      gray = whole.ok() ? regserve::MakeGrayscaleCopy(*whole, tw, th, threads)
                        : whole.status();
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    const long after = PeakRssKb();
    const std::string line =
        gray.ok()
            ? absl::StrCat((after - before) * 1024, " ", secs, " ", Hash(*gray))
            : absl::StrCat("error ", gray.status().ToString());
    (void)!write(pipefd[1], line.data(), line.size());
    _exit(0);
  }
  close(pipefd[1]);
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  close(pipefd[0]);
  waitpid(pid, nullptr, 0);
  return out;
}

int CompareInputs() {
  std::printf(
      "| image | decoded MB | copy | path | peak RSS growth MB | planned MB | "
      "s | copy hash |\n|---|---|---|---|---|---|---|---|\n");
  const int threads = absl::GetFlag(FLAGS_threads);
  for (absl::string_view p : absl::StrSplit(absl::GetFlag(FLAGS_input), ',')) {
    const std::string path(p);
    absl::StatusOr<regserve::ImageSpec> spec =
        regserve::ReadImageSpecFile(path);
    if (spec.ok() && ChunkBytes() > 0) {
      // The layout for that chunk: what the streamed read will use.
      regserve::StreamedGrayOptions o;
      o.chunk_bytes = ChunkBytes();
      spec = regserve::ReadGrayscaleLayout(path, o);
    }
    if (!spec.ok()) {
      std::fprintf(stderr, "%s\n", spec.status().ToString().c_str());
      return 1;
    }
    const double f = std::max(
        1.0,
        std::sqrt(spec->pixels() / (absl::GetFlag(FLAGS_target_mp) * 1e6)));
    const int64_t tw = static_cast<int64_t>(spec->width / f);
    const int64_t th = static_cast<int64_t>(spec->height / f);
    const uint64_t gray = 4ull * tw * th;
    // The planner's figures (core/plan/plan.cc, DecodeStageRam).
    const uint64_t whole = spec->bytes() + spec->decode_scratch_bytes + gray;
    const uint64_t streamed =
        regserve::StreamedGrayscaleWorkBytes(*spec, tw, threads) + gray;
    for (bool s : {false, true}) {
      const std::string r = CopyInChild(path, tw, th, s);
      std::vector<std::string> v = absl::StrSplit(r, ' ');
      if (v.size() != 3 || v[0] == "error") {
        std::printf("| %s | failed: %s |\n", path.c_str(), r.c_str());
        continue;
      }
      std::printf(
          "| %s (%s) | %.1f | %lldx%lld | %s | %.1f | %.1f | %.2f | "
          "%016llx |\n",
          path.c_str(), spec->DebugString().c_str(), spec->bytes() / 1e6,
          static_cast<long long>(tw), static_cast<long long>(th),
          s ? absl::StrCat("streamed, ", spec->stream_rows, " rows").c_str()
            : "whole",
          std::atof(v[0].c_str()) / 1e6, (s ? streamed : whole) / 1e6,
          std::atof(v[1].c_str()), std::strtoull(v[2].c_str(), nullptr, 10));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_input).empty()) return CompareInputs();
  const std::string dir = absl::GetFlag(FLAGS_dir);
  const Layout layouts[] = {{"PNG", "png", 0, 0},
                            {"JPEG", "jpg", 0, 0},
                            {"TIFF, writer's strips", "tif", 0, 0},
                            {"TIFF, 512 px tiles", "tif", 0, 512},
                            {"TIFF, one strip", "tif", 1 << 30, 0}};
  std::printf(
      "| image | decoded MB | peak RSS growth MB | above the image MB | "
      "planned scratch MB |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const auto& [w, h] :
       std::vector<std::pair<int, int>>{{4000, 3000}, {8000, 8000}}) {
    for (const Layout& l : layouts) {
      const std::string path =
          absl::StrCat(dir, "/regserve_decode_bench_", getpid(), ".", l.ext);
      if (!WriteSynthetic(path, w, h, l)) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        return 1;
      }
      const std::string label = absl::StrCat(w, "x", h, " RGB ", l.name);
      Measure(path, label.c_str(), static_cast<uint64_t>(w) * h * 3);
      std::remove(path.c_str());
    }
  }
  return 0;
}
