// Copyright regserve authors.
//
// Streams without a thread each: 1,000 Watch calls open on one running job
// keep regserved's thread count near its fixed size (the stream pump's
// threads, --stream_threads, default 8, plus gRPC's, the pipeline's and the
// unary pool's), all of them get the job's events, and all of them end
// when the job is cancelled. The figures are printed for comparison.
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/regserve_client.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"
#include "tests/robustness/load.h"

namespace regserve {
namespace e2e {
namespace {

// The daemon's default --stream_threads, and what it runs besides them.
constexpr int kStreamThreads = 8;
constexpr int kFixedOverhead = 100;
constexpr int kWatchers = 1000;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(StreamPoolE2eTest, AThousandWatchersOfARunningJob) {
  // An elastix that sleeps first: the job stays in its registration stage.
  const std::string wrapper_dir = MakeTempDir("regserve_pool_wrapper");
  const std::string wrapper = wrapper_dir + "/elastix";
  {
    std::ofstream out(wrapper);
    out << "#!/bin/sh\nsleep 300\nexec '" << REGSERVE_ELASTIX << "' \"$@\"\n";
  }
  chmod(wrapper.c_str(), 0755);
  Daemon daemon;
  ASSERT_TRUE(daemon.Start(MakeTempDir("regserve_pool_data"),
                           {"--elastix_threads=1", "--elastix=" + wrapper,
                            absl::StrCat("--max_streams=", kWatchers + 10)}))
      << ReadAll(daemon.stderr_path());
  RegistrationClient::Options o;
  o.address = daemon.address();
  o.timeout = absl::Seconds(60);
  RegistrationClient client(o);
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  std::string id;
  client.Submit(spec,
                {TestData("itk_brain/BrainProtonDensitySlice.png"),
                 TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png")},
                [&](const v1::JobEvent& e) {
                  id = e.job_id();
                  return !e.has_accepted();  // hang up; the job goes on
                });
  ASSERT_FALSE(id.empty());
  v1::JobStatus job;
  for (const absl::Time end = absl::Now() + absl::Seconds(60);
       absl::Now() < end; absl::SleepFor(absl::Milliseconds(50))) {
    if (client.GetJob(id, &job).ok() && job.state() == v1::JOB_STATE_RUNNING &&
        job.stage() == v1::STAGE_REGISTRATION) {
      break;
    }
  }
  ASSERT_EQ(job.state(), v1::JOB_STATE_RUNNING) << job.DebugString();

  load::WatchFloodOptions w;
  w.address = daemon.address();
  w.daemon_pid = daemon.pid();
  w.job_id = id;
  w.streams = kWatchers;
  load::WatchFloodReport flood = load::RunWatchFlood(w);
  fprintf(stderr, "%s", flood.Summary().c_str());
  EXPECT_EQ(flood.got_event, kWatchers) << flood.Summary();
  EXPECT_EQ(flood.ended_early, 0) << flood.Summary();
  EXPECT_GT(flood.threads_open, 0);
  EXPECT_LE(flood.threads_open, kStreamThreads + kFixedOverhead)
      << "daemon threads with " << kWatchers << " streams open";

  // The job's end reaches every watcher.
  v1::CancelResponse cancelled;
  ASSERT_TRUE(client.Cancel(id, &cancelled).ok());
  flood = load::FinishWatchFlood(std::move(flood), /*cancel=*/false,
                                 absl::Seconds(60));
  fprintf(stderr, "%s", flood.Summary().c_str());
  EXPECT_EQ(flood.ended, kWatchers);
  EXPECT_EQ(flood.ended_cancelled, kWatchers);
  EXPECT_EQ(daemon.Stop(), 0) << ReadAll(daemon.stderr_path());
}

}  // namespace
}  // namespace e2e
}  // namespace regserve
