// Copyright regserve authors.
//
// The bad-input corpus, end to end: a real regserved on loopback, driven
// through the raw regserve.v1 stubs. tests/e2e/service_e2e_test.cc already
// covers 16 cases (spec missing / duplicated / before chunks, unknown
// transform and interpolation, unknown role, corrupt bytes, truncated and
// oversized upload, chunk offset gap, path outside the root, two garbage
// parameter files, unknown job ids, from_tile 10^6 and -1); this file adds
// the rest. Every case states its gRPC status, and after every case the
// daemon must still answer health SERVING and complete a normal job (the
// brain pair, rigid).
//
// Some "bad" inputs are valid and must complete: 16-bit and float images,
// 1, 2 and 4 channels, a PNG named .jpg.
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/regserve_client.h"
#include "core/common/file_util.h"
#include "core/image/image.h"
#include "core/image/image_io.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace regserve {
namespace e2e {
namespace {

using C = grpc::StatusCode;

std::string ReadAll(const std::string& path) {
  return ReadFileToString(path).value_or("");  // "" when missing
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::string BrainFixed() {
  return TestData("itk_brain/BrainProtonDensitySlice.png");
}
std::string BrainMoving() {
  return TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
}
v1::SampleType ToProto(SampleType t) {
  switch (t) {
    case SampleType::kUInt8:
      return v1::SAMPLE_TYPE_UINT8;
    case SampleType::kUInt16:
      return v1::SAMPLE_TYPE_UINT16;
    case SampleType::kFloat32:
      return v1::SAMPLE_TYPE_FLOAT32;
  }
  return v1::SAMPLE_TYPE_UNSPECIFIED;
}

std::string Bad(const std::string& name) {
  return TestData("bad_images/" + name);
}

// The brain moving image converted to `type` with `channels` channels (the
// gray value repeated; the last channel is opaque alpha for 2 and 4).
void WriteVariant(const std::string& path, SampleType type, int channels) {
  absl::StatusOr<Image> gray = ReadImageFile(BrainMoving());
  ASSERT_TRUE(gray.ok()) << gray.status();
  ASSERT_EQ(gray->type(), SampleType::kUInt8);
  const int stride = gray->channels();  // the file is gray stored as RGB
  ImageSpec spec = gray->spec();
  spec.type = type;
  spec.channels = channels;
  absl::StatusOr<Image> out = Image::Allocate(spec);
  ASSERT_TRUE(out.ok());
  const int64_t n = spec.pixels();
  for (int64_t i = 0; i < n; ++i) {
    const double v = gray->data()[i * stride] / 255.0;
    for (int c = 0; c < channels; ++c) {
      const bool alpha = (channels == 2 || channels == 4) && c == channels - 1;
      const double s = alpha ? 1.0 : v;
      const size_t at = static_cast<size_t>(i) * channels + c;
      switch (type) {
        case SampleType::kUInt8:
          out->data()[at] = static_cast<uint8_t>(std::lround(s * 255));
          break;
        case SampleType::kUInt16:
          reinterpret_cast<uint16_t*>(out->data())[at] =
              static_cast<uint16_t>(std::lround(s * 65535));
          break;
        case SampleType::kFloat32:
          reinterpret_cast<float*>(out->data())[at] = static_cast<float>(s);
          break;
      }
    }
  }
  absl::Status written = WriteImageFile(path, *out);
  ASSERT_TRUE(written.ok()) << path << ": " << written;
}

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_dir_ = new std::string(MakeTempDir("regserve_bad_data"));
    input_root_ = new std::string(MakeTempDir("regserve_bad_inputs"));
    files_ = new std::string(MakeTempDir("regserve_bad_files"));
    daemon_ = new Daemon();
    ASSERT_TRUE(daemon_->Start(
        *data_dir_,
        {"--stream_tile_size=64", "--elastix_threads=1", "--cpu_slots=2",
         "--max_upload=64M", "--input_root=" + *input_root_}))
        << ReadAll(daemon_->stderr_path());
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0) << ReadAll(daemon_->stderr_path());
    delete daemon_;
    delete data_dir_;
    delete input_root_;
    delete files_;
  }

  void SetUp() override {
    RegistrationClient::Options o;
    o.address = daemon_->address();
    client_ = std::make_unique<RegistrationClient>(o);
    fixed_ = ReadAll(BrainFixed());
    moving_ = ReadAll(BrainMoving());
  }

  static std::string File(const std::string& name) {
    return *files_ + "/" + name;
  }

