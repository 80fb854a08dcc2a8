// Copyright regserve authors.
#include "server/flag_util.h"

#include <arpa/inet.h>

#include <cctype>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace regserve {

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  absl::string_view s = absl::StripAsciiWhitespace(text);
  if (s.empty()) return 0;
  size_t digits = 0;
  while (digits < s.size() && absl::ascii_isdigit(s[digits])) ++digits;
  const auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad byte size \"", text,
        "\": write a whole number with an optional K, M, G or T suffix "
        "(binary multiples), e.g. 8G"));
  };
  if (digits == 0) return bad();
  uint64_t value = 0;
  if (!absl::SimpleAtoi(s.substr(0, digits), &value)) return bad();
  std::string suffix = absl::AsciiStrToUpper(s.substr(digits));
  int shift = 0;
  if (!suffix.empty()) {
    switch (suffix[0]) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      case 'B':
        shift = 0;
        break;
      default:
        return bad();
    }
    absl::string_view rest = absl::string_view(suffix).substr(1);
    if (shift != 0) absl::ConsumePrefix(&rest, "I");
    if (shift != 0) absl::ConsumePrefix(&rest, "B");
    if (!rest.empty()) return bad();
  }
  if (shift > 0 && value > (UINT64_MAX >> shift)) {
    return absl::InvalidArgumentError(
        absl::StrCat("byte size \"", text, "\" does not fit in 64 bits"));
  }
  return value << shift;
}

absl::StatusOr<HostPort> SplitHostPort(absl::string_view address) {
  const auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad listen address \"", address,
        "\": use HOST:PORT, e.g. 127.0.0.1:50051, [::1]:0 or 0.0.0.0:50051"));
  };
  HostPort hp;
  absl::string_view port;
  if (!address.empty() && address[0] == '[') {
    const size_t close = address.find(']');
    if (close == absl::string_view::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return bad();
    }
    hp.host = std::string(address.substr(1, close - 1));
    port = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos) return bad();
    hp.host = std::string(address.substr(0, colon));
    if (hp.host.find(':') != std::string::npos) return bad();
    port = address.substr(colon + 1);
  }
  if (hp.host.empty() || !absl::SimpleAtoi(port, &hp.port) || hp.port < 0 ||
      hp.port > 65535) {
    return bad();
  }
  return hp;
}

bool IsLoopbackHost(absl::string_view host) {
  if (absl::AsciiStrToLower(host) == "localhost") return true;
  const std::string h(host);
  unsigned char v4[4];
  if (inet_pton(AF_INET, h.c_str(), v4) == 1) return v4[0] == 127;
  unsigned char v6[16];
  if (inet_pton(AF_INET6, h.c_str(), v6) != 1) return false;
  static const unsigned char kLoopback[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                              0, 0, 0, 0, 0, 0, 0, 1};
  // ::ffff:0:0/96, IPv4-mapped addresses.
  static const unsigned char kMappedPrefix[12] = {0, 0, 0, 0, 0,    0,
                                                  0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(v6, kLoopback, 16) == 0) return true;
  return std::memcmp(v6, kMappedPrefix, 12) == 0 && v6[12] == 127;
}

}  // namespace regserve
