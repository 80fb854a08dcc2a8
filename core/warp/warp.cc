// Copyright regserve authors.
//
// Shared warp helpers and the CPU warper. The CPU path samples the moving
// image in place (no float copy) with the per-pixel code of warp_kernel.h
// (the same code the CUDA kernel runs), spreading the rows of each tile over
// WarpOptions::cpu_threads threads. It uses no ATen tensor ops: a per-pixel
// loop needs no intermediate tensors, and LibTorch's global intra-op pool
// was found to run it on one thread on the GPU machine.
#include "core/warp/warp.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "core/warp/warp_internal.h"

namespace regserve {
namespace warp_internal {
namespace {

// fp32 positions are exact integers only up to 2^24.
constexpr int64_t kMaxCoordinate = int64_t{1} << 24;

bool Finite(double v) { return std::isfinite(v); }

}  // namespace

absl::Status ValidateWarpInputs(const Image& moving,
                                const DisplacementField& field,
                                int64_t out_width, int64_t out_height,
                                const WarpOptions& options) {
  if (moving.empty()) {
    return absl::InvalidArgumentError("moving image is empty");
  }
  return ValidateWarpInputs(moving.spec(), field, out_width, out_height,
                            options);
}

absl::Status ValidateWarpInputs(const ImageSpec& moving,
                                const DisplacementField& field,
                                int64_t out_width, int64_t out_height,
                                const WarpOptions& options) {
  REGSERVE_RETURN_IF_ERROR(ValidateSpec(moving));
  if (moving.width > kMaxCoordinate || moving.height > kMaxCoordinate) {
    return absl::InvalidArgumentError(
        absl::StrCat("moving image ", moving.DebugString(),
                     " exceeds 16777216 px per side (fp32 coordinates)"));
  }
  if (field.empty()) {
    return absl::InvalidArgumentError(
        "displacement field is empty: register first or pass an identity "
        "field");
  }
  const size_t nodes = static_cast<size_t>(field.width) * field.height;
  if (field.width < 0 || field.height < 0 || field.dx.size() != nodes ||
      field.dy.size() != nodes) {
    return absl::InvalidArgumentError(
        absl::StrCat("displacement field is ", field.width, "x", field.height,
                     " nodes but holds ", field.dx.size(), " dx and ",
                     field.dy.size(), " dy values"));
  }
  if (!Finite(field.origin_x) || !Finite(field.origin_y) ||
      !(field.spacing_x > 0) || !(field.spacing_y > 0) ||
      !Finite(field.spacing_x) || !Finite(field.spacing_y)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "displacement field origin (", field.origin_x, ", ", field.origin_y,
        ") / spacing (", field.spacing_x, ", ", field.spacing_y,
        ") must be finite with positive spacing"));
  }
  if (out_width < 1 || out_height < 1 || out_width > kMaxCoordinate ||
      out_height > kMaxCoordinate) {
    return absl::InvalidArgumentError(
        absl::StrCat("output size ", out_width, "x", out_height,
                     " is outside 1..16777216 px per side"));
  }
  ImageSpec out_spec = moving;
  out_spec.width = out_width;
  out_spec.height = out_height;
  REGSERVE_RETURN_IF_ERROR(ValidateSpec(out_spec));
  if (!Finite(options.output_origin_x) || !Finite(options.output_origin_y) ||
      !(options.output_spacing_x > 0) || !(options.output_spacing_y > 0) ||
      !Finite(options.output_spacing_x) || !Finite(options.output_spacing_y)) {
    return absl::InvalidArgumentError(
        "output origin/spacing must be finite with positive spacing");
  }
  if (options.tile_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tile_size ", options.tile_size, " is negative"));
  }
  if (options.cpu_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu_threads ", options.cpu_threads, " must be >= 1"));
  }
  switch (options.interpolation) {
    case Interpolation::kLinear:
    case Interpolation::kCubic:
    case Interpolation::kNearest:
      break;
    default:
      return absl::InvalidArgumentError("unknown interpolation");
  }
  return absl::OkStatus();
}

