// Copyright regserve authors.
#include "core/jobs/job_dir.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace regserve {

namespace fs = std::filesystem;

void RemoveQuietly(const std::string& path) {
  std::error_code ec;
  fs::remove(path, ec);
}

void RemoveAllQuietly(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

absl::Status WithoutPath(const absl::Status& status, const std::string& path,
                         absl::string_view name) {
  if (status.ok() || path.empty()) return status;
  return absl::Status(status.code(),
                      absl::StrReplaceAll(status.message(), {{path, name}}));
}

JobDir::JobDir(const std::string& jobs_dir, const std::string& id)
    : id_(id), path_(absl::StrCat(jobs_dir, "/", id)) {}

std::string JobDir::upload(ImageRole role, absl::string_view extension) const {
  return absl::StrCat(inputs(), "/", RoleName(role), ".", extension);
}

std::string JobDir::Rebase(const std::string& recorded) const {
  const std::string marker = absl::StrCat("/jobs/", id_);
  const size_t at = recorded.rfind(marker);
  if (at == std::string::npos) return recorded;
  const size_t end = at + marker.size();
  if (end != recorded.size() && recorded[end] != '/') return recorded;
  return absl::StrCat(path_, recorded.substr(end));
}

void JobDir::RemoveWorkFiles(bool delete_uploads, bool keep_result) const {
  RemoveAllQuietly(registration());
  RemoveQuietly(spill());
  RemoveAllQuietly(tile_spool());
  RemoveQuietly(partial_result());
  // Fleet mode's, one per lease: result.partial.lease-<token>.tif and
  // quality_map.lease-<token>.bin (moved into place when committed), and
  // transform.lease-<token> (recorded in the job's info) with the result.
  std::error_code ec;
  for (std::filesystem::directory_iterator it(path_, ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("result.partial.", 0) == 0 ||
        name.rfind("quality_map.lease-", 0) == 0 ||
        (!keep_result && name.rfind("transform.lease-", 0) == 0)) {
      RemoveAllQuietly(it->path().string());
    }
  }
  if (delete_uploads) RemoveAllQuietly(inputs());
  if (!keep_result) {
    RemoveQuietly(result());
    RemoveAllQuietly(transform());
    RemoveQuietly(quality_map());
  }
}

void JobDir::RemoveAll() const {
  RemoveQuietly(state());
  RemoveAllQuietly(path_);
}

}  // namespace regserve
