// Copyright regserve authors.
//
// The stored result as the warp stage writes it (core/image/
// tiled_tiff_writer.h): a pyramid in the job's compression, with the
// inputs' metadata, that the event stream reads back tile by tile.
#include <OpenImageIO/imageio.h>

#include "core/jobs/job_manager_test_fixture.h"

namespace regserve {
namespace jobs_test {
namespace {

// Writes `img` as a TIFF with the given metadata, through OpenImageIO.
void WriteTiff(const std::string& path, const Image& img, float dpi,
               const std::string& icc) {
  auto out = OIIO::ImageOutput::create(path);
  ASSERT_TRUE(out != nullptr);
  OIIO::ImageSpec s(static_cast<int>(img.width()),
                    static_cast<int>(img.height()), img.channels(),
                    OIIO::TypeDesc::UINT8);
  if (dpi > 0) {
    s.attribute("XResolution", dpi);
    s.attribute("YResolution", dpi);
    s.attribute("ResolutionUnit", "in");
  }
  if (!icc.empty()) {
    s.attribute(
        "ICCProfile",
        OIIO::TypeDesc(OIIO::TypeDesc::UINT8, static_cast<int>(icc.size())),
        icc.data());
  }
  ASSERT_TRUE(out->open(path, s));
  ASSERT_TRUE(out->write_image(OIIO::TypeDesc::UINT8, img.data()));
  ASSERT_TRUE(out->close());
}

TEST_F(JobManagerTest, ResultIsAPyramidInTheJobsCompressionAndStreams) {
  auto m = Make(FakeEnv());
  for (Compression c :
       {Compression::kZstd, Compression::kJpeg, Compression::kNone}) {
    JobSpec spec = BrainSpec();
    spec.options.compression = c;
    absl::StatusOr<std::string> id = m->CreateJob(spec, "");
    ASSERT_TRUE(id.ok()) << id.status();
    const JobInfo info = WaitTerminal(m.get(), *id);
    ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
    // 181x217 in 64 px tiles, halved down to one tile.
    auto in = OIIO::ImageInput::open(info.result_path);
    ASSERT_TRUE(in != nullptr) << OIIO::geterror();
    // TIFF's codes: zstd 50000, JPEG 7, none 1.
    EXPECT_EQ(in->spec().get_int_attribute("tiff:Compression"),
              c == Compression::kZstd   ? 50000
              : c == Compression::kJpeg ? 7
                                        : 1);
    EXPECT_EQ(in->spec().tile_width, 64);
    const int64_t want[][2] = {{181, 217}, {91, 109}, {46, 55}};
    for (int k = 0; k < 3; ++k) {
      ASSERT_TRUE(in->seek_subimage(k, 0)) << k;
      EXPECT_EQ(in->spec().width, want[k][0]) << k;
      EXPECT_EQ(in->spec().height, want[k][1]) << k;
    }
    EXPECT_FALSE(in->seek_subimage(3, 0));
    in->close();
    EXPECT_THAT(info.plan.reasons,
                ::testing::Contains(HasSubstr(absl::StrCat(
                    "pyramidal tiled TIFF, ", CompressionName(c)))));

    // A reader that attaches after the job gets the stored tiles: the same
    // pixels as the full-resolution level.
    absl::StatusOr<Image> stored = ReadImageFile(info.result_path);
    ASSERT_TRUE(stored.ok()) << stored.status();
    auto stream = m->OpenEventStream(*id, "", 0);
    ASSERT_TRUE(stream.ok()) << stream.status();
    Drained d = Drain(stream->get());
    ASSERT_OK(d.end);
    ASSERT_EQ(d.Count(JobEvent::Kind::kTile), 12);
    for (const JobEvent& e : d.events) {
      if (e.kind != JobEvent::Kind::kTile) continue;
      const size_t line = static_cast<size_t>(e.rect.w) * e.channels;
      for (int64_t y = 0; y < e.rect.h; ++y) {
        ASSERT_EQ(0, std::memcmp(e.data.data() + y * line,
                                 stored->row(e.rect.y + y) +
                                     e.rect.x * stored->channels(),
                                 line))
            << "tile " << e.tile_index;
      }
    }
  }
}

TEST_F(JobManagerTest, ResultCarriesTheInputsMetadata) {
  // The fixed image says 200 dpi; the moving image has the colour profile.
  absl::StatusOr<Image> fixed = ReadImageFile(BrainFixed());
  absl::StatusOr<Image> moving = ReadImageFile(BrainMoving());
  ASSERT_TRUE(fixed.ok() && moving.ok());
  std::string icc(200, 'p');
  std::memcpy(&icc[36], "acsp", 4);
  WriteTiff(root_ + "/brain/fixed.tif", *fixed, 200.0f, "");
  WriteTiff(root_ + "/brain/moving.tif", *moving, 72.0f, icc);
  auto m = Make(FakeEnv());
  JobSpec spec = ServerSideSpec("brain/fixed.tif", "brain/moving.tif");
  spec.options.compression = Compression::kDeflate;
  absl::StatusOr<std::string> id = m->CreateJob(spec, "");
  ASSERT_TRUE(id.ok()) << id.status();
  const JobInfo info = WaitTerminal(m.get(), *id);
  ASSERT_EQ(info.state, JobState::kCompleted) << info.failure;
  auto in = OIIO::ImageInput::open(info.result_path);
  ASSERT_TRUE(in != nullptr);
  const OIIO::ParamValue* p = in->spec().find_attribute("ICCProfile");
  ASSERT_TRUE(p != nullptr);
  EXPECT_EQ(std::string(static_cast<const char*>(p->data()), p->datasize()),
            icc);
  // On the fixed image's grid: its resolution.
  EXPECT_FLOAT_EQ(in->spec().get_float_attribute("XResolution"), 200.0f);
  EXPECT_EQ(in->spec().get_string_attribute("ResolutionUnit"), "in");
  in->close();
}

TEST_F(JobManagerTest, CompressionOptionsAreCheckedAtSubmission) {
  auto m = Make(FakeEnv());
  JobSpec spec = BrainSpec();
  spec.options.compression = Compression::kJpeg;
  spec.options.jpeg_quality = 101;
  absl::StatusOr<std::string> id = m->CreateJob(spec, "");
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(id.status().message()),
              HasSubstr("spec.jpeg_quality"));
  // JPEG cannot hold alpha: refused once the moving image's header is read.
  absl::StatusOr<Image> moving = ReadImageFile(BrainMoving());
  ASSERT_TRUE(moving.ok());
  ImageSpec rgba = moving->spec();
  rgba.channels = 4;
  absl::StatusOr<Image> four = Image::AllocateZeroed(rgba);
  ASSERT_TRUE(four.ok());
  ASSERT_OK(WriteImageFile(root_ + "/brain/moving_rgba.png", *four));
  spec = ServerSideSpec("brain/fixed.png", "brain/moving_rgba.png");
  spec.options.compression = Compression::kJpeg;
  // Server-side inputs are planned at submission.
  id = m->CreateJob(spec, "");
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(id.status().message()),
              HasSubstr("spec.compression=jpeg"));
}

}  // namespace
}  // namespace jobs_test
}  // namespace regserve
