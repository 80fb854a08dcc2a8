// Copyright regserve authors.
//
// Codec choice (docs/benchmarks.md, "Result writer"): libdeflate at level
// 1, 3.2-3.6x faster than its level 6 for 10-18% more bytes on photos (the
// default compression: the 283.6 MP result's writing then keeps a GPU job
// within its time); zstd level 3 (zstd's own default; libtiff's is 9) is
// faster again and smaller than deflate 1; the predictor takes 20-30% off
// both on photos.
#include "core/image/tile_codec.h"

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>
#include <libdeflate.h>
#include <zstd.h>

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"

namespace regserve {
namespace {

constexpr int kDeflateLevel = 1;
constexpr int kZstdLevel = 3;

// TIFF Predictor=2: each sample minus the same channel's sample to its left,
// per row of the tile, modulo 2^bits.
template <typename T>
void HorizontalDifference(int tile, int channels, uint8_t* pixels) {
  T* p = reinterpret_cast<T*>(pixels);
  const size_t row = static_cast<size_t>(tile) * channels;
  for (int y = 0; y < tile; ++y) {
    T* r = p + static_cast<size_t>(y) * row;
    for (size_t i = row - 1; i >= static_cast<size_t>(channels); --i) {
      r[i] = static_cast<T>(r[i] - r[i - channels]);
    }
  }
}

void ApplyPredictor(const TileFormat& f, std::vector<uint8_t>* pixels) {
  if (TiffTagsFor(f).predictor != 2) return;
  if (f.type == SampleType::kUInt8) {
    HorizontalDifference<uint8_t>(f.tile, f.channels, pixels->data());
  } else {
    HorizontalDifference<uint16_t>(f.tile, f.channels, pixels->data());
  }
}

class RawEncoder final : public TileEncoder {
 public:
  absl::Status Encode(std::vector<uint8_t>* pixels,
                      std::vector<uint8_t>* out) override {
    out->swap(*pixels);
    pixels->clear();
    return absl::OkStatus();
  }
};

class DeflateEncoder final : public TileEncoder {
 public:
  DeflateEncoder(const TileFormat& f, libdeflate_compressor* c)
      : f_(f), c_(c) {}
  ~DeflateEncoder() override { libdeflate_free_compressor(c_); }
  absl::Status Encode(std::vector<uint8_t>* pixels,
                      std::vector<uint8_t>* out) override {
    ApplyPredictor(f_, pixels);
    out->resize(libdeflate_zlib_compress_bound(c_, pixels->size()));
    const size_t n = libdeflate_zlib_compress(
        c_, pixels->data(), pixels->size(), out->data(), out->size());
    if (n == 0) return absl::InternalError("libdeflate could not compress");
    out->resize(n);
    return absl::OkStatus();
  }

 private:
  const TileFormat f_;
  libdeflate_compressor* const c_;
};

class ZstdEncoder final : public TileEncoder {
 public:
  ZstdEncoder(const TileFormat& f, ZSTD_CCtx* c) : f_(f), c_(c) {}
  ~ZstdEncoder() override { ZSTD_freeCCtx(c_); }
  absl::Status Encode(std::vector<uint8_t>* pixels,
                      std::vector<uint8_t>* out) override {
    ApplyPredictor(f_, pixels);
    out->resize(ZSTD_compressBound(pixels->size()));
    const size_t n =
        ZSTD_compressCCtx(c_, out->data(), out->size(), pixels->data(),
                          pixels->size(), kZstdLevel);
    if (ZSTD_isError(n)) {
      return absl::InternalError(
          absl::StrCat("zstd could not compress: ", ZSTD_getErrorName(n)));
    }
    out->resize(n);
    return absl::OkStatus();
  }

