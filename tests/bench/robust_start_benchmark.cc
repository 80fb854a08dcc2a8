// Copyright regserve authors.
//
// The robust start on real images with a known map, through the engine as
// the job pipeline runs it (planner, grayscale copies, initial alignment,
// pre-warp, elastix + transformix, composition), against elastix and
// transformix alone with the same preset (today's pipeline, "by hand").
// Prints the residual against the truth (mean, median, p95, max over a grid
// of fixed-image points whose true image lies inside the moving image) and
// the time of each step; with --memory, the initial alignment's peak RSS
// growth for several detection sizes (each in a fresh child process).
// --prewarp_fill=zero leaves the pre-warped copy black outside the moving
// image instead of filling it with the fixed copy (the stage's way). --job
// runs each pair as one whole job through a JobManager (real elastix, CPU
// warp) and prints its stage times and the initial alignment's reasons.
//
//   build/tests/bench/robust_start_benchmark PHOTO [--graffiti=DIR]
//       [--max_registration_mp=4] [--threads=2] [--no_elastix] [--memory]
//       [--prewarp_fill=zero] [--job]
//
// PHOTO gets the strong homography of the issue (60 degrees, scale 0.9,
// keystone); DIR (tests/data/graffiti) holds graf1.png, graf3.png and their
// published homography H1to3p. tests/bench/robust_start_benchmark.sh
// fetches the Kleiber photo from Debian and runs it.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "core/hardware/hardware.h"
#include "core/image/field_ops.h"
#include "core/image/image_io.h"
#include "core/jobs/job_manager.h"
#include "core/plan/plan.h"
#include "core/registration/registration.h"
#include "core/registration/robust_start.h"
#include "tests/bench/strong_homography.h"

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

struct Flags {
  std::string photo;
  std::string graffiti = "tests/data/graffiti";
  double max_registration_mp = 4;
  int threads = 2;
  bool elastix = true;
  bool memory = false;
  bool fill_fixed = true;  // --prewarp_fill=zero: outside the moving = 0
  bool job = false;        // --job: the whole job through a JobManager
};

// Bilinear sample of `f` at full-resolution (x, y), clamped to the grid, as
// the warp reads it.
void SampleField(const DisplacementField& f, double x, double y, double* dx,
                 double* dy) {
  const double u = std::clamp((x - f.origin_x) / f.spacing_x, 0.0,
                              static_cast<double>(f.width - 1));
  const double v = std::clamp((y - f.origin_y) / f.spacing_y, 0.0,
                              static_cast<double>(f.height - 1));
  const int64_t i = std::min<int64_t>(static_cast<int64_t>(u),
                                      std::max<int64_t>(f.width - 2, 0));
  const int64_t j = std::min<int64_t>(static_cast<int64_t>(v),
                                      std::max<int64_t>(f.height - 2, 0));
  const int64_t i1 = std::min(i + 1, f.width - 1);
  const int64_t j1 = std::min(j + 1, f.height - 1);
  const double a = u - i, b = v - j;
  auto at = [&](const std::vector<float>& c, int64_t ii, int64_t jj) {
    return static_cast<double>(c[jj * f.width + ii]);
  };
  for (int k = 0; k < 2; ++k) {
    const std::vector<float>& c = k == 0 ? f.dx : f.dy;
    const double top = at(c, i, j) + a * (at(c, i1, j) - at(c, i, j));
    const double bot = at(c, i, j1) + a * (at(c, i1, j1) - at(c, i, j1));
    (k == 0 ? *dx : *dy) = top + b * (bot - top);
  }
}

struct Residual {
  double mean = 0, median = 0, p95 = 0, max = 0;
  size_t points = 0;
};

