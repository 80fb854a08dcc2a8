// Copyright regserve authors.
#include "core/registration/registration.h"

#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/registration/elastix_log.h"
#include "core/registration/metaimage.h"
#include "core/registration/parameters.h"
#include "core/registration/process.h"

namespace regserve {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxCustomFiles = 8;
constexpr int kMaxThreads = 256;

absl::Status CheckCopy(const Image* image, const char* which,
                       int64_t full_width, int64_t full_height) {
  if (image == nullptr || image->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("registration: the ", which, " image is missing"));
  }
  if (image->channels() != 1 || image->type() != SampleType::kFloat32) {
    return absl::InvalidArgumentError(
        absl::StrCat("registration: the ", which,
                     " registration copy must be 1-channel float32, got ",
                     image->spec().DebugString()));
  }
  if (full_width <= 0 || full_height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("registration: the ", which,
                     " full-resolution size must be positive, "
                     "got ",
                     full_width, "x", full_height));
  }
  return absl::OkStatus();
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    return absl::InternalError(absl::StrCat("cannot write '", path, "'"));
  }
  return absl::OkStatus();
}

// Creates the work directory and removes outputs of an earlier run there, so
// that a stale TransformParameters or deformation field is never read back.
absl::Status PrepareWorkDir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create the registration work directory '", dir,
                     "': ", ec.message()));
  }
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, "TransformParameters.") ||
        absl::StartsWith(name, "deformationField.") ||
        absl::StartsWith(name, "IterationInfo.") || name == "elastix.log" ||
        name == "transformix.log") {
      fs::remove(entry.path(), ec);
    }
  }
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot clean the registration work directory '", dir,
                     "': ", ec.message()));
  }
  return absl::OkStatus();
}

std::string TailText(const std::vector<std::string>& tail, size_t n) {
  size_t start = tail.size() > n ? tail.size() - n : 0;
  std::vector<std::string> last(tail.begin() + start, tail.end());
  return absl::StrJoin(last, " | ");
}

absl::Status ElastixFailure(const ProcessResult& run,
                            const ElastixLogParser& parser, bool custom,
                            const std::string& work_dir) {
  if (parser.samples_outside_moving()) {
    return absl::FailedPreconditionError(
        "the images do not overlap enough to be registered: elastix reported "
        "\"Too many samples map outside moving image buffer\". Check that the "
        "fixed and moving images show the same scene and are roughly aligned "
        "(or start from a transform that brings them together).");
  }
  if (parser.component_not_installed()) {
    std::string msg = absl::StrCat(
        "elastix component '", parser.missing_component(),
        "' is not installed in this elastix build; choose another (see "
        "ComponentsMissingFromDebianBuild)");
    return custom ? absl::InvalidArgumentError(msg)
                  : absl::FailedPreconditionError(msg);
  }
  if (run.exit_code == 254) {
    return absl::InternalError(
        absl::StrCat("elastix exited 254: its output directory '", work_dir,
                     "' is missing or not writable"));
  }
  std::string what = parser.error_summary();
  if (what.empty()) what = TailText(run.tail, 5);
  if (run.term_signal != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("elastix was killed by signal ", run.term_signal,
                     " (out of memory?): ", what));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "elastix failed with exit code ", run.exit_code, ": ", what));
}

}  // namespace

absl::StatusOr<RegistrationResult> Register(const RegistrationRequest& request,
                                            const ElastixConfig& config) {
  return Register(request, config, ProcessRunner::Default());
}

