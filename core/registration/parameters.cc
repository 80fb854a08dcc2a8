// Copyright regserve authors.
#include "core/registration/parameters.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"
#include "core/registration/registration.h"

namespace regserve {
namespace {

bool IsNumber(absl::string_view s) {
  double d;
  return !s.empty() && absl::SimpleAtod(s, &d);
}

bool IsKeyChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

// Removes a // comment that is not inside a quoted string.
absl::string_view StripComment(absl::string_view line) {
  bool in_quote = false;
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '"') in_quote = !in_quote;
    if (!in_quote && line[i] == '/' && i + 1 < line.size() &&
        line[i + 1] == '/') {
      return line.substr(0, i);
    }
  }
  return line;
}

absl::Status LineError(int line, absl::string_view text,
                       absl::string_view why) {
  std::string shown(text.substr(0, 120));
  return absl::InvalidArgumentError(
      absl::StrCat("elastix parameters, line ", line, " (", shown, "): ", why));
}

// Component keys whose values name elastix components.
const char* const kComponentKeys[] = {
    "Registration",       "Metric",
    "Transform",          "Optimizer",
    "Interpolator",       "ResampleInterpolator",
    "Resampler",          "FixedImagePyramid",
    "MovingImagePyramid", "ImageSampler"};

bool IsComponentKey(absl::string_view key) {
  for (const char* k : kComponentKeys) {
    if (key == k) return true;
  }
  return false;
}

bool Contains(const std::vector<std::string>& v, absl::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Keys with numeric values that control resource use, with bounds that keep
// a job from asking for absurd amounts of memory or time.
struct NumericBound {
  const char* key;
  double min;
  double max;
};
const NumericBound kBounds[] = {
    {"NumberOfResolutions", 1, 8},
    {"MaximumNumberOfIterations", 1, 100000},
    {"NumberOfSpatialSamples", 1, 1000000},
    {"NumberOfHistogramBins", 2, 1024},
    {"NumberOfFixedHistogramBins", 2, 1024},
    {"NumberOfMovingHistogramBins", 2, 1024},
    {"MaximumNumberOfSamplingAttempts", 0, 100},
};

// B-spline control-point spacing keys. elastix keeps a parameter vector of
// 2 values per control point plus per-parameter derivative buffers (e.g.
// Mattes MI holds bins x bins doubles per parameter), so memory grows with
// the inverse square of the spacing: a spacing of 1 voxel on a 20 MP copy
// needs hundreds of GB. The presets never go below 4 voxels (presets.cc).
struct SpacingBound {
  const char* key;
  double min;
  const char* why;
};
const SpacingBound kSpacingBounds[] = {
    {"FinalGridSpacingInVoxels", 4,
     "a finer B-spline grid has one control point per few pixels, and "
     "elastix's memory grows with the inverse square of the spacing (a "
     "spacing of 1 on a 20 MP copy needs hundreds of GB)"},
    // The registration copy's spacing is its downsampling factor, so
    // physical units are full-resolution pixels: the same bound applies.
    {"FinalGridSpacingInPhysicalUnits", 4,
     "physical units are full-resolution pixels here; a finer B-spline grid "
     "makes elastix's memory grow with the inverse square of the spacing (a "
     "spacing of 1 on a 20 MP image needs hundreds of GB)"},
    // Multipliers of the final spacing per resolution; the last level is 1,
    // and a factor below 1 would make a level finer than the final grid.
    {"GridSpacingSchedule", 1,
     "the schedule multiplies the final grid spacing per resolution (the "
     "finest level is 1); a factor below 1 makes a grid finer than the "
     "final one, and elastix's memory grows with the inverse square of the "
     "spacing"},
};

}  // namespace

const ParameterEntry* ParameterFile::Find(absl::string_view key) const {
  const ParameterEntry* found = nullptr;
  for (const ParameterEntry& e : entries_) {
    if (e.key == key) found = &e;
  }
  return found;
}

void ParameterFile::Remove(absl::string_view key) {
  entries_.erase(
      std::remove_if(entries_.begin(), entries_.end(),
                     [&](const ParameterEntry& e) { return e.key == key; }),
      entries_.end());
}

