// Copyright regserve authors.
//
// regserved: the regserve daemon. Wires the hardware probe, the resource
// scheduler and the job manager to the gRPC service, then waits for signals
// (blocked in every thread and taken by sigwait in a dedicated one). SIGHUP
// re-reads the --auth_tokens and --metrics_tokens files (on error the
// previous tokens stay). SIGTERM or SIGINT stop it: it stops taking jobs,
// shuts the job manager down (running stages finish or are checkpointed for
// the next start), shuts the gRPC server down with a deadline, and exits 0.
//
// The flags are parsed in server/daemon_config.h, the TLS credentials made
// in server/tls.h, the budgets decided by core/plan/resources.h; this file
// only wires them together.
//
// Security: --tls_cert/--tls_key turn TLS on, --tls_client_ca also requires
// client certificates; --auth_tokens requires a bearer token on every call
// of the Registration service (health and reflection stay open). With
// neither TLS nor tokens it refuses non-loopback --listen addresses unless
// --insecure_listen_any is given.
//
// Health: grpc.health.v1 answers SERVING for "" and for
// "regserve.v1.Registration" until shutdown begins, NOT_SERVING after; in
// fleet mode also NOT_SERVING while the job table cannot be reached.
//
// Exit codes: 0 after a clean shutdown, 1 when it cannot start (data_dir not
// writable, address in use, a --fleet_db that is malformed or cannot be
// reached, ...), 2 for bad flags (including unreadable or
// malformed TLS and token files, an unprotected non-loopback --listen, a
// --device GPU the machine lacks, and any option the job manager refuses).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/auth/token_store.h"
#include "core/common/malloc_policy.h"
#include "core/common/types.h"
#include "core/hardware/hardware.h"
#include "core/jobs/job_manager.h"
#include "core/plan/resources.h"
#include "core/scheduler/scheduler.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/daemon_config.h"
#include "server/flag_util.h"
#include "server/metrics/metrics.h"
#include "server/registration_service.h"
#include "server/tls.h"

namespace regserve {
namespace {

constexpr int kExitStartFailure = 1;
constexpr int kExitBadFlags = 2;

// Feeds the Prometheus metrics: job stages and outcomes from core/jobs (every
// job), transport counters from the gRPC service.
class MetricsObserver final : public JobObserver, public JobLifecycleObserver {
 public:
  explicit MetricsObserver(Metrics* metrics) : metrics_(metrics) {}
  // JobObserver (transport).
  void OnSubmitted() override { metrics_->OnSubmitted(); }
  void OnRejected(const absl::Status& why) override {
    metrics_->OnFinished(JobOutcome::kRejected, why.code());
  }
  void OnBytesReceived(uint64_t bytes) override {
    metrics_->AddBytesReceived(bytes);
  }
  void OnBytesSent(uint64_t bytes) override { metrics_->AddBytesSent(bytes); }
  void OnStreamStarted() override { metrics_->StageStarted(Stage::kStream); }
  void OnStreamEnded(bool completed, double seconds) override {
    metrics_->StageEnded(Stage::kStream);
    if (completed) metrics_->OnStageDone(Stage::kStream, seconds);
  }
  // JobLifecycleObserver (engine).
  void OnStageStarted(Stage stage) override { metrics_->StageStarted(stage); }
  void OnStageEnded(Stage stage, bool completed, double seconds) override {
    metrics_->StageEnded(stage);
    if (completed) metrics_->OnStageDone(stage, seconds);
  }
  void OnRegistered(int64_t pixels, int64_t iterations,
                    double final_metric) override {
    metrics_->AddPixelsRegistered(static_cast<uint64_t>(pixels));
    metrics_->OnRegistration(iterations, final_metric);
  }
  void OnWarped(int64_t pixels) override {
    metrics_->AddPixelsWarped(static_cast<uint64_t>(pixels));
  }
  void OnJobFinished(const JobInfo& info) override {
    if (info.state == JobState::kCompleted && info.quality.computed) {
      metrics_->OnQualityEstimate(info.quality.mean_px);
    }
    if (info.finished != absl::InfinitePast() &&
        info.created != absl::InfinitePast()) {
      metrics_->OnJobDone(absl::ToDoubleSeconds(info.finished - info.created));
    }
    if (info.state == JobState::kCompleted) {
      metrics_->OnFinished(JobOutcome::kCompleted, absl::StatusCode::kOk);
    } else if (info.state == JobState::kCancelled ||
               info.failure.code() == absl::StatusCode::kCancelled) {
      metrics_->OnFinished(JobOutcome::kCancelled,
                           absl::StatusCode::kCancelled);
    } else {
      metrics_->OnFinished(JobOutcome::kFailed, info.failure.code());
    }
  }

