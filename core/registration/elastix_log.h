// Copyright regserve authors.
//
// ElastixLogParser: turns elastix 5.0.1's console output, one line at a time,
// into RegistrationProgress, and remembers what a failed run said.
//
//   ElastixLogParser parser({ScheduleFromParameters(p0), ...});
//   for each line: if (parser.Consume(line)) report(parser.progress());
//   parser.final_metric(); parser.error_summary();
//
// Lines understood (see core/registration/testdata/ for captured output):
//   Running elastix with parameter file 1: "/.../p1.txt".
//   Resolution: 2
//   1:ItNr\t2:Metric\t3a:Time\t...      (columns found by name)
//   17\t-0.8123\t...                     (rows of that table)
//   Stopping condition: Maximum number of iterations has been reached.
//   Final metric value  = -1.35
//
// Thread safety: not synchronised; feed it from one thread.
#ifndef REGSERVE_CORE_REGISTRATION_ELASTIX_LOG_H_
#define REGSERVE_CORE_REGISTRATION_ELASTIX_LOG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/registration/parameters.h"
#include "core/registration/registration.h"

namespace regserve {

class ElastixLogParser {
 public:
  // One schedule per parameter file, in order. An empty list is treated as a
  // single stage with elastix's defaults.
  explicit ElastixLogParser(std::vector<StageSchedule> stages);

  // Consumes one line (without its '\n' / '\r'). Returns true when progress()
  // changed in a way worth reporting (new stage, resolution or iteration).
  bool Consume(absl::string_view line);

  const RegistrationProgress& progress() const { return progress_; }
  // The last "Final metric value" seen (over all stages), or the last
  // iteration's metric if none was printed yet.
  double final_metric() const { return final_metric_; }
  bool has_final_metric() const { return has_final_metric_; }
  // Iterations completed, summed over stages and resolutions.
  int64_t total_iterations() const { return total_iterations_; }
  const std::string& stopping_condition() const { return stopping_condition_; }

  // What elastix reported on failure, for error messages.
  bool component_not_installed() const { return !missing_component_.empty(); }
  const std::string& missing_component() const { return missing_component_; }
  bool samples_outside_moving() const { return samples_outside_; }
  // Up to a few lines of "ERROR"/"Description:" text, joined with "; ".
  std::string error_summary() const;

 private:
  void UpdateFraction();

  std::vector<StageSchedule> stages_;
  RegistrationProgress progress_;
  int itnr_column_ = -1;
  int metric_column_ = -1;
  int num_columns_ = 0;
  bool in_table_ = false;
  int64_t total_iterations_ = 0;
  double final_metric_ = 0.0;
  bool has_final_metric_ = false;
  std::string stopping_condition_;
  std::string missing_component_;
  bool samples_outside_ = false;
  std::vector<std::string> errors_;
};

}  // namespace regserve

#endif  // REGSERVE_CORE_REGISTRATION_ELASTIX_LOG_H_
