// Copyright regserve authors.
#include "core/registration/robust_start.h"

#include <algorithm>
#include <cmath>
#include <opencv2/calib3d.hpp>
#include <opencv2/core.hpp>
#include <opencv2/features2d.hpp>
#include <opencv2/imgproc.hpp>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"

namespace regserve {
namespace {

constexpr int64_t kMinEdge = 16;
// SIFT finding fewer keypoints than this in either copy: ORB instead
// (corners where SIFT's contrast threshold sees nothing).
constexpr int kMinSiftKeypoints = 100;
// Plausible local scale of the map anywhere in the fixed image: the start
// is meant for 0.5-2x, with margin for perspective.
constexpr double kMinScale = 0.2;
constexpr double kMaxScale = 5.0;
// The inliers must span this fraction of the fixed copy's width and height,
// so that a cluster in one corner does not decide the whole map.
constexpr double kMinSpread = 0.1;

// A copy ready for detection: 8-bit, about the detection size, and the map
// from its pixel centres to full resolution, per axis X = a x + (a - 1) / 2
// (cv::resize's INTER_AREA keeps the pixel-centre convention).
struct DetectionImage {
  cv::Mat u8;
  double ax = 1.0;
  double ay = 1.0;
};

// The copy's robust range (0.5th to 99.5th percentile of up to ~200k
// samples), mapped to 0..255.
cv::Mat ToEightBit(const cv::Mat& f32) {
  std::vector<float> sample;
  const size_t n = f32.total();
  const size_t step = std::max<size_t>(1, n / 200000);
  const float* p = f32.ptr<float>();
  for (size_t i = 0; i < n; i += step) {
    if (std::isfinite(p[i])) sample.push_back(p[i]);
  }
  cv::Mat out(f32.size(), CV_8U, cv::Scalar(0));
  if (sample.size() < 2) return out;
  auto quantile = [&](double q) {
    auto it = sample.begin() + static_cast<ptrdiff_t>(q * (sample.size() - 1));
    std::nth_element(sample.begin(), it, sample.end());
    return *it;
  };
  const double lo = quantile(0.005);
  const double hi = quantile(0.995);
  if (!(hi > lo)) return out;  // flat: nothing to detect
  f32.convertTo(out, CV_8U, 255.0 / (hi - lo), -lo * 255.0 / (hi - lo));
  return out;
}

absl::StatusOr<DetectionImage> MakeDetectionImage(const Image& copy,
                                                  int64_t full_w,
                                                  int64_t full_h,
                                                  double megapixels,
                                                  const char* role) {
  if (copy.empty() || copy.channels() != 1 ||
      copy.type() != SampleType::kFloat32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "initial alignment: the ", role, " copy must be float32 grey"));
  }
  if (copy.width() < kMinEdge || copy.height() < kMinEdge ||
      copy.width() > INT32_MAX || copy.height() > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "initial alignment: the ", role, " copy is ", copy.width(), "x",
        copy.height(), "; it needs ", kMinEdge, " to 2^31-1 px per side"));
  }
  if (full_w <= 0 || full_h <= 0) {
    full_w = copy.width();
    full_h = copy.height();
  }
  const cv::Mat src(static_cast<int>(copy.height()),
                    static_cast<int>(copy.width()), CV_32F,
                    const_cast<uint8_t*>(copy.data()));
  const double g =
      std::max(1.0, std::sqrt(static_cast<double>(copy.spec().pixels()) /
                              (std::max(0.01, megapixels) * 1e6)));
  const int w = static_cast<int>(std::max<double>(
      kMinEdge, std::round(static_cast<double>(copy.width()) / g)));
  const int h = static_cast<int>(std::max<double>(
      kMinEdge, std::round(static_cast<double>(copy.height()) / g)));
  cv::Mat small = src;
  if (w != src.cols || h != src.rows) {
    cv::resize(src, small, cv::Size(w, h), 0, 0, cv::INTER_AREA);
  }
  DetectionImage d;
  d.u8 = ToEightBit(small);
  d.ax = static_cast<double>(full_w) / w;
  d.ay = static_cast<double>(full_h) / h;
  return d;
}

