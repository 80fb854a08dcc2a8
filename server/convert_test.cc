// Copyright regserve authors.
#include "server/convert.h"

#include <cmath>
#include <memory>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

// SpecFromProto only converts: the daemon's defaults (device, registration
// size) are the core's to apply when it validates the spec.
TEST(SpecFromProtoTest, UnspecifiedStaysUnspecifiedForTheCore) {
  v1::JobSpec p;
  p.mutable_fixed()->mutable_upload()->set_byte_size(100);
  p.mutable_fixed()->mutable_upload()->set_file_name("f.png");
  p.mutable_moving()->set_server_path("m.tif");
  auto spec = SpecFromProto(p);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->fixed.upload_bytes, 100u);
  EXPECT_EQ(spec->fixed.upload_name, "f.png");
  EXPECT_TRUE(spec->fixed.path.empty());
  EXPECT_EQ(spec->moving.path, "m.tif");
  EXPECT_EQ(spec->moving.upload_bytes, 0u);
  EXPECT_EQ(spec->options.transform, TransformKind::kBSpline);
  EXPECT_TRUE(spec->options.output_full_resolution);
  EXPECT_EQ(spec->options.interpolation, Interpolation::kLinear);
  EXPECT_EQ(spec->options.device, DevicePreference::kUnspecified);
  EXPECT_DOUBLE_EQ(spec->options.max_registration_megapixels, 0.0);
}

TEST(SpecFromProtoTest, DeviceValues) {
  const std::pair<v1::Device, DevicePreference> cases[] = {
      {v1::DEVICE_UNSPECIFIED, DevicePreference::kUnspecified},
      {v1::DEVICE_AUTO, DevicePreference::kAuto},
      {v1::DEVICE_CPU, DevicePreference::kCpu},
      {v1::DEVICE_CUDA, DevicePreference::kCuda},
  };
  for (const auto& [proto, core] : cases) {
    v1::JobSpec p;
    p.set_device(proto);
    auto spec = SpecFromProto(p);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->options.device, core) << v1::Device_Name(proto);
  }
}

TEST(SpecFromProtoTest, ExplicitValues) {
  v1::JobSpec p;
  p.set_transform(v1::TRANSFORM_KIND_AFFINE);
  p.set_output_resolution(v1::OUTPUT_RESOLUTION_REGISTRATION);
  p.set_interpolation(v1::INTERPOLATION_NEAREST);
  p.set_device(v1::DEVICE_CUDA);
  p.set_max_registration_megapixels(2.0);
  p.set_priority(-3);
  p.set_fill_value(255.0);
  p.set_client_label("lab");
  p.add_elastix_parameters("(Transform \"EulerTransform\")");
  auto spec = SpecFromProto(p);
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->options.transform, TransformKind::kAffine);
  EXPECT_FALSE(spec->options.output_full_resolution);
  EXPECT_EQ(spec->options.interpolation, Interpolation::kNearest);
  EXPECT_EQ(spec->options.device, DevicePreference::kCuda);
  EXPECT_DOUBLE_EQ(spec->options.max_registration_megapixels, 2.0);
  EXPECT_EQ(spec->priority, -3);
  EXPECT_DOUBLE_EQ(spec->fill_value, 255.0);
  EXPECT_EQ(spec->client_label, "lab");
  ASSERT_EQ(spec->custom_parameters.size(), 1u);
}

TEST(SpecFromProtoTest, UnknownEnumValuesAreInvalidArgument) {
  struct Case {
    const char* field;
    void (*set)(v1::JobSpec*);
  };
  const Case cases[] = {
      {"transform",
       [](v1::JobSpec* p) {
         p->set_transform(static_cast<v1::TransformKind>(42));
       }},
      {"output_resolution",
       [](v1::JobSpec* p) {
         p->set_output_resolution(static_cast<v1::OutputResolution>(9));
       }},
      {"interpolation",
       [](v1::JobSpec* p) {
         p->set_interpolation(static_cast<v1::Interpolation>(-1));
       }},
      {"device",
       [](v1::JobSpec* p) { p->set_device(static_cast<v1::Device>(17)); }},
  };
  for (const Case& c : cases) {
    v1::JobSpec p;
    c.set(&p);
    auto spec = SpecFromProto(p);
    ASSERT_FALSE(spec.ok()) << c.field;
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(spec.status().message().find(c.field), absl::string_view::npos)
        << spec.status();
  }
}

