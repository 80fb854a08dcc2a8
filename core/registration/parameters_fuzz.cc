// Copyright regserve authors.
//
// libFuzzer entry point for the elastix parameter text that clients send
// (JobSpec.elastix_parameters): ParseParameterText and ValidateParameterText
// must never crash, hang or leak on any input, and must only ever answer OK
// or InvalidArgument. Two properties are checked beyond "no crash":
//   - ToText() of a parsed file parses again to the same entries, and
//   - text that validates still validates after that round trip (the runner
//     re-serialises the file before handing it to elastix, so what was
//     checked must be what elastix reads).
// A violated property aborts, which libFuzzer reports as a crash.
//
// Built with -DREGSERVE_FUZZ=ON and clang (tests/fuzz/CMakeLists.txt); the
// same file is linked into the replay test fuzz_replay_parameters, which
// runs the corpus tests/fuzz/corpus/parameters_fuzz/ in every build.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "core/registration/parameters.h"
#include "core/registration/registration.h"

namespace {

bool SameEntries(const regserve::ParameterFile& a,
                 const regserve::ParameterFile& b) {
  if (a.entries().size() != b.entries().size()) return false;
  for (size_t i = 0; i < a.entries().size(); ++i) {
    const regserve::ParameterEntry& x = a.entries()[i];
    const regserve::ParameterEntry& y = b.entries()[i];
    if (x.key != y.key || x.values != y.values || x.quoted != y.quoted) {
      return false;
    }
  }
  return true;
}

bool OkOrInvalid(const absl::Status& s) {
  return s.ok() || s.code() == absl::StatusCode::kInvalidArgument;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  const absl::Status valid = regserve::ValidateParameterText(text);
  if (!OkOrInvalid(valid)) std::abort();
  absl::StatusOr<regserve::ParameterFile> parsed =
      regserve::ParseParameterText(text);
  if (!OkOrInvalid(parsed.status())) std::abort();
  if (!parsed.ok()) {
    if (valid.ok()) std::abort();  // validated text must parse
    return 0;
  }
  const std::string again = parsed->ToText();
  absl::StatusOr<regserve::ParameterFile> reparsed =
      regserve::ParseParameterText(again);
  if (!reparsed.ok() || !SameEntries(*parsed, *reparsed)) std::abort();
  if (valid.ok() && !regserve::ValidateParameterText(again).ok()) std::abort();
  // The helpers the runner applies to a validated file.
  regserve::StageSchedule schedule = regserve::ScheduleFromParameters(*parsed);
  if (schedule.num_resolutions > 0) (void)schedule.TotalIterations();
  regserve::ParameterFile forced = *parsed;
  regserve::ForceOutputSettings(&forced);
  if (!regserve::ParseParameterText(forced.ToText()).ok()) std::abort();
  return 0;
}