absl::Status ValidateRegionWarpInputs(const ImageSpec& moving,
                                      const DisplacementField& field,
                                      int64_t out_width, int64_t out_height,
                                      const WarpOptions& options) {
  REGSERVE_RETURN_IF_ERROR(
      ValidateWarpInputs(moving, field, out_width, out_height, options));
  if (options.tile_size <= 0) {
    return absl::InvalidArgumentError(
        "a moving image read by region is warped in tiles: tile_size must "
        "be > 0");
  }
  return absl::OkStatus();
}

WarpParams MakeBaseParams(const Image& moving, const DisplacementField& field,
                          const WarpOptions& options) {
  return MakeBaseParams(moving.spec(), field, options);
}

WarpParams MakeBaseParams(const ImageSpec& moving,
                          const DisplacementField& field,
                          const WarpOptions& options) {
  WarpParams p;
  p.grid_origin_x = static_cast<float>(options.output_origin_x);
  p.grid_origin_y = static_cast<float>(options.output_origin_y);
  p.grid_spacing_x = static_cast<float>(options.output_spacing_x);
  p.grid_spacing_y = static_cast<float>(options.output_spacing_y);
  p.field_dx = field.dx.data();
  p.field_dy = field.dy.data();
  p.field_w = field.width;
  p.field_h = field.height;
  p.field_origin_x = static_cast<float>(field.origin_x);
  p.field_origin_y = static_cast<float>(field.origin_y);
  p.field_inv_spacing_x = static_cast<float>(1.0 / field.spacing_x);
  p.field_inv_spacing_y = static_cast<float>(1.0 / field.spacing_y);
  p.src_w = moving.width;
  p.src_h = moving.height;
  p.channels = moving.channels;
  switch (moving.type) {
    case SampleType::kUInt8:
      p.type = kKernelU8;
      p.fill = FromFloat<uint8_t>(static_cast<float>(options.fill_value));
      break;
    case SampleType::kUInt16:
      p.type = kKernelU16;
      p.fill = FromFloat<uint16_t>(static_cast<float>(options.fill_value));
      break;
    case SampleType::kFloat32:
      p.type = kKernelF32;
      p.fill = static_cast<float>(options.fill_value);
      break;
  }
  switch (options.interpolation) {
    case Interpolation::kLinear:
      p.interp = kKernelLinear;
      break;
    case Interpolation::kCubic:
      p.interp = kKernelCubic;
      break;
    case Interpolation::kNearest:
      p.interp = kKernelNearest;
      break;
  }
  return p;
}

std::vector<TileRect> MakeTiles(int64_t out_width, int64_t out_height,
                                int64_t tile_size, int64_t band_rows) {
  std::vector<TileRect> tiles;
  if (tile_size <= 0 || (tile_size >= out_width && tile_size >= out_height)) {
    if (band_rows <= 0 || band_rows >= out_height) {
      tiles.push_back(TileRect{0, 0, out_width, out_height});
      return tiles;
    }
    for (int64_t y = 0; y < out_height; y += band_rows) {
      tiles.push_back(
          TileRect{0, y, out_width, std::min(band_rows, out_height - y)});
    }
    return tiles;
  }
  const TileGrid grid(out_width, out_height, tile_size);
  for (int64_t i = 0; i < grid.count(); ++i) tiles.push_back(grid.rect(i));
  return tiles;
}

FieldBounds::FieldBounds(const DisplacementField& field, Deferred)
    : field_w_(field.width), field_h_(field.height) {
  blocks_x_ = (field_w_ + kBlock - 1) / kBlock;
  blocks_y_ = (field_h_ + kBlock - 1) / kBlock;
  stats_.assign(static_cast<size_t>(blocks_x_ * blocks_y_ * 4), 0.f);
}

