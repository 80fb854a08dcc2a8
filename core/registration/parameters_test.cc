// Copyright regserve authors.
#include "core/registration/parameters.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/registration/registration.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using ::testing::HasSubstr;

std::string ReadTestFile(const std::string& relative) {
  const char* root = std::getenv("REGSERVE_TEST_DATA");
  EXPECT_NE(root, nullptr) << "REGSERVE_TEST_DATA is not set";
  std::ifstream in(absl::StrCat(root ? root : ".", "/", relative));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(ParseParameterText, ParsesQuotedNumbersAndComments) {
  auto p = ParseParameterText(
      "// header comment\n"
      "\n"
      "(Transform \"EulerTransform\")  // trailing\n"
      "  (ImagePyramidSchedule 8 8 4 4 2 2)\n"
      "(Metric \"A//B\")\n");
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->entries().size(), 3u);
  EXPECT_EQ(p->GetString("Transform").value(), "EulerTransform");
  EXPECT_EQ(p->entries()[0].line, 3);
  const ParameterEntry* s = p->Find("ImagePyramidSchedule");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->values.size(), 6u);
  EXPECT_FALSE(s->quoted[0]);
  EXPECT_EQ(p->GetInt("ImagePyramidSchedule", 2).value(), 4);
  // "//" inside quotes is not a comment.
  EXPECT_EQ(p->GetString("Metric").value(), "A//B");
}

TEST(ParseParameterText, RejectsMalformedLinesNamingTheLine) {
  struct Case {
    const char* text;
    const char* want;
  } cases[] = {
      {"(Transform \"EulerTransform\")\nhello world\n", "line 2"},
      {"(Transform \"EulerTransform\"\n", "line 1"},
      {"(Transform \"EulerTransform)\n", "unterminated"},
      {"(Transform EulerTransform)\n", "neither a number"},
      {"(\"Transform\" 1)\n", "must start with a letter"},
      {"(Trans-form 1)\n", "only letters"},
      {"(Transform)\n", "no value"},
      {"()\n", "line 1"},
      {"\n\n(A 1)(B 2)\n", "line 3"},
  };
  for (const Case& c : cases) {
    auto p = ParseParameterText(c.text);
    ASSERT_FALSE(p.ok()) << c.text;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(p.status().message()), HasSubstr(c.want)) << c.text;
  }
}

TEST(ParameterFile, SetRemoveAndSerialiseRoundTrip) {
  ParameterFile p;
  p.SetStrings("Transform", {"EulerTransform"});
  p.SetNumbers("NumberOfResolutions", {"3"});
  p.SetNumbers("NumberOfResolutions", {"2"});  // replaces
  EXPECT_EQ(p.entries().size(), 2u);
  std::string text = p.ToText();
  EXPECT_EQ(text, "(Transform \"EulerTransform\")\n(NumberOfResolutions 2)\n");
  auto back = ParseParameterText(text);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->ToText(), text);
  p.Remove("Transform");
  EXPECT_EQ(p.Find("Transform"), nullptr);
}

TEST(ValidateParameterText, AcceptsElastixsOwnExampleFiles) {
  for (const char* name :
       {"parameters_Rigid.txt", "parameters_Affine.txt",
        "parameters_BSpline.txt", "parameters_Translation.txt"}) {
    std::string text = ReadTestFile(absl::StrCat("elastix_example/", name));
    ASSERT_FALSE(text.empty()) << name;
    EXPECT_TRUE(ValidateParameterText(text).ok())
        << name << ": " << ValidateParameterText(text);
  }
}

TEST(ValidateParameterText, AcceptsEveryPreset) {
  for (TransformKind kind : {TransformKind::kRigid, TransformKind::kAffine,
                             TransformKind::kBSpline}) {
    for (const std::string& text : PresetParameters(kind, 300, 200)) {
      EXPECT_TRUE(ValidateParameterText(text).ok())
          << ValidateParameterText(text) << "\n"
          << text;
    }
  }
}

TEST(ValidateParameterText, RejectsGarbage) {
  absl::Status s = ValidateParameterText(
      "\x7f"
      "ELF binary junk\n");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("line 1"));
}

