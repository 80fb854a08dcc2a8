// Copyright regserve authors.
//
// The short load run (scripts/load_test.sh runs the long one): 32 clients,
// one small job each, against a real regserved. Every job must complete and
// the daemon's RSS must come back to within 10% of its baseline.
#include "tests/robustness/load.h"

#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace regserve {
namespace e2e {
namespace {

TEST(LoadTest, ThirtyTwoClientsOneJobEach) {
  Daemon daemon;
  ASSERT_TRUE(daemon.Start(MakeTempDir("regserve_load"),
                           {"--stream_tile_size=64", "--max_queue=64"}));
  load::LoadOptions o;
  o.address = daemon.address();
  o.daemon_pid = daemon.pid();
  o.clients = 32;
  o.jobs_per_client = 1;
  o.fixed_path = TestData("itk_brain/BrainProtonDensitySlice.png");
  o.moving_path = TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
  const load::LoadReport r = load::RunLoad(o);
  fprintf(stderr, "%s", r.Summary().c_str());
  EXPECT_TRUE(r.warm_up_ok);
  EXPECT_EQ(r.submitted, 32);
  EXPECT_EQ(r.completed, 32);
  EXPECT_EQ(r.failed, 0);
  EXPECT_GT(r.rss_baseline, 0);
  EXPECT_LE(r.RssGrowth(), 0.10) << r.Summary();
  EXPECT_EQ(daemon.Stop(), 0);
}

}  // namespace
}  // namespace e2e
}  // namespace regserve
