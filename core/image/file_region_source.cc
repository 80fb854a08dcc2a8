// Copyright regserve authors.
//
// The chunked region sources. A region is assembled from the chunks it
// overlaps (tiles, strip groups or spill tiles), each taken from the LRU
// cache or read once and cached; the copy out of a chunk is a memcpy per row.
#include "core/image/file_region_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <list>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/common/status_macros.h"
#include "core/image/oiio_input.h"
#include "core/image/oiio_type.h"

namespace regserve {
namespace {

using oiio_internal::DescribeSource;
using oiio_internal::DrainErrors;
using oiio_internal::OpenInput;
using oiio_internal::Source;

// One cached chunk: its pixels, `stride` bytes per row.
struct Chunk {
  std::vector<uint8_t> data;
  size_t stride = 0;
};

// The chunk grid, the LRU cache and the region assembly; subclasses read
// one chunk.
class ChunkedSource : public FileRegionSource {
 public:
  ChunkedSource(const ImageSpec& spec, int64_t chunk_w, int64_t chunk_h,
                uint64_t cache_bytes)
      : spec_(spec), cw_(chunk_w), ch_(chunk_h) {
    cols_ = (spec.width + cw_ - 1) / cw_;
    const uint64_t chunk =
        static_cast<uint64_t>(cw_) * ch_ * spec.bytes_per_pixel();
    capacity_ = std::max<uint64_t>(cache_bytes, 2 * chunk);
  }
  const ImageSpec& spec() const override { return spec_; }
  RegionSourceStats stats() const override {
    absl::MutexLock lock(&mu_);
    return stats_;
  }

  absl::Status ReadRegion(int64_t x, int64_t y, int64_t w, int64_t h,
                          uint8_t* dst, size_t stride) override {
    REGSERVE_RETURN_IF_ERROR(CheckRegion(spec_, x, y, w, h));
    const size_t bpp = spec_.bytes_per_pixel();
    absl::MutexLock lock(&mu_);
    for (int64_t cy = y / ch_; cy <= (y + h - 1) / ch_; ++cy) {
      for (int64_t cx = x / cw_; cx <= (x + w - 1) / cw_; ++cx) {
        REGSERVE_ASSIGN_OR_RETURN(const Chunk* c, Get(cx, cy));
        const int64_t x0 = std::max(x, cx * cw_);
        const int64_t x1 = std::min(x + w, (cx + 1) * cw_);
        const int64_t y0 = std::max(y, cy * ch_);
        const int64_t y1 = std::min(y + h, (cy + 1) * ch_);
        for (int64_t j = y0; j < y1; ++j) {
          std::memcpy(dst + static_cast<size_t>(j - y) * stride +
                          static_cast<size_t>(x0 - x) * bpp,
                      c->data.data() +
                          static_cast<size_t>(j - cy * ch_) * c->stride +
                          static_cast<size_t>(x0 - cx * cw_) * bpp,
                      static_cast<size_t>(x1 - x0) * bpp);
        }
      }
    }
    return absl::OkStatus();
  }

 protected:
  // Reads chunk (cx, cy) into `out` (its pixels clipped to the image).
  virtual absl::Status ReadChunk(int64_t cx, int64_t cy, Chunk* out) = 0;
  int64_t chunk_w() const { return cw_; }
  int64_t chunk_h() const { return ch_; }

 private:
  struct Entry {
    Chunk chunk;
    std::list<int64_t>::iterator lru;
  };

  // The chunk, from the cache or the storage; valid until the next Get.
  absl::StatusOr<const Chunk*> Get(int64_t cx, int64_t cy)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t key = cy * cols_ + cx;
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      ++stats_.cache_hits;
      return &it->second.chunk;
    }
    Chunk c;
    REGSERVE_RETURN_IF_ERROR(ReadChunk(cx, cy, &c));
    ++stats_.chunk_reads;
    const uint64_t bytes = c.data.size();
    // Evict before inserting, keeping the chunk being copied from: the
    // current region's earlier chunks were copied already.
    while (!lru_.empty() && held_ + bytes > capacity_) {
      auto victim = entries_.find(lru_.back());
      held_ -= victim->second.chunk.data.size();
      entries_.erase(victim);
      lru_.pop_back();
    }
    lru_.push_front(key);
    held_ += bytes;
    Entry& e = entries_[key];
    e.chunk = std::move(c);
    e.lru = lru_.begin();
    return &e.chunk;
  }

  const ImageSpec spec_;
  const int64_t cw_, ch_;
  int64_t cols_ = 0;
  uint64_t capacity_ = 0;
  mutable absl::Mutex mu_;
  std::unordered_map<int64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::list<int64_t> lru_ ABSL_GUARDED_BY(mu_);  // most recent first
  uint64_t held_ ABSL_GUARDED_BY(mu_) = 0;
  RegionSourceStats stats_ ABSL_GUARDED_BY(mu_);
};

