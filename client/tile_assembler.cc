// Copyright regserve authors.
#include "client/tile_assembler.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/common/tile_grid.h"
#include "core/image/image.h"
#include "core/image/image_io.h"
#include "core/image/tile_wire_codec.h"

namespace regserve {
namespace {

constexpr char kStateMagic[] = "regserve-partial-v1";

absl::Status IoError(const std::string& what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(what, " \"", path, "\": ", std::strerror(errno)));
}

absl::StatusOr<SampleType> CoreSampleType(int type) {
  switch (type) {
    case v1::SAMPLE_TYPE_UINT8:
      return SampleType::kUInt8;
    case v1::SAMPLE_TYPE_UINT16:
      return SampleType::kUInt16;
    case v1::SAMPLE_TYPE_FLOAT32:
      return SampleType::kFloat32;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tile has unknown sample type ", type));
  }
}

// The tile's encoding; a server older than Tile.encoding only sets the
// deprecated text "raw".
v1::TileEncoding EncodingOf(const v1::Tile& tile) {
  if (tile.encoding() != v1::TILE_ENCODING_UNSPECIFIED) return tile.encoding();
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  if (tile.encoding_name() == "raw") return v1::TILE_ENCODING_RAW;
#pragma GCC diagnostic pop
  return v1::TILE_ENCODING_UNSPECIFIED;
}

absl::StatusOr<TileEncoding> CoreEncoding(v1::TileEncoding encoding) {
  switch (encoding) {
    case v1::TILE_ENCODING_RAW:
      return TileEncoding::kRaw;
    case v1::TILE_ENCODING_ZSTD:
      return TileEncoding::kZstd;
    case v1::TILE_ENCODING_DEFLATE:
      return TileEncoding::kDeflate;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported tile encoding ", static_cast<int>(encoding),
                       ": this client reads RAW, ZSTD and DEFLATE"));
  }
}

bool PreadAll(int fd, void* buf, size_t n, off_t offset) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    const ssize_t r = pread(fd, p, n, offset);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
    offset += r;
  }
  return true;
}

bool PwriteAll(int fd, const void* buf, size_t n, off_t offset) {
  const auto* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    const ssize_t r = pwrite(fd, p, n, offset);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
    offset += r;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TileAssembler>> TileAssembler::Open(
    const std::string& output_path, const std::string& job_id, bool resume) {
  std::unique_ptr<TileAssembler> a(new TileAssembler(output_path, job_id));
  if (resume && a->LoadState().ok()) {
    a->fd_ = open(a->partial_path().c_str(), O_RDWR | O_CLOEXEC);
    if (a->fd_ >= 0) return a;
  }
  a->layout_ = Layout();
  a->next_tile_ = 0;
  std::remove(a->state_path().c_str());
  std::remove(a->partial_path().c_str());
  return a;
}

TileAssembler::~TileAssembler() {
  if (fd_ >= 0) close(fd_);
}

absl::Status TileAssembler::LoadState() {
  std::ifstream in(state_path());
  if (!in) return absl::NotFoundError("no state");
  std::string magic, job;
  Layout l;
  int64_t next = 0;
  in >> magic >> job >> l.width >> l.height >> l.channels >> l.sample_type >>
      l.tile_size >> l.tile_count >> next;
  if (!in || magic != kStateMagic || job != job_id_ || l.width <= 0 ||
      l.height <= 0 || l.tile_size <= 0 || next < 0 || next > l.tile_count ||
      TileGrid(l.width, l.height, l.tile_size).count() != l.tile_count) {
    return absl::DataLossError("state of another job or unreadable");
  }
  layout_ = l;
  next_tile_ = next;
  return absl::OkStatus();
}

absl::Status TileAssembler::SaveState() {
  const std::string tmp = state_path() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kStateMagic << "\n"
        << job_id_ << "\n"
        << layout_.width << " " << layout_.height << " " << layout_.channels
        << " " << layout_.sample_type << " " << layout_.tile_size << " "
        << layout_.tile_count << "\n"
        << next_tile_ << "\n";
    out.flush();
    if (!out) return IoError("cannot write", tmp);
  }
  if (std::rename(tmp.c_str(), state_path().c_str()) != 0) {
    return IoError("cannot rename to", state_path());
  }
  return absl::OkStatus();
}

