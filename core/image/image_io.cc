// Copyright regserve authors.
//
// OpenImageIO 2.4 glue. Every call into OIIO is wrapped so that a C++
// exception or an OIIO error becomes an absl::Status; OIIO keeps errors per
// thread and per ImageInput/ImageOutput, so both are drained on the thread
// that made the failing call.
#include "core/image/image_io.h"

#include <OpenImageIO/filesystem.h>
#include <OpenImageIO/imageio.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/common/status_macros.h"
#include "core/image/oiio_input.h"
#include "core/image/oiio_type.h"
#include "core/image/png_chunks.h"
#include "core/image/tiff_header.h"

namespace regserve {
namespace {

namespace oiio = OIIO;
using oiio_internal::Container;
using oiio_internal::DrainErrors;
using oiio_internal::OpenInput;
using oiio_internal::Source;

// Uncompressed sizes above this are written as BigTIFF. Classic TIFF offsets
// are 32-bit; the margin covers deflate's worst-case expansion and the tile
// offset tables.
constexpr uint64_t kBigTiffThreshold =
    (uint64_t{1} << 32) - (uint64_t{256} << 20);

// uint8 stays uint8, 16-bit unsigned stays uint16, all else becomes float32.
SampleType DecodeType(const oiio::ImageSpec& spec) {
  oiio::TypeDesc format = spec.format;
  for (const oiio::TypeDesc& ch : spec.channelformats) {
    if (ch != format) return SampleType::kFloat32;
  }
  if (format.basetype == oiio::TypeDesc::UINT8) return SampleType::kUInt8;
  if (format.basetype == oiio::TypeDesc::UINT16) return SampleType::kUInt16;
  return SampleType::kFloat32;
}

std::string Describe(const Source& src) {
  if (src.in_memory) {
    return absl::StrCat("in-memory image (", src.bytes.size(),
                        " bytes, name hint \"", src.name, "\")");
  }
  return absl::StrCat("\"", src.name, "\"");
}

absl::Status CheckFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return absl::NotFoundError(
          absl::StrCat("image file \"", path, "\" does not exist"));
    }
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot stat image file \"", path, "\": ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", path, "\" is not a regular file"));
  }
  if (st.st_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image file \"", path, "\" is empty (0 bytes)"));
  }
  if (::access(path.c_str(), R_OK) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "image file \"", path, "\" is not readable: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// OIIO's read_image decodes through a scratch buffer of
// max(64 MiB, "read_chunk" scanlines); the default of 256 scanlines lets a
// header with a very wide, short image (3195728x2 RGB: 7 MB of pixels) make
// it allocate 2.4 GB before a byte is read. With 1 the scratch is at most
// 64 MiB or one scanline, and a scanline is inside the checked budget.
// Ordinary images are unaffected: below 256 KiB per scanline the 64 MiB term
// is already more than 256 scanlines.
void ConfigureOiioOnce() {
  static const bool configured = [] {
    oiio::attribute("read_chunk", 1);
    return true;
  }();
  (void)configured;
}

// Calls f(size, read_at) on the source's bytes (a file is opened for it).
// Returns false when a file cannot be opened (OIIO then reports it with
// context).
template <typename F>
bool WithBytes(const Source& src, F&& f) {
  if (src.in_memory) {
    f(static_cast<uint64_t>(src.bytes.size()),
      [&](uint64_t offset, size_t n, uint8_t* out) {
        if (offset >= src.bytes.size()) return size_t{0};
        n = std::min<uint64_t>(n, src.bytes.size() - offset);
        std::memcpy(out, src.bytes.data() + offset, n);
        return n;
      });
    return true;
  }
  const int fd = ::open(src.name.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st;
  const bool ok = ::fstat(fd, &st) == 0;
  if (ok) {
    f(static_cast<uint64_t>(st.st_size),
      [fd](uint64_t offset, size_t n, uint8_t* out) {
        size_t got = 0;
        while (got < n) {
          const ssize_t r =
              ::pread(fd, out + got, n - got, static_cast<off_t>(offset + got));
          if (r < 0 && errno == EINTR) continue;
          if (r <= 0) break;
          got += static_cast<size_t>(r);
        }
        return got;
      });
  }
  ::close(fd);
  return ok;
}

// PNG: the interlace method, byte 12 of IHDR (the first chunk).
bool IsInterlacedPng(uint64_t size, ReadAtFn read_at) {
  static constexpr uint8_t kSignature[8] = {0x89, 'P',  'N',  'G',
                                            '\r', '\n', 0x1A, '\n'};
  uint8_t head[29];
  if (size < sizeof(head) || read_at(0, sizeof(head), head) != sizeof(head))
    return false;
  return std::memcmp(head, kSignature, 8) == 0 &&
         std::memcmp(head + 12, "IHDR", 4) == 0 && head[28] != 0;
}

// JPEG: whether the first frame header (SOFn) is progressive (SOF2, 6, 10,
// 14), walking the marker segments before it.
bool IsProgressiveJpeg(uint64_t size, ReadAtFn read_at) {
  uint8_t b[4];
  if (size < 4 || read_at(0, 2, b) != 2 || b[0] != 0xFF || b[1] != 0xD8)
    return false;
  uint64_t pos = 2;
  for (int segments = 0; segments < 4096 && pos + 4 <= size; ++segments) {
    if (read_at(pos, 4, b) != 4 || b[0] != 0xFF) return false;
    const uint8_t m = b[1];
    if (m == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC)
      return m == 0xC2 || m == 0xC6 || m == 0xCA || m == 0xCE;
    if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) {
      pos += 2;
      continue;
    }
    pos += 2 + ((uint64_t{b[2]} << 8) | b[3]);
  }
  return false;
}

absl::StatusOr<Container> PrecheckContainer(const Source& src) {
  absl::Status s;
  Container c;
  WithBytes(src, [&](uint64_t size, ReadAtFn read_at) {
    s = CheckPngChunkLengths(size, read_at);
    c.tiff_rows_per_strip = ReadTiffRowsPerStrip(size, read_at);
    c.size = size;
    c.png_interlaced = IsInterlacedPng(size, read_at);
    c.jpeg_progressive = IsProgressiveJpeg(size, read_at);
  });
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot decode ", Describe(src), ": ", s.message()));
  }
  return c;
}

