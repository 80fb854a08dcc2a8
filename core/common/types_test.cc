// Copyright regserve authors.
#include "core/common/types.h"

#include "core/common/cancel.h"
#include "core/common/status_macros.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

TEST(Types, NamesRoundTrip) {
  for (TransformKind k : {TransformKind::kRigid, TransformKind::kAffine,
                          TransformKind::kBSpline}) {
    EXPECT_EQ(*ParseTransformKind(TransformKindName(k)), k);
  }
  for (Interpolation i : {Interpolation::kLinear, Interpolation::kCubic,
                          Interpolation::kNearest}) {
    EXPECT_EQ(*ParseInterpolation(InterpolationName(i)), i);
  }
  absl::Status bad = ParseTransformKind("similarity").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("rigid|affine|bspline"), std::string::npos)
      << bad;
}

TEST(Types, DeviceSelection) {
  auto all = ParseDeviceSelection("cuda");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->preference, DevicePreference::kCuda);
  EXPECT_TRUE(all->gpus.empty());
  auto some = ParseDeviceSelection("cuda:0,2");
  ASSERT_TRUE(some.ok());
  EXPECT_EQ(some->gpus, (std::vector<int>{0, 2}));
  EXPECT_EQ(ParseDeviceSelection("cpu")->preference, DevicePreference::kCpu);
  EXPECT_EQ(ParseDeviceSelection("auto")->preference, DevicePreference::kAuto);
  EXPECT_FALSE(ParseDeviceSelection("cuda:").ok());
  EXPECT_FALSE(ParseDeviceSelection("cuda:0,0").ok());
  EXPECT_FALSE(ParseDeviceSelection("cuda:-1").ok());
  EXPECT_FALSE(ParseDeviceSelection("gpu").ok());
}

absl::StatusOr<int> Half(int v) {
  if (v % 2) return absl::InvalidArgumentError("odd");
  return v / 2;
}
absl::Status UseMacros(int v, int* out) {
  REGSERVE_ASSIGN_OR_RETURN(int h, Half(v));
  REGSERVE_RETURN_IF_ERROR(h > 10 ? absl::OutOfRangeError("big")
                                  : absl::OkStatus());
  *out = h;
  return absl::OkStatus();
}

TEST(StatusMacros, PropagateErrors) {
  int out = 0;
  EXPECT_TRUE(UseMacros(8, &out).ok());
  EXPECT_EQ(out, 4);
  EXPECT_EQ(UseMacros(7, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UseMacros(40, &out).code(), absl::StatusCode::kOutOfRange);
}

TEST(CancelToken, CancelAndDeadline) {
  CancelToken t;
  EXPECT_TRUE(t.Check().ok());
  t.set_deadline(absl::Now() - absl::Seconds(1));
  EXPECT_EQ(t.Check().code(), absl::StatusCode::kDeadlineExceeded);
  CancelToken c;
  c.Cancel("client went away");
  c.Cancel("second reason is ignored");
  EXPECT_TRUE(c.cancelled());
  EXPECT_EQ(c.Check().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(c.Check().message(), "client went away");
}

}  // namespace
}  // namespace regserve