FieldBounds::FieldBounds(const DisplacementField& field, int threads)
    : FieldBounds(field, Deferred{}) {
  ParallelRanges(blocks_y_, threads, [&](int64_t begin, int64_t end) {
    ComputeBlockRows(field, begin, end);
  });
}

void FieldBounds::ComputeBlockRows(const DisplacementField& field,
                                   int64_t by_begin, int64_t by_end) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (int64_t by = by_begin; by < std::min(by_end, blocks_y_); ++by) {
    for (int64_t bx = 0; bx < blocks_x_; ++bx) {
      float mnx = kInf, mxx = -kInf, mny = kInf, mxy = -kInf;
      const int64_t y1 = std::min(field_h_, (by + 1) * kBlock);
      const int64_t x1 = std::min(field_w_, (bx + 1) * kBlock);
      for (int64_t y = by * kBlock; y < y1; ++y) {
        const float* rx = field.dx.data() + y * field_w_;
        const float* ry = field.dy.data() + y * field_w_;
        for (int64_t x = bx * kBlock; x < x1; ++x) {
          // Comparisons with NaN are false; infinities are excluded.
          const float a = rx[x], b = ry[x];
          if (a > -kInf && a < kInf) {
            mnx = std::min(mnx, a);
            mxx = std::max(mxx, a);
          }
          if (b > -kInf && b < kInf) {
            mny = std::min(mny, b);
            mxy = std::max(mxy, b);
          }
        }
      }
      float* s = &stats_[static_cast<size_t>((by * blocks_x_ + bx) * 4)];
      s[0] = mnx;
      s[1] = mxx;
      s[2] = mny;
      s[3] = mxy;
    }
  }
}

void ParallelRanges(int64_t n, int threads,
                    const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  threads =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  const int64_t per = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  int64_t inline_from = n;  // ranges from here on run on this thread
  for (int t = 1; t < threads; ++t) {
    const int64_t b = t * per, e = std::min(n, b + per);
    if (b >= e) break;
    try {
      pool.emplace_back(fn, b, e);
    } catch (const std::system_error&) {
      inline_from = b;
      break;
    }
  }
  fn(0, std::min(n, per));
  if (inline_from < n) fn(inline_from, n);
  for (std::thread& t : pool) t.join();
}

namespace {

// Node index range [lo, hi] that FieldAt may read for positions in
// [p_lo, p_hi] along one axis (same float arithmetic as the kernel, widened
// by one node).
void NodeRange(float p_lo, float p_hi, float origin, float inv_spacing,
               int64_t n, int64_t* lo, int64_t* hi) {
  float g_lo =
      ClampF((p_lo - origin) * inv_spacing, 0.f, static_cast<float>(n - 1));
  float g_hi =
      ClampF((p_hi - origin) * inv_spacing, 0.f, static_cast<float>(n - 1));
  *lo = ClampI(static_cast<int64_t>(std::floor(g_lo)) - 1, 0, n - 1);
  *hi = ClampI(static_cast<int64_t>(std::floor(g_hi)) + 2, 0, n - 1);
}

// Tap interval along one axis for source positions in [s_lo, s_hi], clamped
// to the image; false when no inside position is possible.
bool TapInterval(double s_lo, double s_hi, int64_t size, int64_t* lo,
                 int64_t* hi) {
  // 2 px slack covers float rounding of p + d and of the lerps; cubic reads
  // one tap left and two right of floor(s).
  constexpr double kSlack = 2.0;
  const double a = std::floor(s_lo - kSlack) - 1.0;
  const double b = std::floor(s_hi + kSlack) + 2.0;
  if (b < 0.0 || a > static_cast<double>(size - 1)) return false;
  *lo = a < 0.0 ? 0 : static_cast<int64_t>(a);
  *hi = b > static_cast<double>(size - 1) ? size - 1 : static_cast<int64_t>(b);
  return true;
}

}  // namespace