// The RAM OpenImageIO's read_image needs beside the decoded pixels, from
// the file's layout, or InvalidArgument for a layout it cannot read safely.
// It reads through max(64 MiB of scanlines, read_chunk) rounded up to whole
// strips or tile rows, in the file's own sample format; the pages it touches
// are at most the image's. A TIFF RowsPerStrip far above the height makes it
// allocate that many rows, and near 2^31 its rounding overflows and
// read_image never returns, so such headers are refused.
absl::StatusOr<uint64_t> DecodeScratch(const Source& src,
                                       const oiio::ImageSpec& s,
                                       const Container& container) {
  constexpr uint64_t kChunk = uint64_t{64} << 20;
  const uint64_t scanline = s.scanline_bytes(/*native=*/true);
  const uint64_t height = static_cast<uint64_t>(s.height);
  const uint64_t image = scanline * height;  // ValidateSpec bounded both
  uint64_t rows = 1;
  if (s.tile_width > 0) {
    rows = static_cast<uint64_t>(std::max(1, s.tile_height));
  } else if (container.tiff_rows_per_strip.has_value()) {
    // From the header: OIIO reports values of 2^31 and above as nothing.
    const uint64_t rps = *container.tiff_rows_per_strip;
    if (rps == 0xFFFFFFFFu) {
      rows = height;  // TIFF's "the whole image is one strip"
    } else if (rps > height && rps - height > kChunk / scanline) {
      // Also catches 2^31 to 2^32-2, where OIIO frees a bad pointer, and
      // values near 2^31, where its rounding overflows and read_image
      // never returns.
      return absl::InvalidArgumentError(absl::StrCat(
          Describe(src), " declares a TIFF RowsPerStrip of ", rps,
          " for an image of ", height, " rows; reading it would need ", rps,
          " rows of ", scanline, " bytes for ", image,
          " bytes of pixels. Re-save it with strips no taller than the "
          "image, e.g. oiiotool in.tif -o out.tif"));
    } else {
      rows = std::max<uint64_t>(1, rps);
    }
  } else {
    // No tag (OIIO assumes 2048 rows) or not a TIFF (0).
    const int rps = s.get_int_attribute("tiff:RowsPerStrip", 0);
    if (rps > 0) {
      rows = static_cast<uint64_t>(rps);
      if (rows > height && rows - height > kChunk / scanline) {
        return absl::InvalidArgumentError(absl::StrCat(
            Describe(src), " is a TIFF without RowsPerStrip, which ",
            "OpenImageIO reads ", rps, " rows of ", scanline,
            " bytes at a time, for ", image,
            " bytes of pixels. Re-save it, e.g. ",
            "oiiotool in.tif -o out.tif"));
      }
    }
  }
  return std::min(image, kChunk + std::min(rows, height) * scanline);
}

