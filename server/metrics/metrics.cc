// Copyright regserve authors.
#include "server/metrics/metrics.h"

#include <cmath>
#include <exception>
#include <iterator>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

#ifndef REGSERVE_VERSION
#define REGSERVE_VERSION "unknown"
#endif
#ifndef REGSERVE_LIBTORCH_VERSION
#define REGSERVE_LIBTORCH_VERSION "unknown"
#endif
#ifndef REGSERVE_CUDA_VERSION
#define REGSERVE_CUDA_VERSION "none"
#endif

namespace regserve {
namespace {

constexpr Stage kAllStages[] = {
    Stage::kUpload, Stage::kDecode,  Stage::kRegistration,     Stage::kWarp,
    Stage::kStream, Stage::kQuality, Stage::kInitialAlignment, Stage::kRefine};
constexpr JobOutcome kAllOutcomes[] = {
    JobOutcome::kCompleted, JobOutcome::kFailed, JobOutcome::kCancelled,
    JobOutcome::kRejected};
// Failure reasons, indexed by absl::StatusCode value (1..16); kOk and
// values outside the enum count as kUnknown (index 2).
constexpr absl::string_view kReasonNames[] = {
    "unknown",              // 0: kOk, not a failure
    "cancelled",            // 1
    "unknown",              // 2: kUnknown
    "invalid_argument",     // 3
    "deadline_exceeded",    // 4
    "not_found",            // 5
    "already_exists",       // 6
    "permission_denied",    // 7
    "resource_exhausted",   // 8
    "failed_precondition",  // 9
    "aborted",              // 10
    "out_of_range",         // 11
    "unimplemented",        // 12
    "internal",             // 13
    "unavailable",          // 14
    "data_loss",            // 15
    "unauthenticated",      // 16
};
constexpr int kUnknownReasonIndex = 2;

int ReasonIndex(absl::StatusCode code) {
  const int c = static_cast<int>(code);
  if (c <= 0 || c > 16) return kUnknownReasonIndex;
  return c;
}

int StageIndex(Stage stage) {
  const int i = static_cast<int>(stage);
  // Stage values are dense from 0: the value is the index.
  return (i >= 0 && i < static_cast<int>(std::size(kAllStages))) ? i : -1;
}

// Stage durations span 10 ms (decoding a small PNG) to an hour (elastix on
// a large copy): roughly 1-2.5-5 steps per decade.
const prometheus::Histogram::BucketBoundaries& StageBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,    2.5,  5,
      10,   25,    50,   100, 250,  500, 1000, 1800, 3600};
  return *b;
}
// Whole jobs: 100 ms .. 2 h (the default registration timeout).
const prometheus::Histogram::BucketBoundaries& JobBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.1, 0.25, 0.5, 1,    2.5,  5,    10,   25,  50,
      100, 250,  500, 1000, 1800, 3600, 5400, 7200};
  return *b;
}
// elastix's AdvancedMattesMutualInformation is the negated mutual
// information: about -2 (strong alignment) .. 0 (none). 0.1 steps there,
// with a coarse bucket on each side for other metrics' values.
const prometheus::Histogram::BucketBoundaries& FinalMetricBuckets() {
  static const auto* b = [] {
    auto* v = new prometheus::Histogram::BucketBoundaries{-4.0, -3.0, -2.5};
    for (int i = -20; i <= 0; ++i) v->push_back(i / 10.0);
    v->push_back(1.0);
    return v;
  }();
  return *b;
}

bool Finite(double v) { return std::isfinite(v); }

}  // namespace

absl::string_view JobOutcomeName(JobOutcome outcome) {
  switch (outcome) {
    case JobOutcome::kCompleted:
      return "completed";
    case JobOutcome::kFailed:
      return "failed";
    case JobOutcome::kCancelled:
      return "cancelled";
    case JobOutcome::kRejected:
      return "rejected";
  }
  return "unknown";
}

