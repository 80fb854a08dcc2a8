// Copyright regserve authors.
#include "server/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using ::testing::HasSubstr;

// One sample of the text exposition format: name{labels} value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// A small parser for what prometheus-cpp's TextSerializer writes (no
// escaped quotes or commas in our label values).
std::vector<Sample> Parse(const std::string& text) {
  std::vector<Sample> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    const size_t brace = line.find('{');
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    if (brace != absl::string_view::npos && brace < space) {
      s.name = std::string(line.substr(0, brace));
      const size_t close = line.find('}', brace);
      absl::string_view body = line.substr(brace + 1, close - brace - 1);
      for (absl::string_view kv :
           absl::StrSplit(body, ',', absl::SkipEmpty())) {
        const size_t eq = kv.find('=');
        std::string value(kv.substr(eq + 1));
        value = std::string(
            absl::StripSuffix(absl::StripPrefix(value, "\""), "\""));
        s.labels[std::string(kv.substr(0, eq))] = value;
      }
    } else {
      s.name = std::string(line.substr(0, line.find(' ')));
    }
    std::string v(line.substr(space + 1));
    if (v == "+Inf") {
      s.value = std::numeric_limits<double>::infinity();
    } else if (!absl::SimpleAtod(v, &s.value)) {
      ADD_FAILURE() << "unparsable sample: " << line;
      continue;
    }
    samples.push_back(std::move(s));
  }
  return samples;
}

// The value of the one sample named `name` whose labels include `labels`;
// NaN (and a test failure) unless exactly one matches.
double Value(const std::vector<Sample>& samples, const std::string& name,
             const std::map<std::string, std::string>& labels = {}) {
  const Sample* found = nullptr;
  int matches = 0;
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) ok = false;
    }
    if (ok) {
      found = &s;
      ++matches;
    }
  }
  EXPECT_EQ(matches, 1) << name;
  return matches == 1 ? found->value : std::nan("");
}

int Count(const std::vector<Sample>& samples, const std::string& name) {
  int n = 0;
  for (const Sample& s : samples) n += s.name == name;
  return n;
}

// Cumulative count of the histogram bucket whose upper bound is `le`.
double Bucket(const std::vector<Sample>& samples, const std::string& name,
              double le, std::map<std::string, std::string> labels = {}) {
  for (const Sample& s : samples) {
    if (s.name != name + "_bucket") continue;
    bool ok = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) ok = false;
    }
    double bound = 0;
    const std::string& le_text = s.labels.at("le");
    if (le_text == "+Inf") {
      bound = std::numeric_limits<double>::infinity();
    } else if (!absl::SimpleAtod(le_text, &bound)) {
      continue;
    }
    if (!ok || std::isinf(le) != std::isinf(bound)) continue;
    if (std::isinf(le) ||
        std::fabs(bound - le) <= 1e-9 * std::max(1.0, std::fabs(le))) {
      return s.value;
    }
  }
  ADD_FAILURE() << "no bucket le=" << le << " in " << name;
  return std::nan("");
}

std::unique_ptr<Metrics> NewMetrics(std::string listen = "") {
  Metrics::Options options;
  options.listen = std::move(listen);
  options.build = BuildInfo{"9.8.7", "1.13.1", "none"};
  auto metrics = Metrics::Create(options);
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return metrics.ok() ? std::move(*metrics) : nullptr;
}