// How the streamed reader (streamed_gray.cc) reads this file: whole strips
// or rows of tiles, about kStreamChunk bytes of decoded rows at a time, or
// that many rows one by one where strips are too tall (a single strip) or
// the format has none. The scratch is what the decoder holds beside them,
// measured in docs/benchmarks.md, "Decode memory": the raw (compressed)
// strips or tiles of a chunk, read before they are decompressed; for a
// TIFF strip read row by row, libtiff's buffer of the whole raw (compressed)
// strip, at most the file; the
// whole image for an interlaced PNG and its coefficients for a progressive
// JPEG; a native chunk when samples are converted (e.g. half to float).
constexpr uint64_t kStreamChunk = uint64_t{16} << 20;

}  // namespace

namespace oiio_internal {

void SetStreamLayout(const oiio::ImageSpec& s, const Container& container,
                     bool is_tiff, uint64_t chunk_bytes, ImageSpec* ours) {
  if (chunk_bytes == 0) chunk_bytes = kStreamChunk;
  const uint64_t height = static_cast<uint64_t>(s.height);
  const uint64_t row = ours->bytes() / height;  // decoded bytes per row
  const uint64_t native_row = s.scanline_bytes(/*native=*/true);
  const uint64_t per_chunk = std::max<uint64_t>(1, chunk_bytes / row);
  uint64_t unit = 0;  // rows of a strip or a row of tiles, 0: read row by row
  uint64_t unit_row = native_row;
  if (s.tile_width > 0 && s.tile_height > 0) {
    unit = static_cast<uint64_t>(s.tile_height);
    const uint64_t tiles = (static_cast<uint64_t>(s.width) + s.tile_width - 1) /
                           static_cast<uint64_t>(s.tile_width);
    unit_row = native_row / static_cast<uint64_t>(s.width) * tiles *
               static_cast<uint64_t>(s.tile_width);
  } else if (container.tiff_rows_per_strip.has_value() &&
             *container.tiff_rows_per_strip < height &&
             *container.tiff_rows_per_strip * native_row <= 4 * kStreamChunk) {
    unit = std::max<uint64_t>(1, *container.tiff_rows_per_strip);
  }
  uint64_t rows =
      unit > 0 ? unit * std::max<uint64_t>(1, per_chunk / unit) : per_chunk;
  rows = std::min(rows, height);
  uint64_t scratch = 0;
  if (unit > 0) {
    scratch = rows * unit_row + (uint64_t{64} << 10);  // compressBound slack
  } else if (container.png_interlaced) {
    scratch = native_row * height;
  } else if (container.jpeg_progressive) {
    scratch = static_cast<uint64_t>(s.width) * height * s.nchannels * 2;
  } else if (is_tiff) {
    // libtiff holds the whole raw strip (no RowsPerStrip: one strip), at
    // most the file.
    scratch = std::min(
        container.size,
        native_row *
            std::min(height, container.tiff_rows_per_strip.value_or(height)));
  } else {
    scratch = 2 * native_row;
  }
  if (OiioTypeOf(ours->type) != s.format) scratch += rows * native_row;
  ours->stream_rows = static_cast<int64_t>(rows);
  ours->stream_scratch_bytes = scratch;
  // The units above can be read in any order (read_tiles, read_scanlines of
  // whole strips); one strip or a sequential codec cannot.
  ours->region_chunk_width = 0;
  ours->region_chunk_height = 0;
  if (s.tile_width > 0 && s.tile_height > 0) {
    ours->region_chunk_width = s.tile_width;
    ours->region_chunk_height = s.tile_height;
  } else if (unit > 0) {
    ours->region_chunk_width = s.width;
    ours->region_chunk_height = static_cast<int64_t>(unit);
  }
}

}  // namespace oiio_internal

