// Copyright regserve authors.
//
// JobManager events: readers of queued, running and finished jobs, tile
// replay and live tiles, listing.
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "core/common/status_macros.h"
#include "core/jobs/event_stream.h"
#include "core/jobs/job_manager.h"
#include "core/jobs/job_manager_test_fixture.h"

namespace regserve {
namespace jobs_test {
namespace {

TEST_F(JobManagerTest, SlowReaderOfAQueuedJobStaysBounded) {
  opts_.max_queue = 200;
  auto m = Make(FakeEnv(0));  // no pipeline threads: every job stays queued
  ASSERT_NE(m, nullptr);
  std::vector<std::string> ahead;
  for (int i = 0; i < 150; ++i) ahead.push_back(*m->CreateJob(BrainSpec(), ""));
  const std::string last = *m->CreateJob(BrainSpec(), "");
  // Many readers that come and go on the quiet job, and one that does not
  // read while its queue position changes 150 times.
  for (int i = 0; i < 50; ++i) {
    auto gone = m->OpenEventStream(last, "", 0);
    ASSERT_TRUE(gone.ok());
  }
  auto stream = m->OpenEventStream(last, "", 0);
  ASSERT_TRUE(stream.ok()) << stream.status();
  for (const std::string& id : ahead) ASSERT_OK(m->Cancel(id, ""));
  const int64_t position = m->GetJob(last, "")->queue_position;
  EXPECT_LE(position, 1);  // at the head now
  Drained d = Drain(stream->get(), absl::Milliseconds(300));
  EXPECT_EQ(d.end.code(), absl::StatusCode::kDeadlineExceeded) << d.end;
  EXPECT_LE(d.Count(JobEvent::Kind::kQueued), 2);
  ASSERT_FALSE(d.events.empty());
  EXPECT_EQ(d.events.back().kind, JobEvent::Kind::kQueued);
  EXPECT_EQ(d.events.back().queue_position, position);
}

TEST_F(JobManagerTest, FinishedJobsDropTheirParametersFromMemoryOnly) {
  JobSpec spec = BrainSpec();
  spec.custom_parameters = {"(Transform \"EulerTransform\")\n" +
                            std::string(100000, ' ') + "\n"};
  std::string id;
  {
    auto m = Make(FakeEnv());
    ASSERT_NE(m, nullptr);
    absl::StatusOr<std::string> created = m->CreateJob(spec, "");
    ASSERT_TRUE(created.ok()) << created.status();
    id = *created;
    ASSERT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
    EXPECT_TRUE(m->GetJob(id, "")->spec.custom_parameters.empty());
  }
  JobRecord rec;
  ASSERT_OK(DecodeJobSpec(ReadFileBytes(JobDir(id) + "/spec"), &rec));
  EXPECT_EQ(rec.info.spec.custom_parameters, spec.custom_parameters);
  auto m = Make(FakeEnv());  // and after a restart
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->GetJob(id, "")->spec.custom_parameters.empty());
}

TEST_F(JobManagerTest, ListJobPagesAreConsistentWhileJobsArrive) {
  opts_.max_queue = 400;
  auto m = Make(FakeEnv(0));  // nothing runs
  ASSERT_NE(m, nullptr);
  std::vector<std::string> ids;  // oldest first
  for (int i = 0; i < 250; ++i)
    ids.push_back(*m->CreateJob(BrainSpec(), "alice"));
  ASSERT_TRUE(m->CreateJob(BrainSpec(), "bob").ok());
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    absl::StatusOr<JobManager::JobPage> page =
        m->ListJobPage("alice", 100, token);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const JobInfo& j : page->jobs) seen.push_back(j.id);
    token = page->next_page_token;
    if (++pages == 1) {
      // A job submitted between pages goes to the front, not into page 2.
      ASSERT_TRUE(m->CreateJob(BrainSpec(), "alice").ok());
    }
  } while (!token.empty());
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(seen.size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i)
    EXPECT_EQ(seen[i], ids[ids.size() - 1 - i]) << i;
  // Defaults and errors.
  absl::StatusOr<JobManager::JobPage> all = m->ListJobPage("alice", 0, "");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->jobs.size(), 100u);
  all = m->ListJobPage("alice", 5000, "");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->jobs.size(), 251u);
  EXPECT_TRUE(all->next_page_token.empty());
  EXPECT_EQ(m->ListJobPage("alice", -1, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->ListJobPage("alice", 10, "x12").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->ListJobPage("alice", 10, "s").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->ListJobs("alice").size(), 251u);
  EXPECT_EQ(m->ListJobs("bob").size(), 1u);
}