 private:
  Metrics* const metrics_;
};

int Fail(int code, absl::string_view message) {
  std::fprintf(stderr, "regserved: %s\n", std::string(message).c_str());
  return code;
}

// Blocks the shutdown signals in the calling thread before any other thread
// starts, so that every thread inherits the mask and only the sigwait thread
// takes them. Returns the blocked set.
sigset_t BlockSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // A file-size limit (RLIMIT_FSIZE) must fail the write with EFBIG, which
  // the job store reports, rather than kill the daemon.
  signal(SIGXFSZ, SIG_IGN);
  return signals;
}

// The token file named by --`flag`; null when `path` is empty.
absl::StatusOr<std::unique_ptr<TokenStore>> LoadTokens(
    const char* flag, const std::string& path) {
  if (path.empty()) return std::unique_ptr<TokenStore>();
  absl::StatusOr<std::unique_ptr<TokenStore>> loaded = TokenStore::Load(path);
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": ", loaded.status().message()));
  }
  WarnIfOthersCanRead(flag, path);
  return loaded;
}

// The Prometheus endpoint (none when `listen` is empty). With `tokens`, it
// requires one of them as HTTP basic auth; `tokens` must outlive it.
absl::StatusOr<std::unique_ptr<Metrics>> StartMetrics(
    const std::string& listen, const TokenStore* tokens) {
  Metrics::Options opts;
  opts.listen = listen;
  if (tokens != nullptr) {
    opts.authorize = [tokens](const std::string& user,
                              const std::string& password) {
      absl::StatusOr<std::string> who =
          tokens->Authenticate(absl::StrCat("Bearer ", password));
      return who.ok() && *who == user;
    };
  }
  absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Create(opts);
  if (!metrics.ok()) {
    return absl::Status(
        metrics.status().code(),
        absl::StrCat("--metrics_listen: ", metrics.status().message()));
  }
  return metrics;
}

// Fresh queue and resource gauges on every scrape. The arguments must
// outlive the callback: clear it (SetScrapeCallback(nullptr)) first.
void FeedMetricsOnScrape(Metrics* metrics, ResourceScheduler* scheduler,
                         JobManager* manager, HardwareProbe* probe) {
  const std::vector<int> gpus = scheduler->config().gpu_ordinals;
  metrics->SetScrapeCallback([metrics, scheduler, manager, probe, gpus] {
    metrics->SetQueueLength(manager->GetStats().queued);
    if (!manager->options().fleet_db.empty()) {
      absl::StatusOr<std::vector<JobManager::FleetReplica>> replicas =
          manager->FleetReplicas();
      if (replicas.ok()) {
        metrics->SetFleetReplicas(static_cast<int64_t>(replicas->size()));
      }
    }
    metrics->UpdateResources(scheduler->Stats(), probe->Probe(), gpus);
  });
}

