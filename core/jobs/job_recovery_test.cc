// Copyright regserve authors.
//
// JobManager durability: restarts and recovery, moved or damaged data
// directories, shutdown checkpoints, retention, full disks.
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "core/jobs/job_manager.h"
#include "core/jobs/job_manager_test_fixture.h"

namespace regserve {
namespace jobs_test {
namespace {

TEST_F(JobManagerTest, RestartRecovery) {
  opts_.max_attempts = 2;
  std::string queued1, queued2, uploading, running1, running2, done;
  {
    auto m = Make(FakeEnv(0));
    ASSERT_NE(m, nullptr);
    JobSpec spec = BrainSpec();
    queued1 = *m->CreateJob(spec, "");
    spec.priority = 2;
    queued2 = *m->CreateJob(spec, "");
    uploading = *m->CreateJob(UploadSpec(), "");
    ASSERT_OK(m->AppendUpload(
        uploading, ImageRole::kFixed,
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>("abc"), 3)));
    running1 = *m->CreateJob(BrainSpec(), "");
    running2 = *m->CreateJob(BrainSpec(), "");
  }
  // Simulate a crash mid-stage: rewrite two state files as running.
  auto set_running = [&](const std::string& id, Stage stage, int attempts) {
    JobRecord rec;
    ASSERT_OK(DecodeJobSpec(ReadFileBytes(JobDir(id) + "/spec"), &rec));
    ASSERT_OK(DecodeJobState(ReadFileBytes(JobDir(id) + "/state"), &rec));
    rec.info.state = JobState::kRunning;
    rec.info.stage = stage;
    rec.info.attempts = attempts;
    ASSERT_OK(DefaultJobFileSystem()->WriteFileAtomic(JobDir(id) + "/state",
                                                      EncodeJobState(rec)));
  };
  set_running(running1, Stage::kRegistration, 1);
  set_running(running2, Stage::kWarp, 2);
  // Debris of a creation that never finished: no state file.
  fs::create_directories(JobDir("00000000000000000000000000000000"));

  {
    auto m = Make(FakeEnv(0));
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->GetJob(queued1, "")->state, JobState::kQueued);
    EXPECT_EQ(m->GetJob(queued2, "")->queue_position, 1);  // priority 2
    JobInfo u = *m->GetJob(uploading, "");
    EXPECT_EQ(u.state, JobState::kFailed);
    EXPECT_THAT(u.failure.message(),
                HasSubstr("upload interrupted by a daemon restart"));
    EXPECT_FALSE(fs::exists(JobDir(uploading) + "/inputs"));
    JobInfo r1 = *m->GetJob(running1, "");
    EXPECT_EQ(r1.state, JobState::kQueued);
    EXPECT_EQ(r1.attempts, 1);
    JobInfo r2 = *m->GetJob(running2, "");
    EXPECT_EQ(r2.state, JobState::kFailed);
    EXPECT_EQ(r2.failure.message(),
              "interrupted by a daemon restart during warp (attempt 2)");
    EXPECT_FALSE(fs::exists(JobDir("00000000000000000000000000000000")));
    EXPECT_EQ(m->GetStats().queued, 3);
  }
  // A third start runs what is queued; new ids keep FIFO order after them.
  auto m = Make(FakeEnv(1));
  ASSERT_NE(m, nullptr);
  done = *m->CreateJob(BrainSpec(), "");
  for (const std::string& id : {queued1, queued2, running1, done}) {
    JobInfo info = WaitTerminal(m.get(), id);
    EXPECT_EQ(info.state, JobState::kCompleted) << info.failure;
  }
  EXPECT_EQ(m->GetJob(running1, "")->attempts, 2);
}

// Sum of the tile areas of `d`, and whether every tile lies in the image.
int64_t TiledArea(const Drained& d, int64_t width, int64_t height,
                  bool* inside) {
  int64_t area = 0;
  *inside = true;
  for (const JobEvent& e : d.events) {
    if (e.kind != JobEvent::Kind::kTile) continue;
    area += e.rect.w * e.rect.h;
    *inside = *inside && e.rect.w > 0 && e.rect.h > 0 &&
              e.rect.x + e.rect.w <= width && e.rect.y + e.rect.h <= height;
  }
  return area;
}

std::vector<std::array<int64_t, 5>> TileRects(const Drained& d) {
  std::vector<std::array<int64_t, 5>> rects;
  for (const JobEvent& e : d.events) {
    if (e.kind != JobEvent::Kind::kTile) continue;
    rects.push_back({e.tile_index, e.rect.x, e.rect.y, e.rect.w, e.rect.h});
  }
  return rects;
}

TEST_F(JobManagerTest, StreamTileSizeMustSuitTheTiffWriter) {
  for (int64_t tile : {0, 8, 24, 8208, 16384}) {
    opts_.stream_tile_size = tile;
    auto m = CreateJobManagerWithEnv(opts_, scheduler_.get(), probe_.get(),
                                     FakeEnv());
    ASSERT_FALSE(m.ok()) << tile;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(m.status().message()),
                testing::HasSubstr("[16, 8192]"));
  }
  // The largest accepted edge writes and streams a result.
  opts_.stream_tile_size = 8192;
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  const std::string id = *m->CreateJob(BrainSpec(), "");
  ASSERT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
  EXPECT_EQ(m->GetJob(id, "")->tiles.count(), 1);
}

