// Copyright regserve authors.
//
// Unit tests of the JobManager: submission, uploads, validation, the queue,
// the pipeline, cancellation, resources (fixture: job_manager_test_fixture.h).
#include "core/jobs/job_manager.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "core/jobs/job_manager_test_fixture.h"

namespace regserve {
namespace jobs_test {
namespace {

TEST_F(JobManagerTest, ServerSideJobCompletesAndMatchesFixed) {
  // The job waits for the reader before it decodes, so that the reader
  // sees every stage's progress (a reader that attaches later gets the
  // present stage only; on a loaded machine the decode can be over first).
  absl::Notification reader_attached;
  JobManagerEnv env = FakeEnv();
  env.before_stage = [&](const std::string&, Stage stage) {
    if (stage == Stage::kDecode) reader_attached.WaitForNotification();
  };
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  absl::StatusOr<std::string> id = m->CreateJob(BrainSpec(), "alice");
  ASSERT_TRUE(id.ok()) << id.status();
  auto stream = m->OpenEventStream(*id, "alice", 0);
  reader_attached.Notify();
  ASSERT_TRUE(stream.ok()) << stream.status();
  Drained d = Drain(stream->get());
  ASSERT_OK(d.end);
  ASSERT_EQ(d.Last()->kind, JobEvent::Kind::kCompleted)
      << d.Last()->info.failure;
  EXPECT_EQ(d.events.front().kind, JobEvent::Kind::kAccepted);
  EXPECT_TRUE(d.events.front().info.has_plan);
  EXPECT_FALSE(d.events.front().info.plan.reasons.empty());
  // The output geometry is known from the plan, before the warp.
  EXPECT_EQ(d.events.front().info.output.width, 181);
  EXPECT_EQ(d.events.front().info.output.channels, 3);
  EXPECT_EQ(d.events.front().info.tiles.count(), 12);
  std::set<Stage> stages;
  for (const JobEvent& e : d.events) {
    if (e.kind == JobEvent::Kind::kProgress) stages.insert(e.stage);
  }
  EXPECT_TRUE(stages.count(Stage::kDecode) &&
              stages.count(Stage::kRegistration) && stages.count(Stage::kWarp));

  const JobInfo& info = d.Last()->info;
  EXPECT_EQ(info.state, JobState::kCompleted);
  EXPECT_EQ(info.output.width, 181);
  EXPECT_EQ(info.output.height, 217);
  EXPECT_EQ(info.tiles.edge(), 64);
  EXPECT_EQ(info.tiles.count(), 3 * 4);
  EXPECT_EQ(d.Count(JobEvent::Kind::kTile), 12);
  EXPECT_EQ(info.registration_metric, -0.75);
  ASSERT_EQ(info.timings.size(), 5u);
  EXPECT_EQ(info.timings[0].stage, Stage::kDecode);
  EXPECT_EQ(info.timings[1].stage, Stage::kInitialAlignment);
  EXPECT_EQ(info.timings[3].stage, Stage::kQuality);
  EXPECT_EQ(info.timings[4].stage, Stage::kWarp);
  // The fake registration's exact shift leaves no residual to find.
  EXPECT_TRUE(info.quality.computed) << info.quality.warning;
  EXPECT_EQ(info.quality.verdict, QualityVerdict::kGood)
      << info.quality.warning;
  EXPECT_LT(info.quality.mean_px, 0.2);
  ASSERT_NE(info.quality_map, nullptr);
  EXPECT_EQ(info.quality_map->thumbnail.width(), 181);
  EXPECT_EQ(info.quality_map->thumbnail.height(), 217);
  // A reader that comes later gets the map from the job directory; the
  // job's snapshot no longer holds it.
  EXPECT_EQ(m->GetJob(*id, "alice")->quality_map, nullptr);
  auto late = m->OpenEventStream(*id, "alice", 0);
  ASSERT_TRUE(late.ok()) << late.status();
  Drained again = Drain(late->get());
  ASSERT_EQ(again.Last()->kind, JobEvent::Kind::kCompleted);
  ASSERT_NE(again.Last()->info.quality_map, nullptr);
  EXPECT_EQ(again.Last()->info.quality_map->grid.state,
            info.quality_map->grid.state);
  EXPECT_EQ(again.Last()->info.quality_map->thumbnail.width(), 181);
  EXPECT_EQ(info.attempts, 1);

  // The result has the fixed image's size, and registration moved the moving
  // image onto the fixed one.
  EXPECT_EQ(info.result_path, JobDir(*id) + "/result.tif");
  absl::StatusOr<Image> result = ReadImageFile(info.result_path);
  absl::StatusOr<Image> fixed = ReadImageFile(BrainFixed());
  absl::StatusOr<Image> moving = ReadImageFile(BrainMoving());
  ASSERT_TRUE(result.ok() && fixed.ok() && moving.ok()) << result.status();
  EXPECT_EQ(result->width(), 181);
  EXPECT_EQ(result->height(), 217);
  const double before = MeanAbsDiff(*fixed, *moving);
  const double after = MeanAbsDiff(*fixed, *result);
  EXPECT_LT(after, before / 5) << "before " << before << " after " << after;
  // An exact integer shift reproduces oiiotool's crop: 0.0095 * 255 = 2.4.
  EXPECT_LT(after, 3.0);

  // Transform files were copied and re-pointed at the copies.
  ASSERT_EQ(info.transform_files.size(), 2u);
  EXPECT_EQ(info.transform_dir, JobDir(*id) + "/transform");
  const std::string tp1 = ReadFileBytes(info.transform_files[1]);
  EXPECT_THAT(tp1,
              HasSubstr(info.transform_dir + "/TransformParameters.0.txt"));
  EXPECT_FALSE(fs::exists(JobDir(*id) + "/registration"));
  EXPECT_FALSE(fs::exists(JobDir(*id) + "/result.partial.tif"));

  // Ownership: other principals cannot see or touch it.
  EXPECT_EQ(m->GetJob(*id, "bob").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->Cancel(*id, "bob").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(m->ListJobs("bob").empty());
  EXPECT_EQ(m->ListJobs("alice").size(), 1u);
}

TEST_F(JobManagerTest, UploadsInChunksComplete) {
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  absl::StatusOr<std::string> id = m->CreateJob(UploadSpec(), "");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(m->GetJob(*id, "")->state, JobState::kUploading);
  EXPECT_EQ(m->GetStats().uploading, 1);
  ASSERT_OK(Upload(m.get(), *id, ImageRole::kFixed, ReadFileBytes(BrainFixed()),
                   1000));
  ASSERT_OK(Upload(m.get(), *id, ImageRole::kMoving,
                   ReadFileBytes(BrainMoving()), 777));
  ASSERT_OK(m->FinishUpload(*id));
  EXPECT_EQ(m->FinishUpload(*id).code(), absl::StatusCode::kFailedPrecondition);
  JobInfo info = WaitTerminal(m.get(), *id);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_EQ(info.output.width, 181);
  // Uploaded inputs are deleted once the job is finished.
  EXPECT_FALSE(fs::exists(JobDir(*id) + "/inputs"));
}

TEST_F(JobManagerTest, TruncatedAndOversizedUploadsFail) {
  auto m = Make(FakeEnv(0));
  ASSERT_NE(m, nullptr);
  const std::string fixed = ReadFileBytes(BrainFixed());
  const std::string moving = ReadFileBytes(BrainMoving());

  // Truncated.
  absl::StatusOr<std::string> id = m->CreateJob(UploadSpec(), "");
  ASSERT_TRUE(id.ok());
  ASSERT_OK(Upload(m.get(), *id, ImageRole::kFixed, fixed, 4096));
  ASSERT_OK(
      Upload(m.get(), *id, ImageRole::kMoving, moving.substr(0, 100), 4096));
  absl::Status s = m->FinishUpload(*id);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("upload truncated: got 100 of"));
  JobInfo info = *m->GetJob(*id, "");
  EXPECT_EQ(info.state, JobState::kFailed);
  EXPECT_FALSE(fs::exists(JobDir(*id) + "/inputs"));

  EXPECT_EQ(m->AppendUpload(*id, static_cast<ImageRole>(7), {}).code(),
            absl::StatusCode::kInvalidArgument);

  // More than declared.
  id = m->CreateJob(UploadSpec(), "");
  ASSERT_TRUE(id.ok());
  s = Upload(m.get(), *id, ImageRole::kFixed, fixed + "extra", 1 << 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->GetJob(*id, "")->state, JobState::kFailed);
  EXPECT_EQ(m->AppendUpload(*id, ImageRole::kFixed, {}).code(),
            absl::StatusCode::kFailedPrecondition);

  // Declared above the server limit.
  JobSpec big = UploadSpec();
  big.fixed.upload_bytes = opts_.max_upload_bytes + 1;
  s = m->CreateJob(big, "").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("spec.fixed.upload.byte_size"));

