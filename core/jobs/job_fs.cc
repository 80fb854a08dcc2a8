// Copyright regserve authors.
//
// The POSIX JobFileSystem: atomic replace (temp + fsync + rename + directory
// fsync) and appends.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/jobs/job_env.h"

namespace regserve {
namespace {

// Writes all of [data, data+size) to fd; returns 0 or an errno.
int WriteAll(int fd, const uint8_t* data, size_t size) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

class PosixJobFileSystem final : public JobFileSystem {
 public:
  absl::Status WriteFileAtomic(const std::string& path,
                               absl::string_view contents) override {
    std::string tmp = absl::StrCat(path, ".tmp");
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return WriteErrnoToStatus(errno, "creating", tmp);
    int err = WriteAll(fd, reinterpret_cast<const uint8_t*>(contents.data()),
                       contents.size());
    if (err == 0 && fsync(fd) != 0) err = errno;
    if (close(fd) != 0 && err == 0) err = errno;
    if (err == 0 && rename(tmp.c_str(), path.c_str()) != 0) err = errno;
    if (err != 0) {
      unlink(tmp.c_str());
      return WriteErrnoToStatus(err, "writing", path);
    }
    std::string dir = DirName(path);
    int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);  // best effort: some file systems refuse directory fsync
      close(dfd);
    }
    return absl::OkStatus();
  }

  absl::Status AppendToFile(const std::string& path,
                            absl::Span<const uint8_t> bytes) override {
    int fd =
        open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return WriteErrnoToStatus(errno, "creating", path);
    int err = WriteAll(fd, bytes.data(), bytes.size());
    if (close(fd) != 0 && err == 0) err = errno;
    if (err != 0) return WriteErrnoToStatus(err, "writing", path);
    return absl::OkStatus();
  }

  absl::Status SyncFile(const std::string& path) override {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return WriteErrnoToStatus(errno, "opening", path);
    int err = fsync(fd) != 0 ? errno : 0;
    close(fd);
    if (err != 0) return WriteErrnoToStatus(err, "syncing", path);
    // And its entry in its directory (a new file or directory, or a rename).
    const std::string dir = DirName(path);
    const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);  // best effort: some file systems refuse directory fsync
      close(dfd);
    }
    return absl::OkStatus();
  }
};

}  // namespace

JobFileSystem* DefaultJobFileSystem() {
  static PosixJobFileSystem* fs = new PosixJobFileSystem();
  return fs;
}

absl::Status WriteErrnoToStatus(int err, absl::string_view what,
                                absl::string_view path) {
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "data_dir is full: ", what, " ", path, " failed (", std::strerror(err),
        "); free space in the data directory or lower the retention"));
  }
  return absl::InternalError(
      absl::StrCat(what, " ", path, " failed: ", std::strerror(err)));
}

}  // namespace regserve
