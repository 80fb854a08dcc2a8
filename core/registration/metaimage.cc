// Copyright regserve authors.
//
// MetaImage I/O on ITK 5.2: itk::MetaImageIO writes both files and parses
// headers; the data is read through the MetaIO MetaImage it is built on.
// What stays here is the policy for untrusted headers (see ReadMetaImage in
// the header): a bounded pre-scan that keeps inputs ITK 5.2 mishandles away
// from it, and checks of what ITK parsed before anything the size of the
// image is allocated.
#include "core/registration/metaimage.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "core/common/status_macros.h"
// Debian's ITK 5.2 headers were generated for GCC alone: their compiler
// detection stops clang (the fuzz and thread-safety builds) with
// "Unsupported compiler". Let it see the GCC that clang also claims to be.
#if defined(__clang__)
#pragma push_macro("__clang__")
#pragma push_macro("__GNUC__")
#pragma push_macro("__GNUC_MINOR__")
#undef __clang__
#undef __GNUC__
#undef __GNUC_MINOR__
#define __GNUC__ 12
#define __GNUC_MINOR__ 2
#include "itk_compiler_detection.h"
#pragma pop_macro("__GNUC_MINOR__")
#pragma pop_macro("__GNUC__")
#pragma pop_macro("__clang__")
#endif
#include "itkMetaImageIO.h"
#include "metaImage.h"
#include "metaUtils.h"

namespace regserve {
namespace {

// The header must end (with its ElementDataFile line) within this many bytes
// and lines; elastix and transformix write about 20 lines.
constexpr size_t kMaxHeaderBytes = 64 << 10;
constexpr int kMaxHeaderLines = 200;
// The largest DimSize accepted on each axis.
constexpr int kMaxDim = 1 << 20;

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

absl::Status HeaderError(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("MetaImage '", path, "': ", what));
}

// An ITK error's text on one line, without the "ITK ERROR: Class(0x...): "
// prefix of its descriptions.
std::string OneLine(absl::string_view text) {
  if (absl::ConsumePrefix(&text, "ITK ERROR: ")) {
    const size_t end = text.find("): ");
    if (end != absl::string_view::npos) text.remove_prefix(end + 3);
  }
  return absl::StrReplaceAll(absl::StripTrailingAsciiWhitespace(text),
                             {{"\n", "; "}});
}

// A header value for a message: quoted, and cut when long.
std::string Quoted(absl::string_view value) {
  constexpr size_t kMax = 64;
  if (value.size() <= kMax) return absl::StrCat("'", value, "'");
  return absl::StrCat("'", value.substr(0, kMax), "...' (", value.size(),
                      " bytes)");
}

// What the pre-scan learns from the raw header bytes.
struct HeaderScan {
  std::string data_file;  // the ElementDataFile value
  // Where LOCAL data starts: just after the ElementDataFile line; the file's
  // size when that line has no newline (then there is no data).
  uint64_t data_offset = 0;
};

// The value of a "Key = value" line as MetaIO reads it: it skips every '=',
// ':' and blank after the key.
absl::string_view FieldValue(absl::string_view rest) {
  while (!rest.empty() &&
         (rest[0] == '=' || rest[0] == ':' ||
          absl::ascii_isspace(static_cast<unsigned char>(rest[0])))) {
    rest.remove_prefix(1);
  }
  return absl::StripTrailingAsciiWhitespace(rest);
}

// Scans the header up to its ElementDataFile line, before ITK sees it.
// ITK 5.2's MetaIO sizes its DimSize and TransformMatrix reads by NDims
// without bounds: NDims = 11 with a full TransformMatrix crashes it, and a
// negative NDims makes it loop for ever. So NDims is checked here, on every
// line MetaIO could read as NDims. Lines must hold a '=' or ':' (MetaIO
// would otherwise look for the value on the next lines) and no NUL (which
// would end MetaIO's key early), so that MetaIO sees the same lines as this
// scan does.
absl::StatusOr<HeaderScan> ScanHeader(const std::string& path,
                                      absl::string_view bytes,
                                      uint64_t file_size) {
  size_t pos = 0;
  for (int line_no = 1; pos < bytes.size(); ++line_no) {
    if (line_no > kMaxHeaderLines) {
      return HeaderError(path, absl::StrCat("header is too long (more than ",
                                            kMaxHeaderLines, " lines)"));
    }
    const size_t nl = bytes.find('\n', pos);
    const bool has_newline = nl != absl::string_view::npos;
    if (!has_newline && bytes.size() < file_size) break;  // cut at the limit
    const absl::string_view line =
        bytes.substr(pos, has_newline ? nl - pos : absl::string_view::npos);
    pos = has_newline ? nl + 1 : bytes.size();
    if (line.find('\0') != absl::string_view::npos) {
      return HeaderError(path,
                         absl::StrCat("header line ", line_no, " has a NUL"));
    }
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    const size_t sep = line.find_first_of("=:");
    if (sep == absl::string_view::npos) {
      return HeaderError(
          path, absl::StrCat("header line ", line_no, " is not 'Key = value'"));
    }
    const absl::string_view key =
        absl::StripAsciiWhitespace(line.substr(0, sep));
    const absl::string_view value = FieldValue(line.substr(sep));
    if (absl::EqualsIgnoreCase(key, "NDims") && value != "2") {
      return HeaderError(path,
                         absl::StrCat("NDims must be 2, got ", Quoted(value)));
    }
    if (key == "ElementDataFile") {
      HeaderScan scan;
      scan.data_file = std::string(value);
      scan.data_offset = has_newline ? pos : file_size;
      return scan;
    }
  }
  if (bytes.size() < file_size) {
    return HeaderError(path, absl::StrCat("header is too long (no "
                                          "ElementDataFile in the first ",
                                          kMaxHeaderBytes, " bytes)"));
  }
  return HeaderError(path, "no ElementDataFile");
}

// ITK refused the header. MetaIO names the offending field on stderr only,
// so the message lists the fields it requires.
absl::Status ParseError(const std::string& path, absl::string_view itk_text) {
  return HeaderError(
      path, absl::StrCat("ITK cannot parse the header (a required field, "
                         "NDims, DimSize, ElementType or ElementDataFile, is "
                         "missing or malformed): ",
                         OneLine(itk_text)));
}

// Opens `path` without blocking (a FIFO must not hang the caller), checks
// that it is a regular file, and reads its first kMaxHeaderBytes.
absl::Status ReadHeaderBytes(const std::string& path, std::string* bytes,
                             uint64_t* file_size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open MetaImage header '",
                                            path, "': ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return HeaderError(path, "the header is not a regular file");
  }
  *file_size = static_cast<uint64_t>(st.st_size);
  bytes->resize(kMaxHeaderBytes);
  size_t got = 0;
  while (got < bytes->size()) {
    const ssize_t n = ::read(fd, &(*bytes)[got], bytes->size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot read MetaImage header '",
                                              path, "': ", std::strerror(err)));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  bytes->resize(got);
  return absl::OkStatus();
}