struct Features {
  std::vector<cv::KeyPoint> keypoints;
  cv::Mat descriptors;
};

Features Detect(const cv::Mat& img, bool orb, int max_features) {
  cv::Ptr<cv::Feature2D> detector;
  if (orb) {
    // A low FAST threshold: ORB runs where SIFT found too little contrast.
    detector = cv::ORB::create(max_features, 1.2f, 8, 31, 0, 2,
                               cv::ORB::HARRIS_SCORE, 31, 5);
  } else {
    detector = cv::SIFT::create(max_features);
  }
  Features f;
  detector->detectAndCompute(img, cv::noArray(), f.keypoints, f.descriptors);
  if (!orb) {
    // OpenCV's SIFT doubles the image for its first octave (pixel j of the
    // doubled image lies at j / 2 - 0.25) but reports keypoints at j / 2:
    // every keypoint sits +0.25 px off (measured on a photo and its 180
    // degree rotation: 2c = 0.49-0.50 px in x and y, in every octave).
    // The bias is the same in both images, but under rotation or scale it
    // would not cancel.
    for (cv::KeyPoint& k : f.keypoints) k.pt -= cv::Point2f(0.25f, 0.25f);
  }
  return f;
}

// Pairs (fixed index, moving index) that pass Lowe's ratio test from the
// fixed side and are each other's nearest neighbour.
std::vector<std::pair<int, int>> MatchFeatures(const Features& a,
                                               const Features& b, bool binary,
                                               double ratio) {
  std::vector<std::pair<int, int>> out;
  if (a.keypoints.size() < 2 || b.keypoints.size() < 2) return out;
  cv::BFMatcher matcher(binary ? cv::NORM_HAMMING : cv::NORM_L2);
  std::vector<std::vector<cv::DMatch>> ab, ba;
  matcher.knnMatch(a.descriptors, b.descriptors, ab, 2);
  matcher.knnMatch(b.descriptors, a.descriptors, ba, 1);
  for (const std::vector<cv::DMatch>& m : ab) {
    if (m.size() < 2 || !(m[0].distance < ratio * m[1].distance)) continue;
    const int j = m[0].trainIdx;
    if (ba[j].empty() || ba[j][0].trainIdx != m[0].queryIdx) continue;
    out.emplace_back(m[0].queryIdx, j);
  }
  return out;
}

// Matched keypoint positions in detection pixels, and each pair's least
// squares weight: SIFT's localisation error grows with the keypoint's
// scale, so 1 / size of the moving keypoint (where residuals are measured).
struct Matches {
  std::vector<cv::Point2f> src;  // fixed
  std::vector<cv::Point2f> dst;  // moving
  std::vector<double> weight;
};

struct Fit {
  AlignmentModel model = AlignmentModel::kNone;
  cv::Matx33d h;  // fixed detection px -> moving detection px
  int inliers = 0;
  double rms = 0.0;  // detection px
  std::vector<uchar> mask;
};

cv::Matx33d ToMatx(const cv::Mat& m) {
  cv::Matx33d h = cv::Matx33d::eye();
  for (int r = 0; r < m.rows; ++r) {
    for (int c = 0; c < 3; ++c) h(r, c) = m.at<double>(r, c);
  }
  return h;
}

bool Project(const cv::Matx33d& h, const cv::Point2d& p, cv::Point2d* q) {
  const double w = h(2, 0) * p.x + h(2, 1) * p.y + h(2, 2);
  if (!(w > 1e-12)) return false;
  q->x = (h(0, 0) * p.x + h(0, 1) * p.y + h(0, 2)) / w;
  q->y = (h(1, 0) * p.x + h(1, 1) * p.y + h(1, 2)) / w;
  return true;
}

