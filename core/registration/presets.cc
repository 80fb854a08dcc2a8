// Copyright regserve authors.
//
// The built-in elastix presets. Every component named here was run against
// the Debian 12 /usr/bin/elastix 5.0.1 (see registration_golden_test.cc,
// EveryPresetRunsOnTheRealBinary); the build lacks the shrinking pyramid and
// the linear / nearest-neighbour final interpolators, so the presets use the
// recursive pyramid and FinalBSplineInterpolator.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/registration/parameters.h"
#include "core/registration/registration.h"

namespace regserve {
namespace {

// Resolutions such that the coarsest level keeps at least ~32 px on its
// shorter side (each level halves the size), between 1 and 4.
int ResolutionsFor(int64_t width, int64_t height) {
  int64_t side = std::max<int64_t>(1, std::min(width, height));
  int levels = 1;
  while (levels < 4 && (side >> levels) >= 32) ++levels;
  return levels;
}

// Samples per iteration: `wanted`, but not more than the image has pixels
// (and at least 256, elastix needs a few hundred for a stable MI estimate).
int SamplesFor(int64_t width, int64_t height, int wanted) {
  int64_t pixels = width * height;
  return static_cast<int>(
      std::max<int64_t>(256, std::min<int64_t>(wanted, pixels)));
}

void Common(ParameterFile* p, int resolutions, int iterations, int samples) {
  p->SetStrings("FixedInternalImagePixelType", {"float"});
  p->SetStrings("MovingInternalImagePixelType", {"float"});
  p->SetNumbers("FixedImageDimension", {"2"});
  p->SetNumbers("MovingImageDimension", {"2"});
  p->SetStrings("UseDirectionCosines", {"true"});
  p->SetStrings("Registration", {"MultiResolutionRegistration"});
  p->SetStrings("Interpolator", {"BSplineInterpolator"});
  p->SetStrings("ResampleInterpolator", {"FinalBSplineInterpolator"});
  p->SetStrings("Resampler", {"DefaultResampler"});
  p->SetStrings("FixedImagePyramid", {"FixedRecursiveImagePyramid"});
  p->SetStrings("MovingImagePyramid", {"MovingRecursiveImagePyramid"});
  p->SetStrings("Optimizer", {"AdaptiveStochasticGradientDescent"});
  p->SetStrings("Metric", {"AdvancedMattesMutualInformation"});
  p->SetNumbers("NumberOfHistogramBins", {"32"});
  p->SetStrings("HowToCombineTransforms", {"Compose"});
  p->SetNumbers("NumberOfResolutions", {absl::StrCat(resolutions)});
  p->SetNumbers("MaximumNumberOfIterations", {absl::StrCat(iterations)});
  p->SetNumbers("NumberOfSpatialSamples", {absl::StrCat(samples)});
  p->SetStrings("NewSamplesEveryIteration", {"true"});
  // The optimiser's step-size estimation computes its exact gradients from
  // 100000 samples by default: at every resolution of both stages that was
  // most of a light (few-iteration) run. 10000 gave the same final metric
  // on the Kleiber benchmark at 0.5 and 2 MP, 2.3 -> 1.2 s and 7.1 -> 5.5 s
  // (docs/benchmarks.md, "Faint texture and elastix's fixed costs").
  p->SetNumbers("NumberOfSamplesForExactGradient", {"10000"});
  p->SetStrings("ImageSampler", {"RandomCoordinate"});
  p->SetNumbers("BSplineInterpolationOrder", {"1"});
  p->SetNumbers("FinalBSplineInterpolationOrder", {"1"});
  p->SetNumbers("DefaultPixelValue", {"0"});
  p->SetStrings("ErodeMask", {"false"});
  p->SetStrings("WriteResultImage", {"false"});
  p->SetStrings("ResultImagePixelType", {"float"});
  p->SetStrings("ResultImageFormat", {"mhd"});
}

// The preset's iteration count scaled by the schedule, at least 16.
int Iterations(int preset, double scale) {
  return std::max(16, static_cast<int>(std::lround(preset * scale)));
}

std::string Linear(const char* transform, int64_t width, int64_t height,
                   double scale) {
  ParameterFile p;
  Common(&p, ResolutionsFor(width, height), Iterations(250, scale),
         SamplesFor(width, height, 2048));
  p.SetStrings("Transform", {transform});
  p.SetStrings("AutomaticScalesEstimation", {"true"});
  p.SetStrings("AutomaticTransformInitialization", {"true"});
  p.SetStrings("AutomaticTransformInitializationMethod", {"GeometricalCenter"});
  return p.ToText();
}

std::string BSpline(int64_t width, int64_t height, double scale) {
  ParameterFile p;
  Common(&p, ResolutionsFor(width, height), Iterations(500, scale),
         SamplesFor(width, height, 4096));
  p.SetStrings("Transform", {"BSplineTransform"});
  // Final control-point spacing: width / 16 registration pixels, which is
  // full_width / 16 in physical units (full-resolution pixels), because the
  // registration copy's spacing is the downsampling factor. At least 4 px so
  // tiny copies still get a usable grid.
  double spacing = std::max(4.0, std::round(static_cast<double>(width) / 16.0));
  p.SetNumbers("FinalGridSpacingInVoxels", {absl::StrCat(spacing)});
  return p.ToText();
}

}  // namespace

std::vector<std::string> PresetParameters(TransformKind kind, int64_t width,
                                          int64_t height,
                                          const PresetSchedule& schedule) {
  const double scale = schedule.iteration_scale;
  switch (kind) {
    case TransformKind::kRigid:
      return {Linear("EulerTransform", width, height, scale)};
    case TransformKind::kAffine:
      return {Linear("AffineTransform", width, height, scale)};
    case TransformKind::kBSpline:
      if (!schedule.linear_stage) return {BSpline(width, height, scale)};
      return {Linear("AffineTransform", width, height, scale),
              BSpline(width, height, scale)};
  }
  return {};
}

}  // namespace regserve
