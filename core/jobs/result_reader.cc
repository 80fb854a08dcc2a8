// Copyright regserve authors.
#include "core/jobs/result_reader.h"

#include <OpenImageIO/imageio.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/image/oiio_type.h"

namespace regserve {
namespace {

class OiioResultReader final : public ResultReader {
 public:
  OiioResultReader(std::unique_ptr<OIIO::ImageInput> in, ImageSpec spec,
                   std::string path)
      : in_(std::move(in)), spec_(spec), path_(std::move(path)) {}
  ~OiioResultReader() override {
    if (in_) in_->close();
  }

  const ImageSpec& spec() const override { return spec_; }

  absl::StatusOr<std::string> ReadRegion(const TileRect& r) override {
    if (r.w <= 0 || r.h <= 0 || r.x < 0 || r.y < 0 || r.x + r.w > spec_.width ||
        r.y + r.h > spec_.height) {
      return absl::OutOfRangeError(absl::StrCat(
          "region ", r.x, ",", r.y, " ", r.w, "x", r.h, " is outside the ",
          spec_.width, "x", spec_.height, " result"));
    }
    const size_t pixel = spec_.bytes_per_pixel();
    std::string out(static_cast<size_t>(r.w) * static_cast<size_t>(r.h) * pixel,
                    '\0');
    const OIIO::ImageSpec& fs = in_->spec();
    const OIIO::TypeDesc format = OiioTypeOf(spec_.type);
    bool ok = false;
    try {
      if (fs.tile_width > 0 && fs.tile_height > 0) {
        // The covering tile-aligned block, then crop. (OIIO 2.4's
        // read_scanlines on a tiled TIFF divides by zero: never use it here.)
        const int64_t tw = fs.tile_width, th = fs.tile_height;
        const int64_t x0 = r.x / tw * tw, y0 = r.y / th * th;
        const int64_t x1 =
            std::min(spec_.width, (r.x + r.w + tw - 1) / tw * tw);
        const int64_t y1 =
            std::min(spec_.height, (r.y + r.h + th - 1) / th * th);
        const bool exact =
            x0 == r.x && y0 == r.y && x1 == r.x + r.w && y1 == r.y + r.h;
        std::string block;
        if (!exact) {
          block.resize(static_cast<size_t>((x1 - x0) * (y1 - y0)) * pixel);
        }
        ok = in_->read_tiles(0, 0, static_cast<int>(x0), static_cast<int>(x1),
                             static_cast<int>(y0), static_cast<int>(y1), 0, 1,
                             0, spec_.channels, format,
                             exact ? out.data() : block.data());
        if (ok && !exact) {
          const size_t row = static_cast<size_t>(x1 - x0) * pixel;
          for (int64_t y = 0; y < r.h; ++y) {
            std::memcpy(&out[static_cast<size_t>(y * r.w) * pixel],
                        &block[static_cast<size_t>(y + r.y - y0) * row +
                               static_cast<size_t>(r.x - x0) * pixel],
                        static_cast<size_t>(r.w) * pixel);
          }
        }
      } else {
        // A scanline file: whole rows, then crop.
        const size_t row = static_cast<size_t>(spec_.width) * pixel;
        std::string rows(row * static_cast<size_t>(r.h), '\0');
        ok = in_->read_scanlines(0, 0, static_cast<int>(r.y),
                                 static_cast<int>(r.y + r.h), 0, 0,
                                 spec_.channels, format, rows.data());
        if (ok) {
          for (int64_t y = 0; y < r.h; ++y) {
            std::memcpy(&out[static_cast<size_t>(y * r.w) * pixel],
                        &rows[static_cast<size_t>(y) * row +
                              static_cast<size_t>(r.x) * pixel],
                        static_cast<size_t>(r.w) * pixel);
          }
        }
      }
    } catch (const std::exception& e) {
      return absl::DataLossError(
          absl::StrCat("reading result ", path_, ": ", e.what()));
    }
    if (!ok) {
      return absl::DataLossError(absl::StrCat("reading result ", path_,
                                              " region ", r.x, ",", r.y, ": ",
                                              in_->geterror()));
    }
    return out;
  }

 private:
  std::unique_ptr<OIIO::ImageInput> in_;
  ImageSpec spec_;
  std::string path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ResultReader>> ResultReader::Open(
    const std::string& path) {
  std::unique_ptr<OIIO::ImageInput> in;
  try {
    in = OIIO::ImageInput::open(path);
  } catch (const std::exception& e) {
    return absl::DataLossError(
        absl::StrCat("cannot open result ", path, ": ", e.what()));
  }
  if (!in) {
    std::string err = OIIO::geterror();
    if (err.find("No such file") != std::string::npos ||
        err.find("not exist") != std::string::npos) {
      return absl::NotFoundError(absl::StrCat("result ", path, " is missing"));
    }
    return absl::DataLossError(
        absl::StrCat("cannot open result ", path, ": ", err));
  }
  const OIIO::ImageSpec& s = in->spec();
  ImageSpec spec;
  spec.width = s.width;
  spec.height = s.height;
  spec.channels = s.nchannels;
  switch (s.format.basetype) {
    case OIIO::TypeDesc::UINT8:
      spec.type = SampleType::kUInt8;
      break;
    case OIIO::TypeDesc::UINT16:
      spec.type = SampleType::kUInt16;
      break;
    default:
      spec.type = SampleType::kFloat32;
  }
  absl::Status valid = ValidateSpec(spec);
  if (!valid.ok()) {
    return absl::DataLossError(
        absl::StrCat("result ", path, " has a bad header: ", valid.message()));
  }
  return std::unique_ptr<ResultReader>(
      new OiioResultReader(std::move(in), spec, path));
}

absl::StatusOr<Image> ReadImageRegion(const std::string& path,
                                      const TileRect& rect) {
  REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<ResultReader> reader,
                            ResultReader::Open(path));
  REGSERVE_ASSIGN_OR_RETURN(std::string raw, reader->ReadRegion(rect));
  ImageSpec spec = reader->spec();
  spec.width = rect.w;
  spec.height = rect.h;
  REGSERVE_ASSIGN_OR_RETURN(Image img, Image::Allocate(spec));
  std::memcpy(img.data(), raw.data(), raw.size());
  return img;
}

}  // namespace regserve
