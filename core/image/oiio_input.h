// Copyright regserve authors.
//
// Private to core/image: the OpenImageIO reading glue of image_io.cc, shared
// with the streamed grayscale reader (streamed_gray.cc) so that both open,
// check and describe a file the same way.
#ifndef REGSERVE_CORE_IMAGE_OIIO_INPUT_H_
#define REGSERVE_CORE_IMAGE_OIIO_INPUT_H_

#include <OpenImageIO/filesystem.h>
#include <OpenImageIO/imageio.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/image/image.h"

namespace regserve {
namespace oiio_internal {

// Collects OIIO's pending messages: the object's own (if any) and the
// thread's global one. Both must be drained so they do not leak into a later
// call on this thread.
template <typename T>
std::string DrainErrors(const T* object) {
  std::string msg;
  if (object != nullptr) msg = object->geterror();
  std::string global = OIIO::geterror();
  if (!global.empty()) {
    if (!msg.empty()) msg += "; ";
    msg += global;
  }
  // OIIO messages often end in a newline; keep Status messages on one line.
  std::replace(msg.begin(), msg.end(), '\n', ' ');
  absl::string_view trimmed = absl::StripTrailingAsciiWhitespace(msg);
  // Callers append their own sentence; drop OIIO's final period.
  while (!trimmed.empty() && trimmed.back() == '.') trimmed.remove_suffix(1);
  std::string out(trimmed);
  if (out.empty()) out = "OpenImageIO gave no error message";
  return out;
}

// Reading source: a path, or bytes in memory with a name hint.
struct Source {
  std::string name;                 // path or name hint
  absl::Span<const uint8_t> bytes;  // memory source when in_memory
  bool in_memory = false;
};

// What the container's own header says, read before a codec sees the bytes.
struct Container {
  std::optional<uint64_t> tiff_rows_per_strip;
  uint64_t size = 0;  // the file's (or the memory's) bytes
  // Layouts whose OpenImageIO reader holds the whole image (PNG's Adam7
  // interlacing) or all its coefficients (progressive JPEG) however few
  // rows are asked for.
  bool png_interlaced = false;
  bool jpeg_progressive = false;
};

// An open ImageInput plus the IOProxy it reads from (which must outlive it).
struct OpenInput {
  std::unique_ptr<OIIO::Filesystem::IOMemReader> proxy;
  std::unique_ptr<OIIO::ImageInput> input;
  OIIO::ImageSpec spec;
  ImageSpec ours;  // with decode_scratch_bytes and the stream_* fields
  Container container;
  bool is_tiff = false;
};

// Checks the file (NotFound, PermissionDenied, InvalidArgument) and its
// header, opens it with alpha kept unassociated and fills ours, as
// ReadImageFile does before it allocates.
absl::StatusOr<OpenInput> OpenForReading(const Source& src);
// Sets ours->stream_rows and stream_scratch_bytes: how the streamed reader
// reads the file, about chunk_bytes of decoded rows at a time (0: the
// default, 16 MiB), in whole strips or rows of tiles where it has them.
void SetStreamLayout(const OIIO::ImageSpec& s, const Container& container,
                     bool is_tiff, uint64_t chunk_bytes, ImageSpec* ours);
// "\"path\"" or a description of in-memory bytes, for messages.
std::string DescribeSource(const Source& src);
// ICC profile, resolution and orientation of a spec OpenForReading read.
ImageMetadata MetadataOfSpec(const OIIO::ImageSpec& spec);

}  // namespace oiio_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_OIIO_INPUT_H_