  // Not an image.
  JobSpec garbage = UploadSpec();
  garbage.fixed.upload_bytes = 5000;
  id = m->CreateJob(garbage, "");
  ASSERT_TRUE(id.ok());
  ASSERT_OK(
      Upload(m.get(), *id, ImageRole::kFixed, std::string(5000, 'x'), 1000));
  ASSERT_OK(Upload(m.get(), *id, ImageRole::kMoving, moving, 1 << 20));
  s = m->FinishUpload(*id);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("fixed image"));
  EXPECT_EQ(m->GetJob(*id, "")->state, JobState::kFailed);

  // Aborted by the transport.
  id = m->CreateJob(UploadSpec(), "");
  ASSERT_TRUE(id.ok());
  m->AbortUpload(*id, absl::UnavailableError("client went away"));
  info = *m->GetJob(*id, "");
  EXPECT_EQ(info.state, JobState::kFailed);
  EXPECT_EQ(info.failure.message(), "client went away");
  EXPECT_EQ(m->GetStats().uploading, 0);
}

TEST_F(JobManagerTest, InvalidSpecsNameTheField) {
  auto m = Make(FakeEnv(0));
  ASSERT_NE(m, nullptr);
  struct Case {
    std::function<void(JobSpec*)> mutate;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](JobSpec* s) {
         s->fixed.upload_bytes = 10;
         s->fixed.upload_name = "a.png";
       },
       "fixed: give either"},
      {[](JobSpec* s) { s->moving.path.clear(); }, "moving: missing"},
      {[](JobSpec* s) { s->priority = 100000; }, "priority"},
      {[](JobSpec* s) { s->fill_value = std::nan(""); }, "fill_value"},
      {[](JobSpec* s) { s->options.max_registration_megapixels = -1; },
       "max_registration_megapixels"},
      {[](JobSpec* s) { s->options.transform = static_cast<TransformKind>(9); },
       "spec.transform"},
      {[](JobSpec* s) { s->custom_parameters = {"(Transform \"Euler"}; },
       "spec.elastix_parameters[0]"},
      {[](JobSpec* s) { s->client_label = std::string(1000, 'x'); },
       "client_label"},
      {[](JobSpec* s) {
         s->fixed.path.clear();
         s->fixed.upload_bytes = 10;
         s->fixed.upload_name = "noext";
       },
       "spec.fixed.upload.file_name"},
  };
  for (const Case& c : cases) {
    JobSpec spec = BrainSpec();
    c.mutate(&spec);
    absl::Status s = m->CreateJob(spec, "").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
        << c.field << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(c.field));
  }
  EXPECT_TRUE(m->ListJobs("").empty());
  // Nothing was left on disk.
  EXPECT_TRUE(fs::is_empty(opts_.data_dir + "/jobs"));
}