void FieldNodeRows(const WarpParams& p, const TileRect& rect, int64_t* lo,
                   int64_t* hi) {
  float px, py_lo, py_hi;
  GridPosition(p, rect.x, rect.y, &px, &py_lo);
  GridPosition(p, rect.x, rect.y + rect.h - 1, &px, &py_hi);
  NodeRange(py_lo, py_hi, p.field_origin_y, p.field_inv_spacing_y, p.field_h,
            lo, hi);
}

TileRect FieldBounds::SourceRegion(const WarpParams& p,
                                   const TileRect& rect) const {
  float px_lo, py_lo, px_hi, py_hi;
  GridPosition(p, rect.x, rect.y, &px_lo, &py_lo);
  GridPosition(p, rect.x + rect.w - 1, rect.y + rect.h - 1, &px_hi, &py_hi);
  int64_t nx0, nx1, ny0, ny1;
  NodeRange(px_lo, px_hi, p.field_origin_x, p.field_inv_spacing_x, field_w_,
            &nx0, &nx1);
  NodeRange(py_lo, py_hi, p.field_origin_y, p.field_inv_spacing_y, field_h_,
            &ny0, &ny1);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  float mnx = kInf, mxx = -kInf, mny = kInf, mxy = -kInf;
  for (int64_t by = ny0 / kBlock; by <= ny1 / kBlock; ++by) {
    for (int64_t bx = nx0 / kBlock; bx <= nx1 / kBlock; ++bx) {
      const float* s = &stats_[static_cast<size_t>((by * blocks_x_ + bx) * 4)];
      mnx = std::min(mnx, s[0]);
      mxx = std::max(mxx, s[1]);
      mny = std::min(mny, s[2]);
      mxy = std::max(mxy, s[3]);
    }
  }
  TileRect r;
  if (!(mnx <= mxx) || !(mny <= mxy)) return r;  // no finite node
  int64_t x0, x1, y0, y1;
  if (!TapInterval(static_cast<double>(px_lo) + mnx,
                   static_cast<double>(px_hi) + mxx, p.src_w, &x0, &x1) ||
      !TapInterval(static_cast<double>(py_lo) + mny,
                   static_cast<double>(py_hi) + mxy, p.src_h, &y0, &y1)) {
    return r;
  }
  r.x = x0;
  r.y = y0;
  r.w = x1 - x0 + 1;
  r.h = y1 - y0 + 1;
  return r;
}

TileRect ExactSourceRegion(const WarpParams& p, const TileRect& rect) {
  int64_t x0 = std::numeric_limits<int64_t>::max(), y0 = x0;
  int64_t x1 = -1, y1 = -1;
  for (int64_t j = rect.y; j < rect.y + rect.h; ++j) {
    for (int64_t i = rect.x; i < rect.x + rect.w; ++i) {
      float sx, sy;
      SourcePosition(p, i, j, &sx, &sy);
      if (!Inside(p, sx, sy)) continue;
      int64_t a, b;
      TapRange(p.interp, sx, p.src_w, &a, &b);
      x0 = std::min(x0, a);
      x1 = std::max(x1, b);
      TapRange(p.interp, sy, p.src_h, &a, &b);
      y0 = std::min(y0, a);
      y1 = std::max(y1, b);
    }
  }
  TileRect r;
  if (x1 < 0) return r;
  r.x = x0;
  r.y = y0;
  r.w = x1 - x0 + 1;
  r.h = y1 - y0 + 1;
  return r;
}

void PlanRegions(const FieldBounds& bounds, const WarpParams& params,
                 const TileRect& rect, int64_t capacity_pixels,
                 std::vector<RegionItem>* items) {
  constexpr int64_t kExactPixels = 4096;
  TileRect src = bounds.SourceRegion(params, rect);
  if (src.w * src.h > capacity_pixels && rect.w * rect.h <= kExactPixels) {
    src = ExactSourceRegion(params, rect);
  }
  if (src.w * src.h <= capacity_pixels || (rect.w == 1 && rect.h == 1)) {
    items->push_back(RegionItem{rect, src});
    return;
  }
  TileRect a = rect, b = rect;
  if (rect.w >= rect.h) {
    a.w = rect.w / 2;
    b.x = rect.x + a.w;
    b.w = rect.w - a.w;
  } else {
    a.h = rect.h / 2;
    b.y = rect.y + a.h;
    b.h = rect.h - a.h;
  }
  PlanRegions(bounds, params, a, capacity_pixels, items);
  PlanRegions(bounds, params, b, capacity_pixels, items);
}

