// Copyright regserve authors.
#include "core/registration/metaimage.h"

#include <errno.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <new>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace regserve {
namespace {

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

std::string Basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

absl::Status WriteFile(const std::string& path, const void* data, size_t n) {
  FILE* f = std::fopen(path.c_str(), "wbe");
  if (f == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot create '", path, "': ", std::strerror(errno)));
  }
  size_t written = n == 0 ? 0 : std::fwrite(data, 1, n, f);
  const int write_errno = errno;
  int close_rc = std::fclose(f);
  if (written != n || close_rc != 0) {
    const int err = written != n ? write_errno : errno;
    if (err == ENOSPC || err == EDQUOT) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot write '", path, "': ", std::strerror(err),
          "; free space in the data directory (--data_dir) and submit again"));
    }
    return absl::InternalError(
        absl::StrCat("cannot write '", path, "': ", std::strerror(err)));
  }
  return absl::OkStatus();
}

bool ParseDoubles(absl::string_view s, size_t n, double* out) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(s, ' ', absl::SkipWhitespace());
  if (parts.size() < n) return false;
  for (size_t i = 0; i < n; ++i) {
    if (!absl::SimpleAtod(parts[i], &out[i])) return false;
  }
  return true;
}

absl::Status HeaderError(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("MetaImage '", path, "': ", what));
}

template <typename T>
void Convert(const char* bytes, size_t count, float* out) {
  for (size_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, bytes + i * sizeof(T), sizeof(T));
    out[i] = static_cast<float>(v);
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
  std::string raw_path = mhd_path.substr(0, mhd_path.size() - 4) + ".raw";
  std::string header = absl::StrFormat(
      "ObjectType = Image\n"
      "NDims = 2\n"
      "BinaryData = True\n"
      "BinaryDataByteOrderMSB = False\n"
      "CompressedData = False\n"
      "TransformMatrix = 1 0 0 1\n"
      "Offset = %.17g %.17g\n"
      "ElementSpacing = %.17g %.17g\n"
      "DimSize = %d %d\n"
      "ElementNumberOfChannels = 1\n"
      "ElementType = MET_FLOAT\n"
      "ElementDataFile = %s\n",
      origin[0], origin[1], spacing[0], spacing[1], image.width(),
      image.height(), Basename(raw_path));
  static_assert(std::numeric_limits<float>::is_iec559, "IEEE floats");
  // The raw data is little-endian float32 (our only target is x86-64/arm64
  // little-endian Linux).
  absl::Status s = WriteFile(raw_path, image.data(), image.size_bytes());
  if (!s.ok()) return s;
  return WriteFile(mhd_path, header.data(), header.size());
}

