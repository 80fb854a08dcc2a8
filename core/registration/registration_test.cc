// Copyright regserve authors.
//
// Register() with a fake ProcessRunner that replays captured elastix output
// and writes the files elastix/transformix would: argument layout, the
// MetaImage geometry of downsampled copies, progress, error mapping.
#include "core/registration/registration.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/registration/metaimage.h"
#include "core/registration/process.h"
#include "core/registration/test_temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifndef REGSERVE_REGISTRATION_TESTDATA
#error "REGSERVE_REGISTRATION_TESTDATA must be defined by CMake"
#endif

namespace regserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string TempDir() {
  std::string d = MakeTestTempDir("regserve_registration");
  EXPECT_FALSE(d.empty());
  return d;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> CapturedLines(const std::string& name) {
  return absl::StrSplit(
      ReadAll(std::string(REGSERVE_REGISTRATION_TESTDATA) + "/" + name),
      absl::ByAnyChar("\r\n"), absl::SkipEmpty());
}

// Plays elastix and transformix: emits scripted lines, exits with a scripted
// code, and on success writes TransformParameters.<i>.txt / a constant
// deformation field on the fixed image's grid.
class FakeRunner : public ProcessRunner {
 public:
  std::vector<std::string> elastix_lines;
  int elastix_exit = 0;
  int transformix_exit = 0;
  int transformix_signal = 0;  // with exit 0: a crash after its output
  bool transformix_says_finished = true;
  bool transformix_writes_field = true;
  float field_dx = 3.0f;
  float field_dy = -2.0f;
  std::vector<std::vector<std::string>> calls;

  absl::StatusOr<ProcessResult> Run(const ProcessOptions& o) override {
    calls.push_back(o.argv);
    ProcessResult r;
    r.pid = 12345;
    std::string out_dir = ArgAfter(o.argv, "-out");
    if (absl::EndsWith(o.argv[0], "transformix")) {
      r.exit_code = transformix_exit;
      r.term_signal = transformix_signal;
      if (transformix_exit == 0 && transformix_writes_field) {
        auto fixed = ReadMetaImage(out_dir + "/fixed.mhd");
        if (!fixed.ok()) return fixed.status();
        WriteField(out_dir, *fixed);
        if (transformix_says_finished) {
          r.tail.push_back("transformix has finished at Tue Dec  1 2026.");
        }
      }
      return r;
    }
    for (const std::string& line : elastix_lines) {
      if (o.on_line) o.on_line(line);
    }
    r.exit_code = elastix_exit;
    if (elastix_exit == 0) {
      int n = 0;
      for (const std::string& a : o.argv) n += a == "-p";
      for (int i = 0; i < n; ++i) {
        std::ofstream(absl::StrCat(out_dir, "/TransformParameters.", i, ".txt"))
            << "(Transform \"x\")\n";
      }
    }
    r.peak_rss_bytes = 1 << 20;
    return r;
  }

  static std::string ArgAfter(const std::vector<std::string>& argv,
                              const std::string& flag) {
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
      if (argv[i] == flag) return argv[i + 1];
    }
    return "";
  }

  void WriteField(const std::string& dir, const MetaImage& fixed) {
    std::vector<float> data(fixed.width * fixed.height * 2);
    for (size_t i = 0; i < data.size(); i += 2) {
      data[i] = field_dx;
      data[i + 1] = field_dy;
    }
    std::ofstream(dir + "/deformationField.raw", std::ios::binary)
        .write(reinterpret_cast<const char*>(data.data()),
               data.size() * sizeof(float));
    std::ofstream(dir + "/deformationField.mhd")
        << "ObjectType = Image\nNDims = 2\nBinaryData = True\n"
        << "BinaryDataByteOrderMSB = False\nCompressedData = False\n"
        << "TransformMatrix = 1 0 0 1\nOffset = " << fixed.origin[0] << " "
        << fixed.origin[1] << "\nElementSpacing = " << fixed.spacing[0] << " "
        << fixed.spacing[1] << "\nDimSize = " << fixed.width << " "
        << fixed.height
        << "\nElementNumberOfChannels = 2\nElementType = MET_FLOAT\n"
        << "ElementDataFile = deformationField.raw\n";
  }
};

Image Gray(int64_t w, int64_t h) {
  Image img = Image::AllocateZeroed({w, h, 1, SampleType::kFloat32}).value();
  for (int64_t i = 0; i < w * h; ++i) img.as<float>()[i] = (i * 7 % 13) / 13.f;
  return img;
}