int64_t RegionCapacityPixels(int64_t src_w, int64_t src_h, int64_t tile) {
  const int64_t edge = tile + 2 * kCudaRegionMargin;
  return std::min(src_w, edge) * std::min(src_h, edge);
}

namespace {

using RowFn = void (*)(const WarpParams&, const ColumnTap*, int64_t);

// p.rect's ColumnTaps (WarpRow).
std::vector<ColumnTap> ColumnTaps(const WarpParams& p) {
  std::vector<ColumnTap> columns(static_cast<size_t>(p.rect_w));
  for (int64_t k = 0; k < p.rect_w; ++k) {
    float py;
    GridPosition(p, p.rect_x0 + k, p.rect_y0, &columns[k].px, &py);
    columns[k].tap = FieldTapX(p, columns[k].px);
  }
  return columns;
}

template <typename T, int I>
RowFn SelectChannels(int channels) {
  switch (channels) {
    case 1:
      return &WarpRow<T, 1, I>;
    case 2:
      return &WarpRow<T, 2, I>;
    case 3:
      return &WarpRow<T, 3, I>;
    default:
      return &WarpRow<T, 4, I>;
  }
}

template <typename T>
RowFn SelectInterp(int interp, int channels) {
  switch (interp) {
    case kKernelCubic:
      return SelectChannels<T, kKernelCubic>(channels);
    case kKernelNearest:
      return SelectChannels<T, kKernelNearest>(channels);
    default:
      return SelectChannels<T, kKernelLinear>(channels);
  }
}

RowFn SelectRowFn(const WarpParams& p) {
  switch (p.type) {
    case kKernelU16:
      return SelectInterp<uint16_t>(p.interp, p.channels);
    case kKernelF32:
      return SelectInterp<float>(p.interp, p.channels);
    default:
      return SelectInterp<uint8_t>(p.interp, p.channels);
  }
}

class CpuWarper final : public Warper {
 public:
  absl::StatusOr<WarpStats> Warp(const Image& moving,
                                 const DisplacementField& field,
                                 int64_t out_width, int64_t out_height,
                                 const WarpOptions& options,
                                 const TileCallback& on_tile) override {
    const absl::Time start = absl::Now();
    REGSERVE_RETURN_IF_ERROR(
        ValidateWarpInputs(moving, field, out_width, out_height, options));
    WarpParams base = MakeBaseParams(moving, field, options);
    base.src = moving.data();
    base.src_stride = moving.width();
    const RowFn row_fn = SelectRowFn(base);
    const std::vector<TileRect> tiles =
        MakeTiles(out_width, out_height, options.tile_size, options.band_rows);

    ImageSpec tile_spec = moving.spec();
    tile_spec.width = tiles[0].w;
    tile_spec.height = tiles[0].h;
    REGSERVE_ASSIGN_OR_RETURN(Image full_tile, Image::Allocate(tile_spec));

    WarpStats stats;
    stats.device = "cpu";
    for (const TileRect& rect : tiles) {
      if (options.cancel != nullptr) {
        REGSERVE_RETURN_IF_ERROR(options.cancel->Check());
      }
      Image edge_tile;
      Image* target = &full_tile;
      if (rect.w != full_tile.width() || rect.h != full_tile.height()) {
        ImageSpec spec = moving.spec();
        spec.width = rect.w;
        spec.height = rect.h;
        REGSERVE_ASSIGN_OR_RETURN(edge_tile, Image::Allocate(spec));
        target = &edge_tile;
      }
      WarpParams p = base;
      p.rect_x0 = rect.x;
      p.rect_y0 = rect.y;
      p.rect_w = rect.w;
      p.rect_h = rect.h;
      p.out = target->data();
      p.out_x0 = rect.x;
      p.out_y0 = rect.y;
      p.out_stride = rect.w;
      // Rows are split over cpu_threads threads (the caller's included);
      // each pixel's result does not depend on the split.
      const int threads =
          static_cast<int>(std::min<int64_t>(options.cpu_threads, rect.h));
      const std::vector<ColumnTap> columns = ColumnTaps(p);
      ParallelRanges(rect.h, threads, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) row_fn(p, columns.data(), rect.y + j);
      });
      REGSERVE_RETURN_IF_ERROR(on_tile(rect, *target));
      ++stats.tiles;
    }
    stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    return stats;
  }

  absl::StatusOr<WarpStats> WarpRegions(RegionSource* moving,
                                        const DisplacementField& field,
                                        int64_t out_width, int64_t out_height,
                                        const WarpOptions& options,
                                        const TileCallback& on_tile) override;

  WarpDevice device() const override { return WarpDevice::kCpu; }
};

