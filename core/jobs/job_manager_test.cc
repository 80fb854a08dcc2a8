// Copyright regserve authors.
//
// Unit tests of the JobManager with a fake registration (no elastix), the
// real CPU warper, real image I/O, a FakeProbe and a real ResourceScheduler
// with small budgets. The real-elastix runs are in job_manager_e2e_test.cc.
#include "core/jobs/job_manager.h"

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/image/image_io.h"
#include "core/jobs/job_env.h"
#include "core/jobs/job_store.h"
#include "core/jobs/job_test_util.h"
#include "core/jobs/result_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_util::BrainFixed;
using testing_util::BrainMoving;
using testing_util::Drain;
using testing_util::Drained;
using testing_util::MeanAbsDiff;
using testing_util::ReadFileBytes;
using testing_util::ServerSideSpec;
using testing_util::WaitTerminal;

#define ASSERT_OK(expr)                          \
  do {                                           \
    const absl::Status _s = (expr);              \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s; \
  } while (0)

// A registration that writes two chained TransformParameters files and
// returns a constant displacement (the known offset of the brain pair).
class FakeRegistration {
 public:
  RegisterFunction Fn() {
    return [this](const RegistrationRequest& r, const ElastixConfig&) {
      return Run(r);
    };
  }
  // Runs before the result is returned; a non-OK status fails registration.
  std::function<absl::Status(const RegistrationRequest&)> hook;
  std::atomic<int> calls{0};
  // The PNGs lost ITK's image origins: in pixel indices the moving content
  // sits at +(33, 37) of the fixed one (13, 17 plus a 20 px canvas margin;
  // checked with oiiotool --cut/--diff: mean error 0.0095 there).
  double dx = 33.0;
  double dy = 37.0;

 private:
  absl::StatusOr<RegistrationResult> Run(const RegistrationRequest& req) {
    ++calls;
    fs::create_directories(req.work_dir);
    const std::string tp0 = req.work_dir + "/TransformParameters.0.txt";
    const std::string tp1 = req.work_dir + "/TransformParameters.1.txt";
    std::ofstream(tp0)
        << "(Transform \"TranslationTransform\")\n"
        << "(InitialTransformParametersFileName \"NoInitialTransform\")\n";
    std::ofstream(tp1) << "(Transform \"TranslationTransform\")\n"
                       << "(InitialTransformParametersFileName \"" << tp0
                       << "\")\n";
    if (req.on_progress) {
      RegistrationProgress p;
      p.fraction = 0.5;
      p.message = "fake halfway";
      req.on_progress(p);
    }
    if (hook) {
      absl::Status s = hook(req);
      if (!s.ok()) return s;
    }
    RegistrationResult res;
    res.transform_parameter_files = {tp0, tp1};
    res.field.width = 2;
    res.field.height = 2;
    res.field.spacing_x = static_cast<double>(req.fixed_full_width - 1);
    res.field.spacing_y = static_cast<double>(req.fixed_full_height - 1);
    res.field.dx.assign(4, static_cast<float>(dx));
    res.field.dy.assign(4, static_cast<float>(dy));
    res.final_metric = -0.75;
    res.iterations = 42;
    return res;
  }
};

// Blocks registration until the job's token fires; tells when it started.
absl::Status WaitForCancel(const RegistrationRequest& req,
                           absl::Notification* started) {
  if (!started->HasBeenNotified()) started->Notify();
  for (;;) {
    absl::Status s = req.cancel->Check();
    if (!s.ok()) return s;
    absl::SleepFor(absl::Milliseconds(2));
  }
}

