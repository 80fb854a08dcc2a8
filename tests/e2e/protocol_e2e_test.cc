// Copyright regserve authors.
//
// The protocol's promises, each checked over gRPC against a real regserved
// on a loopback port: who sees which job, Cancel of finished jobs, a client
// that vanishes during its upload, Watch beyond the last tile, attempts after
// a restart, field paths in error messages, server paths that name no file,
// message sizes against gRPC's default 4 MiB receive limit, the job id
// before the upload ends, the tile encoding, health of the service by name,
// and server paths kept out of error messages.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/regserve_client.h"
#include "core/image/image.h"
#include "core/image/image_io.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace regserve {
namespace e2e {
namespace {

using Code = grpc::StatusCode;

const std::vector<std::string> kDaemonFlags = {
    "--stream_tile_size=64", "--elastix_threads=1", "--cpu_slots=2"};

std::string Fixed() {
  return TestData("itk_brain/BrainProtonDensitySlice.png");
}
std::string Moving() {
  return TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

// Polls `done` every `period` until it is true or `timeout` passes.
template <typename Fn>
bool WaitFor(Fn done, absl::Duration timeout,
             absl::Duration period = absl::Milliseconds(50)) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (done()) return true;
    absl::SleepFor(period);
  }
  return done();
}

bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_COMPLETED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

v1::JobSpec RigidSpec() {
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  return spec;
}

// A spec that declares both images as uploads of these sizes.
v1::SubmitRequest UploadSpec(uint64_t fixed_bytes, uint64_t moving_bytes) {
  v1::SubmitRequest r;
  v1::JobSpec* spec = r.mutable_spec();
  spec->set_transform(v1::TRANSFORM_KIND_RIGID);
  spec->mutable_fixed()->mutable_upload()->set_byte_size(fixed_bytes);
  spec->mutable_fixed()->mutable_upload()->set_file_name("fixed.png");
  spec->mutable_moving()->mutable_upload()->set_byte_size(moving_bytes);
  spec->mutable_moving()->mutable_upload()->set_file_name("moving.png");
  return r;
}

v1::SubmitRequest Chunk(v1::ImageRole role, uint64_t offset,
                        const std::string& data) {
  v1::SubmitRequest r;
  r.mutable_chunk()->set_role(role);
  r.mutable_chunk()->set_offset(offset);
  r.mutable_chunk()->set_data(data);
  return r;
}

// Sends `requests`, half-closes and reads every event.
grpc::Status RawSubmit(v1::Registration::Stub* stub,
                       const std::vector<v1::SubmitRequest>& requests,
                       std::vector<v1::JobEvent>* events = nullptr,
                       const std::string& token = "") {
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  auto stream = stub->Submit(&ctx);
  for (const v1::SubmitRequest& r : requests) {
    if (!stream->Write(r)) break;
  }
  stream->WritesDone();
  v1::JobEvent e;
  while (stream->Read(&e)) {
    if (events != nullptr) events->push_back(e);
  }
  return stream->Finish();
}

// A Submit call whose upload stays open until the test says otherwise.
class OpenUpload {
 public:
  OpenUpload(v1::Registration::Stub* stub, uint64_t fixed_bytes,
             uint64_t moving_bytes, const std::string& token = "") {
    if (!token.empty()) ctx_.AddMetadata("authorization", "Bearer " + token);
    ctx_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    stream_ = stub->Submit(&ctx_);
    if (stream_->Write(UploadSpec(fixed_bytes, moving_bytes)) &&
        stream_->Read(&first_)) {
      job_id_ = first_.job_id();
    }
  }
  ~OpenUpload() { Cancel(); }

