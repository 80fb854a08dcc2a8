// Copyright regserve authors.
//
// Reading a whole small file (a state file, a token file, a transform).
//
//   REGSERVE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
//
// Thread safety: thread-safe (no shared state).
#ifndef REGSERVE_CORE_COMMON_FILE_UTIL_H_
#define REGSERVE_CORE_COMMON_FILE_UTIL_H_

#include <string>

#include "absl/status/statusor.h"

namespace regserve {

// The file's bytes. Errors: NotFound when it cannot be opened (missing or
// not readable), DataLoss when a read fails part way. Messages name `path`:
// callers facing remote clients must not pass them on unchanged.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace regserve

#endif  // REGSERVE_CORE_COMMON_FILE_UTIL_H_
