// Copyright regserve authors.
//
// TokenStore: maps bearer tokens to principals, loaded from a file and
// re-read on demand (the daemon calls Reload() on SIGHUP).
//
// File format: one "<principal> <token>" pair per line; blank lines and lines
// starting with '#' are ignored. Principals are [A-Za-z0-9_.@-]{1,64};
// tokens are at least 16 printable, non-space characters. A principal may
// have several tokens (rotation); a token maps to one principal.
//
//   REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<TokenStore> store,
//                             TokenStore::Load("/etc/regserve/tokens"));
//   absl::StatusOr<std::string> who =
//       store->Authenticate("Bearer abc...");
//
// Thread safety: all methods are thread-safe. Reload() swaps the table
// atomically; on error the previous table stays in force.
#ifndef REGSERVE_CORE_AUTH_TOKEN_STORE_H_
#define REGSERVE_CORE_AUTH_TOKEN_STORE_H_

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace regserve {

class TokenStore {
 public:
  // InvalidArgument naming the line for a malformed file; NotFound /
  // PermissionDenied when it cannot be read.
  static absl::StatusOr<std::unique_ptr<TokenStore>> Load(std::string path);
  // Parses file contents (for tests and Load).
  static absl::StatusOr<std::map<std::string, std::string>> Parse(
      absl::string_view text);

  // Re-reads the file. On error the old table stays and the error is
  // returned.
  absl::Status Reload();

  // `authorization` is the value of the "authorization" metadata, e.g.
  // "Bearer <token>". Returns the principal, or Unauthenticated (missing
  // header, wrong scheme, unknown token). Token comparison takes the same
  // time whatever the token's contents.
  absl::StatusOr<std::string> Authenticate(
      absl::string_view authorization) const;

  size_t size() const;

 private:
  explicit TokenStore(std::string path) : path_(std::move(path)) {}
  const std::string path_;
  mutable absl::Mutex mu_;
  // token -> principal
  std::map<std::string, std::string> tokens_ ABSL_GUARDED_BY(mu_);
};

}  // namespace regserve

#endif  // REGSERVE_CORE_AUTH_TOKEN_STORE_H_
