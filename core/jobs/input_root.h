// Copyright regserve authors.
//
// InputRoot: the sandbox for server-side input paths. A job may name an
// image by a path relative to (or absolute under) the daemon's
// --input_root; this resolves it, following symbolic links, and refuses
// anything that leaves the root.
//
//   REGSERVE_ASSIGN_OR_RETURN(InputRoot root, InputRoot::Open("/srv/scans"));
//   REGSERVE_ASSIGN_OR_RETURN(std::string file,
//       root.Resolve("spec.fixed.server_path", "2024/a.tif"));
//
// OutputRoot is its mirror for server-side outputs (--output_root): the
// same checks, on the directory of a file that is yet to be written.
//
//   REGSERVE_ASSIGN_OR_RETURN(OutputRoot out, OutputRoot::Open("/srv/out"));
//   REGSERVE_ASSIGN_OR_RETURN(std::string file,
//       out.Resolve("spec.output_path", "2024/a.tif", /*overwrite=*/false));
//
// Messages name the field and the client's path, never the root's location
// on the server.
//
// Thread safety: immutable after Open; Resolve is thread-safe.
#ifndef REGSERVE_CORE_JOBS_INPUT_ROOT_H_
#define REGSERVE_CORE_JOBS_INPUT_ROOT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace regserve {

class InputRoot {
 public:
  // Server-side paths disabled: Resolve always answers PermissionDenied.
  InputRoot() = default;
  // `root` empty: disabled. InvalidArgument when it is not an existing
  // directory.
  static absl::StatusOr<InputRoot> Open(const std::string& root);

  bool enabled() const { return !root_.empty(); }

  // The canonical path of a regular file under the root. Errors:
  //   PermissionDenied  paths disabled, a '..' component, or a path that
  //                     lies or resolves (through a link) outside the root;
  //   InvalidArgument   nothing there, or not a regular file (the root
  //                     itself, "." or any directory).
  // NotFound is not used: the protocol keeps it for unknown jobs.
  absl::StatusOr<std::string> Resolve(absl::string_view field,
                                      const std::string& path) const;

 private:
  std::string root_;  // canonical, or empty
};

class OutputRoot {
 public:
  // Server-side outputs disabled: Resolve always answers PermissionDenied.
  OutputRoot() = default;
  // `root` empty: disabled. InvalidArgument when it is not an existing
  // directory.
  static absl::StatusOr<OutputRoot> Open(const std::string& root);

  bool enabled() const { return !root_.empty(); }

  // The absolute path of a file to write under the root: its directory
  // canonical (symbolic links followed), its name as given. Errors:
  //   PermissionDenied  outputs disabled, a '..' component, or a directory
  //                     that lies or resolves outside the root;
  //   InvalidArgument   no such directory, no file name, or the path names
  //                     a directory;
  //   AlreadyExists     something is there and `overwrite` is false.
  absl::StatusOr<std::string> Resolve(absl::string_view field,
                                      const std::string& path,
                                      bool overwrite) const;

 private:
  std::string root_;  // canonical, or empty
};

// Copies `source` to `target` (a path from OutputRoot::Resolve) atomically:
// into a hidden temporary file in the target's directory, synced, then
// renamed over the target (`overwrite`) or linked to it (otherwise, which
// fails with AlreadyExists if a file appeared there meanwhile). The
// temporary file is removed on failure; the target never holds a partial
// file.
absl::Status CopyFileAtomically(const std::string& source,
                                const std::string& target, bool overwrite);

}  // namespace regserve

#endif  // REGSERVE_CORE_JOBS_INPUT_ROOT_H_
