// Copyright regserve authors.
//
// Small Status helpers. Abseil 20220623 (Debian 12) has no
// ABSL_RETURN_IF_ERROR / ABSL_ASSIGN_OR_RETURN, so we carry our own.
//
//   REGSERVE_RETURN_IF_ERROR(DoThing());
//   REGSERVE_ASSIGN_OR_RETURN(Image img, ReadImage(path, opts));
//
// Both evaluate the expression once and return its Status from the enclosing
// function when it is not OK.
#ifndef REGSERVE_CORE_COMMON_STATUS_MACROS_H_
#define REGSERVE_CORE_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define REGSERVE_RETURN_IF_ERROR(expr)                   \
  do {                                                   \
    ::absl::Status regserve_status_ = (expr);            \
    if (!regserve_status_.ok()) return regserve_status_; \
  } while (0)

#define REGSERVE_STATUS_CONCAT_INNER_(a, b) a##b
#define REGSERVE_STATUS_CONCAT_(a, b) REGSERVE_STATUS_CONCAT_INNER_(a, b)

#define REGSERVE_ASSIGN_OR_RETURN(lhs, rexpr) \
  REGSERVE_ASSIGN_OR_RETURN_IMPL_(            \
      REGSERVE_STATUS_CONCAT_(regserve_statusor_, __LINE__), lhs, rexpr)

#define REGSERVE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                    \
  if (!statusor.ok()) return std::move(statusor).status();    \
  lhs = std::move(statusor).value()

#endif  // REGSERVE_CORE_COMMON_STATUS_MACROS_H_
