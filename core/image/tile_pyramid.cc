// Copyright regserve authors.
#include "core/image/tile_pyramid.h"

#include <algorithm>
#include <cstring>

namespace regserve {

PyramidGeometry::PyramidGeometry(int64_t width, int64_t height, int tile,
                                 bool pyramid)
    : tile_(tile) {
  width_.push_back(width);
  height_.push_back(height);
  while (pyramid && std::max(width_.back(), height_.back()) > tile) {
    width_.push_back((width_.back() + 1) / 2);
    height_.push_back((height_.back() + 1) / 2);
  }
}

void ReplicateEdges(int tile, int64_t w, int64_t h, size_t bpp,
                    uint8_t* pixels) {
  const size_t row = static_cast<size_t>(tile) * bpp;
  if (w < tile) {
    for (int64_t y = 0; y < h; ++y) {
      uint8_t* r = pixels + static_cast<size_t>(y) * row;
      const uint8_t* last = r + static_cast<size_t>(w - 1) * bpp;
      for (int64_t x = w; x < tile; ++x) std::memcpy(r + x * bpp, last, bpp);
    }
  }
  for (int64_t y = h; y < tile; ++y) {
    std::memcpy(pixels + static_cast<size_t>(y) * row,
                pixels + static_cast<size_t>(h - 1) * row, row);
  }
}

namespace {

template <typename T>
void Halve(int tile, int channels, int64_t w, int64_t h, const uint8_t* child,
           int qx, int qy, uint8_t* parent) {
  const T* c = reinterpret_cast<const T*>(child);
  T* p = reinterpret_cast<T*>(parent);
  const size_t row = static_cast<size_t>(tile) * channels;
  const int64_t ow = (w + 1) / 2, oh = (h + 1) / 2;
  const int64_t ox = qx * (tile / 2), oy = qy * (tile / 2);
  for (int64_t y = 0; y < oh; ++y) {
    const T* r0 = c + static_cast<size_t>(2 * y) * row;
    const T* r1 = r0 + row;  // padding row when h is odd: a copy of row h-1
    T* out = p + static_cast<size_t>(oy + y) * row + ox * channels;
    for (int64_t x = 0; x < ow; ++x) {
      for (int ch = 0; ch < channels; ++ch) {
        const size_t a = static_cast<size_t>(2 * x) * channels + ch;
        const size_t b = a + channels;
        if constexpr (std::is_floating_point_v<T>) {
          out[x * channels + ch] = 0.25f * (r0[a] + r0[b] + r1[a] + r1[b]);
        } else {
          const uint32_t sum = uint32_t{r0[a]} + r0[b] + r1[a] + r1[b];
          out[x * channels + ch] = static_cast<T>((sum + 2) >> 2);
        }
      }
    }
  }
}

}  // namespace

void HalveInto(int tile, int channels, SampleType type, int64_t w, int64_t h,
               const uint8_t* child, int qx, int qy, uint8_t* parent) {
  switch (type) {
    case SampleType::kUInt8:
      return Halve<uint8_t>(tile, channels, w, h, child, qx, qy, parent);
    case SampleType::kUInt16:
      return Halve<uint16_t>(tile, channels, w, h, child, qx, qy, parent);
    case SampleType::kFloat32:
      return Halve<float>(tile, channels, w, h, child, qx, qy, parent);
  }
}

std::optional<ParentTile> TileParents::Add(int level, int64_t tx, int64_t ty,
                                           const uint8_t* padded) {
  const int parent_level = level + 1;
  const Key key{parent_level, tx / 2, ty / 2};
  const size_t bytes = static_cast<size_t>(g_.tile()) * g_.tile() * channels_ *
                       SampleSize(type_);
  Pending* pending = nullptr;
  {
    absl::MutexLock lock(&mu_);
    std::unique_ptr<Pending>& slot = pending_[key];
    if (slot == nullptr) {
      slot = std::make_unique<Pending>();
      slot->pixels.resize(bytes);
      const int64_t px = tx / 2, py = ty / 2;
      const int64_t cx = std::min<int64_t>(2, g_.tiles_x(level) - 2 * px);
      const int64_t cy = std::min<int64_t>(2, g_.tiles_y(level) - 2 * py);
      slot->needed = static_cast<int>(cx * cy);
      held_ += bytes;
      peak_ = std::max(peak_, held_);
    }
    pending = slot.get();
  }
  // Each child writes its own quarter; the map node stays put meanwhile.
  HalveInto(g_.tile(), channels_, type_, g_.tile_w(level, tx),
            g_.tile_h(level, ty), padded, static_cast<int>(tx % 2),
            static_cast<int>(ty % 2), pending->pixels.data());
  absl::MutexLock lock(&mu_);
  if (++pending->arrived < pending->needed) return std::nullopt;
  ParentTile done;
  done.level = parent_level;
  done.tx = tx / 2;
  done.ty = ty / 2;
  done.pixels = std::move(pending->pixels);
  pending_.erase(key);
  held_ -= bytes;
  return done;
}

uint64_t TileParents::held_bytes() const {
  absl::MutexLock lock(&mu_);
  return held_;
}

uint64_t TileParents::peak_bytes() const {
  absl::MutexLock lock(&mu_);
  return peak_;
}

}  // namespace regserve
