// Copyright regserve authors.
#include "server/daemon_config.h"

#include <cctype>
#include <cmath>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/common/types.h"

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
ABSL_FLAG(double, gpu_refine_elastix_megapixels, 2.0,
          "When the refinement runs on a GPU after elastix, elastix works on "
          "the registration copy pooled to at most this many megapixels "
          "(the refinement does the fine work at the whole copy). 0: the "
          "registration copy itself.");
ABSL_FLAG(double, gpu_refine_elastix_iterations, 0.5,
          "When the refinement runs on a GPU after elastix: elastix's "
          "preset iterations times this (0 < x <= 100).");
ABSL_FLAG(bool, gpu_refine_elastix_affine, false,
          "When the refinement runs on a GPU after elastix: run elastix's "
          "affine stage before its B-spline even after an initial alignment "
          "was found.");
ABSL_FLAG(double, correction_elastix_megapixels, 0.5,
          "When no GPU refines and the shift correction follows elastix "
          "(--shift_correction_passes > 0): elastix works on the "
          "registration copy pooled to at most this many megapixels. 0: the "
          "registration copy itself.");
ABSL_FLAG(double, correction_elastix_iterations, 0.25,
          "When no GPU refines and the shift correction follows elastix: "
          "elastix's preset iterations times this (0 < x <= 100).");
ABSL_FLAG(bool, correction_elastix_affine, true,
          "When no GPU refines and the shift correction follows elastix: run "
          "elastix's affine stage before its B-spline even after an initial "
          "alignment was found.");
ABSL_FLAG(int, shift_correction_passes, 2,
          "Passes of the shift correction after registration (the quality "
          "map's measured patch shifts, smoothed and composed with the "
          "field; each kept only when the estimate improves), before the "
          "LibTorch refinement. 0: none. Jobs with refine=off have none.");
ABSL_FLAG(int, gpu_refine_correction_passes, 1,
          "Passes of the shift correction after a refinement on the GPU "
          "(then 2 on patches of half the size), each kept only when the "
          "estimate improves. 0: none.");
ABSL_FLAG(int, max_queue, 64,
          "Jobs not yet finished (uploading, queued, running) before Submit "
          "answers RESOURCE_EXHAUSTED.");
ABSL_FLAG(std::string, input_root, "",
          "Directory server-side input paths must lie under. Empty: clients "
          "can only upload images.");
ABSL_FLAG(std::string, output_root, "",
          "Directory that jobs' server-side output paths (spec.output_path, "
          "regctl submit --output-path) must lie under. Empty: results are "
          "only streamed.");
ABSL_FLAG(int, elastix_threads, 0,
          "The least CPU threads a stage (decode, elastix, CPU warp, result "
          "compression) gets; a stage alone on the machine gets every core, "
          "shared with the stages running beside it. 0: min(4, CPU cores).");
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
          "Streaming calls (Submit, Watch) open at once (they share the "
          "--stream_threads). One more gets RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, stream_threads, 8,
          "Threads that pump the event streams of open Watch and Submit "
          "calls (at least 1).");
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
ABSL_FLAG(std::string, fleet_db, "",
          "Fleet mode (README, \"Several hosts\"): libpq connection string "
          "of the PostgreSQL database every replica shares, e.g. "
          "postgresql://regserve@db/regserve; --data_dir must then be a "
          "volume every replica mounts. Empty: a single host.");
ABSL_FLAG(std::string, fleet_replica, "",
          "Fleet mode: this replica's unique name (default: host name and "
          "process id).");
ABSL_FLAG(std::string, fleet_advertise, "",
          "Fleet mode: the address other replicas and GetServerInfo show "
          "for this one (default: --listen).");
ABSL_FLAG(absl::Duration, fleet_lease, absl::Seconds(10),
          "Fleet mode: a replica that stops renewing loses its jobs to the "
          "queue after this long.");
ABSL_FLAG(int, fleet_jobs_per_replica, 2,
          "Fleet mode: jobs this replica claims at once.");