absl::Status Allocate(size_t bytes, size_t stride, Chunk* c) {
  try {
    c->data.resize(bytes);
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate a ", bytes, "-byte region chunk"));
  }
  c->stride = stride;
  return absl::OkStatus();
}

// The input file, a tile or a group of whole strips at a time.
class OiioRegionSource final : public ChunkedSource {
 public:
  OiioRegionSource(Source src, OpenInput in, int64_t cw, int64_t ch,
                   uint64_t cache_bytes)
      : ChunkedSource(in.ours, cw, ch, cache_bytes),
        src_(std::move(src)),
        in_(std::move(in)) {}

 protected:
  absl::Status ReadChunk(int64_t cx, int64_t cy, Chunk* out) override {
    const ImageSpec& s = spec();
    const int64_t x0 = cx * chunk_w(), y0 = cy * chunk_h();
    const int64_t x1 = std::min(s.width, x0 + chunk_w());
    const int64_t y1 = std::min(s.height, y0 + chunk_h());
    const size_t stride = static_cast<size_t>(x1 - x0) * s.bytes_per_pixel();
    REGSERVE_RETURN_IF_ERROR(
        Allocate(stride * static_cast<size_t>(y1 - y0), stride, out));
    const OIIO::TypeDesc type = OiioTypeOf(s.type);
    auto failed = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot decode the region (", x0, ", ", y0, ")-(", x1 - 1, ", ",
          y1 - 1, ") of ", DescribeSource(src_), " (", s.DebugString(),
          "): ", why, ". The file is truncated or corrupt; re-export it"));
    };
    try {
      const bool ok =
          in_.spec.tile_width > 0
              ? in_.input->read_tiles(
                    0, 0, static_cast<int>(x0), static_cast<int>(x1),
                    static_cast<int>(y0), static_cast<int>(y1), 0, 1, 0,
                    s.channels, type, out->data.data())
              : in_.input->read_scanlines(0, 0, static_cast<int>(y0),
                                          static_cast<int>(y1), 0, 0,
                                          s.channels, type, out->data.data());
      if (!ok || in_.input->has_error()) {
        return failed(DrainErrors(in_.input.get()));
      }
    } catch (const std::exception& e) {
      return failed(absl::StrCat("OpenImageIO threw: ", e.what()));
    }
    return absl::OkStatus();
  }

 private:
  const Source src_;
  OpenInput in_;
};

// A spill file: kSpillTile tiles, read with pread.
class SpillRegionSource final : public ChunkedSource {
 public:
  SpillRegionSource(std::string path, const ImageSpec& spec, int fd,
                    uint64_t cache_bytes)
      : ChunkedSource(spec, kSpillTile, kSpillTile, cache_bytes),
        path_(std::move(path)),
        fd_(fd) {}
  ~SpillRegionSource() override { ::close(fd_); }

 protected:
  absl::Status ReadChunk(int64_t cx, int64_t cy, Chunk* out) override {
    const size_t stride =
        static_cast<size_t>(kSpillTile) * spec().bytes_per_pixel();
    const size_t bytes = stride * kSpillTile;
    REGSERVE_RETURN_IF_ERROR(Allocate(bytes, stride, out));
    const int64_t cols = (spec().width + kSpillTile - 1) / kSpillTile;
    off_t offset = static_cast<off_t>((cy * cols + cx) * bytes);
    size_t done = 0;
    while (done < bytes) {
      const ssize_t n =
          ::pread(fd_, out->data.data() + done, bytes - done, offset + done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return absl::InternalError(absl::StrCat(
            "cannot read the spill file of the moving image (tile ", cx, ", ",
            cy, "): ", n < 0 ? std::strerror(errno) : "unexpected end"));
      }
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

 private:
  const std::string path_;
  const int fd_;
};

absl::Status WriteAll(int fd, const uint8_t* data, size_t bytes, off_t offset,
                      const std::string& path, uint64_t total) {
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pwrite(fd, data + done, bytes - done, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == ENOSPC || errno == EDQUOT || errno == EFBIG)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          errno == EFBIG ? "the file size limit was reached"
                         : "the disk is full",
          " while spilling the moving image (", total, " bytes) at byte ",
          offset + done, "; free space in the data directory"));
    }
    if (n <= 0) {
      return absl::InternalError(
          absl::StrCat("cannot write the spill file: ", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  (void)path;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<FileRegionSource>> OpenFileRegionSource(
    const std::string& path, const RegionSourceOptions& options) {
  Source src;
  src.name = path;
  REGSERVE_ASSIGN_OR_RETURN(OpenInput in, oiio_internal::OpenForReading(src));
  if (in.ours.region_chunk_width <= 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        DescribeSource(src), " can only be read in order; spill it first"));
  }
  try {
    in.input->threads(std::max(1, options.threads));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("OpenImageIO threw: ", e.what()));
  }
  int64_t cw = 0, ch = 0;
  RegionChunkOf(in.ours, &cw, &ch);
  return std::unique_ptr<FileRegionSource>(new OiioRegionSource(
      std::move(src), std::move(in), cw, ch, options.cache_bytes));
}