// Bytes per sample of the element types we read; 0 for the others.
size_t ElementSize(MET_ValueEnumType type) {
  switch (type) {
    case MET_UCHAR:
    case MET_CHAR:
      return 1;
    case MET_USHORT:
    case MET_SHORT:
      return 2;
    case MET_UINT:
    case MET_INT:
    case MET_FLOAT:
      return 4;
    case MET_DOUBLE:
      return 8;
    default:
      return 0;
  }
}

std::string TypeName(MET_ValueEnumType type) {
  char name[80] = "";
  if (!MET_TypeToString(type, name)) return absl::StrCat("type ", type);
  return name;
}

// A failed write. MetaIO fails on a system call whose errno is still set;
// a full disk is the caller's resource problem, not an internal error.
absl::Status WriteError(const std::string& path, int err,
                        absl::string_view itk_text) {
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot write MetaImage '", path, "': ", std::strerror(err),
        "; free space in the data directory (--data_dir) and submit again"));
  }
  return absl::InternalError(
      absl::StrCat("cannot write MetaImage '", path,
                   "': ", err != 0 ? std::strerror(err) : "I/O error", " (",
                   OneLine(itk_text), ")"));
}

template <typename T>
void Convert(const void* data, size_t count, float* out) {
  const char* bytes = static_cast<const char*>(data);
  for (size_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, bytes + i * sizeof(T), sizeof(T));
    out[i] = static_cast<float>(v);
  }
}

void ConvertToFloat(MET_ValueEnumType type, const void* data, size_t count,
                    float* out) {
  switch (type) {
    case MET_UCHAR:
      return Convert<uint8_t>(data, count, out);
    case MET_CHAR:
      return Convert<int8_t>(data, count, out);
    case MET_USHORT:
      return Convert<uint16_t>(data, count, out);
    case MET_SHORT:
      return Convert<int16_t>(data, count, out);
    case MET_UINT:
      return Convert<uint32_t>(data, count, out);
    case MET_INT:
      return Convert<int32_t>(data, count, out);
    case MET_FLOAT:
      return Convert<float>(data, count, out);
    case MET_DOUBLE:
      return Convert<double>(data, count, out);
    default:
      return;  // refused by ReadMetaImage before
  }
}

}  // namespace