ABSL_FLAG(std::string, elastix, "elastix", "The elastix program.");
ABSL_FLAG(std::string, transformix, "transformix", "The transformix program.");

namespace regserve {
namespace {

constexpr uint64_t kMinMessageBytes = 2u << 20;  // 1 MiB chunks + framing
constexpr uint64_t kMaxMessageBytes = 1u << 30;
constexpr char kMessageSizeHint[] =
    "--max_message_size: give a size from 2M to 1G (clients send 1 MiB "
    "upload chunks)";

// --`flag` parsed as a byte size.
absl::StatusOr<uint64_t> ByteSizeFlag(const char* flag,
                                      const std::string& text) {
  absl::StatusOr<uint64_t> bytes = ParseByteSize(text);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": ", bytes.status().message()));
  }
  return *bytes;
}

// The JobManager::Options fields that the core's messages name, and the flag
// each one comes from.
struct FieldFlag {
  const char* field;
  const char* flag;
};
constexpr FieldFlag kFieldFlags[] = {
    {"data_dir", "data_dir"},
    {"replica_name", "fleet_replica"},
    {"fleet_lease", "fleet_lease"},
    {"fleet_jobs_per_replica", "fleet_jobs_per_replica"},
    {"input_root", "input_root"},
    {"output_root", "output_root"},
    {"max_queue", "max_queue"},
    {"max_jobs_per_principal", "max_jobs_per_principal"},
    {"elastix_threads", "elastix_threads"},
    {"stream_tile_size", "stream_tile_size"},
    {"retention", "retention"},
    {"registration_timeout", "registration_timeout"},
    {"max_upload_bytes", "max_upload"},
    {"max_pixels", "max_image_pixels"},
    {"default_max_registration_megapixels", "max_registration_megapixels"},
};

bool IsWordChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
}

}  // namespace