// |p + field(p) - truth(p)| over a grid of fixed points p (every `step` px)
// whose true image lies inside the moving image.
Residual Measure(const DisplacementField& field, const Homography& truth,
                 int64_t fw, int64_t fh, int64_t mw, int64_t mh, int step) {
  std::vector<double> e;
  for (int64_t y = 0; y < fh; y += step) {
    for (int64_t x = 0; x < fw; x += step) {
      double tx = 0, ty = 0;
      if (!truth.Apply(x, y, &tx, &ty)) continue;
      if (tx < 0 || ty < 0 || tx > mw - 1 || ty > mh - 1) continue;
      double dx = 0, dy = 0;
      SampleField(field, x, y, &dx, &dy);
      e.push_back(std::hypot(x + dx - tx, y + dy - ty));
    }
  }
  Residual r;
  r.points = e.size();
  if (e.empty()) return r;
  std::sort(e.begin(), e.end());
  double sum = 0;
  for (double v : e) sum += v;
  r.mean = sum / e.size();
  r.median = e[e.size() / 2];
  r.p95 = e[std::min(e.size() - 1, static_cast<size_t>(0.95 * e.size()))];
  r.max = e.back();
  return r;
}

void PrintRow(const char* name, const char* what, const Residual& r,
              double seconds, const std::string& note) {
  std::printf("%-10s %-28s %8.3f %8.3f %8.3f %9.3f %8zu %8.1f  %s\n", name,
              what, r.mean, r.median, r.p95, r.max, r.points, seconds,
              note.c_str());
  std::fflush(stdout);
}

// moving(y) = fixed(H^-1 y), same size, any channel count (uint8).
Image WarpByTruth(const Image& fixed, const Homography& h) {
  const int type = CV_8UC(fixed.channels());
  const cv::Mat src(static_cast<int>(fixed.height()),
                    static_cast<int>(fixed.width()), type,
                    const_cast<uint8_t*>(fixed.data()));
  Image out = *Image::Allocate(fixed.spec());
  cv::Mat dst(static_cast<int>(out.height()), static_cast<int>(out.width()),
              type, out.data());
  cv::warpPerspective(src, dst, cv::Matx33d(h.m.data()), dst.size(),
                      cv::INTER_LINEAR, cv::BORDER_CONSTANT, cv::Scalar(0));
  return out;
}

struct Case {
  std::string name;
  Image fixed;
  Image moving;
  Homography truth;
};

absl::StatusOr<RegistrationResult> Elastix(const Image& fixed_copy,
                                           const Image& moving_copy, int64_t fw,
                                           int64_t fh, int64_t mw, int64_t mh,
                                           const Flags& flags) {
  RegistrationRequest req;
  req.work_dir = std::filesystem::temp_directory_path() /
                 ("regserve_rs_bench_" + std::to_string(getpid()));
  req.fixed = &fixed_copy;
  req.moving = &moving_copy;
  req.fixed_full_width = fw;
  req.fixed_full_height = fh;
  req.moving_full_width = mw;
  req.moving_full_height = mh;
  req.transform = TransformKind::kBSpline;
  req.threads = flags.threads;
  auto r = Register(req, ElastixConfig{});
  std::filesystem::remove_all(req.work_dir);
  return r;
}