absl::string_view FailureReasonLabel(absl::StatusCode code) {
  return kReasonNames[ReasonIndex(code)];
}

absl::string_view StageLabel(Stage stage) { return StageName(stage); }

BuildInfo CompiledBuildInfo() {
  return BuildInfo{REGSERVE_VERSION, REGSERVE_LIBTORCH_VERSION,
                   REGSERVE_CUDA_VERSION};
}

// What the Exposer collects: runs the scrape callback, then the registry.
class Metrics::ScrapeCollectable final : public prometheus::Collectable {
 public:
  explicit ScrapeCollectable(const Metrics* metrics) : metrics_(metrics) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    metrics_->RunScrapeCallback();
    return metrics_->registry_->Collect();
  }

 private:
  const Metrics* const metrics_;
};

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(
    const Options& options) {
  std::string host;
  int port = 0;
  if (!options.listen.empty()) {
    const size_t colon = options.listen.rfind(':');
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(options.listen.substr(colon + 1), &port) ||
        port < 0 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metrics listen address \"", options.listen,
          "\" is not HOST:PORT (e.g. 0.0.0.0:9464, or port 0 for any)"));
    }
    host = options.listen.substr(0, colon);
    if (host.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metrics listen address \"", options.listen,
          "\" has no host: use 0.0.0.0:PORT to listen on all interfaces"));
    }
    if (options.http_threads < 1) {
      return absl::InvalidArgumentError("metrics http_threads must be >= 1");
    }
  }
  std::unique_ptr<Metrics> metrics(new Metrics(options));
  if (options.listen.empty()) return metrics;
  try {
    metrics->exposer_ = std::make_unique<prometheus::Exposer>(
        options.listen, static_cast<size_t>(options.http_threads));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve metrics on ", options.listen, ": ", e.what(),
        " (is the port in use? pick another with --metrics_listen)"));
  }
  if (options.authorize) {
    metrics->exposer_->RegisterAuth(options.authorize, "regserve metrics",
                                    "/metrics");
  }
  metrics->exposer_->RegisterCollectable(metrics->collectable_, "/metrics");
  const std::vector<int> ports = metrics->exposer_->GetListeningPorts();
  if (ports.empty() || ports[0] <= 0) {
    return absl::UnavailableError(absl::StrCat(
        "metrics endpoint on ", options.listen, " reports no listening port"));
  }
  metrics->port_ = ports[0];
  metrics->address_ = absl::StrCat(host, ":", metrics->port_);
  return metrics;
}

namespace {

// Families with one unlabelled metric: the metric.
prometheus::Counter* SingleCounter(prometheus::Registry& r,
                                   const std::string& name,
                                   const std::string& help) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}
prometheus::Gauge* SingleGauge(prometheus::Registry& r, const std::string& name,
                               const std::string& help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}
// Estimated residuals in full-resolution pixels: sub-pixel (good) to tens
// of pixels (a failed registration).
const prometheus::Histogram::BucketBoundaries& ResidualBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50};
  return *b;
}

prometheus::Histogram* SingleHistogram(
    prometheus::Registry& r, const std::string& name, const std::string& help,
    const prometheus::Histogram::BucketBoundaries& buckets) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add(
      {}, buckets);
}
// A family whose metrics are labelled per GPU as GPUs appear (GpuLocked).
prometheus::Family<prometheus::Gauge>* GpuGaugeFamily(prometheus::Registry& r,
                                                      const std::string& name,
                                                      const std::string& help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(r);
}

// regserve_jobs_finished_total, one counter per outcome (indexed by it).
template <size_t N>
void AddOutcomeCounters(prometheus::Registry& r,
                        prometheus::Counter* (&finished)[N]) {
  auto& family = prometheus::BuildCounter()
                     .Name("regserve_jobs_finished_total")
                     .Help(
                         "Job submissions that ended, by outcome: "
                         "completed, failed, cancelled, or rejected "
                         "before a job existed.")
                     .Register(r);
  for (JobOutcome o : kAllOutcomes) {
    finished[static_cast<int>(o)] =
        &family.Add({{"outcome", std::string(JobOutcomeName(o))}});
  }
}