absl::StatusOr<DaemonConfig> DaemonConfigFromFlags() {
  DaemonConfig c;
  c.listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<HostPort> listen = SplitHostPort(c.listen);
  if (!listen.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen: ", listen.status().message()));
  }
  c.listen_address = *std::move(listen);
  c.tls.cert = absl::GetFlag(FLAGS_tls_cert);
  c.tls.key = absl::GetFlag(FLAGS_tls_key);
  c.tls.client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  c.tls.reload_interval = absl::GetFlag(FLAGS_tls_reload_interval);
  c.auth_tokens = absl::GetFlag(FLAGS_auth_tokens);
  c.insecure_listen_any = absl::GetFlag(FLAGS_insecure_listen_any);
  absl::StatusOr<uint64_t> max_message =
      ParseByteSize(absl::GetFlag(FLAGS_max_message_size));
  if (!max_message.ok()) return absl::InvalidArgumentError(kMessageSizeHint);
  c.max_message_bytes = *max_message;
  c.max_streams = absl::GetFlag(FLAGS_max_streams);
  c.stream_threads = absl::GetFlag(FLAGS_stream_threads);
  c.upload_idle_timeout = absl::GetFlag(FLAGS_upload_idle_timeout);
  c.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  c.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  c.metrics_tokens = absl::GetFlag(FLAGS_metrics_tokens);

  REGSERVE_ASSIGN_OR_RETURN(
      c.resources.ram_bytes,
      ByteSizeFlag("ram_budget", absl::GetFlag(FLAGS_ram_budget)));
  REGSERVE_ASSIGN_OR_RETURN(
      c.resources.vram_bytes,
      ByteSizeFlag("vram_budget", absl::GetFlag(FLAGS_vram_budget)));
  absl::StatusOr<DeviceSelection> devices =
      ParseDeviceSelection(absl::GetFlag(FLAGS_device));
  if (!devices.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device: ", devices.status().message()));
  }
  c.resources.devices = *std::move(devices);
  c.resources.elastix_threads = absl::GetFlag(FLAGS_elastix_threads);
  c.resources.cpu_slots = absl::GetFlag(FLAGS_cpu_slots);

  c.data_dir = absl::GetFlag(FLAGS_data_dir);
  c.input_root = absl::GetFlag(FLAGS_input_root);
  c.output_root = absl::GetFlag(FLAGS_output_root);
  c.max_queue = absl::GetFlag(FLAGS_max_queue);
  c.max_jobs_per_principal = absl::GetFlag(FLAGS_max_jobs_per_principal);
  c.max_image_pixels = absl::GetFlag(FLAGS_max_image_pixels);
  REGSERVE_ASSIGN_OR_RETURN(
      c.max_upload_bytes,
      ByteSizeFlag("max_upload", absl::GetFlag(FLAGS_max_upload)));
  c.max_registration_megapixels =
      absl::GetFlag(FLAGS_max_registration_megapixels);
  c.elastix_before_gpu_refine.max_megapixels =
      absl::GetFlag(FLAGS_gpu_refine_elastix_megapixels);
  c.elastix_before_gpu_refine.iteration_scale =
      absl::GetFlag(FLAGS_gpu_refine_elastix_iterations);
  c.elastix_before_gpu_refine.linear_stage =
      absl::GetFlag(FLAGS_gpu_refine_elastix_affine);
  c.shift_correction_passes = absl::GetFlag(FLAGS_shift_correction_passes);
  c.gpu_refine_correction_passes =
      absl::GetFlag(FLAGS_gpu_refine_correction_passes);
  c.elastix_before_cpu_correction.max_megapixels =
      absl::GetFlag(FLAGS_correction_elastix_megapixels);
  c.elastix_before_cpu_correction.iteration_scale =
      absl::GetFlag(FLAGS_correction_elastix_iterations);
  c.elastix_before_cpu_correction.linear_stage =
      absl::GetFlag(FLAGS_correction_elastix_affine);
  c.stream_tile_size = absl::GetFlag(FLAGS_stream_tile_size);
  c.retention = absl::GetFlag(FLAGS_retention);
  c.registration_timeout = absl::GetFlag(FLAGS_registration_timeout);
  c.elastix = absl::GetFlag(FLAGS_elastix);
  c.transformix = absl::GetFlag(FLAGS_transformix);
  c.fleet_db = absl::GetFlag(FLAGS_fleet_db);
  c.fleet_replica = absl::GetFlag(FLAGS_fleet_replica);
  c.fleet_advertise = absl::GetFlag(FLAGS_fleet_advertise);
  c.fleet_lease = absl::GetFlag(FLAGS_fleet_lease);
  c.fleet_jobs_per_replica = absl::GetFlag(FLAGS_fleet_jobs_per_replica);

  REGSERVE_RETURN_IF_ERROR(ValidateDaemonConfig(c));
  return c;
}

