// Copyright regserve authors.
#include "core/jobs/input_root.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"

namespace regserve {

namespace fs = std::filesystem;

namespace {

// The checks both roots share: `kind` is "input" or "output".

absl::StatusOr<std::string> OpenRoot(absl::string_view kind,
                                     const std::string& root) {
  if (root.empty()) return std::string();
  std::error_code ec;
  fs::path canonical = fs::canonical(root, ec);
  if (ec || !fs::is_directory(canonical, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kind, "_root '", root, "' is not an existing directory"));
  }
  return canonical.string();
}

bool Inside(const std::string& root, const std::string& p) {
  return p == root || absl::StartsWith(p, root + "/");
}

// The path under the root that `path` names (not resolved), or
// PermissionDenied for a '..' component.
absl::StatusOr<fs::path> Candidate(const std::string& root,
                                   absl::string_view field,
                                   const std::string& path) {
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") {
      return absl::PermissionDeniedError(
          absl::StrCat(field, ": '..' is not allowed in server-side paths"));
    }
  }
  return path[0] == '/' ? fs::path(path) : fs::path(root) / path;
}

// `candidate` with symbolic links followed, checked to lie in the root.
// `what` says what must exist there ("file", "directory") for the message.
absl::StatusOr<std::string> ResolveInside(const std::string& root,
                                          absl::string_view kind,
                                          absl::string_view field,
                                          const std::string& path,
                                          const fs::path& candidate,
                                          absl::string_view what) {
  std::error_code ec;
  const fs::path resolved = fs::canonical(candidate, ec);
  if (ec) {
    // Do not reveal whether something exists outside the root.
    if (!Inside(root, candidate.lexically_normal().string())) {
      return absl::PermissionDeniedError(absl::StrCat(
          field, " '", path, "' is outside the server's ", kind, " root"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(field, " '", path, "' names no ", what,
                     " under the server's ", kind, " root; check the path"));
  }
  const std::string r = resolved.string();
  if (!Inside(root, r)) {
    return absl::PermissionDeniedError(
        absl::StrCat(field, " '", path, "' resolves outside the server's ",
                     kind, " root (symbolic links may not leave it)"));
  }
  return r;
}

}  // namespace

absl::StatusOr<InputRoot> InputRoot::Open(const std::string& root) {
  InputRoot r;
  REGSERVE_ASSIGN_OR_RETURN(r.root_, OpenRoot("input", root));
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
  REGSERVE_ASSIGN_OR_RETURN(const fs::path candidate,
                            Candidate(root_, field, path));
  REGSERVE_ASSIGN_OR_RETURN(
      const std::string r,
      ResolveInside(root_, "input", field, path, candidate, "file"));
  std::error_code ec;
  if (!fs::is_regular_file(r, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " '", path, "' is ",
        r == root_ ? "the input root itself" : "not a regular file",
        "; name an image file under it"));
  }
  return r;
}

absl::StatusOr<OutputRoot> OutputRoot::Open(const std::string& root) {
  OutputRoot r;
  REGSERVE_ASSIGN_OR_RETURN(r.root_, OpenRoot("output", root));
  return r;
}

absl::StatusOr<std::string> OutputRoot::Resolve(absl::string_view field,
                                                const std::string& path,
                                                bool overwrite) const {
  if (root_.empty()) {
    return absl::PermissionDeniedError(absl::StrCat(
        field,
        ": server-side outputs are disabled (the daemon has no output "
        "root); stream the result instead (regctl submit --output)"));
  }
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  }
  REGSERVE_ASSIGN_OR_RETURN(const fs::path candidate,
                            Candidate(root_, field, path));
  const fs::path name = candidate.filename();
  if (name.empty() || name == "." || path.back() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " '", path, "' names no file; add a file name"));
  }
  REGSERVE_ASSIGN_OR_RETURN(
      const std::string dir,
      ResolveInside(root_, "output", field, path, candidate.parent_path(),
                    "directory"));
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " '", path, "': its directory is not a directory"));
  }
  const fs::path target = fs::path(dir) / name;
  const fs::file_status st = fs::symlink_status(target, ec);
  if (fs::is_directory(st)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " '", path, "' is a directory; name a file in it"));
  }
  if (fs::exists(st) && !overwrite) {
    return absl::AlreadyExistsError(
        absl::StrCat(field, " '", path,
                     "' exists; choose another path or allow replacing it "
                     "(overwrite_output; regctl: --overwrite-output)"));
  }
  return target.string();
}

namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(what, " '", path, "': ", std::strerror(errno)));
}

// All of `in` into `out` from the current offsets (copy_file_range, which
// may share extents, else read and write).
absl::Status CopyAll(int in, int out, const std::string& target) {
  while (true) {
    const ssize_t n = copy_file_range(in, nullptr, out, nullptr, 1 << 30, 0);
    if (n == 0) return absl::OkStatus();
    if (n > 0) continue;
    if (errno == EINTR) continue;
    if (errno != EXDEV && errno != ENOSYS && errno != EINVAL &&
        errno != EOPNOTSUPP) {
      return Errno("cannot write", target);
    }
    break;
  }
  std::vector<char> buf(1 << 20);
  while (true) {
    const ssize_t n = read(in, buf.data(), buf.size());
    if (n == 0) return absl::OkStatus();
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot read the result for", target);
    }
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = write(out, buf.data() + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return Errno("cannot write", target);
      done += w;
    }
  }
}

// The temporary file under its final name: replacing, or only if nothing
// is there (renameat2's RENAME_NOREPLACE, else link, both atomic).
absl::Status Publish(const std::string& tmp, const std::string& target,
                     bool overwrite) {
  if (overwrite) {
    if (rename(tmp.c_str(), target.c_str()) != 0) {
      return Errno("cannot rename to", target);
    }
    return absl::OkStatus();
  }
  if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, target.c_str(),
                RENAME_NOREPLACE) == 0) {
    return absl::OkStatus();
  }
  if (errno == EINVAL || errno == ENOSYS) {
    if (link(tmp.c_str(), target.c_str()) == 0) {
      unlink(tmp.c_str());
      return absl::OkStatus();
    }
  }
  if (errno == EEXIST) {
    return absl::AlreadyExistsError(absl::StrCat(
        "'", target, "' appeared while the job ran; it was left as it is"));
  }
  return Errno("cannot create", target);
}

}  // namespace

absl::Status CopyFileAtomically(const std::string& source,
                                const std::string& target, bool overwrite) {
  const fs::path t(target);
  // Hidden and unique, so that two jobs naming one path do not share it.
  std::string tmp =
      (t.parent_path() / absl::StrCat(".", t.filename().string(), ".XXXXXX"))
          .string();
  const int in = open(source.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return Errno("cannot open the result for", target);
  const int out = mkostemp(tmp.data(), O_CLOEXEC);
  if (out < 0) {
    const absl::Status s = Errno("cannot create a file next to", target);
    close(in);
    return s;
  }
  fchmod(out, 0644);  // mkostemp's 0600 is for secrets, not results
  absl::Status s = CopyAll(in, out, target);
  if (s.ok() && fsync(out) != 0) s = Errno("cannot sync", target);
  close(in);
  if (close(out) != 0 && s.ok()) s = Errno("cannot write", target);
  if (s.ok()) s = Publish(tmp, target, overwrite);
  if (!s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  // The new directory entry, before the job says completed.
  const int dir = open(t.parent_path().c_str(), O_RDONLY | O_DIRECTORY);
  if (dir >= 0) {
    fsync(dir);
    close(dir);
  }
  return absl::OkStatus();
}

}  // namespace regserve