// Inliers of `h` within `thr` and their RMS residual, into `fit`.
void Score(const Matches& pairs, double thr, Fit* fit) {
  const std::vector<cv::Point2f>& src = pairs.src;
  const std::vector<cv::Point2f>& dst = pairs.dst;
  fit->mask.assign(src.size(), 0);
  fit->inliers = 0;
  double sum = 0;
  for (size_t i = 0; i < src.size(); ++i) {
    cv::Point2d q;
    if (!Project(fit->h, cv::Point2d(src[i]), &q)) continue;
    const double e2 = (q.x - dst[i].x) * (q.x - dst[i].x) +
                      (q.y - dst[i].y) * (q.y - dst[i].y);
    if (e2 <= thr * thr) {
      fit->mask[i] = 1;
      ++fit->inliers;
      sum += e2;
    }
  }
  fit->rms = fit->inliers > 0 ? std::sqrt(sum / fit->inliers) : 0.0;
}

// Weighted least squares of a similarity or an affine map on the masked
// pairs; false when degenerate.
bool LeastSquares(AlignmentModel model, const Matches& pairs,
                  const std::vector<uchar>& mask, cv::Matx33d* h) {
  std::vector<cv::Point2f> s, d;
  std::vector<double> w;
  for (size_t i = 0; i < pairs.src.size(); ++i) {
    if (mask[i] == 0) continue;
    s.push_back(pairs.src[i]);
    d.push_back(pairs.dst[i]);
    w.push_back(std::sqrt(pairs.weight[i]));
  }
  if (s.size() < 4 || model == AlignmentModel::kHomography) return false;
  const bool sim = model == AlignmentModel::kSimilarity;
  const int unknowns = sim ? 4 : 6;
  cv::Mat a(static_cast<int>(2 * s.size()), unknowns, CV_64F, cv::Scalar(0));
  cv::Mat b(static_cast<int>(2 * s.size()), 1, CV_64F);
  for (int i = 0; i < static_cast<int>(s.size()); ++i) {
    double* rx = a.ptr<double>(2 * i);
    double* ry = a.ptr<double>(2 * i + 1);
    const double x = s[i].x, y = s[i].y;
    if (sim) {  // x' = p x - q y + tx, y' = q x + p y + ty
      rx[0] = x, rx[1] = -y, rx[2] = 1;
      ry[0] = y, ry[1] = x, ry[3] = 1;
    } else {
      rx[0] = x, rx[1] = y, rx[2] = 1;
      ry[3] = x, ry[4] = y, ry[5] = 1;
    }
    b.at<double>(2 * i) = d[i].x;
    b.at<double>(2 * i + 1) = d[i].y;
    a.row(2 * i) *= w[i];
    a.row(2 * i + 1) *= w[i];
    b.at<double>(2 * i) *= w[i];
    b.at<double>(2 * i + 1) *= w[i];
  }
  cv::Mat p;
  if (!cv::solve(a, b, p, cv::DECOMP_SVD)) return false;
  const double* v = p.ptr<double>();
  *h = sim ? cv::Matx33d(v[0], -v[1], v[2], v[1], v[0], v[3], 0, 0, 1)
           : cv::Matx33d(v[0], v[1], v[2], v[3], v[4], v[5], 0, 0, 1);
  return true;
}

// Two rounds of weighted least squares on the inliers of a similarity or
// an affine fit (RANSAC's own refit weighs every inlier alike). Not for a
// homography: RANSAC's Levenberg-Marquardt polish is better there than a
// refit (graffiti pair: 0.29 px mean error against 0.46 px).
void Refine(const Matches& pairs, double thr, Fit* fit) {
  if (fit->model == AlignmentModel::kHomography) return;
  for (int round = 0; round < 2; ++round) {
    Fit refined = *fit;
    if (!LeastSquares(fit->model, pairs, fit->mask, &refined.h)) return;
    Score(pairs, thr, &refined);
    if (refined.inliers < fit->inliers) return;
    *fit = std::move(refined);
  }
}

