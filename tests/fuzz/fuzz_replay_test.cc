// Copyright regserve authors.
//
// Replays a fuzz target's corpus as an ordinary unit test, in every build
// (gcc or clang, with or without sanitizers): each file under the corpus
// folders, seeds and crash regressions alike, is handed once to the target's
// LLVMFuzzerTestOneInput, which aborts when one of its properties is
// violated. The folders come from the compile definition
// REGSERVE_FUZZ_CORPUS ("dir1,dir2"), set in tests/fuzz/CMakeLists.txt; the
// file being replayed is printed first, so a crash names it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_split.h"
#include "core/common/file_util.h"
#include "gtest/gtest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

std::vector<std::string> CorpusFiles() {
  std::vector<std::string> files;
  for (absl::string_view dir :
       absl::StrSplit(REGSERVE_FUZZ_CORPUS, ',', absl::SkipEmpty())) {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(std::string(dir), ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file() && it->path().filename() != "README.md") {
        files.push_back(it->path().string());
      }
    }
  }
  return files;
}

TEST(FuzzReplay, EveryCorpusFilePasses) {
  const std::vector<std::string> files = CorpusFiles();
  ASSERT_FALSE(files.empty()) << "no corpus under " << REGSERVE_FUZZ_CORPUS;
  for (const std::string& path : files) {
    const absl::StatusOr<std::string> read = regserve::ReadFileToString(path);
    ASSERT_TRUE(read.ok()) << read.status();
    const std::string& bytes = *read;
    fprintf(stderr, "replaying %s (%zu bytes)\n", path.c_str(), bytes.size());
    EXPECT_EQ(LLVMFuzzerTestOneInput(
                  reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
              0)
        << path;
  }
  fprintf(stderr, "%zu files replayed\n", files.size());
}

}  // namespace