TEST(MetricsTest, EverySeriesExistsAtZeroWithHelpAndType) {
  auto m = NewMetrics();
  ASSERT_NE(m, nullptr);
  const std::string text = m->Serialize();
  for (const char* family : {"regserve_jobs_submitted_total",
                             "regserve_jobs_finished_total",
                             "regserve_job_failures_total",
                             "regserve_queue_length",
                             "regserve_fleet_replicas",
                             "regserve_jobs_running",
                             "regserve_stage_duration_seconds",
                             "regserve_job_duration_seconds",
                             "regserve_pixels_registered_total",
                             "regserve_pixels_warped_total",
                             "regserve_received_bytes_total",
                             "regserve_sent_bytes_total",
                             "regserve_ram_budget_bytes",
                             "regserve_ram_reserved_bytes",
                             "regserve_ram_free_bytes",
                             "regserve_stages_waiting",
                             "regserve_elastix_iterations_total",
                             "regserve_registration_final_metric",
                             "regserve_estimated_residual_pixels",
                             "regserve_build_info"}) {
    // prometheus-cpp writes counters' HELP/TYPE without the _total suffix
    // only in newer versions; accept both.
    std::string base = family;
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# TYPE ", base)));
  }
  auto s = Parse(text);
  EXPECT_EQ(Value(s, "regserve_jobs_submitted_total"), 0);
  for (const char* o : {"completed", "failed", "cancelled", "rejected"}) {
    EXPECT_EQ(Value(s, "regserve_jobs_finished_total", {{"outcome", o}}), 0);
  }
  EXPECT_EQ(Count(s, "regserve_jobs_finished_total"), 4);
  // All sixteen non-OK codes, "unknown" once.
  EXPECT_EQ(Count(s, "regserve_job_failures_total"), 16);
  for (const char* stage :
       {"upload", "decode", "registration", "warp", "stream", "quality"}) {
    EXPECT_EQ(Value(s, "regserve_jobs_running", {{"stage", stage}}), 0);
    EXPECT_EQ(
        Value(s, "regserve_stage_duration_seconds_count", {{"stage", stage}}),
        0);
  }
  EXPECT_EQ(
      Value(s, "regserve_build_info",
            {{"version", "9.8.7"}, {"libtorch", "1.13.1"}, {"cuda", "none"}}),
      1);
  // No GPU series before the first UpdateResources.
  EXPECT_EQ(Count(s, "regserve_vram_budget_bytes"), 0);
}

TEST(MetricsTest, OutcomesAndFailureReasons) {
  auto m = NewMetrics();
  ASSERT_NE(m, nullptr);
  for (int i = 0; i < 5; ++i) m->OnSubmitted();
  m->OnFinished(JobOutcome::kCompleted, absl::StatusCode::kOk);
  m->OnFinished(JobOutcome::kCompleted, absl::StatusCode::kOk);
  m->OnFinished(JobOutcome::kFailed, absl::StatusCode::kInvalidArgument);
  m->OnFinished(JobOutcome::kRejected, absl::StatusCode::kResourceExhausted);
  m->OnFinished(JobOutcome::kCancelled, absl::StatusCode::kCancelled);
  m->OnFinished(JobOutcome::kFailed, absl::StatusCode::kOk);  // a bug: unknown
  m->OnFinished(JobOutcome::kFailed, static_cast<absl::StatusCode>(99));
  auto s = Parse(m->Serialize());
  EXPECT_EQ(Value(s, "regserve_jobs_submitted_total"), 5);
  EXPECT_EQ(
      Value(s, "regserve_jobs_finished_total", {{"outcome", "completed"}}), 2);
  EXPECT_EQ(Value(s, "regserve_jobs_finished_total", {{"outcome", "failed"}}),
            3);
  EXPECT_EQ(Value(s, "regserve_jobs_finished_total", {{"outcome", "rejected"}}),
            1);
  EXPECT_EQ(
      Value(s, "regserve_jobs_finished_total", {{"outcome", "cancelled"}}), 1);
  EXPECT_EQ(
      Value(s, "regserve_job_failures_total", {{"reason", "invalid_argument"}}),
      1);
  EXPECT_EQ(Value(s, "regserve_job_failures_total",
                  {{"reason", "resource_exhausted"}}),
            1);
  // Cancellation is an outcome, not a failure.
  EXPECT_EQ(Value(s, "regserve_job_failures_total", {{"reason", "cancelled"}}),
            0);
  EXPECT_EQ(Value(s, "regserve_job_failures_total", {{"reason", "unknown"}}),
            2);
}