// A robust fit of `model` (RANSAC), then Refine.
std::optional<Fit> FitModel(AlignmentModel model, const Matches& pairs,
                            double thr) {
  const std::vector<cv::Point2f>& src = pairs.src;
  const std::vector<cv::Point2f>& dst = pairs.dst;
  cv::Mat m;
  switch (model) {
    case AlignmentModel::kSimilarity:
      m = cv::estimateAffinePartial2D(src, dst, cv::noArray(), cv::RANSAC, thr,
                                      5000, 0.999, 10);
      break;
    case AlignmentModel::kAffine:
      m = cv::estimateAffine2D(src, dst, cv::noArray(), cv::RANSAC, thr, 5000,
                               0.999, 10);
      break;
    case AlignmentModel::kHomography:
      // RANSAC rather than MAGSAC++: where part of the scene lies off the
      // dominant plane (graffiti pair), MAGSAC++ settles on a compromise
      // (1.7 px mean error, 7.5 px max against the published homography;
      // RANSAC 0.29 / 0.87).
      m = cv::findHomography(src, dst, cv::RANSAC, thr, cv::noArray(), 10000,
                             0.999);
      break;
    case AlignmentModel::kNone:
      break;
  }
  if (m.empty()) return std::nullopt;
  Fit fit;
  fit.model = model;
  fit.h = ToMatx(m);
  Score(pairs, thr, &fit);
  Refine(pairs, thr, &fit);
  return fit;
}

// Detection pixels -> full-resolution pixels of one image.
cv::Matx33d DetectionToFull(const DetectionImage& d) {
  return cv::Matx33d(d.ax, 0, (d.ax - 1) / 2, 0, d.ay, (d.ay - 1) / 2, 0, 0, 1);
}

// Why `h` (fixed full-res -> moving full-res) cannot be the start, or ""
// when it can: each corner of the fixed image maps to a finite point, the
// corners keep their order (no fold), and the local scale stays within
// [kMinScale, kMaxScale]. A homography's w is affine in (x, y), so w > 0 at
// the corners means w > 0 over the whole image.
std::string Implausible(const cv::Matx33d& h, double width, double height,
                        bool mirrored) {
  const cv::Point2d corners[4] = {
      {0, 0}, {width - 1, 0}, {width - 1, height - 1}, {0, height - 1}};
  cv::Point2d mapped[4];
  const double det = cv::determinant(h);
  for (int i = 0; i < 4; ++i) {
    const cv::Point2d& c = corners[i];
    const double w = h(2, 0) * c.x + h(2, 1) * c.y + h(2, 2);
    if (!Project(h, c, &mapped[i])) return "sends a corner to infinity";
    // The Jacobian's determinant of a homography: det(H) / w^3.
    const double jac = det / (w * w * w);
    if ((jac < 0) != mirrored) return "mirrors the image";
    const double scale = std::sqrt(std::fabs(jac));
    if (scale < kMinScale || scale > kMaxScale) {
      return absl::StrFormat("scales the image by %.2g", scale);
    }
  }
  for (int i = 0; i < 4; ++i) {
    const cv::Point2d a = mapped[(i + 1) % 4] - mapped[i];
    const cv::Point2d b = mapped[(i + 2) % 4] - mapped[(i + 1) % 4];
    if ((a.cross(b) < 0) != mirrored) return "folds the image";
  }
  return "";
}

// The fits of one orientation of the moving image, and the chosen one.
struct Attempt {
  int matches = 0;
  std::optional<Fit> best;
  cv::Matx33d full;    // best.h in full-resolution coordinates
  std::string reason;  // why nothing was chosen
};

// Of the plausible fits (simplest first), the simplest unless a richer one
// has clearly more inliers, or as many and a clearly smaller residual.
const Fit* Choose(const std::vector<Fit>& fits) {
  const Fit* best = nullptr;
  for (const Fit& f : fits) {
    if (best == nullptr) {
      best = &f;
      continue;
    }
    const bool more =
        f.inliers >= best->inliers + std::max(8, best->inliers / 20);
    const bool tighter =
        f.inliers >= 0.98 * best->inliers && f.rms < 0.7 * best->rms;
    if (more || tighter) best = &f;
  }
  return best;
}

