// Copyright regserve authors.
//
// Levels: the stream pump encodes each call's tiles one after another, so
// the encoder's speed bounds a stream's rate; zstd and deflate at level 1
// (docs/benchmarks.md, "Tiles on the wire") keep most of the size gain of
// higher levels at several times their speed.
#include "core/image/tile_wire_codec.h"

#include <libdeflate.h>
#include <zstd.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace regserve {
namespace {

constexpr int kZstdLevel = 1;
constexpr int kDeflateLevel = 1;

// The horizontal predictor of the header comment, per row.
template <typename T>
void Difference(const WireTileShape& s, char* bytes) {
  T* p = reinterpret_cast<T*>(bytes);
  const size_t row = static_cast<size_t>(s.width) * s.channels;
  const size_t c = static_cast<size_t>(s.channels);
  for (int64_t y = 0; y < s.height; ++y) {
    T* r = p + static_cast<size_t>(y) * row;
    for (size_t i = row; i-- > c;) r[i] = static_cast<T>(r[i] - r[i - c]);
  }
}

template <typename T>
void Accumulate(const WireTileShape& s, char* bytes) {
  T* p = reinterpret_cast<T*>(bytes);
  const size_t row = static_cast<size_t>(s.width) * s.channels;
  const size_t c = static_cast<size_t>(s.channels);
  for (int64_t y = 0; y < s.height; ++y) {
    T* r = p + static_cast<size_t>(y) * row;
    for (size_t i = c; i < row; ++i) r[i] = static_cast<T>(r[i] + r[i - c]);
  }
}

void Predict(const WireTileShape& s, std::string* data) {
  if (s.type == SampleType::kUInt8) Difference<uint8_t>(s, data->data());
  if (s.type == SampleType::kUInt16) Difference<uint16_t>(s, data->data());
}

void Unpredict(const WireTileShape& s, std::string* data) {
  if (s.type == SampleType::kUInt8) Accumulate<uint8_t>(s, data->data());
  if (s.type == SampleType::kUInt16) Accumulate<uint16_t>(s, data->data());
}

absl::Status CheckShape(const WireTileShape& s, size_t bytes) {
  if (s.width <= 0 || s.height <= 0 || s.channels <= 0 ||
      bytes != s.raw_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", s.width, "x", s.height, " tile of ", s.channels,
                     " channels cannot hold ", bytes, " bytes of samples"));
  }
  return absl::OkStatus();
}

class RawWireEncoder final : public TileWireEncoder {
 public:
  absl::Status Encode(const WireTileShape& shape, std::string* data,
                      TileEncoding* used) override {
    *used = TileEncoding::kRaw;
    return CheckShape(shape, data->size());
  }
};

// Predicts, compresses with `Compress` into scratch, keeps the smaller.
class CompressingEncoder : public TileWireEncoder {
 public:
  explicit CompressingEncoder(TileEncoding encoding) : encoding_(encoding) {}
  absl::Status Encode(const WireTileShape& shape, std::string* data,
                      TileEncoding* used) override {
    absl::Status s = CheckShape(shape, data->size());
    if (!s.ok()) return s;
    std::string raw;
    raw.swap(*data);
    Predict(shape, &raw);
    const size_t n = Compress(raw, &scratch_);
    if (n == 0 || n >= raw.size()) {
      Unpredict(shape, &raw);
      data->swap(raw);
      *used = TileEncoding::kRaw;
      return absl::OkStatus();
    }
    data->assign(scratch_.data(), n);
    *used = encoding_;
    return absl::OkStatus();
  }

 protected:
  // The compressed size in `*out` (resized as needed), 0 on failure.
  virtual size_t Compress(const std::string& in, std::string* out) = 0;

 private:
  const TileEncoding encoding_;
  std::string scratch_;
};

class ZstdWireEncoder final : public CompressingEncoder {
 public:
  explicit ZstdWireEncoder(ZSTD_CCtx* c)
      : CompressingEncoder(TileEncoding::kZstd), c_(c) {}
  ~ZstdWireEncoder() override { ZSTD_freeCCtx(c_); }

 protected:
  size_t Compress(const std::string& in, std::string* out) override {
    out->resize(ZSTD_compressBound(in.size()));
    const size_t n =
        ZSTD_compress2(c_, out->data(), out->size(), in.data(), in.size());
    return ZSTD_isError(n) ? 0 : n;
  }

 private:
  ZSTD_CCtx* const c_;
};

class DeflateWireEncoder final : public CompressingEncoder {
 public:
  explicit DeflateWireEncoder(libdeflate_compressor* c)
      : CompressingEncoder(TileEncoding::kDeflate), c_(c) {}
  ~DeflateWireEncoder() override { libdeflate_free_compressor(c_); }

