// Copyright regserve authors.
#include "tests/robustness/load.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/regserve_client.h"

namespace regserve {
namespace load {
namespace {

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(
      v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

std::unique_ptr<RegistrationClient> NewClient(const std::string& address) {
  RegistrationClient::Options o;
  o.address = address;
  // A fresh channel per client: each is its own connection.
  return std::make_unique<RegistrationClient>(
      o, RegistrationClient::MakeChannel(address));
}

// One job; true when it completed. *error gets the status otherwise.
bool RunJob(RegistrationClient* client, const LoadOptions& o, int client_id,
            std::string* error) {
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  spec.set_client_label(absl::StrCat("load client ", client_id));
  bool completed = false;
  grpc::Status s = client->Submit(spec, {o.fixed_path, o.moving_path},
                                  [&](const v1::JobEvent& e) {
                                    completed |= e.has_completed();
                                    return true;
                                  });
  if (s.ok() && completed) return true;
  *error = absl::StrCat("code ", s.error_code(), ": ", s.error_message());
  return false;
}

bool WaitIdle(RegistrationClient* client, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    v1::ServerInfo info;
    if (client->GetServerInfo(&info).ok() && info.jobs_running() == 0 &&
        info.jobs_queued() == 0 && info.jobs_uploading() == 0 &&
        info.ram_reserved_bytes() == 0) {
      return true;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

}  // namespace

int64_t ProcessRss(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::stoll(line.substr(6)) * 1024;  // "VmRSS:   1234 kB"
    }
  }
  return -1;
}

double LoadReport::RssGrowth() const {
  if (rss_baseline <= 0) return 0;
  return static_cast<double>(rss_after - rss_baseline) /
         static_cast<double>(rss_baseline);
}

std::string LoadReport::Summary() const {
  std::string out = absl::StrFormat(
      "jobs: %d submitted, %d completed, %d failed in %.1f s\n"
      "throughput: %.2f jobs/s\n"
      "latency (submit to completed): p50 %.2f s, p95 %.2f s, max %.2f s\n"
      "daemon RSS: baseline %.1f MiB (after one warm-up job), peak %.1f MiB, "
      "after %.1f MiB (%+.1f%% of baseline)\n",
      submitted, completed, failed, seconds, jobs_per_second, p50_seconds,
      p95_seconds, max_seconds, rss_baseline / 1048576.0, rss_peak / 1048576.0,
      rss_after / 1048576.0, 100.0 * RssGrowth());
  for (const std::string& f : failures)
    absl::StrAppend(&out, "failure: ", f, "\n");
  return out;
}

LoadReport RunLoad(const LoadOptions& o) {
  LoadReport report;
  auto control = NewClient(o.address);
  std::string error;
  report.warm_up_ok = RunJob(control.get(), o, -1, &error);
  if (!report.warm_up_ok) {
    report.failures.push_back("warm-up: " + error);
    return report;
  }
  WaitIdle(control.get(), o.idle_timeout);
  absl::SleepFor(o.settle);
  report.rss_baseline = o.daemon_pid > 0 ? ProcessRss(o.daemon_pid) : 0;

  std::atomic<bool> sampling{true};
  std::atomic<int64_t> peak{report.rss_baseline};
  std::thread sampler([&] {
    while (sampling.load()) {
      if (o.daemon_pid > 0) {
        const int64_t rss = ProcessRss(o.daemon_pid);
        int64_t seen = peak.load();
        while (rss > seen && !peak.compare_exchange_weak(seen, rss)) {
        }
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });

  absl::Mutex mu;
  std::vector<double> latencies;
  const absl::Time start = absl::Now();
  const absl::Time stop = start + o.duration;
  std::vector<std::thread> clients;
  for (int c = 0; c < o.clients; ++c) {
    clients.emplace_back([&, c] {
      auto client = NewClient(o.address);
      for (int n = 0; o.jobs_per_client == 0 || n < o.jobs_per_client; ++n) {
        if (o.jobs_per_client == 0 && absl::Now() >= stop) break;
        const absl::Time t0 = absl::Now();
        std::string why;
        const bool ok = RunJob(client.get(), o, c, &why);
        const double took = absl::ToDoubleSeconds(absl::Now() - t0);
        absl::MutexLock lock(&mu);
        ++report.submitted;
        if (ok) {
          ++report.completed;
          latencies.push_back(took);
        } else {
          ++report.failed;
          if (report.failures.size() < 5) report.failures.push_back(why);
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  report.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  report.jobs_per_second =
      report.seconds > 0 ? report.completed / report.seconds : 0;
  report.p50_seconds = Percentile(latencies, 0.50);
  report.p95_seconds = Percentile(latencies, 0.95);
  report.max_seconds = Percentile(latencies, 1.0);

  WaitIdle(control.get(), o.idle_timeout);
  absl::SleepFor(o.settle);
  sampling = false;
  sampler.join();
  report.rss_peak = peak.load();
  report.rss_after = o.daemon_pid > 0 ? ProcessRss(o.daemon_pid) : 0;
  return report;
}

}  // namespace load
}  // namespace regserve
