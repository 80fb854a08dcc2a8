// Copyright regserve authors.
//
// Private to core/jobs: a fleet job's live result tiles for readers on
// other replicas (job_fleet.cc), as files in the job's directory on the
// shared volume:
//
//   jobs/<id>/tiles/watch.<reader>   one per reader elsewhere; its mtime is
//                                    renewed while the reader waits
//   jobs/<id>/tiles/<index>          a tile, written whole (temp + rename)
//
// The replica that runs the job writes each tile the warp streams while a
// reader has renewed its mark within the last few seconds (so nothing is
// written when nobody elsewhere watches); readers take the tiles in order
// and the rest from the stored result once the job is committed, as local
// readers do. The directory goes with the job's work files.
//
//   TileSpool spool(dir.tile_spool());
//   spool.Mark("replica-b.7f3a");               // reader, every poll
//   if (spool.Watched(absl::Now())) spool.Write(tile_event);  // writer
//   std::optional<JobEvent> tile = spool.Read(next_index);    // reader
//
// Thread safety: the methods touch only files (atomic renames); any thread.
#ifndef REGSERVE_CORE_JOBS_TILE_SPOOL_H_
#define REGSERVE_CORE_JOBS_TILE_SPOOL_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/jobs/job_types.h"

namespace regserve {
namespace jobs_internal {

class TileSpool {
 public:
  // A reader's mark older than this no longer counts (its replica died).
  static constexpr absl::Duration kMarkLifetime = absl::Seconds(5);

  explicit TileSpool(std::string dir) : dir_(std::move(dir)) {}

  // Reader side. Unmark also removes the directory when nothing else is
  // left in it.
  void Mark(const std::string& reader) const;
  void Unmark(const std::string& reader) const;
  // Tile `index` once it was written, else nullopt (also for a damaged
  // file, which a reader then takes from the stored result).
  std::optional<JobEvent> Read(int64_t index) const;

  // Writer side: whether a reader marked within kMarkLifetime of `now`,
  // and a tile (kRaw) to its file.
  bool Watched(absl::Time now) const;
  absl::Status Write(const JobEvent& tile) const;

 private:
  std::string dir_;
};

}  // namespace jobs_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_TILE_SPOOL_H_
