// Copyright regserve authors.
#include "server/flag_util.h"

#include "gtest/gtest.h"

namespace regserve {
namespace {

TEST(ParseByteSizeTest, Accepts) {
  EXPECT_EQ(*ParseByteSize(""), 0u);
  EXPECT_EQ(*ParseByteSize("0"), 0u);
  EXPECT_EQ(*ParseByteSize("1048576"), 1048576u);
  EXPECT_EQ(*ParseByteSize("512K"), 512u << 10);
  EXPECT_EQ(*ParseByteSize("64M"), 64u << 20);
  EXPECT_EQ(*ParseByteSize("8G"), 8ull << 30);
  EXPECT_EQ(*ParseByteSize("8GiB"), 8ull << 30);
  EXPECT_EQ(*ParseByteSize("8gb"), 8ull << 30);
  EXPECT_EQ(*ParseByteSize("2T"), 2ull << 40);
  EXPECT_EQ(*ParseByteSize("100B"), 100u);
  EXPECT_EQ(*ParseByteSize(" 3G "), 3ull << 30);
}

TEST(ParseByteSizeTest, Refuses) {
  for (const char* bad :
       {"G", "-1", "1.5G", "8X", "8GG", "8 G B", "8iB", "abc"}) {
    EXPECT_EQ(ParseByteSize(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_FALSE(ParseByteSize("99999999999T").ok());
  EXPECT_FALSE(ParseByteSize("99999999999999999999").ok());
}

TEST(FormatBytesTest, Units) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(8ull << 30), "8.0 GiB");
}

TEST(SplitHostPortTest, Forms) {
  auto a = SplitHostPort("127.0.0.1:50051");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 50051);
  auto b = SplitHostPort("[::1]:0");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(b->port, 0);
  auto c = SplitHostPort("localhost:80");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->host, "localhost");
  for (const char* bad : {"", "127.0.0.1", ":80", "host:", "host:99999",
                          "::1:80", "[::1]80", "host:x"}) {
    EXPECT_FALSE(SplitHostPort(bad).ok()) << bad;
  }
}

TEST(IsLoopbackHostTest, OnlyLocalAddresses) {
  for (const char* local : {"127.0.0.1", "127.1.2.3", "localhost", "LocalHost",
                            "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"}) {
    EXPECT_TRUE(IsLoopbackHost(local)) << local;
  }
  for (const char* remote :
       {"0.0.0.0", "::", "", "10.0.0.1", "128.0.0.1", "192.168.1.2",
        "::ffff:10.0.0.1", "::2", "example.com", "localhost.example.com",
        "127.0.0.1.example.com", "*"}) {
    EXPECT_FALSE(IsLoopbackHost(remote)) << remote;
  }
}

}  // namespace
}  // namespace regserve
