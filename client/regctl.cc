// Copyright regserve authors.
//
// regctl: the command-line client of regserved.
//
//   regctl [--server ADDR] [--timeout SECONDS] [--tls] [--tls_ca FILE]
//          [--tls_cert FILE --tls_key FILE] [--tls_server_name NAME]
//          [--token_file FILE] COMMAND ...
//
// The bearer token comes from --token_file, else from the environment
// variable REGSERVE_TOKEN. Option names take '_' or '-' alike.
//
//   submit --fixed F|--fixed-path P --moving M|--moving-path P
//          --output OUT | --output-path P [--overwrite-output]
//          [--tile-encoding zstd|deflate|raw]
//          [--transform rigid|affine|bspline] [--output-resolution
//          full|registration]
//          [--max-registration-megapixels N] [--parameters FILE]...
//          [--interpolation linear|cubic|nearest] [--device auto|cpu|cuda]
//          [--refine auto|off|on]
//          [--priority N] [--fill-value V] [--label TEXT]
//          [--compression none|deflate|zstd|jpeg] [--jpeg-quality Q]
//          [--transform-out DIR] [--quality-map FILE.png] [--json]
//   watch JOB [--output OUT] [--from-tile N] [--tile-encoding E]
//         [--transform-out DIR]
//         [--quality-map FILE.png] [--json]
//   cancel JOB
//   status JOB [--json]
//   list [--json]
//   server-info [--json]
//
// Exit codes: 0 success; 1 the job or request failed (the message says why);
// 2 usage error or unreadable local input; 3 server unreachable, unavailable
// or deadline exceeded; 4 the output could not be written; 5 the job was
// cancelled; 6 no such job.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "client/channel_target.h"
#include "client/quality_map_image.h"
#include "client/regserve_client.h"
#include "client/tile_assembler.h"
#include "core/common/file_util.h"
#include "core/common/format.h"
#include "core/image/image_io.h"
#include "google/protobuf/util/json_util.h"

namespace regserve {
namespace {

enum ExitCode {
  kExitOk = 0,
  kExitJobFailed = 1,
  kExitUsage = 2,
  kExitUnavailable = 3,
  kExitOutput = 4,
  kExitCancelled = 5,
  kExitNotFound = 6,
};

constexpr char kUsage[] =
    "usage: regctl [--server ADDR] [--timeout SECONDS] [security options] "
    "COMMAND ...\n"
    "\n"
    "--server: HOST:PORT (default 127.0.0.1:50051); for a fleet, a list "
    "HOST:PORT,HOST:PORT,... or a dns:///NAME:PORT, over which new jobs are "
    "spread (round_robin)\n"
    "\n"
    "security options (needed when the server uses TLS or tokens):\n"
    "  --tls                  use TLS, trusting the system's CA certificates\n"
    "  --tls_ca FILE          use TLS, trusting the CA certificates in FILE "
    "(PEM)\n"
    "  --tls_cert FILE --tls_key FILE   client certificate and key (mutual "
    "TLS)\n"
    "  --tls_server_name NAME the name the server's certificate must carry "
    "(default: host of --server)\n"
    "  --token_file FILE      bearer token (first line of FILE); default: the "
    "REGSERVE_TOKEN environment variable\n"
    "\n"
    "commands:\n"
    "  submit --fixed F | --fixed-path P   fixed image (upload, or a path "
    "under "
    "the server's --input_root)\n"
    "         --moving M | --moving-path P moving image\n"
    "         --output OUT                 result file (.tif: tiled TIFF; any "
    "format OpenImageIO writes)\n"
    "         --output-path P              and/or: the server writes its "
    "stored result (pyramidal TIFF) to P\n"
    "                                      under its --output_root (then no "
    "tiles are streamed without --output)\n"
    "         [--overwrite-output]         replace a file at P (else "
    "ALREADY_EXISTS)\n"
    "         [--tile-encoding zstd|deflate|raw]  tiles on the wire (default "
    "zstd; all lossless)\n"
    "         [--transform rigid|affine|bspline] [--output-resolution "
    "full|registration]\n"
    "         [--max-registration-megapixels N] [--parameters FILE]... "
    "(custom elastix parameter files)\n"
    "         [--interpolation linear|cubic|nearest] [--device auto|cpu|cuda] "
    "[--priority N]\n"
    "         [--refine auto|off|on]    LibTorch refinement of elastix's "
    "field (auto: when it pays)\n"
    "         [--fill-value V] [--label TEXT] [--transform-out DIR] [--json]\n"
    "         [--compression none|deflate|zstd|jpeg] [--jpeg-quality Q]\n"
    "                                      the server's stored result "
    "(default deflate; jpeg: 8-bit grey/RGB, Q 1-100, default 90)\n"
    "         [--quality-map FILE.png]     heat map of the estimated residual "
    "over a thumbnail\n"
    "                                      (green good, red bad, grey not "
    "checked)\n"
    "  watch JOB [--output OUT] [--from-tile N] [--tile-encoding E] "
    "[--transform-out DIR] [--quality-map FILE.png] [--json]\n"
    "         follow a job; with OUT.partial state present, continue where it "
    "stopped\n"
    "  cancel JOB\n"
    "  status JOB [--json]\n"
    "  list [--json]\n"
    "  server-info [--json]\n"
    "  health [SERVICE]                exit 0 when the server reports SERVING\n"
    "\n"
    "exit codes: 0 ok, 1 job/request failed, 2 usage or unreadable input, 3 "
    "server unavailable,\n"
    "            4 output write error, 5 cancelled, 6 no such job\n";

// ------------------------------------------------------------ arguments

struct Args {
  std::vector<std::string> positional;
  std::vector<std::pair<std::string, std::string>> options;  // name -> value
  bool json = false;
};

const char* const kFlagsWithoutValue[] = {"json", "help", "tls",
                                          "overwrite-output"};

bool TakesValue(const std::string& name) {
  for (const char* f : kFlagsWithoutValue) {
    if (name == f) return false;
  }
  return true;
}

// Parses "--name value", "--name=value" and positional arguments.
bool ParseArgs(int argc, char** argv, int start, Args* args,
               std::string* error) {
  for (int i = start; i < argc; ++i) {
    std::string a = argv[i];
    if (absl::StartsWith(a, "--")) {
      std::string name = a.substr(2), value;
      const size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      // --tls_ca and --tls-ca are the same option.
      std::replace(name.begin(), name.end(), '_', '-');
      if (eq == std::string::npos && TakesValue(name)) {
        if (i + 1 >= argc) {
          *error = absl::StrCat("--", name, " needs a value");
          return false;
        }
        value = argv[++i];
      }
      if (name == "json") {
        args->json = true;
        continue;
      }
      args->options.emplace_back(name, value);
    } else {
      args->positional.push_back(a);
    }
  }
  return true;
}

class Options {
 public:
  explicit Options(const Args& args) : args_(args) {}
  // The last value of --name, or `def`.
  std::string Get(const std::string& name, const std::string& def = "") {
    used_.push_back(name);
    std::string v = def;
    for (const auto& o : args_.options) {
      if (o.first == name) v = o.second;
    }
    return v;
  }
  std::vector<std::string> GetAll(const std::string& name) {
    used_.push_back(name);
    std::vector<std::string> all;
    for (const auto& o : args_.options) {
      if (o.first == name) all.push_back(o.second);
    }
    return all;
  }
  bool Has(const std::string& name) {
    used_.push_back(name);
    for (const auto& o : args_.options) {
      if (o.first == name) return true;
    }
    return false;
  }
  // The first option never asked for, or "".
  std::string Unknown() const {
    for (const auto& o : args_.options) {
      bool known = false;
      for (const std::string& u : used_) known |= (u == o.first);
      if (!known) return o.first;
    }
    return "";
  }

