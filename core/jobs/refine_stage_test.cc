// Copyright regserve authors.
//
// The refine stage in the pipeline (with the fake registration of the
// JobManager tests, on the brain pair, whose content differs by a shift of
// (33, 37)): refine=on corrects a field that is off by a few pixels;
// after a robust start, the start's homography is the bending's prior;
// refine=off, and refine=auto on a rigid job, leave the field exactly as
// registration gave it, with the plan saying why.
#include "absl/strings/str_join.h"
#include "core/jobs/job_manager_test_fixture.h"
#include "core/warp/warp.h"

namespace regserve {
namespace jobs_test {
namespace {

bool AnyReasonHas(const JobInfo& info, absl::string_view text) {
  for (const std::string& r : info.plan.reasons) {
    if (absl::StrContains(r, text)) return true;
  }
  return false;
}

bool HasTiming(const JobInfo& info, Stage stage) {
  for (const StageTiming& t : info.timings) {
    if (t.stage == stage) return true;
  }
  return false;
}

class RefineStageTest : public JobManagerTest {
 protected:
  // Registration is off by (2.5, -1.5) px.
  void SetUp() override {
    JobManagerTest::SetUp();
    fake_.dx = 33.0 + 2.5;
    fake_.dy = 37.0 - 1.5;
  }

  JobInfo RunJob(RefineMode refine, std::vector<JobEvent>* events = nullptr,
                 JobManagerEnv env = JobManagerEnv()) {
    JobSpec spec = BrainSpec();  // rigid
    spec.options.refine = refine;
    return RunSpec(spec, events, std::move(env));
  }

  // Runs `spec` to its end; the last event's info.
  JobInfo RunSpec(const JobSpec& spec, std::vector<JobEvent>* events = nullptr,
                  JobManagerEnv env = JobManagerEnv()) {
    if (!env.align_fn) env = FakeEnv();
    auto m = Make(std::move(env));
    EXPECT_NE(m, nullptr);
    if (m == nullptr) return JobInfo();
    const std::string id = *m->CreateJob(spec, "");
    auto stream = m->OpenEventStream(id, "", 0);
    EXPECT_TRUE(stream.ok());
    if (!stream.ok()) return JobInfo();
    Drained d = Drain(stream->get());
    EXPECT_TRUE(d.end.ok()) << d.end;
    if (events != nullptr) *events = d.events;
    EXPECT_EQ(scheduler_->Stats().ram_reserved_bytes, 0u);
    return d.Last() != nullptr ? d.Last()->info : JobInfo();
  }

