// Copyright regserve authors.
//
// Text for people: byte counts and status code names, shared by regserved,
// regctl and the core (the client must not depend on server/).
//
//   FormatBytes(1536);  // "1.5 KiB"
//   StatusCodeName(absl::StatusCode::kInvalidArgument);  // "INVALID_ARGUMENT"
//   StatusCodeName(static_cast<absl::StatusCode>(grpc_status.error_code()));
//
// gRPC's status codes equal absl::StatusCode numerically, so a gRPC code
// is named by casting it, as above.
//
// Thread safety: pure functions.
#ifndef REGSERVE_CORE_COMMON_FORMAT_H_
#define REGSERVE_CORE_COMMON_FORMAT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace regserve {

// Binary multiples with one decimal: "512 B", "1.5 KiB", "8.0 GiB", up to
// PiB.
std::string FormatBytes(uint64_t bytes);

// The canonical upper-case name: "OK", "INVALID_ARGUMENT", ...; "UNKNOWN" for
// values outside the canonical codes.
std::string StatusCodeName(absl::StatusCode code);

}  // namespace regserve

#endif  // REGSERVE_CORE_COMMON_FORMAT_H_