 private:
  const Args& args_;
  std::vector<std::string> used_;
};

int Usage(const std::string& message) {
  std::fprintf(stderr, "regctl: %s\n\n%s", message.c_str(), kUsage);
  return kExitUsage;
}

int ExitFor(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return kExitOk;
    case grpc::StatusCode::CANCELLED:
      return kExitCancelled;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return kExitUnavailable;
    case grpc::StatusCode::NOT_FOUND:
      return kExitNotFound;
    default:
      return kExitJobFailed;
  }
}

int ReportStatus(const grpc::Status& status, const std::string& server) {
  if (status.ok()) return kExitOk;
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    std::fprintf(stderr, "regctl: server %s unavailable: %s\n", server.c_str(),
                 status.error_message().c_str());
  } else {
    std::fprintf(
        stderr, "regctl: %s: %s\n",
        StatusCodeName(static_cast<absl::StatusCode>(status.error_code()))
            .c_str(),
        status.error_message().c_str());
  }
  return ExitFor(status);
}

// ------------------------------------------------------------ output

std::string JsonEscape(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

void PrintJsonLine(const std::string& json) {
  std::fprintf(stdout, "%s\n", json.c_str());
  std::fflush(stdout);
}

// One progress line per stage: redrawn in place on a terminal, a plain line
// per step (25%) otherwise. Everything goes to stderr.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool tty) : tty_(tty) {}
  ~ProgressPrinter() { EndLine(); }

  void Update(const std::string& stage, double fraction,
              const std::string& detail) {
    if (fraction < 0) fraction = 0;
    if (fraction > 1) fraction = 1;
    if (stage != stage_) {
      EndLine();
      stage_ = stage;
      last_step_ = -1;
    }
    if (tty_) {
      const int width = 30;
      const int filled = static_cast<int>(std::lround(fraction * width));
      std::string line = absl::StrFormat(
          "\r%-12s [%s%s] %3d%% %s", stage, std::string(filled, '#'),
          std::string(width - filled, ' '), static_cast<int>(fraction * 100),
          detail.substr(0, 60));
      std::fprintf(stderr, "%s\033[K", line.c_str());
      std::fflush(stderr);
      open_ = true;
      return;
    }
    const int step = static_cast<int>(fraction * 4);
    if (step == last_step_) return;
    last_step_ = step;
    std::fprintf(stderr, "%s: %d%%%s%s\n", stage.c_str(),
                 static_cast<int>(fraction * 100), detail.empty() ? "" : " ",
                 detail.c_str());
  }
  void Line(const std::string& text) {
    EndLine();
    std::fprintf(stderr, "%s\n", text.c_str());
  }

 private:
  void EndLine() {
    if (open_) std::fprintf(stderr, "\n");
    open_ = false;
  }
  const bool tty_;
  std::string stage_;
  int last_step_ = -1;
  bool open_ = false;
};