TEST(ValidateParameterText, RejectsPathInjection) {
  struct Case {
    const char* text;
    const char* want;
  } cases[] = {
      {"(Transform \"EulerTransform\")\n(OutputDirectory \"x\")\n", "line 2"},
      {"(FixedImageFileName \"x\")\n", "names a file"},
      {"(SomethingPath \"x\")\n", "names a file"},
      {"(InitialTransformParametersFileName \"/etc/passwd\")\n",
       "NoInitialTransform"},
      {"(InitialTransformParametersFileName \"TransformParameters.0.txt\")\n",
       "NoInitialTransform"},
      {"(Metric \"../../bin/sh\")\n", "paths are not accepted"},
      {"(ResultImagePixelType \"/tmp/x\")\n", "paths are not accepted"},
      {"(WriteTransformParametersEachIteration \"true\")\n",
       "writes extra files"},
      {"(ResultImageFormat \"png\")\n", "ResultImageFormat"},
  };
  for (const Case& c : cases) {
    absl::Status s = ValidateParameterText(c.text);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.want)) << c.text;
  }
  // The harmless forms are fine.
  EXPECT_TRUE(
      ValidateParameterText(
          "(InitialTransformParametersFileName \"NoInitialTransform\")\n"
          "(WriteTransformParametersEachIteration \"false\")\n"
          "(WriteResultImage \"true\")\n"
          "(ResultImageFormat \"nii\")\n")
          .ok());
}

