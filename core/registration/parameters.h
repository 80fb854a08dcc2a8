// Copyright regserve authors.
//
// elastix parameter files: parsing, validation of user-supplied files,
// the built-in presets and the output settings the runner forces.
//
// An elastix parameter file is a list of lines "(Key value value ...)", where
// a value is either a double-quoted string or a number, plus // comments and
// blank lines.
//
//   REGSERVE_ASSIGN_OR_RETURN(ParameterFile p, ParseParameterText(text));
//   p.Set("WriteResultImage", {"\"false\""});
//   std::string out = p.ToText();
//
// Thread safety: all functions are pure and thread-safe; a ParameterFile is a
// plain value (not synchronised).
#ifndef REGSERVE_CORE_REGISTRATION_PARAMETERS_H_
#define REGSERVE_CORE_REGISTRATION_PARAMETERS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/optional.h"

namespace regserve {

struct ParameterEntry {
  std::string key;
  // Values as written, without quotes; `quoted[i]` tells whether value i was
  // a quoted string.
  std::vector<std::string> values;
  std::vector<bool> quoted;
  int line = 0;  // 1-based line in the source text; 0 if added by Set
};

class ParameterFile {
 public:
  const std::vector<ParameterEntry>& entries() const { return entries_; }
  void Append(ParameterEntry entry) { entries_.push_back(std::move(entry)); }

  // The entry for `key` (the last one if repeated), or nullptr.
  const ParameterEntry* Find(absl::string_view key) const;
  // Replaces every entry for `key` with one holding quoted strings.
  void SetStrings(absl::string_view key,
                  const std::vector<std::string>& values);
  // Replaces every entry for `key` with one holding numbers (as text).
  void SetNumbers(absl::string_view key,
                  const std::vector<std::string>& values);
  void Remove(absl::string_view key);

  // First value of `key` as an integer/string; nullopt if absent or invalid.
  absl::optional<long long> GetInt(absl::string_view key,
                                   size_t index = 0) const;
  absl::optional<std::string> GetString(absl::string_view key,
                                        size_t index = 0) const;

  // Serialises as an elastix parameter file, one entry per line.
  std::string ToText() const;

 private:
  std::vector<ParameterEntry> entries_;
};

// Parses `text`. InvalidArgument "line N: ..." for a malformed line: not
// "(Key values...)", unterminated quote, a bare (unquoted) value that is not a
// number, an empty key or a key with characters other than [A-Za-z0-9_].
absl::StatusOr<ParameterFile> ParseParameterText(absl::string_view text);

// Components of elastix 5.0.1 (Debian 12) that are accepted in user files:
// installed, and usable for a single 2-D fixed/moving pair without extra
// inputs (masks, point sets, stacks). Exposed for tests and documentation.
const std::vector<std::string>& SupportedComponents();
// Components this Debian build lacks ("This component is not installed!"),
// measured against /usr/bin/elastix 5.0.1.
const std::vector<std::string>& ComponentsMissingFromDebianBuild();

// What a registration stage will iterate over, read from its parameters
// (elastix defaults where absent: 3 resolutions, 500 iterations).
struct StageSchedule {
  std::string transform;  // e.g. "EulerTransform"
  std::string name;       // "rigid", "affine", "bspline" or the transform
  int num_resolutions = 3;
  // Per resolution; elastix repeats the last value if fewer are given.
  std::vector<int> max_iterations;
  int MaxIterations(int resolution) const;
  long long TotalIterations() const;
};
StageSchedule ScheduleFromParameters(const ParameterFile& params);

// Forces the settings the runner relies on: no result image, mhd output,
// no compression, and no extra per-iteration files.
void ForceOutputSettings(ParameterFile* params);

}  // namespace regserve

#endif  // REGSERVE_CORE_REGISTRATION_PARAMETERS_H_
