// Copyright regserve authors.
//
// File-backed RegionSources (region_source.h). A file that allows random
// access (a tiled or striped TIFF or BigTIFF, compressed or not: its
// ImageSpec::region_chunk_* are set) is read by region directly, a tile or a
// group of strips at a time. Any other file (JPEG, PNG, a TIFF stored as one
// strip) is first copied, in one pass in row order, into a spill file of raw
// tiles (SpillWriter), which is then read by region.
//
// Either source keeps the chunks it read in a small LRU cache
// (RegionSourceOptions::cache_bytes), so that neighbouring output tiles whose
// source regions overlap do not read the same bytes twice.
//
//   RegionSourceOptions o;
//   o.cache_bytes = 64 << 20;
//   REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<RegionSource> src,
//                             OpenFileRegionSource(path, o));
//
//   // A file read in order: spill it first (rows from the decoder).
//   REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<SpillWriter> w,
//                             SpillWriter::Create(spill_path, spec));
//   REGSERVE_RETURN_IF_ERROR(w->Append(rows, stride, n));  // ... in order
//   REGSERVE_RETURN_IF_ERROR(w->Close());
//   REGSERVE_ASSIGN_OR_RETURN(src, OpenSpillRegionSource(spill_path, spec, o));
//
// The spill file is the caller's: nothing here removes it (the job removes
// it with its work files, JobDir::RemoveWorkFiles).
//
// Thread safety: a source serialises its reads with one mutex (a decoder
// is not reentrant, and the warp reads one region at a time while it
// computes the previous one), so concurrent ReadRegion calls are safe.
// A SpillWriter is used by one thread. OpenImageIO exceptions are caught and
// returned as statuses.
#ifndef REGSERVE_CORE_IMAGE_FILE_REGION_SOURCE_H_
#define REGSERVE_CORE_IMAGE_FILE_REGION_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/image/image.h"
#include "core/image/region_source.h"

namespace regserve {

struct RegionSourceOptions {
  // Chunks kept; at least two chunks are kept whatever this says.
  uint64_t cache_bytes = uint64_t{64} << 20;
  // OpenImageIO's decoding threads (strip groups decompress in parallel).
  int threads = 1;
};

// Counters of a source, for tests and benchmarks.
struct RegionSourceStats {
  int64_t chunk_reads = 0;  // chunks read from the file
  int64_t cache_hits = 0;   // chunks found in the cache
};

// A source that reports what it read.
class FileRegionSource : public RegionSource {
 public:
  virtual RegionSourceStats stats() const = 0;
};

// `path` read by region from the file itself. Errors: those of
// ReadImageSpecFile, FailedPrecondition when the file can only be read in
// order (region_chunk_width 0: spill it).
absl::StatusOr<std::unique_ptr<FileRegionSource>> OpenFileRegionSource(
    const std::string& path, const RegionSourceOptions& options = {});

// A spill file SpillWriter wrote for an image of `spec`. Errors: NotFound,
// DataLoss when the file is shorter than SpillFileBytes(spec).
absl::StatusOr<std::unique_ptr<FileRegionSource>> OpenSpillRegionSource(
    const std::string& path, const ImageSpec& spec,
    const RegionSourceOptions& options = {});

// Writes the spill file of an image of `spec`, rows in order.
class SpillWriter {
 public:
  // Creates (truncates) `path`. Errors: Internal (cannot create).
  static absl::StatusOr<std::unique_ptr<SpillWriter>> Create(
      const std::string& path, const ImageSpec& spec);
  ~SpillWriter();
  SpillWriter(const SpillWriter&) = delete;
  SpillWriter& operator=(const SpillWriter&) = delete;

  // The next `n` rows, interleaved, `stride` bytes apart. Errors:
  // ResourceExhausted when the disk is full (with the numbers), Internal
  // for other write failures, InvalidArgument past the last row.
  absl::Status Append(const uint8_t* rows, size_t stride, int64_t n);
  // After the last row. FailedPrecondition when rows are missing.
  absl::Status Close();

 private:
  SpillWriter(std::string path, const ImageSpec& spec, int fd);
  absl::Status FlushBand();

  std::string path_;
  ImageSpec spec_;
  int fd_ = -1;
  int64_t rows_done_ = 0;  // rows appended
  int64_t band_rows_ = 0;  // rows in band_
  std::unique_ptr<uint8_t[]> band_;
  std::unique_ptr<uint8_t[]> tile_;
};

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_FILE_REGION_SOURCE_H_