TEST_F(JobManagerTest, RestartWithAnotherTileSizeKeepsAFinishedJobsTiles) {
  // A client that has tiles 0..4 of a finished job resumes with from_tile=5
  // after the daemon restarted with another --stream_tile_size: it must get
  // the tiles after the ones it has, in the same grid, and the whole result.
  std::string id;
  std::vector<std::array<int64_t, 5>> before;
  {
    auto m = Make(FakeEnv());
    ASSERT_NE(m, nullptr);
    id = *m->CreateJob(BrainSpec(), "");
    ASSERT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
    EXPECT_EQ(m->GetJob(id, "")->tiles.count(), 12);  // 64 px: 3 x 4
    auto stream = m->OpenEventStream(id, "", 0);
    ASSERT_TRUE(stream.ok()) << stream.status();
    before = TileRects(Drain(stream->get()));
    ASSERT_EQ(before.size(), 12u);
  }
  for (int64_t tile : {128, 32}) {
    opts_.stream_tile_size = tile;
    auto m = Make(FakeEnv());
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->GetJob(id, "")->tiles.edge(), 64) << "daemon tile " << tile;
    EXPECT_EQ(m->GetJob(id, "")->tiles.count(), 12) << "daemon tile " << tile;
    auto stream = m->OpenEventStream(id, "", 0);
    ASSERT_TRUE(stream.ok()) << stream.status();
    Drained d = Drain(stream->get());
    ASSERT_OK(d.end);
    EXPECT_EQ(TileRects(d), before) << "daemon tile " << tile;
    bool inside = false;
    EXPECT_EQ(TiledArea(d, 181, 217, &inside), 181 * 217);
    EXPECT_TRUE(inside);
    ASSERT_NE(d.Last(), nullptr);
    EXPECT_EQ(d.Last()->kind, JobEvent::Kind::kCompleted);
    // The quality summary and map survive the restart.
    EXPECT_TRUE(d.Last()->info.quality.computed);
    ASSERT_NE(d.Last()->info.quality_map, nullptr);
    EXPECT_EQ(d.Last()->info.quality_map->thumbnail.width(), 181);

    auto resumed = m->OpenEventStream(id, "", 5);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    const std::vector<std::array<int64_t, 5>> rest(before.begin() + 5,
                                                   before.end());
    EXPECT_EQ(TileRects(Drain(resumed->get())), rest) << "daemon tile " << tile;

    // A job this daemon finishes uses its own tile size.
    const std::string fresh = *m->CreateJob(BrainSpec(), "");
    ASSERT_EQ(WaitTerminal(m.get(), fresh).state, JobState::kCompleted);
    EXPECT_EQ(m->GetJob(fresh, "")->tiles.edge(), tile);
    EXPECT_EQ(m->GetJob(fresh, "")->tiles.count(),
              ((181 + tile - 1) / tile) * ((217 + tile - 1) / tile));
  }
}

TEST_F(JobManagerTest, MovedDataDirKeepsFinishedResults) {
  std::string id;
  {
    auto m = Make(FakeEnv());
    ASSERT_NE(m, nullptr);
    id = *m->CreateJob(UploadSpec(), "");
    ASSERT_OK(Upload(m.get(), id, ImageRole::kFixed,
                     ReadFileBytes(BrainFixed()), 4096));
    ASSERT_OK(Upload(m.get(), id, ImageRole::kMoving,
                     ReadFileBytes(BrainMoving()), 4096));
    ASSERT_OK(m->FinishUpload(id));
    ASSERT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
  }
  const std::string moved = tmp_.path() + "/moved_data";
  fs::rename(opts_.data_dir, moved);
  opts_.data_dir = moved;
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  JobInfo info = *m->GetJob(id, "");
  EXPECT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_EQ(info.result_path, JobDir(id) + "/result.tif");
  EXPECT_TRUE(absl::StartsWith(info.transform_dir, JobDir(id)))
      << info.transform_dir;
  for (const std::string& f : info.transform_files) {
    EXPECT_TRUE(absl::StartsWith(f, JobDir(id))) << f;
    EXPECT_TRUE(fs::exists(f)) << f;
  }
  auto stream = m->OpenEventStream(id, "", 0);
  ASSERT_TRUE(stream.ok()) << stream.status();
  Drained d = Drain(stream->get());
  ASSERT_OK(d.end);
  EXPECT_EQ(d.Count(JobEvent::Kind::kTile), 12);
}

