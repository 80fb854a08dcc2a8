// Copyright regserve authors.
//
// The grayscale registration copy: the per-row kernel (grayscale_kernel.h)
// and MakeGrayscaleCopy (image_io.h), which runs it over a source held whole.
#include <algorithm>
#include <cmath>
#include <exception>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/image/grayscale_kernel.h"
#include "core/image/image_io.h"

namespace regserve {
namespace gray_internal {
namespace {

AxisWeights MakeAxisWeights(int64_t source, int64_t target) {
  AxisWeights w;
  const double scale =
      static_cast<double>(source) / static_cast<double>(target);
  w.first.resize(target);
  w.offset.resize(target + 1);
  w.weights.reserve(static_cast<size_t>(target) *
                    (static_cast<size_t>(std::ceil(scale)) + 1));
  for (int64_t j = 0; j < target; ++j) {
    const double a = static_cast<double>(j) * scale;
    const double b = j + 1 == target ? static_cast<double>(source)
                                     : static_cast<double>(j + 1) * scale;
    const int64_t i0 = static_cast<int64_t>(std::floor(a));
    const int64_t i1 =
        std::min<int64_t>(source, static_cast<int64_t>(std::ceil(b)));
    w.first[j] = i0;
    w.offset[j] = static_cast<int64_t>(w.weights.size());
    for (int64_t i = i0; i < i1; ++i) {
      const double overlap =
          std::min<double>(i + 1, b) - std::max<double>(i, a);
      w.weights.push_back(static_cast<float>(overlap / scale));
    }
  }
  w.offset[target] = static_cast<int64_t>(w.weights.size());
  return w;
}

// Luma (or gray) of one source row, in source units (not normalised).
template <typename T, int C>
void LumaRow(const T* in, int64_t width, float* out) {
  if constexpr (C >= 3) {
    for (int64_t x = 0; x < width; ++x) {
      const T* p = in + x * C;
      out[x] = 0.299f * static_cast<float>(p[0]) +
               0.587f * static_cast<float>(p[1]) +
               0.114f * static_cast<float>(p[2]);
    }
  } else {
    for (int64_t x = 0; x < width; ++x) out[x] = static_cast<float>(in[x * C]);
  }
}

template <typename T, int C>
void ReduceRowT(const void* row, int64_t width, const AxisWeights& wx,
                float* luma, float* reduced) {
  LumaRow<T, C>(static_cast<const T*>(row), width, luma);
  const int64_t tw = static_cast<int64_t>(wx.first.size());
  for (int64_t j = 0; j < tw; ++j) {
    const float* w = wx.weights.data() + wx.offset[j];
    const int64_t n = wx.offset[j + 1] - wx.offset[j];
    const float* l = luma + wx.first[j];
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum += w[i] * l[i];
    reduced[j] = sum;
  }
}

template <typename T>
ReduceRowFn ReducerFor(int channels) {
  switch (channels) {
    case 1:
      return &ReduceRowT<T, 1>;
    case 2:
      return &ReduceRowT<T, 2>;
    case 3:
      return &ReduceRowT<T, 3>;
    default:
      return &ReduceRowT<T, 4>;
  }
}

}  // namespace

std::pair<int64_t, int64_t> AxisWeights::OutputsOf(int64_t k) const {
  const int64_t hi = std::upper_bound(first.begin(), first.end(), k) -
                     first.begin();  // the first output starting after k
  int64_t lo = hi;
  while (lo > 0 && end(lo - 1) > k) --lo;
  return {lo, hi};
}

absl::StatusOr<GrayKernel> MakeGrayKernel(const ImageSpec& source,
                                          int64_t target_width,
                                          int64_t target_height) {
  if (target_width < 1 || target_height < 1 || target_width > source.width ||
      target_height > source.height) {
    return absl::InvalidArgumentError(
        absl::StrCat("grayscale copy size ", target_width, "x", target_height,
                     " must be at least 1x1 and at most the source size ",
                     source.width, "x", source.height));
  }
  GrayKernel k;
  switch (source.type) {
    case SampleType::kUInt8:
      k.norm = 1.0f / 255.0f;
      k.reduce = ReducerFor<uint8_t>(source.channels);
      break;
    case SampleType::kUInt16:
      k.norm = 1.0f / 65535.0f;
      k.reduce = ReducerFor<uint16_t>(source.channels);
      break;
    case SampleType::kFloat32:
      k.reduce = ReducerFor<float>(source.channels);
      break;
  }
  try {
    k.wx = MakeAxisWeights(source.width, target_width);
    k.wy = MakeAxisWeights(source.height, target_height);
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate grayscale copy tables: ", e.what()));
  }
  return k;
}

void AccumulateRow(const AxisWeights& wy, int64_t k, const float* reduced,
                   int64_t row_begin, int64_t row_end, Image* dst) {
  const auto [lo, hi] = wy.OutputsOf(k);
  const int64_t tw = dst->width();
  for (int64_t rr = std::max(lo, row_begin); rr < std::min(hi, row_end); ++rr) {
    const float weight = wy.weights[wy.offset[rr] + (k - wy.first[rr])];
    float* out = reinterpret_cast<float*>(dst->row(rr));
    for (int64_t j = 0; j < tw; ++j) out[j] += weight * reduced[j];
  }
}

void NormalizeRows(float norm, int64_t row_begin, int64_t row_end, Image* dst) {
  if (norm == 1.0f) return;
  const int64_t tw = dst->width();
  for (int64_t rr = row_begin; rr < row_end; ++rr) {
    float* out = reinterpret_cast<float*>(dst->row(rr));
    for (int64_t j = 0; j < tw; ++j) out[j] *= norm;
  }
}

}  // namespace gray_internal

namespace {

using gray_internal::GrayKernel;

// Output rows [b, e) from the source rows their footprints cover, each
// source row reduced once per band.
void GrayscaleBand(const Image& src, const GrayKernel& kernel, int64_t b,
                   int64_t e, float* scratch, Image* dst) {
  float* luma = scratch;                   // source width floats
  float* reduced = scratch + src.width();  // target width floats
  for (int64_t r = b; r < e; ++r) {
    float* out = reinterpret_cast<float*>(dst->row(r));
    std::fill(out, out + dst->width(), 0.0f);
  }
  for (int64_t k = kernel.wy.first[b]; k < kernel.wy.end(e - 1); ++k) {
    kernel.reduce(src.row(k), src.width(), kernel.wx, luma, reduced);
    gray_internal::AccumulateRow(kernel.wy, k, reduced, b, e, dst);
  }
  gray_internal::NormalizeRows(kernel.norm, b, e, dst);
}

}  // namespace

absl::StatusOr<Image> MakeGrayscaleCopy(const Image& image,
                                        int64_t target_width,
                                        int64_t target_height, int threads) {
  if (image.empty()) {
    return absl::InvalidArgumentError("MakeGrayscaleCopy got an empty image");
  }
  REGSERVE_ASSIGN_OR_RETURN(
      const GrayKernel kernel,
      gray_internal::MakeGrayKernel(image.spec(), target_width, target_height));
  ImageSpec spec;
  spec.width = target_width;
  spec.height = target_height;
  spec.channels = 1;
  spec.type = SampleType::kFloat32;
  REGSERVE_ASSIGN_OR_RETURN(Image out, Image::Allocate(spec));
  const int64_t n =
      std::max<int64_t>(1, std::min<int64_t>(threads, target_height));
  // Everything that can fail is allocated here, before any thread starts:
  // one row of scratch (source width + target width floats) per thread.
  // Extra memory: O(target + threads x row).
  std::vector<std::vector<float>> scratch(n);
  try {
    for (std::vector<float>& v : scratch)
      v.resize(image.width() + target_width);
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate grayscale copy scratch: ", e.what()));
  }
  auto run = [&](int64_t t) {
    GrayscaleBand(image, kernel, target_height * t / n,
                  target_height * (t + 1) / n, scratch[t].data(), &out);
  };
  std::vector<std::thread> workers;
  try {
    workers.reserve(n - 1);
    for (int64_t t = 1; t < n; ++t) workers.emplace_back(run, t);
  } catch (const std::exception& e) {
    for (std::thread& w : workers) w.join();
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start grayscale worker threads: ", e.what()));
  }
  run(0);
  for (std::thread& w : workers) w.join();
  return out;
}

}  // namespace regserve
