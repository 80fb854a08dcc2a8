// Copyright regserve authors.
#include "core/common/tile_grid.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace regserve {

absl::Status TileGrid::ValidateEdge(int64_t edge, const char* field) {
  if (edge < kMinEdge || edge > kMaxEdge || edge % kEdgeMultiple != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must be a multiple of ", kEdgeMultiple, " in [",
                     kMinEdge, ", ", kMaxEdge, "], got ", edge));
  }
  return absl::OkStatus();
}

TileGrid::TileGrid(int64_t width, int64_t height, int64_t edge)
    : width_(width), height_(height), edge_(edge) {
  if (width > 0 && height > 0 && edge > 0) {
    cols_ = (width + edge - 1) / edge;
    rows_ = (height + edge - 1) / edge;
  }
}

TileRect TileGrid::rect(int64_t index) const {
  TileRect r;
  if (index < 0 || index >= count()) return r;
  r.x = (index % cols_) * edge_;
  r.y = (index / cols_) * edge_;
  r.w = std::min(edge_, width_ - r.x);
  r.h = std::min(edge_, height_ - r.y);
  return r;
}

}  // namespace regserve
