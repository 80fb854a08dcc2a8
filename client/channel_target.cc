// Copyright regserve authors.
#include "client/channel_target.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace regserve {
namespace {

struct HostPort {
  std::string host;
  std::string port;
};

// "host:port" or "[v6]:port".
absl::StatusOr<HostPort> Split(absl::string_view entry) {
  HostPort hp;
  size_t colon = entry.rfind(':');
  if (colon == absl::string_view::npos || colon + 1 == entry.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--server entry \"", entry, "\" has no port (HOST:PORT)"));
  }
  hp.host = std::string(entry.substr(0, colon));
  hp.port = std::string(entry.substr(colon + 1));
  if (hp.host.size() >= 2 && hp.host.front() == '[' && hp.host.back() == ']') {
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  }
  if (hp.host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--server entry \"", entry, "\" has no host"));
  }
  return hp;
}

// The host's first address of `family`, or "" when it has none.
std::string FirstAddress(const addrinfo* list, int family) {
  for (const addrinfo* a = list; a != nullptr; a = a->ai_next) {
    if (a->ai_family != family) continue;
    char text[INET6_ADDRSTRLEN] = {};
    const void* where =
        family == AF_INET
            ? static_cast<const void*>(
                  &reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr)
            : static_cast<const void*>(
                  &reinterpret_cast<const sockaddr_in6*>(a->ai_addr)
                       ->sin6_addr);
    if (inet_ntop(family, where, text, sizeof(text)) != nullptr) return text;
  }
  return "";
}

}  // namespace

absl::StatusOr<ChannelTarget> ResolveChannelTarget(const std::string& address) {
  ChannelTarget t;
  if (address.find(',') == std::string::npos) {
    t.target = address;
    t.balanced = address.find(":///") != std::string::npos;
    return t;
  }
  std::vector<std::string> v4, v6;
  size_t entries = 0;
  for (absl::string_view entry : absl::StrSplit(address, ',')) {
    ++entries;
    absl::StatusOr<HostPort> hp = Split(entry);
    if (!hp.ok()) return hp.status();
    addrinfo hints = {};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int err = getaddrinfo(hp->host.c_str(), nullptr, &hints, &found);
    if (err != 0) {
      return absl::NotFoundError(
          absl::StrCat("--server entry \"", entry, "\": ", gai_strerror(err)));
    }
    const std::string a4 = FirstAddress(found, AF_INET);
    const std::string a6 = FirstAddress(found, AF_INET6);
    freeaddrinfo(found);
    if (!a4.empty()) v4.push_back(absl::StrCat(a4, ":", hp->port));
    if (!a6.empty()) v6.push_back(absl::StrCat("[", a6, "]:", hp->port));
  }
  t.balanced = true;
  if (v4.size() == entries) {
    t.target = absl::StrCat("ipv4:", absl::StrJoin(v4, ","));
  } else if (v6.size() == entries) {
    t.target = absl::StrCat("ipv6:", absl::StrJoin(v6, ","));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--server \"", address,
        "\" mixes hosts reachable only over IPv4 with hosts reachable only "
        "over IPv6; list one family, or use a dns:/// name"));
  }
  return t;
}

}  // namespace regserve