  // The moving image warped through the fake registration's field.
  Image WarpedByRegistration() const {
    const Image moving = *ReadImageFile(BrainMoving());
    DisplacementField f;
    f.width = f.height = 2;
    f.spacing_x = 180;
    f.spacing_y = 216;
    f.dx.assign(4, static_cast<float>(fake_.dx));
    f.dy.assign(4, static_cast<float>(fake_.dy));
    Image out = Image::Allocate(moving.spec()).value();
    auto warper = Warper::Create(WarpDevice::kCpu).value();
    WarpOptions o;
    EXPECT_TRUE(warper
                    ->Warp(moving, f, moving.width(), moving.height(), o,
                           [&](const TileRect& r, const Image& tile) {
                             for (int64_t j = 0; j < r.h; ++j) {
                               std::copy_n(
                                   tile.row(j), tile.row_bytes(),
                                   out.row(r.y + j) +
                                       r.x * out.spec().bytes_per_pixel());
                             }
                             return absl::OkStatus();
                           })
                    .ok());
    return out;
  }
};

TEST_F(RefineStageTest, OnCorrectsAFieldOffByAFewPixels) {
  std::vector<JobEvent> events;
  const JobInfo info = RunJob(RefineMode::kOn, &events);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_TRUE(info.plan.refine_enabled);
  EXPECT_EQ(info.plan.refine_device, WarpDevice::kCpu);
  EXPECT_GT(info.plan.refine.ram_bytes, 0u);
  EXPECT_TRUE(AnyReasonHas(info, "refining on the CPU at 181x217"));
  EXPECT_TRUE(AnyReasonHas(info, "refinement on cpu at 181x217"));
  // No start was found: the bending is that of the field itself.
  EXPECT_FALSE(AnyReasonHas(info, "bending measured from"));
  EXPECT_TRUE(HasTiming(info, Stage::kRefine));
  int progress = 0;
  for (const JobEvent& e : events) {
    progress +=
        e.kind == JobEvent::Kind::kProgress && e.stage == Stage::kRefine;
  }
  EXPECT_GE(progress, 2);
  const Image fixed = *ReadImageFile(BrainFixed());
  const double wrong = MeanAbsDiff(fixed, WarpedByRegistration());
  const double refined = MeanAbsDiff(fixed, *ReadImageFile(info.result_path));
  // The exact shift gives 2.4 (job_manager_test); the wrong one much more.
  EXPECT_GT(wrong, 6.0);
  EXPECT_LT(refined, 3.5) << "wrong field " << wrong;
}

TEST_F(RefineStageTest, AfterARobustStartItsHomographyIsThePrior) {
  // The start finds the pair's shift; the registration on the pre-warped
  // copy leaves the same error as above, which the refinement corrects with
  // the bending measured from the start's map.
  JobManagerEnv env = FakeEnv();
  env.align_fn =
      [](const Image&, const Image&,
         const RobustStartOptions&) -> absl::StatusOr<InitialAlignment> {
    InitialAlignment a;
    a.found = true;
    a.model = AlignmentModel::kSimilarity;
    a.fixed_to_moving.m = {1, 0, 33, 0, 1, 37, 0, 0, 1};
    a.reason = "similarity (test)";
    return a;
  };
  fake_.dx = 2.5;
  fake_.dy = -1.5;
  const JobInfo info = RunJob(RefineMode::kOn, nullptr, std::move(env));
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_TRUE(AnyReasonHas(info, "pre-warped by the initial alignment"));
  EXPECT_TRUE(AnyReasonHas(
      info, "bending measured from the initial alignment's homography"));
  const Image fixed = *ReadImageFile(BrainFixed());
  EXPECT_LT(MeanAbsDiff(fixed, *ReadImageFile(info.result_path)), 3.5);
}

TEST_F(RefineStageTest, AutoSkipsWhenTheFieldIsAlreadyEstimatedGood) {
  // The start finds the exact shift and elastix adds nothing: the quality
  // estimate made to choose between them is already good, so refine=auto
  // does not refine (and refine=on still does).
  auto exact_start =
      [](const Image&, const Image&,
         const RobustStartOptions&) -> absl::StatusOr<InitialAlignment> {
    InitialAlignment a;
    a.found = true;
    a.model = AlignmentModel::kSimilarity;
    a.fixed_to_moving.m = {1, 0, 33, 0, 1, 37, 0, 0, 1};
    a.reason = "similarity (test)";
    return a;
  };
  fake_.dx = 0;
  fake_.dy = 0;
  for (RefineMode mode : {RefineMode::kAuto, RefineMode::kOn}) {
    JobManagerEnv env = FakeEnv();
    env.align_fn = exact_start;
    JobSpec spec = BrainSpec();
    spec.options.transform = TransformKind::kBSpline;
    spec.options.refine = mode;
    const JobInfo info = RunSpec(spec, nullptr, std::move(env));
    ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
    ASSERT_TRUE(info.plan.refine_enabled) << RefineModeName(mode);
    const bool skipped =
        AnyReasonHas(info, "refinement skipped: the field is estimated");
    EXPECT_EQ(skipped, mode == RefineMode::kAuto) << RefineModeName(mode);
    // The shift correction ran (with little to gain) either way.
    EXPECT_TRUE(AnyReasonHas(info, "passes with 64 px patches kept"))
        << absl::StrJoin(info.plan.reasons, "\n");
    EXPECT_TRUE(HasTiming(info, Stage::kRefine));
  }
}

TEST_F(RefineStageTest, ShiftCorrectionFixesAFieldOffByAFewPixels) {
  // A B-spline job under refine=auto: the shift correction measures the
  // (2.5, -1.5) px error and removes it; the LibTorch refinement after it
  // is then not needed.
  for (int passes : {3, 0}) {
    opts_.shift_correction_passes = passes;
    JobSpec spec = BrainSpec();
    spec.options.transform = TransformKind::kBSpline;
    const JobInfo info = RunSpec(spec);  // reservations all released
    ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
    EXPECT_EQ(info.plan.shift_correction_passes, passes);
    if (passes == 0) {
      EXPECT_FALSE(AnyReasonHas(info, "shift correction"));
      continue;
    }
    EXPECT_GT(info.plan.shift_correction.ram_bytes, 0u);
    EXPECT_TRUE(
        AnyReasonHas(info, "shift correction before refining: up to 3 passes"));
    EXPECT_TRUE(AnyReasonHas(info, "passes with 64 px patches kept"));
    EXPECT_FALSE(AnyReasonHas(info, "0 of 3 passes with 64 px"));
    EXPECT_TRUE(HasTiming(info, Stage::kRefine));
    const Image fixed = *ReadImageFile(BrainFixed());
    const double wrong = MeanAbsDiff(fixed, WarpedByRegistration());
    const double corrected =
        MeanAbsDiff(fixed, *ReadImageFile(info.result_path));
    EXPECT_GT(wrong, 6.0);
    EXPECT_LT(corrected, 3.5) << "wrong field " << wrong;
  }
}

TEST_F(RefineStageTest, OffLeavesTheFieldUnchanged) {
  const JobInfo info = RunJob(RefineMode::kOff);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_FALSE(info.plan.refine_enabled);
  EXPECT_TRUE(AnyReasonHas(info, "refinement off (refine=off)"));
  EXPECT_FALSE(HasTiming(info, Stage::kRefine));
  EXPECT_EQ(
      MeanAbsDiff(*ReadImageFile(info.result_path), WarpedByRegistration()),
      0.0);
}

TEST_F(RefineStageTest, AutoKeepsARigidJobRigid) {
  const JobInfo info = RunJob(RefineMode::kAuto);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  EXPECT_FALSE(info.plan.refine_enabled);
  EXPECT_TRUE(AnyReasonHas(info,
                           "refinement skipped: the job asks for a "
                           "rigid transform"));
  EXPECT_FALSE(HasTiming(info, Stage::kRefine));
  EXPECT_EQ(
      MeanAbsDiff(*ReadImageFile(info.result_path), WarpedByRegistration()),
      0.0);
}

}  // namespace
}  // namespace jobs_test
}  // namespace regserve
