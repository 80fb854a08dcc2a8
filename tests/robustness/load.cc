// Copyright regserve authors.
#include "tests/robustness/load.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/regserve_client.h"
#include "grpcpp/grpcpp.h"

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

// When the events of one job arrived, in seconds from its submission.
struct JobTimes {
  double first_event = -1;
  double first_tile = -1;
  double completed = -1;
  double max_gap = 0;  // between consecutive events from the first tile on
};

// One job; true when it completed. *error gets the status otherwise.
bool RunJob(RegistrationClient* client, const LoadOptions& o, int client_id,
            std::string* error, JobTimes* times) {
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  spec.set_client_label(absl::StrCat("load client ", client_id));
  bool completed = false;
  const absl::Time start = absl::Now();
  double last = 0;
  grpc::Status s = client->Submit(
      spec, {o.fixed_path, o.moving_path}, [&](const v1::JobEvent& e) {
        const double t = absl::ToDoubleSeconds(absl::Now() - start);
        if (times->first_event < 0) times->first_event = t;
        if (e.has_tile() && times->first_tile < 0) times->first_tile = t;
        if (times->first_tile >= 0) {
          times->max_gap = std::max(times->max_gap, t - last);
        }
        if (e.has_completed()) times->completed = t;
        last = t;
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

int ProcessThreads(pid_t pid) {
  DIR* d = opendir(absl::StrCat("/proc/", pid, "/task").c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

absl::Duration ProcessCpuTime(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  // Fields after "(comm) ": state is the 1st, utime the 12th, stime 13th.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return -absl::Seconds(1);
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  int64_t utime = -1, stime = -1;
  for (int i = 1; i <= 13 && fields >> field; ++i) {
    if (i == 12) utime = std::stoll(field);
    if (i == 13) stime = std::stoll(field);
  }
  if (utime < 0 || stime < 0) return -absl::Seconds(1);
  const long ticks = sysconf(_SC_CLK_TCK);
  return absl::Seconds(static_cast<double>(utime + stime) / ticks);
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
      "latency (submit to first event): p50 %.3f s, p95 %.3f s, max %.3f s\n"
      "result stream (first tile to completed): p50 %.3f s, p95 %.3f s, "
      "max %.3f s; largest gap between its events %.3f s\n"
      "daemon RSS: baseline %.1f MiB (after one warm-up job), peak %.1f MiB, "
      "after %.1f MiB (%+.1f%% of baseline)\n"
      "daemon threads: %d after the warm-up job, peak %d during the load\n",
      submitted, completed, failed, seconds, jobs_per_second, p50_seconds,
      p95_seconds, max_seconds, first_event_p50, first_event_p95,
      first_event_max, stream_p50, stream_p95, stream_max, event_gap_max,
      rss_baseline / 1048576.0, rss_peak / 1048576.0, rss_after / 1048576.0,
      100.0 * RssGrowth(), threads_baseline, threads_peak);
  for (const std::string& f : failures)
    absl::StrAppend(&out, "failure: ", f, "\n");
  return out;
}

LoadReport RunLoad(const LoadOptions& o) {
  LoadReport report;
  auto control = NewClient(o.address);
  std::string error;
  JobTimes warm_up;
  report.warm_up_ok = RunJob(control.get(), o, -1, &error, &warm_up);
  if (!report.warm_up_ok) {
    report.failures.push_back("warm-up: " + error);
    return report;
  }
  WaitIdle(control.get(), o.idle_timeout);
  absl::SleepFor(o.settle);
  report.rss_baseline = o.daemon_pid > 0 ? ProcessRss(o.daemon_pid) : 0;
  report.threads_baseline = o.daemon_pid > 0 ? ProcessThreads(o.daemon_pid) : 0;

  std::atomic<bool> sampling{true};
  std::atomic<int64_t> peak{report.rss_baseline};
  std::atomic<int> threads_peak{report.threads_baseline};
  std::thread sampler([&] {
    while (sampling.load()) {
      if (o.daemon_pid > 0) {
        const int64_t rss = ProcessRss(o.daemon_pid);
        int64_t seen = peak.load();
        while (rss > seen && !peak.compare_exchange_weak(seen, rss)) {
        }
        const int threads = ProcessThreads(o.daemon_pid);
        int seen_threads = threads_peak.load();
        while (threads > seen_threads &&
               !threads_peak.compare_exchange_weak(seen_threads, threads)) {
        }
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });

  absl::Mutex mu;
  std::vector<double> latencies, first_events, streams;
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
        JobTimes times;
        const bool ok = RunJob(client.get(), o, c, &why, &times);
        const double took = absl::ToDoubleSeconds(absl::Now() - t0);
        absl::MutexLock lock(&mu);
        ++report.submitted;
        if (ok) {
          ++report.completed;
          latencies.push_back(took);
          first_events.push_back(times.first_event);
          if (times.first_tile >= 0) {
            streams.push_back(times.completed - times.first_tile);
            report.event_gap_max =
                std::max(report.event_gap_max, times.max_gap);
          }
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
  report.first_event_p50 = Percentile(first_events, 0.50);
  report.first_event_p95 = Percentile(first_events, 0.95);
  report.first_event_max = Percentile(first_events, 1.0);
  report.stream_p50 = Percentile(streams, 0.50);
  report.stream_p95 = Percentile(streams, 0.95);
  report.stream_max = Percentile(streams, 1.0);

  WaitIdle(control.get(), o.idle_timeout);
  absl::SleepFor(o.settle);
  sampling = false;
  sampler.join();
  report.rss_peak = peak.load();
  report.threads_peak = threads_peak.load();
  report.rss_after = o.daemon_pid > 0 ? ProcessRss(o.daemon_pid) : 0;
  return report;
}

// ---------------------------------------------------------------------------
// Watch floods.

// One Watch call on the callback API: no thread of its own.
class FloodStream final : public grpc::ClientReadReactor<v1::JobEvent> {
 public:
  FloodStream(WatchFlood* flood, absl::Time* start_out)
      : flood_(flood), start_(absl::Now()) {
    *start_out = start_;
  }
  void Start(v1::Registration::Stub* stub, const std::string& job_id) {
    request_.set_job_id(job_id);
    stub->async()->Watch(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }
  void Cancel() { context_.TryCancel(); }

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  WatchFlood* const flood_;
  const absl::Time start_;
  grpc::ClientContext context_;
  v1::WatchRequest request_;
  v1::JobEvent event_;
  bool got_event_ = false;  // touched by the read reactions only
};

class WatchFlood {
 public:
  explicit WatchFlood(const WatchFloodOptions& o) : options_(o) {
    for (int i = 0; i < std::max(1, o.channels); ++i) {
      grpc::ChannelArguments args;
      // Separate connections, not one shared subchannel.
      args.SetInt("regserve.load.channel", i);
      args.SetMaxReceiveMessageSize(-1);
      channels_.push_back(grpc::CreateCustomChannel(
          o.address, grpc::InsecureChannelCredentials(), args));
      stubs_.push_back(v1::Registration::NewStub(channels_.back()));
    }
  }
  ~WatchFlood() {
    CancelAll();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](WatchFlood* f)
             ABSL_NO_THREAD_SAFETY_ANALYSIS { return f->done_ == f->started_; },
        this));
  }

  void Open() {
    std::vector<absl::Time> starts(options_.streams);
    for (int i = 0; i < options_.streams; ++i) {
      auto stream = std::make_unique<FloodStream>(this, &starts[i]);
      FloodStream* raw = stream.get();
      {
        absl::MutexLock lock(&mu_);
        streams_.push_back(std::move(stream));
        ++started_;
      }
      raw->Start(stubs_[i % stubs_.size()].get(), options_.job_id);
    }
  }

  void CancelAll() {
    std::vector<FloodStream*> open;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& s : streams_) open.push_back(s.get());
    }
    for (FloodStream* s : open) s->Cancel();
  }

  // Until every stream has an event or has ended, or `deadline`.
  void AwaitFirstEvents(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(
        absl::Condition(
            +[](WatchFlood* f) ABSL_NO_THREAD_SAFETY_ANALYSIS {
              return f->got_event_ + f->done_early_ >= f->started_;
            },
            this),
        deadline);
  }
  bool AwaitEnded(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithDeadline(
        absl::Condition(
            +[](WatchFlood* f) ABSL_NO_THREAD_SAFETY_ANALYSIS {
              return f->done_ == f->started_;
            },
            this),
        deadline);
  }

  // Reactions of FloodStream.
  void FirstEvent(absl::Time start) {
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu_);
    ++got_event_;
    first_event_seconds_.push_back(absl::ToDoubleSeconds(now - start));
    last_first_event_ = std::max(last_first_event_, now);
    if (first_start_ == absl::InfinitePast() || start < first_start_) {
      first_start_ = start;
    }
  }
  void Ended(const grpc::Status& status, bool got_event) {
    absl::MutexLock lock(&mu_);
    ++done_;
    if (!finishing_) {
      if (!got_event) ++done_early_;
      ++ended_early_;
      if (early_errors_.size() < 5) {
        early_errors_.push_back(absl::StrCat("code ", status.error_code(), ": ",
                                             status.error_message()));
      }
    }
    if (status.error_code() == grpc::StatusCode::CANCELLED) ++cancelled_;
    last_end_ = absl::Now();
  }

  void Fill(WatchFloodReport* r) {
    absl::MutexLock lock(&mu_);
    r->streams = started_;
    r->got_event = got_event_;
    r->ended_early = ended_early_;
    r->early_errors = early_errors_;
    if (first_start_ != absl::InfinitePast()) {
      r->open_seconds = absl::ToDoubleSeconds(last_first_event_ - first_start_);
    }
    r->first_event_p50 = Percentile(first_event_seconds_, 0.5);
    r->first_event_max = Percentile(first_event_seconds_, 1.0);
  }
  void StartFinishing() {
    absl::MutexLock lock(&mu_);
    finishing_ = true;
    finish_start_ = absl::Now();
  }
  void FillEnd(WatchFloodReport* r) {
    absl::MutexLock lock(&mu_);
    r->ended = done_;
    r->ended_cancelled = cancelled_;
    r->end_seconds = done_ > 0 && last_end_ > finish_start_
                         ? absl::ToDoubleSeconds(last_end_ - finish_start_)
                         : 0;
    r->threads_after =
        options_.daemon_pid > 0 ? ProcessThreads(options_.daemon_pid) : 0;
  }

 private:
  const WatchFloodOptions options_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::Registration::Stub>> stubs_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<FloodStream>> streams_ ABSL_GUARDED_BY(mu_);
  int started_ ABSL_GUARDED_BY(mu_) = 0;
  int got_event_ ABSL_GUARDED_BY(mu_) = 0;
  int done_ ABSL_GUARDED_BY(mu_) = 0;
  int done_early_ ABSL_GUARDED_BY(mu_) = 0;  // ended without an event
  int ended_early_ ABSL_GUARDED_BY(mu_) = 0;
  int cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::string> early_errors_ ABSL_GUARDED_BY(mu_);
  std::vector<double> first_event_seconds_ ABSL_GUARDED_BY(mu_);
  absl::Time first_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time last_first_event_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time finish_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time last_end_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

void FloodStream::OnReadDone(bool ok) {
  if (!ok) return;  // OnDone follows
  if (!got_event_) {
    got_event_ = true;
    flood_->FirstEvent(start_);
  }
  StartRead(&event_);
}

void FloodStream::OnDone(const grpc::Status& status) {
  flood_->Ended(status, got_event_);
}

std::string WatchFloodReport::Summary() const {
  std::string out = absl::StrFormat(
      "watch flood: %d streams, %d received an event (all within %.2f s; "
      "first event p50 %.3f s, max %.3f s), %d ended early\n"
      "daemon threads: %d before the streams, %d with all of them open, %d "
      "after they ended; daemon CPU with them open and idle: %.3f cores\n",
      streams, got_event, open_seconds, first_event_p50, first_event_max,
      ended_early, threads_before, threads_open, threads_after, idle_cpu_cores);
  if (ended > 0) {
    absl::StrAppendFormat(&out,
                          "ended: %d streams (%d CANCELLED), the last after "
                          "%.2f s\n",
                          ended, ended_cancelled, end_seconds);
  }
  for (const std::string& e : early_errors)
    absl::StrAppend(&out, "ended early: ", e, "\n");
  return out;
}

WatchFloodReport RunWatchFlood(const WatchFloodOptions& o) {
  WatchFloodReport report;
  report.threads_before = o.daemon_pid > 0 ? ProcessThreads(o.daemon_pid) : 0;
  report.flood = std::make_shared<WatchFlood>(o);
  report.flood->Open();
  report.flood->AwaitFirstEvents(absl::Now() + o.open_timeout);
  report.threads_open = o.daemon_pid > 0 ? ProcessThreads(o.daemon_pid) : 0;
  if (o.daemon_pid > 0 && o.idle_sample > absl::ZeroDuration()) {
    const absl::Duration cpu0 = ProcessCpuTime(o.daemon_pid);
    const absl::Time t0 = absl::Now();
    absl::SleepFor(o.idle_sample);
    const absl::Duration cpu1 = ProcessCpuTime(o.daemon_pid);
    report.idle_cpu_cores = absl::FDivDuration(cpu1 - cpu0, absl::Now() - t0);
  }
  report.flood->Fill(&report);
  return report;
}

WatchFloodReport FinishWatchFlood(WatchFloodReport report, bool cancel,
                                  absl::Duration timeout) {
  if (report.flood == nullptr) return report;
  report.flood->StartFinishing();
  if (cancel) report.flood->CancelAll();
  report.flood->AwaitEnded(absl::Now() + timeout);
  report.flood->FillEnd(&report);
  report.flood.reset();  // cancels what is left and waits for it
  return report;
}

}  // namespace load
}  // namespace regserve