void ParameterFile::SetStrings(absl::string_view key,
                               const std::vector<std::string>& values) {
  Remove(key);
  ParameterEntry e;
  e.key = std::string(key);
  e.values = values;
  e.quoted.assign(values.size(), true);
  entries_.push_back(std::move(e));
}

void ParameterFile::SetNumbers(absl::string_view key,
                               const std::vector<std::string>& values) {
  Remove(key);
  ParameterEntry e;
  e.key = std::string(key);
  e.values = values;
  e.quoted.assign(values.size(), false);
  entries_.push_back(std::move(e));
}

absl::optional<long long> ParameterFile::GetInt(absl::string_view key,
                                                size_t index) const {
  const ParameterEntry* e = Find(key);
  if (e == nullptr || index >= e->values.size()) return absl::nullopt;
  double d;
  if (!absl::SimpleAtod(e->values[index], &d)) return absl::nullopt;
  // Casting NaN, infinity or a value outside long long's range is undefined.
  if (!std::isfinite(d) || d < static_cast<double>(LLONG_MIN) ||
      d >= static_cast<double>(LLONG_MAX)) {
    return absl::nullopt;
  }
  return static_cast<long long>(d);
}

absl::optional<std::string> ParameterFile::GetString(absl::string_view key,
                                                     size_t index) const {
  const ParameterEntry* e = Find(key);
  if (e == nullptr || index >= e->values.size()) return absl::nullopt;
  return e->values[index];
}

std::string ParameterFile::ToText() const {
  std::string out;
  for (const ParameterEntry& e : entries_) {
    absl::StrAppend(&out, "(", e.key);
    for (size_t i = 0; i < e.values.size(); ++i) {
      if (e.quoted[i]) {
        absl::StrAppend(&out, " \"", e.values[i], "\"");
      } else {
        absl::StrAppend(&out, " ", e.values[i]);
      }
    }
    absl::StrAppend(&out, ")\n");
  }
  return out;
}

absl::StatusOr<ParameterFile> ParseParameterText(absl::string_view text) {
  ParameterFile file;
  int line_no = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_no;
    absl::string_view line = absl::StripAsciiWhitespace(StripComment(raw));
    if (line.empty()) continue;
    if (line.front() != '(' || line.back() != ')') {
      return LineError(line_no, raw,
                       "expected \"(Key value ...)\" or a // comment");
    }
    absl::string_view body = line.substr(1, line.size() - 2);
    ParameterEntry entry;
    entry.line = line_no;
    size_t i = 0;
    while (i < body.size() &&
           std::isspace(static_cast<unsigned char>(body[i]))) {
      ++i;
    }
    size_t key_start = i;
    while (i < body.size() && IsKeyChar(body[i])) ++i;
    entry.key = std::string(body.substr(key_start, i - key_start));
    if (entry.key.empty() ||
        !std::isalpha(static_cast<unsigned char>(entry.key[0]))) {
      return LineError(line_no, raw, "the key must start with a letter");
    }
    if (i < body.size() && !std::isspace(static_cast<unsigned char>(body[i]))) {
      return LineError(line_no, raw,
                       "the key may contain only letters, digits and '_'");
    }
    while (true) {
      while (i < body.size() &&
             std::isspace(static_cast<unsigned char>(body[i]))) {
        ++i;
      }
      if (i >= body.size()) break;
      if (body[i] == '"') {
        size_t end = body.find('"', i + 1);
        if (end == absl::string_view::npos) {
          return LineError(line_no, raw, "unterminated quoted string");
        }
        entry.values.emplace_back(body.substr(i + 1, end - i - 1));
        entry.quoted.push_back(true);
        i = end + 1;
        if (i < body.size() &&
            !std::isspace(static_cast<unsigned char>(body[i]))) {
          return LineError(line_no, raw, "values must be separated by spaces");
        }
      } else {
        size_t start = i;
        while (i < body.size() &&
               !std::isspace(static_cast<unsigned char>(body[i])) &&
               body[i] != '"') {
          ++i;
        }
        absl::string_view token = body.substr(start, i - start);
        if (!IsNumber(token)) {
          return LineError(line_no, raw,
                           absl::StrCat("value '", token,
                                        "' is neither a number nor a "
                                        "double-quoted string"));
        }
        entry.values.emplace_back(token);
        entry.quoted.push_back(false);
      }
    }
    if (entry.values.empty()) {
      return LineError(line_no, raw, "the key has no value");
    }
    file.Append(std::move(entry));
  }
  return file;
}

