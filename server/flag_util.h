// Copyright regserve authors.
//
// Parsing helpers for regserved's flags.
//
//   REGSERVE_ASSIGN_OR_RETURN(uint64_t bytes, ParseByteSize("8G"));  // 8 GiB
//   REGSERVE_ASSIGN_OR_RETURN(HostPort hp, SplitHostPort("127.0.0.1:0"));
//
// Thread safety: pure functions.
#ifndef REGSERVE_SERVER_FLAG_UTIL_H_
#define REGSERVE_SERVER_FLAG_UTIL_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/common/format.h"  // FormatBytes, formerly declared here

namespace regserve {

// "1048576", "512K", "64M", "8G", "1T" (binary multiples; an optional "i"
// and/or "B" after the letter, any case: "8GiB", "8gb"), or "" / "0" for 0
// (meaning "derive from the hardware"). InvalidArgument otherwise, and for
// values that overflow 64 bits.
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

struct HostPort {
  std::string host;  // without brackets for IPv6
  int port = 0;
};
// "127.0.0.1:50051", "[::1]:0", "localhost:80". InvalidArgument otherwise.
absl::StatusOr<HostPort> SplitHostPort(absl::string_view address);

// True for hosts that only the local machine can reach: "localhost", IPv4
// 127.0.0.0/8, IPv6 ::1 and IPv4-mapped ::ffff:127.x.y.z. False for anything
// else, including wildcard addresses (0.0.0.0, ::) and other host names.
bool IsLoopbackHost(absl::string_view host);

}  // namespace regserve

#endif  // REGSERVE_SERVER_FLAG_UTIL_H_