TEST(MetricsTest, LabelNamesOfCodes) {
  EXPECT_EQ(FailureReasonLabel(absl::StatusCode::kFailedPrecondition),
            "failed_precondition");
  EXPECT_EQ(FailureReasonLabel(absl::StatusCode::kDeadlineExceeded),
            "deadline_exceeded");
  EXPECT_EQ(FailureReasonLabel(absl::StatusCode::kUnavailable), "unavailable");
  EXPECT_EQ(FailureReasonLabel(absl::StatusCode::kInternal), "internal");
  EXPECT_EQ(FailureReasonLabel(absl::StatusCode::kUnauthenticated),
            "unauthenticated");
  EXPECT_EQ(FailureReasonLabel(absl::StatusCode::kOk), "unknown");
  EXPECT_EQ(FailureReasonLabel(static_cast<absl::StatusCode>(-3)), "unknown");
  EXPECT_EQ(StageLabel(Stage::kRegistration), "registration");
  EXPECT_EQ(JobOutcomeName(JobOutcome::kRejected), "rejected");
}

TEST(MetricsTest, StageHistogramBuckets) {
  auto m = NewMetrics();
  ASSERT_NE(m, nullptr);
  m->OnStageDone(Stage::kWarp, 0.3);
  m->OnStageDone(Stage::kWarp, 0.004);
  m->OnStageDone(Stage::kWarp, 4000);  // above the last bound: +Inf only
  m->OnStageDone(Stage::kRegistration, 42);
  m->OnStageDone(Stage::kWarp, -1);            // ignored
  m->OnStageDone(Stage::kWarp, std::nan(""));  // ignored
  m->OnJobDone(12.5);
  auto s = Parse(m->Serialize());
  const std::string h = "regserve_stage_duration_seconds";
  const std::map<std::string, std::string> warp{{"stage", "warp"}};
  EXPECT_EQ(Bucket(s, h, 0.01, warp), 1);
  EXPECT_EQ(Bucket(s, h, 0.25, warp), 1);
  EXPECT_EQ(Bucket(s, h, 0.5, warp), 2);
  EXPECT_EQ(Bucket(s, h, 3600, warp), 2);
  EXPECT_EQ(Bucket(s, h, INFINITY, warp), 3);
  EXPECT_EQ(Value(s, h + "_count", warp), 3);
  EXPECT_NEAR(Value(s, h + "_sum", warp), 4000.304, 1e-9);
  const std::map<std::string, std::string> reg{{"stage", "registration"}};
  EXPECT_EQ(Bucket(s, h, 25, reg), 0);
  EXPECT_EQ(Bucket(s, h, 50, reg), 1);
  // Buckets cover 0.01 s .. 1 h.
  int bounds = 0;
  for (const Sample& x : s) {
    if (x.name == h + "_bucket" && x.labels.at("stage") == "decode") ++bounds;
  }
  EXPECT_GE(bounds, 15);
  EXPECT_EQ(Bucket(s, "regserve_job_duration_seconds", 10), 0);
  EXPECT_EQ(Bucket(s, "regserve_job_duration_seconds", 25), 1);
  EXPECT_EQ(Value(s, "regserve_job_duration_seconds_count"), 1);
}

TEST(MetricsTest, RegistrationMetricBucketsResolveMattesValues) {
  auto m = NewMetrics();
  ASSERT_NE(m, nullptr);
  m->OnRegistration(1000, -1.35);
  m->OnRegistration(250, -0.42);
  m->OnRegistration(0, std::nan(""));  // nothing
  auto s = Parse(m->Serialize());
  EXPECT_EQ(Value(s, "regserve_elastix_iterations_total"), 1250);
  const std::string h = "regserve_registration_final_metric";
  EXPECT_EQ(Bucket(s, h, -2.0), 0);
  EXPECT_EQ(Bucket(s, h, -1.4), 0);
  EXPECT_EQ(Bucket(s, h, -1.3), 1);
  EXPECT_EQ(Bucket(s, h, -0.5), 1);
  EXPECT_EQ(Bucket(s, h, -0.4), 2);
  EXPECT_EQ(Bucket(s, h, 0.0), 2);
  EXPECT_EQ(Value(s, h + "_count"), 2);
  EXPECT_NEAR(Value(s, h + "_sum"), -1.77, 1e-9);
}

