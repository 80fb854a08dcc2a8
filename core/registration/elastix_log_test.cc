// Copyright regserve authors.
//
// The parser against real elastix 5.0.1 output captured into testdata/ (see
// testdata/README.md for the commands).
#include "core/registration/elastix_log.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifndef REGSERVE_REGISTRATION_TESTDATA
#error "REGSERVE_REGISTRATION_TESTDATA must be defined by CMake"
#endif

namespace regserve {
namespace {

using ::testing::HasSubstr;

// Splits like the process runner does: on '\n' and '\r', dropping empties.
std::vector<std::string> ReadLines(const std::string& name) {
  std::ifstream in(std::string(REGSERVE_REGISTRATION_TESTDATA) + "/" + name,
                   std::ios::binary);
  EXPECT_TRUE(in) << name;
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<std::string> lines =
      absl::StrSplit(ss.str(), absl::ByAnyChar("\r\n"), absl::SkipEmpty());
  return lines;
}

StageSchedule Stage(const char* transform, const char* name, int resolutions,
                    int iterations) {
  StageSchedule s;
  s.transform = transform;
  s.name = name;
  s.num_resolutions = resolutions;
  s.max_iterations = {iterations};
  return s;
}

TEST(ElastixLogParser, FollowsATwoStageRun) {
  std::vector<std::string> lines = ReadLines("elastix_affine_bspline.log");
  ASSERT_GT(lines.size(), 100u);
  ElastixLogParser parser({Stage("AffineTransform", "affine", 2, 15),
                           Stage("BSplineTransform", "bspline", 2, 20)});
  double last_fraction = 0.0;
  int reports = 0;
  bool saw_stage2_res2 = false;
  std::string mid_message;
  for (const std::string& line : lines) {
    if (!parser.Consume(line)) continue;
    ++reports;
    const RegistrationProgress& p = parser.progress();
    EXPECT_GE(p.fraction, last_fraction) << line;
    EXPECT_LE(p.fraction, 1.0);
    last_fraction = p.fraction;
    EXPECT_EQ(p.num_stages, 2);
    if (p.stage == 1 && p.resolution == 1) saw_stage2_res2 = true;
    if (p.stage == 1 && p.resolution == 0 && p.iteration == 10) {
      mid_message = p.message;
      // 2 x 15 affine + 10 of 2 x 20 B-spline iterations out of 70.
      EXPECT_NEAR(p.fraction, 40.0 / 70.0, 1e-9);
    }
  }
  EXPECT_TRUE(saw_stage2_res2);
  // 4 stage/resolution starts + 2 stage starts + one report per iteration.
  EXPECT_EQ(parser.total_iterations(), 2 * 15 + 2 * 20);
  EXPECT_EQ(reports, 2 + 4 + 70);
  EXPECT_DOUBLE_EQ(last_fraction, 1.0);
  EXPECT_THAT(mid_message, HasSubstr("stage 2/2 (bspline), resolution 1/2, "
                                     "iteration 10/20, metric -"));
  ASSERT_TRUE(parser.has_final_metric());
  EXPECT_DOUBLE_EQ(parser.final_metric(), -0.919095);
  EXPECT_EQ(parser.stopping_condition(),
            "Maximum number of iterations has been reached.");
  EXPECT_FALSE(parser.component_not_installed());
  EXPECT_FALSE(parser.samples_outside_moving());
  EXPECT_EQ(parser.error_summary(), "");
}

TEST(ElastixLogParser, ParsesTableRowsByColumnName) {
  ElastixLogParser parser({Stage("EulerTransform", "rigid", 1, 100)});
  parser.Consume("Resolution: 0");
  // A different optimizer's table: the metric is not the second column.
  EXPECT_FALSE(parser.Consume("1:ItNr\t2:StepSize\t3:Metric\tTime[ms]"));
  EXPECT_TRUE(parser.Consume("41\t0.5\t-0.25\t1.2"));
  EXPECT_EQ(parser.progress().iteration, 42);
  EXPECT_DOUBLE_EQ(parser.progress().metric, -0.25);
  // A row cut short is not a row.
  EXPECT_FALSE(parser.Consume("42\t0.5"));
  EXPECT_EQ(parser.progress().iteration, 42);
  EXPECT_NEAR(parser.progress().fraction, 0.42, 1e-12);
}

TEST(ElastixLogParser, ReportsAMissingComponent) {
  ElastixLogParser parser({Stage("SimilarityTransform", "x", 3, 250)});
  for (const std::string& line : ReadLines("elastix_component_missing.log")) {
    parser.Consume(line);
  }
  EXPECT_TRUE(parser.component_not_installed());
  EXPECT_EQ(parser.missing_component(), "SimilarityTransform");
  EXPECT_THAT(parser.error_summary(), HasSubstr("not installed"));
}

TEST(ElastixLogParser, ReportsImagesThatDoNotOverlap) {
  ElastixLogParser parser({Stage("EulerTransform", "rigid", 3, 250)});
  for (const std::string& line : ReadLines("elastix_no_overlap.log")) {
    parser.Consume(line);
  }
  EXPECT_TRUE(parser.samples_outside_moving());
  EXPECT_FALSE(parser.has_final_metric());
  EXPECT_THAT(parser.error_summary(), HasSubstr("Too many samples"));
}

TEST(ElastixLogParser, KeepsTheOutputDirectoryError) {
  ElastixLogParser parser({});
  for (const std::string& line : ReadLines("elastix_no_output_dir.log")) {
    parser.Consume(line);
  }
  EXPECT_THAT(parser.error_summary(), HasSubstr("output directory"));
}

}  // namespace
}  // namespace regserve