const std::vector<std::string>& SupportedComponents() {
  // Each was run against /usr/bin/elastix 5.0.1 (Debian 12) on a 2-D pair.
  static const auto* const kList =
      new std::vector<std::string>{"MultiResolutionRegistration",
                                   "MultiMetricMultiResolutionRegistration",
                                   "AdvancedMattesMutualInformation",
                                   "AdvancedMeanSquares",
                                   "AdvancedNormalizedCorrelation",
                                   "NormalizedMutualInformation",
                                   "TransformBendingEnergyPenalty",
                                   "EulerTransform",
                                   "AffineTransform",
                                   "BSplineTransform",
                                   "RecursiveBSplineTransform",
                                   "TranslationTransform",
                                   "AdaptiveStochasticGradientDescent",
                                   "StandardGradientDescent",
                                   "RegularStepGradientDescent",
                                   "QuasiNewtonLBFGS",
                                   "ConjugateGradient",
                                   "FiniteDifferenceGradientDescent",
                                   "Powell",
                                   "AdaGrad",
                                   "AdaptiveStochasticLBFGS",
                                   "AdaptiveStochasticVarianceReducedGradient",
                                   "PreconditionedStochasticGradientDescent",
                                   "BSplineInterpolator",
                                   "LinearInterpolator",
                                   "ReducedDimensionBSplineInterpolator",
                                   "FinalBSplineInterpolator",
                                   "FinalReducedDimensionBSplineInterpolator",
                                   "DefaultResampler",
                                   "FixedRecursiveImagePyramid",
                                   "MovingRecursiveImagePyramid",
                                   "FixedSmoothingImagePyramid",
                                   "MovingSmoothingImagePyramid",
                                   "FixedGenericImagePyramid",
                                   "MovingGenericImagePyramid",
                                   "Random",
                                   "RandomCoordinate",
                                   "Full",
                                   "Grid",
                                   "MultiInputRandomCoordinate"};
  return *kList;
}

const std::vector<std::string>& ComponentsMissingFromDebianBuild() {
  static const auto* const kList =
      new std::vector<std::string>{"AdvancedKappaStatistic",
                                   "GradientDifference",
                                   "NormalizedGradientCorrelation",
                                   "PatternIntensity",
                                   "DisplacementMagnitudePenalty",
                                   "SimilarityTransform",
                                   "AffineDTITransform",
                                   "AffineLogTransform",
                                   "WeightedCombinationTransform",
                                   "MultiBSplineTransformWithNormal",
                                   "ConjugateGradientFRPR",
                                   "CMAEvolutionStrategy",
                                   "Simplex",
                                   "RSGDEachParameterApart",
                                   "SimultaneousPerturbation",
                                   "PreconditionedGradientDescent",
                                   "BSplineInterpolatorFloat",
                                   "NearestNeighborInterpolator",
                                   "RayCastInterpolator",
                                   "FinalBSplineInterpolatorFloat",
                                   "FinalLinearInterpolator",
                                   "FinalNearestNeighborInterpolator",
                                   "FinalRayCastInterpolator",
                                   "FixedShrinkingImagePyramid",
                                   "MovingShrinkingImagePyramid",
                                   "OpenCLFixedGenericImagePyramid",
                                   "OpenCLMovingGenericImagePyramid",
                                   "OpenCLResampler"};
  return *kList;
}

