// Copyright regserve authors.
//
// Metrics: the Prometheus metrics of regserved, and their HTTP endpoint
// (prometheus-cpp's Exposer, path /metrics).
//
//   Metrics::Options opts;
//   opts.listen = "0.0.0.0:9464";               // "127.0.0.1:0" picks a port
//   REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Metrics> metrics,
//                             Metrics::Create(opts));
//   printf("regserved metrics on %s\n", metrics->address().c_str());
//   metrics->SetScrapeCallback([&] {            // fresh gauges per scrape
//     metrics->SetQueueLength(manager->GetStats().queued);
//     metrics->UpdateResources(scheduler.Stats(), probe->Probe());
//   });
//   metrics->OnSubmitted();
//   metrics->StageStarted(Stage::kWarp); ...
//   metrics->StageEnded(Stage::kWarp); metrics->OnStageDone(Stage::kWarp, s);
//   metrics->OnFinished(JobOutcome::kCompleted, absl::StatusCode::kOk);
//
// Every name has the prefix regserve_ and a base-unit suffix (_seconds,
// _bytes, _total for counters). Label values come only from enums and small
// integers (GPU ordinals), never from job ids, principals or file names, so
// the number of series is bounded; the API takes enums, not strings. Every
// labelled series that can exist (except per-GPU ones, which appear with the
// first UpdateResources) is created at zero on construction, so rate() and
// ratios have data from the first scrape.
//
// The series, in brief (see metrics.cc for help texts and buckets):
//   regserve_jobs_submitted_total                   OnSubmitted
//   regserve_jobs_finished_total{outcome}           OnFinished
//   regserve_job_failures_total{reason}             OnFinished, outcome
//                                                   failed or rejected
//   regserve_queue_length                           SetQueueLength
//   regserve_fleet_replicas                         SetFleetReplicas
//   regserve_jobs_running{stage}                    StageStarted/StageEnded
//   regserve_stage_duration_seconds{stage}          OnStageDone (histogram)
//   regserve_job_duration_seconds                   OnJobDone (histogram)
//   regserve_pixels_registered_total, regserve_pixels_warped_total,
//   regserve_received_bytes_total, regserve_sent_bytes_total
//   regserve_ram_{budget,reserved,free}_bytes       UpdateResources
//   regserve_vram_{budget,reserved,free}_bytes{gpu} UpdateResources
//   regserve_stages_waiting                         UpdateResources
//   regserve_elastix_iterations_total               OnRegistration
//   regserve_registration_final_metric              OnRegistration (histogram)
//   regserve_estimated_residual_pixels              OnQualityEstimate
//                                                   (histogram)
//   regserve_build_info{version,libtorch,cuda} = 1
//
// Outcomes: each job submission ends in exactly one outcome, so
// submitted_total - sum(finished_total) is the number of jobs in flight:
//   rejected   Submit failed before a job existed (validation, queue full,
//              plan refused, shutting down);
//   failed     the job existed and ended with an error;
//   cancelled  the job ended because a client cancelled it;
//   completed  the result was written.
//
// Ownership: Create returns the sole owner; the HTTP endpoint stops when it
// is destroyed. Thread safety: all methods are thread-safe. Failure: only
// Create can fail (bad address, port in use); the update methods never fail
// and ignore values they cannot represent (negative counts, non-finite
// numbers).
#ifndef REGSERVE_SERVER_METRICS_METRICS_H_
#define REGSERVE_SERVER_METRICS_METRICS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/common/types.h"
#include "core/hardware/hardware.h"
#include "core/scheduler/scheduler.h"

namespace prometheus {
class Registry;
class Exposer;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace regserve {

enum class JobOutcome {
  kCompleted = 0,
  kFailed = 1,
  kCancelled = 2,
  kRejected = 3
};
// "completed", "failed", "cancelled", "rejected".
absl::string_view JobOutcomeName(JobOutcome outcome);

// The label value of regserve_job_failures_total for a status code: the
// code's name in snake case ("invalid_argument", "resource_exhausted", ...),
// "unknown" for kOk and for values outside absl::StatusCode.
absl::string_view FailureReasonLabel(absl::StatusCode code);

// The stage label ("upload", "decode", "registration", "warp", "stream",
// "quality", "initial_alignment", "refine").
absl::string_view StageLabel(Stage stage);

struct BuildInfo {
  std::string version;   // regserve's version
  std::string libtorch;  // LibTorch's version, as CMake found it
  std::string cuda;      // CUDA toolkit version, or "none"
};
// The versions this library was compiled with.
BuildInfo CompiledBuildInfo();

class Metrics {
 public:
  struct Options {
    // "host:port" for the HTTP endpoint; port 0 picks a free port (see
    // port()). IPv6 hosts in brackets: "[::1]:9464". Empty: no endpoint
    // (Serialize() still works).
    std::string listen;
    int http_threads = 2;
    // Non-null: /metrics answers 401 unless the request carries HTTP basic
    // credentials (user, password) that this accepts. Called on the HTTP
    // threads; it must be thread-safe and outlive the Metrics.
    std::function<bool(const std::string& user, const std::string& password)>
        authorize;
    BuildInfo build = CompiledBuildInfo();
  };

  // InvalidArgument for a malformed `listen`; Unavailable when the address
  // cannot be bound (the message names it).
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(
      const Options& options);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The bound port, or 0 without an endpoint.
  int port() const { return port_; }
  // "host:port" with the bound port, or "" without an endpoint.
  const std::string& address() const { return address_; }