namespace {

// --<prefix>_elastix_megapixels and _iterations.
absl::Status ValidateSchedule(const ElastixSchedule& e, const char* prefix) {
  if (!(e.max_megapixels >= 0) || !std::isfinite(e.max_megapixels)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", prefix,
                     "_elastix_megapixels must be 0 (the registration copy) "
                     "or positive"));
  }
  if (!(e.iteration_scale > 0) || !(e.iteration_scale <= 100)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", prefix,
                     "_elastix_iterations must be more than 0 and at most "
                     "100"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateDaemonConfig(const DaemonConfig& c) {
  if (c.max_message_bytes < kMinMessageBytes ||
      c.max_message_bytes > kMaxMessageBytes) {
    return absl::InvalidArgumentError(kMessageSizeHint);
  }
  REGSERVE_RETURN_IF_ERROR(
      ValidateSchedule(c.elastix_before_gpu_refine, "gpu_refine"));
  REGSERVE_RETURN_IF_ERROR(
      ValidateSchedule(c.elastix_before_cpu_correction, "correction"));
  if (c.shift_correction_passes < 0 || c.shift_correction_passes > 20) {
    return absl::InvalidArgumentError(
        "--shift_correction_passes must be 0 (none) to 20");
  }
  if (c.gpu_refine_correction_passes < 0 ||
      c.gpu_refine_correction_passes > 20) {
    return absl::InvalidArgumentError(
        "--gpu_refine_correction_passes must be 0 (none) to 20");
  }
  if (c.max_streams < 1) {
    return absl::InvalidArgumentError("--max_streams must be at least 1");
  }
  if (c.stream_threads < 1) {
    return absl::InvalidArgumentError("--stream_threads must be at least 1");
  }
  if (c.upload_idle_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "--upload_idle_timeout must be positive (e.g. 5m)");
  }
  if (!c.metrics_tokens.empty() && c.metrics_listen.empty()) {
    return absl::InvalidArgumentError(
        "--metrics_tokens guards the metrics endpoint; give "
        "--metrics_listen HOST:PORT as well");
  }
  if (!IsLoopbackHost(c.listen_address.host) && !c.tls.enabled() &&
      c.auth_tokens.empty() && !c.insecure_listen_any) {
    return absl::InvalidArgumentError(absl::StrCat(
        "refusing to listen on ", c.listen,
        " without TLS and without --auth_tokens: anyone who can reach it "
        "could submit, read and cancel jobs. Listen on a loopback address "
        "(--listen=127.0.0.1:50051), turn on TLS (--tls_cert/--tls_key) "
        "and/or tokens (--auth_tokens), or accept the risk on a trusted "
        "network with --insecure_listen_any"));
  }
  return absl::OkStatus();
}

std::vector<std::string> ExposureWarnings(const DaemonConfig& c) {
  std::vector<std::string> warnings;
  const bool tls = c.tls.enabled();
  const bool tokens = !c.auth_tokens.empty();
  if (!IsLoopbackHost(c.listen_address.host)) {
    if (!tls && !tokens) {
      warnings.push_back(absl::StrCat(
          "--insecure_listen_any: listening on ", c.listen,
          " WITHOUT TLS AND WITHOUT AUTHENTICATION; anyone who can reach it "
          "can submit, read and cancel any job"));
    } else if (!tls) {
      warnings.push_back(absl::StrCat(
          "listening on ", c.listen,
          " without TLS: bearer tokens and images cross the network in "
          "clear text; add --tls_cert/--tls_key"));
    } else if (!tokens && c.tls.client_ca.empty()) {
      warnings.push_back(absl::StrCat(
          "listening on ", c.listen,
          " with TLS but no --auth_tokens or --tls_client_ca: any client "
          "that reaches it can submit, read and cancel jobs"));
    }
  }
  if (!c.metrics_listen.empty() && c.metrics_tokens.empty()) {
    absl::StatusOr<HostPort> where = SplitHostPort(c.metrics_listen);
    if (where.ok() && !IsLoopbackHost(where->host)) {
      warnings.push_back(absl::StrCat(
          "metrics on ", c.metrics_listen,
          " without --metrics_tokens: anyone who can reach it can read the "
          "job counts and memory figures"));
    }
  }
  return warnings;
}

std::string FlagNamesInCoreMessage(absl::string_view message) {
  std::string out;
  char quote = 0;  // the quote character we are inside, or 0
  for (size_t i = 0; i < message.size();) {
    const char ch = message[i];
    if (ch == '\'' || ch == '"') {
      if (quote == 0) {
        quote = ch;
      } else if (quote == ch) {
        quote = 0;
      }
    }
    if (quote != 0 || !IsWordChar(ch)) {
      out.push_back(ch);
      ++i;
      continue;
    }
    size_t end = i;
    while (end < message.size() && IsWordChar(message[end])) ++end;
    const absl::string_view word = message.substr(i, end - i);
    const char* flag = nullptr;
    if (i == 0 || message[i - 1] != '-') {
      for (const FieldFlag& f : kFieldFlags) {
        if (word == f.field) flag = f.flag;
      }
    }
    if (flag != nullptr) {
      absl::StrAppend(&out, "--", flag);
    } else {
      absl::StrAppend(&out, word);
    }
    i = end;
  }
  return out;
}

}  // namespace regserve