// One region of the streamed warp: which output tile it belongs to, and
// whether it is that tile's last.
struct StreamItem {
  size_t tile = 0;
  RegionItem region;
  bool last_of_tile = false;
};

std::vector<StreamItem> PlanStreamItems(const std::vector<TileRect>& tiles,
                                        const FieldBounds& bounds,
                                        const WarpParams& base,
                                        int64_t capacity) {
  std::vector<StreamItem> items;
  std::vector<RegionItem> regions;
  for (size_t t = 0; t < tiles.size(); ++t) {
    regions.clear();
    PlanRegions(bounds, base, tiles[t], capacity, &regions);
    for (const RegionItem& r : regions) items.push_back({t, r, false});
    items.back().last_of_tile = true;
  }
  return items;
}

// Reads item's source region into `buffer` (nothing when it samples no
// source pixel).
absl::Status ReadItem(RegionSource* moving, const StreamItem& item,
                      Image* buffer) {
  const TileRect& s = item.region.src;
  if (s.w <= 0 || s.h <= 0) return absl::OkStatus();
  const size_t stride =
      static_cast<size_t>(s.w) * buffer->spec().bytes_per_pixel();
  return moving->ReadRegion(s.x, s.y, s.w, s.h, buffer->data(), stride);
}

absl::StatusOr<WarpStats> CpuWarper::WarpRegions(RegionSource* moving,
                                                 const DisplacementField& field,
                                                 int64_t out_width,
                                                 int64_t out_height,
                                                 const WarpOptions& options,
                                                 const TileCallback& on_tile) {
  const absl::Time start = absl::Now();
  const ImageSpec& spec = moving->spec();
  REGSERVE_RETURN_IF_ERROR(
      ValidateRegionWarpInputs(spec, field, out_width, out_height, options));
  const WarpParams base = MakeBaseParams(spec, field, options);
  const RowFn row_fn = SelectRowFn(base);
  const std::vector<TileRect> tiles =
      MakeTiles(out_width, out_height, options.tile_size);
  const FieldBounds bounds(field, options.cpu_threads);
  const std::vector<StreamItem> items = PlanStreamItems(
      tiles, bounds, base, RegionWarpCapacityPixels(spec, options.tile_size));
  // Two region buffers: the next region is read while this one is sampled.
  ImageSpec region_spec = spec;
  region_spec.width = RegionWarpCapacityPixels(spec, options.tile_size);
  region_spec.height = 1;
  Image regions[2];
  for (Image& r : regions) {
    REGSERVE_ASSIGN_OR_RETURN(r, Image::Allocate(region_spec));
  }
  ImageSpec tile_spec = spec;
  tile_spec.width = tiles[0].w;
  tile_spec.height = tiles[0].h;
  REGSERVE_ASSIGN_OR_RETURN(Image full_tile, Image::Allocate(tile_spec));
  Image edge_tile;
  WarpStats stats;
  stats.device = "cpu";
  REGSERVE_RETURN_IF_ERROR(ReadItem(moving, items[0], &regions[0]));
  for (size_t k = 0; k < items.size(); ++k) {
    if (options.cancel != nullptr) {
      REGSERVE_RETURN_IF_ERROR(options.cancel->Check());
    }
    absl::Status next = absl::OkStatus();
    std::thread reader;
    if (k + 1 < items.size()) {
      try {
        reader = std::thread([&, k] {
          next = ReadItem(moving, items[k + 1], &regions[(k + 1) % 2]);
        });
      } catch (const std::system_error&) {
        next = ReadItem(moving, items[k + 1], &regions[(k + 1) % 2]);
      }
    }
    const TileRect& rect = tiles[items[k].tile];
    Image* target = &full_tile;
    if (rect.w != full_tile.width() || rect.h != full_tile.height()) {
      if (edge_tile.width() != rect.w || edge_tile.height() != rect.h) {
        ImageSpec es = spec;
        es.width = rect.w;
        es.height = rect.h;
        absl::StatusOr<Image> e = Image::Allocate(es);
        if (!e.ok()) {
          if (reader.joinable()) reader.join();
          return e.status();
        }
        edge_tile = *std::move(e);
      }
      target = &edge_tile;
    }
    const RegionItem& item = items[k].region;
    WarpParams p = base;
    p.rect_x0 = item.out.x;
    p.rect_y0 = item.out.y;
    p.rect_w = item.out.w;
    p.rect_h = item.out.h;
    p.out = target->data();
    p.out_x0 = rect.x;
    p.out_y0 = rect.y;
    p.out_stride = rect.w;
    p.src = regions[k % 2].data();
    p.src_x0 = item.src.x;
    p.src_y0 = item.src.y;
    p.src_stride = item.src.w;
    const int threads =
        static_cast<int>(std::min<int64_t>(options.cpu_threads, item.out.h));
    const std::vector<ColumnTap> columns = ColumnTaps(p);
    ParallelRanges(item.out.h, threads, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) row_fn(p, columns.data(), item.out.y + j);
    });
    if (reader.joinable()) reader.join();
    REGSERVE_RETURN_IF_ERROR(next);
    if (items[k].last_of_tile) {
      REGSERVE_RETURN_IF_ERROR(on_tile(rect, *target));
      ++stats.tiles;
    }
  }
  stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return stats;
}

}  // namespace