TEST(SpecFromProtoTest, RefineValues) {
  const std::pair<v1::Refine, RefineMode> cases[] = {
      {v1::REFINE_UNSPECIFIED, RefineMode::kAuto},
      {v1::REFINE_AUTO, RefineMode::kAuto},
      {v1::REFINE_OFF, RefineMode::kOff},
      {v1::REFINE_ON, RefineMode::kOn},
  };
  for (const auto& [proto, core] : cases) {
    v1::JobSpec p;
    p.set_refine(proto);
    auto spec = SpecFromProto(p);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->options.refine, core) << v1::Refine_Name(proto);
  }
  v1::JobSpec p;
  p.set_refine(static_cast<v1::Refine>(7));
  auto spec = SpecFromProto(p);
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find("spec.refine"),
            absl::string_view::npos)
      << spec.status();
}

TEST(PlanToProtoTest, Refinement) {
  Plan plan;
  plan.refine_enabled = true;
  plan.refine_device = WarpDevice::kCuda;
  plan.refine = {1000, 2000};
  v1::Plan out;
  PlanToProto(plan, &out);
  EXPECT_EQ(out.refine_device(), "cuda");
  EXPECT_EQ(out.refine_memory().ram_bytes(), 1000u);
  EXPECT_EQ(out.refine_memory().vram_bytes(), 2000u);
  plan.refine_enabled = false;
  out.Clear();
  PlanToProto(plan, &out);
  EXPECT_EQ(out.refine_device(), "");  // skipped: the reasons say why
}

TEST(SpecFromProtoTest, CompressionValues) {
  const std::pair<v1::Compression, Compression> cases[] = {
      {v1::COMPRESSION_UNSPECIFIED, Compression::kDeflate},
      {v1::COMPRESSION_NONE, Compression::kNone},
      {v1::COMPRESSION_DEFLATE, Compression::kDeflate},
      {v1::COMPRESSION_ZSTD, Compression::kZstd},
      {v1::COMPRESSION_JPEG, Compression::kJpeg},
  };
  for (const auto& [proto, core] : cases) {
    v1::JobSpec p;
    p.set_compression(proto);
    p.set_jpeg_quality(75);
    auto spec = SpecFromProto(p);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->options.compression, core) << v1::Compression_Name(proto);
    EXPECT_EQ(spec->options.jpeg_quality, 75);
  }
  // 0 stays 0: the core's validation makes it the default.
  auto spec = SpecFromProto(v1::JobSpec());
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->options.jpeg_quality, 0);
  v1::JobSpec p;
  p.set_compression(static_cast<v1::Compression>(9));
  spec = SpecFromProto(p);
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find("spec.compression"),
            absl::string_view::npos)
      << spec.status();
}

TEST(SpecFromProtoTest, UnknownEnumSurvivesTheWire) {
  // A client with a newer proto sends an enum value we do not know.
  v1::JobSpec p;
  p.set_transform(static_cast<v1::TransformKind>(1000));
  v1::JobSpec parsed;
  ASSERT_TRUE(parsed.ParseFromString(p.SerializeAsString()));
  EXPECT_EQ(SpecFromProto(parsed).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RoleFromProtoTest, Roles) {
  EXPECT_EQ(*RoleFromProto(v1::IMAGE_ROLE_FIXED), ImageRole::kFixed);
  EXPECT_EQ(*RoleFromProto(v1::IMAGE_ROLE_MOVING), ImageRole::kMoving);
  EXPECT_EQ(RoleFromProto(0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RoleFromProto(7).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EventToProtoTest, Tile) {
  JobEvent ev;
  ev.kind = JobEvent::Kind::kTile;
  ev.job_id = "j1";
  ev.tile_index = 5;
  ev.grid = TileGrid(612, 1061, 512);  // 2 x 3 tiles
  ev.rect = ev.grid.rect(5);
  ev.channels = 3;
  ev.sample_type = SampleType::kUInt16;
  ev.encoding = TileEncoding::kRaw;
  ev.data = std::string(100 * 37 * 3 * 2, '\x7f');
  v1::JobEvent out;
  EventToProto(ev, {}, &out);
  ASSERT_TRUE(out.has_tile());
  EXPECT_EQ(out.job_id(), "j1");
  EXPECT_EQ(out.tile().index(), 5);
  EXPECT_EQ(out.tile().x(), 512);
  EXPECT_EQ(out.tile().y(), 1024);
  EXPECT_EQ(out.tile().width(), 100);
  EXPECT_EQ(out.tile().height(), 37);
  EXPECT_EQ(out.tile().sample_type(), v1::SAMPLE_TYPE_UINT16);
  EXPECT_EQ(out.tile().data().size(), ev.data.size());
  EXPECT_EQ(out.tile().encoding(), v1::TILE_ENCODING_RAW);
  EXPECT_EQ(out.tile().image_width(), 612);
  EXPECT_EQ(out.tile().image_height(), 1061);
  EXPECT_EQ(out.tile().tile_size(), 512);
  EXPECT_EQ(out.tile().tile_count(), 6);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  EXPECT_EQ(out.tile().encoding_name(), "raw");  // for older clients
#pragma GCC diagnostic pop
}

TEST(TileEncodingTest, RequestValuesAndTheWire) {
  EXPECT_EQ(*TileEncodingFromProto(v1::TILE_ENCODING_UNSPECIFIED, "f"),
            TileEncoding::kRaw);  // what clients older than the field send
  EXPECT_EQ(*TileEncodingFromProto(v1::TILE_ENCODING_RAW, "f"),
            TileEncoding::kRaw);
  EXPECT_EQ(*TileEncodingFromProto(v1::TILE_ENCODING_ZSTD, "f"),
            TileEncoding::kZstd);
  EXPECT_EQ(*TileEncodingFromProto(v1::TILE_ENCODING_DEFLATE, "f"),
            TileEncoding::kDeflate);
  const absl::Status bad = TileEncodingFromProto(17, "tile_encoding").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.message(), "tile_encoding 17"))
      << bad.message();
  EXPECT_TRUE(absl::StrContains(bad.message(), "TILE_ENCODING_ZSTD"));
  EXPECT_EQ(TileEncodingToProto(TileEncoding::kZstd), v1::TILE_ENCODING_ZSTD);
  EXPECT_EQ(TileEncodingToProto(TileEncoding::kDeflate),
            v1::TILE_ENCODING_DEFLATE);
}

TEST(SpecFromProtoTest, OutputPath) {
  v1::JobSpec p;
  p.set_output_path("a/b.tif");
  p.set_overwrite_output(true);
  absl::StatusOr<JobSpec> s = SpecFromProto(p);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->output_path, "a/b.tif");
  EXPECT_TRUE(s->overwrite_output);
}

