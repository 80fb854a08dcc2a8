// Copyright regserve authors.
//
// libFuzzer entry point for the untrusted decode path. Built only with
// -DREGSERVE_FUZZ=ON and clang (see core/image/CMakeLists.txt). The budget is
// tight so that a header declaring a huge image is refused before allocation,
// which is exactly the behaviour under test; anything that decodes must give
// a consistent Image, and nothing may crash, hang or leak.
//
// Build and run (clang; the seed corpus is tests/data/bad_images/): see
// tests/fuzz/run_fuzzers.sh, which configures build-fuzz with
// CC=clang CXX=clang++ -DREGSERVE_FUZZ=ON, builds the fuzzers and runs each
// for a bounded time with the suppression below. The replay test
// fuzz_replay_image_io runs this entry point on the corpus in every build.
// The suppression (core/image/oiio_lsan.supp) covers a 31-byte leak inside
// OIIO 2.4's PNG reader on truncated files. Our code is coverage-instrumented
// (REGSERVE_FUZZ instruments every target); OIIO and the codecs are not, so
// mutation is mostly blind inside the decoders.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/image/image_io.h"

namespace {

constexpr uint64_t kMaxBytes = uint64_t{64} << 20;  // 64 MiB decoded
constexpr int64_t kMaxPixels = int64_t{16} << 20;

void CheckDecoded(const regserve::Image& image) {
  if (image.empty() || image.size_bytes() > kMaxBytes ||
      image.spec().pixels() > kMaxPixels || image.channels() < 1 ||
      image.channels() > 4) {
    std::abort();  // the reader returned OK with an inconsistent image
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  regserve::ReadOptions options;
  options.max_bytes = kMaxBytes;
  options.max_pixels = kMaxPixels;
  options.threads = 1;
  const absl::Span<const uint8_t> bytes(data, size);
  // The name hint picks the first reader tried; cover the main formats.
  static const char* const kHints[] = {"fuzz.png", "fuzz.jpg", "fuzz.tif",
                                       "fuzz.exr"};
  const char* hint = kHints[size % 4];
  absl::StatusOr<regserve::Image> image =
      regserve::ReadImageMemory(bytes, hint, options);
  if (image.ok()) CheckDecoded(*image);
  absl::StatusOr<regserve::ImageSpec> spec =
      regserve::ReadImageSpecMemory(bytes, hint);
  (void)spec;
  return 0;
}