 private:
  const TileFormat f_;
  ZSTD_CCtx* const c_;
};

// libjpeg reports errors by calling error_exit, which must not return: it
// jumps back to the setjmp in CompressJpeg.
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void JpegErrorExit(j_common_ptr c) {
  JpegError* e = reinterpret_cast<JpegError*>(c->err);
  (*c->err->format_message)(c, e->message);
  std::longjmp(e->jump, 1);
}

void JpegQuiet(j_common_ptr, int) {}

// Plain C on purpose: nothing with a destructor lives across setjmp.
// Returns the malloc'ed stream in *buf (caller frees) or false with the
// message in err->message.
bool CompressJpeg(jpeg_compress_struct* ci, JpegError* err, const TileFormat& f,
                  const uint8_t* pixels, unsigned char** buf,
                  unsigned long* size) {
  *buf = nullptr;
  *size = 0;
  if (setjmp(err->jump) != 0) {
    jpeg_abort_compress(ci);
    return false;
  }
  jpeg_mem_dest(ci, buf, size);
  ci->image_width = static_cast<JDIMENSION>(f.tile);
  ci->image_height = static_cast<JDIMENSION>(f.tile);
  ci->input_components = f.channels;
  ci->in_color_space = f.channels == 3 ? JCS_RGB : JCS_GRAYSCALE;
  jpeg_set_defaults(ci);  // RGB -> YCbCr, luma 2x2, chroma 1x1
  jpeg_set_quality(ci, f.jpeg_quality, TRUE);
  ci->write_JFIF_header = FALSE;  // TIFF carries the colour tags
  jpeg_start_compress(ci, TRUE);
  const size_t row = static_cast<size_t>(f.tile) * f.channels;
  while (ci->next_scanline < ci->image_height) {
    JSAMPROW r = const_cast<JSAMPROW>(pixels + ci->next_scanline * row);
    jpeg_write_scanlines(ci, &r, 1);
  }
  jpeg_finish_compress(ci);
  return true;
}

class JpegEncoder final : public TileEncoder {
 public:
  explicit JpegEncoder(const TileFormat& f) : f_(f) {
    ci_.err = jpeg_std_error(&err_.mgr);
    err_.mgr.error_exit = JpegErrorExit;
    err_.mgr.emit_message = JpegQuiet;
    err_.message[0] = '\0';
  }
  ~JpegEncoder() override {
    if (created_) jpeg_destroy_compress(&ci_);
  }
  // jpeg_create_compress reports allocation failure through error_exit.
  bool Init() {
    if (setjmp(err_.jump) != 0) return false;
    jpeg_create_compress(&ci_);
    created_ = true;
    return true;
  }
  absl::Status Encode(std::vector<uint8_t>* pixels,
                      std::vector<uint8_t>* out) override {
    unsigned char* buf = nullptr;
    unsigned long size = 0;
    const bool ok = CompressJpeg(&ci_, &err_, f_, pixels->data(), &buf, &size);
    if (ok) out->assign(buf, buf + size);
    std::free(buf);
    if (!ok) {
      return absl::InternalError(
          absl::StrCat("libjpeg could not compress a tile: ", err_.message));
    }
    return absl::OkStatus();
  }

 private:
  const TileFormat f_;
  jpeg_compress_struct ci_{};
  JpegError err_{};
  bool created_ = false;
};

}  // namespace

TiffTileTags TiffTagsFor(const TileFormat& f) {
  TiffTileTags t;
  t.photometric = f.channels >= 3 ? 2 : 1;  // RGB : MINISBLACK
  const bool integer = f.type != SampleType::kFloat32;
  switch (f.compression) {
    case Compression::kNone:
      t.compression = 1;
      break;
    case Compression::kDeflate:
      t.compression = 8;  // COMPRESSION_ADOBE_DEFLATE
      t.predictor = integer ? 2 : 1;
      break;
    case Compression::kZstd:
      t.compression = 50000;  // COMPRESSION_ZSTD
      t.predictor = integer ? 2 : 1;
      break;
    case Compression::kJpeg:
      t.compression = 7;  // COMPRESSION_JPEG
      t.ycbcr = f.channels == 3;
      if (t.ycbcr) t.photometric = 6;  // YCBCR
      break;
  }
  return t;
}

size_t MaxEncodedTileBytes(const TileFormat& f) {
  const size_t n = f.tile_bytes();
  switch (f.compression) {
    case Compression::kNone:
      return n;
    case Compression::kDeflate:
      return libdeflate_zlib_compress_bound(nullptr, n);
    case Compression::kZstd:
      return ZSTD_compressBound(n);
    case Compression::kJpeg:
      // Baseline JPEG of noise at quality 100 stays well below this.
      return 2 * n + 4096;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<TileEncoder>> TileEncoder::Create(
    const TileFormat& f) {
  ImageSpec pixel;
  pixel.channels = f.channels;
  pixel.type = f.type;
  absl::Status s =
      CheckCompression(f.compression, f.jpeg_quality, pixel, "compression");
  if (!s.ok()) return s;
  switch (f.compression) {
    case Compression::kNone:
      return std::unique_ptr<TileEncoder>(new RawEncoder());
    case Compression::kDeflate: {
      libdeflate_compressor* c = libdeflate_alloc_compressor(kDeflateLevel);
      if (c == nullptr) break;
      return std::unique_ptr<TileEncoder>(new DeflateEncoder(f, c));
    }
    case Compression::kZstd: {
      ZSTD_CCtx* c = ZSTD_createCCtx();
      if (c == nullptr) break;
      return std::unique_ptr<TileEncoder>(new ZstdEncoder(f, c));
    }
    case Compression::kJpeg: {
      auto e = std::make_unique<JpegEncoder>(f);
      if (!e->Init()) break;
      return std::unique_ptr<TileEncoder>(std::move(e));
    }
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "cannot allocate the ", CompressionName(f.compression), " encoder"));
}

}  // namespace regserve
