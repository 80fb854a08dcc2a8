// Copyright regserve authors.
#include "client/quality_map_image.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace regserve {
namespace {

constexpr int kCanvasEdge = 1024;  // without a thumbnail
constexpr double kTint = 0.45;     // share of the heat colour in a cell

// Cell boundaries along one axis, in output pixels: midway between
// neighbouring patch centres, the first at 0 and the last at `size`.
std::vector<int> CellEdges(const google::protobuf::RepeatedField<double>& x0,
                           double patch, double scale, int size) {
  std::vector<int> edges = {0};
  for (int i = 1; i < x0.size(); ++i) {
    const double mid = 0.5 * (x0[i - 1] + x0[i]) + patch / 2;
    edges.push_back(std::clamp(static_cast<int>(std::lround(mid * scale)),
                               edges.back(), size));
  }
  edges.push_back(size);
  return edges;
}

absl::Status CheckMap(const v1::QualityMap& m) {
  const int64_t n = static_cast<int64_t>(m.cols()) * m.rows();
  if (m.cols() < 1 || m.rows() < 1 || m.x0_size() != m.cols() ||
      m.y0_size() != m.rows() || m.state_size() != n ||
      m.error_px_size() != n || !(m.patch_width() > 0) ||
      !(m.patch_height() > 0)) {
    return absl::InvalidArgumentError(
        "the quality map's grid is empty or its sizes do not agree");
  }
  if (static_cast<int64_t>(m.thumbnail().size()) !=
      static_cast<int64_t>(m.thumbnail_width()) * m.thumbnail_height()) {
    return absl::InvalidArgumentError(
        "the quality map's thumbnail does not match its size");
  }
  return absl::OkStatus();
}

// The grey ground: the thumbnail, or mid-grey.
absl::StatusOr<Image> Ground(const v1::QualityMap& m, double full_w,
                             double full_h) {
  int w = m.thumbnail_width(), h = m.thumbnail_height();
  const bool have = w > 0 && h > 0;
  if (!have) {
    const double s = kCanvasEdge / std::max(full_w, full_h);
    w = std::max(1, static_cast<int>(std::lround(full_w * s)));
    h = std::max(1, static_cast<int>(std::lround(full_h * s)));
  }
  absl::StatusOr<Image> img = Image::Allocate(
      {.width = w, .height = h, .channels = 3, .type = SampleType::kUInt8});
  if (!img.ok()) return img.status();
  uint8_t* p = img->data();
  for (int64_t i = 0; i < static_cast<int64_t>(w) * h; ++i, p += 3) {
    const uint8_t g =
        have ? static_cast<uint8_t>(m.thumbnail()[static_cast<size_t>(i)])
             : 128;
    p[0] = p[1] = p[2] = g;
  }
  return img;
}

}  // namespace

std::string QualitySummaryText(const v1::QualitySummary& s) {
  if (!s.estimated()) {
    return s.warning().empty()
               ? "quality: not estimated"
               : absl::StrCat("quality: not estimated (", s.warning(), ")");
  }
  std::string line = absl::StrFormat(
      "quality: est. mean %.2f px, p95 %.2f px, max %.2f px, checked %.0f%% "
      "of the area",
      s.mean_px(), s.p95_px(), s.max_px(), 100 * s.checked_fraction());
  if (s.verdict() == v1::QUALITY_VERDICT_POOR)
    absl::StrAppend(&line, " (poor)");
  if (s.verdict() == v1::QUALITY_VERDICT_UNCHECKED) {
    absl::StrAppend(&line, " (unchecked)");
  }
  return line;
}

std::array<uint8_t, 3> ErrorColour(double e) {
  // Green (0, 200, 0) -> yellow (230, 210, 0) at 1 px -> red (220, 0, 0).
  if (!(e > 0.5)) return {0, 200, 0};
  if (e < 1.0) {
    const double t = (e - 0.5) / 0.5;
    return {static_cast<uint8_t>(230 * t), static_cast<uint8_t>(200 + 10 * t),
            0};
  }
  const double t = std::min(1.0, e - 1.0);
  return {static_cast<uint8_t>(230 - 10 * t),
          static_cast<uint8_t>(210 * (1 - t)), 0};
}

absl::StatusOr<Image> RenderQualityMap(const v1::QualityMap& m) {
  if (absl::Status s = CheckMap(m); !s.ok()) return s;
  // The last column and row end at the image's edge.
  const double full_w = m.x0(m.cols() - 1) + m.patch_width();
  const double full_h = m.y0(m.rows() - 1) + m.patch_height();
  absl::StatusOr<Image> img = Ground(m, full_w, full_h);
  if (!img.ok()) return img.status();
  const int w = static_cast<int>(img->width());
  const int h = static_cast<int>(img->height());
  const std::vector<int> xs = CellEdges(m.x0(), m.patch_width(), w / full_w, w);
  const std::vector<int> ys =
      CellEdges(m.y0(), m.patch_height(), h / full_h, h);
  for (int r = 0; r < m.rows(); ++r) {
    for (int c = 0; c < m.cols(); ++c) {
      const int k = r * m.cols() + c;
      std::array<uint8_t, 3> colour;
      if (m.state(k) == v1::QUALITY_PATCH_STATE_MEASURED) {
        colour = ErrorColour(m.error_px(k));
      } else if (m.state(k) == v1::QUALITY_PATCH_STATE_UNMATCHED) {
        colour = {220, 0, 0};
      } else {
        continue;  // not checked: the plain grey thumbnail
      }
      for (int y = ys[r]; y < ys[r + 1]; ++y) {
        uint8_t* p = img->row(y) + 3 * xs[c];
        for (int x = xs[c]; x < xs[c + 1]; ++x, p += 3) {
          for (int ch = 0; ch < 3; ++ch) {
            p[ch] = static_cast<uint8_t>(
                std::lround((1 - kTint) * p[ch] + kTint * colour[ch]));
          }
        }
      }
    }
  }
  return img;
}

}  // namespace regserve
