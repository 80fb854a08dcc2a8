// Copyright regserve authors.
//
// regserved: the regserve daemon. Wires the hardware probe, the resource
// scheduler and the job manager to the gRPC service, then waits for signals
// (blocked in every thread and taken by sigwait in a dedicated one). SIGHUP
// re-reads the --auth_tokens file (on error the previous tokens stay).
// SIGTERM or SIGINT stop it: it stops taking jobs, shuts the job manager down
// (running stages finish or are checkpointed for the next start), shuts the
// gRPC server down with a deadline, and exits 0.
//
// Security: --tls_cert/--tls_key turn TLS on, --tls_client_ca also requires
// client certificates; --auth_tokens requires a bearer token on every call
// of the Registration service (health and reflection stay open). With
// neither TLS nor tokens it refuses non-loopback --listen addresses unless
// --insecure_listen_any is given.
//
// Exit codes: 0 after a clean shutdown, 1 when it cannot start (data_dir,
// address in use, ...), 2 for bad flags (including unreadable or malformed
// TLS and token files, and an unprotected non-loopback --listen).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/auth/token_store.h"
#include "core/common/types.h"
#include "core/hardware/hardware.h"
#include "core/jobs/job_manager.h"
#include "core/plan/plan.h"
#include "core/scheduler/scheduler.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/flag_util.h"
#include "server/metrics/metrics.h"
#include "server/registration_service.h"
#include "server/tls.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "Address to listen on, HOST:PORT. Port 0 picks a free port; the "
          "chosen one is printed as \"regserved listening on HOST:PORT\".");
ABSL_FLAG(std::string, data_dir, "",
          "Directory for jobs, inputs and results (required; created if "
          "missing). Jobs found there are recovered at start.");
ABSL_FLAG(std::string, ram_budget, "",
          "RAM the jobs may reserve, in bytes with an optional K/M/G/T "
          "suffix (e.g. 8G). Empty or 0: 80% of the available RAM.");
ABSL_FLAG(std::string, vram_budget, "",
          "VRAM per GPU the warps may reserve (e.g. 60G). Empty or 0: 90% of "
          "each GPU's free VRAM.");
ABSL_FLAG(std::string, device, "auto",
          "Default warp device: auto (CUDA when available and the plan fits), "
          "cpu, cuda (every visible GPU) or cuda:0,2 (those CUDA ordinals). "
          "Jobs may ask for cpu or cuda.");
ABSL_FLAG(double, max_registration_megapixels, 20.0,
          "Default upper bound for the registration copy in megapixels; the "
          "plan may pick less to fit the budgets.");
ABSL_FLAG(int, max_queue, 64,
          "Jobs not yet finished (uploading, queued, running) before Submit "
          "answers RESOURCE_EXHAUSTED.");
ABSL_FLAG(std::string, input_root, "",
          "Directory server-side input paths must lie under. Empty: clients "
          "can only upload images.");
ABSL_FLAG(int, elastix_threads, 0,
          "Threads per elastix process. 0: min(4, CPU cores).");
ABSL_FLAG(int, cpu_slots, 0,
          "Concurrent CPU stages (decode, registration). 0: CPU cores / "
          "elastix_threads, at least 1.");
ABSL_FLAG(absl::Duration, retention, absl::Hours(24 * 7),
          "How long finished jobs and their results are kept (e.g. 168h).");
ABSL_FLAG(absl::Duration, registration_timeout, absl::Hours(2),
          "Longest time one registration may take before it fails with "
          "DEADLINE_EXCEEDED.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "On SIGTERM, how long open calls get to finish after the job "
          "manager has stopped, before they are cancelled.");
ABSL_FLAG(std::string, max_upload, "8G",
          "Largest accepted upload per image, in bytes (K/M/G/T suffixes).");
ABSL_FLAG(int64_t, max_image_pixels, 1000ll * 1000 * 1000,
          "Largest accepted image, in pixels (width x height), checked when "
          "the image header is read, before decoding.");
