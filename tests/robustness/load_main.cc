// Copyright regserve authors.
//
// regserve_load: drives a running regserved with concurrent clients and
// prints throughput, latency and the daemon's memory (see load.h).
//
//   regserve_load --server=127.0.0.1:50051 --pid=PID --clients=32
//                 --seconds=60 --fixed=a.png --moving=b.png
//
// Exit status: 0 when every job completed and the daemon's RSS after the
// load is within --max_rss_growth (default 0.10) of its baseline; 1
// otherwise; 2 for bad arguments.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "tests/robustness/load.h"

int main(int argc, char** argv) {
  regserve::load::LoadOptions o;
  double seconds = 60, max_growth = 0.10;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t eq = a.find('=');
    const std::string key = a.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : a.substr(eq + 1);
    bool ok = eq != std::string::npos;
    if (key == "--server") {
      o.address = value;
    } else if (key == "--pid") {
      ok = ok && absl::SimpleAtoi(value, &o.daemon_pid);
    } else if (key == "--clients") {
      ok = ok && absl::SimpleAtoi(value, &o.clients) && o.clients > 0;
    } else if (key == "--seconds") {
      ok = ok && absl::SimpleAtod(value, &seconds) && seconds > 0;
    } else if (key == "--jobs_per_client") {
      ok = ok && absl::SimpleAtoi(value, &o.jobs_per_client);
    } else if (key == "--fixed") {
      o.fixed_path = value;
    } else if (key == "--moving") {
      o.moving_path = value;
    } else if (key == "--max_rss_growth") {
      ok = ok && absl::SimpleAtod(value, &max_growth);
    } else {
      ok = false;
    }
    if (!ok) {
      fprintf(stderr, "regserve_load: bad argument '%s'\n", a.c_str());
      return 2;
    }
  }
  if (o.address.empty() || o.fixed_path.empty() || o.moving_path.empty()) {
    fprintf(stderr,
            "usage: regserve_load --server=HOST:PORT --fixed=F --moving=M "
            "[--pid=PID] [--clients=32] [--seconds=60] [--jobs_per_client=N] "
            "[--max_rss_growth=0.10]\n");
    return 2;
  }
  o.duration = absl::Seconds(seconds);
  const regserve::load::LoadReport r = regserve::load::RunLoad(o);
  printf("%d clients, %s\n", o.clients, r.Summary().c_str());
  const bool all_done = r.warm_up_ok && r.failed == 0 && r.completed > 0;
  const bool memory_ok = o.daemon_pid <= 0 || r.RssGrowth() <= max_growth;
  if (!all_done) printf("FAIL: not every job completed\n");
  if (!memory_ok) {
    printf("FAIL: RSS grew by %.1f%% (limit %.0f%%)\n", 100 * r.RssGrowth(),
           100 * max_growth);
  }
  return all_done && memory_ok ? 0 : 1;
}