// regserve_job_failures_total, one counter per reason (indexed by
// ReasonIndex).
template <size_t N>
void AddFailureCounters(prometheus::Registry& r,
                        prometheus::Counter* (&failures)[N]) {
  static_assert(N <= std::size(kReasonNames));
  auto& family = prometheus::BuildCounter()
                     .Name("regserve_job_failures_total")
                     .Help(
                         "Failed or rejected jobs, by the status code of "
                         "the failure.")
                     .Register(r);
  // Index 0 (kOk) stays null: ReasonIndex never returns it.
  for (size_t c = 1; c < N; ++c) {
    failures[c] = &family.Add({{"reason", std::string(kReasonNames[c])}});
  }
}

// The per-stage gauge and histogram (indexed by StageIndex).
template <size_t N>
void AddStageMetrics(prometheus::Registry& r, prometheus::Gauge* (&running)[N],
                     prometheus::Histogram* (&stage_seconds)[N]) {
  auto& running_family = prometheus::BuildGauge()
                             .Name("regserve_jobs_running")
                             .Help("Jobs currently in each pipeline stage.")
                             .Register(r);
  auto& seconds_family = prometheus::BuildHistogram()
                             .Name("regserve_stage_duration_seconds")
                             .Help("Wall time of finished pipeline stages.")
                             .Register(r);
  for (Stage s : kAllStages) {
    const int i = StageIndex(s);
    const prometheus::Labels labels{{"stage", std::string(StageLabel(s))}};
    running[i] = &running_family.Add(labels);
    stage_seconds[i] = &seconds_family.Add(labels, StageBuckets());
  }
}

void AddBuildInfo(prometheus::Registry& r, const BuildInfo& build) {
  prometheus::BuildGauge()
      .Name("regserve_build_info")
      .Help("Always 1; labels give the versions regserved was built with.")
      .Register(r)
      .Add({{"version", build.version},
            {"libtorch", build.libtorch},
            {"cuda", build.cuda}})
      .Set(1);
}

}  // namespace