  // One Submit call: `requests` in order, then WritesDone (or a client-side
  // cancel when `vanish`), then every event until the end.
  grpc::Status Raw(const std::vector<v1::SubmitRequest>& requests,
                   std::vector<v1::JobEvent>* events = nullptr,
                   bool vanish = false) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
    auto stream = client_->stub()->Submit(&ctx);
    for (const v1::SubmitRequest& r : requests) {
      if (!stream->Write(r)) break;
    }
    if (vanish) {
      ctx.TryCancel();
    } else {
      stream->WritesDone();
    }
    v1::JobEvent e;
    while (stream->Read(&e)) {
      if (events != nullptr) events->push_back(e);
    }
    return stream->Finish();
  }

  static v1::SubmitRequest Spec(const std::string& fixed_bytes,
                                const std::string& fixed_name,
                                const std::string& moving_bytes,
                                const std::string& moving_name) {
    v1::SubmitRequest r;
    v1::JobSpec* spec = r.mutable_spec();
    spec->set_transform(v1::TRANSFORM_KIND_RIGID);
    spec->mutable_fixed()->mutable_upload()->set_byte_size(fixed_bytes.size());
    spec->mutable_fixed()->mutable_upload()->set_file_name(fixed_name);
    spec->mutable_moving()->mutable_upload()->set_byte_size(
        moving_bytes.size());
    spec->mutable_moving()->mutable_upload()->set_file_name(moving_name);
    return r;
  }

  static v1::SubmitRequest Chunk(v1::ImageRole role, uint64_t offset,
                                 const std::string& data) {
    v1::SubmitRequest r;
    r.mutable_chunk()->set_role(role);
    r.mutable_chunk()->set_offset(offset);
    r.mutable_chunk()->set_data(data);
    return r;
  }

  // A complete upload of two images; `edit` may change the spec.
  grpc::Status Upload(const std::string& fixed_bytes,
                      const std::string& fixed_name,
                      const std::string& moving_bytes,
                      const std::string& moving_name,
                      const std::function<void(v1::JobSpec*)>& edit = nullptr,
                      std::vector<v1::JobEvent>* events = nullptr) {
    v1::SubmitRequest spec =
        Spec(fixed_bytes, fixed_name, moving_bytes, moving_name);
    if (edit) edit(spec.mutable_spec());
    std::vector<v1::SubmitRequest> requests = {spec};
    if (!fixed_bytes.empty())
      requests.push_back(Chunk(v1::IMAGE_ROLE_FIXED, 0, fixed_bytes));
    if (!moving_bytes.empty())
      requests.push_back(Chunk(v1::IMAGE_ROLE_MOVING, 0, moving_bytes));
    return Raw(requests, events);
  }

  // Moving image = `path` (uploaded under `name`), fixed = the brain slice.
  grpc::Status MovingFile(const std::string& path, const std::string& name,
                          std::vector<v1::JobEvent>* events = nullptr) {
    return Upload(fixed_, "fixed.png", ReadAll(path), name, nullptr, events);
  }

  grpc::Status WithParameters(const std::string& text) {
    return Upload(fixed_, "fixed.png", moving_, "moving.png",
                  [&](v1::JobSpec* s) { s->add_elastix_parameters(text); });
  }

  void ExpectServing() {
    bool serving = false;
    ASSERT_TRUE(client_->CheckHealth("", &serving).ok());
    EXPECT_TRUE(serving);
  }

  // Nothing reserved, running, queued or uploading.
  static bool Idle(const v1::ServerInfo& info) {
    return info.ram_reserved_bytes() == 0 &&
           info.jobs_running() + info.jobs_queued() + info.jobs_uploading() ==
               0;
  }
  static std::string Occupancy(const v1::ServerInfo& info) {
    return absl::StrCat(info.ram_reserved_bytes(), " bytes reserved, ",
                        info.jobs_running(), " running, ", info.jobs_queued(),
                        " queued, ", info.jobs_uploading(), " uploading");
  }

  // Health SERVING, and idle within 30 s (a failed job's clean-up may
  // finish just after its stream ends).
  void ExpectHealthyAndIdle(const std::string& after) {
    SCOPED_TRACE("after case: " + after);
    ASSERT_NO_FATAL_FAILURE(ExpectServing());
    v1::ServerInfo info;
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    do {
      ASSERT_TRUE(client_->GetServerInfo(&info).ok());
      if (Idle(info)) return;
      absl::SleepFor(absl::Milliseconds(20));
    } while (absl::Now() < deadline);
    ADD_FAILURE() << "not idle: " << Occupancy(info);
  }

  // Health SERVING, a normal job completes, and then the daemon is idle.
  void ExpectHealthyAndWorking(const std::string& after) {
    SCOPED_TRACE("after case: " + after);
    ASSERT_NO_FATAL_FAILURE(ExpectServing());
    std::vector<v1::JobEvent> events;
    grpc::Status s =
        Upload(fixed_, "fixed.png", moving_, "moving.png", nullptr, &events);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_FALSE(events.empty());
    EXPECT_TRUE(events.back().has_completed());
    v1::ServerInfo info;
    ASSERT_TRUE(client_->GetServerInfo(&info).ok());
    EXPECT_TRUE(Idle(info)) << Occupancy(info);
  }

  // The client sends the spec and a third of the fixed image, waits until
  // the job exists, and vanishes. The server fails the job with a reason.
  grpc::Status VanishMidUpload() {
    grpc::ClientContext ctx;
    auto stream = client_->stub()->Submit(&ctx);
    v1::SubmitRequest spec = Spec(fixed_, "fixed.png", moving_, "moving.png");
    spec.mutable_spec()->set_client_label("stops early");
    stream->Write(spec);
    stream->Write(
        Chunk(v1::IMAGE_ROLE_FIXED, 0, fixed_.substr(0, fixed_.size() / 3)));
    std::string id;
    const auto find = [&](const std::function<bool(v1::JobState)>& want,
                          v1::JobStatus* out) {
      for (int i = 0; i < 400; ++i) {
        v1::ListJobsResponse list;
        if (client_->ListJobs(&list).ok()) {
          for (const v1::JobStatus& j : list.jobs()) {
            if (j.client_label() == "stops early" && want(j.state()) &&
                (id.empty() || j.job_id() == id)) {
              *out = j;
              return true;
            }
          }
        }
        absl::SleepFor(absl::Milliseconds(25));
      }
      return false;
    };
    v1::JobStatus job;
    EXPECT_TRUE(find(
        [](v1::JobState s) { return s == v1::JOB_STATE_UPLOADING; }, &job));
    id = job.job_id();
    ctx.TryCancel();
    grpc::Status s = stream->Finish();
    EXPECT_TRUE(find(
        [](v1::JobState s) {
          return s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
        },
        &job))
        << v1::JobState_Name(job.state());
    // Depending on whether the server saw the cancellation or the end of the
    // stream first, the job fails as "disconnected" or as a truncated upload;
    // both name the cause.
    EXPECT_TRUE(
        job.failure().message().find("disconnected") != std::string::npos ||
        job.failure().message().find("upload truncated") != std::string::npos)
        << job.failure().message();
    fprintf(stderr, "vanished upload: job %s %s: %s\n", id.c_str(),
            v1::JobState_Name(job.state()).c_str(),
            job.failure().message().c_str());
    return s;
  }

  struct Case {
    std::string name;
    C expected;
    std::function<grpc::Status()> run;
  };

  // Each case, then the daemon's health and idle state; after the last, a
  // normal job (a full job after every case made this test the suite's
  // longest, and a daemon that a case broke fails the next health check).
  void RunCases(const std::vector<Case>& cases) {
    for (const Case& c : cases) {
      const absl::Time start = absl::Now();
      const grpc::Status s = c.run();
      EXPECT_EQ(s.error_code(), c.expected)
          << c.name << ": got " << s.error_code() << " " << s.error_message();
      fprintf(stderr, "case %-40s -> %d (%s) in %.2f s\n", c.name.c_str(),
              static_cast<int>(s.error_code()), s.error_message().c_str(),
              absl::ToDoubleSeconds(absl::Now() - start));
      ExpectHealthyAndIdle(c.name);
      ++cases_run_;
    }
    if (!cases.empty()) ExpectHealthyAndWorking(cases.back().name);
  }

  static Daemon* daemon_;
  static std::string* data_dir_;
  static std::string* input_root_;
  static std::string* files_;
  static int cases_run_;
  std::unique_ptr<RegistrationClient> client_;
  std::string fixed_, moving_;
};
Daemon* BadInputTest::daemon_ = nullptr;
std::string* BadInputTest::data_dir_ = nullptr;
std::string* BadInputTest::input_root_ = nullptr;
std::string* BadInputTest::files_ = nullptr;
int BadInputTest::cases_run_ = 0;