TEST(MetricsTest, EstimatedResidualBuckets) {
  auto m = NewMetrics();
  ASSERT_NE(m, nullptr);
  m->OnQualityEstimate(0.21);
  m->OnQualityEstimate(2.3);
  m->OnQualityEstimate(-1);            // ignored
  m->OnQualityEstimate(std::nan(""));  // ignored
  m->StageStarted(Stage::kQuality);
  m->OnStageDone(Stage::kQuality, 0.4);
  auto s = Parse(m->Serialize());
  const std::string h = "regserve_estimated_residual_pixels";
  EXPECT_EQ(Bucket(s, h, 0.2), 0);
  EXPECT_EQ(Bucket(s, h, 0.3), 1);
  EXPECT_EQ(Bucket(s, h, 2), 1);
  EXPECT_EQ(Bucket(s, h, 3), 2);
  EXPECT_EQ(Value(s, h + "_count"), 2);
  EXPECT_NEAR(Value(s, h + "_sum"), 2.51, 1e-9);
  EXPECT_EQ(Value(s, "regserve_jobs_running", {{"stage", "quality"}}), 1);
  EXPECT_EQ(
      Value(s, "regserve_stage_duration_seconds_count", {{"stage", "quality"}}),
      1);
}

TEST(MetricsTest, GaugesAndCounters) {
  auto m = NewMetrics();
  ASSERT_NE(m, nullptr);
  m->SetQueueLength(7);
  m->SetFleetReplicas(3);
  m->SetQueueLength(-1);  // ignored
  m->StageStarted(Stage::kRegistration);
  m->StageStarted(Stage::kRegistration);
  m->StageStarted(Stage::kWarp);
  m->StageEnded(Stage::kRegistration);
  m->AddPixelsRegistered(2000000);
  m->AddPixelsWarped(283000000);
  m->AddPixelsWarped(1);
  m->AddBytesReceived(12345);
  m->AddBytesSent(1ull << 33);
  auto s = Parse(m->Serialize());
  EXPECT_EQ(Value(s, "regserve_queue_length"), 7);
  EXPECT_EQ(Value(s, "regserve_fleet_replicas"), 3);
  EXPECT_EQ(Value(s, "regserve_jobs_running", {{"stage", "registration"}}), 1);
  EXPECT_EQ(Value(s, "regserve_jobs_running", {{"stage", "warp"}}), 1);
  EXPECT_EQ(Value(s, "regserve_jobs_running", {{"stage", "decode"}}), 0);
  EXPECT_EQ(Value(s, "regserve_pixels_registered_total"), 2000000);
  EXPECT_EQ(Value(s, "regserve_pixels_warped_total"), 283000001);
  EXPECT_EQ(Value(s, "regserve_received_bytes_total"), 12345);
  EXPECT_EQ(Value(s, "regserve_sent_bytes_total"), 8589934592.0);
}