namespace {

absl::StatusOr<OpenInput> Open(const Source& src) {
  ConfigureOiioOnce();
  if (src.in_memory) {
    if (src.bytes.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot decode ", Describe(src), ": no data"));
    }
  } else {
    REGSERVE_RETURN_IF_ERROR(CheckFile(src.name));
  }
  REGSERVE_ASSIGN_OR_RETURN(const Container container, PrecheckContainer(src));
  OpenInput result;
  result.container = container;
  try {
    oiio::ImageSpec config;
    // Keep alpha as stored: no premultiplication on read.
    config.attribute("oiio:UnassociatedAlpha", 1);
    if (src.in_memory) {
      result.proxy = std::make_unique<oiio::Filesystem::IOMemReader>(
          src.bytes.data(), src.bytes.size());
      // OIIO 2.4 readers pick the proxy up from the config in open().
      void* proxy_ptr = result.proxy.get();
      config.attribute("oiio:ioproxy", oiio::TypeDesc::PTR, &proxy_ptr);
    }
    // OIIO needs some name; one with an unknown extension makes it try
    // every reader on the bytes.
    const std::string name =
        src.in_memory && src.name.empty() ? std::string("memory") : src.name;
    result.input = oiio::ImageInput::open(name, &config, result.proxy.get());
    if (result.input == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot open ", Describe(src),
                       " as an image: ", DrainErrors<oiio::ImageInput>(nullptr),
                       ". Supply an intact PNG, JPEG, TIFF or EXR file"));
    }
    result.spec = result.input->spec();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot open ", Describe(src), ": OpenImageIO threw: ", e.what()));
  }
  const oiio::ImageSpec& s = result.spec;
  if (s.deep) {
    return absl::InvalidArgumentError(absl::StrCat(
        Describe(src), " is a deep image; only flat images are supported"));
  }
  if (s.depth > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(src), " is a volume (depth ", s.depth,
                     "); only 2-D images are supported"));
  }
  if (s.nchannels < 1 || s.nchannels > 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        Describe(src), " has ", s.nchannels,
        " channels; 1 to 4 (gray, gray+alpha, RGB, RGBA) are supported. "
        "Drop the extra channels first, e.g. oiiotool in --ch R,G,B -o out"));
  }
  result.ours.width = s.width;
  result.ours.height = s.height;
  result.ours.channels = s.nchannels;
  result.ours.type = DecodeType(s);
  absl::Status valid = ValidateSpec(result.ours);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Describe(src), " declares an impossible size: ", valid.message()));
  }
  REGSERVE_ASSIGN_OR_RETURN(result.ours.decode_scratch_bytes,
                            DecodeScratch(src, s, container));
  result.is_tiff = std::string(result.input->format_name()) == "tiff";
  oiio_internal::SetStreamLayout(s, container, result.is_tiff, 0, &result.ours);
  return result;
}

uint64_t PhysicalMemoryBytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

absl::Status CheckBudget(const Source& src, const ImageSpec& spec,
                         const ReadOptions& options) {
  const int64_t pixels = spec.pixels();  // ValidateSpec bounded this
  if (pixels > options.max_pixels) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(src), " is ", spec.width, "x", spec.height, " = ",
                     pixels, " pixels, above the limit of ", options.max_pixels,
                     " pixels; downscale the image or raise the pixel limit"));
  }
  const uint64_t bytes = spec.bytes();
  if (bytes > options.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "decoding ", Describe(src), " (", spec.DebugString(), ") needs ", bytes,
        " bytes, above the memory budget of ", options.max_bytes,
        " bytes; downscale or crop the image, or raise the budget"));
  }
  const uint64_t ram = PhysicalMemoryBytes();
  if (bytes > ram || spec.decode_scratch_bytes > ram - bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "decoding ", Describe(src), " (", spec.DebugString(), ") needs ",
        bytes + spec.decode_scratch_bytes, " bytes, more than this machine's ",
        ram,
        " bytes of RAM; the header is corrupt or the image must be tiled"));
  }
  return absl::OkStatus();
}