absl::Status TileAssembler::StartLayout(const Layout& layout) {
  if (layout.width <= 0 || layout.height <= 0 || layout.channels < 1 ||
      layout.channels > 4 || layout.tile_size <= 0 || layout.tile_count <= 0) {
    return absl::InvalidArgumentError(
        "tile message without a valid image layout (image_width, "
        "image_height, channels, tile_size, tile_count)");
  }
  const TileGrid grid(layout.width, layout.height, layout.tile_size);
  if (grid.count() != layout.tile_count) {
    return absl::InvalidArgumentError(
        absl::StrCat("tile_count ", layout.tile_count, " does not match the ",
                     layout.width, "x", layout.height, " image in ",
                     layout.tile_size, "-px tiles (", grid.count(), " tiles)"));
  }
  auto type = CoreSampleType(layout.sample_type);
  if (!type.ok()) return type.status();
  if (fd_ >= 0) close(fd_);
  fd_ = open(partial_path().c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
             0644);
  if (fd_ < 0) return IoError("cannot create", partial_path());
  const uint64_t bytes = static_cast<uint64_t>(layout.width) * layout.height *
                         layout.channels * SampleSize(*type);
  if (ftruncate(fd_, static_cast<off_t>(bytes)) != 0) {
    return IoError("cannot size", partial_path());
  }
  layout_ = layout;
  next_tile_ = 0;
  writer_.reset();
  bands_encoded_ = 0;
  return SaveState();
}

absl::Status TileAssembler::AddTile(const v1::Tile& tile) {
  Layout l;
  l.width = tile.image_width();
  l.height = tile.image_height();
  l.channels = tile.channels();
  l.sample_type = tile.sample_type();
  l.tile_size = tile.tile_size();
  l.tile_count = tile.tile_count();
  if (layout_.tile_count == 0 || !(l == layout_)) {
    if (tile.index() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tile ", tile.index(), " arrived before tile 0 of this layout"));
    }
    absl::Status s = StartLayout(l);
    if (!s.ok()) return s;
  }
  if (tile.index() < next_tile_) return absl::OkStatus();  // a replay
  if (tile.index() > next_tile_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tile ", tile.index(), " arrived but ", next_tile_, " was expected"));
  }
  absl::StatusOr<TileEncoding> encoding = CoreEncoding(EncodingOf(tile));
  if (!encoding.ok()) return encoding.status();
  auto type = CoreSampleType(tile.sample_type());
  if (!type.ok()) return type.status();
  const size_t pixel = static_cast<size_t>(l.channels) * SampleSize(*type);
  const TileRect expected =
      TileGrid(l.width, l.height, l.tile_size).rect(tile.index());
  if (!(TileRect{tile.x(), tile.y(), tile.width(), tile.height()} ==
        expected)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tile ", tile.index(), " (", tile.x(), ",", tile.y(), " ",
                     tile.width(), "x", tile.height(), ") does not fit the ",
                     l.width, "x", l.height, " image"));
  }
  const WireTileShape shape{tile.width(), tile.height(), l.channels, *type};
  // RAW samples are written from the message itself, without a copy.
  const bool raw = *encoding == TileEncoding::kRaw;
  absl::Status decoded =
      raw ? (tile.data().size() == shape.raw_bytes()
                 ? absl::OkStatus()
                 : absl::InvalidArgumentError(absl::StrCat(
                       tile.data().size(), " bytes of samples, not ",
                       shape.raw_bytes())))
          : decoder_.Decode(*encoding, shape, tile.data(), &samples_);
  if (!decoded.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tile ", tile.index(), ": ", decoded.message()));
  }
  const char* samples = raw ? tile.data().data() : samples_.data();
  const size_t row = static_cast<size_t>(tile.width()) * pixel;
  for (int64_t r = 0; r < tile.height(); ++r) {
    const off_t offset =
        static_cast<off_t>(((tile.y() + r) * l.width + tile.x()) * pixel);
    if (!PwriteAll(fd_, samples + r * row, row, offset)) {
      return IoError("cannot write", partial_path());
    }
  }
  ++next_tile_;
  REGSERVE_RETURN_IF_ERROR(SaveState());
  if (!TiffOutput()) return absl::OkStatus();
  const TileGrid grid(l.width, l.height, l.tile_size);
  return EncodeBands(next_tile_ / grid.cols());
}