absl::Status WriteMetaImage(const std::string& mhd_path, const Image& image,
                            std::array<double, 2> spacing,
                            std::array<double, 2> origin) {
  if (image.empty() || image.channels() != 1 ||
      image.type() != SampleType::kFloat32) {
    return absl::InvalidArgumentError(
        absl::StrCat("WriteMetaImage needs a 1-channel float32 image, got ",
                     image.spec().DebugString()));
  }
  if (!absl::EndsWith(mhd_path, ".mhd")) {
    return absl::InvalidArgumentError(
        absl::StrCat("MetaImage path must end in .mhd: ", mhd_path));
  }
  itk::MetaImageIO::Pointer io = itk::MetaImageIO::New();
  io->SetFileName(mhd_path);  // .mhd: the data goes to a .raw file beside it
  io->SetNumberOfDimensions(2);
  io->SetDimensions(0, static_cast<itk::SizeValueType>(image.width()));
  io->SetDimensions(1, static_cast<itk::SizeValueType>(image.height()));
  itk::ImageIORegion region(2);
  for (unsigned i = 0; i < 2; ++i) {
    io->SetSpacing(i, spacing[i]);
    io->SetOrigin(i, origin[i]);
    std::vector<double> axis(2, 0.0);
    axis[i] = 1.0;
    io->SetDirection(i, axis);
    region.SetIndex(i, 0);
    region.SetSize(i, io->GetDimensions(i));
  }
  io->SetIORegion(region);
  io->SetPixelType(itk::IOPixelEnum::SCALAR);
  io->SetComponentType(itk::IOComponentEnum::FLOAT);
  io->SetNumberOfComponents(1);
  io->SetUseCompression(false);
  // Round-trip exact: elastix must see the spacing and origin we meant.
  io->SetDoublePrecision(std::numeric_limits<double>::max_digits10);
  errno = 0;
  try {
    io->WriteImageInformation();
    io->Write(image.data());
  } catch (const itk::ExceptionObject& e) {
    return WriteError(mhd_path, errno, e.GetDescription());
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of memory writing MetaImage '", mhd_path, "'"));
  } catch (const std::exception& e) {
    return WriteError(mhd_path, errno, e.what());
  }
  // ITK 5.2's MetaIO notices a failed write (a full disk) only on stderr and
  // still succeeds: check that both files are complete.
  const int write_errno = errno;
  const std::string raw_path = mhd_path.substr(0, mhd_path.size() - 4) + ".raw";
  struct stat st;
  const uint64_t raw_size = ::stat(raw_path.c_str(), &st) == 0
                                ? static_cast<uint64_t>(st.st_size)
                                : 0;
  std::string header;
  uint64_t header_size = 0;
  const bool header_ok =
      ReadHeaderBytes(mhd_path, &header, &header_size).ok() &&
      ScanHeader(mhd_path, header, header_size).ok();
  if (raw_size != image.size_bytes() || !header_ok) {
    return WriteError(
        mhd_path, write_errno,
        absl::StrCat("wrote ", raw_size, " of ", image.size_bytes(),
                     " bytes of '", raw_path, "'",
                     header_ok ? "" : ", and an incomplete header"));
  }
  return absl::OkStatus();
}

namespace {

// The header through ITK's MetaIO, without the element data.
absl::StatusOr<itk::MetaImageIO::Pointer> ReadInformation(
    const std::string& mhd_path) {
  itk::MetaImageIO::Pointer io = itk::MetaImageIO::New();
  io->SetFileName(mhd_path);
  try {
    io->ReadImageInformation();  // the header only: no element data
  } catch (const itk::ExceptionObject& e) {
    return ParseError(mhd_path, e.GetDescription());
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "out of memory reading MetaImage header '", mhd_path, "'"));
  } catch (const std::exception& e) {
    return ParseError(mhd_path, e.what());
  }
  return io;
}