TEST_F(JobManagerTest, UnreadableStateFileKeepsTheJobDirectory) {
  std::string id;
  {
    auto m = Make(FakeEnv());
    ASSERT_NE(m, nullptr);
    id = *m->CreateJob(BrainSpec(), "");
    ASSERT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
  }
  // A state "file" that cannot be read (a directory: this works as root,
  // where permission bits would not stop the read).
  fs::remove(JobDir(id) + "/state");
  fs::create_directory(JobDir(id) + "/state");
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  EXPECT_FALSE(m->GetJob(id, "").ok());
  EXPECT_TRUE(fs::exists(JobDir(id) + "/result.tif"));
}

TEST_F(JobManagerTest, NewEntriesAreSyncedBeforeTheyAreAcknowledged) {
  FullDiskFileSystem disk;  // not full: records what it syncs
  JobManagerEnv env = FakeEnv();
  env.fs = &disk;
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  absl::StatusOr<std::string> id = m->CreateJob(UploadSpec(), "");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_TRUE(disk.Synced(JobDir(*id)));  // its entry in jobs/
  ASSERT_OK(Upload(m.get(), *id, ImageRole::kFixed, ReadFileBytes(BrainFixed()),
                   4096));
  ASSERT_OK(Upload(m.get(), *id, ImageRole::kMoving,
                   ReadFileBytes(BrainMoving()), 4096));
  ASSERT_OK(m->FinishUpload(*id));
  EXPECT_TRUE(disk.Synced(JobDir(*id) + "/inputs/fixed.png"));
  EXPECT_TRUE(disk.Synced(JobDir(*id) + "/inputs/moving.png"));
  ASSERT_EQ(WaitTerminal(m.get(), *id).state, JobState::kCompleted);
  EXPECT_TRUE(disk.Synced(JobDir(*id) + "/result.tif"));  // after the rename
}

TEST_F(JobManagerTest, ShutdownCheckpointsRunningJobAsQueued) {
  absl::Notification started;
  fake_.hook = [&](const RegistrationRequest& r) {
    return WaitForCancel(r, &started);
  };
  std::string id;
  {
    auto m = Make(FakeEnv());
    ASSERT_NE(m, nullptr);
    id = *m->CreateJob(BrainSpec(), "");
    auto stream = m->OpenEventStream(id, "", 0);
    started.WaitForNotification();
    m->Shutdown();
    EXPECT_EQ(m->CreateJob(BrainSpec(), "").status().code(),
              absl::StatusCode::kUnavailable);
    absl::Status end = Drain(stream->get(), absl::Seconds(5)).end;
    EXPECT_EQ(end.code(), absl::StatusCode::kUnavailable) << end;
  }
  fake_.hook = nullptr;
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  JobInfo info = WaitTerminal(m.get(), id);
  EXPECT_EQ(info.state, JobState::kCompleted) << info.failure;
  // Both runs count; the checkpointed one not against max_attempts.
  EXPECT_EQ(info.attempts, 2);
}

TEST_F(JobManagerTest, RetentionExpiresFinishedJobs) {
  opts_.retention = absl::Milliseconds(200);
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  std::string id = *m->CreateJob(BrainSpec(), "");
  ASSERT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((m->GetJob(id, "").ok() || fs::exists(JobDir(id))) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(m->GetJob(id, "").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(JobDir(id)));
}

TEST_F(JobManagerTest, FullDiskGivesClearStatusAndNoCorruptJob) {
  FullDiskFileSystem disk;
  JobManagerEnv env = FakeEnv(0);
  env.fs = &disk;
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  disk.full = true;
  absl::Status s = m->CreateJob(BrainSpec(), "").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("data_dir is full"));
  EXPECT_TRUE(m->ListJobs("").empty());
  EXPECT_TRUE(fs::is_empty(opts_.data_dir + "/jobs"));

  // An upload that hits a full disk fails the job and removes its inputs.
  disk.full = false;
  std::string id = *m->CreateJob(UploadSpec(), "");
  disk.full = true;
  s = Upload(m.get(), id, ImageRole::kFixed, ReadFileBytes(BrainFixed()),
             1 << 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(m->GetJob(id, "")->state, JobState::kFailed);
  EXPECT_FALSE(fs::exists(JobDir(id) + "/inputs"));
  disk.full = false;
  m.reset();
  // Recovery sees a consistent store: the failed upload is failed.
  m = Make(FakeEnv(0));
  ASSERT_NE(m, nullptr);
  ASSERT_EQ(m->ListJobs("").size(), 1u);
  EXPECT_TRUE(IsTerminal(m->GetJob(id, "")->state));
}

}  // namespace
}  // namespace jobs_test
}  // namespace regserve
