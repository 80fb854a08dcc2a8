// Copyright regserve authors.
#include "core/jobs/tile_spool.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/common/file_util.h"

namespace regserve {
namespace jobs_internal {
namespace {

namespace fs = std::filesystem;

// The header line of a tile file: format, index, the grid and the samples.
constexpr char kMagic[] = "regserve-tile-1";

}  // namespace

void TileSpool::Mark(const std::string& reader) const {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  const std::string path = absl::StrCat(dir_, "/watch.", reader);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) {
    futimens(fd, nullptr);  // now
    close(fd);
  }
}

void TileSpool::Unmark(const std::string& reader) const {
  std::remove(absl::StrCat(dir_, "/watch.", reader).c_str());
  // The last reader of a finished job takes the directory its mark may
  // have made again (rmdir fails while tiles or other marks are there).
  rmdir(dir_.c_str());
}

bool TileSpool::Watched(absl::Time now) const {
  std::error_code ec;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (it->path().filename().string().rfind("watch.", 0) != 0) continue;
    struct stat st;
    if (stat(it->path().c_str(), &st) != 0) continue;
    const absl::Time marked = absl::TimeFromTimespec(st.st_mtim);
    if (now - marked < kMarkLifetime) return true;
  }
  return false;
}

absl::Status TileSpool::Write(const JobEvent& tile) const {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  const std::string path = absl::StrCat(dir_, "/", tile.tile_index);
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << kMagic << ' ' << tile.tile_index << ' ' << tile.grid.width() << ' '
        << tile.grid.height() << ' ' << tile.grid.edge() << ' ' << tile.channels
        << ' ' << static_cast<int>(tile.sample_type) << ' ' << tile.data.size()
        << '\n';
    out.write(tile.data.data(), static_cast<std::streamsize>(tile.data.size()));
    if (!out) {
      std::remove(tmp.c_str());
      return absl::InternalError(absl::StrCat("cannot write ", path));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", tmp));
  }
  return absl::OkStatus();
}

std::optional<JobEvent> TileSpool::Read(int64_t index) const {
  std::ifstream in(absl::StrCat(dir_, "/", index), std::ios::binary);
  if (!in) return std::nullopt;
  std::string magic, line;
  int64_t got = -1, width = 0, height = 0, edge = 0;
  int channels = 0, type = 0;
  size_t bytes = 0;
  if (!std::getline(in, line)) return std::nullopt;
  std::istringstream header(line);
  header >> magic >> got >> width >> height >> edge >> channels >> type >>
      bytes;
  if (!header || magic != kMagic || got != index || edge <= 0) {
    return std::nullopt;
  }
  JobEvent ev;
  ev.kind = JobEvent::Kind::kTile;
  ev.stage = Stage::kWarp;
  ev.tile_index = index;
  ev.grid = TileGrid(width, height, edge);
  if (index >= ev.grid.count()) return std::nullopt;
  ev.rect = ev.grid.rect(index);
  ev.channels = channels;
  ev.sample_type = static_cast<SampleType>(type);
  ev.encoding = TileEncoding::kRaw;
  ev.data.resize(bytes);
  in.read(ev.data.data(), static_cast<std::streamsize>(bytes));
  const size_t expected =
      static_cast<size_t>(ev.rect.w) * static_cast<size_t>(ev.rect.h) *
      static_cast<size_t>(channels) * SampleSize(ev.sample_type);
  if (!in || bytes != expected) return std::nullopt;
  return ev;
}

}  // namespace jobs_internal
}  // namespace regserve