absl::StatusOr<ImageSpec> TileAssembler::OutputSpec() const {
  REGSERVE_ASSIGN_OR_RETURN(const SampleType type,
                            CoreSampleType(layout_.sample_type));
  ImageSpec spec;
  spec.width = layout_.width;
  spec.height = layout_.height;
  spec.channels = layout_.channels;
  spec.type = type;
  return spec;
}

bool TileAssembler::TiffOutput() const {
  const std::string lower = absl::AsciiStrToLower(output_path_);
  return absl::EndsWith(lower, ".tif") || absl::EndsWith(lower, ".tiff");
}

absl::Status TileAssembler::EncodeBands(int64_t bands) {
  if (bands <= bands_encoded_) return absl::OkStatus();
  REGSERVE_ASSIGN_OR_RETURN(const ImageSpec spec, OutputSpec());
  const TileGrid grid(layout_.width, layout_.height, layout_.tile_size);
  if (writer_ == nullptr) {
    // Compressed on every core (the same bytes for any thread count).
    TiledTiffOptions options;
    options.tile = static_cast<int>(grid.edge());
    options.threads =
        static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    REGSERVE_ASSIGN_OR_RETURN(
        writer_, OpenTiledTiffWriter(encoded_path(), spec, options));
    bands_encoded_ = 0;
  }
  const size_t row_bytes =
      static_cast<size_t>(spec.width) * spec.bytes_per_pixel();
  for (; bands_encoded_ < bands; ++bands_encoded_) {
    const TileRect first = grid.rect(bands_encoded_ * grid.cols());
    ImageSpec band_spec = spec;
    band_spec.height = first.h;
    REGSERVE_ASSIGN_OR_RETURN(Image band, Image::Allocate(band_spec));
    if (!PreadAll(fd_, band.data(), band.size_bytes(),
                  static_cast<off_t>(first.y * row_bytes))) {
      return IoError("cannot read", partial_path());
    }
    REGSERVE_RETURN_IF_ERROR(writer_->WriteRegion(0, first.y, band));
  }
  return absl::OkStatus();
}

absl::Status TileAssembler::Finish() {
  if (!complete()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the result is incomplete: ", next_tile_, " of ", layout_.tile_count,
        " tiles received; run `regctl watch` to continue"));
  }
  absl::Status written;
  if (TiffOutput()) {
    const TileGrid grid(layout_.width, layout_.height, layout_.tile_size);
    written = EncodeBands(grid.rows());
    if (written.ok()) written = writer_->Close();
    writer_.reset();
    if (written.ok() &&
        std::rename(encoded_path().c_str(), output_path_.c_str()) != 0) {
      written = IoError("cannot rename to", output_path_);
    }
  } else {
    auto spec = OutputSpec();
    if (!spec.ok()) return spec.status();
    auto image = Image::Allocate(*spec);
    if (!image.ok()) return image.status();
    if (!PreadAll(fd_, image->data(), image->size_bytes(), 0)) {
      return IoError("cannot read", partial_path());
    }
    written = WriteImageFile(output_path_, *image);
  }
  if (!written.ok()) return written;
  close(fd_);
  fd_ = -1;
  std::remove(partial_path().c_str());
  std::remove(state_path().c_str());
  return absl::OkStatus();
}

}  // namespace regserve
