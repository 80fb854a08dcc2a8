// Copyright regserve authors.
//
// TileGrid: the one definition of how an image is cut into square tiles,
// row-major from the top-left, the last column and row cut short. The stored
// result, the streamed tiles, regctl's assembler and the warp's tiles all use
// it, so a tile index means the same rectangle everywhere.
//
//   TileGrid grid(18960, 14960, 512);   // 38 x 30 tiles
//   for (int64_t i = 0; i < grid.count(); ++i) {
//     TileRect r = grid.rect(i);        // r.w, r.h <= 512
//   }
//
// Thread safety: a value type; const methods are safe to call concurrently.
#ifndef REGSERVE_CORE_COMMON_TILE_GRID_H_
#define REGSERVE_CORE_COMMON_TILE_GRID_H_

#include <cstdint>

#include "absl/status/status.h"

namespace regserve {

struct TileRect {
  int64_t x = 0;
  int64_t y = 0;
  int64_t w = 0;
  int64_t h = 0;
  bool operator==(const TileRect& o) const {
    return x == o.x && y == o.y && w == o.w && h == o.h;
  }
};

class TileGrid {
 public:
  // The edges a stored and streamed result may use: multiples of 16 (a TIFF
  // tile's requirement) from 16 to 8192 (the TIFF writer's bound).
  static constexpr int64_t kMinEdge = 16;
  static constexpr int64_t kMaxEdge = 8192;
  static constexpr int64_t kEdgeMultiple = 16;
  // OK, or InvalidArgument naming `field`, the value and the valid range.
  static absl::Status ValidateEdge(int64_t edge, const char* field);

  TileGrid() = default;
  // A grid over width x height in edge-px squares; all three must be > 0 for
  // a non-empty grid (otherwise count() is 0).
  TileGrid(int64_t width, int64_t height, int64_t edge);

  int64_t width() const { return width_; }
  int64_t height() const { return height_; }
  int64_t edge() const { return edge_; }
  int64_t cols() const { return cols_; }
  int64_t rows() const { return rows_; }
  int64_t count() const { return cols_ * rows_; }
  // Tile `index` in [0, count()); the result is empty outside that range.
  TileRect rect(int64_t index) const;
  bool operator==(const TileGrid& o) const {
    return width_ == o.width_ && height_ == o.height_ && edge_ == o.edge_;
  }

 private:
  int64_t width_ = 0;
  int64_t height_ = 0;
  int64_t edge_ = 0;
  int64_t cols_ = 0;
  int64_t rows_ = 0;
};

}  // namespace regserve

#endif  // REGSERVE_CORE_COMMON_TILE_GRID_H_
