// Copyright regserve authors.
#include "core/common/malloc_policy.h"

#include <cstdlib>
#include <cstring>

#include "core/common/testing/peak_rss.h"
#include "gtest/gtest.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace regserve {
namespace {

// After a 4 MiB block is freed, glibc's default would serve a 2 MiB one
// from its arena (the threshold having risen to 4 MiB); with the policy it
// is still mmapped, so it goes back to the kernel when freed.
TEST(MallocPolicyTest, LargeBlocksStayMmappedAfterLargerFrees) {
#if !defined(__GLIBC__) || !defined(M_MMAP_THRESHOLD)
  GTEST_SKIP() << "not glibc";
#else
  if (testing_util::kSanitized) GTEST_SKIP() << "the sanitizer owns malloc";
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr) {
    GTEST_SKIP() << "MALLOC_MMAP_THRESHOLD_ is set";
  }
  ASSERT_TRUE(BoundMallocCaching());
  void* big = std::malloc(4 << 20);
  ASSERT_NE(big, nullptr);
  std::memset(big, 1, 4 << 20);
  std::free(big);
  const size_t before = mallinfo2().hblkhd;
  void* block = std::malloc(2 << 20);
  ASSERT_NE(block, nullptr);
  std::memset(block, 2, 2 << 20);  // used, so not elided
  EXPECT_GE(mallinfo2().hblkhd, before + (2u << 20));
  std::free(block);
  EXPECT_LT(mallinfo2().hblkhd, before + (2u << 20));
#endif
}

}  // namespace
}  // namespace regserve
