// Copyright regserve authors.
//
// End to end: a real regserved on a loopback port, driven by regctl (as a
// subprocess) and by the RegistrationClient library. Small images (the ITK
// brain slice, 181x217) and rigid transforms keep it fast; the daemon streams
// 64-px tiles so that results have several tiles.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/regserve_client.h"
#include "client/tile_assembler.h"
#include "core/common/file_util.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace regserve {
namespace e2e {
namespace {

const std::vector<std::string> kDaemonFlags = {
    "--stream_tile_size=64", "--elastix_threads=1", "--cpu_slots=2"};

std::string Fixed() {
  return TestData("itk_brain/BrainProtonDensitySlice.png");
}
std::string Moving() {
  return TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
}

std::string ReadAll(const std::string& path) {
  return ReadFileToString(path).value_or("");  // "" when missing
}

v1::JobSpec RigidSpec() {
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  return spec;
}

class ServiceE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_dir_ = new std::string(MakeTempDir("regserve_e2e_data"));
    input_root_ = new std::string(MakeTempDir("regserve_e2e_inputs"));
    daemon_ = new Daemon();
    ASSERT_TRUE(daemon_->Start(*data_dir_,
                               [] {
                                 std::vector<std::string> f = kDaemonFlags;
                                 f.push_back("--input_root=" + *input_root_);
                                 return f;
                               }()))
        << ReadAll(daemon_->stderr_path());
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0) << ReadAll(daemon_->stderr_path());
    delete daemon_;
    delete data_dir_;
    delete input_root_;
  }

  RegistrationClient Client() {
    RegistrationClient::Options o;
    o.address = daemon_->address();
    return RegistrationClient(o);
  }

  void ExpectHealthy() {
    RegistrationClient client = Client();
    bool serving = false;
    ASSERT_TRUE(client.CheckHealth("", &serving).ok());
    EXPECT_TRUE(serving);
  }

  static Daemon* daemon_;
  static std::string* data_dir_;
  static std::string* input_root_;
};
Daemon* ServiceE2eTest::daemon_ = nullptr;
std::string* ServiceE2eTest::data_dir_ = nullptr;
std::string* ServiceE2eTest::input_root_ = nullptr;