absl::Status WriteTransformFiles(
    const std::string& dir,
    const google::protobuf::RepeatedPtrField<v1::TransformFile>& files) {
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::InternalError(
        absl::StrCat("cannot create \"", dir, "\": ", std::strerror(errno)));
  }
  if (files.empty()) {
    return absl::NotFoundError("the server sent no TransformParameters files");
  }
  for (const v1::TransformFile& f : files) {
    if (f.name().empty() || f.name().find('/') != std::string::npos ||
        f.name() == "." || f.name() == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("refusing transform file name \"", f.name(), "\""));
    }
    const std::string path = absl::StrCat(dir, "/", f.name());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << f.content();
    out.flush();
    if (!out) {
      return absl::InternalError(absl::StrCat("cannot write \"", path, "\""));
    }
  }
  return absl::OkStatus();
}

// Follows the events of a Submit or Watch call, writes the output.
class EventHandler {
 public:
  EventHandler(bool json, std::string output, std::string transform_out,
               bool resume)
      : json_(json),
        output_(std::move(output)),
        transform_out_(std::move(transform_out)),
        resume_(resume),
        progress_(isatty(STDERR_FILENO) != 0) {}

  // Prepares the assembler for a known job (watch) before any event.
  absl::Status OpenOutput(const std::string& job_id) {
    if (output_.empty() || assembler_ != nullptr) return absl::OkStatus();
    auto a = TileAssembler::Open(output_, job_id, resume_);
    if (!a.ok()) return a.status();
    assembler_ = std::move(*a);
    return absl::OkStatus();
  }
  int64_t next_tile() const {
    return assembler_ != nullptr ? assembler_->next_tile() : 0;
  }

  void OnUpload(v1::ImageRole role, uint64_t sent, uint64_t total) {
    if (json_) {
      PrintJsonLine(absl::StrCat(
          "{\"upload\":{\"role\":",
          JsonEscape(role == v1::IMAGE_ROLE_FIXED ? "fixed" : "moving"),
          ",\"sent_bytes\":", sent, ",\"total_bytes\":", total, "}}"));
      return;
    }
    progress_.Update(
        "upload", total > 0 ? static_cast<double>(sent) / total : 1.0,
        absl::StrCat(role == v1::IMAGE_ROLE_FIXED ? "fixed " : "moving ",
                     FormatBytes(sent), " / ", FormatBytes(total)));
  }

  // False stops the call (output error).
  bool OnEvent(const v1::JobEvent& event) {
    if (job_id_.empty()) job_id_ = event.job_id();
    if (json_) {
      if (event.has_tile()) {
        v1::JobEvent copy = event;
        copy.mutable_tile()->clear_data();
        std::string json = ToJson(copy);
        json.pop_back();  // '}'
        PrintJsonLine(absl::StrCat(
            json, ",\"tile_data_bytes\":", event.tile().data().size(), "}"));
      } else if (event.completed().quality_map().thumbnail().size() > 0) {
        // The thumbnail (up to 1 MiB) is for --quality-map, not for lines.
        v1::JobEvent copy = event;
        copy.mutable_completed()->mutable_quality_map()->clear_thumbnail();
        PrintJsonLine(ToJson(copy));
      } else {
        PrintJsonLine(ToJson(event));
      }
    }
    switch (event.event_case()) {
      case v1::JobEvent::kAccepted: {
        const v1::Plan& p = event.accepted().plan();
        if (!json_) {
          progress_.Line(absl::StrFormat(
              "job %s accepted: registration at %dx%d (1/%.2f), output %dx%d, "
              "warp on %s %s",
              event.job_id(), p.registration_fixed_width(),
              p.registration_fixed_height(), p.registration_factor(),
              p.output_width(), p.output_height(), p.warp_device(),
              p.warp_tile_size() > 0
                  ? absl::StrCat("in tiles of ", p.warp_tile_size())
                  : std::string("in one pass")));
          for (const std::string& r : p.reasons()) progress_.Line("  " + r);
        }
        absl::Status s = OpenOutput(event.job_id());
        if (!s.ok()) return OutputFailed(s);
        break;
      }
      case v1::JobEvent::kQueued:
        if (!json_) {
          progress_.Line(
              absl::StrCat("queued at position ", event.queued().position()));
        }
        break;
      case v1::JobEvent::kProgress: {
        const v1::Progress& p = event.progress();
        if (!json_)
          progress_.Update(StageLabel(p.stage()), p.fraction(), p.detail());
        break;
      }
      case v1::JobEvent::kTile: {
        const v1::Tile& t = event.tile();
        if (!json_) {
          progress_.Update(
              "stream",
              t.tile_count() > 0
                  ? static_cast<double>(t.index() + 1) / t.tile_count()
                  : 0.0,
              absl::StrCat("tile ", t.index() + 1, "/", t.tile_count()));
        }
        if (!output_.empty()) {
          absl::Status s = OpenOutput(event.job_id());
          if (s.ok()) s = assembler_->AddTile(t);
          if (!s.ok()) return OutputFailed(s);
        }
        break;
      }
      case v1::JobEvent::kCompleted: {
        completed_ = true;
        const v1::Completed& c = event.completed();
        server_output_ = c.output_path();
        if (!transform_out_.empty()) {
          absl::Status s =
              WriteTransformFiles(transform_out_, c.transform_files());
          if (!s.ok()) return OutputFailed(s);
        }
        if (!output_.empty()) {
          absl::Status s = OpenOutput(event.job_id());
          if (s.ok()) s = assembler_->Finish();
          if (!s.ok()) return OutputFailed(s);
          output_written_ = true;
        }
        if (!OnQuality(c)) return false;
        if (!json_) {
          std::vector<std::string> times;
          for (const v1::StageTiming& t : c.timings()) {
            times.push_back(absl::StrFormat("%s %.2fs", StageLabel(t.stage()),
                                            t.seconds()));
          }
          progress_.Line(absl::StrFormat(
              "job %s completed: %dx%d, metric %.4f; %s", event.job_id(),
              c.output().width(), c.output().height(), c.registration_metric(),
              absl::StrJoin(times, ", ")));
        }
        break;
      }
      case v1::JobEvent::kFailed:
        if (!json_) {
          progress_.Line(absl::StrCat("job ", event.job_id(),
                                      " failed: ", event.failed().code_name(),
                                      ": ", event.failed().message()));
        }
        break;
      default:
        break;
    }
    return true;
  }

