// Copyright regserve authors.
#include "client/channel_target.h"

#include "gtest/gtest.h"

namespace regserve {
namespace {

TEST(ChannelTargetTest, OneAddressIsKeptAsGiven) {
  auto t = ResolveChannelTarget("example.org:50051");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->target, "example.org:50051");
  EXPECT_FALSE(t->balanced);
}

TEST(ChannelTargetTest, DnsNameIsBalanced) {
  auto t = ResolveChannelTarget("dns:///regserve.fleet.svc:50051");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->target, "dns:///regserve.fleet.svc:50051");
  EXPECT_TRUE(t->balanced);
}

TEST(ChannelTargetTest, ListBecomesOneBalancedTarget) {
  auto t = ResolveChannelTarget("127.0.0.1:1,127.0.0.2:2");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->target, "ipv4:127.0.0.1:1,127.0.0.2:2");
  EXPECT_TRUE(t->balanced);
  t = ResolveChannelTarget("[::1]:1,[::1]:2");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->target, "ipv6:[::1]:1,[::1]:2");
}

TEST(ChannelTargetTest, BadListsNameTheEntry) {
  auto t = ResolveChannelTarget("127.0.0.1:1,127.0.0.1");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("\"127.0.0.1\" has no port"),
            std::string::npos)
      << t.status();
  t = ResolveChannelTarget("127.0.0.1:1,,127.0.0.1:2");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  t = ResolveChannelTarget("127.0.0.1:1,no-such-host.invalid:2");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(t.status().message().find("no-such-host.invalid"),
            std::string::npos);
  t = ResolveChannelTarget("127.0.0.1:1,[::1]:2");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace regserve