// Fails writes with ENOSPC while `full` is set.
class FullDiskFileSystem final : public JobFileSystem {
 public:
  std::atomic<bool> full{false};
  absl::Status WriteFileAtomic(const std::string& path,
                               absl::string_view contents) override {
    if (full) return WriteErrnoToStatus(ENOSPC, "writing", path);
    return DefaultJobFileSystem()->WriteFileAtomic(path, contents);
  }
  absl::Status AppendToFile(const std::string& path,
                            absl::Span<const uint8_t> bytes) override {
    if (full) {
      // A partial write, as a real full disk gives.
      (void)DefaultJobFileSystem()->AppendToFile(
          path, bytes.subspan(0, bytes.size() / 2));
      return WriteErrnoToStatus(ENOSPC, "writing", path);
    }
    return DefaultJobFileSystem()->AppendToFile(path, bytes);
  }
  absl::Status SyncFile(const std::string& path) override {
    {
      absl::MutexLock lock(&mu);
      synced.push_back(path);
    }
    return DefaultJobFileSystem()->SyncFile(path);
  }
  bool Synced(const std::string& path) {
    absl::MutexLock lock(&mu);
    return std::find(synced.begin(), synced.end(), path) != synced.end();
  }
  absl::Mutex mu;
  std::vector<std::string> synced ABSL_GUARDED_BY(mu);
};

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.path() + "/inputs";
    fs::create_directories(root_ + "/brain");
    fs::copy_file(BrainFixed(), root_ + "/brain/fixed.png");
    fs::copy_file(BrainMoving(), root_ + "/brain/moving.png");
    probe_ = std::make_unique<FakeProbe>(testing_util::SmallMachine());
    scheduler_ = std::make_unique<ResourceScheduler>(
        testing_util::SmallSchedulerConfig(), probe_.get());
    opts_.data_dir = tmp_.path() + "/data";
    opts_.input_root = root_;
    opts_.device = DevicePreference::kCpu;
    opts_.stream_tile_size = 64;
    opts_.max_upload_bytes = 1 << 20;
  }

  JobManagerEnv FakeEnv(int threads = -1) {
    JobManagerEnv env;
    env.register_fn = fake_.Fn();
    env.pipeline_threads = threads;
    return env;
  }

  std::unique_ptr<JobManager> Make(JobManagerEnv env) {
    auto m = CreateJobManagerWithEnv(opts_, scheduler_.get(), probe_.get(),
                                     std::move(env));
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *std::move(m) : nullptr;
  }

  std::string JobDir(const std::string& id) const {
    return fs::canonical(opts_.data_dir).string() + "/jobs/" + id;
  }

  JobSpec BrainSpec() const {
    return ServerSideSpec("brain/fixed.png", "brain/moving.png");
  }

  JobSpec UploadSpec() const {
    JobSpec spec;
    spec.fixed.upload_bytes = fs::file_size(BrainFixed());
    spec.fixed.upload_name = "fixed.png";
    spec.moving.upload_bytes = fs::file_size(BrainMoving());
    spec.moving.upload_name = "moving.PNG";
    spec.options.transform = TransformKind::kRigid;
    return spec;
  }

  static absl::Status Upload(JobManager* m, const std::string& id,
                             ImageRole role, const std::string& bytes,
                             size_t chunk) {
    for (size_t off = 0; off < bytes.size(); off += chunk) {
      const size_t n = std::min(chunk, bytes.size() - off);
      absl::Status s = m->AppendUpload(
          id, role,
          absl::MakeConstSpan(
              reinterpret_cast<const uint8_t*>(bytes.data()) + off, n));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  testing_util::TempDir tmp_;
  std::string root_;
  FakeRegistration fake_;
  std::unique_ptr<FakeProbe> probe_;
  std::unique_ptr<ResourceScheduler> scheduler_;
  JobManager::Options opts_;
};

TEST(JobStoreTest, RecordsRoundTripWithEscapes) {
  JobRecord rec;
  rec.info.id = "0123456789abcdef0123456789abcdef";
  rec.info.principal = "alice=admin\\x";
  rec.info.spec.fixed.path = "a/b\nc.tif";
  rec.info.spec.moving.upload_bytes = 77;
  rec.info.spec.moving.upload_name = "m.png";
  rec.info.spec.custom_parameters = {"(A 1)\r\n(B \"x\\y\")\n", ""};
  rec.info.spec.priority = -3;
  rec.info.spec.fill_value = 0.1;
  rec.info.spec.options.transform = TransformKind::kAffine;
  rec.info.created = absl::FromUnixNanos(1234567890123456789);
  rec.info.finished = absl::InfinitePast();
  rec.sequence = 99;
  rec.info.state = JobState::kFailed;
  rec.info.stage = Stage::kWarp;
  rec.info.failure = absl::ResourceExhaustedError("line1\nline2 = x");
  rec.info.has_plan = true;
  rec.info.plan.registration_factor = 2.5;
  rec.info.plan.reasons = {"r1", "r=2\n"};
  rec.info.plan.warp.vram_bytes = 1ull << 40;
  rec.info.timings = {{Stage::kDecode, 0.25}, {Stage::kRegistration, 3.5}};
  rec.info.transform_files = {"/x/TransformParameters.0.txt"};
  rec.info.output = {10, 20, 3, SampleType::kUInt16};
  rec.have_input_specs = true;
  rec.fixed_spec = {100, 50, 1, SampleType::kFloat32};
  rec.fixed_spec.decode_scratch_bytes = 20000;

  JobRecord back;
  ASSERT_OK(DecodeJobSpec(EncodeJobSpec(rec), &back));
  ASSERT_OK(DecodeJobState(EncodeJobState(rec), &back));
  EXPECT_EQ(back.info.id, rec.info.id);
  EXPECT_EQ(back.info.principal, rec.info.principal);
  EXPECT_EQ(back.info.spec.fixed.path, rec.info.spec.fixed.path);
  EXPECT_EQ(back.info.spec.moving.upload_bytes, 77u);
  EXPECT_EQ(back.info.spec.custom_parameters, rec.info.spec.custom_parameters);
  EXPECT_EQ(back.info.spec.priority, -3);
  EXPECT_EQ(back.info.spec.fill_value, 0.1);
  EXPECT_EQ(back.info.spec.options.transform, TransformKind::kAffine);
  EXPECT_EQ(back.info.created, rec.info.created);
  EXPECT_EQ(back.info.finished, absl::InfinitePast());
  EXPECT_EQ(back.sequence, 99u);
  EXPECT_EQ(back.info.state, JobState::kFailed);
  EXPECT_EQ(back.info.stage, Stage::kWarp);
  EXPECT_EQ(back.info.failure, rec.info.failure);
  EXPECT_EQ(back.info.plan.registration_factor, 2.5);
  EXPECT_EQ(back.info.plan.reasons, rec.info.plan.reasons);
  EXPECT_EQ(back.info.plan.warp.vram_bytes, 1ull << 40);
  ASSERT_EQ(back.info.timings.size(), 2u);
  EXPECT_EQ(back.info.timings[1].stage, Stage::kRegistration);
  EXPECT_EQ(back.info.timings[1].seconds, 3.5);
  EXPECT_EQ(back.info.transform_files, rec.info.transform_files);
  EXPECT_EQ(back.info.output.type, SampleType::kUInt16);
  EXPECT_EQ(back.fixed_spec.width, 100);
  EXPECT_EQ(back.fixed_spec.decode_scratch_bytes, 20000u);
  EXPECT_EQ(back.moving_spec.decode_scratch_bytes, 0u);

  // A state file from before decode_scratch_bytes existed reads it as
  // unknown.
  std::string old_state = EncodeJobState(rec);
  const size_t at = old_state.find("fixed_spec.decode_scratch_bytes=");
  ASSERT_NE(at, std::string::npos);
  old_state.erase(at, old_state.find('\n', at) + 1 - at);
  ASSERT_OK(DecodeJobState(old_state, &back));
  EXPECT_EQ(back.fixed_spec.decode_scratch_bytes, 0u);
  EXPECT_EQ(back.fixed_spec.height, 50);

  // A truncated state file is refused rather than half-read.
  std::string text = EncodeJobState(rec);
  EXPECT_EQ(DecodeJobState(text.substr(0, text.size() / 2), &back).code(),
            absl::StatusCode::kDataLoss);
}

TEST(JobStoreTest, JobIdsAreRandomHex) {
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<std::string> id = NewJobId();
    ASSERT_TRUE(id.ok());
    EXPECT_TRUE(IsValidJobId(*id)) << *id;
    ids.insert(*id);
  }
  EXPECT_EQ(ids.size(), 100u);
  EXPECT_FALSE(IsValidJobId("../../etc"));
  EXPECT_FALSE(IsValidJobId("0123456789ABCDEF0123456789abcdef"));
}