int RunCase(const Case& c, const Flags& flags) {
  const int64_t fw = c.fixed.width(), fh = c.fixed.height();
  const int64_t mw = c.moving.width(), mh = c.moving.height();
  JobOptions opts;
  opts.max_registration_megapixels = flags.max_registration_mp;
  opts.device = DevicePreference::kCpu;
  Budgets b;
  b.ram_bytes = 16ull << 30;
  b.cpu_threads = flags.threads;
  auto plan = MakePlan(c.fixed.spec(), c.moving.spec(), opts, b);
  if (!plan.ok()) {
    std::fprintf(stderr, "%s\n", plan.status().ToString().c_str());
    return 1;
  }
  double t0 = Now();
  auto fg = MakeGrayscaleCopy(c.fixed, plan->registration_fixed_width,
                              plan->registration_fixed_height, flags.threads);
  auto mg = MakeGrayscaleCopy(c.moving, plan->registration_moving_width,
                              plan->registration_moving_height, flags.threads);
  if (!fg.ok() || !mg.ok()) return 1;
  const double gray_s = Now() - t0;
  const int step = static_cast<int>(std::max<int64_t>(4, fw / 400));
  std::printf("\n%s: fixed %lldx%lld, registration copies %lldx%lld (%.2f s)\n",
              c.name.c_str(), static_cast<long long>(fw),
              static_cast<long long>(fh), static_cast<long long>(fg->width()),
              static_cast<long long>(fg->height()), gray_s);
  std::printf("%-10s %-28s %8s %8s %8s %9s %8s %8s\n", "case", "pipeline",
              "mean px", "median", "p95", "max", "points", "s");
  // The robust start alone.
  RobustStartOptions o;
  o.fixed_full_width = fw;
  o.fixed_full_height = fh;
  o.moving_full_width = mw;
  o.moving_full_height = mh;
  o.threads = flags.threads;
  t0 = Now();
  auto a = EstimateInitialAlignment(*fg, *mg, o);
  const double align_s = Now() - t0;
  if (!a.ok()) {
    std::fprintf(stderr, "%s\n", a.status().ToString().c_str());
    return 1;
  }
  const GridGeometry fixed_grid =
      RegistrationGrid(fg->width(), fg->height(), fw, fh);
  if (a->found) {
    auto start = HomographyField(a->fixed_to_moving, fixed_grid, 1);
    PrintRow(c.name.c_str(), "initial alignment only",
             Measure(*start, c.truth, fw, fh, mw, mh, step), align_s,
             a->reason);
  } else {
    std::printf("%-10s %-28s %s\n", c.name.c_str(), "initial alignment only",
                a->reason.c_str());
  }
  if (!flags.elastix) return 0;
  // Start + pre-warp + elastix + composition, as the job runs it.
  if (a->found) {
    t0 = Now();
    const GridGeometry moving_grid =
        RegistrationGrid(mg->width(), mg->height(), mw, mh);
    Image valid;
    auto pre = WarpByHomography(*mg, moving_grid, a->fixed_to_moving,
                                fixed_grid, 0.0f, &valid, flags.threads);
    // As the stage does: no moving data -> the fixed copy.
    if (pre.ok() && flags.fill_fixed) {
      absl::Status s = FillInvalid(valid, *fg, &*pre);
      if (!s.ok()) return 1;
    }
    const double prewarp_s = Now() - t0;
    t0 = Now();
    auto reg = Elastix(*fg, *pre, fw, fh, fw, fh, flags);
    if (!reg.ok()) {
      std::printf("%-10s %-28s elastix failed: %s\n", c.name.c_str(),
                  "start + elastix", reg.status().ToString().c_str());
    } else {
      const double elastix_s = Now() - t0;
      t0 = Now();
      auto total =
          ComposeHomographyField(a->fixed_to_moving, reg->field, flags.threads);
      const double compose_s = Now() - t0;
      char note[200];
      std::snprintf(note, sizeof(note),
                    "start %.2f + pre-warp %.2f + elastix/transformix %.1f + "
                    "compose %.3f s",
                    align_s, prewarp_s, elastix_s, compose_s);
      PrintRow(c.name.c_str(), "start + elastix (the job)",
               Measure(*total, c.truth, fw, fh, mw, mh, step),
               align_s + prewarp_s + elastix_s + compose_s, note);
    }
  }
  // Today's pipeline: elastix + transformix from the image centres.
  t0 = Now();
  auto by_hand = Elastix(*fg, *mg, fw, fh, mw, mh, flags);
  if (!by_hand.ok()) {
    std::printf("%-10s %-28s failed: %s\n", c.name.c_str(), "elastix by hand",
                by_hand.status().ToString().c_str());
  } else {
    PrintRow(c.name.c_str(), "elastix by hand",
             Measure(by_hand->field, c.truth, fw, fh, mw, mh, step), Now() - t0,
             "elastix + transformix, bspline preset");
  }
  return 0;
}

