// Copyright regserve authors.
#include "core/jobs/input_root.h"

#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace regserve {

namespace fs = std::filesystem;

absl::StatusOr<InputRoot> InputRoot::Open(const std::string& root) {
  InputRoot r;
  if (root.empty()) return r;
  std::error_code ec;
  fs::path canonical = fs::canonical(root, ec);
  if (ec || !fs::is_directory(canonical, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("input_root '", root, "' is not an existing directory"));
  }
  r.root_ = canonical.string();
  return r;
}

absl::StatusOr<std::string> InputRoot::Resolve(absl::string_view field,
                                               const std::string& path) const {
  if (root_.empty()) {
    return absl::PermissionDeniedError(
        absl::StrCat(field,
                     ": server-side paths are disabled (the daemon has no "
                     "input root); upload the image instead"));
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") {
      return absl::PermissionDeniedError(
          absl::StrCat(field, ": '..' is not allowed in server-side paths"));
    }
  }
  const fs::path candidate =
      path[0] == '/' ? fs::path(path) : fs::path(root_) / path;
  const auto inside = [this](const std::string& p) {
    return p == root_ || absl::StartsWith(p, root_ + "/");
  };
  std::error_code ec;
  const fs::path resolved = fs::canonical(candidate, ec);
  if (ec) {
    // Do not reveal whether something exists outside the root.
    if (!inside(candidate.lexically_normal().string())) {
      return absl::PermissionDeniedError(absl::StrCat(
          field, " '", path, "' is outside the server's input root"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        field, " '", path,
        "' names no file under the server's input root; check the path"));
  }
  const std::string r = resolved.string();
  if (!inside(r)) {
    return absl::PermissionDeniedError(absl::StrCat(
        field, " '", path,
        "' resolves outside the server's input root (symbolic links may not "
        "leave it)"));
  }
  if (!fs::is_regular_file(resolved, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " '", path, "' is ",
        r == root_ ? "the input root itself" : "not a regular file",
        "; name an image file under it"));
  }
  return r;
}

}  // namespace regserve