class RegisterWithFake : public ::testing::Test {
 protected:
  RegisterWithFake() : fixed_(Gray(50, 40)), moving_(Gray(50, 40)) {
    req_.work_dir = TempDir() + "/job/registration";  // created by Register
    req_.fixed = &fixed_;
    req_.moving = &moving_;
    req_.fixed_full_width = 200;  // factor 4
    req_.fixed_full_height = 160;
    req_.moving_full_width = 100;  // factor 2
    req_.moving_full_height = 80;
    req_.threads = 3;
  }
  Image fixed_, moving_;
  RegistrationRequest req_;
  FakeRunner fake_;
};

TEST_F(RegisterWithFake, WritesGeometryArgumentsAndReadsTheField) {
  auto r = Register(req_, ElastixConfig{}, &fake_);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string& d = req_.work_dir;
  ASSERT_EQ(fake_.calls.size(), 2u);
  EXPECT_THAT(fake_.calls[0],
              ElementsAre("elastix", "-f", d + "/fixed.mhd", "-m",
                          d + "/moving.mhd", "-out", d, "-p", d + "/p0.txt",
                          "-p", d + "/p1.txt", "-threads", "3"));
  EXPECT_THAT(fake_.calls[1],
              ElementsAre("transformix", "-def", "all", "-out", d, "-tp",
                          d + "/TransformParameters.1.txt", "-threads", "3"));
  // Spacing = downsampling factor, origin = (factor - 1) / 2.
  auto fixed = ReadMetaImage(d + "/fixed.mhd").value();
  EXPECT_DOUBLE_EQ(fixed.spacing[0], 4.0);
  EXPECT_DOUBLE_EQ(fixed.spacing[1], 4.0);
  EXPECT_DOUBLE_EQ(fixed.origin[0], 1.5);
  EXPECT_DOUBLE_EQ(fixed.origin[1], 1.5);
  EXPECT_EQ(fixed.data[17], fixed_.as<float>()[17]);
  auto moving = ReadMetaImage(d + "/moving.mhd").value();
  EXPECT_DOUBLE_EQ(moving.spacing[0], 2.0);
  EXPECT_DOUBLE_EQ(moving.origin[1], 0.5);
  // The forced output settings are in every parameter file.
  for (const char* p : {"/p0.txt", "/p1.txt"}) {
    std::string text = ReadAll(d + p);
    EXPECT_THAT(text, HasSubstr("(WriteResultImage \"false\")"));
    EXPECT_THAT(text, HasSubstr("(ResultImageFormat \"mhd\")"));
  }
  EXPECT_THAT(ReadAll(d + "/p1.txt"), HasSubstr("BSplineTransform"));
  EXPECT_THAT(r->transform_parameter_files,
              ElementsAre(d + "/TransformParameters.0.txt",
                          d + "/TransformParameters.1.txt"));
  EXPECT_EQ(r->field.width, 50);
  EXPECT_EQ(r->field.height, 40);
  EXPECT_DOUBLE_EQ(r->field.spacing_x, 4.0);
  EXPECT_DOUBLE_EQ(r->field.origin_x, 1.5);
  EXPECT_EQ(r->field.dx[123], 3.0f);
  EXPECT_EQ(r->field.dy[123], -2.0f);
  EXPECT_EQ(r->elastix_peak_rss_bytes, 1 << 20);
}

TEST_F(RegisterWithFake, ReportsProgressFromElastixOutput) {
  fake_.elastix_lines = CapturedLines("elastix_affine_bspline.log");
  // The captured run used 2 x 15 affine and 2 x 20 B-spline iterations.
  req_.custom_parameters = {
      "(Transform \"AffineTransform\")\n(NumberOfResolutions 2)\n"
      "(MaximumNumberOfIterations 15)\n",
      "(Transform \"BSplineTransform\")\n(NumberOfResolutions 2)\n"
      "(MaximumNumberOfIterations 20)\n"};
  std::vector<RegistrationProgress> seen;
  req_.on_progress = [&](const RegistrationProgress& p) { seen.push_back(p); };
  auto r = Register(req_, ElastixConfig{}, &fake_);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_GE(seen.size(), 5u);  // at least every stage/resolution change
  for (size_t i = 1; i < seen.size(); ++i) {
    EXPECT_GE(seen[i].fraction, seen[i - 1].fraction);
  }
  EXPECT_EQ(seen.back().fraction, 1.0);
  EXPECT_THAT(seen.back().message, HasSubstr("done"));
  EXPECT_EQ(r->iterations, 70);
  EXPECT_DOUBLE_EQ(r->final_metric, -0.919095);
}

