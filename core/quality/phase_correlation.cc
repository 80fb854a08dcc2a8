// Copyright regserve authors.
#include "core/quality/phase_correlation.h"

#include <fftw3.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace regserve {
namespace {

struct Plans {
  fftwf_plan forward = nullptr;  // r2c, size x size
  fftwf_plan inverse = nullptr;  // c2r, unscaled (as OpenCV's idft)
};

// FFTW's planner is not thread-safe; executing a plan on new arrays is.
// Plans are made once per size (FFTW_ESTIMATE: deterministic, so that an
// estimate is the same in every run) and kept for the process's life.
absl::Mutex plan_mu;
std::map<int, Plans>& PlanCache() ABSL_EXCLUSIVE_LOCKS_REQUIRED(plan_mu) {
  static auto* cache = new std::map<int, Plans>();
  return *cache;
}

float* AllocFloats(size_t n) {
  return static_cast<float*>(fftwf_malloc(n * sizeof(float)));
}

}  // namespace

struct PhaseCorrelator::Buffers {
  int n = 0;
  Plans plans;
  float* a = nullptr;  // windowed inputs, then (a) the correlation
  float* b = nullptr;
  fftwf_complex* fa = nullptr;  // n x (n / 2 + 1)
  fftwf_complex* fb = nullptr;
  ~Buffers() {
    fftwf_free(a);
    fftwf_free(b);
    fftwf_free(fa);
    fftwf_free(fb);
  }
};

absl::StatusOr<PhaseCorrelator> PhaseCorrelator::Create(int size) {
  if (size < 2 || size > 1024 || (size & (size - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "phase correlation: patch size ", size, " is not a power of two"));
  }
  auto b = std::make_unique<Buffers>();
  b->n = size;
  const size_t real = static_cast<size_t>(size) * size;
  const size_t spec = static_cast<size_t>(size) * (size / 2 + 1);
  b->a = AllocFloats(real);
  b->b = AllocFloats(real);
  b->fa =
      static_cast<fftwf_complex*>(fftwf_malloc(spec * sizeof(fftwf_complex)));
  b->fb =
      static_cast<fftwf_complex*>(fftwf_malloc(spec * sizeof(fftwf_complex)));
  if (!b->a || !b->b || !b->fa || !b->fb) {
    return absl::ResourceExhaustedError(
        "phase correlation: out of memory for the patch buffers");
  }
  {
    absl::MutexLock lock(&plan_mu);
    Plans& p = PlanCache()[size];
    if (p.forward == nullptr) {
      p.forward = fftwf_plan_dft_r2c_2d(size, size, b->a, b->fa, FFTW_ESTIMATE);
      p.inverse = fftwf_plan_dft_c2r_2d(size, size, b->fa, b->a, FFTW_ESTIMATE);
    }
    if (p.forward == nullptr || p.inverse == nullptr) {
      return absl::InternalError(
          absl::StrCat("phase correlation: FFTW cannot plan ", size, "x", size,
                       " transforms"));
    }
    b->plans = p;
  }
  return PhaseCorrelator(std::move(b));
}

PhaseCorrelator::PhaseCorrelator(std::unique_ptr<Buffers> b)
    : b_(std::move(b)) {}
PhaseCorrelator::PhaseCorrelator(PhaseCorrelator&&) noexcept = default;
PhaseCorrelator& PhaseCorrelator::operator=(PhaseCorrelator&&) noexcept =
    default;
PhaseCorrelator::~PhaseCorrelator() = default;

int PhaseCorrelator::size() const { return b_->n; }

cv::Point2d PhaseCorrelator::Correlate(const cv::Mat& a, const cv::Mat& b,
                                       const cv::Mat& window, double* peak) {
  const int n = b_->n;
  CV_Assert(a.type() == CV_32FC1 && b.type() == CV_32FC1 &&
            window.type() == CV_32FC1 && a.rows == n && a.cols == n &&
            b.size() == a.size() && window.size() == a.size());
  for (int y = 0; y < n; ++y) {
    const float* pa = a.ptr<float>(y);
    const float* pb = b.ptr<float>(y);
    const float* pw = window.ptr<float>(y);
    float* da = b_->a + static_cast<size_t>(y) * n;
    float* db = b_->b + static_cast<size_t>(y) * n;
    for (int x = 0; x < n; ++x) {
      da[x] = pw[x] * pa[x];
      db[x] = pw[x] * pb[x];
    }
  }
  fftwf_execute_dft_r2c(b_->plans.forward, b_->a, b_->fa);
  fftwf_execute_dft_r2c(b_->plans.forward, b_->b, b_->fb);
  // A conj(B) over its magnitude plus FLT_EPSILON on its square, as
  // OpenCV's divSpectrums damps the bins at the float rounding floor.
  const int spec = n * (n / 2 + 1);
  float* fa = &b_->fa[0][0];
  const float* fb = &b_->fb[0][0];
#pragma omp simd
  for (int k = 0; k < spec; ++k) {
    const float ar = fa[2 * k], ai = fa[2 * k + 1];
    const float br = fb[2 * k], bi = fb[2 * k + 1];
    const float re = ar * br + ai * bi, im = ai * br - ar * bi;
    const float mag = std::sqrt(re * re + im * im);
    const float scale = mag / (mag * mag + FLT_EPSILON);
    fa[2 * k] = re * scale;
    fa[2 * k + 1] = im * scale;
  }
  fftwf_execute_dft_c2r(b_->plans.inverse, b_->fa, b_->a);
  // The highest peak, then its place with the quadrants swapped (zero
  // shift at the centre): stored (x, y) is shifted ((x + h) % n, ...).
  const int h = n / 2;
  const float* c = b_->a;
  int best = 0;
  for (int k = 1; k < n * n; ++k) {
    if (c[k] > c[best]) best = k;
  }
  const int px = (best % n + h) % n, py = (best / n + h) % n;
  const auto at = [&](int x, int y) {
    return c[static_cast<size_t>((y + h) % n) * n + (x + h) % n];
  };
  // The 5x5 weighted centroid, clamped to the array (not wrapped).
  double sum = 0, cx = 0, cy = 0;
  for (int y = std::max(0, py - 2); y <= std::min(n - 1, py + 2); ++y) {
    for (int x = std::max(0, px - 2); x <= std::min(n - 1, px + 2); ++x) {
      const double v = at(x, y);
      cx += x * v;
      cy += y * v;
      sum += v;
    }
  }
  sum += DBL_EPSILON;
  if (peak != nullptr) *peak = sum / (static_cast<double>(n) * n);
  return {n / 2.0 - cx / sum, n / 2.0 - cy / sum};
}

}  // namespace regserve
