// Copyright regserve authors.
#include "core/image/image.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace regserve {
namespace {

class MallocAllocator final : public HostAllocator {
 public:
  void* Allocate(size_t bytes) override {
    return std::malloc(bytes == 0 ? 1 : bytes);
  }
  void Free(void* p, size_t /*bytes*/) override { std::free(p); }
};

}  // namespace

size_t SampleSize(SampleType type) {
  switch (type) {
    case SampleType::kUInt8:
      return 1;
    case SampleType::kUInt16:
      return 2;
    case SampleType::kFloat32:
      return 4;
  }
  return 1;
}

absl::string_view SampleTypeName(SampleType type) {
  switch (type) {
    case SampleType::kUInt8:
      return "uint8";
    case SampleType::kUInt16:
      return "uint16";
    case SampleType::kFloat32:
      return "float32";
  }
  return "unknown";
}

std::string ImageSpec::DebugString() const {
  return absl::StrCat(width, "x", height, "x", channels, " ",
                      SampleTypeName(type));
}

uint64_t StreamedGrayscaleWorkBytes(const ImageSpec& source,
                                    int64_t target_width, int threads) {
  if (source.stream_rows <= 0) return source.bytes();
  const uint64_t rows = static_cast<uint64_t>(source.stream_rows);
  const uint64_t width = static_cast<uint64_t>(source.width);
  const uint64_t workers = static_cast<uint64_t>(threads < 1 ? 1 : threads);
  // Two chunks: the next one is decoded while this one is reduced; the
  // peak RSS measured a third beside them (the decoder's allocations on a
  // new reader thread for each chunk) and a few MB of codec state and
  // thread stacks (docs/benchmarks.md, "Decode memory").
  constexpr uint64_t kFixedBytes = uint64_t{8} << 20;
  return kFixedBytes + 3 * rows * width * source.bytes_per_pixel() +
         rows * static_cast<uint64_t>(target_width) * sizeof(float) +
         workers * width * sizeof(float) + source.stream_scratch_bytes;
}

absl::Status ValidateSpec(const ImageSpec& spec) {
  constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();
  if (spec.width < 1 || spec.width > kMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("image width ", spec.width, " is outside 1..", kMaxDim));
  }
  if (spec.height < 1 || spec.height > kMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("image height ", spec.height, " is outside 1..", kMaxDim));
  }
  if (spec.channels < 1 || spec.channels > 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image has ", spec.channels, " channels; 1 to 4 are supported"));
  }
  const unsigned __int128 bytes = static_cast<unsigned __int128>(spec.width) *
                                  spec.height * spec.channels *
                                  SampleSize(spec.type);
  if (bytes >
      static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("image ", spec.DebugString(), " is too large to address"));
  }
  return absl::OkStatus();
}

HostAllocator* HostAllocator::Default() {
  static MallocAllocator* allocator = new MallocAllocator();
  return allocator;
}

void ImageBufferDeleter::operator()(uint8_t* p) const {
  if (p != nullptr) allocator->Free(p, bytes);
}

absl::StatusOr<Image> Image::Allocate(const ImageSpec& spec,
                                      HostAllocator* allocator) {
  absl::Status valid = ValidateSpec(spec);
  if (!valid.ok()) return valid;
  if (allocator == nullptr) allocator = HostAllocator::Default();
  const size_t bytes = spec.bytes();
  void* p = allocator->Allocate(bytes);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate ", bytes, " bytes for image ", spec.DebugString()));
  }
  Image image;
  image.spec_ = spec;
  image.data_ = std::unique_ptr<uint8_t[], ImageBufferDeleter>(
      static_cast<uint8_t*>(p), ImageBufferDeleter{allocator, bytes});
  return image;
}

absl::StatusOr<Image> Image::AllocateZeroed(const ImageSpec& spec,
                                            HostAllocator* allocator) {
  absl::StatusOr<Image> image = Allocate(spec, allocator);
  if (image.ok()) std::memset(image->data(), 0, image->size_bytes());
  return image;
}

}  // namespace regserve