ABSL_FLAG(int, max_jobs_per_principal, 0,
          "Unfinished jobs (uploading, queued, running) one principal may "
          "have before Submit answers RESOURCE_EXHAUSTED. 0: no limit beyond "
          "--max_queue.");
ABSL_FLAG(int, max_streams, 1000,
          "Streaming calls (Submit, Watch) open at once; each holds a "
          "thread. One more gets RESOURCE_EXHAUSTED.");
ABSL_FLAG(absl::Duration, upload_idle_timeout, absl::Minutes(5),
          "A Submit call that sends nothing for this long (before its spec or "
          "between upload chunks) is cancelled and its job failed "
          "(DEADLINE_EXCEEDED), so a stalled client cannot hold a queue slot.");
ABSL_FLAG(std::string, max_message_size, "8M",
          "Largest gRPC message the server accepts (an upload chunk, or the "
          "JobSpec with its elastix parameter files); larger ones fail with "
          "RESOURCE_EXHAUSTED. At least 2M: clients send 1 MiB chunks.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the server. With --tls_key, the server "
          "speaks TLS only.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates: clients must present a certificate signed by "
          "one of them (mutual TLS). Needs --tls_cert and --tls_key.");
ABSL_FLAG(absl::Duration, tls_reload_interval, absl::Minutes(1),
          "How often the --tls_* files are re-read, so that a renewed "
          "certificate (and key, and client CA bundle) is used for new "
          "connections without a restart; replace the key before the "
          "certificate (a key and certificate that do not match are not "
          "taken up). 0: read them once, at start.");
ABSL_FLAG(std::string, auth_tokens, "",
          "File of \"<principal> <token>\" lines: every Registration call "
          "must send \"authorization: Bearer <token>\" and sees only its "
          "principal's jobs. Re-read on SIGHUP. Empty: no authentication, "
          "every caller is the same anonymous principal.");
ABSL_FLAG(bool, insecure_listen_any, false,
          "Allow a non-loopback --listen address without TLS and without "
          "--auth_tokens (anyone who reaches it can submit, read and cancel "
          "any job). Only for trusted networks, e.g. a container whose port "
          "is published on loopback.");
ABSL_FLAG(int64_t, stream_tile_size, 512,
          "Edge of the result tiles streamed to clients (and of the stored "
          "TIFF's tiles), in pixels.");
ABSL_FLAG(std::string, metrics_tokens, "",
          "FILE of \"<user> <token>\" lines (the --auth_tokens format) that "
          "/metrics then requires as HTTP basic auth (Prometheus: basic_auth "
          "with username and password_file). Keep these apart from the gRPC "
          "tokens: the endpoint has no TLS. Re-read on SIGHUP.");
ABSL_FLAG(std::string, metrics_listen, "",
          "HOST:PORT for the Prometheus endpoint (/metrics). Port 0 picks a "
          "free port, printed as \"regserved metrics on HOST:PORT\". Empty: "
          "no endpoint.");