TEST_F(BadInputTest, DamagedFilesOfEveryFormat) {
  // An EXR made here (float32, the brain slice), then damaged like the
  // files in tests/data/bad_images.
  ASSERT_NO_FATAL_FAILURE(
      WriteVariant(File("valid.exr"), SampleType::kFloat32, 1));
  const std::string exr = ReadAll(File("valid.exr"));
  ASSERT_GT(exr.size(), 100u);
  WriteAll(File("truncated.exr"), exr.substr(0, exr.size() / 2));
  std::string bad_magic = exr;
  bad_magic[0] = 'X';
  bad_magic[1] = 'X';
  WriteAll(File("corrupt_header.exr"), bad_magic);

  std::vector<Case> cases;
  for (const char* name :
       {"truncated.png", "truncated.jpg", "truncated.tif", "corrupt_header.png",
        "corrupt_header.jpg", "corrupt_header.tif", "garbage.png",
        "five_channels.tif", "strip_rows_2pow31.tif", "long_text_chunk.png"}) {
    const std::string n = name;
    cases.push_back(
        {n, C::INVALID_ARGUMENT, [this, n] { return MovingFile(Bad(n), n); }});
  }
  for (const char* name : {"truncated.exr", "corrupt_header.exr"}) {
    const std::string n = name;
    cases.push_back(
        {n, C::INVALID_ARGUMENT, [this, n] { return MovingFile(File(n), n); }});
  }
  cases.push_back(
      {"zero-byte file (declared size 0)", C::INVALID_ARGUMENT,
       [this] { return MovingFile(Bad("empty.png"), "empty.png"); }});
  cases.push_back({"1x1 images", C::INVALID_ARGUMENT, [this] {
                     const std::string one = ReadAll(Bad("one_pixel.png"));
                     return Upload(one, "a.png", one, "b.png");
                   }});
  // The per-image pixel limit (1e9) refuses it from the header, before any
  // allocation; the TIFF is refused by OIIO's own size limit at open.
  cases.push_back(
      {"bomb: PNG header 200000x200000", C::INVALID_ARGUMENT, [this] {
         return MovingFile(Bad("bomb_200000x200000.png"), "bomb.png");
       }});
  cases.push_back(
      {"bomb: TIFF header 200000x200000", C::INVALID_ARGUMENT, [this] {
         return MovingFile(Bad("bomb_200000x200000.tif"), "bomb.tif");
       }});
  cases.push_back({"file name without extension", C::INVALID_ARGUMENT,
                   [this] { return MovingFile(BrainMoving(), "moving"); }});
  RunCases(cases);
}

