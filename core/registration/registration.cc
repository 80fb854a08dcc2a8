// Copyright regserve authors.
#include "core/registration/registration.h"

#include <array>
#include <cstdio>
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

absl::Status ValidateRequest(const RegistrationRequest& request,
                             const ProcessRunner* runner) {
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
  if (request.custom_parameters.size() > kMaxCustomFiles) {
    return absl::InvalidArgumentError(absl::StrCat(
        "registration: at most ", kMaxCustomFiles, " parameter files, got ",
        request.custom_parameters.size()));
  }
  return absl::OkStatus();
}

// The parameter files elastix runs, in order, and the schedule of each (for
// the progress the log parser reports).
struct StagePlan {
  std::vector<ParameterFile> files;
  std::vector<StageSchedule> schedules;
};

// Validates custom parameter files (a preset needs no validation), parses
// them and forces the output settings the server relies on.
absl::StatusOr<StagePlan> PrepareStages(const RegistrationRequest& request,
                                        bool custom) {
  std::vector<std::string> texts =
      custom ? request.custom_parameters
             : PresetParameters(request.transform, request.fixed->width(),
                                request.fixed->height(), request.schedule);
  StagePlan stages;
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
    stages.schedules.push_back(ScheduleFromParameters(file));
    stages.files.push_back(std::move(file));
  }
  return stages;
}

// A copy pixel's spacing is its size in full-resolution pixels, so the
// elastix transform works in full-resolution pixel units.
std::array<double, 2> SpacingOf(const Image& copy, int64_t full_width,
                                int64_t full_height) {
  return {static_cast<double>(full_width) / copy.width(),
          static_cast<double>(full_height) / copy.height()};
}

// The centre of the first copy pixel, in full-resolution pixel coordinates.
std::array<double, 2> OriginOf(const std::array<double, 2>& spacing) {
  return {(spacing[0] - 1.0) / 2.0, (spacing[1] - 1.0) / 2.0};
}

// Writes the images and parameter files into the (cleaned) work directory;
// returns the elastix command line that reads them.
absl::StatusOr<std::vector<std::string>> WriteElastixInputs(
    const RegistrationRequest& request, const ElastixConfig& config,
    const std::vector<ParameterFile>& files) {
  const std::string& dir = request.work_dir;
  REGSERVE_RETURN_IF_ERROR(PrepareWorkDir(dir));
  const std::array<double, 2> fixed_spacing = SpacingOf(
      *request.fixed, request.fixed_full_width, request.fixed_full_height);
  const std::array<double, 2> moving_spacing = SpacingOf(
      *request.moving, request.moving_full_width, request.moving_full_height);
  const std::string fixed_path = dir + "/fixed.mhd";
  const std::string moving_path = dir + "/moving.mhd";
  REGSERVE_RETURN_IF_ERROR(WriteMetaImage(
      fixed_path, *request.fixed, fixed_spacing, OriginOf(fixed_spacing)));
  REGSERVE_RETURN_IF_ERROR(WriteMetaImage(
      moving_path, *request.moving, moving_spacing, OriginOf(moving_spacing)));
  std::vector<std::string> argv = {
      config.elastix_path, "-f", fixed_path, "-m", moving_path, "-out", dir};
  for (size_t i = 0; i < files.size(); ++i) {
    std::string p = absl::StrCat(dir, "/p", i, ".txt");
    REGSERVE_RETURN_IF_ERROR(WriteText(p, files[i].ToText()));
    argv.push_back("-p");
    argv.push_back(p);
  }
  argv.push_back("-threads");
  argv.push_back(absl::StrCat(request.threads));
  return argv;
}

// The settings elastix and transformix share: run in the work directory,
// leave a pid file there for KillStaleChild, honour cancel and deadline.
ProcessOptions ChildOptions(const RegistrationRequest& request,
                            std::vector<std::string> argv,
                            absl::Time deadline) {
  ProcessOptions options;
  options.argv = std::move(argv);
  options.working_dir = request.work_dir;
  options.pid_file = request.work_dir + "/child.pid";
  options.cancel = request.cancel;
  options.deadline = deadline;
  return options;
}

// Feeds elastix's output to the log parser and forwards its progress,
// throttled to ~10 reports per second plus every stage/resolution change.
class ProgressForwarder {
 public:
  ProgressForwarder(const RegistrationRequest& request,
                    ElastixLogParser* parser)
      : request_(request), parser_(parser) {}

  void OnLine(absl::string_view line) {
    if (!parser_->Consume(line) || !request_.on_progress) return;
    const RegistrationProgress& p = parser_->progress();
    absl::Time now = absl::Now();
    if (p.stage != last_stage_ || p.resolution != last_resolution_ ||
        now - last_report_ >= absl::Milliseconds(100)) {
      last_stage_ = p.stage;
      last_resolution_ = p.resolution;
      last_report_ = now;
      request_.on_progress(p);
    }
  }

 private:
  const RegistrationRequest& request_;
  ElastixLogParser* const parser_;
  absl::Time last_report_ = absl::InfinitePast();
  int last_stage_ = -1;
  int last_resolution_ = -1;
};