TEST(ValidateParameterText, RejectsComponentsTheBuildLacks) {
  absl::Status s = ValidateParameterText(
      "(Transform \"EulerTransform\")\n"
      "(ResampleInterpolator \"FinalLinearInterpolator\")\n");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("line 2"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("not installed"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("SimilarityTransform"));
  for (const std::string& c : ComponentsMissingFromDebianBuild()) {
    EXPECT_FALSE(
        ValidateParameterText(absl::StrCat("(Transform \"", c, "\")\n")).ok())
        << c;
  }
}

TEST(ValidateParameterText, RejectsUnknownComponentsAndAbsurdSizes) {
  absl::Status s = ValidateParameterText("(Optimizer \"MyOptimizer\")\n");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("unknown"));
  s = ValidateParameterText(
      "(Metric \"AdvancedMattesMutualInformation\" "
      "\"CorrespondingPointsEuclideanDistanceMetric\")\n");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = ValidateParameterText("(Transform 3)\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("quoted"));
  s = ValidateParameterText("(NumberOfSpatialSamples 1000000000)\n");
  EXPECT_THAT(std::string(s.message()), HasSubstr("NumberOfSpatialSamples"));
  s = ValidateParameterText("(MaximumNumberOfIterations 200 0)\n");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidateParameterText, RejectsNonFiniteNumbersNamingKeyAndLine) {
  // NaN compares false with every bound, so these used to pass the range
  // check and reach an integer cast (undefined behaviour).
  for (const char* v : {"nan", "inf", "-inf", "NaN", "infinity"}) {
    absl::Status s =
        ValidateParameterText(absl::StrCat("(Transform \"BSplineTransform\")\n"
                                           "(NumberOfResolutions ",
                                           v, ")\n"));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << v;
    EXPECT_THAT(std::string(s.message()), HasSubstr("NumberOfResolutions"));
    EXPECT_THAT(std::string(s.message()), HasSubstr("line 2"));
    EXPECT_THAT(std::string(s.message()), HasSubstr("not a finite number"));
  }
  // Keys without bounds too: elastix would read them as numbers.
  absl::Status s = ValidateParameterText("(Metric0Weight 1.0 nan)\n");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("Metric0Weight"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("line 1"));
  EXPECT_TRUE(ValidateParameterText("(Metric0Weight 1.0 0.5)\n").ok());
}

TEST(ParameterFile, GetIntRefusesValuesWithoutAnInteger) {
  auto p =
      ParseParameterText("(A nan)\n(B inf)\n(C 1e300)\n(D -1e300)\n(E 7.9)\n")
          .value();
  EXPECT_FALSE(p.GetInt("A").has_value());
  EXPECT_FALSE(p.GetInt("B").has_value());
  EXPECT_FALSE(p.GetInt("C").has_value());
  EXPECT_FALSE(p.GetInt("D").has_value());
  EXPECT_EQ(p.GetInt("E").value(), 7);
  StageSchedule s = ScheduleFromParameters(
      ParseParameterText("(NumberOfResolutions nan)\n"
                         "(MaximumNumberOfIterations 1e300 20)\n")
          .value());
  EXPECT_EQ(s.num_resolutions, 3);  // the default, as if absent
  ASSERT_EQ(s.max_iterations.size(), 1u);
  EXPECT_EQ(s.max_iterations[0], 20);
}

TEST(ValidateParameterText, BoundsTheBSplineGridSpacing) {
  struct Case {
    const char* text;
    const char* key;
    const char* smallest;
  } cases[] = {
      {"(FinalGridSpacingInVoxels 1)\n", "FinalGridSpacingInVoxels", "4"},
      {"(FinalGridSpacingInVoxels 16 3.5)\n", "FinalGridSpacingInVoxels", "4"},
      {"(FinalGridSpacingInVoxels 0)\n", "FinalGridSpacingInVoxels", "4"},
      {"(FinalGridSpacingInVoxels -16)\n", "FinalGridSpacingInVoxels", "4"},
      {"(FinalGridSpacingInPhysicalUnits 2)\n",
       "FinalGridSpacingInPhysicalUnits", "4"},
      {"(GridSpacingSchedule 4.0 2.0 0.5)\n", "GridSpacingSchedule", "1"},
  };
  for (const Case& c : cases) {
    absl::Status s = ValidateParameterText(c.text);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.key)) << c.text;
    EXPECT_THAT(std::string(s.message()),
                HasSubstr(absl::StrCat("smallest accepted is ", c.smallest)))
        << c.text;
    EXPECT_THAT(std::string(s.message()), HasSubstr("memory")) << c.text;
  }
  // A quoted number would dodge the bound (elastix reads it as a number).
  EXPECT_EQ(ValidateParameterText("(FinalGridSpacingInVoxels \"1\")\n").code(),
            absl::StatusCode::kInvalidArgument);
  // The smallest accepted values themselves, and elastix's example schedule.
  EXPECT_TRUE(ValidateParameterText("(FinalGridSpacingInVoxels 4)\n").ok());
  EXPECT_TRUE(
      ValidateParameterText("(FinalGridSpacingInPhysicalUnits 4 16)\n").ok());
  EXPECT_TRUE(
      ValidateParameterText("(GridSpacingSchedule 4.0 4.0 2.0 1.0)\n").ok());
  // Every preset size, down to the tiny copies that use the 4-voxel floor.
  for (int64_t w : {8, 48, 64, 300, 2000, 20000}) {
    for (const std::string& text :
         PresetParameters(TransformKind::kBSpline, w, w / 2 + 1)) {
      EXPECT_TRUE(ValidateParameterText(text).ok())
          << w << ": " << ValidateParameterText(text);
    }
  }
}