// How far apart the inliers lie, as fractions of the fixed copy's sides.
bool WellSpread(const std::vector<cv::Point2f>& src, const Fit& fit,
                const cv::Mat& fixed) {
  float x0 = 1e30f, y0 = 1e30f, x1 = -1e30f, y1 = -1e30f;
  for (size_t i = 0; i < src.size(); ++i) {
    if (fit.mask[i] == 0) continue;
    x0 = std::min(x0, src[i].x), x1 = std::max(x1, src[i].x);
    y0 = std::min(y0, src[i].y), y1 = std::max(y1, src[i].y);
  }
  return x1 - x0 >= kMinSpread * fixed.cols &&
         y1 - y0 >= kMinSpread * fixed.rows;
}

// The plausible fits of every model up to o.max_model (simplest first),
// with their full-resolution maps; `implausible` says why one was dropped.
void FitAll(const Matches& pairs, const cv::Matx33d& to_full,
            const cv::Matx33d& from_full, bool mirrored,
            const RobustStartOptions& o, double fixed_w, double fixed_h,
            std::vector<Fit>* fits, std::vector<cv::Matx33d>* full,
            std::string* implausible) {
  for (int m = 1; m <= static_cast<int>(o.max_model); ++m) {
    std::optional<Fit> fit =
        FitModel(static_cast<AlignmentModel>(m), pairs, o.inlier_threshold_px);
    if (!fit.has_value() || fit->inliers < 4) continue;
    const cv::Matx33d h = to_full * fit->h * from_full;
    const std::string why = Implausible(h, fixed_w, fixed_h, mirrored);
    if (!why.empty()) {
      *implausible =
          absl::StrCat("the best ", AlignmentModelName(fit->model), " ", why);
      continue;
    }
    fits->push_back(*std::move(fit));
    full->push_back(h);
  }
}

// Matches the features, fits the models and checks that the chosen one is
// reliable. `mirrored`: mf was detected on the flipped moving copy.
Attempt Align(const DetectionImage& fd, const Features& ff,
              const DetectionImage& md, const Features& mf, bool binary,
              bool mirrored, const RobustStartOptions& o) {
  Attempt a;
  Matches pairs;
  for (const auto& [i, j] : MatchFeatures(ff, mf, binary, o.ratio)) {
    pairs.src.push_back(ff.keypoints[i].pt);
    pairs.dst.push_back(mf.keypoints[j].pt);
    pairs.weight.push_back(1.0 / std::max(1.0f, mf.keypoints[j].size));
  }
  a.matches = static_cast<int>(pairs.src.size());
  if (a.matches < std::max(o.min_inliers, 4)) {
    a.reason = absl::StrCat("too few matches (", a.matches, ")");
    return a;
  }
  // Fits run on the (possibly flipped) moving copy; `flip` undoes it.
  const cv::Matx33d flip =
      mirrored ? cv::Matx33d(-1, 0, md.u8.cols - 1, 0, 1, 0, 0, 0, 1)
               : cv::Matx33d::eye();
  std::vector<Fit> fits;
  std::vector<cv::Matx33d> full;
  std::string implausible;
  FitAll(pairs, DetectionToFull(md) * flip, DetectionToFull(fd).inv(), mirrored,
         o, fd.u8.cols * fd.ax, fd.u8.rows * fd.ay, &fits, &full, &implausible);
  const Fit* best = Choose(fits);
  if (best == nullptr) {
    a.reason = implausible.empty() ? "no model fits the matches" : implausible;
    return a;
  }
  const int need = std::max<int>(
      o.min_inliers,
      static_cast<int>(std::ceil(o.min_inlier_fraction * a.matches)));
  if (best->inliers < need) {
    a.reason = absl::StrFormat(
        "too few matches agree: %d of %d fit one %s (need %d)", best->inliers,
        a.matches, AlignmentModelName(best->model), need);
    return a;
  }
  if (!WellSpread(pairs.src, *best, fd.u8)) {
    a.reason = absl::StrFormat(
        "the %d agreeing matches cover under %.0f%% of the fixed image's "
        "width or height",
        best->inliers, 100 * kMinSpread);
    return a;
  }
  a.full = full[static_cast<size_t>(best - fits.data())];
  a.best = *best;
  return a;
}