  // The exit code for the call's final status.
  int Finish(const grpc::Status& status, const std::string& server) {
    if (!output_error_.ok()) {
      std::fprintf(stderr, "regctl: cannot write the output: %s\n",
                   std::string(output_error_.message()).c_str());
      return kExitOutput;
    }
    if (status.ok() && completed_) {
      if (output_written_ && !json_) {
        std::fprintf(stdout, "wrote %s\n", output_.c_str());
      } else if (output_written_) {
        PrintJsonLine(absl::StrCat("{\"output\":", JsonEscape(output_), "}"));
      }
      if (!server_output_.empty() && !json_) {
        std::fprintf(stdout, "the server wrote %s\n", server_output_.c_str());
      } else if (!server_output_.empty()) {
        PrintJsonLine(absl::StrCat(
            "{\"server_output\":", JsonEscape(server_output_), "}"));
      }
      if (!transform_out_.empty() && !json_) {
        std::fprintf(stdout, "wrote transform files to %s\n",
                     transform_out_.c_str());
      }
      PrintQuality();
      return kExitOk;
    }
    if (status.ok()) {
      std::fprintf(stderr, "regctl: the stream ended without a result\n");
      return kExitJobFailed;
    }
    const int code = ReportStatus(status, server);
    if (!job_id_.empty() && code == kExitUnavailable && !output_.empty()) {
      std::fprintf(stderr,
                   "regctl: the job goes on; continue with: regctl "
                   "--server %s watch %s --output %s\n",
                   server.c_str(), job_id_.c_str(), output_.c_str());
    }
    return code;
  }

  const std::string& job_id() const { return job_id_; }
  // Where --quality-map writes the heat map (empty: nowhere).
  void set_quality_map_output(std::string path) {
    quality_map_out_ = std::move(path);
  }

 private:
  // Keeps the quality summary for the end, and writes the heat map.
  bool OnQuality(const v1::Completed& c) {
    quality_ = c.quality();
    if (quality_map_out_.empty()) return true;
    if (!c.has_quality_map()) {
      return OutputFailed(absl::NotFoundError(
          "the server sent no quality map (the estimate failed, or the "
          "daemon has no quality stage)"));
    }
    absl::StatusOr<Image> rgb = RenderQualityMap(c.quality_map());
    absl::Status s =
        rgb.ok() ? WriteImageFile(quality_map_out_, *rgb) : rgb.status();
    if (!s.ok()) return OutputFailed(s);
    quality_map_written_ = true;
    return true;
  }

  // After completion: the estimated residual, and a warning on stdout when
  // it looks poor, so that the result is not taken for a success.
  void PrintQuality() const {
    if (json_) {
      if (quality_map_written_) {
        PrintJsonLine(absl::StrCat(
            "{\"quality_map\":", JsonEscape(quality_map_out_), "}"));
      }
      return;
    }
    std::fprintf(stdout, "%s\n", QualitySummaryText(quality_).c_str());
    if (quality_.estimated() &&
        quality_.verdict() != v1::QUALITY_VERDICT_GOOD &&
        !quality_.warning().empty()) {
      std::fprintf(stdout, "WARNING: %s\n", quality_.warning().c_str());
    }
    if (quality_map_written_) {
      std::fprintf(stdout, "wrote quality map %s\n", quality_map_out_.c_str());
    }
  }