// Size, channels, spacing and origin into `img`; a 2-D image on an
// identity matrix only.
absl::Status TakeGeometry(const std::string& mhd_path, ::MetaImage& meta,
                          MetaImage* img) {
  if (meta.NDims() != 2) {
    return HeaderError(mhd_path,
                       absl::StrCat("NDims must be 2, got ", meta.NDims()));
  }
  const int w = meta.DimSize(0);
  const int h = meta.DimSize(1);
  if (w < 1 || w > kMaxDim || h < 1 || h > kMaxDim) {
    return HeaderError(mhd_path, absl::StrCat("bad DimSize '", w, " ", h, "'"));
  }
  img->width = w;
  img->height = h;
  img->channels = meta.ElementNumberOfChannels();
  if (img->channels < 1 || img->channels > 4) {
    return HeaderError(mhd_path, absl::StrCat("bad ElementNumberOfChannels '",
                                              img->channels, "'"));
  }
  for (int i = 0; i < 2; ++i) {
    img->spacing[i] = meta.ElementSpacing(i);
    img->origin[i] = meta.Offset(i);  // Offset, Origin or Position
  }
  const double* m = meta.TransformMatrix();  // row-major, NDims x NDims
  if (m[0] != 1 || m[1] != 0 || m[2] != 0 || m[3] != 1) {
    return HeaderError(
        mhd_path,
        absl::StrCat("only an identity TransformMatrix is supported, got '",
                     m[0], " ", m[1], " ", m[2], " ", m[3], "'"));
  }
  return absl::OkStatus();
}

// Raw little-endian binary data of a supported type, in the header
// ("LOCAL") or in a file next to it; the name as MetaIO read it.
absl::StatusOr<std::string> CheckDataLayout(const std::string& mhd_path,
                                            ::MetaImage& meta,
                                            const HeaderScan& scan) {
  if (meta.BinaryDataByteOrderMSB()) {
    return HeaderError(mhd_path, "big-endian data is not supported");
  }
  if (meta.CompressedData()) {
    return HeaderError(mhd_path, "compressed data is not supported");
  }
  if (!meta.BinaryData()) {
    return HeaderError(mhd_path,
                       "text data (BinaryData = False) is not supported");
  }
  if (meta.HeaderSize() != 0) {
    return HeaderError(mhd_path, "HeaderSize is not supported");
  }
  if (ElementSize(meta.ElementType()) == 0) {
    return HeaderError(mhd_path,
                       absl::StrCat("unsupported ElementType '",
                                    TypeName(meta.ElementType()), "'"));
  }
  const std::string data_file = meta.ElementDataFileName();
  if (data_file != scan.data_file) {
    // MetaIO cuts long values; the pre-scan must agree with what it read.
    return HeaderError(mhd_path,
                       absl::StrCat("ElementDataFile ", Quoted(scan.data_file),
                                    " is too long or malformed"));
  }
  // MetaIO reads "LIST" and names with '%' as lists of files, and opens
  // names with '/', '\' or a drive letter outside the header's folder.
  if (data_file != "LOCAL" &&
      (data_file.empty() || data_file == "LIST" ||
       data_file.find_first_of("/\\:%") != std::string::npos)) {
    return HeaderError(mhd_path,
                       absl::StrCat("ElementDataFile ", Quoted(data_file),
                                    " must be a file name next to the "
                                    "header"));
  }
  return data_file;
}

