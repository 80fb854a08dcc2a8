// Copyright regserve authors.
//
// The reduced-resolution levels of a tiled image, built while its tiles
// stream in: a finished tile of level k, halved with a 2x2 box filter, is a
// quarter of its parent tile on level k+1; a parent is finished when all its
// children (1, 2 or 4 at the edges) have arrived. Level k+1 is
// ceil(level k / 2) on each axis (the last odd row/column is averaged with
// itself), and levels stop at the first one that fits in one tile.
//
//   PyramidGeometry g(18960, 14960, 512);     // g.levels() == 7
//   TileParents parents(g, format);
//   // a finished tile (level, tx, ty), padded by ReplicateEdges:
//   std::optional<ParentTile> p = parents.Add(level, tx, ty, pixels);
//   if (p) ...  // (level + 1, p->tx, p->ty) is finished too
//
// Thread safety: TileParents is thread-safe (one mutex; the halving itself
// runs outside it, on disjoint quarters).
#ifndef REGSERVE_CORE_IMAGE_TILE_PYRAMID_H_
#define REGSERVE_CORE_IMAGE_TILE_PYRAMID_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/image/image.h"

namespace regserve {

class PyramidGeometry {
 public:
  // levels: 1 (full resolution only) when `pyramid` is false.
  PyramidGeometry(int64_t width, int64_t height, int tile, bool pyramid = true);
  int levels() const { return static_cast<int>(width_.size()); }
  int tile() const { return tile_; }
  int64_t width(int level) const { return width_[level]; }
  int64_t height(int level) const { return height_[level]; }
  int64_t tiles_x(int level) const {
    return (width_[level] + tile_ - 1) / tile_;
  }
  int64_t tiles_y(int level) const {
    return (height_[level] + tile_ - 1) / tile_;
  }
  int64_t tiles(int level) const { return tiles_x(level) * tiles_y(level); }
  // The valid (inside the image) width/height of tile column tx / row ty.
  int64_t tile_w(int level, int64_t tx) const {
    return std::min<int64_t>(tile_, width_[level] - tx * tile_);
  }
  int64_t tile_h(int level, int64_t ty) const {
    return std::min<int64_t>(tile_, height_[level] - ty * tile_);
  }

 private:
  int tile_;
  std::vector<int64_t> width_, height_;
};

// Fills a tile's padding (outside its valid w x h) by repeating the last
// valid column and row, as the 2x2 filter and the codecs want.
void ReplicateEdges(int tile, int64_t w, int64_t h, size_t bytes_per_pixel,
                    uint8_t* pixels);

// Halves a padded tile (tile x tile; valid w x h) into the quarter of
// `parent` (tile x tile) at quadrant (qx, qy) in {0, 1}.
void HalveInto(int tile, int channels, SampleType type, int64_t w, int64_t h,
               const uint8_t* child, int qx, int qy, uint8_t* parent);

struct ParentTile {
  int level = 0;  // of the parent
  int64_t tx = 0, ty = 0;
  std::vector<uint8_t> pixels;  // tile x tile, padding not yet filled
};

class TileParents {
 public:
  TileParents(const PyramidGeometry& g, int channels, SampleType type)
      : g_(g), channels_(channels), type_(type) {}
  // Halves the finished tile (level, tx, ty) into its parent; returns the
  // parent when this was its last child. level must be < levels() - 1.
  std::optional<ParentTile> Add(int level, int64_t tx, int64_t ty,
                                const uint8_t* padded_pixels);
  // Bytes of parent tiles now held, and the most ever held.
  uint64_t held_bytes() const;
  uint64_t peak_bytes() const;

 private:
  struct Pending {
    std::vector<uint8_t> pixels;
    int arrived = 0;
    int needed = 0;
  };
  using Key = std::tuple<int, int64_t, int64_t>;

  const PyramidGeometry g_;
  const int channels_;
  const SampleType type_;
  mutable absl::Mutex mu_;
  std::map<Key, std::unique_ptr<Pending>> pending_ ABSL_GUARDED_BY(mu_);
  uint64_t held_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t peak_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_TILE_PYRAMID_H_
