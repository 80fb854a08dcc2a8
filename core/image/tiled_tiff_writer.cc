// Copyright regserve authors.
//
// Three parts: the caller's thread assembles full-resolution tiles from
// regions (Assemble*), worker threads pad, halve and compress them
// (Process), and whichever worker holds the file writes full-resolution
// tiles in completion order (Deliver) while reduced-level tiles go to the
// spool. Close appends the spooled levels, each in its own directory.
#include "core/image/tiled_tiff_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <new>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/common/status_macros.h"
#include "core/image/tiff_container.h"
#include "core/image/tile_codec.h"
#include "core/image/tile_pyramid.h"

namespace regserve {
namespace {

// Files that could grow past this are BigTIFF: classic TIFF offsets are
// 32-bit, and the margin covers the offset tables and directories.
constexpr uint64_t kBigTiffThreshold =
    (uint64_t{1} << 32) - (uint64_t{256} << 20);

bool IsTiffPath(const std::string& path) {
  const size_t dot = path.find_last_of('.');
  const size_t slash = path.find_last_of('/');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash))
    return false;
  const std::string ext = absl::AsciiStrToLower(path.substr(dot + 1));
  return ext == "tif" || ext == "tiff";
}

// Reduced-level tiles, compressed, until Close copies them into their
// directories: a file beside the output, unlinked at once so that nothing
// is left behind whatever happens.
class Spool {
 public:
  static absl::StatusOr<std::unique_ptr<Spool>> Create(
      const std::string& near, const PyramidGeometry& g) {
    const std::string path = near + ".levels";
    const int fd =
        ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::InternalError(
          absl::StrCat("cannot create \"", path, "\": ", std::strerror(errno)));
    }
    ::unlink(path.c_str());
    std::unique_ptr<Spool> s(new Spool(fd));
    {
      absl::MutexLock lock(&s->mu_);
      for (int level = 0; level < g.levels(); ++level) {
        s->where_.emplace_back(level == 0 ? 0 : g.tiles(level), Extent{});
      }
    }
    return s;
  }
  ~Spool() { ::close(fd_); }

  absl::Status Put(int level, int64_t index, const std::vector<uint8_t>& b) {
    uint64_t offset = 0;
    {
      absl::MutexLock lock(&mu_);
      offset = end_;
      end_ += b.size();
    }
    size_t done = 0;
    while (done < b.size()) {
      const ssize_t n = ::pwrite(fd_, b.data() + done, b.size() - done,
                                 static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return absl::InternalError(
            absl::StrCat("writing a reduced-resolution tile to the scratch "
                         "file failed: ",
                         std::strerror(errno), ". Check free disk space"));
      }
      done += static_cast<size_t>(n);
    }
    absl::MutexLock lock(&mu_);
    where_[level][index] = Extent{offset, b.size(), true};
    return absl::OkStatus();
  }

  absl::Status Get(int level, int64_t index, std::vector<uint8_t>* out) {
    Extent e;
    {
      absl::MutexLock lock(&mu_);
      e = where_[level][index];
    }
    if (!e.present) {
      return absl::InternalError(absl::StrCat("reduced-resolution level ",
                                              level, " lacks tile ", index));
    }
    out->resize(e.size);
    size_t done = 0;
    while (done < e.size) {
      const ssize_t n = ::pread(fd_, out->data() + done, e.size - done,
                                static_cast<off_t>(e.offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return absl::InternalError(
            absl::StrCat("reading back a reduced-resolution tile failed: ",
                         n == 0 ? "short file" : std::strerror(errno)));
      }
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

 private:
  struct Extent {
    uint64_t offset = 0;
    size_t size = 0;
    bool present = false;
  };
  explicit Spool(int fd) : fd_(fd) {}
  const int fd_;
  absl::Mutex mu_;
  uint64_t end_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::vector<Extent>> where_ ABSL_GUARDED_BY(mu_);
};

struct Job {
  int level = 0;
  int64_t tx = 0, ty = 0;
  int64_t seq = -1;  // full resolution: the order tiles were completed in
  std::vector<uint8_t> pixels;
};

struct Encoded {
  int64_t index = 0;
  std::vector<uint8_t> bytes;
};

class TiledTiffWriterImpl final : public TiledTiffWriter {
 public:
  TiledTiffWriterImpl(std::string path, const ImageSpec& spec,
                      const TiledTiffOptions& options, const TileFormat& format,
                      std::unique_ptr<TiffContainer> tiff,
                      std::unique_ptr<Spool> spool,
                      std::vector<std::unique_ptr<TileEncoder>> encoders)
      : path_(std::move(path)),
        spec_(spec),
        options_(options),
        format_(format),
        g_(spec.width, spec.height, options.tile, options.pyramid),
        tile_(options.tile),
        tiles_x_(g_.tiles_x(0)),
        tiles_y_(g_.tiles_y(0)),
        window_(2 * static_cast<int64_t>(encoders.size())),
        threaded_(encoders.size() > 1),
        tiff_(std::move(tiff)),
        spool_(std::move(spool)),
        encoders_(std::move(encoders)),
        parents_(g_, spec.channels, spec.type),
        done_(static_cast<size_t>(tiles_x_ * tiles_y_), 0) {}

  ~TiledTiffWriterImpl() override {
    StopWorkers(/*discard=*/true);
    if (!closed_) {
      tiff_.reset();
      std::remove(path_.c_str());
    }
  }

  // Tags the full-resolution directory and starts the compression threads
  // (none when there is one encoder).
  absl::Status Start() {
    REGSERVE_RETURN_IF_ERROR(tiff_->SetLevel(LevelTags(0)));
    if (!threaded_) return absl::OkStatus();
    try {
      for (auto& enc : encoders_) {
        TileEncoder* e = enc.get();
        workers_.emplace_back([this, e] { WorkerLoop(e); });
      }
    } catch (const std::exception& e) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot start the result writer's threads: ", e.what()));
    }
    return absl::OkStatus();
  }

  absl::Status WriteRegion(int64_t x, int64_t y, const Image& region) override;
  absl::Status Close() override;
  TiledTiffStats stats() const override {
    absl::MutexLock lock(&mu_);
    TiledTiffStats s;
    s.levels = g_.levels();
    s.peak_ram_bytes = peak_;
    return s;
  }

 private:
  struct Partial {
    std::vector<uint8_t> data;  // tile_ x tile_ pixels
    std::vector<uint8_t> mask;  // 1 where supplied
    int64_t covered = 0;
  };

  absl::Status CheckRegion(int64_t x, int64_t y, const Image& region);
  absl::Status CopyIntoTile(int64_t tx, int64_t ty, int64_t x, int64_t y,
                            const Image& region);
  absl::Status Submit(int64_t tx, int64_t ty, std::vector<uint8_t> pixels);
  absl::Status Process(Job job, TileEncoder* encoder);
  void Deliver(int64_t seq, Encoded e);
  void WorkerLoop(TileEncoder* encoder);
  void StopWorkers(bool discard);
  absl::Status WriteLevels();
  absl::Status CloseFailed(const absl::Status& error, int64_t missing,
                           int64_t first_tx, int64_t first_ty);

  TiffLevel LevelTags(int level) const {
    TiffLevel l;
    l.width = g_.width(level);
    l.height = g_.height(level);
    l.format = format_;
    l.level = level;
    l.metadata = &options_.metadata;
    if (level == 0 && options_.layout == PyramidLayout::kSubIfd) {
      l.sub_ifds = g_.levels() - 1;
    }
    return l;
  }
  void Account(int64_t delta) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    AccountLocked(delta);
  }
  void AccountLocked(int64_t delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    held_ += delta;
    peak_ =
        std::max(peak_, held_ + static_cast<int64_t>(parents_.held_bytes()));
  }
  void Fail(const absl::Status& s) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (error_.ok()) error_ = s;
    space_.SignalAll();
  }
  int64_t TileWidth(int64_t tx) const { return g_.tile_w(0, tx); }
  int64_t TileHeight(int64_t ty) const { return g_.tile_h(0, ty); }

  const std::string path_;
  const ImageSpec spec_;
  const TiledTiffOptions options_;
  const TileFormat format_;
  const PyramidGeometry g_;
  const int tile_;
  const int64_t tiles_x_;
  const int64_t tiles_y_;
  const int64_t window_;  // full-resolution tiles in flight at most
  const bool threaded_;   // worker threads compress (else the caller)
  std::unique_ptr<TiffContainer> tiff_;  // Deliver's holder, then Close's
  std::unique_ptr<Spool> spool_;         // null without reduced levels
  std::vector<std::unique_ptr<TileEncoder>> encoders_;
  TileParents parents_;

  // The caller's thread only.
  std::vector<uint8_t> done_;  // per tile: handed over for compression
  std::unordered_map<int64_t, Partial> partial_;
  bool closed_ = false;

  mutable absl::Mutex mu_;
  absl::CondVar work_;   // queue_ has jobs, or stop_
  absl::CondVar space_;  // a tile was written, a job ended, or an error
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t next_write_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int64_t, Encoded> ready_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  int64_t held_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t peak_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> workers_;
};