// The initial alignment's peak RSS growth on the case's copies with the
// given detection size, in a fresh child (the parent's freed pages would
// hide growth).
void MemoryRow(const Case& c, double detection_mp, const Flags& flags) {
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid != 0) {
    int status = 0;
    waitpid(pid, &status, 0);
    return;
  }
  const int64_t fw = c.fixed.width(), fh = c.fixed.height();
  const double f = std::max(1.0, std::sqrt(static_cast<double>(fw * fh) /
                                           (flags.max_registration_mp * 1e6)));
  const int64_t cw = static_cast<int64_t>(fw / f);
  const int64_t ch = static_cast<int64_t>(fh / f);
  auto fg = MakeGrayscaleCopy(c.fixed, cw, ch, flags.threads);
  auto mg = MakeGrayscaleCopy(c.moving, cw, ch, flags.threads);
  RobustStartOptions o;
  o.fixed_full_width = o.moving_full_width = fw;
  o.fixed_full_height = o.moving_full_height = fh;
  o.threads = flags.threads;
  o.detection_megapixels = detection_mp;
  ResetPeakRss();
  const uint64_t before = StatusBytes("VmRSS:");
  auto a = EstimateInitialAlignment(*fg, *mg, o);
  const uint64_t peak = StatusBytes("VmHWM:");
  std::printf(
      "%-10s copies %5.2f MP  detection %4.2f MP  peak RSS growth "
      "%7.1f MB  (%s, %d+%d keypoints, %.2f s)\n",
      c.name.c_str(), cw * ch / 1e6, detection_mp, (peak - before) / 1e6,
      a.ok() ? a->reason.c_str() : "error", a.ok() ? a->fixed_keypoints : 0,
      a.ok() ? a->moving_keypoints : 0, a.ok() ? a->seconds : 0.0);
  std::fflush(stdout);
  _exit(0);
}

// The pair as one job through a JobManager with the real elastix and the CPU
// warp, from server-side TIFF inputs: the stage times as a job records them.
int RunJob(const Case& c, const Flags& flags) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("regserve_rs_job_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir / "inputs");
  if (!WriteImageFile((dir / "inputs/fixed.tif").string(), c.fixed).ok() ||
      !WriteImageFile((dir / "inputs/moving.tif").string(), c.moving).ok()) {
    std::fprintf(stderr, "writing the inputs failed\n");
    return 1;
  }
  HardwareSnapshot hw;
  hw.ram_total_bytes = hw.ram_available_bytes = 16ull << 30;
  hw.cpu_cores = flags.threads;
  FakeProbe probe(hw);
  SchedulerConfig sc;
  sc.ram_budget_bytes = 12ull << 30;
  sc.cpu_slots = 1;
  sc.machine_threads = sc.min_threads = flags.threads;  // each stage's
  ResourceScheduler scheduler(sc, &probe);
  JobManager::Options opts;
  opts.data_dir = (dir / "data").string();
  opts.input_root = (dir / "inputs").string();
  opts.device = DevicePreference::kCpu;
  auto m = JobManager::Create(opts, &scheduler, &probe);
  if (!m.ok()) {
    std::fprintf(stderr, "%s\n", m.status().ToString().c_str());
    return 1;
  }
  JobSpec spec;
  spec.fixed.path = "fixed.tif";
  spec.moving.path = "moving.tif";
  spec.options.transform = TransformKind::kBSpline;
  spec.options.max_registration_megapixels = flags.max_registration_mp;
  spec.options.device = DevicePreference::kCpu;
  const double t0 = Now();
  auto id = (*m)->CreateJob(spec, "");
  if (!id.ok()) {
    std::fprintf(stderr, "%s\n", id.status().ToString().c_str());
    return 1;
  }
  JobInfo info;
  do {
    absl::SleepFor(absl::Milliseconds(50));
    info = *(*m)->GetJob(*id, "");
  } while (!IsTerminal(info.state));
  std::printf("\n%s as a job: %s in %.1f s\n", c.name.c_str(),
              std::string(JobStateName(info.state)).c_str(), Now() - t0);
  for (const StageTiming& t : info.timings) {
    std::printf("  stage %-18s %7.2f s\n",
                std::string(StageName(t.stage)).c_str(), t.seconds);
  }
  for (const std::string& r : info.plan.reasons) {
    if (absl::StrContains(r, "initial alignment")) {
      std::printf("  reason: %s\n", r.c_str());
    }
  }
  std::fflush(stdout);
  m->reset();
  std::filesystem::remove_all(dir);
  return info.state == JobState::kCompleted ? 0 : 1;
}

