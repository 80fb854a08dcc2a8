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
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/common/status_macros.h"
#include "core/image/oiio_type.h"
#include "core/image/png_chunks.h"
#include "core/image/tiff_header.h"

namespace regserve {
namespace {

namespace oiio = OIIO;

// Uncompressed sizes above this are written as BigTIFF. Classic TIFF offsets
// are 32-bit; the margin covers deflate's worst-case expansion and the tile
// offset tables.
constexpr uint64_t kBigTiffThreshold =
    (uint64_t{1} << 32) - (uint64_t{256} << 20);

// Collects OIIO's pending messages: the object's own (if any) and the
// thread's global one. Both must be drained so they do not leak into a later
// call on this thread.
template <typename T>
std::string DrainErrors(const T* object) {
  std::string msg;
  if (object != nullptr) msg = object->geterror();
  std::string global = oiio::geterror();
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

// Reading source: a path, or bytes in memory with a name hint.
struct Source {
  std::string name;                 // path or name hint
  absl::Span<const uint8_t> bytes;  // memory source when in_memory
  bool in_memory = false;
};

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

// An open ImageInput plus the IOProxy it reads from (which must outlive it).
struct OpenInput {
  std::unique_ptr<oiio::Filesystem::IOMemReader> proxy;
  std::unique_ptr<oiio::ImageInput> input;
  oiio::ImageSpec spec;
  ImageSpec ours;
};

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

// What the container's own header says, read before a codec sees the bytes.
struct Container {
  std::optional<uint64_t> tiff_rows_per_strip;
};

absl::StatusOr<Container> PrecheckContainer(const Source& src) {
  absl::Status s;
  Container c;
  WithBytes(src, [&](uint64_t size, ReadAtFn read_at) {
    s = CheckPngChunkLengths(size, read_at);
    c.tiff_rows_per_strip = ReadTiffRowsPerStrip(size, read_at);
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

// ---------------------------------------------------------------------------
// Grayscale copy.

// Source range and overlap weights of each output sample along one axis.
// Output sample j covers [j*scale, (j+1)*scale) of the source; source sample
// i covers [i, i+1). weights[offset[j] .. offset[j+1]) belong to source
// samples first[j], first[j]+1, ...; they are overlap lengths divided by
// scale, so they sum to 1.
struct AxisWeights {
  std::vector<int64_t> first;
  std::vector<int64_t> offset;
  std::vector<float> weights;
};

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
void GrayscaleRows(const Image& src, const AxisWeights& wx,
                   const AxisWeights& wy, float norm, int64_t row_begin,
                   int64_t row_end, float* scratch, Image* dst) {
  const int64_t width = src.width();
  const int64_t tw = dst->width();
  float* luma = scratch;             // width floats
  float* reduced = scratch + width;  // tw floats
  for (int64_t r = row_begin; r < row_end; ++r) {
    float* out = reinterpret_cast<float*>(dst->row(r));
    std::fill(out, out + tw, 0.0f);
  }
  // Source rows touching this band of output rows, each read once.
  const int64_t k_begin = wy.first[row_begin];
  const int64_t k_end =
      wy.first[row_end - 1] + (wy.offset[row_end] - wy.offset[row_end - 1]);
  int64_t r = row_begin;
  for (int64_t k = k_begin; k < k_end; ++k) {
    LumaRow<T, C>(reinterpret_cast<const T*>(src.row(k)), width, luma);
    for (int64_t j = 0; j < tw; ++j) {
      const float* w = wx.weights.data() + wx.offset[j];
      const int64_t n = wx.offset[j + 1] - wx.offset[j];
      const float* l = luma + wx.first[j];
      float sum = 0.0f;
      for (int64_t i = 0; i < n; ++i) sum += w[i] * l[i];
      reduced[j] = sum;
    }
    // Output rows whose footprint contains source row k: r (advancing) and
    // possibly the next one when k straddles their boundary.
    while (r < row_end && wy.first[r] + (wy.offset[r + 1] - wy.offset[r]) <= k)
      ++r;
    for (int64_t rr = r; rr < row_end && wy.first[rr] <= k; ++rr) {
      const float weight = wy.weights[wy.offset[rr] + (k - wy.first[rr])];
      float* out = reinterpret_cast<float*>(dst->row(rr));
      for (int64_t j = 0; j < tw; ++j) out[j] += weight * reduced[j];
    }
  }
  if (norm != 1.0f) {
    for (int64_t rr = row_begin; rr < row_end; ++rr) {
      float* out = reinterpret_cast<float*>(dst->row(rr));
      for (int64_t j = 0; j < tw; ++j) out[j] *= norm;
    }
  }
}

template <typename T>
void GrayscaleRowsByChannels(const Image& src, const AxisWeights& wx,
                             const AxisWeights& wy, float norm, int64_t b,
                             int64_t e, float* scratch, Image* dst) {
  switch (src.channels()) {
    case 1:
      return GrayscaleRows<T, 1>(src, wx, wy, norm, b, e, scratch, dst);
    case 2:
      return GrayscaleRows<T, 2>(src, wx, wy, norm, b, e, scratch, dst);
    case 3:
      return GrayscaleRows<T, 3>(src, wx, wy, norm, b, e, scratch, dst);
    default:
      return GrayscaleRows<T, 4>(src, wx, wy, norm, b, e, scratch, dst);
  }
}

}  // namespace

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

absl::StatusOr<Image> MakeGrayscaleCopy(const Image& image,
                                        int64_t target_width,
                                        int64_t target_height, int threads) {
  if (image.empty()) {
    return absl::InvalidArgumentError("MakeGrayscaleCopy got an empty image");
  }
  if (target_width < 1 || target_height < 1 || target_width > image.width() ||
      target_height > image.height()) {
    return absl::InvalidArgumentError(
        absl::StrCat("grayscale copy size ", target_width, "x", target_height,
                     " must be at least 1x1 and at most the source size ",
                     image.width(), "x", image.height()));
  }
  ImageSpec spec;
  spec.width = target_width;
  spec.height = target_height;
  spec.channels = 1;
  spec.type = SampleType::kFloat32;
  REGSERVE_ASSIGN_OR_RETURN(Image out, Image::Allocate(spec));
  float norm = 1.0f;
  if (image.type() == SampleType::kUInt8) norm = 1.0f / 255.0f;
  if (image.type() == SampleType::kUInt16) norm = 1.0f / 65535.0f;
  const int64_t n =
      std::max<int64_t>(1, std::min<int64_t>(threads, target_height));
  // Everything that can fail is allocated here, before any thread starts:
  // the axis tables and one row of scratch (source width + target width
  // floats) per thread. Extra memory: O(target + threads x row).
  AxisWeights wx, wy;
  std::vector<std::vector<float>> scratch(n);
  try {
    wx = MakeAxisWeights(image.width(), target_width);
    wy = MakeAxisWeights(image.height(), target_height);
    for (std::vector<float>& v : scratch)
      v.resize(image.width() + target_width);
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate grayscale copy tables: ", e.what()));
  }
  auto run = [&](int64_t t) {
    const int64_t b = target_height * t / n, e = target_height * (t + 1) / n;
    float* tmp = scratch[t].data();
    switch (image.type()) {
      case SampleType::kUInt8:
        return GrayscaleRowsByChannels<uint8_t>(image, wx, wy, norm, b, e, tmp,
                                                &out);
      case SampleType::kUInt16:
        return GrayscaleRowsByChannels<uint16_t>(image, wx, wy, norm, b, e, tmp,
                                                 &out);
      case SampleType::kFloat32:
        return GrayscaleRowsByChannels<float>(image, wx, wy, norm, b, e, tmp,
                                              &out);
    }
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