namespace {

// The one file key that is allowed: it must say there is no initial
// transform.
absl::Status CheckInitialTransform(const ParameterEntry& e,
                                   absl::string_view src) {
  if (e.values.size() != 1 || e.values[0] != "NoInitialTransform") {
    return LineError(e.line, src,
                     "InitialTransformParametersFileName must be "
                     "\"NoInitialTransform\" (chained transforms are "
                     "given as several parameter files instead)");
  }
  return absl::OkStatus();
}

// Keys that name files, directories or paths, or write extra files.
absl::Status CheckFileKeys(const ParameterEntry& e, absl::string_view src) {
  const std::string& key = e.key;
  for (absl::string_view bad :
       {"Path", "Directory", "FileName", "Filename", "File", "Folder"}) {
    if (absl::StrContains(key, bad)) {
      return LineError(e.line, src,
                       absl::StrCat("key '", key,
                                    "' names a file or directory, which "
                                    "parameter files sent to the server may "
                                    "not do"));
    }
  }
  if (absl::StartsWith(key, "Write") && key != "WriteResultImage") {
    for (const std::string& v : e.values) {
      if (v != "false") {
        return LineError(e.line, src,
                         absl::StrCat("key '", key,
                                      "' writes extra files; only \"false\" "
                                      "is accepted"));
      }
    }
  }
  if (key == "ResultImageFormat") {
    if (e.values.size() != 1 || (e.values[0] != "mhd" && e.values[0] != "nii" &&
                                 e.values[0] != "tif")) {
      return LineError(e.line, src,
                       "ResultImageFormat must be \"mhd\", \"nii\" or "
                       "\"tif\"");
    }
  }
  return absl::OkStatus();
}

// Checks every value of any key: finite numbers, no paths, no control
// characters.
absl::Status CheckValues(const ParameterEntry& e, absl::string_view src) {
  for (const std::string& v : e.values) {
    // "nan" and "inf" parse as numbers but slip past every bound (NaN
    // compares false), and elastix casts them to integers.
    double d;
    if (absl::SimpleAtod(v, &d) && !std::isfinite(d)) {
      return LineError(
          e.line, src,
          absl::StrCat(e.key, ": value '", v, "' is not a finite number"));
    }
    if (v.find('/') != std::string::npos || v.find('\\') != std::string::npos ||
        v.find("..") != std::string::npos) {
      return LineError(e.line, src,
                       absl::StrCat("value '", v,
                                    "' contains '/', '\\' or '..'; paths "
                                    "are not accepted"));
    }
    for (char c : v) {
      if (static_cast<unsigned char>(c) < 0x20) {
        return LineError(e.line, src, "control character in a value");
      }
    }
  }
  return absl::OkStatus();
}

// Component names must be quoted, installed and supported by the server.
absl::Status CheckComponents(const ParameterEntry& e, absl::string_view src) {
  if (!IsComponentKey(e.key)) return absl::OkStatus();
  for (size_t i = 0; i < e.values.size(); ++i) {
    const std::string& v = e.values[i];
    if (!e.quoted[i]) {
      return LineError(e.line, src, "component names must be quoted");
    }
    if (Contains(ComponentsMissingFromDebianBuild(), v)) {
      return LineError(
          e.line, src,
          absl::StrCat(
              "component '", v,
              "' is not installed in this elastix build "
              "(Debian 12 elastix 5.0.1); components it lacks: ",
              absl::StrJoin(ComponentsMissingFromDebianBuild(), ", ")));
    }
    if (!Contains(SupportedComponents(), v)) {
      return LineError(
          e.line, src,
          absl::StrCat("component '", v,
                       "' is unknown or needs inputs the server does not "
                       "provide (masks, point sets, image stacks); "
                       "supported: ",
                       absl::StrJoin(SupportedComponents(), ", ")));
    }
  }
  return absl::OkStatus();
}

// The resource bounds of kBounds and kSpacingBounds.
absl::Status CheckBounds(const ParameterEntry& e, absl::string_view src) {
  const std::string& key = e.key;
  for (const NumericBound& b : kBounds) {
    if (key != b.key) continue;
    for (size_t i = 0; i < e.values.size(); ++i) {
      double d;
      if (e.quoted[i] || !absl::SimpleAtod(e.values[i], &d) || d < b.min ||
          d > b.max) {
        return LineError(e.line, src,
                         absl::StrCat(key, " must be a number in [", b.min,
                                      ", ", b.max, "]"));
      }
    }
  }
  for (const SpacingBound& b : kSpacingBounds) {
    if (key != b.key) continue;
    for (size_t i = 0; i < e.values.size(); ++i) {
      double d;
      if (e.quoted[i] || !absl::SimpleAtod(e.values[i], &d)) {
        return LineError(e.line, src,
                         absl::StrCat(key, " must be unquoted numbers"));
      }
      if (d < b.min) {
        return LineError(
            e.line, src,
            absl::StrCat(key, " value ", e.values[i],
                         " is too small: the smallest accepted is ", b.min,
                         ", because ", b.why));
      }
    }
  }
  return absl::OkStatus();
}

// All checks of one entry, in the order their errors take precedence.
absl::Status ValidateEntry(const ParameterEntry& e, absl::string_view src) {
  if (e.key == "InitialTransformParametersFileName") {
    return CheckInitialTransform(e, src);
  }
  REGSERVE_RETURN_IF_ERROR(CheckFileKeys(e, src));
  REGSERVE_RETURN_IF_ERROR(CheckValues(e, src));
  REGSERVE_RETURN_IF_ERROR(CheckComponents(e, src));
  return CheckBounds(e, src);
}

}  // namespace