absl::StatusOr<MetaImage> ReadMetaImage(const std::string& mhd_path) {
  std::ifstream in(mhd_path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open MetaImage header '", mhd_path, "'"));
  }
  std::map<std::string, std::string> fields;
  std::string line;
  std::streamoff local_data_offset = -1;
  bool local_data = false;
  int lines = 0;
  while (std::getline(in, line)) {
    if (++lines > 200) return HeaderError(mhd_path, "header is too long");
    size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string key(absl::StripAsciiWhitespace(line.substr(0, eq)));
    std::string value(absl::StripAsciiWhitespace(line.substr(eq + 1)));
    fields[key] = value;
    if (key == "ElementDataFile") {
      if (value == "LOCAL") {
        local_data = true;
        // tellg() is -1 when the header ends without a newline: no data.
        local_data_offset = in.tellg();
      }
      break;  // ElementDataFile is always the last header field
    }
  }
  auto get = [&](const char* key) -> std::string {
    auto it = fields.find(key);
    return it == fields.end() ? std::string() : it->second;
  };
  if (get("NDims") != "2") {
    return HeaderError(
        mhd_path, absl::StrCat("NDims must be 2, got '", get("NDims"), "'"));
  }
  MetaImage img;
  double dims[2];
  // Written as !(in range) so that NaN is refused too.
  if (!ParseDoubles(get("DimSize"), 2, dims) ||
      !(dims[0] >= 1 && dims[0] <= (1 << 20)) ||
      !(dims[1] >= 1 && dims[1] <= (1 << 20))) {
    return HeaderError(mhd_path,
                       absl::StrCat("bad DimSize '", get("DimSize"), "'"));
  }
  img.width = static_cast<int64_t>(dims[0]);
  img.height = static_cast<int64_t>(dims[1]);
  std::string channels = get("ElementNumberOfChannels");
  if (!channels.empty() && (!absl::SimpleAtoi(channels, &img.channels) ||
                            img.channels < 1 || img.channels > 4)) {
    return HeaderError(
        mhd_path, absl::StrCat("bad ElementNumberOfChannels '", channels, "'"));
  }
  if (!get("ElementSpacing").empty() &&
      !ParseDoubles(get("ElementSpacing"), 2, img.spacing.data())) {
    return HeaderError(mhd_path, "bad ElementSpacing");
  }
  for (const char* key : {"Offset", "Origin", "Position"}) {
    if (!get(key).empty()) {
      if (!ParseDoubles(get(key), 2, img.origin.data())) {
        return HeaderError(mhd_path, absl::StrCat("bad ", key));
      }
      break;
    }
  }
  std::string matrix = get("TransformMatrix");
  if (!matrix.empty()) {
    double m[4];
    if (!ParseDoubles(matrix, 4, m) || m[0] != 1 || m[1] != 0 || m[2] != 0 ||
        m[3] != 1) {
      return HeaderError(mhd_path, absl::StrCat("only an identity "
                                                "TransformMatrix is supported, "
                                                "got '",
                                                matrix, "'"));
    }
  }
  for (const char* key : {"BinaryDataByteOrderMSB", "ElementByteOrderMSB"}) {
    std::string v = absl::AsciiStrToLower(get(key));
    if (v == "true") {
      return HeaderError(mhd_path, "big-endian data is not supported");
    }
  }
  if (absl::AsciiStrToLower(get("CompressedData")) == "true") {
    return HeaderError(mhd_path, "compressed data is not supported");
  }
  std::string type = get("ElementType");
  size_t elem = 0;
  if (type == "MET_UCHAR" || type == "MET_CHAR") {
    elem = 1;
  } else if (type == "MET_USHORT" || type == "MET_SHORT") {
    elem = 2;
  } else if (type == "MET_UINT" || type == "MET_INT" || type == "MET_FLOAT") {
    elem = 4;
  } else if (type == "MET_DOUBLE") {
    elem = 8;
  } else {
    return HeaderError(mhd_path,
                       absl::StrCat("unsupported ElementType '", type, "'"));
  }
  std::string data_file = get("ElementDataFile");
  if (data_file.empty()) return HeaderError(mhd_path, "no ElementDataFile");

  // The header is untrusted: check what it implies against the bytes that
  // exist before allocating anything (a corrupt DimSize must not become a
  // multi-terabyte allocation), with the products checked for overflow.
  size_t count = 0;
  size_t needed = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(img.width),
                             static_cast<size_t>(img.height), &count) ||
      __builtin_mul_overflow(count, static_cast<size_t>(img.channels),
                             &count) ||
      __builtin_mul_overflow(count, elem, &needed)) {
    return HeaderError(mhd_path, absl::StrCat("DimSize '", get("DimSize"),
                                              "' with ElementType ", type,
                                              " overflows a byte count"));
  }
  std::string data_path;
  if (local_data) {
    struct stat st;
    if (::stat(mhd_path.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat(
          "cannot stat MetaImage '", mhd_path, "': ", std::strerror(errno)));
    }
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    const uint64_t offset = local_data_offset >= 0
                                ? static_cast<uint64_t>(local_data_offset)
                                : file_size;
    const uint64_t available = file_size > offset ? file_size - offset : 0;
    if (available < needed) {
      return HeaderError(
          mhd_path,
          absl::StrCat("local data has ", available,
                       " bytes after the header, DimSize needs ", needed));
    }
  } else {
    if (data_file.find('/') != std::string::npos || data_file == "LIST") {
      return HeaderError(mhd_path, absl::StrCat("ElementDataFile '", data_file,
                                                "' must be a file name next "
                                                "to the header"));
    }
    data_path = Dirname(mhd_path) + "/" + data_file;
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
  }
  std::string bytes;
  try {
    bytes.assign(needed, '\0');
    img.data.resize(count);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "MetaImage '", mhd_path, "': out of memory reading a ", img.width, "x",
        img.height, " image (", needed, " bytes of data)"));
  }
  if (local_data) {
    in.clear();
    in.seekg(local_data_offset);
    in.read(&bytes[0], bytes.size());
    if (static_cast<size_t>(in.gcount()) != bytes.size()) {
      return HeaderError(mhd_path, "local data is shorter than DimSize says");
    }
  } else {
    std::ifstream raw(data_path, std::ios::binary);
    if (!raw) {
      return absl::NotFoundError(
          absl::StrCat("cannot open MetaImage data '", data_path, "'"));
    }
    raw.read(&bytes[0], bytes.size());
    if (static_cast<size_t>(raw.gcount()) != bytes.size()) {
      return HeaderError(
          mhd_path,
          absl::StrCat("data file '", data_path, "' has ", raw.gcount(),
                       " bytes, DimSize needs ", bytes.size()));
    }
  }
  const char* b = bytes.data();
  float* out = img.data.data();
  if (type == "MET_UCHAR") Convert<uint8_t>(b, count, out);
  if (type == "MET_CHAR") Convert<int8_t>(b, count, out);
  if (type == "MET_USHORT") Convert<uint16_t>(b, count, out);
  if (type == "MET_SHORT") Convert<int16_t>(b, count, out);
  if (type == "MET_UINT") Convert<uint32_t>(b, count, out);
  if (type == "MET_INT") Convert<int32_t>(b, count, out);
  if (type == "MET_FLOAT") Convert<float>(b, count, out);
  if (type == "MET_DOUBLE") Convert<double>(b, count, out);
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