// The job manager's options: the flags as they are (the core checks them)
// and the budgets already decided in `rc`.
JobManager::Options ManagerOptions(const DaemonConfig& c,
                                   const ResourceConfig& rc,
                                   JobLifecycleObserver* observer) {
  JobManager::Options o;
  o.observer = observer;
  o.data_dir = c.data_dir;
  o.input_root = c.input_root;
  o.output_root = c.output_root;
  o.max_queue = c.max_queue;
  o.max_jobs_per_principal = c.max_jobs_per_principal;
  o.max_pixels = c.max_image_pixels;
  o.max_upload_bytes = c.max_upload_bytes;
  o.default_max_registration_megapixels = c.max_registration_megapixels;
  o.elastix_before_gpu_refine = c.elastix_before_gpu_refine;
  o.shift_correction_passes = c.shift_correction_passes;
  o.gpu_correction_passes = c.gpu_refine_correction_passes;
  o.elastix_before_cpu_correction = c.elastix_before_cpu_correction;
  o.device = rc.flags.devices.preference;
  // The planner applies the same budget rule as rc (PlanningBudgets over a
  // fresh hardware reading with these overrides, on the GPUs the scheduler
  // manages), so only the overrides travel.
  o.budget_overrides.ram_bytes = rc.flags.ram_bytes;
  o.budget_overrides.vram_bytes = rc.flags.vram_bytes;
  o.elastix.elastix_path = c.elastix;
  o.elastix.transformix_path = c.transformix;
  o.registration_timeout = c.registration_timeout;
  o.retention = c.retention;
  o.stream_tile_size = c.stream_tile_size;
  o.fleet_db = c.fleet_db;
  o.replica_name = c.fleet_replica;
  if (o.replica_name.empty()) {
    char host[256] = {};
    if (gethostname(host, sizeof(host) - 1) != 0) host[0] = 0;
    o.replica_name = absl::StrCat(host[0] ? host : "replica", "-", getpid());
  }
  o.replica_address = c.fleet_advertise.empty() ? c.listen : c.fleet_advertise;
  o.fleet_lease = c.fleet_lease;
  o.fleet_jobs_per_replica = c.fleet_jobs_per_replica;
  return o;
}

// Fleet mode: the health service follows the job table (NOT_SERVING while
// it cannot be reached) until `stop`.
std::thread WatchFleetHealth(grpc::Server* server, JobManager* manager,
                             absl::Notification* stop) {
  return std::thread([server, manager, stop] {
    bool serving = true;
    while (!stop->WaitForNotificationWithTimeout(absl::Seconds(1))) {
      const absl::Status health = manager->FleetHealth();
      if (health.ok() == serving) continue;
      serving = health.ok();
      std::fprintf(
          stderr, "regserved: %s\n",
          serving ? "the fleet's job table is back: SERVING"
                  : absl::StrCat(health.message(), ": NOT_SERVING").c_str());
      server->GetHealthCheckService()->SetServingStatus(serving);
    }
  });
}

// The job manager refuses bad options with InvalidArgument naming the field:
// those are flag errors. Anything else means it cannot start.
int FailToStartManager(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kInvalidArgument) {
    return Fail(kExitBadFlags, FlagNamesInCoreMessage(status.message()));
  }
  return Fail(kExitStartFailure,
              absl::StrCat("cannot start the job manager: ", status.message()));
}

RegistrationService::Options ServiceOptions(const DaemonConfig& c,
                                            JobObserver* observer,
                                            const TokenStore* tokens) {
  RegistrationService::Options o;
  o.observer = observer;
  o.max_message_bytes = static_cast<int64_t>(c.max_message_bytes);
  o.version = REGSERVE_VERSION;
  o.tokens = tokens;
  o.max_streams = c.max_streams;
  o.upload_idle_timeout = c.upload_idle_timeout;
  o.stream_threads = c.stream_threads;
  return o;
}

// The gRPC server with `service`, the health service and reflection, on
// --listen; null when it cannot listen. Sets *port to the bound port.
std::unique_ptr<grpc::Server> StartServer(const DaemonConfig& c,
                                          const ServerTransport& transport,
                                          RegistrationService* service,
                                          int* port) {
  // The largest message sent: a float32 RGBA tile at the stream tile size
  // (already checked by the job manager), plus headroom.
  const int64_t max_send = std::max<int64_t>(
      16 << 20, c.stream_tile_size * c.stream_tile_size * 16 + (1 << 20));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(c.listen, transport.credentials, port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(c.max_message_bytes));
  builder.SetMaxSendMessageSize(
      static_cast<int>(std::min<int64_t>(max_send, INT_MAX)));
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *port == 0) return nullptr;
  // "" is SERVING from the start; the service answers by its name as well.
  // The health service's Shutdown() turns both NOT_SERVING.
  server->GetHealthCheckService()->SetServingStatus(
      v1::Registration::service_full_name(), true);
  return server;
}