absl::Status ValidateParameterText(absl::string_view text) {
  auto parsed = ParseParameterText(text);
  if (!parsed.ok()) return parsed.status();
  // Re-split the text so errors can quote the offending line.
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  for (const ParameterEntry& e : parsed->entries()) {
    const absl::string_view src =
        e.line >= 1 && static_cast<size_t>(e.line) <= lines.size()
            ? absl::StripAsciiWhitespace(lines[e.line - 1])
            : absl::string_view(e.key);
    REGSERVE_RETURN_IF_ERROR(ValidateEntry(e, src));
  }
  return absl::OkStatus();
}

int StageSchedule::MaxIterations(int resolution) const {
  if (max_iterations.empty()) return 500;
  size_t i =
      std::min<size_t>(std::max(resolution, 0), max_iterations.size() - 1);
  return max_iterations[i];
}

long long StageSchedule::TotalIterations() const {
  long long total = 0;
  for (int r = 0; r < num_resolutions; ++r) total += MaxIterations(r);
  return total;
}

StageSchedule ScheduleFromParameters(const ParameterFile& params) {
  StageSchedule s;
  s.transform = params.GetString("Transform").value_or("");
  if (s.transform == "EulerTransform") {
    s.name = "rigid";
  } else if (s.transform == "AffineTransform") {
    s.name = "affine";
  } else if (s.transform == "BSplineTransform" ||
             s.transform == "RecursiveBSplineTransform") {
    s.name = "bspline";
  } else if (s.transform == "TranslationTransform") {
    s.name = "translation";
  } else {
    s.name = s.transform.empty() ? "unknown" : s.transform;
  }
  s.num_resolutions = static_cast<int>(std::clamp<long long>(
      params.GetInt("NumberOfResolutions").value_or(3), 1, INT_MAX));
  if (const ParameterEntry* e = params.Find("MaximumNumberOfIterations")) {
    for (const std::string& v : e->values) {
      double d;
      if (absl::SimpleAtod(v, &d) && d >= 0 &&
          d <= static_cast<double>(INT_MAX)) {
        s.max_iterations.push_back(static_cast<int>(d));
      }
    }
  }
  if (s.max_iterations.empty()) s.max_iterations.push_back(500);
  return s;
}

void ForceOutputSettings(ParameterFile* params) {
  params->SetStrings("WriteResultImage", {"false"});
  params->SetStrings("ResultImageFormat", {"mhd"});
  params->SetStrings("CompressResultImage", {"false"});
  params->SetStrings("WriteTransformParametersEachIteration", {"false"});
  params->SetStrings("WriteTransformParametersEachResolution", {"false"});
  params->SetStrings("WriteResultImageAfterEachResolution", {"false"});
  params->SetStrings("WritePyramidImagesAfterEachResolution", {"false"});
}

}  // namespace regserve
