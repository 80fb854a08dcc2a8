// Copyright regserve authors.
#include "server/status_util.h"

#include "core/common/format.h"

namespace regserve {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int raw = static_cast<int>(status.code());
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  // absl::StatusCode and grpc::StatusCode share their numbering (0..16).
  if (raw > 0 && raw <= static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)) {
    code = static_cast<grpc::StatusCode>(raw);
  }
  return grpc::Status(code, std::string(status.message()));
}

std::string GrpcCodeName(grpc::StatusCode code) {
  return StatusCodeName(static_cast<absl::StatusCode>(code));
}

}  // namespace regserve
