// Copyright regserve authors.
//
// The quality map (grid and thumbnail) as bytes, so that a job keeps it on
// disk rather than in memory for its whole retention, and across daemon
// restarts. A small versioned little-endian format of our own:
//
//   std::string bytes = EncodeQualityMap(map);
//   REGSERVE_RETURN_IF_ERROR(fs->WriteFileAtomic(dir.quality_map(), bytes));
//   ...
//   REGSERVE_ASSIGN_OR_RETURN(QualityMap back, DecodeQualityMap(bytes));
//
// Thread safety: pure functions.
#ifndef REGSERVE_CORE_QUALITY_QUALITY_MAP_IO_H_
#define REGSERVE_CORE_QUALITY_QUALITY_MAP_IO_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/quality/quality_map.h"

namespace regserve {

std::string EncodeQualityMap(const QualityMap& map);

// DataLoss for bytes that are not a whole, consistent map of this format
// (truncated, another version, sizes out of range).
absl::StatusOr<QualityMap> DecodeQualityMap(absl::string_view bytes);

}  // namespace regserve

#endif  // REGSERVE_CORE_QUALITY_QUALITY_MAP_IO_H_
