// Copyright regserve authors.
//
// libFuzzer entry point for the job-spec path of Submit, without a daemon:
// bytes -> SubmitRequest::ParseFromString -> the server's conversion
// (SpecFromProto / RoleFromProto, server/convert.h) -> JobManager::CreateJob,
// which validates the spec (sources, names, enums, numbers, elastix
// parameters), resolves server-side paths under an input root and, for jobs
// whose images are both server-side, reads the headers and plans the job.
//
// The JobManager runs with no pipeline threads and a job store whose writes
// always fail (kStoreRefused, Aborted), so no job is ever stored and every
// input is judged from the same state. Properties checked (abort = crash):
//   - the conversion fails only with InvalidArgument;
//   - CreateJob fails only with the documented codes (InvalidArgument,
//     PermissionDenied, NotFound, ResourceExhausted) or with the store's
//     refusal, which means the spec was accepted;
//   - RoleFromProto fails only with InvalidArgument.
//
// The input root holds fixed.png and moving.png (1x1 gray images written at
// start-up) and a symbolic link, escape.png, that points outside the root.
//
// Built with -DREGSERVE_FUZZ=ON and clang (tests/fuzz/CMakeLists.txt); the
// same file is linked into the replay test fuzz_replay_job_spec.
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/hardware/hardware.h"
#include "core/image/image.h"
#include "core/image/image_io.h"
#include "core/jobs/job_env.h"
#include "core/jobs/job_manager.h"
#include "core/scheduler/scheduler.h"
#include "google/protobuf/stubs/logging.h"
#include "regserve/v1/regserve.pb.h"
#include "server/convert.h"

namespace {

namespace fs = std::filesystem;

constexpr absl::string_view kStoreRefused = "fuzz: the job store is read-only";

// Refuses every write, so CreateJob never stores a job.
class RefusingFileSystem final : public regserve::JobFileSystem {
 public:
  absl::Status WriteFileAtomic(const std::string&, absl::string_view) override {
    return absl::AbortedError(kStoreRefused);
  }
  absl::Status AppendToFile(const std::string&,
                            absl::Span<const uint8_t>) override {
    return absl::AbortedError(kStoreRefused);
  }
  absl::Status SyncFile(const std::string&) override {
    return absl::AbortedError(kStoreRefused);
  }
};

struct Harness {
  std::string root;  // removed at exit
  RefusingFileSystem fs;
  std::unique_ptr<regserve::FakeProbe> probe;
  std::unique_ptr<regserve::ResourceScheduler> scheduler;
  std::unique_ptr<regserve::JobManager> manager;
};

Harness* harness = nullptr;

void RemoveRoot() {
  if (harness == nullptr) return;
  std::error_code ec;
  fs::remove_all(harness->root, ec);
}

Harness* MakeHarness() {
  auto* h = new Harness();
  const char* tmp = getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr ? tmp : "/tmp") + "/regserve_fuzz_XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) std::abort();
  h->root = buf.data();
  const std::string inputs = h->root + "/inputs";
  fs::create_directories(inputs);
  fs::create_directories(h->root + "/outside");
  // A valid 1x1 gray image for both server-side inputs.
  regserve::ImageSpec spec;
  spec.width = 1;
  spec.height = 1;
  spec.channels = 1;
  spec.type = regserve::SampleType::kUInt8;
  absl::StatusOr<regserve::Image> image = regserve::Image::Allocate(spec);
  if (!image.ok()) std::abort();
  image->data()[0] = 128;
  if (!regserve::WriteImageFile(inputs + "/fixed.png", *image).ok() ||
      !regserve::WriteImageFile(inputs + "/moving.png", *image).ok() ||
      !regserve::WriteImageFile(h->root + "/outside/secret.png", *image).ok()) {
    std::abort();
  }
  fs::create_symlink(h->root + "/outside/secret.png", inputs + "/escape.png");

  regserve::HardwareSnapshot hw;
  hw.ram_total_bytes = 8ull << 30;
  hw.ram_available_bytes = 8ull << 30;
  hw.cpu_cores = 2;
  h->probe = std::make_unique<regserve::FakeProbe>(hw);
  regserve::SchedulerConfig config;
  config.ram_budget_bytes = 4ull << 30;
  config.cpu_slots = 1;
  h->scheduler =
      std::make_unique<regserve::ResourceScheduler>(config, h->probe.get());
  regserve::JobManager::Options options;
  options.data_dir = h->root + "/data";
  options.input_root = inputs;
  options.max_upload_bytes = 1ull << 30;
  regserve::JobManagerEnv env;
  env.fs = &h->fs;
  env.pipeline_threads = 0;
  absl::StatusOr<std::unique_ptr<regserve::JobManager>> manager =
      regserve::CreateJobManagerWithEnv(options, h->scheduler.get(),
                                        h->probe.get(), std::move(env));
  if (!manager.ok()) std::abort();
  h->manager = std::move(*manager);
  return h;
}

// Protobuf logs every string field with invalid UTF-8 it parses; that is
// expected here and would only slow the fuzzer down.
void IgnoreProtobufLog(google::protobuf::LogLevel, const char*, int,
                       const std::string&) {}

bool Allowed(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kResourceExhausted:
      return true;
    case absl::StatusCode::kAborted:
      return s.message() == kStoreRefused;
    default:
      return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (harness == nullptr) {
    google::protobuf::SetLogHandler(&IgnoreProtobufLog);
    harness = MakeHarness();
    atexit(RemoveRoot);
  }
  regserve::v1::SubmitRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (request.has_chunk()) {
    absl::StatusOr<regserve::ImageRole> role =
        regserve::RoleFromProto(request.chunk().role());
    if (!role.ok() &&
        role.status().code() != absl::StatusCode::kInvalidArgument) {
      std::abort();
    }
    return 0;
  }
  if (!request.has_spec()) return 0;
  absl::StatusOr<regserve::JobSpec> spec =
      regserve::SpecFromProto(request.spec());
  if (!spec.ok()) {
    if (spec.status().code() != absl::StatusCode::kInvalidArgument) {
      std::abort();
    }
    return 0;
  }
  absl::StatusOr<std::string> id = harness->manager->CreateJob(*spec, "fuzz");
  // The store refuses every write: a job can never be created.
  if (id.ok() || !Allowed(id.status())) std::abort();
  return 0;
}
