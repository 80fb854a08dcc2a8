// Copyright regserve authors.
#include "core/registration/elastix_log.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace regserve {
namespace {

constexpr size_t kMaxErrorLines = 6;

// Parses the integer that follows `prefix` at the start of `line`.
bool IntAfter(absl::string_view line, absl::string_view prefix, int* out) {
  if (!absl::ConsumePrefix(&line, prefix)) return false;
  line = absl::StripLeadingAsciiWhitespace(line);
  size_t n = 0;
  while (n < line.size() && absl::ascii_isdigit(line[n])) ++n;
  return n > 0 && absl::SimpleAtoi(line.substr(0, n), out);
}

}  // namespace

ElastixLogParser::ElastixLogParser(std::vector<StageSchedule> stages)
    : stages_(std::move(stages)) {
  if (stages_.empty()) stages_.push_back(StageSchedule{});
  progress_.num_stages = static_cast<int>(stages_.size());
  progress_.num_resolutions = stages_[0].num_resolutions;
  progress_.max_iterations = stages_[0].MaxIterations(0);
  progress_.message = "starting elastix";
}

void ElastixLogParser::UpdateFraction() {
  int64_t total = 0;
  int64_t done = 0;
  for (size_t s = 0; s < stages_.size(); ++s) {
    int64_t stage_total = stages_[s].TotalIterations();
    total += stage_total;
    if (static_cast<int>(s) < progress_.stage) {
      done += stage_total;
    } else if (static_cast<int>(s) == progress_.stage) {
      for (int r = 0;
           r < progress_.resolution && r < stages_[s].num_resolutions; ++r) {
        done += stages_[s].MaxIterations(r);
      }
      done += std::min(progress_.iteration, progress_.max_iterations);
    }
  }
  progress_.fraction =
      total > 0 ? std::min(1.0, static_cast<double>(done) / total) : 0.0;
  const StageSchedule& stage =
      stages_[std::min<size_t>(progress_.stage, stages_.size() - 1)];
  progress_.message = absl::StrFormat(
      "stage %d/%d (%s), resolution %d/%d, iteration %d/%d, metric %.4g",
      progress_.stage + 1, progress_.num_stages, stage.name,
      progress_.resolution + 1, progress_.num_resolutions, progress_.iteration,
      progress_.max_iterations, progress_.metric);
}

bool ElastixLogParser::Consume(absl::string_view raw) {
  absl::string_view line = absl::StripAsciiWhitespace(raw);
  if (line.empty()) return false;

  int value = 0;
  if (IntAfter(line, "Running elastix with parameter file", &value)) {
    if (absl::StrContains(line, "has finished")) return false;
    in_table_ = false;
    if (value < 0) return false;
    if (value >= static_cast<int>(stages_.size())) {
      // More files than we were told about: extend with defaults.
      stages_.resize(value + 1);
      progress_.num_stages = value + 1;
    }
    progress_.stage = value;
    progress_.resolution = 0;
    progress_.iteration = 0;
    progress_.num_resolutions = stages_[value].num_resolutions;
    progress_.max_iterations = stages_[value].MaxIterations(0);
    UpdateFraction();
    return true;
  }
  if (IntAfter(line, "Resolution:", &value)) {
    in_table_ = false;
    progress_.resolution = value;
    progress_.iteration = 0;
    const StageSchedule& stage = stages_[progress_.stage];
    progress_.num_resolutions = std::max(stage.num_resolutions, value + 1);
    progress_.max_iterations = stage.MaxIterations(value);
    UpdateFraction();
    return true;
  }
  if (absl::StrContains(line, "ItNr") && absl::StrContains(line, "Metric")) {
    std::vector<absl::string_view> cols =
        absl::StrSplit(line, absl::ByAnyChar("\t "), absl::SkipEmpty());
    itnr_column_ = metric_column_ = -1;
    for (size_t i = 0; i < cols.size(); ++i) {
      absl::string_view name = cols[i];
      size_t colon = name.find(':');
      if (colon != absl::string_view::npos) name.remove_prefix(colon + 1);
      if (name == "ItNr") itnr_column_ = static_cast<int>(i);
      if (name == "Metric") metric_column_ = static_cast<int>(i);
    }
    num_columns_ = static_cast<int>(cols.size());
    in_table_ = itnr_column_ >= 0 && metric_column_ >= 0;
    return false;
  }
  if (in_table_) {
    std::vector<absl::string_view> cols =
        absl::StrSplit(line, absl::ByAnyChar("\t "), absl::SkipEmpty());
    int it = 0;
    double metric = 0.0;
    if (static_cast<int>(cols.size()) == num_columns_ &&
        absl::SimpleAtoi(cols[itnr_column_], &it) &&
        absl::SimpleAtod(cols[metric_column_], &metric)) {
      progress_.iteration = it + 1;
      progress_.metric = metric;
      if (!has_final_metric_) final_metric_ = metric;
      ++total_iterations_;
      UpdateFraction();
      return true;
    }
    // Any other line ends the table (e.g. "Time spent in resolution").
    in_table_ = false;
  }
  if (absl::ConsumePrefix(&line, "Stopping condition:")) {
    stopping_condition_ = std::string(absl::StripAsciiWhitespace(line));
    return false;
  }
  if (absl::ConsumePrefix(&line, "Final metric value")) {
    line = absl::StripLeadingAsciiWhitespace(line);
    if (absl::ConsumePrefix(&line, "=")) {
      double m;
      if (absl::SimpleAtod(absl::StripAsciiWhitespace(line), &m)) {
        final_metric_ = m;
        has_final_metric_ = true;
        progress_.metric = m;
      }
    }
    return false;
  }
  if (absl::StrContains(line, "This component is not installed!")) {
    // "SimilarityTransform(index 1) - This component is not installed!"
    size_t end = line.find_first_of("( ");
    missing_component_ = std::string(line.substr(0, end));
  }
  if (absl::StrContains(line,
                        "Too many samples map outside moving image buffer")) {
    samples_outside_ = true;
  }
  if ((absl::StartsWith(line, "ERROR") ||
       absl::StartsWith(line, "Description:") ||
       absl::StrContains(line, "not installed")) &&
      errors_.size() < kMaxErrorLines) {
    std::string s(line.substr(0, 300));
    if (std::find(errors_.begin(), errors_.end(), s) == errors_.end()) {
      errors_.push_back(std::move(s));
    }
  }
  return false;
}

std::string ElastixLogParser::error_summary() const {
  return absl::StrJoin(errors_, "; ");
}

}  // namespace regserve
