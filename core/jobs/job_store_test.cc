// Copyright regserve authors.
//
// The on-disk job records: round trips and ids.
#include "core/jobs/job_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/jobs/job_manager_test_fixture.h"

namespace regserve {
namespace jobs_test {
namespace {

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
  rec.fixed_spec.stream_rows = 96;
  rec.fixed_spec.stream_scratch_bytes = 30000;

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
  EXPECT_EQ(back.fixed_spec.stream_rows, 96);
  EXPECT_EQ(back.fixed_spec.stream_scratch_bytes, 30000u);
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
  // One from before the streamed layout existed: unknown too.
  for (const char* key :
       {"fixed_spec.stream_rows=", "fixed_spec.stream_scratch_bytes="}) {
    const size_t pos = old_state.find(key);
    ASSERT_NE(pos, std::string::npos) << key;
    old_state.erase(pos, old_state.find('\n', pos) + 1 - pos);
  }
  ASSERT_OK(DecodeJobState(old_state, &back));
  EXPECT_EQ(back.fixed_spec.stream_rows, 0);
  EXPECT_EQ(back.fixed_spec.stream_scratch_bytes, 0u);

  // A truncated state file is refused rather than half-read.
  std::string text = EncodeJobState(rec);
  EXPECT_EQ(DecodeJobState(text.substr(0, text.size() / 2), &back).code(),
            absl::StatusCode::kDataLoss);
}

TEST(JobStoreTest, QualityRoundTripsAndOldFilesLackIt) {
  JobRecord rec;
  rec.info.id = "0123456789abcdef0123456789abcdef";
  rec.info.state = JobState::kCompleted;
  rec.info.stage = Stage::kQuality;
  rec.info.has_plan = true;
  rec.info.plan.registration.ram_bytes = 900;
  rec.info.plan.quality.ram_bytes = 123456789;
  rec.info.timings = {{Stage::kQuality, 0.5}};
  QualitySummary& q = rec.info.quality;
  q.computed = true;
  q.verdict = QualityVerdict::kPoor;
  q.mean_px = 2.31;
  q.p95_px = 6.5;
  q.max_px = 13.25;
  q.checked_fraction = 0.4;
  q.unmatched_fraction = 0.125;
  q.measured = 70;
  q.unmatched = 10;
  q.unknown = 120;
  q.warning = "the registration looks poor:\nest. mean 2.31 px";

  JobRecord back;
  ASSERT_OK(DecodeJobState(EncodeJobState(rec), &back));
  EXPECT_EQ(back.info.stage, Stage::kQuality);
  EXPECT_EQ(back.info.timings[0].stage, Stage::kQuality);
  EXPECT_EQ(back.info.plan.quality.ram_bytes, 123456789u);
  const QualitySummary& b = back.info.quality;
  EXPECT_TRUE(b.computed);
  EXPECT_EQ(b.verdict, QualityVerdict::kPoor);
  EXPECT_EQ(b.mean_px, 2.31);
  EXPECT_EQ(b.p95_px, 6.5);
  EXPECT_EQ(b.max_px, 13.25);
  EXPECT_EQ(b.checked_fraction, 0.4);
  EXPECT_EQ(b.unmatched_fraction, 0.125);
  EXPECT_EQ(b.measured, 70);
  EXPECT_EQ(b.unmatched, 10);
  EXPECT_EQ(b.unknown, 120);
  EXPECT_EQ(b.warning, q.warning);
  EXPECT_EQ(back.info.quality_map, nullptr);  // the map is not stored

  // A state file from before the quality stage: no summary, and the stage
  // reserves what the registration did.
  std::string old_state;
  for (absl::string_view line : absl::StrSplit(EncodeJobState(rec), '\n')) {
    if (absl::StartsWith(line, "quality.") ||
        absl::StartsWith(line, "plan.quality.")) {
      continue;
    }
    absl::StrAppend(&old_state, line, "\n");
  }
  ASSERT_OK(DecodeJobState(old_state, &back));
  EXPECT_FALSE(back.info.quality.computed);
  EXPECT_EQ(back.info.plan.quality.ram_bytes, 900u);
}

TEST(JobStoreTest, CompressionAndWriterThreadsRoundTripAndOldFilesLackThem) {
  JobRecord rec;
  rec.info.id = "0123456789abcdef0123456789abcdef";
  rec.info.spec.options.compression = Compression::kJpeg;
  rec.info.spec.options.jpeg_quality = 77;
  rec.info.state = JobState::kQueued;
  rec.info.has_plan = true;
  rec.info.plan.stream_tile_size = 512;
  rec.info.plan.result_writer_threads = 16;
  JobRecord back;
  ASSERT_OK(DecodeJobSpec(EncodeJobSpec(rec), &back));
  ASSERT_OK(DecodeJobState(EncodeJobState(rec), &back));
  EXPECT_EQ(back.info.spec.options.compression, Compression::kJpeg);
  EXPECT_EQ(back.info.spec.options.jpeg_quality, 77);
  EXPECT_EQ(back.info.plan.result_writer_threads, 16);

  // Files from before the options: deflate, as results were then, and a
  // writer sized for one thread.
  auto without = [](const std::string& text, absl::string_view prefix) {
    std::string out;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (!absl::StartsWith(line, prefix)) absl::StrAppend(&out, line, "\n");
    }
    return out;
  };
  JobRecord old;
  ASSERT_OK(
      DecodeJobSpec(without(without(EncodeJobSpec(rec), "options.compression"),
                            "options.jpeg_quality"),
                    &old));
  ASSERT_OK(DecodeJobState(
      without(EncodeJobState(rec), "plan.result_writer_threads"), &old));
  EXPECT_EQ(old.info.spec.options.compression, Compression::kDeflate);
  EXPECT_EQ(old.info.spec.options.jpeg_quality, kDefaultJpegQuality);
  EXPECT_EQ(old.info.plan.result_writer_threads, 0);
}

TEST(JobStoreTest, RefineOptionAndPlanRoundTripAndOldFilesLackThem) {
  JobRecord rec;
  rec.info.id = "0123456789abcdef0123456789abcdef";
  rec.info.spec.options.refine = RefineMode::kOn;
  rec.info.state = JobState::kRunning;
  rec.info.stage = Stage::kRefine;
  rec.info.has_plan = true;
  rec.info.plan.refine_enabled = true;
  rec.info.plan.refine_device = WarpDevice::kCuda;
  rec.info.plan.refine_max_pixels = 1250000;
  rec.info.plan.refine_width = 1490;
  rec.info.plan.refine_height = 838;
  rec.info.plan.refine_levels = 4;
  rec.info.plan.refine_iterations = 40;
  rec.info.plan.refine = {123456789, 987654321};
  rec.info.timings = {{Stage::kRefine, 2.5}};
  JobRecord back;
  ASSERT_OK(DecodeJobSpec(EncodeJobSpec(rec), &back));
  ASSERT_OK(DecodeJobState(EncodeJobState(rec), &back));
  EXPECT_EQ(back.info.spec.options.refine, RefineMode::kOn);
  EXPECT_EQ(back.info.stage, Stage::kRefine);
  EXPECT_EQ(back.info.timings[0].stage, Stage::kRefine);
  const Plan& p = back.info.plan;
  EXPECT_TRUE(p.refine_enabled);
  EXPECT_EQ(p.refine_device, WarpDevice::kCuda);
  EXPECT_EQ(p.refine_max_pixels, 1250000);
  EXPECT_EQ(p.refine_width, 1490);
  EXPECT_EQ(p.refine_height, 838);
  EXPECT_EQ(p.refine_levels, 4);
  EXPECT_EQ(p.refine_iterations, 40);
  EXPECT_EQ(p.refine.ram_bytes, 123456789u);
  EXPECT_EQ(p.refine.vram_bytes, 987654321u);

  // Files from before the option: auto, and a plan without refinement.
  auto without = [](const std::string& text, absl::string_view prefix) {
    std::string out;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (!absl::StartsWith(line, prefix)) absl::StrAppend(&out, line, "\n");
    }
    return out;
  };
  rec.info.stage = Stage::kWarp;
  rec.info.timings.clear();
  JobRecord old;
  ASSERT_OK(DecodeJobSpec(without(EncodeJobSpec(rec), "options.refine"), &old));
  ASSERT_OK(DecodeJobState(without(EncodeJobState(rec), "plan.refine"), &old));
  EXPECT_EQ(old.info.spec.options.refine, RefineMode::kAuto);
  EXPECT_FALSE(old.info.plan.refine_enabled);
  EXPECT_EQ(old.info.plan.refine.ram_bytes, 0u);
  // A damaged mode is refused, not guessed.
  std::string bad = EncodeJobSpec(rec);
  bad.replace(bad.find("options.refine=on"), 17, "options.refine=sometimes");
  EXPECT_FALSE(DecodeJobSpec(bad, &old).ok());
}