std::unique_ptr<Warper> CreateCpuWarper() {
  return std::make_unique<CpuWarper>();
}

}  // namespace warp_internal

absl::StatusOr<WarpStats> Warper::WarpRegions(RegionSource*,
                                              const DisplacementField&, int64_t,
                                              int64_t, const WarpOptions&,
                                              const TileCallback&) {
  return absl::UnimplementedError(
      "this warper takes a moving image held whole; an image read by region "
      "is warped on the CPU");
}

absl::StatusOr<std::unique_ptr<Warper>> Warper::Create(WarpDevice device,
                                                       int cuda_device) {
  switch (device) {
    case WarpDevice::kCpu:
      return warp_internal::CreateCpuWarper();
    case WarpDevice::kCuda:
#if REGSERVE_HAVE_CUDA
      return warp_internal::CreateCudaWarper(cuda_device);
#else
      return absl::UnavailableError(absl::StrCat(
          "CUDA warp requested (device ", cuda_device,
          ") but regserve was built against a CPU-only LibTorch; use the CPU "
          "warp or rebuild with a CUDA LibTorch"));
#endif
  }
  return absl::InvalidArgumentError("unknown warp device");
}

#if !REGSERVE_HAVE_CUDA
HostAllocator* PinnedHostAllocator() { return nullptr; }
#endif

}  // namespace regserve