 protected:
  size_t Compress(const std::string& in, std::string* out) override {
    out->resize(libdeflate_zlib_compress_bound(c_, in.size()));
    return libdeflate_zlib_compress(c_, in.data(), in.size(), out->data(),
                                    out->size());
  }

 private:
  libdeflate_compressor* const c_;
};

}  // namespace

absl::string_view TileEncodingName(TileEncoding encoding) {
  switch (encoding) {
    case TileEncoding::kRaw:
      return "raw";
    case TileEncoding::kZstd:
      return "zstd";
    case TileEncoding::kDeflate:
      return "deflate";
  }
  return "unknown";
}

absl::StatusOr<TileEncoding> ParseTileEncoding(absl::string_view name) {
  for (TileEncoding e :
       {TileEncoding::kRaw, TileEncoding::kZstd, TileEncoding::kDeflate}) {
    if (name == TileEncodingName(e)) return e;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown tile encoding '", name, "': use raw, zstd or deflate"));
}

absl::StatusOr<std::unique_ptr<TileWireEncoder>> TileWireEncoder::Create(
    TileEncoding encoding) {
  switch (encoding) {
    case TileEncoding::kRaw:
      return std::unique_ptr<TileWireEncoder>(new RawWireEncoder());
    case TileEncoding::kZstd: {
      ZSTD_CCtx* c = ZSTD_createCCtx();
      if (c == nullptr) break;
      // The frame's checksum lets a decoder tell corrupt tiles from good
      // ones (zlib streams carry their Adler-32 anyway).
      ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, kZstdLevel);
      ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
      return std::unique_ptr<TileWireEncoder>(new ZstdWireEncoder(c));
    }
    case TileEncoding::kDeflate: {
      libdeflate_compressor* c = libdeflate_alloc_compressor(kDeflateLevel);
      if (c == nullptr) break;
      return std::unique_ptr<TileWireEncoder>(new DeflateWireEncoder(c));
    }
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "cannot allocate the ", TileEncodingName(encoding), " tile encoder"));
}

struct TileWireDecoder::State {
  ~State() {
    if (zstd != nullptr) ZSTD_freeDCtx(zstd);
    if (deflate != nullptr) libdeflate_free_decompressor(deflate);
  }
  ZSTD_DCtx* zstd = nullptr;
  libdeflate_decompressor* deflate = nullptr;
};

TileWireDecoder::TileWireDecoder() : state_(std::make_unique<State>()) {}
TileWireDecoder::~TileWireDecoder() = default;

absl::Status TileWireDecoder::Decode(TileEncoding encoding,
                                     const WireTileShape& shape,
                                     absl::string_view data, std::string* raw) {
  const size_t want = shape.raw_bytes();
  if (encoding == TileEncoding::kRaw) {
    absl::Status s = CheckShape(shape, data.size());
    if (s.ok()) raw->assign(data.data(), data.size());
    return s;
  }
  absl::Status s = CheckShape(shape, want);
  if (!s.ok()) return s;
  raw->resize(want);
  const auto corrupt = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", TileEncodingName(encoding), " tile of ", data.size(),
                     " bytes does not decode to ", shape.width, "x",
                     shape.height, " pixels (", want, " bytes): ", why));
  };
  if (encoding == TileEncoding::kZstd) {
    if (state_->zstd == nullptr) state_->zstd = ZSTD_createDCtx();
    if (state_->zstd == nullptr) return corrupt("out of memory");
    const size_t n = ZSTD_decompressDCtx(state_->zstd, raw->data(), want,
                                         data.data(), data.size());
    if (ZSTD_isError(n)) return corrupt(ZSTD_getErrorName(n));
    if (n != want) return corrupt(absl::StrCat("it holds ", n, " bytes"));
  } else if (encoding == TileEncoding::kDeflate) {
    if (state_->deflate == nullptr) {
      state_->deflate = libdeflate_alloc_decompressor();
    }
    if (state_->deflate == nullptr) return corrupt("out of memory");
    size_t n = 0;
    const libdeflate_result r = libdeflate_zlib_decompress(
        state_->deflate, data.data(), data.size(), raw->data(), want, &n);
    if (r != LIBDEFLATE_SUCCESS) return corrupt("not a valid zlib stream");
    if (n != want) return corrupt(absl::StrCat("it holds ", n, " bytes"));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown tile encoding ", static_cast<int>(encoding)));
  }
  Unpredict(shape, raw);
  return absl::OkStatus();
}

}  // namespace regserve