  bool OutputFailed(const absl::Status& s) {
    output_error_ = s;
    return false;
  }

  const bool json_;
  const std::string output_;
  const std::string transform_out_;
  const bool resume_;
  ProgressPrinter progress_;
  std::unique_ptr<TileAssembler> assembler_;
  std::string job_id_;
  bool completed_ = false;
  bool output_written_ = false;
  std::string server_output_;  // Completed.output_path
  absl::Status output_error_;
  std::string quality_map_out_;
  v1::QualitySummary quality_;
  bool quality_map_written_ = false;
};

// ------------------------------------------------------------ commands

bool ParseEnum(const std::string& value, const std::vector<std::string>& names,
               int* out) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (value == names[i]) {
      *out = static_cast<int>(i) + 1;  // UNSPECIFIED is 0
      return true;
    }
  }
  return false;
}

// --tile-encoding: zstd (the default: lossless, the same pixels as raw in
// fewer bytes), deflate or raw. False for another name.
bool ParseTileEncoding(Options& opt, v1::TileEncoding* out) {
  const std::string name = opt.Get("tile-encoding", "zstd");
  if (name == "zstd") {
    *out = v1::TILE_ENCODING_ZSTD;
  } else if (name == "deflate") {
    *out = v1::TILE_ENCODING_DEFLATE;
  } else if (name == "raw") {
    *out = v1::TILE_ENCODING_RAW;
  } else {
    return false;
  }
  return true;
}

int Submit(RegistrationClient* client, Options& opt, const Args& args,
           const std::string& server) {
  v1::JobSpec spec;
  RegistrationClient::Inputs inputs;
  inputs.fixed_path = opt.Get("fixed");
  inputs.moving_path = opt.Get("moving");
  const std::string fixed_server = opt.Get("fixed-path");
  const std::string moving_server = opt.Get("moving-path");
  if (inputs.fixed_path.empty() == fixed_server.empty()) {
    return Usage(
        "give exactly one of --fixed (upload) or --fixed-path (server path)");
  }
  if (inputs.moving_path.empty() == moving_server.empty()) {
    return Usage(
        "give exactly one of --moving (upload) or --moving-path (server path)");
  }
  if (!fixed_server.empty())
    spec.mutable_fixed()->set_server_path(fixed_server);
  if (!moving_server.empty())
    spec.mutable_moving()->set_server_path(moving_server);
  const std::string output = opt.Get("output");
  const std::string output_path = opt.Get("output-path");
  if (output.empty() && output_path.empty()) {
    return Usage(
        "submit needs --output OUT (streamed here) or --output-path P "
        "(written by the server under its --output_root)");
  }
  spec.set_output_path(output_path);
  spec.set_overwrite_output(opt.Has("overwrite-output"));
  RegistrationClient::TileOptions tiles;
  if (!ParseTileEncoding(opt, &tiles.encoding)) {
    return Usage("--tile-encoding must be zstd, deflate or raw");
  }
  // The server writes the result: no tile needs to cross the wire.
  tiles.omit_tiles = output.empty();

  int value = 0;
  if (opt.Has("transform")) {
    if (!ParseEnum(opt.Get("transform"), {"rigid", "affine", "bspline"},
                   &value)) {
      return Usage("--transform must be rigid, affine or bspline");
    }
    spec.set_transform(static_cast<v1::TransformKind>(value));
  }
  if (opt.Has("output-resolution")) {
    if (!ParseEnum(opt.Get("output-resolution"), {"full", "registration"},
                   &value)) {
      return Usage("--output-resolution must be full or registration");
    }
    spec.set_output_resolution(static_cast<v1::OutputResolution>(value));
  }
  if (opt.Has("interpolation")) {
    if (!ParseEnum(opt.Get("interpolation"), {"linear", "cubic", "nearest"},
                   &value)) {
      return Usage("--interpolation must be linear, cubic or nearest");
    }
    spec.set_interpolation(static_cast<v1::Interpolation>(value));
  }
  if (opt.Has("device")) {
    if (!ParseEnum(opt.Get("device"), {"auto", "cpu", "cuda"}, &value)) {
      return Usage("--device must be auto, cpu or cuda");
    }
    spec.set_device(static_cast<v1::Device>(value));
  }
  if (opt.Has("refine")) {
    if (!ParseEnum(opt.Get("refine"), {"auto", "off", "on"}, &value)) {
      return Usage("--refine must be auto, off or on");
    }
    spec.set_refine(static_cast<v1::Refine>(value));
  }
  if (opt.Has("max-registration-megapixels")) {
    double mp = 0;
    if (!absl::SimpleAtod(opt.Get("max-registration-megapixels"), &mp) ||
        !(mp > 0)) {
      return Usage("--max-registration-megapixels must be a positive number");
    }
    spec.set_max_registration_megapixels(mp);
  }
  if (opt.Has("priority")) {
    int p = 0;
    if (!absl::SimpleAtoi(opt.Get("priority"), &p)) {
      return Usage("--priority must be an integer");
    }
    spec.set_priority(p);
  }
  if (opt.Has("fill-value")) {
    double f = 0;
    if (!absl::SimpleAtod(opt.Get("fill-value"), &f)) {
      return Usage("--fill-value must be a number");
    }
    spec.set_fill_value(f);
  }
  if (opt.Has("compression")) {
    if (!ParseEnum(opt.Get("compression"), {"none", "deflate", "zstd", "jpeg"},
                   &value)) {
      return Usage("--compression must be none, deflate, zstd or jpeg");
    }
    spec.set_compression(static_cast<v1::Compression>(value));
  }
  if (opt.Has("jpeg-quality")) {
    int q = 0;
    if (!absl::SimpleAtoi(opt.Get("jpeg-quality"), &q) || q < 1 || q > 100) {
      return Usage("--jpeg-quality must be an integer from 1 to 100");
    }
    spec.set_jpeg_quality(q);
  }
  spec.set_client_label(opt.Get("label"));
  for (const std::string& file : opt.GetAll("parameters")) {
    absl::StatusOr<std::string> text = ReadFileToString(file);
    if (!text.ok())
      return Usage(
          absl::StrCat("cannot read --parameters file \"", file, "\""));
    spec.add_elastix_parameters(*std::move(text));
  }
  const std::string transform_out = opt.Get("transform-out");
  const std::string quality_map = opt.Get("quality-map");
  if (!opt.Unknown().empty()) return Usage("unknown option --" + opt.Unknown());
  if (args.positional.size() > 1)
    return Usage("submit takes no positional arguments");

  EventHandler handler(args.json, output, transform_out, /*resume=*/false);
  handler.set_quality_map_output(quality_map);
  grpc::Status status = client->Submit(
      spec, inputs, [&](const v1::JobEvent& e) { return handler.OnEvent(e); },
      [&](v1::ImageRole role, uint64_t sent, uint64_t total) {
        handler.OnUpload(role, sent, total);
      },
      /*context=*/nullptr, tiles);
  if (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
      handler.job_id().empty() &&
      absl::StartsWith(status.error_message(), "cannot read")) {
    std::fprintf(stderr, "regctl: %s\n", status.error_message().c_str());
    return kExitUsage;
  }
  return handler.Finish(status, server);
}