  // The first event (`created`) and its job id; empty when none came.
  const v1::JobEvent& first() const { return first_; }
  const std::string& job_id() const { return job_id_; }
  bool Write(const v1::SubmitRequest& r) { return stream_->Write(r); }
  bool Read(v1::JobEvent* e) { return stream_->Read(e); }
  // Half-closes and reads the rest; returns the call's status.
  grpc::Status Finish(std::vector<v1::JobEvent>* events = nullptr) {
    stream_->WritesDone();
    v1::JobEvent e;
    while (stream_->Read(&e)) {
      if (events != nullptr) events->push_back(e);
    }
    grpc::Status s = stream_->Finish();
    stream_.reset();
    return s;
  }
  // Cancels the call from the client side, as a vanishing client does.
  grpc::Status Cancel() {
    if (stream_ == nullptr) return grpc::Status::OK;
    ctx_.TryCancel();
    v1::JobEvent e;
    while (stream_->Read(&e)) {
    }
    grpc::Status s = stream_->Finish();
    stream_.reset();
    return s;
  }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SubmitRequest, v1::JobEvent>>
      stream_;
  v1::JobEvent first_;
  std::string job_id_;
};

// Waits until the job is terminal; returns its last snapshot.
v1::JobStatus WaitTerminal(RegistrationClient* client, const std::string& id,
                           absl::Duration timeout = absl::Seconds(120)) {
  v1::JobStatus st;
  WaitFor(
      [&] {
        st.Clear();
        return client->GetJob(id, &st).ok() && Terminal(st.state());
      },
      timeout, absl::Milliseconds(100));
  return st;
}

// GET `path` from HOST:PORT over plain HTTP/1.0; the body, or "" on error.
std::string HttpGet(const std::string& address, const std::string& path) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return "";
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port)) return "";
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", address, "\r\n\r\n");
    if (write(fd, request.data(), request.size()) ==
        static_cast<ssize_t>(request.size())) {
      char buf[4096];
      ssize_t n = 0;
      while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

// The value of the Prometheus series `series` (name and labels, exactly as
// exposed), or -1.
double MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, series + " ")) continue;
    double v = -1;
    if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
  }
  return -1;
}

class ProtocolE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_dir_ = new std::string(MakeTempDir("regserve_proto_data"));
    input_root_ = new std::string(MakeTempDir("regserve_proto_inputs"));
    WriteAll(*input_root_ + "/fixed.png", ReadAll(Fixed()));
    WriteAll(*input_root_ + "/moving.png", ReadAll(Moving()));
    daemon_ = new Daemon();
    std::vector<std::string> flags = kDaemonFlags;
    flags.push_back("--input_root=" + *input_root_);
    flags.push_back("--metrics_listen=127.0.0.1:0");
    ASSERT_TRUE(daemon_->Start(*data_dir_, flags))
        << ReadAll(daemon_->stderr_path());
    // "regserved metrics on HOST:PORT" on stdout, next to the listening
    // line.
    std::string out_path = daemon_->stderr_path();
    out_path.replace(out_path.size() - 4, 4, ".out");
    metrics_address_ = new std::string();
    ASSERT_TRUE(WaitFor(
        [&] {
          const std::string out = ReadAll(out_path);
          const size_t at = out.find("regserved metrics on ");
          const size_t eol = at == std::string::npos ? at : out.find('\n', at);
          if (eol == std::string::npos) return false;
          *metrics_address_ = out.substr(at + 21, eol - at - 21);
          return true;
        },
        absl::Seconds(10)))
        << ReadAll(out_path);
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0) << ReadAll(daemon_->stderr_path());
    delete daemon_;
    delete data_dir_;
    delete input_root_;
    delete metrics_address_;
  }

  static RegistrationClient Client() {
    RegistrationClient::Options o;
    o.address = daemon_->address();
    o.timeout = absl::Seconds(120);
    return RegistrationClient(o);
  }

  // A completed rigid job of the brain pair (uploaded); its id.
  static std::string CompletedJob(RegistrationClient* client) {
    std::string id;
    const grpc::Status s = client->Submit(RigidSpec(), {Fixed(), Moving()},
                                          [&](const v1::JobEvent& e) {
                                            id = e.job_id();
                                            return true;
                                          });
    EXPECT_TRUE(s.ok()) << s.error_message();
    return id;
  }

  static Daemon* daemon_;
  static std::string* data_dir_;
  static std::string* input_root_;
  static std::string* metrics_address_;
};
Daemon* ProtocolE2eTest::daemon_ = nullptr;
std::string* ProtocolE2eTest::data_dir_ = nullptr;
std::string* ProtocolE2eTest::input_root_ = nullptr;
std::string* ProtocolE2eTest::metrics_address_ = nullptr;

// --- 1. Identity.

