// Copyright regserve authors.
#include "core/auth/token_store.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace regserve {
namespace {

bool ValidPrincipal(absl::string_view p) {
  if (p.empty() || p.size() > 64) return false;
  for (char c : p) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '.' && c != '@' && c != '-')
      return false;
  }
  return true;
}

bool ValidToken(absl::string_view t) {
  if (t.size() < 16 || t.size() > 4096) return false;
  for (char c : t) {
    if (!absl::ascii_isgraph(c)) return false;
  }
  return true;
}

// Compares without an early exit, so the time does not reveal how many
// leading characters matched.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> TokenStore::Parse(
    absl::string_view text) {
  std::map<std::string, std::string> tokens;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> parts =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token file line ", line_no, ": expected '<principal> <token>'"));
    }
    if (!ValidPrincipal(parts[0])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token file line ", line_no,
          ": principal must be 1-64 characters of [A-Za-z0-9_.@-]"));
    }
    if (!ValidToken(parts[1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token file line ", line_no,
          ": token must be 16-4096 printable characters without spaces"));
    }
    auto [it, inserted] =
        tokens.emplace(std::string(parts[1]), std::string(parts[0]));
    if (!inserted && it->second != parts[0]) {
      return absl::InvalidArgumentError(
          absl::StrCat("token file line ", line_no,
                       ": this token is already given to another principal"));
    }
  }
  return tokens;
}

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Load(std::string path) {
  std::unique_ptr<TokenStore> store(new TokenStore(std::move(path)));
  absl::Status s = store->Reload();
  if (!s.ok()) return s;
  return store;
}

absl::Status TokenStore::Reload() {
  std::ifstream in(path_);
  if (!in) {
    const int err = errno;
    const std::string msg = absl::StrCat("cannot read token file ", path_, ": ",
                                         std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg)
                         : absl::PermissionDeniedError(msg);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<std::map<std::string, std::string>> parsed = Parse(ss.str());
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(),
                        absl::StrCat(path_, ": ", parsed.status().message()));
  }
  if (parsed->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": the token file has no tokens"));
  }
  absl::MutexLock lock(&mu_);
  tokens_ = *std::move(parsed);
  return absl::OkStatus();
}

absl::StatusOr<std::string> TokenStore::Authenticate(
    absl::string_view authorization) const {
  absl::string_view token = authorization;
  if (!absl::ConsumePrefix(&token, "Bearer ") &&
      !absl::ConsumePrefix(&token, "bearer ")) {
    return absl::UnauthenticatedError(
        "missing bearer token: send 'authorization: Bearer <token>' (regctl "
        "reads REGSERVE_TOKEN)");
  }
  token = absl::StripAsciiWhitespace(token);
  absl::MutexLock lock(&mu_);
  const std::string* found = nullptr;
  // Visit every entry so the time does not depend on where a match is.
  for (const auto& [t, principal] : tokens_) {
    if (ConstantTimeEquals(t, token)) found = &principal;
  }
  if (found == nullptr) return absl::UnauthenticatedError("invalid token");
  return *found;
}

size_t TokenStore::size() const {
  absl::MutexLock lock(&mu_);
  return tokens_.size();
}

}  // namespace regserve