int Watch(RegistrationClient* client, Options& opt, const Args& args,
          const std::string& server) {
  if (args.positional.size() != 2)
    return Usage("watch needs exactly one JOB id");
  const std::string job = args.positional[1];
  const std::string output = opt.Get("output");
  int64_t from_tile = 0;
  if (opt.Has("from-tile") &&
      (!absl::SimpleAtoi(opt.Get("from-tile"), &from_tile) || from_tile < 0)) {
    return Usage("--from-tile must be a non-negative integer");
  }
  RegistrationClient::TileOptions tiles;
  if (!ParseTileEncoding(opt, &tiles.encoding)) {
    return Usage("--tile-encoding must be zstd, deflate or raw");
  }
  const std::string transform_out = opt.Get("transform-out");
  const std::string quality_map = opt.Get("quality-map");
  if (!opt.Unknown().empty()) return Usage("unknown option --" + opt.Unknown());
  EventHandler handler(args.json, output, transform_out, /*resume=*/true);
  handler.set_quality_map_output(quality_map);
  if (!output.empty()) {
    absl::Status s = handler.OpenOutput(job);
    if (!s.ok()) {
      std::fprintf(stderr, "regctl: %s\n", std::string(s.message()).c_str());
      return kExitOutput;
    }
    // With partial state the stream continues after the last stored tile.
    if (handler.next_tile() > 0) {
      from_tile = handler.next_tile();
    } else if (from_tile > 0) {
      return Usage(
          "--from-tile with --output needs OUT.partial state of this "
          "job; omit --from-tile to fetch the whole result");
    }
  }
  grpc::Status status = client->Watch(
      job, from_tile, [&](const v1::JobEvent& e) { return handler.OnEvent(e); },
      /*context=*/nullptr, tiles);
  return handler.Finish(status, server);
}

int Cancel(RegistrationClient* client, Options& opt, const Args& args,
           const std::string& server) {
  if (args.positional.size() != 2)
    return Usage("cancel needs exactly one JOB id");
  if (!opt.Unknown().empty()) return Usage("unknown option --" + opt.Unknown());
  v1::CancelResponse response;
  grpc::Status status = client->Cancel(args.positional[1], &response);
  if (!status.ok()) return ReportStatus(status, server);
  if (args.json) {
    PrintJsonLine(ToJson(response));
  } else {
    std::printf("job %s: %s\n", args.positional[1].c_str(),
                v1::JobState_Name(response.state()).c_str());
  }
  return kExitOk;
}

