// Copyright regserve authors.
//
// 2-D MetaImage (.mhd header + .raw data) reading and writing, for
// exchanging images and deformation fields with elastix/transformix. Built
// on ITK's MetaImageIO; this layer adds the checks an untrusted header needs.
//
//   REGSERVE_RETURN_IF_ERROR(WriteMetaImage("/w/fixed.mhd", gray, {4, 4},
//                                           {1.5, 1.5}));
//   REGSERVE_ASSIGN_OR_RETURN(DisplacementField f,
//                             ReadDisplacementField("/w/deformationField.mhd"));
//
// Supported on read: NDims 2, uncompressed little-endian binary data in a
// separate file next to the header (or ElementDataFile = LOCAL), element
// types MET_UCHAR/CHAR/USHORT/SHORT/UINT/INT/FLOAT/DOUBLE, 1 to 4 channels,
// an identity TransformMatrix, no HeaderSize, a header of at most 200 lines
// and 64 KiB. Anything else gives InvalidArgument naming the header field.
// ITK's MetaIO prints its own parse diagnostics to stderr.
//
// Thread safety: all functions are thread-safe (each call uses its own ITK
// IO objects).
#ifndef REGSERVE_CORE_REGISTRATION_METAIMAGE_H_
#define REGSERVE_CORE_REGISTRATION_METAIMAGE_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/image/displacement_field.h"
#include "core/image/image.h"

namespace regserve {

struct MetaImage {
  int64_t width = 0;
  int64_t height = 0;
  int channels = 1;
  std::array<double, 2> spacing = {1.0, 1.0};
  std::array<double, 2> origin = {0.0, 0.0};  // "Offset" of the header
  // Interleaved samples converted to float, width * height * channels.
  std::vector<float> data;
};

// Writes a 1-channel float32 image as `mhd_path` plus a .raw file beside it
// (same name, extension replaced). Errors: InvalidArgument (not 1-channel
// float32, or path not ending in .mhd), Internal (I/O, with errno text).
absl::Status WriteMetaImage(const std::string& mhd_path, const Image& image,
                            std::array<double, 2> spacing,
                            std::array<double, 2> origin);

// Reads a 2-D MetaImage. The header is not trusted: the byte count its
// DimSize, channels and ElementType imply is checked (for overflow, and
// against the data file's size, or the bytes after the header for LOCAL
// data) before anything is allocated. Errors: NotFound (missing header or
// data file), InvalidArgument (unsupported or inconsistent header, a data
// file shorter than the header implies, naming the file and both sizes),
// ResourceExhausted (the allocation failed).
absl::StatusOr<MetaImage> ReadMetaImage(const std::string& mhd_path);

// Reads transformix's deformationField.mhd (2 channels) into a field with
// the header's origin and spacing. Errors as ReadMetaImage, plus
// InvalidArgument when the image does not have 2 channels.
absl::StatusOr<DisplacementField> ReadDisplacementField(
    const std::string& mhd_path);

}  // namespace regserve

#endif  // REGSERVE_CORE_REGISTRATION_METAIMAGE_H_