Homography ToHomography(const cv::Matx33d& h) {
  Homography out;
  const double s = std::fabs(h(2, 2)) > 1e-12 ? h(2, 2) : 1.0;
  for (int i = 0; i < 9; ++i) out.m[i] = h.val[i] / s;
  return out;
}

absl::StatusOr<InitialAlignment> Estimate(const Image& fixed_gray,
                                          const Image& moving_gray,
                                          const RobustStartOptions& o) {
  auto check = [&]() {
    return o.cancel != nullptr ? o.cancel->Check() : absl::OkStatus();
  };
  REGSERVE_ASSIGN_OR_RETURN(
      const DetectionImage fd,
      MakeDetectionImage(fixed_gray, o.fixed_full_width, o.fixed_full_height,
                         o.detection_megapixels, "fixed"));
  REGSERVE_ASSIGN_OR_RETURN(
      const DetectionImage md,
      MakeDetectionImage(moving_gray, o.moving_full_width, o.moving_full_height,
                         o.detection_megapixels, "moving"));
  InitialAlignment r;
  bool orb = false;
  Features ff = Detect(fd.u8, orb, o.max_features);
  REGSERVE_RETURN_IF_ERROR(check());
  Features mf = Detect(md.u8, orb, o.max_features);
  if (std::min(ff.keypoints.size(), mf.keypoints.size()) <
      static_cast<size_t>(kMinSiftKeypoints)) {
    orb = true;
    REGSERVE_RETURN_IF_ERROR(check());
    ff = Detect(fd.u8, orb, o.max_features);
    mf = Detect(md.u8, orb, o.max_features);
  }
  REGSERVE_RETURN_IF_ERROR(check());
  r.detector = orb ? "ORB" : "SIFT";
  r.fixed_keypoints = static_cast<int>(ff.keypoints.size());
  r.moving_keypoints = static_cast<int>(mf.keypoints.size());
  Attempt a = Align(fd, ff, md, mf, orb, false, o);
  if (o.allow_mirror) {
    REGSERVE_RETURN_IF_ERROR(check());
    cv::Mat flipped;
    cv::flip(md.u8, flipped, 1);
    const Features flipped_features = Detect(flipped, orb, o.max_features);
    DetectionImage mirror = md;
    mirror.u8 = flipped;
    Attempt m = Align(fd, ff, mirror, flipped_features, orb, true, o);
    if (m.best.has_value() &&
        (!a.best.has_value() || m.best->inliers > a.best->inliers)) {
      a = std::move(m);
      r.mirrored = true;
    }
  }
  r.matches = a.matches;
  if (!a.best.has_value()) {
    r.reason = a.reason;
    return r;
  }
  r.found = true;
  r.model = a.best->model;
  r.fixed_to_moving = ToHomography(a.full);
  r.inliers = a.best->inliers;
  r.rms_px = a.best->rms * 0.5 * (md.ax + md.ay);
  r.reason = absl::StrFormat(
      "%s from %d %s inliers of %d matches (rms %.2f px)%s",
      AlignmentModelName(r.model), r.inliers, r.detector, r.matches, r.rms_px,
      r.mirrored ? ", moving image mirrored" : "");
  return r;
}

}  // namespace

absl::string_view AlignmentModelName(AlignmentModel model) {
  switch (model) {
    case AlignmentModel::kNone:
      return "none";
    case AlignmentModel::kSimilarity:
      return "similarity";
    case AlignmentModel::kAffine:
      return "affine";
    case AlignmentModel::kHomography:
      return "homography";
  }
  return "unknown";
}

absl::StatusOr<InitialAlignment> EstimateInitialAlignment(
    const Image& fixed_gray, const Image& moving_gray,
    const RobustStartOptions& options) {
  const absl::Time start = absl::Now();
  absl::StatusOr<InitialAlignment> r;
  try {
    cv::setNumThreads(std::max(1, options.threads));
    r = Estimate(fixed_gray, moving_gray, options);
  } catch (const cv::Exception& e) {
    return absl::InternalError(
        absl::StrCat("initial alignment: OpenCV failed: ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "initial alignment: out of memory in OpenCV");
  }
  if (r.ok()) r->seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return r;
}

}  // namespace regserve