absl::StatusOr<std::unique_ptr<FileRegionSource>> OpenSpillRegionSource(
    const std::string& path, const ImageSpec& spec,
    const RegionSourceOptions& options) {
  REGSERVE_RETURN_IF_ERROR(ValidateSpec(spec));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot open the spill file of the moving image: ",
                     std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 ||
      static_cast<uint64_t>(st.st_size) < SpillFileBytes(spec)) {
    ::close(fd);
    return absl::DataLossError(absl::StrCat(
        "the spill file of the moving image is shorter than the ",
        SpillFileBytes(spec), " bytes of a ", spec.DebugString(), " image"));
  }
  return std::unique_ptr<FileRegionSource>(
      new SpillRegionSource(path, spec, fd, options.cache_bytes));
}

SpillWriter::SpillWriter(std::string path, const ImageSpec& spec, int fd)
    : path_(std::move(path)), spec_(spec), fd_(fd) {}

SpillWriter::~SpillWriter() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<std::unique_ptr<SpillWriter>> SpillWriter::Create(
    const std::string& path, const ImageSpec& spec) {
  REGSERVE_RETURN_IF_ERROR(ValidateSpec(spec));
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot create the spill file of the moving image: ",
                     std::strerror(errno)));
  }
  std::unique_ptr<SpillWriter> w(new SpillWriter(path, spec, fd));
  const size_t bpp = spec.bytes_per_pixel();
  try {
    w->band_.reset(
        new uint8_t[static_cast<size_t>(kSpillTile) * spec.width * bpp]);
    w->tile_.reset(
        new uint8_t[static_cast<size_t>(kSpillTile) * kSpillTile * bpp]());
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate the spill writer's band: ", e.what()));
  }
  return w;
}

absl::Status SpillWriter::Append(const uint8_t* rows, size_t stride,
                                 int64_t n) {
  if (n < 0 || rows_done_ + n > spec_.height) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spill: ", n, " rows after ", rows_done_, " of ", spec_.height));
  }
  const size_t line =
      static_cast<size_t>(spec_.width) * spec_.bytes_per_pixel();
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(band_.get() + static_cast<size_t>(band_rows_) * line,
                rows + static_cast<size_t>(i) * stride, line);
    ++band_rows_;
    ++rows_done_;
    if (band_rows_ == kSpillTile || rows_done_ == spec_.height) {
      REGSERVE_RETURN_IF_ERROR(FlushBand());
    }
  }
  return absl::OkStatus();
}

// Writes the band's tiles, one pwrite each (the rows below a short last
// band are padding: zero).
absl::Status SpillWriter::FlushBand() {
  const size_t bpp = spec_.bytes_per_pixel();
  const size_t line = static_cast<size_t>(spec_.width) * bpp;
  const size_t tile_line = static_cast<size_t>(kSpillTile) * bpp;
  const size_t tile_bytes = tile_line * kSpillTile;
  const int64_t cols = (spec_.width + kSpillTile - 1) / kSpillTile;
  const int64_t ty = (rows_done_ - 1) / kSpillTile;
  for (int64_t tx = 0; tx < cols; ++tx) {
    const int64_t x0 = tx * kSpillTile;
    const size_t w =
        static_cast<size_t>(std::min(kSpillTile, spec_.width - x0)) * bpp;
    if (w < tile_line || band_rows_ < kSpillTile) {
      std::memset(tile_.get(), 0, tile_bytes);
    }
    for (int64_t j = 0; j < band_rows_; ++j) {
      std::memcpy(tile_.get() + static_cast<size_t>(j) * tile_line,
                  band_.get() + static_cast<size_t>(j) * line + x0 * bpp, w);
    }
    const off_t offset = static_cast<off_t>((ty * cols + tx) * tile_bytes);
    REGSERVE_RETURN_IF_ERROR(WriteAll(fd_, tile_.get(), tile_bytes, offset,
                                      path_, SpillFileBytes(spec_)));
  }
  band_rows_ = 0;
  return absl::OkStatus();
}

absl::Status SpillWriter::Close() {
  if (rows_done_ != spec_.height) {
    return absl::FailedPreconditionError(absl::StrCat(
        "spill: ", rows_done_, " of ", spec_.height, " rows written"));
  }
  if (::close(fd_) != 0) {
    fd_ = -1;
    return absl::InternalError(
        absl::StrCat("cannot close the spill file: ", std::strerror(errno)));
  }
  fd_ = -1;
  return absl::OkStatus();
}

}  // namespace regserve