Metrics::Metrics(const Options& options)
    : registry_(std::make_shared<prometheus::Registry>()) {
  // A stage added to the pipeline must be counted in kStages too: the
  // per-stage arrays are indexed by it.
  static_assert(sizeof(kAllStages) / sizeof(kAllStages[0]) == kStages,
                "Metrics::kStages must equal the number of stages");
  prometheus::Registry& r = *registry_;

  // Jobs.
  submitted_ = SingleCounter(r, "regserve_jobs_submitted_total",
                             "Job submissions received (Submit calls that "
                             "sent a job spec), accepted or not.");
  AddOutcomeCounters(r, finished_);
  AddFailureCounters(r, failures_);
  queue_length_ = SingleGauge(
      r, "regserve_queue_length",
      "Jobs queued, waiting to start (fleet mode: in the whole fleet).");
  fleet_replicas_ = SingleGauge(
      r, "regserve_fleet_replicas",
      "Fleet mode: replicas heard from in the last 10 s (0: a single host).");
  AddStageMetrics(r, running_, stage_seconds_);
  job_seconds_ = SingleHistogram(r, "regserve_job_duration_seconds",
                                 "Wall time of finished jobs, from submission "
                                 "to the terminal event.",
                                 JobBuckets());

  // Throughput.
  pixels_registered_ = SingleCounter(r, "regserve_pixels_registered_total",
                                     "Pixels of registration copies (fixed + "
                                     "moving) given to elastix.");
  pixels_warped_ = SingleCounter(r, "regserve_pixels_warped_total",
                                 "Full-resolution output pixels warped.");
  bytes_received_ = SingleCounter(r, "regserve_received_bytes_total",
                                  "Image bytes received from clients.");
  bytes_sent_ = SingleCounter(r, "regserve_sent_bytes_total",
                              "Result tile bytes sent to clients.");

  // Resources.
  ram_budget_ = SingleGauge(r, "regserve_ram_budget_bytes",
                            "RAM the scheduler may reserve for stages.");
  ram_reserved_ = SingleGauge(r, "regserve_ram_reserved_bytes",
                              "RAM reserved by running stages.");
  ram_free_ = SingleGauge(r, "regserve_ram_free_bytes",
                          "RAM available on the machine (or cgroup), as "
                          "measured at the last scrape.");
  stages_waiting_ = SingleGauge(r, "regserve_stages_waiting",
                                "Stages waiting for the scheduler to admit "
                                "them (RAM, VRAM or a slot).");
  vram_budget_family_ = GpuGaugeFamily(r, "regserve_vram_budget_bytes",
                                       "VRAM the scheduler may reserve, per "
                                       "GPU.");
  vram_reserved_family_ = GpuGaugeFamily(r, "regserve_vram_reserved_bytes",
                                         "VRAM reserved by running warps, per "
                                         "GPU.");
  vram_free_family_ = GpuGaugeFamily(r, "regserve_vram_free_bytes",
                                     "Free VRAM per GPU, as measured at the "
                                     "last scrape.");

  // Registration.
  elastix_iterations_ = SingleCounter(r, "regserve_elastix_iterations_total",
                                      "elastix optimizer iterations, all "
                                      "resolutions and stages.");
  final_metric_ = SingleHistogram(r, "regserve_registration_final_metric",
                                  "Final elastix metric value per "
                                  "registration (Mattes MI: about -2 good .. "
                                  "0 none).",
                                  FinalMetricBuckets());
  residual_ = SingleHistogram(r, "regserve_estimated_residual_pixels",
                              "Estimated mean residual misalignment per "
                              "registration (quality map), in full-resolution "
                              "pixels.",
                              ResidualBuckets());

  AddBuildInfo(r, options.build);
  collectable_ = std::make_shared<ScrapeCollectable>(this);
}

Metrics::~Metrics() {
  // Stop the endpoint before the registry and gauges go away.
  exposer_.reset();
}

void Metrics::SetScrapeCallback(std::function<void()> callback) {
  absl::MutexLock lock(&callback_mu_);
  callback_ = std::move(callback);
}

void Metrics::RunScrapeCallback() const {
  absl::MutexLock lock(&callback_mu_);
  if (callback_) callback_();
}