TEST_F(JobManagerTest, ServerSideJobCompletesAndMatchesFixed) {
  auto m = Make(FakeEnv());
  ASSERT_NE(m, nullptr);
  absl::StatusOr<std::string> id = m->CreateJob(BrainSpec(), "alice");
  ASSERT_TRUE(id.ok()) << id.status();
  auto stream = m->OpenEventStream(*id, "alice", 0);
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
  ASSERT_EQ(info.timings.size(), 3u);
  EXPECT_EQ(info.timings[0].stage, Stage::kDecode);
  EXPECT_EQ(info.timings[2].stage, Stage::kWarp);
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

}  // namespace
}  // namespace regserve

namespace regserve {
namespace {

TEST_F(JobManagerTest, CudaWarperFailureFallsBackToCpu) {
  HardwareSnapshot hw = testing_util::SmallMachine();
  hw.gpus.push_back(GpuInfo{0, "Fake GPU", 8ull << 30, 8ull << 30});
  probe_->Set(hw);
  SchedulerConfig config = testing_util::SmallSchedulerConfig();
  config.vram_budget_bytes = {4ull << 30};
  config.gpu_ordinals = {0};
  scheduler_ = std::make_unique<ResourceScheduler>(config, probe_.get());
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

}  // namespace
}  // namespace regserve
