// Copyright regserve authors.
//
// What a client's --server names, as a gRPC channel target:
//
//   "host:port"                 one server, as given;
//   "dns:///name:port" (or any  every address the name resolves to, kept
//    other URI scheme)          up to date by gRPC's resolver;
//   "a:50051,b:50051,..."       a fleet's replicas: each host resolved now
//                               (its first address), as one ipv4: (or
//                               ipv6:) target.
//
// The last two are balanced: new calls (new jobs, above all) are spread
// over the replicas with gRPC's round_robin policy. Any replica of a fleet
// answers any call, so every call may go to any of them.
//
//   REGSERVE_ASSIGN_OR_RETURN(ChannelTarget t, ResolveChannelTarget(flag));
//   if (t.balanced) args.SetLoadBalancingPolicyName("round_robin");
//   grpc::CreateCustomChannel(t.target, credentials, args);
//
// Thread safety: a pure function (it may block on the system's resolver).
#ifndef REGSERVE_CLIENT_CHANNEL_TARGET_H_
#define REGSERVE_CLIENT_CHANNEL_TARGET_H_

#include <string>

#include "absl/status/statusor.h"

namespace regserve {

struct ChannelTarget {
  std::string target;
  bool balanced = false;
};

// INVALID_ARGUMENT for an empty entry, an entry without a port, or a list
// that mixes hosts with only IPv4 and only IPv6 addresses; NOT_FOUND for a
// host of a list that does not resolve. Both name the entry.
absl::StatusOr<ChannelTarget> ResolveChannelTarget(const std::string& address);

}  // namespace regserve

#endif  // REGSERVE_CLIENT_CHANNEL_TARGET_H_
