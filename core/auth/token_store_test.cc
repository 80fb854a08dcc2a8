// Copyright regserve authors.
#include "core/auth/token_store.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace regserve {
namespace {

std::string TempFile(const std::string& contents) {
  char path[] = "/tmp/regserve_tokens_XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  close(fd);
  std::ofstream(path) << contents;
  return path;
}

TEST(TokenStore, ParsesPrincipalsAndTokens) {
  auto t = TokenStore::Parse(
      "# comment\n\nalice  0123456789abcdef0123\nbob\tbbbbbbbbbbbbbbbbbbbb\n"
      "alice 1111111111111111111111\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->size(), 3u);
  EXPECT_EQ(t->at("bbbbbbbbbbbbbbbbbbbb"), "bob");
}

TEST(TokenStore, RejectsMalformedFilesNamingTheLine) {
  auto bad = TokenStore::Parse("alice 0123456789abcdef0123\nbob short\n");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("line 2"), std::string::npos);
  EXPECT_FALSE(TokenStore::Parse("al/ice 0123456789abcdef0123\n").ok());
  EXPECT_FALSE(TokenStore::Parse("alice\n").ok());
  EXPECT_FALSE(TokenStore::Parse("a 0123456789abcdef0123 extra\n").ok());
  EXPECT_FALSE(
      TokenStore::Parse("a 0123456789abcdef0123\nb 0123456789abcdef0123\n")
          .ok());
}

TEST(TokenStore, AuthenticatesBearerTokens) {
  const std::string path = TempFile("alice 0123456789abcdef0123\n");
  auto store = TokenStore::Load(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(*(*store)->Authenticate("Bearer 0123456789abcdef0123"), "alice");
  EXPECT_EQ(
      (*store)->Authenticate("Bearer 0123456789abcdef012").status().code(),
      absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*store)->Authenticate("0123456789abcdef0123").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*store)->Authenticate("").status().code(),
            absl::StatusCode::kUnauthenticated);
  std::remove(path.c_str());
}

TEST(TokenStore, ReloadSwapsTheTableAndKeepsTheOldOneOnError) {
  const std::string path = TempFile("alice 0123456789abcdef0123\n");
  auto store = TokenStore::Load(path);
  ASSERT_TRUE(store.ok());
  std::ofstream(path, std::ios::trunc) << "bob bbbbbbbbbbbbbbbbbbbb\n";
  ASSERT_TRUE((*store)->Reload().ok());
  EXPECT_FALSE((*store)->Authenticate("Bearer 0123456789abcdef0123").ok());
  EXPECT_EQ(*(*store)->Authenticate("Bearer bbbbbbbbbbbbbbbbbbbb"), "bob");
  std::ofstream(path, std::ios::trunc) << "garbage\n";
  EXPECT_FALSE((*store)->Reload().ok());
  EXPECT_EQ(*(*store)->Authenticate("Bearer bbbbbbbbbbbbbbbbbbbb"), "bob");
  std::remove(path.c_str());
  EXPECT_EQ((*store)->Reload().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(TokenStore::Load("/nonexistent/tokens").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace regserve