void PrintJob(const v1::JobStatus& j) {
  std::printf("job %s: %s", j.job_id().c_str(),
              v1::JobState_Name(j.state()).c_str());
  if (j.state() == v1::JOB_STATE_RUNNING) {
    std::printf(" (%s %d%%%s%s)", StageLabel(j.stage()),
                static_cast<int>(j.stage_fraction() * 100),
                j.stage_detail().empty() ? "" : ", ", j.stage_detail().c_str());
  }
  if (j.state() == v1::JOB_STATE_QUEUED)
    std::printf(" (position %d)", j.queue_position());
  std::printf("\n");
  if (j.has_plan()) {
    std::printf("  output %lldx%lld, registration %lldx%lld, warp on %s\n",
                static_cast<long long>(j.plan().output_width()),
                static_cast<long long>(j.plan().output_height()),
                static_cast<long long>(j.plan().registration_fixed_width()),
                static_cast<long long>(j.plan().registration_fixed_height()),
                j.plan().warp_device().c_str());
  }
  if (j.has_failure()) {
    std::printf("  %s: %s\n", j.failure().code_name().c_str(),
                j.failure().message().c_str());
  }
  for (const v1::StageTiming& t : j.timings()) {
    std::printf("  %s: %.2f s\n", StageLabel(t.stage()), t.seconds());
  }
  if (j.has_quality()) {
    std::printf("  %s\n", QualitySummaryText(j.quality()).c_str());
    if (!j.quality().warning().empty()) {
      std::printf("  WARNING: %s\n", j.quality().warning().c_str());
    }
  }
  if (!j.result_path().empty())
    std::printf("  result on server: %s\n", j.result_path().c_str());
  if (!j.output_path().empty())
    std::printf("  written to: %s\n", j.output_path().c_str());
}

int Status(RegistrationClient* client, Options& opt, const Args& args,
           const std::string& server) {
  if (args.positional.size() != 2)
    return Usage("status needs exactly one JOB id");
  if (!opt.Unknown().empty()) return Usage("unknown option --" + opt.Unknown());
  v1::JobStatus job;
  grpc::Status status = client->GetJob(args.positional[1], &job);
  if (!status.ok()) return ReportStatus(status, server);
  if (args.json) {
    PrintJsonLine(ToJson(job));
  } else {
    PrintJob(job);
  }
  return kExitOk;
}

int List(RegistrationClient* client, Options& opt, const Args& args,
         const std::string& server) {
  if (!opt.Unknown().empty()) return Usage("unknown option --" + opt.Unknown());
  v1::ListJobsResponse jobs;
  grpc::Status status = client->ListJobs(&jobs);
  if (!status.ok()) return ReportStatus(status, server);
  if (args.json) {
    for (const v1::JobStatus& j : jobs.jobs()) PrintJsonLine(ToJson(j));
    return kExitOk;
  }
  std::printf("%-34s %-20s %-13s %s\n", "JOB", "STATE", "STAGE", "LABEL");
  for (const v1::JobStatus& j : jobs.jobs()) {
    std::printf("%-34s %-20s %-13s %s\n", j.job_id().c_str(),
                v1::JobState_Name(j.state()).c_str(), StageLabel(j.stage()),
                j.client_label().c_str());
  }
  return kExitOk;
}

int ServerInfo(RegistrationClient* client, Options& opt, const Args& args,
               const std::string& server) {
  if (!opt.Unknown().empty()) return Usage("unknown option --" + opt.Unknown());
  v1::ServerInfo info;
  grpc::Status status = client->GetServerInfo(&info);
  if (!status.ok()) return ReportStatus(status, server);
  if (args.json) {
    PrintJsonLine(ToJson(info));
    return kExitOk;
  }
  std::printf("regserved %s (%s) at %s\n", info.version().c_str(),
              info.protocol().c_str(), server.c_str());
  std::printf("RAM: %s total, %s available; budget %s, reserved %s\n",
              FormatBytes(info.ram_total_bytes()).c_str(),
              FormatBytes(info.ram_available_bytes()).c_str(),
              FormatBytes(info.ram_budget_bytes()).c_str(),
              FormatBytes(info.ram_reserved_bytes()).c_str());
  std::printf("CPU: %d cores, %d/%d stage slots busy\n", info.cpu_cores(),
              info.cpu_running(), info.cpu_slots());
  for (const v1::Gpu& g : info.gpus()) {
    std::printf(
        "GPU %d %s: %s free of %s; budget %s, reserved %s, %d warp(s)\n",
        g.index(), g.name().c_str(), FormatBytes(g.vram_free_bytes()).c_str(),
        FormatBytes(g.vram_total_bytes()).c_str(),
        FormatBytes(g.vram_budget_bytes()).c_str(),
        FormatBytes(g.vram_reserved_bytes()).c_str(), g.warps_running());
  }
  std::printf("jobs: %d queued, %d running, %d uploading (max queue %d)\n",
              info.jobs_queued(), info.jobs_running(), info.jobs_uploading(),
              info.max_queue());
  for (const std::string& h : info.held())
    std::printf("  holds: %s\n", h.c_str());
  for (const std::string& w : info.waiting_for())
    std::printf("  waits: %s\n", w.c_str());
  if (!info.replica().empty()) {
    std::printf("fleet: this is replica %s; %d replica(s):\n",
                info.replica().c_str(), info.replicas_size());
  }
  for (const v1::Replica& r : info.replicas()) {
    std::string vram;
    for (int i = 0; i < r.vram_budget_bytes_size(); ++i) {
      absl::StrAppend(&vram, vram.empty() ? "" : ", ",
                      i < r.gpu_names_size() ? r.gpu_names(i) + " " : "",
                      FormatBytes(r.vram_budget_bytes(i)));
    }
    std::printf(
        "  %s at %s: RAM budget %s, VRAM %s, %d running, seen %.1f s ago\n",
        r.name().c_str(), r.address().c_str(),
        FormatBytes(r.ram_budget_bytes()).c_str(),
        vram.empty() ? "none" : vram.c_str(), r.running_job_ids_size(),
        r.heartbeat_age_seconds());
  }
  return kExitOk;
}

