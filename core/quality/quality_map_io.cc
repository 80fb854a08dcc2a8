// Copyright regserve authors.
#include "core/quality/quality_map_io.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace regserve {
namespace {

constexpr char kMagic[8] = {'R', 'S', 'Q', 'M', 'A', 'P', '0', '1'};
// Far above what EstimateQuality makes (max_patches, a 1024 px thumbnail):
// a bound for sizes read from a file.
constexpr int64_t kMaxCells = 1 << 22;
constexpr int64_t kMaxThumbnailPixels = 1 << 24;

template <typename T>
void Put(std::string* out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian hosts only (x86, arm64)
  out->append(b, sizeof(T));
}
template <typename T>
void PutAll(std::string* out, const std::vector<T>& v) {
  for (const T& x : v) Put(out, x);
}

class Cursor {
 public:
  explicit Cursor(absl::string_view bytes) : rest_(bytes) {}
  template <typename T>
  bool Get(T* v) {
    if (rest_.size() < sizeof(T)) return false;
    std::memcpy(v, rest_.data(), sizeof(T));
    rest_.remove_prefix(sizeof(T));
    return true;
  }
  template <typename T>
  bool GetAll(int64_t n, std::vector<T>* v) {
    if (static_cast<int64_t>(rest_.size() / sizeof(T)) < n) return false;
    v->resize(static_cast<size_t>(n));
    for (T& x : *v) Get(&x);
    return true;
  }
  bool Take(size_t n, absl::string_view* v) {
    if (rest_.size() < n) return false;
    *v = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return true;
  }
  bool done() const { return rest_.empty(); }

 private:
  absl::string_view rest_;
};

absl::Status Bad(absl::string_view why) {
  return absl::DataLossError(absl::StrCat("the stored quality map ", why));
}

}  // namespace

std::string EncodeQualityMap(const QualityMap& map) {
  const QualityGrid& g = map.grid;
  std::string out(kMagic, sizeof(kMagic));
  Put<int32_t>(&out, g.cols);
  Put<int32_t>(&out, g.rows);
  Put<int32_t>(&out, g.patch_size);
  Put<int32_t>(&out, g.stride);
  Put<double>(&out, g.scale_x);
  Put<double>(&out, g.scale_y);
  for (int x : g.x0) Put<int32_t>(&out, x);
  for (int y : g.y0) Put<int32_t>(&out, y);
  for (PatchState s : g.state) Put<uint8_t>(&out, static_cast<uint8_t>(s));
  PutAll(&out, g.dx);
  PutAll(&out, g.dy);
  PutAll(&out, g.error_px);
  PutAll(&out, g.response);
  const Image& t = map.thumbnail;
  const bool thumb =
      !t.empty() && t.channels() == 1 && t.type() == SampleType::kUInt8;
  Put<int32_t>(&out, thumb ? static_cast<int32_t>(t.width()) : 0);
  Put<int32_t>(&out, thumb ? static_cast<int32_t>(t.height()) : 0);
  if (thumb)
    out.append(reinterpret_cast<const char*>(t.data()), t.size_bytes());
  return out;
}

absl::StatusOr<QualityMap> DecodeQualityMap(absl::string_view bytes) {
  if (bytes.size() < sizeof(kMagic) ||
      std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return Bad("is not of this format (or version)");
  }
  Cursor c(bytes.substr(sizeof(kMagic)));
  QualityMap map;
  QualityGrid& g = map.grid;
  int32_t cols = 0, rows = 0, patch = 0, stride = 0;
  if (!c.Get(&cols) || !c.Get(&rows) || !c.Get(&patch) || !c.Get(&stride) ||
      !c.Get(&g.scale_x) || !c.Get(&g.scale_y)) {
    return Bad("is truncated");
  }
  const int64_t n = static_cast<int64_t>(cols) * rows;
  if (cols < 0 || rows < 0 || n > kMaxCells || patch < 0 || stride < 0) {
    return Bad("has an impossible grid size");
  }
  g.cols = cols;
  g.rows = rows;
  g.patch_size = patch;
  g.stride = stride;
  std::vector<int32_t> x0, y0;
  std::vector<uint8_t> state;
  if (!c.GetAll(cols, &x0) || !c.GetAll(rows, &y0) || !c.GetAll(n, &state) ||
      !c.GetAll(n, &g.dx) || !c.GetAll(n, &g.dy) || !c.GetAll(n, &g.error_px) ||
      !c.GetAll(n, &g.response)) {
    return Bad("is truncated");
  }
  g.x0.assign(x0.begin(), x0.end());
  g.y0.assign(y0.begin(), y0.end());
  for (uint8_t s : state) {
    if (s > static_cast<uint8_t>(PatchState::kUnmatched)) {
      return Bad("has an unknown patch state");
    }
    g.state.push_back(static_cast<PatchState>(s));
  }
  int32_t tw = 0, th = 0;
  if (!c.Get(&tw) || !c.Get(&th)) return Bad("is truncated");
  const int64_t tpx = static_cast<int64_t>(tw) * th;
  if (tw < 0 || th < 0 || tpx > kMaxThumbnailPixels) {
    return Bad("has an impossible thumbnail size");
  }
  if (tpx > 0) {
    absl::string_view pixels;
    if (!c.Take(static_cast<size_t>(tpx), &pixels)) return Bad("is truncated");
    absl::StatusOr<Image> t = Image::Allocate(
        {.width = tw, .height = th, .channels = 1, .type = SampleType::kUInt8});
    if (!t.ok()) return t.status();
    std::memcpy(t->data(), pixels.data(), pixels.size());
    map.thumbnail = *std::move(t);
  }
  if (!c.done()) return Bad("has trailing bytes");
  return map;
}

}  // namespace regserve