ABSL_FLAG(std::string, elastix, "elastix", "The elastix program.");
ABSL_FLAG(std::string, transformix, "transformix", "The transformix program.");

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

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "regserved: %s\n", message.c_str());
  return code;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "regserved: the regserve image-registration daemon.\n"
      "  regserved --data_dir=/var/lib/regserve [--listen=127.0.0.1:50051] "
      "[flags]\nSee the README, \"Running the daemon\".");
  absl::ParseCommandLine(argc, argv);

  // Block the shutdown signals before any thread starts, so that every
  // thread inherits the mask and only the sigwait thread takes them.
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

  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  if (data_dir.empty()) {
    return Fail(kExitBadFlags, "--data_dir is required (a writable directory)");
  }
  absl::StatusOr<HostPort> listen = SplitHostPort(absl::GetFlag(FLAGS_listen));
  if (!listen.ok())
    return Fail(kExitBadFlags, std::string(listen.status().message()));
  absl::StatusOr<uint64_t> ram_budget =
      ParseByteSize(absl::GetFlag(FLAGS_ram_budget));
  if (!ram_budget.ok()) {
    return Fail(kExitBadFlags,
                absl::StrCat("--ram_budget: ", ram_budget.status().message()));
  }
  absl::StatusOr<uint64_t> vram_budget =
      ParseByteSize(absl::GetFlag(FLAGS_vram_budget));
  if (!vram_budget.ok()) {
    return Fail(kExitBadFlags, absl::StrCat("--vram_budget: ",
                                            vram_budget.status().message()));
  }
  absl::StatusOr<uint64_t> max_upload =
      ParseByteSize(absl::GetFlag(FLAGS_max_upload));
  if (!max_upload.ok() || *max_upload == 0) {
    return Fail(kExitBadFlags, "--max_upload: give a positive size such as 8G");
  }
  absl::StatusOr<DeviceSelection> selection =
      ParseDeviceSelection(absl::GetFlag(FLAGS_device));
  if (!selection.ok()) {
    return Fail(kExitBadFlags,
                absl::StrCat("--device: ", selection.status().message()));
  }
  const DevicePreference* device = &selection->preference;
  const int64_t tile = absl::GetFlag(FLAGS_stream_tile_size);
  if (tile < 16 || tile > 2048 || tile % 16 != 0) {
    return Fail(kExitBadFlags,
                "--stream_tile_size must be a multiple of 16 in [16, 2048]");
  }
  if (absl::GetFlag(FLAGS_max_queue) < 1) {
    return Fail(kExitBadFlags, "--max_queue must be at least 1");
  }
  if (absl::GetFlag(FLAGS_max_image_pixels) < 1) {
    return Fail(kExitBadFlags, "--max_image_pixels must be at least 1");
  }
  if (absl::GetFlag(FLAGS_max_jobs_per_principal) < 0) {
    return Fail(kExitBadFlags,
                "--max_jobs_per_principal must be >= 0 (0 = no limit)");
  }
  if (absl::GetFlag(FLAGS_max_streams) < 1) {
    return Fail(kExitBadFlags, "--max_streams must be at least 1");
  }
  if (absl::GetFlag(FLAGS_upload_idle_timeout) <= absl::ZeroDuration()) {
    return Fail(kExitBadFlags,
                "--upload_idle_timeout must be positive (e.g. 5m)");
  }
  absl::StatusOr<uint64_t> max_message =
      ParseByteSize(absl::GetFlag(FLAGS_max_message_size));
  if (!max_message.ok() || *max_message < (2u << 20) ||
      *max_message > (1u << 30)) {
    return Fail(kExitBadFlags,
                "--max_message_size: give a size from 2M to 1G (clients send "
                "1 MiB upload chunks)");
  }

  // Transport security and authentication.
  TlsFiles tls_files;
  tls_files.cert = absl::GetFlag(FLAGS_tls_cert);
  tls_files.key = absl::GetFlag(FLAGS_tls_key);
  tls_files.client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  tls_files.reload_interval = absl::GetFlag(FLAGS_tls_reload_interval);
  absl::StatusOr<ServerTransport> transport = MakeServerTransport(tls_files);
  if (!transport.ok()) {
    return Fail(kExitBadFlags, std::string(transport.status().message()));
  }
  std::unique_ptr<TokenStore> tokens;
  const std::string tokens_path = absl::GetFlag(FLAGS_auth_tokens);
  if (!tokens_path.empty()) {
    absl::StatusOr<std::unique_ptr<TokenStore>> loaded =
        TokenStore::Load(tokens_path);
    if (!loaded.ok()) {
      return Fail(kExitBadFlags,
                  absl::StrCat("--auth_tokens: ", loaded.status().message()));
    }
    tokens = *std::move(loaded);
    WarnIfOthersCanRead("auth_tokens", tokens_path);
  }
  const bool tls = !absl::GetFlag(FLAGS_tls_cert).empty();
  const bool client_certs = !absl::GetFlag(FLAGS_tls_client_ca).empty();
  if (!IsLoopbackHost(listen->host)) {
    if (!tls && tokens == nullptr) {
      if (!absl::GetFlag(FLAGS_insecure_listen_any)) {
        return Fail(
            kExitBadFlags,
            absl::StrCat(
                "refusing to listen on ", absl::GetFlag(FLAGS_listen),
                " without TLS and without --auth_tokens: anyone who can "
                "reach it could submit, read and cancel jobs. Listen on a "
                "loopback address (--listen=127.0.0.1:50051), turn on TLS "
                "(--tls_cert/--tls_key) and/or tokens (--auth_tokens), or "
                "accept the risk on a trusted network with "
                "--insecure_listen_any"));
      }
      std::fprintf(stderr,
                   "regserved: WARNING: --insecure_listen_any: listening on "
                   "%s WITHOUT TLS AND WITHOUT AUTHENTICATION; anyone who "
                   "can reach it can submit, read and cancel any job\n",
                   absl::GetFlag(FLAGS_listen).c_str());
    } else if (!tls) {
      std::fprintf(stderr,
                   "regserved: WARNING: listening on %s without TLS: bearer "
                   "tokens and images cross the network in clear text; add "
                   "--tls_cert/--tls_key\n",
                   absl::GetFlag(FLAGS_listen).c_str());
    } else if (tokens == nullptr && !client_certs) {
      std::fprintf(stderr,
                   "regserved: WARNING: listening on %s with TLS but no "
                   "--auth_tokens or --tls_client_ca: any client that "
                   "reaches it can submit, read and cancel jobs\n",
                   absl::GetFlag(FLAGS_listen).c_str());
    }
  }

  std::unique_ptr<HardwareProbe> probe = NewSystemProbe();
  absl::StatusOr<HardwareSnapshot> hw = probe->Probe();
  if (!hw.ok()) {
    return Fail(kExitStartFailure, absl::StrCat("cannot read the hardware: ",
                                                hw.status().message()));
  }
  BudgetOverrides overrides;
  overrides.ram_bytes = *ram_budget;
  overrides.vram_bytes = *vram_budget;
  const Budgets budgets = BudgetsFromHardware(*hw, overrides);

  const int cores = std::max(1, hw->cpu_cores);
  int elastix_threads = absl::GetFlag(FLAGS_elastix_threads);
  if (elastix_threads <= 0) elastix_threads = std::min(4, cores);
  int cpu_slots = absl::GetFlag(FLAGS_cpu_slots);
  if (cpu_slots <= 0) cpu_slots = std::max(1, cores / elastix_threads);

  SchedulerConfig sched;
  sched.ram_budget_bytes = budgets.ram_bytes;
  sched.cpu_slots = cpu_slots;
  if (*device != DevicePreference::kCpu) {
    for (const GpuInfo& gpu : hw->gpus) {
      if (!selection->gpus.empty() &&
          std::find(selection->gpus.begin(), selection->gpus.end(),
                    gpu.index) == selection->gpus.end()) {
        continue;
      }
      sched.gpu_ordinals.push_back(gpu.index);
      sched.vram_budget_bytes.push_back(
          *vram_budget > 0 ? *vram_budget
                           : static_cast<uint64_t>(gpu.vram_free_bytes * 0.9));
    }
  }
  ResourceScheduler scheduler(sched, probe.get());

  Metrics::Options metrics_opts;
  metrics_opts.listen = absl::GetFlag(FLAGS_metrics_listen);
  std::unique_ptr<TokenStore> metrics_tokens;
  const std::string metrics_tokens_path = absl::GetFlag(FLAGS_metrics_tokens);
  if (!metrics_tokens_path.empty()) {
    if (metrics_opts.listen.empty()) {
      return Fail(kExitBadFlags,
                  "--metrics_tokens guards the metrics endpoint; give "
                  "--metrics_listen HOST:PORT as well");
    }
    absl::StatusOr<std::unique_ptr<TokenStore>> loaded =
        TokenStore::Load(metrics_tokens_path);
    if (!loaded.ok()) {
      return Fail(kExitBadFlags, absl::StrCat("--metrics_tokens: ",
                                              loaded.status().message()));
    }
    metrics_tokens = *std::move(loaded);
    WarnIfOthersCanRead("metrics_tokens", metrics_tokens_path);
    const TokenStore* store = metrics_tokens.get();  // outlives the Metrics
    metrics_opts.authorize = [store](const std::string& user,
                                     const std::string& password) {
      absl::StatusOr<std::string> who =
          store->Authenticate(absl::StrCat("Bearer ", password));
      return who.ok() && *who == user;
    };
  } else if (!metrics_opts.listen.empty()) {
    absl::StatusOr<HostPort> where = SplitHostPort(metrics_opts.listen);
    if (where.ok() && !IsLoopbackHost(where->host)) {
      std::fprintf(stderr,
                   "regserved: WARNING: metrics on %s without "
                   "--metrics_tokens: "
                   "anyone who can reach it can read the job counts and "
                   "memory figures\n",
                   metrics_opts.listen.c_str());
    }
  }
  absl::StatusOr<std::unique_ptr<Metrics>> metrics =
      Metrics::Create(metrics_opts);
  if (!metrics.ok()) {
    return Fail(kExitStartFailure,
                absl::StrCat("--metrics_listen: ", metrics.status().message()));
  }
  // Created before the manager: recovery may already finish jobs.
  MetricsObserver observer(metrics->get());

  JobManager::Options opts;
  opts.observer = &observer;
  opts.data_dir = data_dir;
  opts.input_root = absl::GetFlag(FLAGS_input_root);
  opts.max_queue = absl::GetFlag(FLAGS_max_queue);
  opts.max_jobs_per_principal = absl::GetFlag(FLAGS_max_jobs_per_principal);
  opts.max_pixels = absl::GetFlag(FLAGS_max_image_pixels);
  opts.default_max_registration_megapixels =
      absl::GetFlag(FLAGS_max_registration_megapixels);
  opts.device = *device;
  opts.budget_overrides = overrides;
  opts.elastix_threads = elastix_threads;
  opts.elastix.elastix_path = absl::GetFlag(FLAGS_elastix);
  opts.elastix.transformix_path = absl::GetFlag(FLAGS_transformix);
  opts.registration_timeout = absl::GetFlag(FLAGS_registration_timeout);
  opts.retention = absl::GetFlag(FLAGS_retention);
  opts.stream_tile_size = tile;
  opts.max_upload_bytes = *max_upload;
  absl::StatusOr<std::unique_ptr<JobManager>> manager =
      JobManager::Create(opts, &scheduler, probe.get());
  if (!manager.ok()) {
    return Fail(kExitStartFailure,
                absl::StrCat("cannot start the job manager: ",
                             manager.status().message()));
  }

  // A tile of float32 RGBA at the stream tile size, plus headroom.
  const int64_t max_send =
      std::max<int64_t>(16 << 20, tile * tile * 16 + (1 << 20));
  const int max_receive = static_cast<int>(*max_message);
  JobManager* const manager_ptr = manager->get();
  HardwareProbe* const probe_ptr = probe.get();
  const std::vector<int> gpu_ordinals = sched.gpu_ordinals;
  (*metrics)->SetScrapeCallback(
      [&scheduler, manager_ptr, probe_ptr, gpu_ordinals, m = metrics->get()] {
        m->SetQueueLength(manager_ptr->GetStats().queued);
        m->UpdateResources(scheduler.Stats(), probe_ptr->Probe(), gpu_ordinals);
      });
  RegistrationService::Options service_opts;
  service_opts.observer = &observer;
  service_opts.max_message_bytes = max_receive;
  service_opts.version = REGSERVE_VERSION;
  service_opts.tokens = tokens.get();
  service_opts.max_streams = absl::GetFlag(FLAGS_max_streams);
  service_opts.upload_idle_timeout = absl::GetFlag(FLAGS_upload_idle_timeout);
  RegistrationService service(manager->get(), &scheduler, probe.get(),
                              service_opts);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), transport->credentials,
                           &port);
  builder.SetMaxReceiveMessageSize(max_receive);
  builder.SetMaxSendMessageSize(static_cast<int>(max_send));
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    (*manager)->Shutdown();
    return Fail(kExitStartFailure,
                absl::StrCat("cannot listen on ", absl::GetFlag(FLAGS_listen),
                             tls ? " (address in use or not local, or the "
                                   "TLS certificate and key do not match or "
                                   "cannot be parsed?)"
                                 : " (address in use or not local?)"));
  }
  std::fprintf(stderr,
               "regserved: data_dir %s; RAM budget %s; %zu GPU(s); %d CPU "
               "slot(s) x %d elastix thread(s); default device %s\n",
               data_dir.c_str(), FormatBytes(budgets.ram_bytes).c_str(),
               sched.vram_budget_bytes.size(), cpu_slots, elastix_threads,
               std::string(DevicePreferenceName(*device)).c_str());
  std::fprintf(
      stderr,
      "regserved: transport %s; %s; max message %s, upload %s, "
      "image %lld pixels, %d unfinished job(s) per principal%s\n",
      transport->description.c_str(),
      tokens != nullptr
          ? absl::StrCat("bearer tokens required (", tokens->size(), " from ",
                         tokens_path, ")")
                .c_str()
          : "no authentication (one anonymous principal)",
      FormatBytes(*max_message).c_str(), FormatBytes(*max_upload).c_str(),
      static_cast<long long>(opts.max_pixels), opts.max_jobs_per_principal,
      opts.max_jobs_per_principal == 0 ? " (no limit)" : "");
  const bool v6 = listen->host.find(':') != std::string::npos;
  std::printf("regserved listening on %s%s%s:%d\n", v6 ? "[" : "",
              listen->host.c_str(), v6 ? "]" : "", port);
  if (!(*metrics)->address().empty()) {
    std::printf("regserved metrics on %s\n", (*metrics)->address().c_str());
  }
  std::fflush(stdout);

  const absl::Duration grace = absl::GetFlag(FLAGS_shutdown_grace);
  std::thread signal_thread([&] {
    int sig = 0;
    while (true) {
      if (sigwait(&signals, &sig) != 0) continue;
      if (sig != SIGHUP) break;
      if (tokens == nullptr && metrics_tokens == nullptr) {
        std::fprintf(stderr,
                     "regserved: SIGHUP received; nothing to reload (no "
                     "--auth_tokens or --metrics_tokens)\n");
        continue;
      }
      for (const auto& [store, path] :
           {std::make_pair(tokens.get(), &tokens_path),
            std::make_pair(metrics_tokens.get(), &metrics_tokens_path)}) {
        if (store == nullptr) continue;
        const absl::Status reloaded = store->Reload();
        if (reloaded.ok()) {
          std::fprintf(stderr,
                       "regserved: SIGHUP: reloaded %zu token(s) from %s\n",
                       store->size(), path->c_str());
        } else {
          std::fprintf(stderr,
                       "regserved: SIGHUP: cannot reload %s: %s; keeping the "
                       "previous %zu token(s)\n",
                       path->c_str(), std::string(reloaded.message()).c_str(),
                       store->size());
        }
      }
    }
    std::fprintf(stderr, "regserved: %s received; shutting down\n",
                 sig == SIGINT ? "SIGINT" : "SIGTERM");
    service.StopAccepting();
    server->GetHealthCheckService()->Shutdown();
    (*manager)->Shutdown();
    server->Shutdown(std::chrono::system_clock::now() +
                     absl::ToChronoSeconds(grace));
  });
  server->Wait();
  signal_thread.join();
  service.WaitForCalls();
  (*metrics)->SetScrapeCallback(nullptr);
  scheduler.Shutdown();
  std::fprintf(stderr, "regserved: stopped\n");
  return 0;
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) { return regserve::Main(argc, argv); }
