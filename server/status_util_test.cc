// Copyright regserve authors.
#include "server/status_util.h"

#include "gtest/gtest.h"

namespace regserve {
namespace {

TEST(ToGrpcStatusTest, OkStaysOk) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(ToGrpcStatusTest, EveryCanonicalCodeKeepsItsNumberAndMessage) {
  const absl::StatusCode codes[] = {absl::StatusCode::kCancelled,
                                    absl::StatusCode::kUnknown,
                                    absl::StatusCode::kInvalidArgument,
                                    absl::StatusCode::kDeadlineExceeded,
                                    absl::StatusCode::kNotFound,
                                    absl::StatusCode::kAlreadyExists,
                                    absl::StatusCode::kPermissionDenied,
                                    absl::StatusCode::kResourceExhausted,
                                    absl::StatusCode::kFailedPrecondition,
                                    absl::StatusCode::kAborted,
                                    absl::StatusCode::kOutOfRange,
                                    absl::StatusCode::kUnimplemented,
                                    absl::StatusCode::kInternal,
                                    absl::StatusCode::kUnavailable,
                                    absl::StatusCode::kDataLoss,
                                    absl::StatusCode::kUnauthenticated};
  for (absl::StatusCode code : codes) {
    const grpc::Status g = ToGrpcStatus(absl::Status(code, "fix the thing"));
    EXPECT_EQ(static_cast<int>(g.error_code()), static_cast<int>(code));
    EXPECT_EQ(g.error_message(), "fix the thing");
  }
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError("x")).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ToGrpcStatus(absl::ResourceExhaustedError("x")).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(ToGrpcStatusTest, NonCanonicalCodeBecomesUnknown) {
  const absl::Status odd(static_cast<absl::StatusCode>(42), "odd");
  EXPECT_EQ(ToGrpcStatus(odd).error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(ToGrpcStatus(odd).error_message(), "odd");
}

TEST(GrpcCodeNameTest, Names) {
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::INVALID_ARGUMENT),
            "INVALID_ARGUMENT");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::OUT_OF_RANGE), "OUT_OF_RANGE");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
}

}  // namespace
}  // namespace regserve