// Without --auth_tokens every caller is the one anonymous principal: the
// "regserve-principal" metadata key (which an earlier proto comment promised)
// does not separate jobs.
TEST_F(ProtocolE2eTest, WithoutTokensPrincipalMetadataDoesNotSeparateJobs) {
  RegistrationClient client = Client();
  OpenUpload upload(client.stub(), 100, 100);
  ASSERT_FALSE(upload.job_id().empty());
  for (const char* who : {"alice", "bob"}) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("regserve-principal", who);
    v1::GetJobRequest request;
    request.set_job_id(upload.job_id());
    v1::JobStatus job;
    const grpc::Status s = client.stub()->GetJob(&ctx, request, &job);
    EXPECT_TRUE(s.ok()) << who << ": " << s.error_message();
    EXPECT_EQ(job.state(), v1::JOB_STATE_UPLOADING) << who;
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata("regserve-principal", "bob");
  v1::ListJobsResponse list;
  ASSERT_TRUE(client.stub()->ListJobs(&ctx, v1::ListJobsRequest(), &list).ok());
  EXPECT_TRUE(std::any_of(
      list.jobs().begin(), list.jobs().end(),
      [&](const v1::JobStatus& j) { return j.job_id() == upload.job_id(); }));
}

// With --auth_tokens the principal is the token's: a job submitted with
// token A is NOT_FOUND for token B, whatever metadata B adds.
TEST(ProtocolTokensE2eTest, JobOfAnotherTokenIsNotFound) {
  const std::string dir = MakeTempDir("regserve_proto_tokens");
  const std::string alice = "alice-token-0123456789abcdef";
  const std::string bob = "bob-token-0123456789abcdef00";
  WriteAll(dir + "/tokens", absl::StrCat("alice ", alice, "\nbob ", bob, "\n"));
  chmod((dir + "/tokens").c_str(), 0600);
  Daemon daemon;
  ASSERT_TRUE(
      daemon.Start(MakeTempDir("regserve_proto_tokens_data"),
                   {"--auth_tokens=" + dir + "/tokens", "--elastix_threads=1"}))
      << ReadAll(daemon.stderr_path());
  const auto client_of = [&](const std::string& token) {
    RegistrationClient::Options o;
    o.address = daemon.address();
    o.token = token;
    o.timeout = absl::Seconds(60);
    return RegistrationClient(o);
  };
  RegistrationClient a = client_of(alice), b = client_of(bob);
  OpenUpload upload(a.stub(), 100, 100, alice);
  const std::string id = upload.job_id();
  ASSERT_FALSE(id.empty());

  v1::JobStatus job;
  EXPECT_TRUE(a.GetJob(id, &job).ok());
  EXPECT_EQ(b.GetJob(id, &job).error_code(), Code::NOT_FOUND);
  v1::CancelResponse cancelled;
  EXPECT_EQ(b.Cancel(id, &cancelled).error_code(), Code::NOT_FOUND);
  EXPECT_EQ(
      b.Watch(id, 0, [](const v1::JobEvent&) { return true; }).error_code(),
      Code::NOT_FOUND);
  v1::ListJobsResponse list;
  ASSERT_TRUE(b.ListJobs(&list).ok());
  EXPECT_EQ(list.jobs_size(), 0);
  // Naming alice in metadata changes nothing for bob.
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + bob);
    ctx.AddMetadata("regserve-principal", "alice");
    v1::GetJobRequest request;
    request.set_job_id(id);
    EXPECT_EQ(b.stub()->GetJob(&ctx, request, &job).error_code(),
              Code::NOT_FOUND);
  }
  // Still alice's, and still uploading.
  ASSERT_TRUE(a.GetJob(id, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_UPLOADING);
  upload.Cancel();
  EXPECT_EQ(daemon.Stop(), 0);
}

// --- 2. Cancel of a finished job: OK, and the response tells its final
// state.