// Exit 0 when the server's grpc.health.v1 service reports SERVING; used by
// the Dockerfile HEALTHCHECK and by scripts.
int Health(RegistrationClient* client, Options& opt, const Args& args,
           const std::string& server) {
  if (!opt.Unknown().empty()) return Usage("unknown option --" + opt.Unknown());
  const std::string service =
      args.positional.size() > 1 ? args.positional[1] : std::string();
  bool serving = false;
  grpc::Status status = client->CheckHealth(service, &serving);
  if (!status.ok()) return ReportStatus(status, server);
  std::printf("%s\n", serving ? "SERVING" : "NOT_SERVING");
  return serving ? kExitOk : kExitUnavailable;
}

// The bearer token: the first line of --token-file, else $REGSERVE_TOKEN,
// else none. False (with *error) for an unreadable file or a malformed token.
bool ReadToken(Options& opt, std::string* token, std::string* error) {
  std::string text;
  std::string source;
  if (opt.Has("token-file")) {
    source = "--token_file " + opt.Get("token-file");
    std::ifstream in(opt.Get("token-file"), std::ios::binary);
    if (!in) {
      *error = absl::StrCat("cannot read ", source);
      return false;
    }
    std::getline(in, text);
    if (text.empty()) {
      *error =
          absl::StrCat(source, " is empty: put the token on its first line");
      return false;
    }
  } else if (const char* env = std::getenv("REGSERVE_TOKEN")) {
    source = "REGSERVE_TOKEN";
    text = env;
  }
  const std::string trimmed(absl::StripAsciiWhitespace(text));
  for (char c : trimmed) {
    if (c <= ' ' || c == 0x7f) {
      *error = absl::StrCat(source,
                            ": a token holds no spaces or control characters");
      return false;
    }
  }
  *token = trimmed;
  return true;
}

int Main(int argc, char** argv) {
  Args args;
  std::string error;
  if (!ParseArgs(argc, argv, 1, &args, &error)) return Usage(error);
  Options opt(args);
  if (opt.Has("help") || args.positional.empty()) {
    std::fprintf(args.positional.empty() && !opt.Has("help") ? stderr : stdout,
                 "%s", kUsage);
    return args.positional.empty() && !opt.Has("help") ? kExitUsage : kExitOk;
  }
  RegistrationClient::Options copts;
  copts.address = opt.Get("server", "127.0.0.1:50051");
  if (absl::StatusOr<ChannelTarget> target =
          ResolveChannelTarget(copts.address);
      !target.ok()) {
    return Usage(std::string(target.status().message()));
  }
  if (!ReadToken(opt, &copts.token, &error)) return Usage(error);
  if (opt.Has("tls") || opt.Has("tls-ca") || opt.Has("tls-cert") ||
      opt.Has("tls-key")) {
    const absl::Status tls = LoadTlsFiles(
        opt.Get("tls-ca"), opt.Get("tls-cert"), opt.Get("tls-key"), &copts.tls);
    if (!tls.ok()) return Usage(std::string(tls.message()));
  }
  if (opt.Has("tls-server-name")) {
    if (!copts.tls.enabled) return Usage("--tls_server_name needs TLS");
    copts.tls.server_name = opt.Get("tls-server-name");
  }
  if (opt.Has("timeout")) {
    double seconds = 0;
    if (!absl::SimpleAtod(opt.Get("timeout"), &seconds) || !(seconds > 0)) {
      return Usage("--timeout must be a positive number of seconds");
    }
    copts.timeout = absl::Seconds(seconds);
  }
  RegistrationClient client(copts);
  const std::string& command = args.positional[0];
  if (command == "submit") return Submit(&client, opt, args, copts.address);
  if (command == "watch") return Watch(&client, opt, args, copts.address);
  if (command == "cancel") return Cancel(&client, opt, args, copts.address);
  if (command == "status") return Status(&client, opt, args, copts.address);
  if (command == "list") return List(&client, opt, args, copts.address);
  if (command == "server-info")
    return ServerInfo(&client, opt, args, copts.address);
  if (command == "health") return Health(&client, opt, args, copts.address);
  return Usage(absl::StrCat("unknown command \"", command, "\""));
}

}  // namespace
}  // namespace regserve

int main(int argc, char** argv) { return regserve::Main(argc, argv); }