  // Called on every scrape (HTTP or Serialize), before the series are
  // collected, to refresh gauges that are cheaper to read than to track
  // (queue length, scheduler and hardware readings). Scrapes run on the
  // endpoint's threads; `callback` must be thread-safe and must not call
  // Serialize or SetScrapeCallback. Replaces the previous callback; pass
  // nullptr to remove it (returns after any running callback has finished).
  void SetScrapeCallback(std::function<void()> callback);

  // The text exposition format, as an HTTP scrape returns it.
  std::string Serialize() const;

  // --- Jobs ---
  void OnSubmitted();
  // `code` is the job's failure code: counted in job_failures_total when
  // `outcome` is kFailed or kRejected (kOk there counts as "unknown").
  void OnFinished(JobOutcome outcome, absl::StatusCode code);
  // In fleet mode the fleet's queue, the same on every replica (an
  // autoscaler takes the max over replicas, not the sum).
  void SetQueueLength(int64_t jobs);
  // Fleet mode: replicas heard from in the last 10 s (0 on a single host).
  void SetFleetReplicas(int64_t replicas);
  // Running stages: StageStarted/StageEnded must pair up per stage.
  void StageStarted(Stage stage);
  void StageEnded(Stage stage);
  // Wall time of one stage that ran to its end (not one cut short by a
  // cancellation or failure), and of a whole job, from submission to its
  // terminal event, for every job that existed (completed, failed or
  // cancelled; not rejected). Negative or non-finite values are ignored.
  void OnStageDone(Stage stage, double seconds);
  void OnJobDone(double seconds);

  // --- Work ---
  // Pixels of the registration copies (fixed + moving) that elastix
  // registered, and output pixels the warp produced.
  void AddPixelsRegistered(uint64_t pixels);
  void AddPixelsWarped(uint64_t pixels);
  // Payload bytes received from clients (uploads) and sent (result tiles).
  void AddBytesReceived(uint64_t bytes);
  void AddBytesSent(uint64_t bytes);
  // Once per finished registration (job): the elastix iterations over all
  // parameter files and resolutions, and the final metric value of the
  // last parameter file (Mattes MI: about -2..0).
  void OnRegistration(int64_t iterations, double final_metric);
  // Once per quality estimate (job): the estimated mean residual in
  // full-resolution pixels (core/quality).
  void OnQualityEstimate(double mean_px);

  // --- Resources ---
  // Budgets and reservations from the scheduler; free RAM/VRAM as measured
  // live by the probe (not budget - reserved, which PromQL can compute).
  // gpu label: `gpu_ordinals[i]` for scheduler entry i when given (see
  // SchedulerConfig::gpu_ordinals), else i; GpuInfo::index for the
  // snapshot's GPUs. Ordinals outside 0..255 are ignored.
  void UpdateResources(const SchedulerStats& stats,
                       const HardwareSnapshot& snapshot,
                       absl::Span<const int> gpu_ordinals = {});
  // As above, for when the probe failed: leaves the free gauges as they are.
  void UpdateScheduler(const SchedulerStats& stats,
                       absl::Span<const int> gpu_ordinals = {});
  // Convenience: the probe's result; on error only the scheduler part.
  void UpdateResources(const SchedulerStats& stats,
                       const absl::StatusOr<HardwareSnapshot>& snapshot,
                       absl::Span<const int> gpu_ordinals = {});

 private:
  class ScrapeCollectable;
  struct GpuGauges {
    prometheus::Gauge* budget = nullptr;
    prometheus::Gauge* reserved = nullptr;
    prometheus::Gauge* free = nullptr;
  };
  // One per Stage value; metrics.cc checks it against its list of stages.
  static constexpr int kStages = 8;
  static constexpr int kOutcomes = 4;
  static constexpr int kReasons = 17;  // indexed by absl::StatusCode 1..16

  explicit Metrics(const Options& options);
  GpuGauges* GpuLocked(int ordinal) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunScrapeCallback() const;

  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Counter* submitted_ = nullptr;
  prometheus::Counter* finished_[kOutcomes] = {};
  prometheus::Counter* failures_[kReasons] = {};
  prometheus::Gauge* queue_length_ = nullptr;
  prometheus::Gauge* fleet_replicas_ = nullptr;
  prometheus::Gauge* running_[kStages] = {};
  prometheus::Histogram* stage_seconds_[kStages] = {};
  prometheus::Histogram* job_seconds_ = nullptr;
  prometheus::Counter* pixels_registered_ = nullptr;
  prometheus::Counter* pixels_warped_ = nullptr;
  prometheus::Counter* bytes_received_ = nullptr;
  prometheus::Counter* bytes_sent_ = nullptr;
  prometheus::Gauge* ram_budget_ = nullptr;
  prometheus::Gauge* ram_reserved_ = nullptr;
  prometheus::Gauge* ram_free_ = nullptr;
  prometheus::Gauge* stages_waiting_ = nullptr;
  prometheus::Counter* elastix_iterations_ = nullptr;
  prometheus::Histogram* final_metric_ = nullptr;
  prometheus::Histogram* residual_ = nullptr;
  prometheus::Family<prometheus::Gauge>* vram_budget_family_ = nullptr;
  prometheus::Family<prometheus::Gauge>* vram_reserved_family_ = nullptr;
  prometheus::Family<prometheus::Gauge>* vram_free_family_ = nullptr;

  absl::Mutex mu_;
  std::vector<GpuGauges> gpus_ ABSL_GUARDED_BY(mu_);  // index = ordinal

  mutable absl::Mutex callback_mu_;
  std::function<void()> callback_ ABSL_GUARDED_BY(callback_mu_);

  std::shared_ptr<ScrapeCollectable> collectable_;
  int port_ = 0;
  std::string address_;
  // Last: destroyed first, so no scrape runs while the rest goes away.
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace regserve

#endif  // REGSERVE_SERVER_METRICS_METRICS_H_