TEST(PresetParameters, ScaleWithTheRegistrationSize) {
  auto tiny = PresetParameters(TransformKind::kBSpline, 64, 48);
  auto big = PresetParameters(TransformKind::kBSpline, 2000, 1125);
  ASSERT_EQ(tiny.size(), 2u);
  ASSERT_EQ(big.size(), 2u);
  auto t0 = ParseParameterText(tiny[0]).value();
  auto t1 = ParseParameterText(tiny[1]).value();
  auto b1 = ParseParameterText(big[1]).value();
  EXPECT_EQ(t0.GetString("Transform").value(), "AffineTransform");
  EXPECT_EQ(t1.GetString("Transform").value(), "BSplineTransform");
  EXPECT_EQ(t1.GetInt("NumberOfResolutions").value(), 1);  // 48 px side
  EXPECT_EQ(b1.GetInt("NumberOfResolutions").value(), 4);
  EXPECT_EQ(b1.GetInt("FinalGridSpacingInVoxels").value(), 125);  // 2000/16
  EXPECT_EQ(t1.GetInt("FinalGridSpacingInVoxels").value(), 4);
  EXPECT_EQ(b1.GetInt("NumberOfSpatialSamples").value(), 4096);
  EXPECT_EQ(t1.GetInt("NumberOfSpatialSamples").value(), 3072);  // = pixels
  EXPECT_EQ(b1.GetString("FixedImagePyramid").value(),
            "FixedRecursiveImagePyramid");
  EXPECT_EQ(b1.GetString("WriteResultImage").value(), "false");
  auto rigid =
      ParseParameterText(PresetParameters(TransformKind::kRigid, 181, 217)[0])
          .value();
  EXPECT_EQ(rigid.GetString("Transform").value(), "EulerTransform");
  EXPECT_EQ(rigid.GetInt("NumberOfResolutions").value(), 3);
  EXPECT_EQ(rigid.GetString("AutomaticTransformInitialization").value(),
            "true");
  EXPECT_EQ(
      ParseParameterText(PresetParameters(TransformKind::kAffine, 100, 100)[0])
          .value()
          .GetString("Transform")
          .value(),
      "AffineTransform");
}

TEST(PresetParameters, FollowTheSchedule) {
  PresetSchedule light;
  light.linear_stage = false;
  light.iteration_scale = 0.3;
  auto files = PresetParameters(TransformKind::kBSpline, 2000, 1125, light);
  ASSERT_EQ(files.size(), 1u);  // the B-spline stage alone
  auto b = ParseParameterText(files[0]).value();
  EXPECT_EQ(b.GetString("Transform").value(), "BSplineTransform");
  EXPECT_EQ(b.GetInt("MaximumNumberOfIterations").value(), 150);  // 500 x 0.3
  EXPECT_TRUE(ValidateParameterText(files[0]).ok());
  PresetSchedule scaled;
  scaled.iteration_scale = 0.01;  // floored at 16 iterations
  files = PresetParameters(TransformKind::kBSpline, 2000, 1125, scaled);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(ParseParameterText(files[0])
                .value()
                .GetInt("MaximumNumberOfIterations")
                .value(),
            16);
  // The linear presets ignore linear_stage; they scale too.
  files = PresetParameters(TransformKind::kAffine, 100, 100, light);
  ASSERT_EQ(files.size(), 1u);
  auto a = ParseParameterText(files[0]).value();
  EXPECT_EQ(a.GetString("Transform").value(), "AffineTransform");
  EXPECT_EQ(a.GetInt("MaximumNumberOfIterations").value(), 75);  // 250 x 0.3
}

TEST(ScheduleFromParameters, ReadsResolutionsAndIterations) {
  auto p = ParseParameterText(
               "(Transform \"BSplineTransform\")\n"
               "(NumberOfResolutions 3)\n"
               "(MaximumNumberOfIterations 100 200)\n")
               .value();
  StageSchedule s = ScheduleFromParameters(p);
  EXPECT_EQ(s.name, "bspline");
  EXPECT_EQ(s.num_resolutions, 3);
  EXPECT_EQ(s.MaxIterations(0), 100);
  EXPECT_EQ(s.MaxIterations(1), 200);
  EXPECT_EQ(s.MaxIterations(2), 200);  // elastix repeats the last value
  EXPECT_EQ(s.TotalIterations(), 500);
  StageSchedule d = ScheduleFromParameters(ParameterFile());
  EXPECT_EQ(d.num_resolutions, 3);
  EXPECT_EQ(d.TotalIterations(), 1500);
}

TEST(ForceOutputSettings, OverridesUserChoices) {
  auto p = ParseParameterText(
               "(WriteResultImage \"true\")\n(ResultImageFormat \"nii\")\n")
               .value();
  ForceOutputSettings(&p);
  EXPECT_EQ(p.GetString("WriteResultImage").value(), "false");
  EXPECT_EQ(p.GetString("ResultImageFormat").value(), "mhd");
  int count = 0;
  for (const auto& e : p.entries()) count += e.key == "WriteResultImage";
  EXPECT_EQ(count, 1);
}

}  // namespace
}  // namespace regserve