TEST_F(ProtocolE2eTest, CancelOfACompletedJobReportsCompleted) {
  RegistrationClient client = Client();
  const std::string id = CompletedJob(&client);
  ASSERT_FALSE(id.empty());
  v1::CancelResponse response;
  const grpc::Status s = client.Cancel(id, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.state(), v1::JOB_STATE_COMPLETED);
  EXPECT_FALSE(response.has_failure());
  v1::JobStatus job;
  ASSERT_TRUE(client.GetJob(id, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED);
}

TEST_F(ProtocolE2eTest, CancelOfAFailedOrCancelledJobReportsItsEnd) {
  RegistrationClient client = Client();
  // A job that fails: its fixed image is not an image.
  const std::string m = ReadAll(Moving());
  std::string garbage(2000, '\0');
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = char(i * 31);
  std::vector<v1::JobEvent> events;
  const grpc::Status failed =
      RawSubmit(client.stub(),
                {UploadSpec(garbage.size(), m.size()),
                 Chunk(v1::IMAGE_ROLE_FIXED, 0, garbage),
                 Chunk(v1::IMAGE_ROLE_MOVING, 0, m)},
                &events);
  ASSERT_EQ(failed.error_code(), Code::INVALID_ARGUMENT)
      << failed.error_message();
  ASSERT_FALSE(events.empty());
  const std::string failed_id = events.front().job_id();
  v1::CancelResponse response;
  grpc::Status s = client.Cancel(failed_id, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(response.failure().code(), static_cast<int>(Code::INVALID_ARGUMENT))
      << response.failure().message();

  // A cancelled job, cancelled again.
  OpenUpload upload(client.stub(), 100, 100);
  ASSERT_FALSE(upload.job_id().empty());
  ASSERT_TRUE(client.Cancel(upload.job_id(), &response).ok());
  EXPECT_EQ(response.state(), v1::JOB_STATE_CANCELLED);
  s = client.Cancel(upload.job_id(), &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(response.failure().code(), static_cast<int>(Code::CANCELLED));
}

// --- 3. A client that disconnects during its upload: the job is
// CANCELLED, and not counted as a bad request.

TEST_F(ProtocolE2eTest, DisconnectDuringUploadCancelsTheJob) {
  RegistrationClient client = Client();
  const std::string before = HttpGet(*metrics_address_, "/metrics");
  const std::string bad =
      "regserve_job_failures_total{reason=\"invalid_argument\"}";
  const std::string cancelled_series =
      "regserve_jobs_finished_total{outcome=\"cancelled\"}";
  ASSERT_GE(MetricValue(before, bad), 0) << before;

  const std::string f = ReadAll(Fixed()), m = ReadAll(Moving());
  // The client goes at once, or after the chunk had time to arrive (the
  // server may then see the end of the stream before the cancellation).
  const int kWaitsMs[] = {0, 10, 50, 100, 200};
  std::string id;
  for (int round = 0; round < 5; ++round) {
    OpenUpload upload(client.stub(), f.size(), m.size());
    ASSERT_FALSE(upload.job_id().empty());
    id = upload.job_id();
    ASSERT_TRUE(upload.Write(
        Chunk(v1::IMAGE_ROLE_FIXED, 0, f.substr(0, f.size() / 2))));
    absl::SleepFor(absl::Milliseconds(kWaitsMs[round]));
    EXPECT_EQ(upload.Cancel().error_code(), Code::CANCELLED);
    const v1::JobStatus job = WaitTerminal(&client, id);
    EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED)
        << "round " << round << ": " << v1::JobState_Name(job.state()) << " "
        << job.failure().message();
    EXPECT_EQ(job.failure().code(), static_cast<int>(Code::CANCELLED))
        << job.failure().message();
    EXPECT_EQ(job.failure().message().find("truncated"), std::string::npos)
        << job.failure().message();
  }
  const std::string after = HttpGet(*metrics_address_, "/metrics");
  EXPECT_EQ(MetricValue(after, bad), MetricValue(before, bad));
  EXPECT_EQ(MetricValue(after, cancelled_series),
            MetricValue(before, cancelled_series) + 5)
      << after;
}

// --- 4. Watch beyond the last tile: OUT_OF_RANGE, whether the job is still
// uploading or finished.

TEST_F(ProtocolE2eTest, WatchBeyondTheLastTileIsOutOfRangeInEveryState) {
  RegistrationClient client = Client();
  const auto watch = [&](const std::string& id, int64_t from) {
    return client.Watch(id, from, [](const v1::JobEvent&) { return true; });
  };
  // Finished.
  const std::string done = CompletedJob(&client);
  ASSERT_FALSE(done.empty());
  const grpc::Status finished = watch(done, 1000);
  EXPECT_EQ(finished.error_code(), Code::OUT_OF_RANGE)
      << finished.error_message();

  // Still uploading: the watch is open before the tile count is known and
  // ends as soon as the plan is made.
  const std::string f = ReadAll(Fixed()), m = ReadAll(Moving());
  OpenUpload upload(client.stub(), f.size(), m.size());
  ASSERT_FALSE(upload.job_id().empty());
  grpc::Status uploading;
  std::atomic<bool> watch_done{false};
  std::vector<v1::JobEvent::EventCase> seen;
  std::thread watcher([&] {
    uploading = client.Watch(upload.job_id(), 1000, [&](const v1::JobEvent& e) {
      seen.push_back(e.event_case());
      return true;
    });
    watch_done = true;
  });
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_FALSE(watch_done.load()) << uploading.error_message();
  ASSERT_TRUE(upload.Write(Chunk(v1::IMAGE_ROLE_FIXED, 0, f)));
  ASSERT_TRUE(upload.Write(Chunk(v1::IMAGE_ROLE_MOVING, 0, m)));
  const grpc::Status submitted = upload.Finish();
  watcher.join();
  EXPECT_TRUE(submitted.ok()) << submitted.error_message();
  EXPECT_EQ(uploading.error_code(), Code::OUT_OF_RANGE)
      << uploading.error_message();
  // The same answer as for the finished job: the code, and no accepted
  // event before it.
  EXPECT_EQ(std::count(seen.begin(), seen.end(), v1::JobEvent::kAccepted), 0);
  EXPECT_NE(uploading.error_message().find("from_tile"), std::string::npos)
      << uploading.error_message();
  EXPECT_NE(finished.error_message().find("from_tile"), std::string::npos)
      << finished.error_message();
}

// --- 6. Error messages name fields by their proto paths.

TEST_F(ProtocolE2eTest, ErrorMessagesUseProtoFieldPaths) {
  RegistrationClient client = Client();
  const std::string f = ReadAll(Fixed()), m = ReadAll(Moving());
  struct Case {
    const char* what;
    v1::SubmitRequest spec;
    const char* path;
  };
  std::vector<Case> cases;
  {
    v1::SubmitRequest r = UploadSpec(f.size(), m.size());
    r.mutable_spec()->set_max_registration_megapixels(-1);
    cases.push_back(
        {"negative megapixels", r, "spec.max_registration_megapixels"});
  }
  {
    v1::SubmitRequest r = UploadSpec(0, m.size());
    cases.push_back({"zero upload size", r, "spec.fixed.upload.byte_size"});
  }
  {
    v1::SubmitRequest r = UploadSpec(f.size(), m.size());
    r.mutable_spec()->add_elastix_parameters("this is (not an elastix \"file");
    cases.push_back({"bad parameters", r, "spec.elastix_parameters[0]"});
  }
  {
    v1::SubmitRequest r = UploadSpec(f.size(), m.size());
    r.mutable_spec()->mutable_fixed()->set_server_path("no-such-file.png");
    cases.push_back({"missing server file", r, "spec.fixed.server_path"});
  }
  {
    v1::SubmitRequest r = UploadSpec(f.size(), m.size());
    r.mutable_spec()->mutable_moving()->set_server_path(
        std::string("bad\0path.png", 12));
    cases.push_back({"invalid server path", r, "spec.moving.server_path"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const grpc::Status s =
        RawSubmit(client.stub(), {c.spec, Chunk(v1::IMAGE_ROLE_FIXED, 0, f),
                                  Chunk(v1::IMAGE_ROLE_MOVING, 0, m)});
    EXPECT_EQ(s.error_code(), Code::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find(c.path), std::string::npos)
        << "want \"" << c.path << "\" in: " << s.error_message();
    // The core's own names must not leak through.
    for (const char* old : {"options.", "upload_bytes", "custom_parameters",
                            "fixed.path", "moving.path"}) {
      EXPECT_EQ(s.error_message().find(old), std::string::npos)
          << "\"" << old << "\" in: " << s.error_message();
    }
  }
}

// --- 7. Server paths that name no regular file are INVALID_ARGUMENT (not
// NOT_FOUND, which is for unknown jobs).

TEST_F(ProtocolE2eTest, ServerPathThatIsNoFileIsInvalidArgument) {
  RegistrationClient client = Client();
  const auto submit = [&](const std::string& fixed_path) {
    v1::SubmitRequest r;
    *r.mutable_spec() = RigidSpec();
    r.mutable_spec()->mutable_fixed()->set_server_path(fixed_path);
    r.mutable_spec()->mutable_moving()->set_server_path("moving.png");
    return RawSubmit(client.stub(), {r});
  };
  const grpc::Status root = submit(".");
  EXPECT_EQ(root.error_code(), Code::INVALID_ARGUMENT) << root.error_message();
  const grpc::Status missing = submit("no/such/file.png");
  EXPECT_EQ(missing.error_code(), Code::INVALID_ARGUMENT)
      << missing.error_message();
  EXPECT_NE(missing.error_message().find("input root"), std::string::npos)
      << missing.error_message();
  mkdir((*input_root_ + "/a_directory").c_str(), 0755);
  EXPECT_EQ(submit("a_directory").error_code(), Code::INVALID_ARGUMENT);
  // And a real pair of server files works.
  const grpc::Status ok = submit("fixed.png");
  EXPECT_TRUE(ok.ok()) << ok.error_message();
}

// --- 9. The submitter learns its job id before the upload ends, and can
// cancel the upload with it; upload progress arrives meanwhile.

TEST_F(ProtocolE2eTest, JobIdArrivesBeforeTheUploadAndCancelStopsIt) {
  RegistrationClient client = Client();
  const std::string f = ReadAll(Fixed()), m = ReadAll(Moving());
  OpenUpload upload(client.stub(), f.size(), m.size());
  // The first event came before any chunk was sent.
  ASSERT_TRUE(upload.first().has_created()) << upload.first().DebugString();
  EXPECT_EQ(upload.first().created().upload_bytes(), f.size() + m.size());
  const std::string id = upload.job_id();
  ASSERT_FALSE(id.empty());
  v1::JobStatus job;
  ASSERT_TRUE(client.GetJob(id, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_UPLOADING);

  // Upload progress while the upload goes on.
  ASSERT_TRUE(
      upload.Write(Chunk(v1::IMAGE_ROLE_FIXED, 0, f.substr(0, f.size() / 2))));
  // (The job's present, fraction 0, may come first.)
  v1::JobEvent e;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(upload.Read(&e));
    ASSERT_TRUE(e.has_progress()) << e.DebugString();
    EXPECT_EQ(e.progress().stage(), v1::STAGE_UPLOAD);
    if (e.progress().fraction() > 0) break;
  }
  EXPECT_DOUBLE_EQ(e.progress().fraction(),
                   (f.size() / 2) / static_cast<double>(f.size() + m.size()));

  // Cancel by id, the upload still open.
  v1::CancelResponse cancelled;
  ASSERT_TRUE(client.Cancel(id, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  std::vector<v1::JobEvent> rest;
  const grpc::Status s = upload.Finish(&rest);
  EXPECT_EQ(s.error_code(), Code::CANCELLED) << s.error_message();
  ASSERT_FALSE(rest.empty());
  EXPECT_TRUE(rest.back().has_failed());
  EXPECT_EQ(rest.back().failed().code(), static_cast<int>(Code::CANCELLED));
  ASSERT_TRUE(client.GetJob(id, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
}

// The client library hands `created` to the caller before the upload ends.
TEST_F(ProtocolE2eTest, ClientLibrarySurfacesTheJobIdDuringTheUpload) {
  RegistrationClient::Options o;
  o.address = daemon_->address();
  o.chunk_bytes = 4096;  // many chunks
  RegistrationClient client(o);
  std::string id;
  uint64_t sent_when_created = 0, last_sent = 0;
  int chunks_after_created = 0;
  bool cancelled = false;
  const grpc::Status s = client.Submit(
      RigidSpec(), {Fixed(), Moving()},
      [&](const v1::JobEvent& e) {
        if (e.has_created()) {
          id = e.job_id();
          sent_when_created = last_sent;
        }
        return true;
      },
      [&](v1::ImageRole, uint64_t sent, uint64_t size) {
        last_sent = sent;
        if (!id.empty()) ++chunks_after_created;
        // Cancel from the callback once the id is known, mid-upload.
        if (!id.empty() && !cancelled && chunks_after_created == 3) {
          v1::CancelResponse r;
          cancelled = client.Cancel(id, &r).ok();
        }
        (void)size;
      });
  ASSERT_FALSE(id.empty());
  EXPECT_TRUE(cancelled);
  EXPECT_GE(chunks_after_created, 3);
  EXPECT_EQ(sent_when_created, 0u);  // the id came before the first chunk
  EXPECT_EQ(s.error_code(), Code::CANCELLED) << s.error_message();
  v1::JobStatus job;
  ASSERT_TRUE(client.GetJob(id, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
}

// --- 10. Tiles carry their encoding as an enum (and the old text).

TEST_F(ProtocolE2eTest, TilesAreRawByEnum) {
  RegistrationClient client = Client();
  int tiles = 0;
  const grpc::Status s = client.Submit(
      RigidSpec(), {Fixed(), Moving()}, [&](const v1::JobEvent& e) {
        if (!e.has_tile()) return true;
        ++tiles;
        EXPECT_EQ(e.tile().encoding(), v1::TILE_ENCODING_RAW);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        EXPECT_EQ(e.tile().encoding_name(), "raw");
#pragma GCC diagnostic pop
        EXPECT_EQ(e.tile().data().size(),
                  static_cast<size_t>(e.tile().width() * e.tile().height() *
                                      e.tile().channels()));
        return true;
      });
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(tiles, 4 * 3);  // 181x217 in 64-px tiles
}

// --- 11. Health of the service by its name, and of the whole server.

TEST_F(ProtocolE2eTest, HealthAnswersForTheServiceName) {
  RegistrationClient client = Client();
  for (const std::string name : {"", "regserve.v1.Registration"}) {
    bool serving = false;
    const grpc::Status s = client.CheckHealth(name, &serving);
    EXPECT_TRUE(s.ok()) << "\"" << name << "\": " << s.error_message();
    EXPECT_TRUE(serving) << "\"" << name << "\"";
  }
  bool serving = true;
  EXPECT_EQ(client.CheckHealth("no.such.Service", &serving).error_code(),
            Code::NOT_FOUND);
}

// --- 12. A decode error does not show the server's paths.

TEST_F(ProtocolE2eTest, DecodeErrorsDoNotShowServerPaths) {
  RegistrationClient client = Client();
  const std::string m = ReadAll(Moving());
  // PNG magic, then garbage: the header read fails inside the decoder.
  std::string corrupt = ReadAll(Fixed()).substr(0, 16);
  for (int i = 0; i < 3000; ++i) corrupt.push_back(static_cast<char>(i * 7));
  std::vector<v1::JobEvent> events;
  const grpc::Status s = RawSubmit(client.stub(),
                                   {UploadSpec(corrupt.size(), m.size()),
                                    Chunk(v1::IMAGE_ROLE_FIXED, 0, corrupt),
                                    Chunk(v1::IMAGE_ROLE_MOVING, 0, m)},
                                   &events);
  EXPECT_EQ(s.error_code(), Code::INVALID_ARGUMENT) << s.error_message();
  ASSERT_FALSE(events.empty());
  v1::JobStatus job;
  ASSERT_TRUE(client.GetJob(events.front().job_id(), &job).ok());
  for (const std::string& message : {s.error_message(), job.failure().message(),
                                     events.back().failed().message()}) {
    EXPECT_FALSE(message.empty());
    EXPECT_EQ(message.find(*data_dir_), std::string::npos) << message;
    EXPECT_EQ(message.find("/jobs/"), std::string::npos) << message;
    EXPECT_EQ(message.find(*input_root_), std::string::npos) << message;
  }
}

// --- 8. Message sizes: every tile of a float32 RGBA result fits a client
// with gRPC's default 4 MiB receive limit.

// The brain slice, 4x larger (724x868) as float32 RGBA.
void WriteFloatRgba(const std::string& from, const std::string& to) {
  absl::StatusOr<Image> gray = ReadImageFile(from);
  ASSERT_TRUE(gray.ok()) << gray.status();
  ImageSpec spec;
  spec.width = gray->width() * 4;
  spec.height = gray->height() * 4;
  spec.channels = 4;
  spec.type = SampleType::kFloat32;
  absl::StatusOr<Image> out = Image::Allocate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  float* px = reinterpret_cast<float*>(out->data());
  for (int64_t y = 0; y < spec.height; ++y) {
    for (int64_t x = 0; x < spec.width; ++x) {
      const float v = gray->row(y / 4)[(x / 4) * gray->channels()] / 255.0f;
      float* p = px + (y * spec.width + x) * 4;
      p[0] = v;
      p[1] = 0.5f * v;
      p[2] = 1.0f - v;
      p[3] = 1.0f;
    }
  }
  const absl::Status written = WriteImageFile(to, *out);
  ASSERT_TRUE(written.ok()) << written;
}

TEST(ProtocolSizesE2eTest, FloatRgbaTilesFitTheDefaultReceiveLimit) {
  const std::string dir = MakeTempDir("regserve_proto_float");
  const std::string fixed = dir + "/fixed.tif", moving = dir + "/moving.tif";
  WriteFloatRgba(Fixed(), fixed);
  WriteFloatRgba(Moving(), moving);
  if (HasFatalFailure()) return;
  // The daemon's default stream tile size (512): a 512 px float32 RGBA tile
  // would be 4 MiB of samples alone.
  Daemon daemon;
  ASSERT_TRUE(daemon.Start(MakeTempDir("regserve_proto_float_data"),
                           {"--elastix_threads=1"}))
      << ReadAll(daemon.stderr_path());
  RegistrationClient::Options o;
  o.address = daemon.address();
  o.timeout = absl::Seconds(300);
  // gRPC's defaults: a 4 MiB receive limit.
  RegistrationClient client(
      o, grpc::CreateChannel(daemon.address(),
                             grpc::InsecureChannelCredentials()));
  v1::JobSpec spec = RigidSpec();
  spec.set_max_registration_megapixels(0.05);
  int64_t tiles = 0, tile_count = -1;
  size_t largest = 0;
  bool completed = false;
  const grpc::Status s =
      client.Submit(spec, {fixed, moving}, [&](const v1::JobEvent& e) {
        if (e.has_tile()) {
          ++tiles;
          tile_count = e.tile().tile_count();
          largest = std::max(largest, e.ByteSizeLong());
          EXPECT_EQ(e.tile().sample_type(), v1::SAMPLE_TYPE_FLOAT32);
          EXPECT_EQ(e.tile().channels(), 4);
          EXPECT_LE(e.tile().data().size(), size_t{7} << 19);  // 3.5 MiB
        }
        completed |= e.has_completed();
        return true;
      });
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(completed);
  EXPECT_EQ(tiles, tile_count);
  EXPECT_GT(tiles, 0);
  EXPECT_LE(largest, size_t{4} << 20);
  fprintf(stderr, "float32 RGBA 724x868: %lld tiles, largest message %zu B\n",
          static_cast<long long>(tiles), largest);
  EXPECT_EQ(daemon.Stop(), 0);
}

// --- 5. attempts counts the runs: a job re-run after daemon restarts (one
// graceful, SIGTERM, and one kill -9, each during its registration) reports
// 3.

#ifdef REGSERVE_ELASTIX
TEST(ProtocolRestartE2eTest, AttemptsCountEveryRunThatRestartsInterrupted) {
  // An elastix that sleeps first while `slow` exists, so that the restarts
  // land during the registration.
  const std::string wrapper_dir = MakeTempDir("regserve_proto_wrapper");
  const std::string wrapper = wrapper_dir + "/elastix";
  WriteAll(wrapper, absl::StrCat("#!/bin/sh\n"
                                 "if [ -f '",
                                 wrapper_dir,
                                 "/slow' ]; then sleep 120; fi\n"
                                 "exec '",
                                 REGSERVE_ELASTIX, "' \"$@\"\n"));
  chmod(wrapper.c_str(), 0755);
  WriteAll(wrapper_dir + "/slow", "1\n");
  const std::string data = MakeTempDir("regserve_proto_restart");
  const std::vector<std::string> flags = {
      "--stream_tile_size=64", "--elastix_threads=1", "--elastix=" + wrapper};
  const auto client_of = [](const Daemon& d) {
    RegistrationClient::Options o;
    o.address = d.address();
    o.timeout = absl::Seconds(60);
    return RegistrationClient(o);
  };
  // The job's snapshot once it is in its registration, elastix started.
  const auto registering = [&](const Daemon& d, RegistrationClient* client,
                               const std::string& id) {
    v1::JobStatus job;
    EXPECT_TRUE(WaitFor(
        [&] {
          return client->GetJob(id, &job).ok() &&
                 job.state() == v1::JOB_STATE_RUNNING &&
                 job.stage() == v1::STAGE_REGISTRATION &&
                 !DescendantsNamed(d.pid(), "sleep").empty();
        },
        absl::Seconds(60)))
        << job.DebugString();
    return job;
  };
  std::string id;
  {
    Daemon first;
    ASSERT_TRUE(first.Start(data, flags)) << ReadAll(first.stderr_path());
    RegistrationClient client = client_of(first);
    client.Submit(RigidSpec(), {Fixed(), Moving()}, [&](const v1::JobEvent& e) {
      id = e.job_id();
      return !e.has_accepted();  // hang up once planned
    });
    ASSERT_FALSE(id.empty());
    EXPECT_EQ(registering(first, &client, id).attempts(), 1);
    EXPECT_EQ(first.Stop(), 0) << ReadAll(first.stderr_path());  // SIGTERM
  }
  {
    Daemon second;
    ASSERT_TRUE(second.Start(data, flags)) << ReadAll(second.stderr_path());
    RegistrationClient client = client_of(second);
    EXPECT_EQ(registering(second, &client, id).attempts(), 2);
    second.Kill();  // kill -9
  }
  unlink((wrapper_dir + "/slow").c_str());
  Daemon third;
  ASSERT_TRUE(third.Start(data, flags)) << ReadAll(third.stderr_path());
  RegistrationClient client = client_of(third);
  const v1::JobStatus job = WaitTerminal(&client, id, absl::Seconds(180));
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.failure().message();
  EXPECT_EQ(job.attempts(), 3);
  EXPECT_EQ(third.Stop(), 0);
}
#endif  // REGSERVE_ELASTIX

}  // namespace
}  // namespace e2e
}  // namespace regserve
