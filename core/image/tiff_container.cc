// Copyright regserve authors.
#include "core/image/tiff_container.h"

#include <tiffio.h>
#include <unistd.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"

namespace regserve {
namespace {

// TIFFSetField is variadic; the macro keeps each call's check on one line.
#define REGSERVE_TIFF_SET(tif, ...)                                   \
  do {                                                                \
    if (TIFFSetField(tif, __VA_ARGS__) != 1)                          \
      return Failed(absl::StrCat("setting TIFF tag ", #__VA_ARGS__)); \
  } while (0)

uint16_t ResolutionUnitTag(ResolutionUnit u) {
  switch (u) {
    case ResolutionUnit::kInch:
      return RESUNIT_INCH;
    case ResolutionUnit::kCentimeter:
      return RESUNIT_CENTIMETER;
    case ResolutionUnit::kNone:
      break;
  }
  return RESUNIT_NONE;
}

}  // namespace

int TiffContainer::OnMessage(TIFF*, void* self, const char* module,
                             const char* fmt, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  TiffContainer* c = static_cast<TiffContainer*>(self);
  absl::MutexLock lock(&c->mu_);
  if (!c->errors_.empty()) c->errors_ += "; ";
  absl::StrAppend(&c->errors_, module != nullptr ? module : "libtiff", ": ",
                  buf);
  return 1;  // handled: libtiff prints nothing
}

absl::Status TiffContainer::Failed(const std::string& what) {
  absl::MutexLock lock(&mu_);
  std::string why = errors_.empty() ? "libtiff gave no message" : errors_;
  errors_.clear();
  return absl::InternalError(absl::StrCat(
      what, " of \"", path_, "\" failed: ", why, ". Check free disk space"));
}

absl::StatusOr<std::unique_ptr<TiffContainer>> TiffContainer::Create(
    const std::string& path, bool bigtiff) {
  std::unique_ptr<TiffContainer> c(new TiffContainer(path));
  TIFFOpenOptions* opts = TIFFOpenOptionsAlloc();
  if (opts == nullptr) {
    return absl::ResourceExhaustedError("cannot allocate TIFF open options");
  }
  TIFFOpenOptionsSetErrorHandlerExtR(opts, &TiffContainer::OnMessage, c.get());
  // Warnings (e.g. about unknown tags) are not failures: dropped.
  TIFFOpenOptionsSetWarningHandlerExtR(
      opts, [](TIFF*, void*, const char*, const char*, va_list) { return 1; },
      nullptr);
  c->tif_ = TIFFOpenExt(path.c_str(), bigtiff ? "w8l" : "wl", opts);
  TIFFOpenOptionsFree(opts);
  if (c->tif_ == nullptr) {
    absl::Status s = c->Failed("creating the TIFF");
    return absl::InvalidArgumentError(s.message());
  }
  return c;
}

TiffContainer::~TiffContainer() {
  if (tif_ == nullptr) return;
  // TIFFCleanup frees without writing, but leaves libtiff's descriptor open.
  const int fd = TIFFFileno(tif_);
  TIFFCleanup(tif_);
  if (fd >= 0) ::close(fd);
}

absl::Status TiffContainer::SetLevel(const TiffLevel& l) {
  const TileFormat& f = l.format;
  const TiffTileTags t = TiffTagsFor(f);
  TIFF* tif = tif_;
  REGSERVE_TIFF_SET(tif, TIFFTAG_SUBFILETYPE,
                    l.level == 0 ? 0u : uint32_t{FILETYPE_REDUCEDIMAGE});
  REGSERVE_TIFF_SET(tif, TIFFTAG_IMAGEWIDTH, static_cast<uint32_t>(l.width));
  REGSERVE_TIFF_SET(tif, TIFFTAG_IMAGELENGTH, static_cast<uint32_t>(l.height));
  REGSERVE_TIFF_SET(tif, TIFFTAG_TILEWIDTH, static_cast<uint32_t>(f.tile));
  REGSERVE_TIFF_SET(tif, TIFFTAG_TILELENGTH, static_cast<uint32_t>(f.tile));
  REGSERVE_TIFF_SET(tif, TIFFTAG_SAMPLESPERPIXEL,
                    static_cast<uint16_t>(f.channels));
  REGSERVE_TIFF_SET(tif, TIFFTAG_BITSPERSAMPLE,
                    static_cast<uint16_t>(8 * SampleSize(f.type)));
  REGSERVE_TIFF_SET(tif, TIFFTAG_SAMPLEFORMAT,
                    static_cast<uint16_t>(f.type == SampleType::kFloat32
                                              ? SAMPLEFORMAT_IEEEFP
                                              : SAMPLEFORMAT_UINT));
  REGSERVE_TIFF_SET(tif, TIFFTAG_PLANARCONFIG, uint16_t{PLANARCONFIG_CONTIG});
  REGSERVE_TIFF_SET(tif, TIFFTAG_COMPRESSION,
                    static_cast<uint16_t>(t.compression));
  REGSERVE_TIFF_SET(tif, TIFFTAG_PHOTOMETRIC,
                    static_cast<uint16_t>(t.photometric));
  if (t.predictor != PREDICTOR_NONE) {
    REGSERVE_TIFF_SET(tif, TIFFTAG_PREDICTOR,
                      static_cast<uint16_t>(t.predictor));
  }
  if (t.ycbcr) {
    REGSERVE_TIFF_SET(tif, TIFFTAG_YCBCRSUBSAMPLING, uint16_t{2}, uint16_t{2});
    float refbw[6] = {0, 255, 128, 255, 128, 255};
    REGSERVE_TIFF_SET(tif, TIFFTAG_REFERENCEBLACKWHITE, refbw);
  }
  if (f.channels == 2 || f.channels == 4) {
    const uint16_t extra = EXTRASAMPLE_UNASSALPHA;
    REGSERVE_TIFF_SET(tif, TIFFTAG_EXTRASAMPLES, uint16_t{1}, &extra);
  }
  REGSERVE_TIFF_SET(tif, TIFFTAG_SOFTWARE, "regserve");
  if (l.sub_ifds > 0) {
    std::vector<uint64_t> offsets(l.sub_ifds, 0);
    REGSERVE_TIFF_SET(tif, TIFFTAG_SUBIFD, static_cast<uint16_t>(l.sub_ifds),
                      offsets.data());
  }
  const ImageMetadata* m = l.metadata;
  if (m == nullptr) return absl::OkStatus();
  if (m->x_resolution > 0 && m->y_resolution > 0) {
    const double scale = std::ldexp(1.0, -l.level);
    REGSERVE_TIFF_SET(tif, TIFFTAG_XRESOLUTION,
                      static_cast<float>(m->x_resolution * scale));
    REGSERVE_TIFF_SET(tif, TIFFTAG_YRESOLUTION,
                      static_cast<float>(m->y_resolution * scale));
    REGSERVE_TIFF_SET(tif, TIFFTAG_RESOLUTIONUNIT,
                      ResolutionUnitTag(m->resolution_unit));
  }
  if (m->orientation >= 1 && m->orientation <= 8) {
    REGSERVE_TIFF_SET(tif, TIFFTAG_ORIENTATION,
                      static_cast<uint16_t>(m->orientation));
  }
  if (!m->icc_profile.empty()) {
    REGSERVE_TIFF_SET(tif, TIFFTAG_ICCPROFILE,
                      static_cast<uint32_t>(m->icc_profile.size()),
                      m->icc_profile.data());
  }
  return absl::OkStatus();
}

absl::Status TiffContainer::WriteRawTile(uint32_t index, const uint8_t* data,
                                         size_t size) {
  if (TIFFWriteRawTile(tif_, index, const_cast<uint8_t*>(data),
                       static_cast<tmsize_t>(size)) !=
      static_cast<tmsize_t>(size)) {
    return Failed(absl::StrCat("writing tile ", index));
  }
  return absl::OkStatus();
}

absl::Status TiffContainer::WriteDirectory() {
  if (TIFFWriteDirectory(tif_) != 1) return Failed("writing a TIFF directory");
  return absl::OkStatus();
}

absl::Status TiffContainer::Close() {
  TIFF* tif = tif_;
  tif_ = nullptr;
  // TIFFClose flushes (nothing is pending after WriteDirectory) and closes
  // the descriptor; a failed close shows up in the handler's messages.
  TIFFClose(tif);
  absl::MutexLock lock(&mu_);
  if (!errors_.empty()) {
    return absl::InternalError(
        absl::StrCat("closing \"", path_, "\" failed: ", errors_));
  }
  return absl::OkStatus();
}

#undef REGSERVE_TIFF_SET

}  // namespace regserve