// The header is untrusted: what it implies is checked against the bytes
// that exist before anything is allocated (a corrupt DimSize must not
// become a multi-terabyte allocation), the products checked for overflow.
// Returns the data's size in bytes.
absl::StatusOr<size_t> CheckDataBytes(const std::string& mhd_path,
                                      const MetaImage& img,
                                      MET_ValueEnumType type,
                                      const std::string& data_file,
                                      uint64_t header_size,
                                      const HeaderScan& scan) {
  size_t count = 0;
  size_t needed = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(img.width),
                             static_cast<size_t>(img.height), &count) ||
      __builtin_mul_overflow(count, static_cast<size_t>(img.channels),
                             &count) ||
      __builtin_mul_overflow(count, ElementSize(type), &needed)) {
    return HeaderError(mhd_path,
                       absl::StrCat("DimSize '", img.width, " ", img.height,
                                    "' with ElementType ", TypeName(type),
                                    " overflows a byte count"));
  }
  if (data_file == "LOCAL") {
    const uint64_t available =
        header_size > scan.data_offset ? header_size - scan.data_offset : 0;
    if (available < needed) {
      return HeaderError(
          mhd_path,
          absl::StrCat("local data has ", available,
                       " bytes after the header, DimSize needs ", needed));
    }
    return needed;
  }
  const std::string data_path = Dirname(mhd_path) + "/" + data_file;
  struct stat st;
  if (::stat(data_path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("cannot open MetaImage data '",
                                            data_path,
                                            "': ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return HeaderError(mhd_path, absl::StrCat("data file '", data_path,
                                              "' is not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) < needed) {
    return HeaderError(
        mhd_path, absl::StrCat("data file '", data_path, "' has ", st.st_size,
                               " bytes, DimSize needs ", needed));
  }
  return needed;
}

// The element data into img->data (as float). MetaIO parses the header
// again to read the data. Letting it allocate the buffer from that second
// parse (rather than handing it one sized by the first, as MetaImageIO::Read
// does) means a header changed in between cannot overflow a buffer; the
// second parse is checked against the first.
absl::Status ReadElements(const std::string& mhd_path,
                          const std::string& data_file, MET_ValueEnumType type,
                          size_t needed, MetaImage* img) {
  const size_t count = static_cast<size_t>(img->width) * img->height *
                       static_cast<size_t>(img->channels);
  const auto out_of_memory = [&] {
    return absl::ResourceExhaustedError(absl::StrCat(
        "MetaImage '", mhd_path, "': out of memory reading a ", img->width, "x",
        img->height, " image (", needed, " bytes of data)"));
  };
  try {
    img->data.resize(count);
  } catch (const std::bad_alloc&) {
    return out_of_memory();
  }
  ::MetaImage data_reader;
  try {
    if (!data_reader.Read(mhd_path.c_str(), /*_readElements=*/true)) {
      return HeaderError(mhd_path,
                         absl::StrCat("ITK cannot read the data (", needed,
                                      " bytes) of '", data_file, "'"));
    }
  } catch (const itk::ExceptionObject& e) {
    return HeaderError(mhd_path, absl::StrCat("ITK cannot read the data: ",
                                              OneLine(e.GetDescription())));
  } catch (const std::bad_alloc&) {
    return out_of_memory();
  } catch (const std::exception& e) {
    return HeaderError(mhd_path, absl::StrCat("ITK cannot read the data: ",
                                              OneLine(e.what())));
  }
  if (data_reader.NDims() != 2 || data_reader.DimSize(0) != img->width ||
      data_reader.DimSize(1) != img->height ||
      data_reader.ElementNumberOfChannels() != img->channels ||
      data_reader.ElementType() != type ||
      data_reader.ElementData() == nullptr) {
    return HeaderError(mhd_path, "the header changed while it was read");
  }
  ConvertToFloat(type, data_reader.ElementData(), count, img->data.data());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MetaImage> ReadMetaImage(const std::string& mhd_path) {
  std::string header;
  uint64_t header_size = 0;
  REGSERVE_RETURN_IF_ERROR(ReadHeaderBytes(mhd_path, &header, &header_size));
  REGSERVE_ASSIGN_OR_RETURN(HeaderScan scan,
                            ScanHeader(mhd_path, header, header_size));
  REGSERVE_ASSIGN_OR_RETURN(itk::MetaImageIO::Pointer io,
                            ReadInformation(mhd_path));
  ::MetaImage& meta = *io->GetMetaImagePointer();
  MetaImage img;
  REGSERVE_RETURN_IF_ERROR(TakeGeometry(mhd_path, meta, &img));
  REGSERVE_ASSIGN_OR_RETURN(const std::string data_file,
                            CheckDataLayout(mhd_path, meta, scan));
  const MET_ValueEnumType type = meta.ElementType();
  REGSERVE_ASSIGN_OR_RETURN(
      const size_t needed,
      CheckDataBytes(mhd_path, img, type, data_file, header_size, scan));
  REGSERVE_RETURN_IF_ERROR(
      ReadElements(mhd_path, data_file, type, needed, &img));
  return img;
}

absl::StatusOr<DisplacementField> ReadDisplacementField(
    const std::string& mhd_path) {
  auto img = ReadMetaImage(mhd_path);
  if (!img.ok()) return img.status();
  if (img->channels != 2) {
    return HeaderError(mhd_path,
                       absl::StrCat("a deformation field needs 2 channels, "
                                    "got ",
                                    img->channels));
  }
  DisplacementField field;
  field.width = img->width;
  field.height = img->height;
  field.origin_x = img->origin[0];
  field.origin_y = img->origin[1];
  field.spacing_x = img->spacing[0];
  field.spacing_y = img->spacing[1];
  size_t n = static_cast<size_t>(field.width) * field.height;
  field.dx.resize(n);
  field.dy.resize(n);
  for (size_t i = 0; i < n; ++i) {
    field.dx[i] = img->data[2 * i];
    field.dy[i] = img->data[2 * i + 1];
  }
  return field;
}

}  // namespace regserve