int FailToListen(const DaemonConfig& c) {
  return Fail(kExitStartFailure,
              absl::StrCat("cannot listen on ", c.listen,
                           c.tls.enabled()
                               ? " (address in use or not local, or the TLS "
                                 "certificate and key do not match or cannot "
                                 "be parsed?)"
                               : " (address in use or not local?)"));
}

// The start-up lines: budgets and security on stderr, the bound addresses
// on stdout (tests and scripts read "regserved listening on HOST:PORT").
void Announce(const DaemonConfig& c, const ResourceConfig& rc,
              const ServerTransport& transport, const TokenStore* tokens,
              int port, const std::string& metrics_address) {
  std::fprintf(
      stderr,
      "regserved: data_dir %s; RAM budget %s; %zu GPU(s); %d CPU "
      "slot(s); %d to %d threads per stage; default device %s\n",
      c.data_dir.c_str(), FormatBytes(rc.ram_budget_bytes).c_str(),
      rc.gpu_ordinals.size(), rc.cpu_slots, rc.elastix_threads,
      rc.machine_threads,
      std::string(DevicePreferenceName(rc.flags.devices.preference)).c_str());
  const std::string auth =
      tokens != nullptr
          ? absl::StrCat("bearer tokens required (", tokens->size(), " from ",
                         c.auth_tokens, ")")
          : "no authentication (one anonymous principal)";
  std::fprintf(stderr,
               "regserved: transport %s; %s; max message %s, upload %s, "
               "image %lld pixels, %d unfinished job(s) per principal%s\n",
               transport.description.c_str(), auth.c_str(),
               FormatBytes(c.max_message_bytes).c_str(),
               FormatBytes(c.max_upload_bytes).c_str(),
               static_cast<long long>(c.max_image_pixels),
               c.max_jobs_per_principal,
               c.max_jobs_per_principal == 0 ? " (no limit)" : "");
  const std::string& host = c.listen_address.host;
  const bool v6 = host.find(':') != std::string::npos;
  std::printf("regserved listening on %s%s%s:%d\n", v6 ? "[" : "", host.c_str(),
              v6 ? "]" : "", port);
  if (!metrics_address.empty()) {
    std::printf("regserved metrics on %s\n", metrics_address.c_str());
  }
  std::fflush(stdout);
}

struct ReloadableTokens {
  TokenStore* store;  // null: the flag was not given
  const std::string* path;
};

// Takes the blocked `signals` with sigwait until SIGTERM or SIGINT, and
// returns that signal. SIGHUP re-reads every store in `tokens`; a store
// that cannot be re-read keeps its previous tokens.
int WaitForStopSignal(const sigset_t& signals,
                      const std::vector<ReloadableTokens>& tokens) {
  int sig = 0;
  while (true) {
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig != SIGHUP) return sig;
    if (std::none_of(
            tokens.begin(), tokens.end(),
            [](const ReloadableTokens& t) { return t.store != nullptr; })) {
      std::fprintf(stderr,
                   "regserved: SIGHUP received; nothing to reload (no "
                   "--auth_tokens or --metrics_tokens)\n");
      continue;
    }
    for (const ReloadableTokens& t : tokens) {
      if (t.store == nullptr) continue;
      const absl::Status reloaded = t.store->Reload();
      if (reloaded.ok()) {
        std::fprintf(stderr,
                     "regserved: SIGHUP: reloaded %zu token(s) from %s\n",
                     t.store->size(), t.path->c_str());
      } else {
        std::fprintf(stderr,
                     "regserved: SIGHUP: cannot reload %s: %s; keeping the "
                     "previous %zu token(s)\n",
                     t.path->c_str(), std::string(reloaded.message()).c_str(),
                     t.store->size());
      }
    }
  }
}

