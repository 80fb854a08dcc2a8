// Copyright regserve authors.
//
// Reads the RowsPerStrip tag of a TIFF's first image straight from its
// header. OpenImageIO 2.4 reports this tag as a signed int and drops values
// of 2^31 and above, and its reader then frees a bad pointer on such a file
// (process abort) or, near 2^31, loops forever; the caller needs the real
// value to refuse those files before OpenImageIO reads pixels.
#ifndef REGSERVE_CORE_IMAGE_TIFF_HEADER_H_
#define REGSERVE_CORE_IMAGE_TIFF_HEADER_H_

#include <cstdint>
#include <optional>

#include "core/image/png_chunks.h"  // ReadAtFn

namespace regserve {

// The RowsPerStrip value of the first IFD of a classic or BigTIFF file of
// either byte order, or nullopt when the data is not a TIFF, the tag is
// absent, or the header cannot be followed (OpenImageIO then reports the
// damage itself). Reads at most a few hundred bytes.
std::optional<uint64_t> ReadTiffRowsPerStrip(uint64_t size, ReadAtFn read_at);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_TIFF_HEADER_H_
