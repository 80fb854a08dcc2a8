// Copyright regserve authors.
//
// Decode memory benchmark (not a test; see docs/benchmarks.md, "Decode
// memory"). Writes synthetic RGB uint8 images of two sizes in the layouts
// users send (PNG, JPEG, striped TIFF, tiled TIFF, single-strip TIFF), then
// decodes each with ReadImageFile in a fresh child process and prints the
// peak RSS above the decoded image: the scratch the planner's decode estimate
// must cover (core/plan/plan.cc, kDecodeScratchBytes).
//
//   decode_memory_benchmark [--dir /tmp]
#include <OpenImageIO/imageio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "core/image/image_io.h"

ABSL_FLAG(std::string, dir, "/tmp", "where the synthetic images are written");

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

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
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
