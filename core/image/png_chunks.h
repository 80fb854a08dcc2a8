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

// OK when the data is not a PNG, or when every chunk up to IEND (or up to
// where the data ends) fits in the `size` bytes. InvalidArgument naming the
// chunk, its offset and its declared length otherwise. Reads chunk headers
// only, through a 64 KiB window, so a large file costs one read per big
// chunk.
absl::Status CheckPngChunkLengths(uint64_t size, ReadAtFn read_at);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_PNG_CHUNKS_H_
