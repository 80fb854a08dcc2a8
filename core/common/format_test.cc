// Copyright regserve authors.
#include "core/common/format.h"

#include "gtest/gtest.h"

namespace regserve {
namespace {

TEST(FormatBytesTest, Units) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.0 KiB");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(64ull << 20), "64.0 MiB");
  EXPECT_EQ(FormatBytes(8ull << 30), "8.0 GiB");
  EXPECT_EQ(FormatBytes(3ull << 40), "3.0 TiB");
  EXPECT_EQ(FormatBytes(2ull << 50), "2.0 PiB");
  // PiB is the largest unit.
  EXPECT_EQ(FormatBytes(2048ull << 50), "2048.0 PiB");
}

TEST(StatusCodeNameTest, CanonicalNames) {
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kOk), "OK");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kCancelled), "CANCELLED");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kInvalidArgument),
            "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kResourceExhausted),
            "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kOutOfRange), "OUT_OF_RANGE");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kUnauthenticated),
            "UNAUTHENTICATED");
}

TEST(StatusCodeNameTest, EveryCanonicalCodeHasAName) {
  // gRPC codes 0..16 are absl's codes 0..16.
  for (int c = 0; c <= 16; ++c) {
    const std::string name = StatusCodeName(static_cast<absl::StatusCode>(c));
    EXPECT_FALSE(name.empty()) << c;
    EXPECT_EQ(name == "UNKNOWN", c == 2) << c << " " << name;
  }
}

TEST(StatusCodeNameTest, NonCanonicalIsUnknown) {
  EXPECT_EQ(StatusCodeName(static_cast<absl::StatusCode>(42)), "UNKNOWN");
  EXPECT_EQ(StatusCodeName(static_cast<absl::StatusCode>(-1)), "UNKNOWN");
}

}  // namespace
}  // namespace regserve