TEST(EventToProtoTest, Created) {
  v1::JobEvent out;
  CreatedEventToProto("j9", 1234, &out);
  EXPECT_EQ(out.job_id(), "j9");
  ASSERT_TRUE(out.has_created());
  EXPECT_EQ(out.created().upload_bytes(), 1234u);
}

TEST(CancelResponseFromInfoTest, FinalStateAndWhy) {
  JobInfo info;
  info.state = JobState::kCompleted;
  v1::CancelResponse out;
  CancelResponseFromInfo(info, &out);
  EXPECT_EQ(out.state(), v1::JOB_STATE_COMPLETED);
  EXPECT_FALSE(out.has_failure());
  info.state = JobState::kFailed;
  info.failure = absl::FailedPreconditionError("images do not overlap");
  out.Clear();
  CancelResponseFromInfo(info, &out);
  EXPECT_EQ(out.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(out.failure().code_name(), "FAILED_PRECONDITION");
  EXPECT_EQ(out.failure().message(), "images do not overlap");
}

TEST(EventToProtoTest, FailedCarriesCodeAndMessage) {
  JobEvent ev;
  ev.kind = JobEvent::Kind::kFailed;
  ev.job_id = "j2";
  ev.info.failure = absl::FailedPreconditionError("images do not overlap");
  v1::JobEvent out;
  EventToProto(ev, {}, &out);
  ASSERT_TRUE(out.has_failed());
  EXPECT_EQ(out.failed().code(), 9);
  EXPECT_EQ(out.failed().code_name(), "FAILED_PRECONDITION");
  EXPECT_EQ(out.failed().message(), "images do not overlap");
}

TEST(EventToProtoTest, CompletedAndProgress) {
  JobEvent ev;
  ev.kind = JobEvent::Kind::kCompleted;
  ev.info.output = ImageSpec{221, 257, 1, SampleType::kUInt8};
  ev.info.timings = {{Stage::kRegistration, 1.5}, {Stage::kWarp, 0.25}};
  ev.info.registration_metric = -0.8;
  v1::JobEvent out;
  EventToProto(ev, {{"TransformParameters.0.txt", "(Transform \"x\")"}}, &out);
  ASSERT_TRUE(out.has_completed());
  EXPECT_EQ(out.completed().output().width(), 221);
  EXPECT_EQ(out.completed().output().sample_type(), v1::SAMPLE_TYPE_UINT8);
  ASSERT_EQ(out.completed().timings_size(), 2);
  EXPECT_EQ(out.completed().timings(0).stage(), v1::STAGE_REGISTRATION);
  ASSERT_EQ(out.completed().transform_files_size(), 1);
  EXPECT_EQ(out.completed().transform_files(0).name(),
            "TransformParameters.0.txt");

  JobEvent prog;
  prog.kind = JobEvent::Kind::kProgress;
  prog.stage = Stage::kRegistration;
  prog.fraction = 0.5;
  prog.registration.resolution = 2;
  prog.registration.num_resolutions = 4;
  prog.registration.iteration = 100;
  prog.registration.message = "resolution 3/4";
  EventToProto(prog, {}, &out);
  ASSERT_TRUE(out.has_progress());
  EXPECT_FALSE(out.has_completed());
  EXPECT_EQ(out.progress().stage(), v1::STAGE_REGISTRATION);
  EXPECT_EQ(out.progress().registration().resolution(), 2);
  EXPECT_EQ(out.progress().registration().resolutions(), 4);
  EXPECT_EQ(out.progress().detail(), "resolution 3/4");
}

TEST(EventToProtoTest, CompletedCarriesQualitySummaryAndMap) {
  JobEvent ev;
  ev.kind = JobEvent::Kind::kCompleted;
  ev.info.quality.computed = true;
  ev.info.quality.verdict = QualityVerdict::kPoor;
  ev.info.quality.mean_px = 2.5;
  ev.info.quality.checked_fraction = 0.5;
  ev.info.quality.warning = "the registration looks poor";
  auto map = std::make_shared<QualityMap>();
  QualityGrid& g = map->grid;
  g.cols = 2;
  g.rows = 1;
  g.patch_size = 64;
  g.stride = 32;
  g.x0 = {0, 36};
  g.y0 = {0};
  g.scale_x = 2.0;
  g.scale_y = 1.5;
  g.state = {PatchState::kMeasured, PatchState::kUnmatched};
  g.error_px = {0.25f, std::nanf("")};
  g.dx = {0.25f, std::nanf("")};
  g.dy = {0.0f, std::nanf("")};
  map->thumbnail = *Image::AllocateZeroed(
      {.width = 25, .height = 8, .channels = 1, .type = SampleType::kUInt8});
  ev.info.quality_map = map;
  v1::JobEvent out;
  EventToProto(ev, {}, &out);
  const v1::QualitySummary& q = out.completed().quality();
  EXPECT_TRUE(q.estimated());
  EXPECT_EQ(q.verdict(), v1::QUALITY_VERDICT_POOR);
  EXPECT_EQ(q.mean_px(), 2.5);
  EXPECT_EQ(q.warning(), "the registration looks poor");
  const v1::QualityMap& m = out.completed().quality_map();
  EXPECT_EQ(m.cols(), 2);
  ASSERT_EQ(m.x0_size(), 2);
  EXPECT_EQ(m.x0(1), 72.0);  // full-resolution pixels
  EXPECT_EQ(m.patch_width(), 128.0);
  EXPECT_EQ(m.patch_height(), 96.0);
  EXPECT_EQ(m.stride_x(), 64.0);
  ASSERT_EQ(m.state_size(), 2);
  EXPECT_EQ(m.state(0), v1::QUALITY_PATCH_STATE_MEASURED);
  EXPECT_EQ(m.state(1), v1::QUALITY_PATCH_STATE_UNMATCHED);
  EXPECT_EQ(m.error_px(0), 0.25f);
  EXPECT_EQ(m.thumbnail_width(), 25);
  EXPECT_EQ(m.thumbnail().size(), 25u * 8);

  // A job without an estimate sends neither.
  ev.info.quality = QualitySummary();
  ev.info.quality_map = nullptr;
  EventToProto(ev, {}, &out);
  EXPECT_FALSE(out.completed().has_quality());
  EXPECT_FALSE(out.completed().has_quality_map());
}

TEST(JobInfoToProtoTest, Snapshot) {
  JobInfo info;
  info.id = "abc";
  info.state = JobState::kQueued;
  info.queue_position = 2;
  info.has_plan = true;
  info.plan.output_width = 10;
  info.plan.reasons = {"because"};
  info.spec.priority = 4;
  info.created = absl::FromUnixMillis(1234);
  info.finished = absl::InfinitePast();
  v1::JobStatus out;
  JobInfoToProto(info, {}, &out);
  EXPECT_EQ(out.job_id(), "abc");
  EXPECT_EQ(out.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(out.queue_position(), 2);
  EXPECT_EQ(out.plan().output_width(), 10);
  EXPECT_EQ(out.plan().reasons(0), "because");
  EXPECT_EQ(out.priority(), 4);
  EXPECT_EQ(out.created_unix_ms(), 1234);
  EXPECT_EQ(out.finished_unix_ms(), 0);
  EXPECT_FALSE(out.has_failure());
}

}  // namespace
}  // namespace regserve