// ICC profile, resolution and orientation, as OpenImageIO's readers name
// them (TIFF tags, JPEG APP2/JFIF/EXIF, PNG iCCP/pHYs).
ImageMetadata MetadataOf(const oiio::ImageSpec& s) {
  ImageMetadata m;
  const oiio::ParamValue* icc = s.find_attribute("ICCProfile");
  if (icc != nullptr && icc->type().basetype == oiio::TypeDesc::UINT8) {
    const char* bytes = static_cast<const char*>(icc->data());
    m.icc_profile.assign(bytes, bytes + icc->datasize());
  }
  m.x_resolution = s.get_float_attribute("XResolution", 0.0f);
  m.y_resolution = s.get_float_attribute("YResolution", 0.0f);
  const std::string unit = absl::AsciiStrToLower(
      std::string(s.get_string_attribute("ResolutionUnit")));
  if (unit == "in" || unit == "inch" || unit == "inches") {
    m.resolution_unit = ResolutionUnit::kInch;
  } else if (unit == "cm" || unit == "centimeter") {
    m.resolution_unit = ResolutionUnit::kCentimeter;
  }
  if (!(m.x_resolution > 0) || !(m.y_resolution > 0)) {
    m.x_resolution = m.y_resolution = 0.0;
    m.resolution_unit = ResolutionUnit::kNone;
  }
  const int orientation = s.get_int_attribute("Orientation", 0);
  if (orientation >= 1 && orientation <= 8) m.orientation = orientation;
  return m;
}

absl::StatusOr<Image> Read(const Source& src, const ReadOptions& options) {
  REGSERVE_ASSIGN_OR_RETURN(OpenInput in, Open(src));
  REGSERVE_RETURN_IF_ERROR(CheckBudget(src, in.ours, options));
  REGSERVE_ASSIGN_OR_RETURN(Image image,
                            Image::Allocate(in.ours, options.allocator));
  try {
    in.input->threads(std::max(1, options.threads));
    const bool ok = in.input->read_image(
        /*subimage=*/0, /*miplevel=*/0, /*chbegin=*/0,
        /*chend=*/in.ours.channels, OiioTypeOf(in.ours.type), image.data());
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot decode the pixels of ", Describe(src), " (",
          in.ours.DebugString(), "): ", DrainErrors(in.input.get()),
          ". The file is truncated or corrupt; re-export it"));
    }
    // Some readers (libjpeg) report recoverable damage only as a pending
    // error after returning success; treat that as corrupt data too.
    if (in.input->has_error()) {
      return absl::InvalidArgumentError(
          absl::StrCat("decoding ", Describe(src),
                       " reported damage: ", DrainErrors(in.input.get()),
                       ". The file is truncated or corrupt; re-export it"));
    }
    in.input->close();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot decode ", Describe(src), ": OpenImageIO threw: ", e.what()));
  }
  if (options.metadata != nullptr) *options.metadata = MetadataOf(in.spec);
  return image;
}

absl::StatusOr<ImageSpec> ReadSpec(const Source& src) {
  REGSERVE_ASSIGN_OR_RETURN(OpenInput in, Open(src));
  try {
    in.input->close();
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("closing ", Describe(src), " threw: ", e.what()));
  }
  return in.ours;
}

std::string LowerExtension(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const size_t dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) {
    return "";
  }
  return absl::AsciiStrToLower(path.substr(dot + 1));
}

bool IsTiff(const std::string& path) {
  const std::string ext = LowerExtension(path);
  return ext == "tif" || ext == "tiff";
}

