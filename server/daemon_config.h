// Copyright regserve authors.
//
// regserved's flags, parsed into one value. This file defines the daemon's
// flags (ABSL_FLAG); DaemonConfigFromFlags reads them after
// absl::ParseCommandLine.
//
//   absl::ParseCommandLine(argc, argv);
//   absl::StatusOr<DaemonConfig> config = DaemonConfigFromFlags();
//   if (!config.ok()) return 2;   // the message names the flag
//   for (const std::string& w : ExposureWarnings(*config)) Warn(w);
//
// What is checked here: only what the daemon itself owns, i.e. the syntax of
// values (byte sizes, HOST:PORT, --device), the transport's limits
// (--max_message_size, --max_streams, --stream_threads,
// --upload_idle_timeout) and combinations of flags (TLS files, metrics
// tokens without an endpoint, an unprotected non-loopback --listen).
// Everything the core validates is left to the core, so each rule has one
// home: JobManager::Options (--data_dir, --max_queue, --stream_tile_size via
// TileGrid::ValidateEdge, --retention, ...) and MakeResourceConfig
// (--device ordinals against the machine). Their InvalidArgument errors name
// the option; FlagNamesInCoreMessage turns those names into flag names.
//
// Thread safety: DaemonConfigFromFlags reads global flags (call it after
// ParseCommandLine); the other functions are pure.
#ifndef REGSERVE_SERVER_DAEMON_CONFIG_H_
#define REGSERVE_SERVER_DAEMON_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/plan/resources.h"
#include "server/flag_util.h"
#include "server/tls.h"

namespace regserve {

struct DaemonConfig {
  // Transport.
  std::string listen;  // as given, for messages
  HostPort listen_address;
  TlsFiles tls;
  std::string auth_tokens;  // path; empty: no authentication
  bool insecure_listen_any = false;
  uint64_t max_message_bytes = 8 << 20;
  int max_streams = 1000;
  int stream_threads = 8;
  absl::Duration upload_idle_timeout = absl::Minutes(5);
  absl::Duration shutdown_grace = absl::Seconds(10);

  // Metrics endpoint; empty listen: none.
  std::string metrics_listen;
  std::string metrics_tokens;  // path

  // The machine's budgets, for MakeResourceConfig (0: from the hardware).
  ResourceFlags resources;

  // The job manager's options, passed on unchecked (the core checks them).
  std::string data_dir;
  std::string input_root;
  std::string output_root;
  int max_queue = 64;
  int max_jobs_per_principal = 0;
  int64_t max_image_pixels = 1000ll * 1000 * 1000;
  uint64_t max_upload_bytes = 8ull << 30;
  double max_registration_megapixels = 20.0;
  // --gpu_refine_elastix_*: 2 MP, half the iterations, no affine stage
  // after an initial alignment (docs/benchmarks.md, "elastix before a GPU
  // refinement").
  ElastixSchedule elastix_before_gpu_refine{2.0, 0.5, false};
  int shift_correction_passes = 2;
  int gpu_refine_correction_passes = 1;
  // --correction_elastix_*: 0.5 MP, a quarter of the iterations
  // (docs/benchmarks.md, "The quality estimate's cost").
  ElastixSchedule elastix_before_cpu_correction{0.5, 0.25, true};
  int64_t stream_tile_size = 512;
  absl::Duration retention = absl::Hours(24 * 7);
  absl::Duration registration_timeout = absl::Hours(2);
  std::string elastix = "elastix";
  std::string transformix = "transformix";

  // Fleet mode (empty fleet_db: a single host).
  std::string fleet_db;
  std::string fleet_replica;    // empty: host name and process id
  std::string fleet_advertise;  // empty: listen
  absl::Duration fleet_lease = absl::Seconds(10);
  int fleet_jobs_per_replica = 2;
};

// The flags as a DaemonConfig. InvalidArgument whose message names the
// flag (and says what to give instead) for a malformed value, a transport
// limit out of range, or a bad combination of flags.
absl::StatusOr<DaemonConfig> DaemonConfigFromFlags();

// Checks the daemon's own rules on `config` (DaemonConfigFromFlags calls
// it); exposed for tests.
absl::Status ValidateDaemonConfig(const DaemonConfig& config);

// What is risky but allowed about how the endpoints are exposed: a
// non-loopback --listen without TLS, or with TLS but no client
// authentication, or with --insecure_listen_any; a non-loopback
// --metrics_listen without --metrics_tokens. One sentence each, without the
// "regserved: WARNING: " prefix.
std::vector<std::string> ExposureWarnings(const DaemonConfig& config);

// `message` (from JobManager::Create's options validation) with each
// JobManager::Options field name that has a flag replaced by that flag:
// "max_pixels must be positive" -> "--max_image_pixels must be positive".
// Only whole words outside quotes are replaced, so paths stay as they are.
std::string FlagNamesInCoreMessage(absl::string_view message);

}  // namespace regserve

#endif  // REGSERVE_SERVER_DAEMON_CONFIG_H_
