// Copyright regserve authors.
//
// The one place where core absl::Status values become gRPC statuses.
//
//   grpc::Status s = ToGrpcStatus(manager->Cancel(id, principal));
//
// absl::StatusCode values are defined to equal gRPC's codes, so the mapping
// keeps the code and the message (which, by the core's convention, says what
// failed and what to fix). An OK status maps to grpc::Status::OK.
//
// Thread safety: pure functions.
#ifndef REGSERVE_SERVER_STATUS_UTIL_H_
#define REGSERVE_SERVER_STATUS_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace regserve {

// Maps a core status to the gRPC status sent to clients. Codes outside the
// canonical range (never produced by Abseil) become UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The canonical name of a gRPC code: "INVALID_ARGUMENT", "OK", ...
// (StatusCodeName in core/common/format.h, which regctl uses too).
std::string GrpcCodeName(grpc::StatusCode code);

}  // namespace regserve

#endif  // REGSERVE_SERVER_STATUS_UTIL_H_
