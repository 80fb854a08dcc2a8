// Copyright regserve authors.
//
// The initial_alignment stage in the pipeline (with the fake registration
// of the JobManager tests): a found alignment pre-warps the moving copy onto
// the fixed grid and is composed with the registration's field, unless the
// registration made it worse (then the start alone is kept); none found,
// or an alignment that fails, leaves registration as before; cancelling
// during the alignment ends the job.
#include "core/jobs/job_manager_test_fixture.h"

namespace regserve {
namespace jobs_test {
namespace {

bool AnyReasonHas(const JobInfo& info, absl::string_view text) {
  for (const std::string& r : info.plan.reasons) {
    if (absl::StrContains(r, text)) return true;
  }
  return false;
}

// Mean absolute difference of two float copies over the interior of the
// first (the second may be larger).
double CopyDiff(const Image& a, const Image& b) {
  double sum = 0;
  int64_t n = 0;
  for (int64_t y = 40; y < a.height() - 40; ++y) {
    const float* pa = reinterpret_cast<const float*>(a.row(y));
    const float* pb = reinterpret_cast<const float*>(b.row(y));
    for (int64_t x = 40; x < a.width() - 40; ++x, ++n) {
      sum += std::fabs(pa[x] - pb[x]);
    }
  }
  return sum / static_cast<double>(n);
}

TEST_F(JobManagerTest, FoundAlignmentPreWarpsAndIsComposed) {
  // The brain pair differs by a shift of (33, 37): the robust start finds
  // it, so what is left for the registration is nothing.
  fake_.dx = 0;
  fake_.dy = 0;
  double prewarped_diff = -1, original_diff = -1;
  fake_.hook = [&](const RegistrationRequest& r) {
    EXPECT_EQ(r.moving_full_width, 181);  // the fixed image's frame
    EXPECT_EQ(r.moving_full_height, 217);
    EXPECT_EQ(r.moving->width(), r.fixed->width());
    prewarped_diff = CopyDiff(*r.fixed, *r.moving);
    return absl::OkStatus();
  };
  JobManagerEnv env = FakeEnv();
  env.align_fn = nullptr;  // the real robust start
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  const std::string id = *m->CreateJob(BrainSpec(), "");
  auto stream = m->OpenEventStream(id, "", 0);
  ASSERT_TRUE(stream.ok());
  Drained d = Drain(stream->get());
  ASSERT_OK(d.end);
  const JobInfo& info = d.Last()->info;
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  bool progress = false;
  for (const JobEvent& e : d.events) {
    progress |= e.kind == JobEvent::Kind::kProgress &&
                e.stage == Stage::kInitialAlignment;
  }
  EXPECT_TRUE(progress);
  ASSERT_GE(info.timings.size(), 2u);
  EXPECT_EQ(info.timings[1].stage, Stage::kInitialAlignment);
  EXPECT_TRUE(AnyReasonHas(info, "initial alignment: similarity from"));
  EXPECT_TRUE(AnyReasonHas(info, "pre-warped by the initial alignment"));
  // Nothing left for elastix: the two fields are the same, the start +
  // elastix one stays.
  EXPECT_TRUE(AnyReasonHas(
      info, "registration: elastix after the initial alignment kept"));
  // The pre-warped copy matches the fixed one, the original does not.
  {
    const Image fixed =
        *MakeGrayscaleCopy(*ReadImageFile(BrainFixed()), 181, 217);
    const Image moving =
        *MakeGrayscaleCopy(*ReadImageFile(BrainMoving()), 181, 217);
    original_diff = CopyDiff(fixed, moving);
  }
  EXPECT_LT(prewarped_diff, original_diff / 5)
      << prewarped_diff << " vs " << original_diff;
  // The result is the moving image through H o (zero field): on the fixed.
  absl::StatusOr<Image> result = ReadImageFile(info.result_path);
  absl::StatusOr<Image> fixed = ReadImageFile(BrainFixed());
  absl::StatusOr<Image> moving = ReadImageFile(BrainMoving());
  ASSERT_TRUE(result.ok() && fixed.ok() && moving.ok());
  const double before = MeanAbsDiff(*fixed, *moving);
  const double after = MeanAbsDiff(*fixed, *result);
  EXPECT_LT(after, before / 5) << "before " << before << " after " << after;
  EXPECT_LT(after, 3.0);
  EXPECT_EQ(scheduler_->Stats().ram_reserved_bytes, 0u);
}

TEST_F(JobManagerTest, ElastixThatMakesTheStartWorseIsDropped) {
  // The start finds the pair's shift; the (fake) registration after it
  // drifts by (4, -3) px, which the quality map's estimate sees.
  fake_.dx = 4;
  fake_.dy = -3;
  JobManagerEnv env = FakeEnv();
  env.align_fn = nullptr;  // the real robust start
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  const std::string id = *m->CreateJob(BrainSpec(), "");
  const JobInfo info = WaitTerminal(m.get(), id);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_TRUE(AnyReasonHas(info,
                           "registration: the initial alignment alone is "
                           "used (est. mean"));
  absl::StatusOr<Image> result = ReadImageFile(info.result_path);
  absl::StatusOr<Image> fixed = ReadImageFile(BrainFixed());
  ASSERT_TRUE(result.ok() && fixed.ok());
  EXPECT_LT(MeanAbsDiff(*fixed, *result), 3.0);
}

TEST_F(JobManagerTest, NoAlignmentRegistersTheOriginalCopy) {
  // An unrelated moving image: nothing to match.
  fs::copy_file(testing_util::TestDataDir() + "/graffiti/graf1.png",
                root_ + "/brain/graffiti.png");
  int64_t moving_full_width = 0;
  fake_.hook = [&](const RegistrationRequest& r) {
    moving_full_width = r.moving_full_width;
    return absl::OkStatus();
  };
  JobManagerEnv env = FakeEnv();
  env.align_fn = nullptr;
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  const std::string id = *m->CreateJob(
      ServerSideSpec("brain/fixed.png", "brain/graffiti.png"), "");
  const JobInfo info = WaitTerminal(m.get(), id);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_EQ(moving_full_width, 800);  // the moving image's own frame
  EXPECT_TRUE(AnyReasonHas(info, "elastix starts from the image centres"));
  EXPECT_FALSE(AnyReasonHas(info, "pre-warped by the initial alignment"));
}

TEST_F(JobManagerTest, FailedAlignmentDoesNotFailTheJob) {
  JobManagerEnv env = FakeEnv();
  env.align_fn =
      [](const Image&, const Image&,
         const RobustStartOptions&) -> absl::StatusOr<InitialAlignment> {
    return absl::InternalError("OpenCV failed: test");
  };
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  const std::string id = *m->CreateJob(BrainSpec(), "");
  const JobInfo info = WaitTerminal(m.get(), id);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_TRUE(AnyReasonHas(info,
                           "initial alignment: failed (OpenCV failed: test); "
                           "elastix starts from the image centres"));
}

TEST_F(JobManagerTest, RigidJobsAskForNoMoreThanASimilarity) {
  AlignmentModel asked = AlignmentModel::kNone;
  JobManagerEnv env = FakeEnv();
  env.align_fn = [&](const Image& f, const Image& mv,
                     const RobustStartOptions& o) {
    asked = o.max_model;
    EXPECT_EQ(o.fixed_full_width, 181);
    EXPECT_EQ(o.moving_full_height, 257);
    return NoInitialAlignment(f, mv, o);
  };
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  const std::string id =
      *m->CreateJob(ServerSideSpec("brain/fixed.png", "brain/moving.png",
                                   TransformKind::kRigid),
                    "");
  ASSERT_EQ(WaitTerminal(m.get(), id).state, JobState::kCompleted);
  EXPECT_EQ(asked, AlignmentModel::kSimilarity);
}

TEST_F(JobManagerTest, CancelDuringTheAlignment) {
  absl::Notification started;
  JobManagerEnv env = FakeEnv();
  env.align_fn =
      [&](const Image&, const Image&,
          const RobustStartOptions& o) -> absl::StatusOr<InitialAlignment> {
    started.Notify();
    for (;;) {
      absl::Status s = o.cancel->Check();
      if (!s.ok()) return s;
      absl::SleepFor(absl::Milliseconds(2));
    }
  };
  auto m = Make(std::move(env));
  ASSERT_NE(m, nullptr);
  const std::string id = *m->CreateJob(BrainSpec(), "");
  started.WaitForNotification();
  EXPECT_EQ(m->GetJob(id, "")->stage, Stage::kInitialAlignment);
  ASSERT_OK(m->Cancel(id, ""));
  const JobInfo info = WaitTerminal(m.get(), id);
  EXPECT_EQ(info.state, JobState::kCancelled);
  EXPECT_EQ(fake_.calls, 0);  // registration never ran
  EXPECT_EQ(scheduler_->Stats().ram_reserved_bytes, 0u);
}

}  // namespace
}  // namespace jobs_test
}  // namespace regserve