absl::StatusOr<RegistrationResult> Register(const RegistrationRequest& request,
                                            const ElastixConfig& config,
                                            ProcessRunner* runner) {
  // --- Validate the request.
  if (runner == nullptr) {
    return absl::InvalidArgumentError("registration: no process runner");
  }
  if (request.work_dir.empty() || request.work_dir[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("registration: work_dir must be an absolute path, got '",
                     request.work_dir, "'"));
  }
  REGSERVE_RETURN_IF_ERROR(CheckCopy(request.fixed, "fixed",
                                     request.fixed_full_width,
                                     request.fixed_full_height));
  REGSERVE_RETURN_IF_ERROR(CheckCopy(request.moving, "moving",
                                     request.moving_full_width,
                                     request.moving_full_height));
  if (request.threads < 1 || request.threads > kMaxThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("registration: threads must be in [1, ", kMaxThreads,
                     "], got ", request.threads));
  }
  if (request.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("registration: timeout must be positive");
  }
  const bool custom = !request.custom_parameters.empty();
  if (request.custom_parameters.size() > kMaxCustomFiles) {
    return absl::InvalidArgumentError(absl::StrCat(
        "registration: at most ", kMaxCustomFiles, " parameter files, got ",
        request.custom_parameters.size()));
  }
  std::vector<std::string> texts =
      custom ? request.custom_parameters
             : PresetParameters(request.transform, request.fixed->width(),
                                request.fixed->height());
  std::vector<ParameterFile> files;
  std::vector<StageSchedule> schedules;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (custom) {
      absl::Status valid = ValidateParameterText(texts[i]);
      if (!valid.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("parameter file ", i + 1,
                                                       " of ", texts.size(),
                                                       ": ", valid.message()));
      }
    }
    REGSERVE_ASSIGN_OR_RETURN(ParameterFile file, ParseParameterText(texts[i]));
    ForceOutputSettings(&file);
    schedules.push_back(ScheduleFromParameters(file));
    files.push_back(std::move(file));
  }
  const absl::Time deadline = absl::Now() + request.timeout;
  if (request.cancel != nullptr)
    REGSERVE_RETURN_IF_ERROR(request.cancel->Check());

  // --- Write the inputs.
  const std::string& dir = request.work_dir;
  REGSERVE_RETURN_IF_ERROR(PrepareWorkDir(dir));
  const Image& fixed = *request.fixed;
  const Image& moving = *request.moving;
  std::array<double, 2> fixed_spacing = {
      static_cast<double>(request.fixed_full_width) / fixed.width(),
      static_cast<double>(request.fixed_full_height) / fixed.height()};
  std::array<double, 2> moving_spacing = {
      static_cast<double>(request.moving_full_width) / moving.width(),
      static_cast<double>(request.moving_full_height) / moving.height()};
  auto origin_of = [](const std::array<double, 2>& s) {
    return std::array<double, 2>{(s[0] - 1.0) / 2.0, (s[1] - 1.0) / 2.0};
  };
  const std::string fixed_path = dir + "/fixed.mhd";
  const std::string moving_path = dir + "/moving.mhd";
  REGSERVE_RETURN_IF_ERROR(WriteMetaImage(fixed_path, fixed, fixed_spacing,
                                          origin_of(fixed_spacing)));
  REGSERVE_RETURN_IF_ERROR(WriteMetaImage(moving_path, moving, moving_spacing,
                                          origin_of(moving_spacing)));
  std::vector<std::string> elastix_argv = {
      config.elastix_path, "-f", fixed_path, "-m", moving_path, "-out", dir};
  for (size_t i = 0; i < files.size(); ++i) {
    std::string p = absl::StrCat(dir, "/p", i, ".txt");
    REGSERVE_RETURN_IF_ERROR(WriteText(p, files[i].ToText()));
    elastix_argv.push_back("-p");
    elastix_argv.push_back(p);
  }
  elastix_argv.push_back("-threads");
  elastix_argv.push_back(absl::StrCat(request.threads));

  // --- Run elastix, reporting progress (throttled to ~10 per second, plus
  // every stage/resolution change).
  ElastixLogParser parser(schedules);
  absl::Time last_report = absl::InfinitePast();
  int last_stage = -1;
  int last_resolution = -1;
  ProcessOptions elastix;
  elastix.argv = elastix_argv;
  elastix.working_dir = dir;
  elastix.pid_file = dir + "/child.pid";
  elastix.cancel = request.cancel;
  elastix.deadline = deadline;
  elastix.on_line = [&](absl::string_view line) {
    if (!parser.Consume(line) || !request.on_progress) return;
    const RegistrationProgress& p = parser.progress();
    absl::Time now = absl::Now();
    if (p.stage != last_stage || p.resolution != last_resolution ||
        now - last_report >= absl::Milliseconds(100)) {
      last_stage = p.stage;
      last_resolution = p.resolution;
      last_report = now;
      request.on_progress(p);
    }
  };
  auto elastix_run = runner->Run(elastix);
  if (!elastix_run.ok()) {
    if (absl::IsDeadlineExceeded(elastix_run.status())) {
      return absl::DeadlineExceededError(absl::StrCat(
          "registration did not finish within its time limit (",
          absl::FormatDuration(request.timeout), "); elastix was at ",
          parser.progress().message, ". ", elastix_run.status().message()));
    }
    return elastix_run.status();
  }
  if (elastix_run->exit_code != 0 || elastix_run->term_signal != 0) {
    return ElastixFailure(*elastix_run, parser, custom, dir);
  }
  RegistrationResult result;
  for (size_t i = 0; i < files.size(); ++i) {
    std::string tp = absl::StrCat(dir, "/TransformParameters.", i, ".txt");
    std::error_code ec;
    if (!fs::exists(tp, ec)) {
      return absl::InternalError(
          absl::StrCat("elastix exited 0 but did not write '", tp,
                       "'; last output: ", TailText(elastix_run->tail, 5)));
    }
    result.transform_parameter_files.push_back(tp);
  }
  result.final_metric = parser.final_metric();
  result.iterations = parser.total_iterations();
  result.elastix_seconds = elastix_run->seconds;
  result.elastix_peak_rss_bytes = elastix_run->peak_rss_bytes;

  // --- Run transformix for the dense deformation field.
  ProcessOptions transformix;
  transformix.argv = {config.transformix_path,
                      "-def",
                      "all",
                      "-out",
                      dir,
                      "-tp",
                      result.transform_parameter_files.back(),
                      "-threads",
                      absl::StrCat(request.threads)};
  transformix.working_dir = dir;
  transformix.pid_file = dir + "/child.pid";
  transformix.cancel = request.cancel;
  transformix.deadline = deadline;
  auto transformix_run = runner->Run(transformix);
  if (!transformix_run.ok()) {
    if (absl::IsDeadlineExceeded(transformix_run.status())) {
      return absl::DeadlineExceededError(
          absl::StrCat("registration did not finish within its time limit (",
                       absl::FormatDuration(request.timeout),
                       ") while transformix computed the deformation field"));
    }
    return transformix_run.status();
  }
  if (transformix_run->exit_code != 0 || transformix_run->term_signal != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "transformix failed (exit code ", transformix_run->exit_code,
        ", signal ", transformix_run->term_signal,
        "): ", TailText(transformix_run->tail, 5)));
  }
  result.transformix_seconds = transformix_run->seconds;
  result.transformix_peak_rss_bytes = transformix_run->peak_rss_bytes;
  REGSERVE_ASSIGN_OR_RETURN(
      result.field, ReadDisplacementField(dir + "/deformationField.mhd"));
  if (result.field.width != fixed.width() ||
      result.field.height != fixed.height()) {
    return absl::InternalError(
        absl::StrCat("transformix wrote a ", result.field.width, "x",
                     result.field.height, " deformation field for a ",
                     fixed.width(), "x", fixed.height(), " fixed image"));
  }
  if (request.on_progress) {
    RegistrationProgress done = parser.progress();
    done.fraction = 1.0;
    done.metric = result.final_metric;
    done.message =
        absl::StrCat("done: ", result.iterations, " iterations, final metric ",
                     result.final_metric);
    request.on_progress(done);
  }
  return result;
}

}  // namespace regserve
