// Copyright regserve authors.
//
// MakeTestTempDir: a fresh directory under $TMPDIR (default /tmp) for one
// test, removed with everything in it when the test program exits. Test-only.
//
// Thread safety: MakeTestTempDir may be called from any thread.
#ifndef REGSERVE_CORE_REGISTRATION_TEST_TEMP_DIR_H_
#define REGSERVE_CORE_REGISTRATION_TEST_TEMP_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

namespace regserve {

class TestTempDirs {
 public:
  ~TestTempDirs() {
    for (const std::string& d : dirs_) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  }
  std::string Make(const std::string& prefix) {
    const char* tmp = getenv("TMPDIR");
    std::string tmpl =
        std::string(tmp && *tmp ? tmp : "/tmp") + "/" + prefix + "_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) return "";
    std::lock_guard<std::mutex> lock(mu_);
    dirs_.emplace_back(buf.data());
    return dirs_.back();
  }

 private:
  std::mutex mu_;
  std::vector<std::string> dirs_;
};

// Returns "" if the directory could not be created.
inline std::string MakeTestTempDir(const std::string& prefix) {
  static TestTempDirs dirs;
  return dirs.Make(prefix);
}

}  // namespace regserve

#endif  // REGSERVE_CORE_REGISTRATION_TEST_TEMP_DIR_H_