TEST(JobStoreTest, ElastixScheduleRoundTrips) {
  JobRecord rec;
  rec.info.id = "00112233445566778899aabbccddeeff";
  rec.info.state = JobState::kRunning;
  rec.info.stage = Stage::kRegistration;
  rec.info.has_plan = true;
  Plan& in = rec.info.plan;
  in.elastix_fixed_width = 2582;
  in.elastix_fixed_height = 1403;
  in.elastix_moving_width = 2600;
  in.elastix_moving_height = 1400;
  in.elastix_iteration_scale = 0.375;
  in.elastix_linear_stage = false;
  in.shift_correction_passes = 2;
  in.shift_correction.ram_bytes = 123456789;
  in.shift_correction_after_refine = true;
  JobRecord back;
  ASSERT_OK(DecodeJobSpec(EncodeJobSpec(rec), &back));
  ASSERT_OK(DecodeJobState(EncodeJobState(rec), &back));
  const Plan& p = back.info.plan;
  EXPECT_EQ(p.elastix_fixed_width, 2582);
  EXPECT_EQ(p.elastix_fixed_height, 1403);
  EXPECT_EQ(p.elastix_moving_width, 2600);
  EXPECT_EQ(p.elastix_moving_height, 1400);
  EXPECT_DOUBLE_EQ(p.elastix_iteration_scale, 0.375);
  EXPECT_FALSE(p.elastix_linear_stage);
  EXPECT_EQ(p.shift_correction_passes, 2);
  EXPECT_EQ(p.shift_correction.ram_bytes, 123456789u);
  EXPECT_TRUE(p.shift_correction_after_refine);
  // Files from before the fields: the registration copy and the preset,
  // no shift correction.
  std::string old_text;
  for (absl::string_view line : absl::StrSplit(EncodeJobState(rec), '\n')) {
    if (!absl::StartsWith(line, "plan.elastix_") &&
        !absl::StartsWith(line, "plan.shift_correction")) {
      absl::StrAppend(&old_text, line, "\n");
    }
  }
  JobRecord old;
  ASSERT_OK(DecodeJobSpec(EncodeJobSpec(rec), &old));
  ASSERT_OK(DecodeJobState(old_text, &old));
  EXPECT_EQ(old.info.plan.elastix_fixed_width, 0);
  EXPECT_DOUBLE_EQ(old.info.plan.elastix_iteration_scale, 1.0);
  EXPECT_TRUE(old.info.plan.elastix_linear_stage);
  EXPECT_EQ(old.info.plan.shift_correction_passes, 0);
  EXPECT_FALSE(old.info.plan.shift_correction_after_refine);
  // A damaged value is refused.
  std::string bad = EncodeJobState(rec);
  bad.replace(bad.find("plan.elastix_iteration_scale="),
              std::string("plan.elastix_iteration_scale=").size(),
              "plan.elastix_iteration_scale=-");
  EXPECT_FALSE(DecodeJobState(bad, &old).ok());
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

}  // namespace
}  // namespace jobs_test
}  // namespace regserve