// The shutdown order: new Submit calls refused and health NOT_SERVING, then
// the jobs stopped (running stages finish or are checkpointed), then the
// open calls get `grace` before they are cancelled.
void Stop(RegistrationService* service, grpc::Server* server,
          JobManager* manager, absl::Duration grace) {
  service->StopAccepting();
  server->GetHealthCheckService()->Shutdown();
  manager->Shutdown();
  server->Shutdown(std::chrono::system_clock::now() +
                   absl::ToChronoSeconds(grace));
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "regserved: the regserve image-registration daemon.\n"
      "  regserved --data_dir=/var/lib/regserve [--listen=127.0.0.1:50051] "
      "[flags]\nSee the README, \"Running the daemon\".");
  absl::ParseCommandLine(argc, argv);
  BoundMallocCaching();  // before any thread: see malloc_policy.h
  const sigset_t signals = BlockSignals();

  // Flags, TLS files and token files: exit 2 before anything starts.
  absl::StatusOr<DaemonConfig> config = DaemonConfigFromFlags();
  if (!config.ok()) return Fail(kExitBadFlags, config.status().message());
  absl::StatusOr<ServerTransport> transport = MakeServerTransport(config->tls);
  if (!transport.ok()) return Fail(kExitBadFlags, transport.status().message());
  absl::StatusOr<std::unique_ptr<TokenStore>> tokens =
      LoadTokens("auth_tokens", config->auth_tokens);
  if (!tokens.ok()) return Fail(kExitBadFlags, tokens.status().message());
  absl::StatusOr<std::unique_ptr<TokenStore>> metrics_tokens =
      LoadTokens("metrics_tokens", config->metrics_tokens);
  if (!metrics_tokens.ok()) {
    return Fail(kExitBadFlags, metrics_tokens.status().message());
  }
  for (const std::string& warning : ExposureWarnings(*config)) {
    std::fprintf(stderr, "regserved: WARNING: %s\n", warning.c_str());
  }

  // The machine's budgets, decided once for the scheduler and the planner.
  std::unique_ptr<HardwareProbe> probe = NewSystemProbe();
  absl::StatusOr<HardwareSnapshot> hw = probe->Probe();
  if (!hw.ok()) {
    return Fail(kExitStartFailure, absl::StrCat("cannot read the hardware: ",
                                                hw.status().message()));
  }
  absl::StatusOr<ResourceConfig> resources =
      MakeResourceConfig(*hw, config->resources);
  if (!resources.ok()) return Fail(kExitBadFlags, resources.status().message());
  ResourceScheduler scheduler(ToSchedulerConfig(*resources), probe.get());

  absl::StatusOr<std::unique_ptr<Metrics>> metrics =
      StartMetrics(config->metrics_listen, metrics_tokens->get());
  if (!metrics.ok()) return Fail(kExitStartFailure, metrics.status().message());
  // Created before the manager: recovery may already finish jobs.
  MetricsObserver observer(metrics->get());
  absl::StatusOr<std::unique_ptr<JobManager>> manager = JobManager::Create(
      ManagerOptions(*config, *resources, &observer), &scheduler, probe.get());
  if (!manager.ok()) return FailToStartManager(manager.status());
  FeedMetricsOnScrape(metrics->get(), &scheduler, manager->get(), probe.get());

  RegistrationService service(
      manager->get(), &scheduler, probe.get(),
      ServiceOptions(*config, &observer, tokens->get()));
  int port = 0;
  std::unique_ptr<grpc::Server> server =
      StartServer(*config, *transport, &service, &port);
  if (server == nullptr) {
    (*manager)->Shutdown();
    return FailToListen(*config);
  }
  Announce(*config, *resources, *transport, tokens->get(), port,
           (*metrics)->address());

  std::thread signal_thread([&] {
    const int sig = WaitForStopSignal(
        signals, {{tokens->get(), &config->auth_tokens},
                  {metrics_tokens->get(), &config->metrics_tokens}});
    std::fprintf(stderr, "regserved: %s received; shutting down\n",
                 sig == SIGINT ? "SIGINT" : "SIGTERM");
    Stop(&service, server.get(), manager->get(), config->shutdown_grace);
  });
  absl::Notification stop_health;
  std::thread health_thread;
  if (!config->fleet_db.empty()) {
    health_thread =
        WatchFleetHealth(server.get(), manager->get(), &stop_health);
  }
  server->Wait();
  signal_thread.join();
  stop_health.Notify();
  if (health_thread.joinable()) health_thread.join();
  service.WaitForCalls();
  (*metrics)->SetScrapeCallback(nullptr);
  scheduler.Shutdown();
  std::fprintf(stderr, "regserved: stopped\n");
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) { return regserve::Main(argc, argv); }
