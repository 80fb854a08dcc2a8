// Copyright regserve authors.
#include "tests/e2e/e2e_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/common/file_util.h"
#include "core/image/image_io.h"

namespace regserve {
namespace e2e {
namespace {

std::string ReadFile(const std::string& path) {
  return ReadFileToString(path).value_or("");  // "" when missing
}

double SampleAt(const Image& img, int64_t x, int64_t y) {
  const size_t i = (static_cast<size_t>(y) * img.width() + x) * img.channels();
  switch (img.type()) {
    case SampleType::kUInt8:
      return img.data()[i];
    case SampleType::kUInt16:
      return reinterpret_cast<const uint16_t*>(img.data())[i];
    case SampleType::kFloat32:
      return reinterpret_cast<const float*>(img.data())[i];
  }
  return 0;
}

}  // namespace

std::string BinaryDir() {
  const char* d = getenv("REGSERVE_BINARY_DIR");
  return d != nullptr ? d : ".";
}

std::string TestData(const std::string& relative) {
  const char* d = getenv("REGSERVE_TEST_DATA");
  return absl::StrCat(d != nullptr ? d : "tests/data", "/", relative);
}

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = getenv("TMPDIR");
  std::string tmpl =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", prefix, "_XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const char* made = mkdtemp(buf.data());
  return made != nullptr ? made : "";
}

Daemon::~Daemon() {
  if (pid_ > 0) Kill();
}

bool Daemon::Start(const std::string& data_dir,
                   const std::vector<std::string>& flags) {
  log_dir_ = MakeTempDir("regserved_log");
  const std::string out_path = log_dir_ + "/regserved.out";
  std::vector<std::string> argv = {BinaryDir() + "/server/regserved",
                                   "--listen=127.0.0.1:0",
                                   "--data_dir=" + data_dir};
  argv.insert(argv.end(), flags.begin(), flags.end());
  pid_ = fork();
  if (pid_ == 0) {
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err =
        open(stderr_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    const std::string out = ReadFile(out_path);
    const size_t at = out.find("regserved listening on ");
    const size_t eol = at == std::string::npos ? at : out.find('\n', at);
    if (eol != std::string::npos) {
      address_ = out.substr(at + 23, eol - at - 23);
      return true;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

int Daemon::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void Daemon::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

CommandResult RunRegctl(const std::string& server,
                        const std::vector<std::string>& args) {
  const std::string dir = MakeTempDir("regctl_run");
  std::vector<std::string> argv = {BinaryDir() + "/client/regctl", "--server",
                                   server};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult result;
  const pid_t pid = fork();
  if (pid == 0) {
    const int out =
        open((dir + "/out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err =
        open((dir + "/err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    std::vector<char*> a;
    for (std::string& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    execv(a[0], a.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = ReadFile(dir + "/out");
  result.err = ReadFile(dir + "/err");
  return result;
}

std::vector<pid_t> DescendantsNamed(pid_t root, const std::string& comm) {
  // Parent links of every process.
  std::vector<std::pair<pid_t, pid_t>> links;  // pid, ppid
  std::vector<std::pair<pid_t, std::string>> names;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return {};
  while (dirent* e = readdir(proc)) {
    char* end = nullptr;
    const long pid = strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
    const size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    std::vector<std::string> rest = absl::StrSplit(stat.substr(close + 2), ' ');
    if (rest.size() < 2) continue;
    links.emplace_back(pid, atoi(rest[1].c_str()));
    names.emplace_back(pid, stat.substr(open + 1, close - open - 1));
  }
  closedir(proc);
  std::vector<pid_t> family = {root}, found;
  for (size_t i = 0; i < family.size(); ++i) {
    for (const auto& l : links) {
      if (l.second == family[i]) family.push_back(l.first);
    }
  }
  for (const auto& n : names) {
    if (n.second != comm) continue;
    for (size_t i = 1; i < family.size(); ++i) {
      if (family[i] == n.first) found.push_back(n.first);
    }
  }
  return found;
}

double FileNcc(const std::string& a_path, const std::string& b_path) {
  auto a = ReadImageFile(a_path);
  auto b = ReadImageFile(b_path);
  if (!a.ok() || !b.ok()) return std::numeric_limits<double>::quiet_NaN();
  // b on a's grid with the identity transform (0 outside b).
  const auto b_at = [&](int64_t x, int64_t y) {
    return x < b->width() && y < b->height() ? SampleAt(*b, x, y) : 0.0;
  };
  const int64_t n = a->width() * a->height();
  double ma = 0, mb = 0;
  for (int64_t y = 0; y < a->height(); ++y)
    for (int64_t x = 0; x < a->width(); ++x) {
      ma += SampleAt(*a, x, y);
      mb += b_at(x, y);
    }
  ma /= n;
  mb /= n;
  double sab = 0, saa = 0, sbb = 0;
  for (int64_t y = 0; y < a->height(); ++y)
    for (int64_t x = 0; x < a->width(); ++x) {
      const double da = SampleAt(*a, x, y) - ma, db = b_at(x, y) - mb;
      sab += da * db;
      saa += da * da;
      sbb += db * db;
    }
  return sab / std::sqrt(saa * sbb);
}

bool SamePixels(const std::string& a_path, const std::string& b_path,
                std::string* why) {
  auto a = ReadImageFile(a_path);
  auto b = ReadImageFile(b_path);
  if (!a.ok() || !b.ok()) {
    *why = "cannot read: " +
           (!a.ok() ? a.status().ToString() : b.status().ToString());
    return false;
  }
  if (a->width() != b->width() || a->height() != b->height() ||
      a->channels() != b->channels() || a->type() != b->type()) {
    *why = absl::StrCat("specs differ: ", a->spec().DebugString(), " vs ",
                        b->spec().DebugString());
    return false;
  }
  if (std::memcmp(a->data(), b->data(), a->size_bytes()) != 0) {
    *why = "pixels differ";
    return false;
  }
  return true;
}

}  // namespace e2e
}  // namespace regserve