std::string Metrics::Serialize() const {
  const std::vector<prometheus::MetricFamily> families =
      collectable_->Collect();
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

void Metrics::OnSubmitted() { submitted_->Increment(); }

void Metrics::OnFinished(JobOutcome outcome, absl::StatusCode code) {
  const int o = static_cast<int>(outcome);
  if (o < 0 || o >= kOutcomes) return;
  finished_[o]->Increment();
  if (outcome == JobOutcome::kFailed || outcome == JobOutcome::kRejected) {
    failures_[ReasonIndex(code)]->Increment();
  }
}

void Metrics::SetQueueLength(int64_t jobs) {
  if (jobs < 0) return;
  queue_length_->Set(static_cast<double>(jobs));
}

void Metrics::SetFleetReplicas(int64_t replicas) {
  if (replicas < 0) return;
  fleet_replicas_->Set(static_cast<double>(replicas));
}

void Metrics::StageStarted(Stage stage) {
  const int i = StageIndex(stage);
  if (i >= 0) running_[i]->Increment();
}

void Metrics::StageEnded(Stage stage) {
  const int i = StageIndex(stage);
  if (i >= 0) running_[i]->Decrement();
}

void Metrics::OnStageDone(Stage stage, double seconds) {
  const int i = StageIndex(stage);
  if (i < 0 || !Finite(seconds) || seconds < 0) return;
  stage_seconds_[i]->Observe(seconds);
}

void Metrics::OnJobDone(double seconds) {
  if (!Finite(seconds) || seconds < 0) return;
  job_seconds_->Observe(seconds);
}

void Metrics::AddPixelsRegistered(uint64_t pixels) {
  pixels_registered_->Increment(static_cast<double>(pixels));
}
void Metrics::AddPixelsWarped(uint64_t pixels) {
  pixels_warped_->Increment(static_cast<double>(pixels));
}
void Metrics::AddBytesReceived(uint64_t bytes) {
  bytes_received_->Increment(static_cast<double>(bytes));
}
void Metrics::AddBytesSent(uint64_t bytes) {
  bytes_sent_->Increment(static_cast<double>(bytes));
}

void Metrics::OnRegistration(int64_t iterations, double final_metric) {
  if (iterations > 0) {
    elastix_iterations_->Increment(static_cast<double>(iterations));
  }
  if (Finite(final_metric)) final_metric_->Observe(final_metric);
}

void Metrics::OnQualityEstimate(double mean_px) {
  if (Finite(mean_px) && mean_px >= 0) residual_->Observe(mean_px);
}

Metrics::GpuGauges* Metrics::GpuLocked(int ordinal) {
  if (ordinal < 0 || ordinal > 255) return nullptr;
  if (static_cast<size_t>(ordinal) >= gpus_.size()) gpus_.resize(ordinal + 1);
  GpuGauges& g = gpus_[ordinal];
  if (g.budget == nullptr) {
    const prometheus::Labels labels{{"gpu", absl::StrCat(ordinal)}};
    g.budget = &vram_budget_family_->Add(labels);
    g.reserved = &vram_reserved_family_->Add(labels);
    g.free = &vram_free_family_->Add(labels);
  }
  return &g;
}

void Metrics::UpdateScheduler(const SchedulerStats& stats,
                              absl::Span<const int> gpu_ordinals) {
  ram_budget_->Set(static_cast<double>(stats.ram_budget_bytes));
  ram_reserved_->Set(static_cast<double>(stats.ram_reserved_bytes));
  stages_waiting_->Set(stats.waiting);
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < stats.vram_budget_bytes.size(); ++i) {
    const int ordinal =
        i < gpu_ordinals.size() ? gpu_ordinals[i] : static_cast<int>(i);
    GpuGauges* g = GpuLocked(ordinal);
    if (g == nullptr) continue;
    g->budget->Set(static_cast<double>(stats.vram_budget_bytes[i]));
    const uint64_t reserved =
        i < stats.vram_reserved_bytes.size() ? stats.vram_reserved_bytes[i] : 0;
    g->reserved->Set(static_cast<double>(reserved));
  }
}

void Metrics::UpdateResources(const SchedulerStats& stats,
                              const HardwareSnapshot& snapshot,
                              absl::Span<const int> gpu_ordinals) {
  UpdateScheduler(stats, gpu_ordinals);
  ram_free_->Set(static_cast<double>(snapshot.ram_available_bytes));
  absl::MutexLock lock(&mu_);
  for (const GpuInfo& gpu : snapshot.gpus) {
    GpuGauges* g = GpuLocked(gpu.index);
    if (g == nullptr) continue;
    g->free->Set(static_cast<double>(gpu.vram_free_bytes));
  }
}

void Metrics::UpdateResources(const SchedulerStats& stats,
                              const absl::StatusOr<HardwareSnapshot>& snapshot,
                              absl::Span<const int> gpu_ordinals) {
  if (snapshot.ok()) {
    UpdateResources(stats, *snapshot, gpu_ordinals);
  } else {
    UpdateScheduler(stats, gpu_ordinals);
  }
}

}  // namespace regserve