std::optional<Case> PhotoCase(const std::string& path) {
  auto photo = ReadImageFile(path);
  if (!photo.ok()) {
    std::fprintf(stderr, "%s\n", photo.status().ToString().c_str());
    return std::nullopt;
  }
  Case c;
  c.name = "photo";
  c.truth = StrongHomography(photo->width(), photo->height());
  c.moving = WarpByTruth(*photo, c.truth);
  c.fixed = *std::move(photo);
  return c;
}

std::optional<Case> GraffitiCase(const std::string& dir) {
  auto g1 = ReadImageFile(dir + "/graf1.png");
  auto g3 = ReadImageFile(dir + "/graf3.png");
  if (!g1.ok() || !g3.ok()) {
    std::fprintf(stderr, "graffiti: %s %s\n", g1.status().ToString().c_str(),
                 g3.status().ToString().c_str());
    return std::nullopt;
  }
  Case c;
  c.name = "graffiti";
  c.fixed = *std::move(g1);
  c.moving = *std::move(g3);
  // H1to3p.xml: graf1 pixel coordinates -> graf3.
  c.truth.m = {7.6285898e-01, -2.9922929e-01, 2.2567123e+02,
               3.3443473e-01, 1.0143901e+00,  -7.6999973e+01,
               3.4663091e-04, -1.4364524e-05, 1.0};
  return c;
}

int Main(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--graffiti=", 0) == 0) {
      flags.graffiti = a.substr(11);
    } else if (a.rfind("--max_registration_mp=", 0) == 0) {
      flags.max_registration_mp = std::atof(a.c_str() + 22);
    } else if (a.rfind("--threads=", 0) == 0) {
      flags.threads = std::atoi(a.c_str() + 10);
    } else if (a == "--prewarp_fill=zero") {
      flags.fill_fixed = false;
    } else if (a == "--no_elastix") {
      flags.elastix = false;
    } else if (a == "--job") {
      flags.job = true;
    } else if (a == "--memory") {
      flags.memory = true;
    } else if (a.rfind("--", 0) != 0) {
      flags.photo = a;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  std::vector<Case> cases;
  if (!flags.photo.empty()) {
    std::optional<Case> c = PhotoCase(flags.photo);
    if (!c.has_value()) return 1;
    cases.push_back(*std::move(c));
  }
  if (!flags.graffiti.empty()) {
    std::optional<Case> c = GraffitiCase(flags.graffiti);
    if (!c.has_value()) return 1;
    cases.push_back(*std::move(c));
  }
  std::printf("robust start benchmark: threads=%d, max_registration_mp=%g\n",
              flags.threads, flags.max_registration_mp);
  for (const Case& c : cases) {
    if (flags.memory) {
      for (double mp : {0.5, 1.0, 1.5, 2.0}) MemoryRow(c, mp, flags);
      continue;
    }
    if (flags.job) {
      if (RunJob(c, flags) != 0) return 1;
      continue;
    }
    if (RunCase(c, flags) != 0) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) { return regserve::Main(argc, argv); }