// A wrong or unknown extension only picks the first decoder tried; the
// content decides, so intact images still complete.
TEST_F(BadInputTest, WrongExtensionsStillDecode) {
  std::vector<Case> cases;
  cases.push_back({"PNG bytes named .jpg", C::OK,
                   [this] { return MovingFile(BrainMoving(), "moving.jpg"); }});
  cases.push_back({"PNG bytes named .xyz", C::OK,
                   [this] { return MovingFile(BrainMoving(), "moving.xyz"); }});
  // A JPEG of the brain moving image (a tiny unrelated JPEG would fail
  // registration for lack of overlap, which is not what this case tests).
  ASSERT_NO_FATAL_FAILURE(
      WriteVariant(File("moving_brain.jpg"), SampleType::kUInt8, 3));
  cases.push_back({"JPEG bytes named .tif", C::OK, [this] {
                     return MovingFile(File("moving_brain.jpg"), "moving.tif");
                   }});
  RunCases(cases);
}

TEST_F(BadInputTest, UnusualButValidImagesComplete) {
  struct Variant {
    std::string name;
    SampleType type;
    int channels;
  };
  const std::vector<Variant> variants = {
      {"moving16.png", SampleType::kUInt16, 1},
      {"moving16.tif", SampleType::kUInt16, 1},
      {"moving_float.tif", SampleType::kFloat32, 1},
      {"moving_float.exr", SampleType::kFloat32, 1},
      {"moving_gray_alpha.png", SampleType::kUInt8, 2},
      {"moving_rgba.png", SampleType::kUInt8, 4},
      {"moving_rgba16.tif", SampleType::kUInt16, 4},
  };
  std::vector<Case> cases;
  for (const Variant& v : variants) {
    ASSERT_NO_FATAL_FAILURE(WriteVariant(File(v.name), v.type, v.channels));
    cases.push_back(
        {v.name, C::OK, [this, v] {
           std::vector<v1::JobEvent> events;
           grpc::Status s = MovingFile(File(v.name), v.name, &events);
           if (s.ok()) {
             // The result keeps the moving image's channels and
             // sample type.
             const v1::ImageInfo& out = events.back().completed().output();
             EXPECT_EQ(out.channels(), v.channels) << v.name;
             EXPECT_EQ(out.sample_type(), ToProto(v.type)) << v.name;
             EXPECT_EQ(out.width(), 181);
             EXPECT_EQ(out.height(), 217);
           }
           return s;
         }});
  }
  RunCases(cases);
}