TEST_F(RegisterWithFake, MapsElastixFailures) {
  struct Case {
    const char* log;
    int exit_code;
    absl::StatusCode code;
    const char* want;
  } cases[] = {
      {"elastix_no_overlap.log", 1, absl::StatusCode::kFailedPrecondition,
       "do not overlap"},
      {"elastix_component_missing.log", 1,
       absl::StatusCode::kFailedPrecondition, "SimilarityTransform"},
      {"elastix_no_output_dir.log", 254, absl::StatusCode::kInternal,
       "output directory"},
      {"elastix_affine_bspline.log", 7, absl::StatusCode::kFailedPrecondition,
       "exit code 7"},
  };
  for (const Case& c : cases) {
    FakeRunner fake;
    fake.elastix_lines = CapturedLines(c.log);
    fake.elastix_exit = c.exit_code;
    auto r = Register(req_, ElastixConfig{}, &fake);
    EXPECT_EQ(r.status().code(), c.code) << c.log << ": " << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.want));
    EXPECT_EQ(fake.calls.size(), 1u);  // no transformix after a failure
  }
}

TEST_F(RegisterWithFake, TransformixFailureAndStaleOutputs) {
  fake_.transformix_exit = 2;
  auto r = Register(req_, ElastixConfig{}, &fake_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("transformix"));

  // A field left by an earlier run is removed, never read back.
  FakeRunner ok;
  ASSERT_TRUE(Register(req_, ElastixConfig{}, &ok).ok());
  FakeRunner silent;
  silent.transformix_writes_field = false;
  r = Register(req_, ElastixConfig{}, &silent);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
}

TEST_F(RegisterWithFake, TransformixCrashAfterItFinishedKeepsItsField) {
  // Debian's transformix 5.0.1 was seen dying with SIGSEGV on exit, after
  // writing its field and saying it had finished.
  fake_.transformix_signal = 11;
  auto r = Register(req_, ElastixConfig{}, &fake_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->field.dx[0], fake_.field_dx);
  // The same signal before it said so is a failure.
  FakeRunner early;
  early.transformix_signal = 11;
  early.transformix_says_finished = false;
  r = Register(req_, ElastixConfig{}, &early);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("signal 11"));
}

TEST_F(RegisterWithFake, RejectsBadRequestsWithoutRunningAnything) {
  RegistrationRequest bad = req_;
  bad.work_dir = "relative/dir";
  EXPECT_EQ(Register(bad, {}, &fake_).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = req_;
  bad.moving = nullptr;
  EXPECT_EQ(Register(bad, {}, &fake_).status().code(),
            absl::StatusCode::kInvalidArgument);
  Image rgb = Image::AllocateZeroed({8, 8, 3, SampleType::kUInt8}).value();
  bad = req_;
  bad.fixed = &rgb;
  EXPECT_THAT(std::string(Register(bad, {}, &fake_).status().message()),
              HasSubstr("float32"));
  bad = req_;
  bad.fixed_full_width = 0;
  EXPECT_EQ(Register(bad, {}, &fake_).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = req_;
  bad.threads = 0;
  EXPECT_EQ(Register(bad, {}, &fake_).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = req_;
  bad.custom_parameters = {"(Transform \"EulerTransform\")\n",
                           "(Transform \"EulerTransform\")\n"
                           "(OutputDirectory \"/etc\")\n"};
  auto r = Register(bad, {}, &fake_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("parameter file 2 of 2"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("line 2"));
  CancelToken token;
  token.Cancel("gone");
  bad = req_;
  bad.cancel = &token;
  EXPECT_EQ(Register(bad, {}, &fake_).status().code(),
            absl::StatusCode::kCancelled);
  EXPECT_TRUE(fake_.calls.empty());
}

TEST_F(RegisterWithFake, MissingElastixIsUnavailable) {
  ElastixConfig config;
  config.elastix_path = "/nonexistent/bin/elastix";
  auto r = Register(req_, config);  // the real runner
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("elastix"));
}

}  // namespace
}  // namespace regserve