// Runs elastix and fills the result's transform files, metric, iterations
// and resource use.
absl::Status RunElastix(const RegistrationRequest& request,
                        std::vector<std::string> argv, absl::Time deadline,
                        size_t num_files, bool custom, ProcessRunner* runner,
                        ElastixLogParser* parser, RegistrationResult* result) {
  const std::string& dir = request.work_dir;
  ProcessOptions elastix = ChildOptions(request, std::move(argv), deadline);
  ProgressForwarder progress(request, parser);
  elastix.on_line = [&progress](absl::string_view line) {
    progress.OnLine(line);
  };
  auto run = runner->Run(elastix);
  if (!run.ok()) {
    if (absl::IsDeadlineExceeded(run.status())) {
      return absl::DeadlineExceededError(absl::StrCat(
          "registration did not finish within its time limit (",
          absl::FormatDuration(request.timeout), "); elastix was at ",
          parser->progress().message, ". ", run.status().message()));
    }
    return run.status();
  }
  if (run->exit_code != 0 || run->term_signal != 0) {
    return ElastixFailure(*run, *parser, custom, dir);
  }
  for (size_t i = 0; i < num_files; ++i) {
    std::string tp = absl::StrCat(dir, "/TransformParameters.", i, ".txt");
    std::error_code ec;
    if (!fs::exists(tp, ec)) {
      return absl::InternalError(
          absl::StrCat("elastix exited 0 but did not write '", tp,
                       "'; last output: ", TailText(run->tail, 5)));
    }
    result->transform_parameter_files.push_back(tp);
  }
  result->final_metric = parser->final_metric();
  result->iterations = parser->total_iterations();
  result->elastix_seconds = run->seconds;
  result->elastix_cpu_seconds = run->cpu_seconds;
  result->elastix_peak_rss_bytes = run->peak_rss_bytes;
  return absl::OkStatus();
}

// Runs transformix on the last stage's transform for the dense deformation
// field, and reads the field back into the result.
// True when transformix was killed by a signal only after it had reported
// success ("transformix has finished at ..."): its output is complete.
bool FinishedThenCrashed(const ProcessResult& run) {
  if (run.term_signal == 0) return false;
  for (const std::string& line : run.tail) {
    if (absl::StartsWith(line, "transformix has finished")) return true;
  }
  return false;
}

absl::Status RunTransformix(const RegistrationRequest& request,
                            const ElastixConfig& config, absl::Time deadline,
                            ProcessRunner* runner, RegistrationResult* result) {
  const std::string& dir = request.work_dir;
  const ProcessOptions transformix =
      ChildOptions(request,
                   {config.transformix_path, "-def", "all", "-out", dir, "-tp",
                    result->transform_parameter_files.back(), "-threads",
                    absl::StrCat(request.threads)},
                   deadline);
  auto run = runner->Run(transformix);
  if (!run.ok()) {
    if (absl::IsDeadlineExceeded(run.status())) {
      return absl::DeadlineExceededError(
          absl::StrCat("registration did not finish within its time limit (",
                       absl::FormatDuration(request.timeout),
                       ") while transformix computed the deformation field"));
    }
    return run.status();
  }
  if (run->exit_code != 0 || run->term_signal != 0) {
    if (!FinishedThenCrashed(*run)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "transformix failed (exit code ", run->exit_code, ", signal ",
          run->term_signal, "): ", TailText(run->tail, 5)));
    }
    // Debian's transformix 5.0.1 now and then dies with SIGSEGV while it
    // exits, after it has written the field and said so. The field is
    // checked below (size against its header and the fixed grid).
    std::fprintf(stderr,
                 "regserve: transformix crashed (signal %d) after it "
                 "finished; its deformation field is used\n",
                 run->term_signal);
  }
  result->transformix_seconds = run->seconds;
  result->transformix_peak_rss_bytes = run->peak_rss_bytes;
  REGSERVE_ASSIGN_OR_RETURN(
      result->field, ReadDisplacementField(dir + "/deformationField.mhd"));
  const Image& fixed = *request.fixed;
  if (result->field.width != fixed.width() ||
      result->field.height != fixed.height()) {
    return absl::InternalError(
        absl::StrCat("transformix wrote a ", result->field.width, "x",
                     result->field.height, " deformation field for a ",
                     fixed.width(), "x", fixed.height(), " fixed image"));
  }
  return absl::OkStatus();
}

// The final progress report, with fraction 1 (see RegistrationRequest).
void ReportDone(const RegistrationRequest& request,
                const ElastixLogParser& parser,
                const RegistrationResult& result) {
  if (!request.on_progress) return;
  RegistrationProgress done = parser.progress();
  done.fraction = 1.0;
  done.metric = result.final_metric;
  done.message =
      absl::StrCat("done: ", result.iterations, " iterations, final metric ",
                   result.final_metric);
  request.on_progress(done);
}

}  // namespace

absl::StatusOr<RegistrationResult> Register(const RegistrationRequest& request,
                                            const ElastixConfig& config) {
  return Register(request, config, ProcessRunner::Default());
}

absl::StatusOr<RegistrationResult> Register(const RegistrationRequest& request,
                                            const ElastixConfig& config,
                                            ProcessRunner* runner) {
  REGSERVE_RETURN_IF_ERROR(ValidateRequest(request, runner));
  const bool custom = !request.custom_parameters.empty();
  REGSERVE_ASSIGN_OR_RETURN(StagePlan stages, PrepareStages(request, custom));
  const absl::Time deadline = absl::Now() + request.timeout;
  if (request.cancel != nullptr)
    REGSERVE_RETURN_IF_ERROR(request.cancel->Check());
  REGSERVE_ASSIGN_OR_RETURN(std::vector<std::string> elastix_argv,
                            WriteElastixInputs(request, config, stages.files));
  ElastixLogParser parser(stages.schedules);
  RegistrationResult result;
  REGSERVE_RETURN_IF_ERROR(RunElastix(request, std::move(elastix_argv),
                                      deadline, stages.files.size(), custom,
                                      runner, &parser, &result));
  REGSERVE_RETURN_IF_ERROR(
      RunTransformix(request, config, deadline, runner, &result));
  ReportDone(request, parser, result);
  return result;
}

}  // namespace regserve