TEST_F(JobManagerTest, UploadToACancelledJobIsCancelled) {
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  const std::string id = *m->CreateJob(UploadSpec(), "");
  ASSERT_OK(Upload(m.get(), id, ImageRole::kFixed, "abc", 3));
  ASSERT_OK(m->Cancel(id, ""));
  absl::Status s = Upload(m.get(), id, ImageRole::kFixed, "def", 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  s = m->FinishUpload(id);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
}

TEST_F(JobManagerTest, FinishedJobReplaysTilesFromIndex) {
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  std::string id = *m->CreateJob(BrainSpec(), "");
  JobInfo info = WaitTerminal(m.get(), id);
  ASSERT_EQ(info.state, JobState::kCompleted);
  ASSERT_EQ(info.tiles.count(), 12);
  absl::StatusOr<Image> result = ReadImageFile(info.result_path);
  ASSERT_TRUE(result.ok());

  auto stream = m->OpenEventStream(id, "", 5);
  ASSERT_TRUE(stream.ok());
  Drained d = Drain(stream->get());
  ASSERT_OK(d.end);
  EXPECT_EQ(d.events.front().kind, JobEvent::Kind::kAccepted);
  EXPECT_EQ(d.Last()->kind, JobEvent::Kind::kCompleted);
  ASSERT_EQ(d.Count(JobEvent::Kind::kTile), 7);
  int64_t expect = 5;
  for (const JobEvent& e : d.events) {
    if (e.kind != JobEvent::Kind::kTile) continue;
    EXPECT_EQ(e.tile_index, expect);
    EXPECT_EQ(e.rect.x, (expect % 3) * 64);
    EXPECT_EQ(e.rect.y, (expect / 3) * 64);
    EXPECT_EQ(e.rect.w, std::min<int64_t>(64, 181 - e.rect.x));
    EXPECT_EQ(e.rect.h, std::min<int64_t>(64, 217 - e.rect.y));
    EXPECT_EQ(e.encoding, TileEncoding::kRaw);
    EXPECT_EQ(e.channels, result->channels());
    EXPECT_EQ(e.sample_type, SampleType::kUInt8);
    ASSERT_EQ(e.data.size(),
              static_cast<size_t>(e.rect.w * e.rect.h * e.channels));
    // Bytes equal the stored result's pixels.
    for (int64_t y = 0; y < e.rect.h; ++y) {
      ASSERT_EQ(0,
                std::memcmp(e.data.data() + y * e.rect.w * e.channels,
                            result->row(e.rect.y + y) + e.rect.x * e.channels,
                            e.rect.w * e.channels));
    }
    ++expect;
  }

  // from_tile == count: no tiles; beyond: OutOfRange.
  stream = m->OpenEventStream(id, "", 12);
  ASSERT_TRUE(stream.ok());
  d = Drain(stream->get());
  EXPECT_EQ(d.Count(JobEvent::Kind::kTile), 0);
  EXPECT_EQ(d.Last()->kind, JobEvent::Kind::kCompleted);
  EXPECT_EQ(m->OpenEventStream(id, "", 13).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(m->OpenEventStream(id, "", -1).status().code(),
            absl::StatusCode::kInvalidArgument);

  // ReadImageRegion agrees with the stream for an inner, unaligned rectangle.
  absl::StatusOr<Image> region =
      ReadImageRegion(info.result_path, {10, 20, 30, 40});
  ASSERT_TRUE(region.ok()) << region.status();
  for (int64_t y = 0; y < 40; ++y) {
    ASSERT_EQ(0, std::memcmp(region->row(y),
                             result->row(20 + y) + 10 * result->channels(),
                             30 * result->channels()));
  }
}

// Passes every call to the CPU warper, but holds the warp after its first
// piece until `release` is notified, so a test can look at a running warp.
class PausingWarper final : public Warper {
 public:
  PausingWarper(absl::Notification* first, absl::Notification* release)
      : inner_(Warper::Create(WarpDevice::kCpu).value()),
        first_(first),
        release_(release) {}
  absl::StatusOr<WarpStats> Warp(const Image& moving,
                                 const DisplacementField& field,
                                 int64_t out_width, int64_t out_height,
                                 const WarpOptions& options,
                                 const TileCallback& on_tile) override {
    return inner_->Warp(
        moving, field, out_width, out_height, options,
        [&](const TileRect& rect, const Image& tile) -> absl::Status {
          REGSERVE_RETURN_IF_ERROR(on_tile(rect, tile));
          if (!first_->HasBeenNotified()) {
            first_->Notify();
            release_->WaitForNotification();
          }
          return absl::OkStatus();
        });
  }
  WarpDevice device() const override { return WarpDevice::kCpu; }

 private:
  std::unique_ptr<Warper> inner_;
  absl::Notification* first_;
  absl::Notification* release_;
};

// The tiles of a drained stream, checked against the stored result.
void ExpectTilesMatchResult(const Drained& d, const JobInfo& info) {
  absl::StatusOr<Image> result = ReadImageFile(info.result_path);
  ASSERT_TRUE(result.ok()) << result.status();
  int64_t expect = 0;
  for (const JobEvent& e : d.events) {
    if (e.kind != JobEvent::Kind::kTile) continue;
    ASSERT_EQ(e.tile_index, expect);
    ASSERT_EQ(e.rect, info.tiles.rect(expect));
    const size_t line = static_cast<size_t>(e.rect.w * e.channels);
    ASSERT_EQ(e.data.size(), line * static_cast<size_t>(e.rect.h));
    for (int64_t y = 0; y < e.rect.h; ++y) {
      ASSERT_EQ(0, std::memcmp(
                       e.data.data() + y * line,
                       result->row(e.rect.y + y) + e.rect.x * e.channels, line))
          << "tile " << expect << " row " << y;
    }
    ++expect;
  }
  EXPECT_EQ(expect, info.tiles.count());
}

TEST_F(JobManagerTest, TilesStreamWhileTheWarpRuns) {
  absl::Notification first, release;
  JobManagerEnv env = FakeEnv();
  env.create_warper = [&](WarpDevice,
                          int) -> absl::StatusOr<std::unique_ptr<Warper>> {
    return std::unique_ptr<Warper>(new PausingWarper(&first, &release));
  };
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  std::string id = *m->CreateJob(BrainSpec(), "");
  auto early = m->OpenEventStream(id, "", 0);
  ASSERT_TRUE(early.ok());
  // The first tile arrives while the warp is held after its first band.
  Drained d;
  for (;;) {
    JobEvent ev;
    ASSERT_OK((*early)->Next(&ev, absl::Now() + absl::Seconds(30)));
    d.events.push_back(ev);
    if (ev.kind == JobEvent::Kind::kTile) break;
    ASSERT_NE(ev.kind, JobEvent::Kind::kCompleted);
  }
  EXPECT_EQ(d.events.back().tile_index, 0);
  first.WaitForNotification();
  EXPECT_EQ(m->GetJob(id, "")->state, JobState::kRunning);
  // A reader that attaches now, mid-warp, gets every tile too, from the
  // stored result once the job is done.
  auto late = m->OpenEventStream(id, "", 0);
  ASSERT_TRUE(late.ok());
  release.Notify();
  Drained rest = Drain(early->get());
  ASSERT_OK(rest.end);
  for (JobEvent& e : rest.events) d.events.push_back(std::move(e));
  ASSERT_EQ(d.Last()->kind, JobEvent::Kind::kCompleted);
  const JobInfo info = d.Last()->info;
  ExpectTilesMatchResult(d, info);
  Drained late_d = Drain(late->get());
  ASSERT_OK(late_d.end);
  ExpectTilesMatchResult(late_d, info);
}

// The demand the warp streams by: a reader takes live tiles in order, up to
// its fill of unread ones; the next is wanted "later" (the warp may wait for
// it while it writes the band), any other not at all.
TEST(JobEventsTest, TileDemandFollowsTheReadersNextTileAndFill) {
  JobEvents events;
  JobInfo info;
  info.id = "j";
  info.state = JobState::kRunning;
  info.stage = Stage::kWarp;
  info.has_plan = true;
  info.tiles = TileGrid(181, 217, 16);             // 12 x 14 tiles
  EXPECT_EQ(events.Demand(0), TileDemand::kNone);  // no reader yet
  auto stream = events.Open(info, 2, /*shutting_down=*/false);
  ASSERT_TRUE(stream.ok()) << stream.status();
  JobEvent present;  // the accepted event, then the progress
  ASSERT_OK((*stream)->Next(&present, absl::Now()));
  ASSERT_OK((*stream)->Next(&present, absl::Now()));
  EXPECT_EQ(events.Demand(0), TileDemand::kNone);  // before from_tile
  int64_t next = 2;
  while (events.Demand(next) == TileDemand::kNow) {
    EXPECT_EQ(events.Demand(next + 1), TileDemand::kNone);
    JobEvent tile;
    tile.kind = JobEvent::Kind::kTile;
    tile.tile_index = next++;
    events.PublishTile(tile);
    ASSERT_LT(next, 100);
  }
  EXPECT_GE(next - 2, 4);  // a few unread tiles are allowed
  EXPECT_EQ(events.Demand(next), TileDemand::kLater);
  JobEvent got;
  ASSERT_OK((*stream)->Next(&got, absl::Now()));
  EXPECT_EQ(got.kind, JobEvent::Kind::kTile);
  EXPECT_EQ(got.tile_index, 2);
  EXPECT_EQ(events.Demand(next), TileDemand::kNow);  // room for one more
  (*stream)->Close();
  EXPECT_EQ(events.Demand(next), TileDemand::kNone);
}

}  // namespace
}  // namespace jobs_test
}  // namespace regserve