TEST_F(ServiceE2eTest, RegctlSubmitAlignsTheImages) {
  const std::string dir = MakeTempDir("regctl_submit");
  const std::string out = dir + "/registered.png";
  CommandResult r = RunRegctl(
      daemon_->address(),
      {"submit", "--fixed", Fixed(), "--moving", Moving(), "--output", out,
       "--transform", "rigid", "--transform-out", dir + "/transform"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote " + out), std::string::npos) << r.out;
  const double before = FileNcc(Fixed(), Moving());
  const double after = FileNcc(Fixed(), out);
  EXPECT_GT(after, before + 0.2) << "before " << before << " after " << after;
  EXPECT_GT(after, 0.85);
  const std::string tp = ReadAll(dir + "/transform/TransformParameters.0.txt");
  EXPECT_NE(tp.find("EulerTransform"), std::string::npos) << tp;
  EXPECT_NE(access((out + ".partial").c_str(), F_OK), 0);
}

TEST_F(ServiceE2eTest, RegctlJsonAndUsageAndErrors) {
  const std::string out = MakeTempDir("regctl_json") + "/r.tif";
  CommandResult r = RunRegctl(
      daemon_->address(), {"submit", "--fixed", Fixed(), "--moving", Moving(),
                           "--output", out, "--transform", "affine", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // One JSON object per line, ending with the output line.
  std::istringstream lines(r.out);
  std::string line, last;
  int count = 0;
  bool saw_accepted = false, saw_completed = false;
  while (std::getline(lines, line)) {
    ASSERT_FALSE(line.empty());
    EXPECT_EQ(line.front(), '{');
    EXPECT_EQ(line.back(), '}');
    saw_accepted |= line.find("\"accepted\"") != std::string::npos;
    saw_completed |= line.find("\"completed\"") != std::string::npos;
    last = line;
    ++count;
  }
  EXPECT_TRUE(saw_accepted);
  EXPECT_TRUE(saw_completed);
  EXPECT_EQ(last, "{\"output\":\"" + out + "\"}");
  EXPECT_GT(FileNcc(Fixed(), out), FileNcc(Fixed(), Moving()) + 0.2);

  EXPECT_EQ(
      RunRegctl(daemon_->address(), {"submit", "--fixed", Fixed()}).exit_code,
      2);
  EXPECT_EQ(RunRegctl(daemon_->address(), {"frobnicate"}).exit_code, 2);
  EXPECT_EQ(
      RunRegctl(daemon_->address(), {"submit", "--fixed", "/nonexistent.png",
                                     "--moving", Moving(), "--output", out})
          .exit_code,
      2);
  EXPECT_EQ(RunRegctl(daemon_->address(), {"status", "no-such-job"}).exit_code,
            6);
  EXPECT_EQ(RunRegctl("127.0.0.1:1", {"--timeout", "3", "list"}).exit_code, 3);
  CommandResult info = RunRegctl(daemon_->address(), {"server-info"});
  EXPECT_EQ(info.exit_code, 0);
  EXPECT_NE(info.out.find("RAM:"), std::string::npos) << info.out;
  CommandResult list = RunRegctl(daemon_->address(), {"list"});
  EXPECT_EQ(list.exit_code, 0);
  EXPECT_NE(list.out.find("JOB_STATE_COMPLETED"), std::string::npos)
      << list.out;
}

TEST_F(ServiceE2eTest, GrpcClientEventsInOrder) {
  RegistrationClient client = Client();
  std::vector<v1::JobEvent::EventCase> kinds;
  auto assembler_or =
      TileAssembler::Open(MakeTempDir("grpc") + "/out.png", "x", false);
  ASSERT_TRUE(assembler_or.ok());
  std::unique_ptr<TileAssembler> assembler = std::move(*assembler_or);
  int64_t tiles = 0, tile_count = 0;
  uint64_t uploaded = 0;
  grpc::Status s = client.Submit(
      RigidSpec(), {Fixed(), Moving()},
      [&](const v1::JobEvent& e) {
        kinds.push_back(e.event_case());
        if (e.has_tile()) {
          EXPECT_EQ(e.tile().index(), tiles);
          ++tiles;
          tile_count = e.tile().tile_count();
          EXPECT_TRUE(assembler->AddTile(e.tile()).ok());
        }
        return true;
      },
      [&](v1::ImageRole, uint64_t sent, uint64_t) { uploaded = sent; });
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_GE(kinds.size(), 3u);
  // `created` (the job id) comes first, before the upload ends; `accepted`
  // once the upload is planned.
  EXPECT_EQ(kinds.front(), v1::JobEvent::kCreated);
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), v1::JobEvent::kAccepted),
            kinds.end());
  EXPECT_EQ(kinds.back(), v1::JobEvent::kCompleted);
  EXPECT_EQ(tile_count, 4 * 3);  // 181x217 in 64-px tiles
  EXPECT_EQ(tiles, tile_count);
  EXPECT_GT(uploaded, 0u);
  EXPECT_TRUE(assembler->Finish().ok());
}

TEST_F(ServiceE2eTest, EightConcurrentClientsNeverOverReserve) {
  RegistrationClient client = Client();
  std::atomic<bool> done{false};
  std::atomic<int> over{0}, polls{0};
  uint64_t max_reserved = 0;
  int max_running = 0;
  std::thread poller([&] {
    while (!done.load()) {
      v1::ServerInfo info;
      if (client.GetServerInfo(&info).ok()) {
        ++polls;
        if (info.ram_reserved_bytes() > info.ram_budget_bytes() ||
            info.cpu_running() > info.cpu_slots()) {
          ++over;
        }
        for (const v1::Gpu& g : info.gpus()) {
          if (g.vram_reserved_bytes() > g.vram_budget_bytes()) ++over;
        }
        max_reserved =
            std::max<uint64_t>(max_reserved, info.ram_reserved_bytes());
        max_running = std::max(max_running, info.cpu_running());
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&, i] {
      v1::JobSpec spec = RigidSpec();
      spec.set_client_label(absl::StrCat("client ", i));
      grpc::Status s = client.Submit(spec, {Fixed(), Moving()},
                                     [](const v1::JobEvent&) { return true; });
      if (s.ok())
        ++ok;
      else
        ADD_FAILURE() << "client " << i << ": " << s.error_message();
    });
  }
  for (std::thread& t : clients) t.join();
  done = true;
  poller.join();
  EXPECT_EQ(ok.load(), 8);
  EXPECT_EQ(over.load(), 0);
  EXPECT_GT(polls.load(), 5);
  EXPECT_GT(max_reserved, 0u);
  EXPECT_GE(max_running, 1);
  v1::ServerInfo idle;
  ASSERT_TRUE(client.GetServerInfo(&idle).ok());
  EXPECT_EQ(idle.ram_reserved_bytes(), 0u);

  // ListJobs in pages of 3 over the raw stub: every job once, newest first,
  // the same list the client library assembles from all pages.
  v1::ListJobsResponse whole;
  ASSERT_TRUE(client.ListJobs(&whole).ok());
  ASSERT_GE(whole.jobs_size(), 8);
  EXPECT_TRUE(whole.next_page_token().empty());
  std::vector<std::string> paged;
  v1::ListJobsRequest request;
  request.set_page_size(3);
  for (int calls = 0; calls < 100; ++calls) {
    grpc::ClientContext ctx;
    v1::ListJobsResponse page;
    const grpc::Status s = client.stub()->ListJobs(&ctx, request, &page);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_LE(page.jobs_size(), 3);
    for (const v1::JobStatus& j : page.jobs()) paged.push_back(j.job_id());
    if (page.next_page_token().empty()) break;
    request.set_page_token(page.next_page_token());
  }
  ASSERT_EQ(paged.size(), static_cast<size_t>(whole.jobs_size()));
  for (int i = 0; i < whole.jobs_size(); ++i)
    EXPECT_EQ(paged[i], whole.jobs(i).job_id());
  request.set_page_token("not-a-token");
  grpc::ClientContext bad_ctx;
  v1::ListJobsResponse bad;
  const grpc::Status s = client.stub()->ListJobs(&bad_ctx, request, &bad);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("next_page_token"), std::string::npos)
      << s.error_message();
}

TEST_F(ServiceE2eTest, CancelDuringRegistrationKillsElastixAndReleases) {
  RegistrationClient client = Client();
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_BSPLINE);
  std::string job_id;
  std::atomic<bool> registering{false};
  grpc::Status final_status;
  std::thread submitter([&] {
    final_status =
        client.Submit(spec, {Fixed(), Moving()}, [&](const v1::JobEvent& e) {
          if (job_id.empty()) job_id = e.job_id();
          if (e.has_progress() &&
              e.progress().stage() == v1::STAGE_REGISTRATION &&
              e.progress().registration().iteration() > 0) {
            registering = true;
          }
          return true;
        });
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!registering && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(registering.load());
  EXPECT_FALSE(DescendantsNamed(daemon_->pid(), "elastix").empty());
  v1::CancelResponse cancelled;
  ASSERT_TRUE(client.Cancel(job_id, &cancelled).ok());
  submitter.join();
  EXPECT_EQ(final_status.error_code(), grpc::StatusCode::CANCELLED)
      << final_status.error_message();
  // The elastix process is gone and the reservations are released.
  bool clean = false;
  for (int i = 0; i < 100 && !clean; ++i) {
    v1::ServerInfo info;
    clean = DescendantsNamed(daemon_->pid(), "elastix").empty() &&
            client.GetServerInfo(&info).ok() &&
            info.ram_reserved_bytes() == 0 && info.cpu_running() == 0;
    if (!clean) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(clean);
  v1::JobStatus status;
  ASSERT_TRUE(client.GetJob(job_id, &status).ok());
  EXPECT_EQ(status.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(RunRegctl(daemon_->address(), {"watch", job_id}).exit_code, 5);
}

TEST_F(ServiceE2eTest, DisconnectMidStreamThenWatchResumes) {
  RegistrationClient client = Client();
  const std::string out = MakeTempDir("resume") + "/resumed.png";
  std::string job_id;
  std::unique_ptr<TileAssembler> assembler;
  int tiles = 0;
  grpc::Status s = client.Submit(
      RigidSpec(), {Fixed(), Moving()}, [&](const v1::JobEvent& e) {
        if (e.has_accepted()) {
          job_id = e.job_id();
          assembler = std::move(*TileAssembler::Open(out, job_id, false));
        }
        if (e.has_tile()) {
          EXPECT_TRUE(assembler->AddTile(e.tile()).ok());
          if (++tiles == 5) return false;  // hang up mid-stream
        }
        return true;
      });
  EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_EQ(tiles, 5);
  assembler.reset();
  ASSERT_EQ(access((out + ".partial.state").c_str(), F_OK), 0);
  // The job was not cancelled by the hang-up.
  CommandResult r =
      RunRegctl(daemon_->address(), {"watch", job_id, "--output", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  v1::JobStatus status;
  ASSERT_TRUE(client.GetJob(job_id, &status).ok());
  EXPECT_EQ(status.state(), v1::JOB_STATE_COMPLETED);
  std::string why;
  EXPECT_TRUE(SamePixels(out, status.result_path(), &why)) << why;
  // A fresh watch of the finished job gives the same image again.
  const std::string again = MakeTempDir("again") + "/again.tif";
  ASSERT_EQ(RunRegctl(daemon_->address(), {"watch", job_id, "--output", again})
                .exit_code,
            0);
  EXPECT_TRUE(SamePixels(again, out, &why)) << why;
}

// --- The bad-input corpus, through the raw RPC.

grpc::Status RawSubmit(v1::Registration::Stub* stub,
                       const std::vector<v1::SubmitRequest>& requests,
                       std::vector<v1::JobEvent>* events = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
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

v1::SubmitRequest SpecRequest(const std::string& fixed_bytes,
                              const std::string& moving_bytes) {
  v1::SubmitRequest r;
  v1::JobSpec* spec = r.mutable_spec();
  spec->set_transform(v1::TRANSFORM_KIND_RIGID);
  spec->mutable_fixed()->mutable_upload()->set_byte_size(fixed_bytes.size());
  spec->mutable_fixed()->mutable_upload()->set_file_name("fixed.png");
  spec->mutable_moving()->mutable_upload()->set_byte_size(moving_bytes.size());
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

TEST_F(ServiceE2eTest, BadInputCorpusGivesDocumentedCodes) {
  RegistrationClient client = Client();
  v1::Registration::Stub* stub = client.stub();
  const std::string f = ReadAll(Fixed()), m = ReadAll(Moving());
  const auto both = [&](v1::SubmitRequest spec) {
    return std::vector<v1::SubmitRequest>{spec,
                                          Chunk(v1::IMAGE_ROLE_FIXED, 0, f),
                                          Chunk(v1::IMAGE_ROLE_MOVING, 0, m)};
  };
  using C = grpc::StatusCode;
  EXPECT_EQ(RawSubmit(stub, {}).error_code(), C::INVALID_ARGUMENT)
      << "missing spec";
  EXPECT_EQ(
      RawSubmit(stub, {SpecRequest(f, m), SpecRequest(f, m)}).error_code(),
      C::INVALID_ARGUMENT)
      << "duplicated spec";
  EXPECT_EQ(RawSubmit(stub, {Chunk(v1::IMAGE_ROLE_FIXED, 0, f)}).error_code(),
            C::INVALID_ARGUMENT)
      << "chunk before spec";
  {
    v1::SubmitRequest spec = SpecRequest(f, m);
    spec.mutable_spec()->set_transform(static_cast<v1::TransformKind>(77));
    EXPECT_EQ(RawSubmit(stub, both(spec)).error_code(), C::INVALID_ARGUMENT)
        << "enum";
    spec = SpecRequest(f, m);
    spec.mutable_spec()->set_interpolation(static_cast<v1::Interpolation>(9));
    EXPECT_EQ(RawSubmit(stub, both(spec)).error_code(), C::INVALID_ARGUMENT)
        << "enum";
    EXPECT_EQ(RawSubmit(stub, {SpecRequest(f, m),
                               Chunk(static_cast<v1::ImageRole>(5), 0, f)})
                  .error_code(),
              C::INVALID_ARGUMENT)
        << "unknown role";
  }
  {
    std::string corrupt = f;
    for (size_t i = 0; i < corrupt.size(); ++i)
      corrupt[i] = static_cast<char>(i * 31);
    EXPECT_EQ(RawSubmit(stub, {SpecRequest(corrupt, m),
                               Chunk(v1::IMAGE_ROLE_FIXED, 0, corrupt),
                               Chunk(v1::IMAGE_ROLE_MOVING, 0, m)})
                  .error_code(),
              C::INVALID_ARGUMENT)
        << "corrupt image";
  }
  EXPECT_EQ(
      RawSubmit(stub,
                {SpecRequest(f, m), Chunk(v1::IMAGE_ROLE_FIXED, 0, f),
                 Chunk(v1::IMAGE_ROLE_MOVING, 0, m.substr(0, m.size() / 2))})
          .error_code(),
      C::INVALID_ARGUMENT)
      << "truncated upload";
  EXPECT_EQ(RawSubmit(stub, {SpecRequest(f, m),
                             Chunk(v1::IMAGE_ROLE_FIXED, 0, f + f)})
                .error_code(),
            C::INVALID_ARGUMENT)
      << "oversized upload";
  EXPECT_EQ(
      RawSubmit(stub, {SpecRequest(f, m), Chunk(v1::IMAGE_ROLE_FIXED, 10, f)})
          .error_code(),
      C::INVALID_ARGUMENT)
      << "chunk offset gap";
  {
    v1::SubmitRequest r;
    r.mutable_spec()->mutable_fixed()->set_server_path("../../etc/passwd");
    r.mutable_spec()->mutable_moving()->set_server_path("/etc/hostname");
    EXPECT_EQ(RawSubmit(stub, {r}).error_code(), C::PERMISSION_DENIED)
        << "outside root";
  }
  {
    v1::SubmitRequest spec = SpecRequest(f, m);
    spec.mutable_spec()->add_elastix_parameters(
        "this is (not an elastix \"file");
    EXPECT_EQ(RawSubmit(stub, both(spec)).error_code(), C::INVALID_ARGUMENT)
        << "params";
    spec = SpecRequest(f, m);
    spec.mutable_spec()->add_elastix_parameters(
        "(WriteResultImage \"true\")\n(ResultImageFormat "
        "\"/etc/x\")\n(Transform \"NoSuchTransform\")");
    EXPECT_EQ(RawSubmit(stub, both(spec)).error_code(), C::INVALID_ARGUMENT)
        << "params 2";
  }
  {
    auto watch = [&](const std::string& id, int64_t from) {
      return client.Watch(id, from, [](const v1::JobEvent&) { return true; });
    };
    EXPECT_EQ(watch("0123456789abcdef", 0).error_code(), C::NOT_FOUND);
    v1::JobStatus st;
    EXPECT_EQ(client.GetJob("../../etc", &st).error_code(), C::NOT_FOUND);
    v1::CancelResponse cr;
    EXPECT_EQ(client.Cancel("nope", &cr).error_code(), C::NOT_FOUND);
    // A finished job: huge from_tile.
    std::vector<v1::JobEvent> events;
    ASSERT_TRUE(RawSubmit(stub, both(SpecRequest(f, m)), &events).ok());
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(watch(events.front().job_id(), 1000000).error_code(),
              C::OUT_OF_RANGE);
    EXPECT_EQ(watch(events.front().job_id(), -1).error_code(),
              C::INVALID_ARGUMENT);
    EXPECT_TRUE(
        watch(events.front().job_id(), 12).ok());  // == tile count: no tiles
  }
  ExpectHealthy();
}

// A raw call of grpc.reflection.v1alpha.ServerReflection (its proto is not
// installed with gRPC): list the services.
TEST_F(ServiceE2eTest, HealthAndReflectionAnswer) {
  ExpectHealthy();
  RegistrationClient client = Client();
  grpc::GenericStub generic(client.channel());
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  auto call = generic.PrepareCall(
      &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      &cq);
  void* tag = nullptr;
  bool ok = false;
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  // ServerReflectionRequest { list_services (7) = "" }.
  const std::string req("\x3a\x00", 2);
  grpc::Slice slice(req);
  grpc::ByteBuffer request(&slice, 1);
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  call->WritesDone(reinterpret_cast<void*>(4));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // ServerReflectionResponse.list_services_response (6) holds ServiceResponse
  // (1) messages whose name is field 1.
  google::protobuf::UnknownFieldSet top;
  ASSERT_TRUE(top.ParseFromString(bytes));
  std::vector<std::string> services;
  for (int i = 0; i < top.field_count(); ++i) {
    if (top.field(i).number() != 6) continue;
    google::protobuf::UnknownFieldSet list;
    ASSERT_TRUE(list.ParseFromString(top.field(i).length_delimited()));
    for (int j = 0; j < list.field_count(); ++j) {
      google::protobuf::UnknownFieldSet svc;
      ASSERT_TRUE(svc.ParseFromString(list.field(j).length_delimited()));
      services.push_back(svc.field(0).length_delimited());
    }
  }
  EXPECT_NE(
      std::find(services.begin(), services.end(), "regserve.v1.Registration"),
      services.end());
  EXPECT_NE(
      std::find(services.begin(), services.end(), "grpc.health.v1.Health"),
      services.end());
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

// kill -9 of the daemon, restart on the same data_dir.
TEST(RestartE2eTest, KillNineThenRestartServesAndResumes) {
  const std::string data = MakeTempDir("regserve_restart");
  std::string finished_id, finished_result;
  std::vector<std::string> pending;
  {
    Daemon daemon;
    ASSERT_TRUE(daemon.Start(data, {"--stream_tile_size=64", "--cpu_slots=1",
                                    "--elastix_threads=1"}));
    RegistrationClient::Options o;
    o.address = daemon.address();
    RegistrationClient client(o);
    ASSERT_TRUE(client
                    .Submit(RigidSpec(), {Fixed(), Moving()},
                            [&](const v1::JobEvent& e) {
                              finished_id = e.job_id();
                              return true;
                            })
                    .ok());
    // Queue jobs and hang up right after acceptance.
    for (int i = 0; i < 3; ++i) {
      v1::JobSpec spec;
      spec.set_transform(i == 0 ? v1::TRANSFORM_KIND_BSPLINE
                                : v1::TRANSFORM_KIND_AFFINE);
      grpc::Status s =
          client.Submit(spec, {Fixed(), Moving()}, [&](const v1::JobEvent& e) {
            if (e.has_accepted()) {
              pending.push_back(e.job_id());
              return false;
            }
            return true;
          });
      EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED);
    }
    ASSERT_EQ(pending.size(), 3u);
    v1::JobStatus st;
    ASSERT_TRUE(client.GetJob(finished_id, &st).ok());
    finished_result = st.result_path();
    daemon.Kill();
  }
  Daemon daemon;
  ASSERT_TRUE(daemon.Start(
      data, {"--stream_tile_size=64", "--cpu_slots=1", "--elastix_threads=1"}));
  const std::string out = MakeTempDir("restart_out") + "/old.png";
  CommandResult r =
      RunRegctl(daemon.address(), {"watch", finished_id, "--output", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string why;
  EXPECT_TRUE(SamePixels(out, finished_result, &why)) << why;
  for (const std::string& id : pending) {
    const std::string o2 = MakeTempDir("restart_pending") + "/r.png";
    CommandResult w =
        RunRegctl(daemon.address(), {"watch", id, "--output", o2});
    EXPECT_EQ(w.exit_code, 0) << id << ": " << w.err;
    EXPECT_GT(FileNcc(Fixed(), o2), FileNcc(Fixed(), Moving()) + 0.2);
  }
  EXPECT_EQ(daemon.Stop(), 0);
}

}  // namespace
}  // namespace e2e
}  // namespace regserve
