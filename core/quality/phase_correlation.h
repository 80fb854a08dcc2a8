// Copyright regserve authors.
//
// Phase correlation of two square float patches under a window, computed
// as cv::phaseCorrelate computes it (the windowed patches' cross-power
// spectrum normalised to unit magnitude, its inverse transform, the 5x5
// weighted centroid around the highest peak, the peak's share of the
// energy as its response), on FFTW plans made once per patch size.
//
// Why not cv::phaseCorrelate: it re-plans and re-allocates at every call,
// and OpenCV's 64x64 real DFT alone takes about 30 us on the 2-core CI
// machine; the quality map calls it once or twice for each of up to 8192
// patches per estimate, and the CPU job estimates about ten times
// (docs/benchmarks.md, "The quality estimate's cost").
//
//   REGSERVE_ASSIGN_OR_RETURN(PhaseCorrelator pc, PhaseCorrelator::Create(64));
//   double peak = 0;
//   cv::Point2d s = pc.Correlate(a, b, window, &peak);  // b(x) ~ a(x - s)
//
// Thread safety: Create() may be called from any thread; one instance must
// not be used by two threads at once (each worker makes its own).
#ifndef REGSERVE_CORE_QUALITY_PHASE_CORRELATION_H_
#define REGSERVE_CORE_QUALITY_PHASE_CORRELATION_H_

#include <memory>

#include "absl/status/statusor.h"
#include "opencv2/core.hpp"

namespace regserve {

class PhaseCorrelator {
 public:
  // A correlator for size x size patches; size a power of two, 2..1024.
  // InvalidArgument for another size, Internal when FFTW cannot plan.
  static absl::StatusOr<PhaseCorrelator> Create(int size);

  PhaseCorrelator(PhaseCorrelator&&) noexcept;
  PhaseCorrelator& operator=(PhaseCorrelator&&) noexcept;
  ~PhaseCorrelator();

  int size() const;

  // The shift s with b(x) ~ a(x - s), as cv::phaseCorrelate(a * window,
  // b * window) returns it, and in *peak (may be null) its response. a, b
  // and window: CV_32FC1, size x size (checked by CV_Assert, as OpenCV
  // checks its own arguments).
  cv::Point2d Correlate(const cv::Mat& a, const cv::Mat& b,
                        const cv::Mat& window, double* peak);

 private:
  struct Buffers;
  explicit PhaseCorrelator(std::unique_ptr<Buffers> b);
  std::unique_ptr<Buffers> b_;
};

}  // namespace regserve

#endif  // REGSERVE_CORE_QUALITY_PHASE_CORRELATION_H_
