// Copyright regserve authors.
//
// A structural check of PNG chunk lengths, run before OpenImageIO sees the
// data. libpng allocates an ancillary chunk's declared length before reading
// it, and Debian's libpng has no limit on that length, so a 675-byte file
// declaring a 1.8 GB tEXt chunk made it allocate 1.8 GB. A chunk cannot be
// longer than what is left of the file; this refuses such data up front.
#ifndef REGSERVE_CORE_IMAGE_PNG_CHUNKS_H_
#define REGSERVE_CORE_IMAGE_PNG_CHUNKS_H_

#include <cstddef>
#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace regserve {

// Reads up to `n` bytes at `offset` into `out`; returns how many were read
// (fewer only at the end of the data).
using ReadAtFn =
    absl::FunctionRef<size_t(uint64_t offset, size_t n, uint8_t* out)>;

// OK when the data is not a PNG, or when every chunk before the first IDAT
// (with its CRC) fits in the `size` bytes. InvalidArgument naming the chunk,
// its offset and its declared length otherwise. The image data and what
// follows it are left to libpng, which streams IDAT and which OpenImageIO
// never asks for the chunks after it. Reads chunk headers only, through a
// 64 KiB window: usually one read in all.
absl::Status CheckPngChunkLengths(uint64_t size, ReadAtFn read_at);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_PNG_CHUNKS_H_
