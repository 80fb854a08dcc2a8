// Copyright regserve authors.
//
// What plan.cc and refine_planning.cc share: the registration copy's sizes,
// the byte counts both use, the plan's number formats, and the refinement's
// planning (refine_planning.cc), which MakePlan calls. Not part of the
// planner's interface (plan.h).
#ifndef REGSERVE_CORE_PLAN_PLAN_INTERNAL_H_
#define REGSERVE_CORE_PLAN_PLAN_INTERNAL_H_

#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"
#include "core/plan/plan.h"

namespace regserve {
namespace plan_internal {

// Our own grayscale float32 copies.
constexpr double kGrayBytesPerPixel = 4.0;
// The field we read back: 2 float32 per registration pixel.
constexpr double kFieldBytesPerPixel = 8.0;
// Smallest registration copy we accept (elastix needs a few pyramid levels).
constexpr int64_t kMinRegistrationEdge = 32;

// The registration copies' sizes and their downsampling factor.
struct RegSize {
  int64_t fw, fh, mw, mh;
  double factor;
};

inline uint64_t GrayBytes(const RegSize& r) {
  return static_cast<uint64_t>(kGrayBytesPerPixel *
                               static_cast<double>(r.fw * r.fh + r.mw * r.mh));
}

inline std::string Mb(uint64_t bytes) {
  return absl::StrFormat("%.0f MB", static_cast<double>(bytes) / 1e6);
}
inline std::string Mp(double pixels) {
  return absl::StrFormat("%.1f MP", pixels / 1e6);
}

// Whether, where and at what size the refinement runs (with the shift
// correction and elastix's schedule before it), with the reasons. `held`:
// the full moving image's bytes the stage holds (0 when streamed);
// plan->quality must be set.
void PlanRefine(uint64_t held, const JobOptions& options,
                const Budgets& budgets, const RegSize& reg, Plan* plan);

}  // namespace plan_internal
}  // namespace regserve

#endif  // REGSERVE_CORE_PLAN_PLAN_INTERNAL_H_
