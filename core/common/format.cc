// Copyright regserve authors.
#include "core/common/format.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace regserve {

std::string FormatBytes(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024.0 && unit < 5) {
    v /= 1024.0;
    ++unit;
  }
  if (unit == 0) return absl::StrCat(bytes, " B");
  return absl::StrFormat("%.1f %s", v, kUnits[unit]);
}

std::string StatusCodeName(absl::StatusCode code) {
  // Abseil has the names; it gives "" for codes it does not know.
  std::string name = absl::StatusCodeToString(code);
  return name.empty() ? "UNKNOWN" : name;
}

}  // namespace regserve