// Output spec shared by WriteImageFile and the tiled writer.
oiio::ImageSpec OutputSpec(const ImageSpec& spec) {
  oiio::ImageSpec out(static_cast<int>(spec.width),
                      static_cast<int>(spec.height), spec.channels,
                      OiioTypeOf(spec.type));
  // Our buffers hold unassociated alpha; do not let OIIO un-premultiply.
  out.attribute("oiio:UnassociatedAlpha", 1);
  if (spec.channels == 2) {
    out.channelnames = {"Y", "A"};
    out.alpha_channel = 1;
  } else if (spec.channels == 1) {
    out.channelnames = {"Y"};
  }
  return out;
}

absl::Status CheckWritable(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("output path is empty");
  if (LowerExtension(path).empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("output path \"", path,
                     "\" has no extension; use .tif, .png, .jpg or .exr to "
                     "pick the format"));
  }
  return absl::OkStatus();
}

}  // namespace

namespace oiio_internal {

absl::StatusOr<OpenInput> OpenForReading(const Source& src) {
  return Open(src);
}
std::string DescribeSource(const Source& src) { return Describe(src); }
ImageMetadata MetadataOfSpec(const oiio::ImageSpec& spec) {
  return MetadataOf(spec);
}

}  // namespace oiio_internal

absl::StatusOr<ImageSpec> ReadImageSpecFile(const std::string& path) {
  Source src;
  src.name = path;
  return ReadSpec(src);
}

absl::StatusOr<ImageSpec> ReadImageSpecMemory(absl::Span<const uint8_t> bytes,
                                              const std::string& name_hint) {
  Source src;
  src.name = name_hint;
  src.bytes = bytes;
  src.in_memory = true;
  return ReadSpec(src);
}

absl::StatusOr<Image> ReadImageFile(const std::string& path,
                                    const ReadOptions& options) {
  Source src;
  src.name = path;
  return Read(src, options);
}

absl::StatusOr<Image> ReadImageMemory(absl::Span<const uint8_t> bytes,
                                      const std::string& name_hint,
                                      const ReadOptions& options) {
  Source src;
  src.name = name_hint;
  src.bytes = bytes;
  src.in_memory = true;
  return Read(src, options);
}

absl::Status WriteImageFile(const std::string& path, const Image& image) {
  if (image.empty())
    return absl::InvalidArgumentError("cannot write an empty image");
  REGSERVE_RETURN_IF_ERROR(CheckWritable(path));
  try {
    std::unique_ptr<oiio::ImageOutput> out = oiio::ImageOutput::create(path);
    if (out == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("no image writer for \"", path,
                       "\": ", DrainErrors<oiio::ImageOutput>(nullptr),
                       ". Use .tif, .png, .jpg or .exr"));
    }
    oiio::ImageSpec spec = OutputSpec(image.spec());
    if (IsTiff(path)) {
      spec.attribute("compression", "zip");
      if (image.size_bytes() > kBigTiffThreshold)
        spec.attribute("tiff:bigtiff", 1);
    }
    if (!out->open(path, spec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", image.spec().DebugString(), " as \"",
                       path, "\": ", DrainErrors(out.get())));
    }
    if (!out->write_image(OiioTypeOf(image.type()), image.data())) {
      std::string why = DrainErrors(out.get());
      out->close();
      DrainErrors(out.get());
      return absl::InternalError(absl::StrCat(
          "writing \"", path, "\" failed: ", why, ". Check free disk space"));
    }
    if (!out->close()) {
      return absl::InternalError(absl::StrCat(
          "closing \"", path, "\" failed: ", DrainErrors(out.get())));
    }
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("writing \"", path, "\": OpenImageIO threw: ", e.what()));
  }
  return absl::OkStatus();
}

OIIO::TypeDesc OiioTypeOf(SampleType type) {
  switch (type) {
    case SampleType::kUInt8:
      return OIIO::TypeDesc::UINT8;
    case SampleType::kUInt16:
      return OIIO::TypeDesc::UINT16;
    case SampleType::kFloat32:
      return OIIO::TypeDesc::FLOAT;
  }
  return OIIO::TypeDesc::UINT8;
}

}  // namespace regserve