TEST(MetricsTest, ResourcesPerGpuOrdinal) {
  auto m = NewMetrics();
  ASSERT_NE(m, nullptr);
  SchedulerStats stats;
  stats.ram_budget_bytes = 16ull << 30;
  stats.ram_reserved_bytes = 3ull << 30;
  stats.vram_budget_bytes = {70ull << 30, 60ull << 30};
  stats.vram_reserved_bytes = {10ull << 30, 0};
  stats.waiting = 2;
  HardwareSnapshot hw;
  hw.ram_available_bytes = 20ull << 30;
  hw.gpus.push_back(GpuInfo{2, "H100", 80ull << 30, 75ull << 30});
  hw.gpus.push_back(GpuInfo{5, "H100", 80ull << 30, 44ull << 30});
  // Scheduler entries 0 and 1 are CUDA devices 2 and 5.
  const std::vector<int> ordinals = {2, 5};
  m->UpdateResources(stats, hw, ordinals);
  auto s = Parse(m->Serialize());
  EXPECT_EQ(Value(s, "regserve_ram_budget_bytes"), 16.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_ram_reserved_bytes"), 3.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_ram_free_bytes"), 20.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_stages_waiting"), 2);
  EXPECT_EQ(Value(s, "regserve_vram_budget_bytes", {{"gpu", "2"}}),
            70.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_vram_reserved_bytes", {{"gpu", "2"}}),
            10.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_vram_free_bytes", {{"gpu", "2"}}),
            75.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_vram_budget_bytes", {{"gpu", "5"}}),
            60.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_vram_free_bytes", {{"gpu", "5"}}),
            44.0 * (1 << 30));
  EXPECT_EQ(Count(s, "regserve_vram_budget_bytes"), 2);

  // A failed probe updates only the scheduler part.
  stats.ram_reserved_bytes = 5ull << 30;
  stats.vram_reserved_bytes = {0, 7ull << 30};
  m->UpdateResources(
      stats,
      absl::StatusOr<HardwareSnapshot>(absl::InternalError("probe failed")),
      ordinals);
  s = Parse(m->Serialize());
  EXPECT_EQ(Value(s, "regserve_ram_reserved_bytes"), 5.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_vram_reserved_bytes", {{"gpu", "5"}}),
            7.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_ram_free_bytes"), 20.0 * (1 << 30));
  EXPECT_EQ(Value(s, "regserve_vram_free_bytes", {{"gpu", "5"}}),
            44.0 * (1 << 30));

  // Without ordinals, scheduler entry i is gpu i; absurd ordinals are
  // ignored rather than creating series.
  SchedulerStats one;
  one.vram_budget_bytes = {1000};
  one.vram_reserved_bytes = {10};
  HardwareSnapshot bad;
  bad.gpus.push_back(GpuInfo{100000, "?", 1, 1});
  m->UpdateResources(one, bad);
  s = Parse(m->Serialize());
  EXPECT_EQ(Value(s, "regserve_vram_budget_bytes", {{"gpu", "0"}}), 1000);
  EXPECT_EQ(Count(s, "regserve_vram_budget_bytes"), 3);
  EXPECT_EQ(Count(s, "regserve_vram_free_bytes"), 3);
}

TEST(MetricsTest, ScrapeCallbackRefreshesBeforeCollecting) {
  auto m = NewMetrics();
  ASSERT_NE(m, nullptr);
  int calls = 0;
  m->SetScrapeCallback([&] { m->SetQueueLength(++calls * 10); });
  EXPECT_EQ(Value(Parse(m->Serialize()), "regserve_queue_length"), 10);
  EXPECT_EQ(Value(Parse(m->Serialize()), "regserve_queue_length"), 20);
  m->SetScrapeCallback(nullptr);
  EXPECT_EQ(Value(Parse(m->Serialize()), "regserve_queue_length"), 20);
  EXPECT_EQ(calls, 2);
}

TEST(MetricsTest, ConcurrentUpdatesAreAllCounted) {
  auto m = NewMetrics();
  ASSERT_NE(m, nullptr);
  constexpr int kThreads = 4, kIterations = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      SchedulerStats stats;
      stats.vram_budget_bytes = {100, 200};
      stats.vram_reserved_bytes = {1, 2};
      for (int i = 0; i < kIterations; ++i) {
        m->OnSubmitted();
        m->StageStarted(Stage::kDecode);
        m->OnStageDone(Stage::kDecode, 0.02);
        m->StageEnded(Stage::kDecode);
        m->AddPixelsWarped(3);
        if (i % 100 == t) {
          m->UpdateResources(stats, HardwareSnapshot{});
          (void)m->Serialize();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  auto s = Parse(m->Serialize());
  EXPECT_EQ(Value(s, "regserve_jobs_submitted_total"), kThreads * kIterations);
  EXPECT_EQ(Value(s, "regserve_pixels_warped_total"),
            3.0 * kThreads * kIterations);
  EXPECT_EQ(Value(s, "regserve_jobs_running", {{"stage", "decode"}}), 0);
  EXPECT_EQ(
      Value(s, "regserve_stage_duration_seconds_count", {{"stage", "decode"}}),
      kThreads * kIterations);
}

// A plain HTTP/1.0 GET on 127.0.0.1:port; returns the whole response.
std::string HttpGet(int port, const std::string& path,
                    const std::string& headers = "") {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = absl::StrCat(
        "GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n", headers, "\r\n");
    if (write(fd, request.data(), request.size()) ==
        static_cast<ssize_t>(request.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
    }
  }
  close(fd);
  return response;
}

TEST(MetricsTest, ServesOverHttpOnAPickedPort) {
  auto m = NewMetrics("127.0.0.1:0");
  ASSERT_NE(m, nullptr);
  ASSERT_GT(m->port(), 0);
  EXPECT_EQ(m->address(), absl::StrCat("127.0.0.1:", m->port()));
  std::atomic<int> calls{0};
  m->SetScrapeCallback([&] { m->SetQueueLength(++calls); });
  m->OnSubmitted();
  m->OnStageDone(Stage::kDecode, 0.07);
  const std::string response = HttpGet(m->port(), "/metrics");
  EXPECT_THAT(response, HasSubstr("200 OK"));
  const size_t body = response.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos);
  auto s = Parse(response.substr(body + 4));
  EXPECT_EQ(Value(s, "regserve_jobs_submitted_total"), 1);
  EXPECT_EQ(Value(s, "regserve_queue_length"), 1);
  EXPECT_EQ(
      Bucket(s, "regserve_stage_duration_seconds", 0.1, {{"stage", "decode"}}),
      1);
  EXPECT_EQ(calls.load(), 1);
  // Other paths are not served.
  EXPECT_THAT(HttpGet(m->port(), "/jobs"), HasSubstr("404"));
}

TEST(MetricsTest, BasicAuthGuardsTheEndpoint) {
  Metrics::Options options;
  options.listen = "127.0.0.1:0";
  std::atomic<int> asked{0};
  options.authorize = [&](const std::string& user, const std::string& pass) {
    ++asked;
    return user == "prometheus" && pass == "s3cret-scrape-token";
  };
  auto m = Metrics::Create(options);
  ASSERT_TRUE(m.ok()) << m.status();
  (*m)->OnSubmitted();
  const int port = (*m)->port();
  // No credentials, a wrong password, another user, another scheme: 401,
  // and no metric in the body.
  for (const std::string& headers :
       {std::string(),
        // prometheus:wrong
        std::string("Authorization: Basic cHJvbWV0aGV1czp3cm9uZw==\r\n"),
        // other:s3cret-scrape-token
        std::string(
            "Authorization: Basic b3RoZXI6czNjcmV0LXNjcmFwZS10b2tlbg==\r\n"),
        std::string("Authorization: Bearer s3cret-scrape-token\r\n")}) {
    const std::string response = HttpGet(port, "/metrics", headers);
    EXPECT_THAT(response, HasSubstr("401")) << headers;
    EXPECT_THAT(response, testing::Not(HasSubstr("regserve_jobs_submitted")))
        << headers;
  }
  // prometheus:s3cret-scrape-token
  const std::string ok =
      HttpGet(port, "/metrics",
              "Authorization: Basic "
              "cHJvbWV0aGV1czpzM2NyZXQtc2NyYXBlLXRva2Vu\r\n");
  EXPECT_THAT(ok, HasSubstr("200 OK"));
  EXPECT_THAT(ok, HasSubstr("regserve_jobs_submitted_total 1"));
  EXPECT_GE(asked.load(), 3);
}

TEST(MetricsTest, CreateErrors) {
  Metrics::Options options;
  options.listen = "no-port";
  EXPECT_EQ(Metrics::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.listen = "127.0.0.1:99999";
  EXPECT_EQ(Metrics::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.listen = ":9464";
  EXPECT_EQ(Metrics::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);

  // A port already taken.
  auto first = NewMetrics("127.0.0.1:0");
  ASSERT_NE(first, nullptr);
  options.listen = first->address();
  auto second = Metrics::Create(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr(first->address()));
}

}  // namespace
}  // namespace regserve