TEST_F(BadInputTest, ImagesThatDoNotOverlap) {
  // A 40x40 moving image covers 4% of the 181x217 fixed one: most samples
  // map outside it, which elastix reports.
  absl::StatusOr<Image> brain = ReadImageFile(BrainMoving());
  ASSERT_TRUE(brain.ok());
  const int stride = brain->channels();
  ImageSpec small;
  small.width = 40;
  small.height = 40;
  small.channels = 1;
  small.type = SampleType::kUInt8;
  absl::StatusOr<Image> crop = Image::Allocate(small);
  ASSERT_TRUE(crop.ok());
  for (int y = 0; y < 40; ++y)
    for (int x = 0; x < 40; ++x)
      crop->data()[y * 40 + x] =
          brain->data()[((y + 80) * 181 + x + 70) * stride];
  ASSERT_TRUE(WriteImageFile(File("tiny.png"), *crop).ok());
  RunCases({{"images that do not overlap", C::FAILED_PRECONDITION, [this] {
               std::vector<v1::JobEvent> events;
               grpc::Status s =
                   MovingFile(File("tiny.png"), "tiny.png", &events);
               if (!events.empty() && events.back().has_failed()) {
                 EXPECT_NE(events.back().failed().message().find("overlap"),
                           std::string::npos)
                     << events.back().failed().message();
               }
               return s;
             }}});
}