absl::Status TiledTiffWriterImpl::CheckRegion(int64_t x, int64_t y,
                                              const Image& region) {
  if (closed_) return absl::FailedPreconditionError("tiled writer is closed");
  {
    absl::MutexLock lock(&mu_);
    if (!error_.ok()) return error_;
  }
  if (region.empty()) {
    return absl::InvalidArgumentError("WriteRegion got an empty image");
  }
  if (region.channels() != spec_.channels || region.type() != spec_.type) {
    return absl::InvalidArgumentError(absl::StrCat(
        "region is ", region.spec().DebugString(), " but the output is ",
        spec_.DebugString(), "; channels and sample type must match"));
  }
  if (x < 0 || y < 0 || x > spec_.width - region.width() ||
      y > spec_.height - region.height()) {
    return absl::OutOfRangeError(absl::StrCat(
        "region ", region.width(), "x", region.height(), " at (", x, ", ", y,
        ") does not fit in the ", spec_.width, "x", spec_.height, " output"));
  }
  const int64_t tx0 = x / tile_, tx1 = (x + region.width() - 1) / tile_;
  const int64_t ty0 = y / tile_, ty1 = (y + region.height() - 1) / tile_;
  for (int64_t ty = ty0; ty <= ty1; ++ty) {
    for (int64_t tx = tx0; tx <= tx1; ++tx) {
      if (done_[ty * tiles_x_ + tx]) {
        return absl::FailedPreconditionError(
            absl::StrCat("region at (", x, ", ", y, ") overlaps tile (",
                         tx * tile_, ", ", ty * tile_,
                         ") which is complete and already written; each pixel "
                         "may be supplied only until its tile is complete"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status TiledTiffWriterImpl::WriteRegion(int64_t x, int64_t y,
                                              const Image& region) {
  REGSERVE_RETURN_IF_ERROR(CheckRegion(x, y, region));
  const int64_t tx0 = x / tile_, tx1 = (x + region.width() - 1) / tile_;
  const int64_t ty0 = y / tile_, ty1 = (y + region.height() - 1) / tile_;
  for (int64_t ty = ty0; ty <= ty1; ++ty) {
    for (int64_t tx = tx0; tx <= tx1; ++tx) {
      absl::Status s;
      try {
        s = CopyIntoTile(tx, ty, x, y, region);
      } catch (const std::bad_alloc&) {
        s = absl::ResourceExhaustedError(absl::StrCat(
            "cannot allocate a ", tile_, "x", tile_, " tile buffer for \"",
            path_, "\"; use a smaller tile size"));
      }
      if (!s.ok()) {
        Fail(s);
        return s;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status TiledTiffWriterImpl::CopyIntoTile(int64_t tx, int64_t ty,
                                               int64_t x, int64_t y,
                                               const Image& region) {
  const int64_t bx = tx * tile_, by = ty * tile_;
  const int64_t vw = TileWidth(tx), vh = TileHeight(ty);
  // Intersection of the region with the tile, in output coordinates.
  const int64_t x0 = std::max(x, bx),
                x1 = std::min(x + region.width(), bx + vw);
  const int64_t y0 = std::max(y, by),
                y1 = std::min(y + region.height(), by + vh);
  const size_t bpp = spec_.bytes_per_pixel();
  const size_t tile_row = static_cast<size_t>(tile_) * bpp;
  const size_t span = static_cast<size_t>(x1 - x0) * bpp;
  const int64_t key = ty * tiles_x_ + tx;
  auto it = partial_.find(key);
  if (it == partial_.end() && x0 == bx && y0 == by && x1 - x0 == vw &&
      y1 - y0 == vh) {
    // The region covers the whole tile: no coverage mask needed.
    std::vector<uint8_t> pixels(format_.tile_bytes());
    Account(static_cast<int64_t>(pixels.size()));
    for (int64_t yy = y0; yy < y1; ++yy) {
      std::memcpy(pixels.data() + (yy - by) * tile_row,
                  region.row(yy - y) + (x0 - x) * bpp, span);
    }
    return Submit(tx, ty, std::move(pixels));
  }
  if (it == partial_.end()) {
    Partial p;
    p.data.assign(format_.tile_bytes(), 0);
    p.mask.assign(static_cast<size_t>(tile_) * tile_, 0);
    Account(static_cast<int64_t>(p.data.size() + p.mask.size()));
    it = partial_.emplace(key, std::move(p)).first;
  }
  Partial& p = it->second;
  for (int64_t yy = y0; yy < y1; ++yy) {
    std::memcpy(p.data.data() + (yy - by) * tile_row + (x0 - bx) * bpp,
                region.row(yy - y) + (x0 - x) * bpp, span);
    uint8_t* m = p.mask.data() + (yy - by) * tile_ + (x0 - bx);
    for (int64_t xx = 0; xx < x1 - x0; ++xx) {
      p.covered += 1 - m[xx];
      m[xx] = 1;
    }
  }
  if (p.covered < vw * vh) return absl::OkStatus();
  std::vector<uint8_t> pixels = std::move(p.data);
  Account(-static_cast<int64_t>(p.mask.size()));
  partial_.erase(it);
  return Submit(tx, ty, std::move(pixels));
}

// Hands a complete full-resolution tile over, waiting while window_ tiles
// are in flight; with one encoder it is compressed here and now.
absl::Status TiledTiffWriterImpl::Submit(int64_t tx, int64_t ty,
                                         std::vector<uint8_t> pixels) {
  done_[ty * tiles_x_ + tx] = 1;
  Job job;
  job.tx = tx;
  job.ty = ty;
  job.pixels = std::move(pixels);
  mu_.Lock();
  while (error_.ok() && next_seq_ - next_write_ >= window_) space_.Wait(&mu_);
  if (!error_.ok()) {
    const absl::Status s = error_;
    mu_.Unlock();
    return s;
  }
  job.seq = next_seq_++;
  if (!threaded_) {
    mu_.Unlock();
    return Process(std::move(job), encoders_[0].get());
  }
  queue_.push_back(std::move(job));
  work_.Signal();
  mu_.Unlock();
  return absl::OkStatus();
}

// Pads the tile, halves it into its parent, compresses it and passes it on;
// a parent it completes follows the same way.
absl::Status TiledTiffWriterImpl::Process(Job job, TileEncoder* encoder) {
  const int64_t w = g_.tile_w(job.level, job.tx);
  const int64_t h = g_.tile_h(job.level, job.ty);
  if (w < tile_ || h < tile_) {
    ReplicateEdges(tile_, w, h, format_.bytes_per_pixel(), job.pixels.data());
  }
  std::optional<ParentTile> parent;
  if (job.level + 1 < g_.levels()) {
    parent = parents_.Add(job.level, job.tx, job.ty, job.pixels.data());
  }
  const int64_t raw = static_cast<int64_t>(job.pixels.size());
  Encoded e;
  e.index = job.ty * g_.tiles_x(job.level) + job.tx;
  absl::Status s = encoder->Encode(&job.pixels, &e.bytes);
  job.pixels = std::vector<uint8_t>();
  Account(static_cast<int64_t>(e.bytes.size()) - raw);
  if (!s.ok()) return s;
  if (job.level == 0) {
    Deliver(job.seq, std::move(e));
  } else {
    s = spool_->Put(job.level, e.index, e.bytes);
    Account(-static_cast<int64_t>(e.bytes.size()));
    if (!s.ok()) return s;
  }
  if (!parent.has_value()) return absl::OkStatus();
  Job up;
  up.level = parent->level;
  up.tx = parent->tx;
  up.ty = parent->ty;
  up.pixels = std::move(parent->pixels);
  Account(static_cast<int64_t>(up.pixels.size()));
  if (!threaded_) return Process(std::move(up), encoder);
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(up));
  work_.Signal();
  return absl::OkStatus();
}

// Full-resolution tiles reach the file in completion order, written by
// whichever thread finds the next one ready: the same file for any number
// of threads. After an error the rest are dropped.
void TiledTiffWriterImpl::Deliver(int64_t seq, Encoded e) {
  mu_.Lock();
  ready_.emplace(seq, std::move(e));
  if (writing_) {
    mu_.Unlock();
    return;
  }
  writing_ = true;
  for (auto it = ready_.find(next_write_); it != ready_.end();
       it = ready_.find(next_write_)) {
    Encoded next = std::move(it->second);
    ready_.erase(it);
    const bool write = error_.ok();
    mu_.Unlock();
    absl::Status s;
    if (write) {
      s = tiff_->WriteRawTile(static_cast<uint32_t>(next.index),
                              next.bytes.data(), next.bytes.size());
    }
    mu_.Lock();
    AccountLocked(-static_cast<int64_t>(next.bytes.size()));
    ++next_write_;
    if (!s.ok() && error_.ok()) error_ = s;
  }
  writing_ = false;
  space_.SignalAll();
  mu_.Unlock();
}

void TiledTiffWriterImpl::WorkerLoop(TileEncoder* encoder) {
  mu_.Lock();
  while (true) {
    while (queue_.empty() && !stop_) work_.Wait(&mu_);
    if (queue_.empty()) break;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    ++busy_;
    const bool skip = !error_.ok();
    mu_.Unlock();
    absl::Status s;
    if (!skip) s = Process(std::move(job), encoder);
    mu_.Lock();
    --busy_;
    if (!s.ok() && error_.ok()) error_ = s;
    space_.SignalAll();
  }
  mu_.Unlock();
}

// Waits until every job is done (or, with `discard`, drops those not yet
// started), then ends the threads.
void TiledTiffWriterImpl::StopWorkers(bool discard) {
  if (workers_.empty()) return;
  {
    absl::MutexLock lock(&mu_);
    if (discard) queue_.clear();
    while (!queue_.empty() || busy_ > 0) space_.Wait(&mu_);
    stop_ = true;
    work_.SignalAll();
  }
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

absl::Status TiledTiffWriterImpl::WriteLevels() {
  REGSERVE_RETURN_IF_ERROR(tiff_->WriteDirectory());
  std::vector<uint8_t> bytes;
  for (int level = 1; level < g_.levels(); ++level) {
    REGSERVE_RETURN_IF_ERROR(tiff_->SetLevel(LevelTags(level)));
    for (int64_t i = 0; i < g_.tiles(level); ++i) {
      REGSERVE_RETURN_IF_ERROR(spool_->Get(level, i, &bytes));
      REGSERVE_RETURN_IF_ERROR(tiff_->WriteRawTile(static_cast<uint32_t>(i),
                                                   bytes.data(), bytes.size()));
    }
    REGSERVE_RETURN_IF_ERROR(tiff_->WriteDirectory());
  }
  std::unique_ptr<TiffContainer> tiff = std::move(tiff_);
  return tiff->Close();
}

absl::Status TiledTiffWriterImpl::Close() {
  if (closed_)
    return absl::FailedPreconditionError("tiled writer already closed");
  closed_ = true;
  int64_t missing = 0;
  int64_t first_tx = -1, first_ty = -1;
  for (int64_t ty = 0; ty < tiles_y_; ++ty) {
    for (int64_t tx = 0; tx < tiles_x_; ++tx) {
      if (done_[ty * tiles_x_ + tx]) continue;
      const int64_t area = TileWidth(tx) * TileHeight(ty);
      auto it = partial_.find(ty * tiles_x_ + tx);
      missing += area - (it == partial_.end() ? 0 : it->second.covered);
      if (first_tx < 0) {
        first_tx = tx;
        first_ty = ty;
      }
    }
  }
  partial_.clear();
  StopWorkers(/*discard=*/false);
  absl::Status error;
  {
    absl::MutexLock lock(&mu_);
    error = error_;
  }
  if (error.ok() && missing == 0) error = WriteLevels();
  if (!error.ok() || missing > 0) {
    return CloseFailed(error, missing, first_tx, first_ty);
  }
  return absl::OkStatus();
}

absl::Status TiledTiffWriterImpl::CloseFailed(const absl::Status& error,
                                              int64_t missing, int64_t first_tx,
                                              int64_t first_ty) {
  tiff_.reset();
  std::remove(path_.c_str());
  if (!error.ok()) {
    return absl::Status(error.code(), absl::StrCat(error.message(), "; \"",
                                                   path_, "\" was removed"));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      missing, " of ", spec_.pixels(), " pixels of \"", path_,
      "\" were never written (first incomplete tile at x=", first_tx * tile_,
      ", y=", first_ty * tile_, "); the incomplete file was removed"));
}

// The most bytes the file could take: every tile of every level at the
// codec's worst case.
uint64_t MaxFileBytes(const PyramidGeometry& g, const TileFormat& f) {
  uint64_t tiles = 0;
  for (int level = 0; level < g.levels(); ++level) {
    tiles += static_cast<uint64_t>(g.tiles(level));
  }
  return tiles * MaxEncodedTileBytes(f);
}

absl::Status CheckOptions(const std::string& path, const ImageSpec& spec,
                          const TiledTiffOptions& o) {
  REGSERVE_RETURN_IF_ERROR(ValidateSpec(spec));
  if (!IsTiffPath(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tiled output \"", path, "\" must have a .tif or .tiff extension"));
  }
  if (o.tile < 16 || o.tile > 8192 || o.tile % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tile size ", o.tile, " must be a multiple of 16 between 16 and 8192"));
  }
  if (o.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("writer threads ", o.threads, " must be >= 1"));
  }
  return CheckCompression(o.compression, o.jpeg_quality, spec, "compression");
}

}  // namespace

absl::StatusOr<std::unique_ptr<TiledTiffWriter>> OpenTiledTiffWriter(
    const std::string& path, const ImageSpec& spec,
    const TiledTiffOptions& options) {
  REGSERVE_RETURN_IF_ERROR(CheckOptions(path, spec, options));
  TileFormat f;
  f.tile = options.tile;
  f.channels = spec.channels;
  f.type = spec.type;
  f.compression = options.compression;
  f.jpeg_quality = options.jpeg_quality;
  const PyramidGeometry g(spec.width, spec.height, options.tile,
                          options.pyramid);
  std::vector<std::unique_ptr<TileEncoder>> encoders;
  for (int i = 0; i < options.threads; ++i) {
    REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<TileEncoder> e,
                              TileEncoder::Create(f));
    encoders.push_back(std::move(e));
  }
  REGSERVE_ASSIGN_OR_RETURN(
      std::unique_ptr<TiffContainer> tiff,
      TiffContainer::Create(path, MaxFileBytes(g, f) > kBigTiffThreshold));
  std::unique_ptr<Spool> spool;
  if (g.levels() > 1) {
    REGSERVE_ASSIGN_OR_RETURN(spool, Spool::Create(path, g));
  }
  auto writer = std::make_unique<TiledTiffWriterImpl>(
      path, spec, options, f, std::move(tiff), std::move(spool),
      std::move(encoders));
  REGSERVE_RETURN_IF_ERROR(writer->Start());
  return std::unique_ptr<TiledTiffWriter>(std::move(writer));
}

absl::StatusOr<std::unique_ptr<TiledTiffWriter>> OpenTiledTiffWriter(
    const std::string& path, const ImageSpec& spec, int tile_size) {
  TiledTiffOptions o;
  o.tile = tile_size;
  return OpenTiledTiffWriter(path, spec, o);
}

}  // namespace regserve