TEST_F(JobManagerTest, ServerPathsAreConfinedToInputRoot) {
  // A file outside the root, and a symlink inside the root pointing at it.
  const std::string outside = tmp_.path() + "/outside.png";
  fs::copy_file(BrainFixed(), outside);
  fs::create_symlink(outside, root_ + "/escape.png");
  fs::create_symlink(root_ + "/brain/fixed.png", root_ + "/inside_link.png");
  auto m = Make(FakeEnv(0));
  ASSERT_NE(m, nullptr);
  auto code_of = [&](const std::string& fixed_path) {
    return m->CreateJob(ServerSideSpec(fixed_path, "brain/moving.png"), "")
        .status()
        .code();
  };
  EXPECT_EQ(code_of("../outside.png"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(code_of("brain/../../outside.png"),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(code_of(outside), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(code_of("/etc/passwd"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(code_of("escape.png"), absl::StatusCode::kPermissionDenied);
  // NOT_FOUND is for unknown jobs: a missing file is a bad argument.
  EXPECT_EQ(code_of("brain/nothing.png"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code_of("brain"), absl::StatusCode::kInvalidArgument);
  // Inside: relative, absolute under the root, and a link that stays inside.
  EXPECT_EQ(code_of("brain/fixed.png"), absl::StatusCode::kOk);
  EXPECT_EQ(code_of(root_ + "/brain/fixed.png"), absl::StatusCode::kOk);
  EXPECT_EQ(code_of("inside_link.png"), absl::StatusCode::kOk);
  m.reset();

  // Without an input root, server-side paths are refused.
  opts_.input_root.clear();
  m = Make(FakeEnv(0));
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(code_of("brain/fixed.png"), absl::StatusCode::kPermissionDenied);
}

TEST_F(JobManagerTest, QueueFullAndPriorityPositions) {
  opts_.max_queue = 3;
  auto m = Make(FakeEnv(0));  // nothing runs
  ASSERT_NE(m, nullptr);
  JobSpec low = BrainSpec();
  low.priority = 0;
  JobSpec high = BrainSpec();
  high.priority = 5;
  std::string a = *m->CreateJob(low, "");
  std::string b = *m->CreateJob(low, "");
  auto stream_b = m->OpenEventStream(b, "", 0);
  ASSERT_TRUE(stream_b.ok());
  std::string c = *m->CreateJob(high, "");
  EXPECT_EQ(m->GetJob(c, "")->queue_position, 1);
  EXPECT_EQ(m->GetJob(a, "")->queue_position, 2);
  EXPECT_EQ(m->GetJob(b, "")->queue_position, 3);
  absl::Status s = m->CreateJob(low, "").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "queue full: 3 jobs");
  EXPECT_EQ(m->GetStats().queued, 3);

  // b's position went 2, then 3 when c jumped ahead, then 2 again when a
  // was cancelled (and a slot is free). b has not read meanwhile: unread
  // positions coalesce, so it sees only the latest.
  ASSERT_OK(m->Cancel(a, ""));
  EXPECT_EQ(m->GetJob(a, "")->state, JobState::kCancelled);
  EXPECT_EQ(m->GetJob(a, "")->failure.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(m->GetJob(b, "")->queue_position, 2);
  std::vector<int> positions;
  JobEvent ev;
  while ((*stream_b)->Next(&ev, absl::Now()).ok()) {
    if (ev.kind == JobEvent::Kind::kQueued)
      positions.push_back(ev.queue_position);
  }
  EXPECT_EQ(positions, (std::vector<int>{2}));
  EXPECT_TRUE(m->CreateJob(low, "").ok());
}

TEST_F(JobManagerTest, UnfinishedJobsPerPrincipalAreLimited) {
  opts_.max_jobs_per_principal = 2;
  auto m = Make(FakeEnv(0));  // nothing runs
  ASSERT_NE(m, nullptr);
  const std::string a1 = *m->CreateJob(BrainSpec(), "alice");
  ASSERT_TRUE(m->CreateJob(UploadSpec(), "alice").ok());  // uploads count
  absl::Status s = m->CreateJob(BrainSpec(), "alice").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(
      s.message(), "principal alice has 2 unfinished jobs (limit 2)"))
      << s;
  // Other principals have their own share, the anonymous one included.
  EXPECT_TRUE(m->CreateJob(BrainSpec(), "bob").ok());
  EXPECT_TRUE(m->CreateJob(BrainSpec(), "").ok());
  EXPECT_TRUE(m->CreateJob(BrainSpec(), "").ok());
  s = m->CreateJob(BrainSpec(), "").status();
  EXPECT_TRUE(absl::StartsWith(
      s.message(), "principal (anonymous) has 2 unfinished jobs (limit 2)"))
      << s;
  // A finished job frees its slot.
  ASSERT_OK(m->Cancel(a1, "alice"));
  EXPECT_TRUE(m->CreateJob(BrainSpec(), "alice").ok());
  EXPECT_EQ(m->ListJobs("alice").size(), 3u);

  opts_.max_jobs_per_principal = -1;
  EXPECT_EQ(
      CreateJobManagerWithEnv(opts_, scheduler_.get(), probe_.get(), FakeEnv(0))
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(JobManagerTest, PipelineRunsHighestPriorityFirst) {
  absl::Mutex mu;
  std::vector<std::string> order;
  absl::Notification gate;
  absl::Notification first_started;
  JobManagerEnv env = FakeEnv(1);
  env.before_stage = [&](const std::string& id, Stage stage) {
    if (stage != Stage::kDecode) return;
    bool first;
    {
      absl::MutexLock lock(&mu);
      order.push_back(id);
      first = order.size() == 1;
    }
    if (first) {
      first_started.Notify();
      gate.WaitForNotification();
    }
  };
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  JobSpec spec = BrainSpec();
  std::string blocker = *m->CreateJob(spec, "");
  first_started.WaitForNotification();
  spec.priority = 0;
  std::string p0 = *m->CreateJob(spec, "");
  spec.priority = 7;
  std::string p7 = *m->CreateJob(spec, "");
  spec.priority = 3;
  std::string p3 = *m->CreateJob(spec, "");
  spec.priority = 7;
  std::string p7b = *m->CreateJob(spec, "");
  EXPECT_EQ(m->GetStats().running, 1);
  EXPECT_EQ(m->GetStats().queued, 4);
  gate.Notify();
  for (const std::string& id : {blocker, p0, p7, p3, p7b}) {
    EXPECT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
  }
  absl::MutexLock lock(&mu);
  EXPECT_EQ(order, (std::vector<std::string>{blocker, p7, p7b, p3, p0}));
}

TEST_F(JobManagerTest, CancelWhileRegistering) {
  absl::Notification started;
  fake_.hook = [&](const RegistrationRequest& r) {
    return WaitForCancel(r, &started);
  };
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  std::string id = *m->CreateJob(BrainSpec(), "carol");
  auto stream = m->OpenEventStream(id, "carol", 0);
  ASSERT_TRUE(stream.ok());
  started.WaitForNotification();
  JobInfo running = *m->GetJob(id, "carol");
  EXPECT_EQ(running.state, JobState::kRunning);
  EXPECT_EQ(running.stage, Stage::kRegistration);
  EXPECT_EQ(m->GetStats().running_ids, std::vector<std::string>{id});
  ASSERT_OK(m->Cancel(id, "carol"));
  Drained d = Drain(stream->get());
  ASSERT_OK(d.end);
  EXPECT_EQ(d.Last()->kind, JobEvent::Kind::kFailed);
  EXPECT_EQ(d.Last()->info.state, JobState::kCancelled);
  EXPECT_EQ(d.Last()->info.failure.code(), absl::StatusCode::kCancelled);
  // The stream is over; a finished job refuses further cancels idempotently.
  JobEvent ev;
  EXPECT_EQ((*stream)->Next(&ev, absl::Now()).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(m->Cancel(id, "carol").ok());
  EXPECT_FALSE(fs::exists(JobDir(id) + "/registration"));
  EXPECT_FALSE(fs::exists(JobDir(id) + "/result.tif"));
  // Nothing is left reserved.
  EXPECT_EQ(scheduler_->Stats().ram_reserved_bytes, 0u);
}

TEST_F(JobManagerTest, StageFailureIsDurableAndOthersStillRun) {
  std::atomic<int> n{0};
  fake_.hook = [&](const RegistrationRequest&) {
    return n++ == 0 ? absl::FailedPreconditionError("images do not overlap")
                    : absl::OkStatus();
  };
  auto m = Make(FakeEnv(1));
  ASSERT_NE(m, nullptr);
  std::string bad = *m->CreateJob(BrainSpec(), "");
  std::string good = *m->CreateJob(BrainSpec(), "");
  JobInfo b = WaitTerminal(m.get(), bad);
  JobInfo g = WaitTerminal(m.get(), good);
  EXPECT_EQ(b.state, JobState::kFailed);
  EXPECT_EQ(b.failure.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(b.failure.message(), HasSubstr("images do not overlap"));
  EXPECT_EQ(g.state, JobState::kCompleted);
  m.reset();
  // After a restart the failure is still there, with its message.
  m = Make(FakeEnv(0));
  ASSERT_NE(m, nullptr);
  JobInfo again = *m->GetJob(bad, "");
  EXPECT_EQ(again.state, JobState::kFailed);
  EXPECT_EQ(again.failure, b.failure);
  EXPECT_EQ(m->GetJob(good, "")->state, JobState::kCompleted);
}

TEST_F(JobManagerTest, ConcurrentJobsNeverOverReserve) {
  // A RAM budget that holds about one stage of this job at a time.
  HardwareSnapshot hw = testing_util::SmallMachine();
  auto probe = std::make_unique<FakeProbe>(hw);
  Budgets b = BudgetsFromHardware(hw, {});
  absl::StatusOr<ImageSpec> f = ReadImageSpecFile(BrainFixed());
  absl::StatusOr<ImageSpec> mv = ReadImageSpecFile(BrainMoving());
  ASSERT_TRUE(f.ok() && mv.ok());
  JobOptions jo;
  jo.transform = TransformKind::kRigid;
  jo.device = DevicePreference::kCpu;
  absl::StatusOr<Plan> plan = MakePlan(*f, *mv, jo, b);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const uint64_t budget =
      std::max({plan->decode.ram_bytes, plan->registration.ram_bytes,
                plan->warp.ram_bytes}) *
      3 / 2;
  scheduler_ = std::make_unique<ResourceScheduler>(
      testing_util::SmallSchedulerConfig(budget, 2), probe.get());
  auto m = Make(FakeEnv(4));
  ASSERT_NE(m, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> max_reserved{0};
  std::atomic<int> max_cpu{0};
  std::thread sampler([&] {
    while (!stop) {
      SchedulerStats st = scheduler_->Stats();
      if (st.ram_reserved_bytes > max_reserved)
        max_reserved = st.ram_reserved_bytes;
      if (st.cpu_running > max_cpu) max_cpu = st.cpu_running;
      absl::SleepFor(absl::Microseconds(200));
    }
  });
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(*m->CreateJob(BrainSpec(), ""));
  for (const std::string& id : ids) {
    EXPECT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
  }
  stop = true;
  sampler.join();
  EXPECT_GT(max_reserved.load(), 0u);
  EXPECT_LE(max_reserved.load(), budget);
  EXPECT_LE(max_cpu.load(), 2);
  m.reset();
  scheduler_.reset();
}

TEST_F(JobManagerTest, PlanRefusalIsResourceExhausted) {
  opts_.budget_overrides.ram_bytes = 1 << 20;  // 1 MiB: nothing fits
  auto m = Make(FakeEnv(0));
  ASSERT_NE(m, nullptr);
  absl::Status s = m->CreateJob(BrainSpec(), "").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(m->ListJobs("").empty());
}

TEST_F(JobManagerTest, CudaWarperFailureFallsBackToCpu) {
  UseFakeGpu();
  std::atomic<int> cuda_attempts{0};
  JobManagerEnv env = FakeEnv();
  env.create_warper =
      [&](WarpDevice device,
          int ordinal) -> absl::StatusOr<std::unique_ptr<Warper>> {
    if (device == WarpDevice::kCuda) {
      ++cuda_attempts;
      return absl::UnavailableError(absl::StrCat("no CUDA device ", ordinal));
    }
    return Warper::Create(device, ordinal);
  };
  opts_.device = DevicePreference::kAuto;
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  JobSpec spec = BrainSpec();
  spec.options.device = DevicePreference::kCuda;
  std::string id = *m->CreateJob(spec, "");
  JobInfo info = WaitTerminal(m.get(), id);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_EQ(info.plan.warp_device, WarpDevice::kCuda);
  EXPECT_GE(cuda_attempts.load(), 1);
  bool reason = false;
  for (const std::string& r : info.plan.reasons) {
    reason = reason || absl::StrContains(r, "warping on the CPU instead");
  }
  EXPECT_TRUE(reason);
  EXPECT_EQ(info.output.width, 181);
  EXPECT_EQ(cuda_attempts.load(), 1);
  // The failure is remembered: the next job goes straight to the CPU, with
  // the same reason, without trying CUDA again.
  id = *m->CreateJob(spec, "");
  info = WaitTerminal(m.get(), id);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_EQ(cuda_attempts.load(), 1);
  reason = false;
  for (const std::string& r : info.plan.reasons) {
    reason = reason || absl::StrContains(r, "no CUDA device 0");
  }
  EXPECT_TRUE(reason);
  m.reset();
  scheduler_.reset();
}

// Before a GPU refinement elastix gets the registration copies pooled to
// the daemon's --gpu_refine_elastix_megapixels and its schedule; without an
// initial alignment (none here) the affine stage stays.
TEST_F(JobManagerTest, ElastixGetsItsOwnCopyBeforeAGpuRefinement) {
  UseFakeGpu();
  opts_.device = DevicePreference::kAuto;
  opts_.elastix_before_gpu_refine.max_megapixels = 0.01;  // 1/2 of 181x217
  opts_.elastix_before_gpu_refine.iteration_scale = 0.5;
  opts_.elastix_before_gpu_refine.linear_stage = false;
  absl::Mutex mu;
  std::vector<std::array<int64_t, 4>> sizes;  // fixed w, h, moving w, h
  std::vector<PresetSchedule> schedules;
  fake_.hook = [&](const RegistrationRequest& r) {
    absl::MutexLock lock(&mu);
    sizes.push_back({r.fixed->width(), r.fixed->height(), r.moving->width(),
                     r.moving->height()});
    schedules.push_back(r.schedule);
    return absl::OkStatus();
  };
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  JobSpec spec = BrainSpec();
  spec.options.transform = TransformKind::kBSpline;
  spec.options.device = DevicePreference::kCuda;
  const std::string id = *m->CreateJob(spec, "");
  const JobInfo info = WaitTerminal(m.get(), id);
  ASSERT_EQ(info.plan.refine_device, WarpDevice::kCuda)
      << absl::StrJoin(info.plan.reasons, "\n");
  EXPECT_EQ(info.plan.elastix_fixed_width, 91);  // 181 / sqrt(3.93)
  absl::MutexLock lock(&mu);
  ASSERT_EQ(sizes.size(), 1u) << info.failure;
  EXPECT_EQ(sizes[0][0], info.plan.elastix_fixed_width);
  EXPECT_EQ(sizes[0][1], info.plan.elastix_fixed_height);
  EXPECT_EQ(sizes[0][2], info.plan.elastix_moving_width);
  EXPECT_LT(sizes[0][0], info.plan.registration_fixed_width);
  EXPECT_DOUBLE_EQ(schedules[0].iteration_scale, 0.5);
  EXPECT_TRUE(schedules[0].linear_stage);  // no initial alignment was found
  m.reset();
  scheduler_.reset();
}

}  // namespace
}  // namespace jobs_test
}  // namespace regserve