TEST_F(BadInputTest, BadSpecsAndStreams) {
  std::vector<Case> cases;
  cases.push_back(
      {"elastix parameters: output directory key", C::INVALID_ARGUMENT, [this] {
         return WithParameters(
             "(Transform \"EulerTransform\")\n"
             "(OutputDirectory \"/tmp\")\n");
       }});
  cases.push_back({"elastix parameters: component missing from this elastix",
                   C::INVALID_ARGUMENT, [this] {
                     return WithParameters(
                         "(Transform \"SimilarityTransform\")");
                   }});
  cases.push_back({"elastix parameters: absurd resolution count",
                   C::INVALID_ARGUMENT, [this] {
                     return WithParameters(
                         "(Transform \"EulerTransform\")\n"
                         "(NumberOfResolutions 1000)\n");
                   }});
  cases.push_back({"elastix parameters: control characters and brackets",
                   C::INVALID_ARGUMENT, [this] {
                     return WithParameters("(\x01\x02 \x7f)\n((()))\n\t(\"");
                   }});
  cases.push_back(
      {"elastix parameters: 9 files (limit 8)", C::INVALID_ARGUMENT, [this] {
         return Upload(
             fixed_, "fixed.png", moving_, "moving.png", [](v1::JobSpec* s) {
               for (int i = 0; i < 9; ++i)
                 s->add_elastix_parameters("(Transform \"EulerTransform\")");
             });
       }});
  cases.push_back({"unknown enum: device 12", C::INVALID_ARGUMENT, [this] {
                     return Upload(fixed_, "fixed.png", moving_, "moving.png",
                                   [](v1::JobSpec* s) {
                                     s->set_device(static_cast<v1::Device>(12));
                                   });
                   }});
  cases.push_back(
      {"unknown enum: output_resolution 5", C::INVALID_ARGUMENT, [this] {
         return Upload(
             fixed_, "fixed.png", moving_, "moving.png", [](v1::JobSpec* s) {
               s->set_output_resolution(static_cast<v1::OutputResolution>(5));
             });
       }});
  cases.push_back(
      {"negative max_registration_megapixels", C::INVALID_ARGUMENT, [this] {
         return Upload(
             fixed_, "fixed.png", moving_, "moving.png",
             [](v1::JobSpec* s) { s->set_max_registration_megapixels(-1); });
       }});
  cases.push_back(
      {"NaN fill_value", C::INVALID_ARGUMENT, [this] {
         return Upload(
             fixed_, "fixed.png", moving_, "moving.png", [](v1::JobSpec* s) {
               s->set_fill_value(std::numeric_limits<double>::quiet_NaN());
             });
       }});
  cases.push_back({"priority out of range", C::INVALID_ARGUMENT, [this] {
                     return Upload(
                         fixed_, "fixed.png", moving_, "moving.png",
                         [](v1::JobSpec* s) {
                           s->set_priority(std::numeric_limits<int32_t>::max());
                         });
                   }});
  cases.push_back(
      {"job spec without a fixed image", C::INVALID_ARGUMENT, [this] {
         return Upload(fixed_, "fixed.png", moving_, "moving.png",
                       [](v1::JobSpec* s) { s->clear_fixed(); });
       }});
  cases.push_back(
      {"declared size above --max_upload", C::INVALID_ARGUMENT, [this] {
         v1::SubmitRequest spec =
             Spec(fixed_, "fixed.png", moving_, "moving.png");
         spec.mutable_spec()->mutable_moving()->mutable_upload()->set_byte_size(
             uint64_t{1} << 40);
         return Raw({spec, Chunk(v1::IMAGE_ROLE_FIXED, 0, fixed_)});
       }});
  cases.push_back(
      // NOT_FOUND is kept for unknown jobs: a missing file is a bad argument.
      {"server path not found under the root", C::INVALID_ARGUMENT, [this] {
         v1::SubmitRequest r;
         r.mutable_spec()->mutable_fixed()->set_server_path("missing.png");
         r.mutable_spec()->mutable_moving()->set_server_path("missing2.png");
         return Raw({r});
       }});
  cases.push_back(
      {"server path to a truncated image", C::INVALID_ARGUMENT, [this] {
         WriteAll(*input_root_ + "/fixed.png", fixed_);
         WriteAll(*input_root_ + "/truncated.png",
                  ReadAll(Bad("truncated.png")));
         v1::SubmitRequest r;
         r.mutable_spec()->set_transform(v1::TRANSFORM_KIND_RIGID);
         r.mutable_spec()->mutable_fixed()->set_server_path("fixed.png");
         r.mutable_spec()->mutable_moving()->set_server_path("truncated.png");
         return Raw({r});
       }});
  cases.push_back(
      {"empty SubmitRequest after the spec", C::INVALID_ARGUMENT, [this] {
         return Raw({Spec(fixed_, "fixed.png", moving_, "moving.png"),
                     v1::SubmitRequest()});
       }});
  cases.push_back(
      {"second spec after the chunks", C::INVALID_ARGUMENT, [this] {
         v1::SubmitRequest spec =
             Spec(fixed_, "fixed.png", moving_, "moving.png");
         return Raw({spec, Chunk(v1::IMAGE_ROLE_FIXED, 0, fixed_), spec});
       }});
  cases.push_back(
      {"chunk of an image declared server-side", C::INVALID_ARGUMENT, [this] {
         WriteAll(*input_root_ + "/fixed.png", fixed_);
         v1::SubmitRequest spec =
             Spec(fixed_, "fixed.png", moving_, "moving.png");
         spec.mutable_spec()->mutable_fixed()->set_server_path("fixed.png");
         return Raw({spec, Chunk(v1::IMAGE_ROLE_FIXED, 0, fixed_),
                     Chunk(v1::IMAGE_ROLE_MOVING, 0, moving_)});
       }});
  cases.push_back({"chunk stream stops early (client vanishes)", C::CANCELLED,
                   [this] { return VanishMidUpload(); }});
  cases.push_back({"Watch from_tile = INT64_MAX", C::OUT_OF_RANGE, [this] {
                     std::vector<v1::JobEvent> events;
                     grpc::Status s = Upload(fixed_, "fixed.png", moving_,
                                             "moving.png", nullptr, &events);
                     if (!s.ok()) return s;
                     return client_->Watch(
                         events.front().job_id(),
                         std::numeric_limits<int64_t>::max(),
                         [](const v1::JobEvent&) { return true; });
                   }});
  cases.push_back({"Watch of an empty job id", C::NOT_FOUND, [this] {
                     return client_->Watch(
                         "", 0, [](const v1::JobEvent&) { return true; });
                   }});
  RunCases(cases);
}

TEST_F(BadInputTest, CorpusHasAtLeastThirtyCases) {
  // Runs last (gtest runs tests of a suite in order of definition).
  EXPECT_GE(cases_run_, 30);
}

}  // namespace
}  // namespace e2e
}  // namespace regserve
