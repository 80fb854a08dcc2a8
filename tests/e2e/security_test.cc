// Copyright regserve authors.
//
// End to end, security: real regserved processes on loopback ports with TLS,
// mutual TLS, bearer tokens and limits, driven by regctl and by the client
// library. The certificates (a CA, a server certificate for 127.0.0.1 and
// localhost, a client certificate, an unrelated second CA with its own
// client certificate, and an expired server certificate) are made at test
// time with the openssl command. Every case ends by checking that the daemon
// it used still reports SERVING.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/regserve_client.h"
#include "core/common/file_util.h"
#include "core/image/image.h"
#include "core/image/image_io.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace regserve {
namespace e2e {
namespace {

using Code = grpc::StatusCode;

constexpr char kAliceToken[] = "alice-token-0123456789abcdef";
constexpr char kBobToken[] = "bob-token-0123456789abcdefgh";
constexpr char kCarolToken[] = "carol-token-0123456789abcdef";
constexpr char kDaveToken[] = "dave-token-0123456789abcdefg";

// Limits of the main daemon. The brain slices are 181x217 = 39277 pixels
// and 181x217 (39277) / 241x236 (56797) pixels and about 35 KB; the "large"
// test image is 400x400.
constexpr int64_t kMaxPixels = 80000;
constexpr int64_t kMaxUpload = 1 << 20;

std::string ReadAll(const std::string& path) {
  return ReadFileToString(path).value_or("");  // "" when missing
}

void WriteAll(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string Fixed() {
  return TestData("itk_brain/BrainProtonDensitySlice.png");
}
std::string Moving() {
  return TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
}

// A child process with stdout and stderr in one log file.
struct Child {
  pid_t pid = -1;
  std::string log;
};

Child StartProgram(const std::vector<std::string>& argv) {
  Child child;
  child.log = MakeTempDir("sec_run") + "/log";
  child.pid = fork();
  if (child.pid == 0) {
    const int fd = open(child.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) {
      args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return child;
}

// Waits for `child`; returns its exit code and its output in *output.
int WaitProgram(const Child& child, std::string* output) {
  int status = 0;
  waitpid(child.pid, &status, 0);
  if (output != nullptr) *output = ReadAll(child.log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int RunProgram(const std::vector<std::string>& argv, std::string* output) {
  return WaitProgram(StartProgram(argv), output);
}

// The test PKI, made with the openssl command.
struct Pki {
  std::string dir;
  std::string Path(const std::string& name) const { return dir + "/" + name; }
};

bool Openssl(const std::vector<std::string>& args, std::string* log) {
  std::vector<std::string> argv = {"openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out;
  const int code = RunProgram(argv, &out);
  if (code != 0) {
    *log += absl::StrCat("openssl ", args[0], " failed (", code, "): ", out);
  }
  return code == 0;
}

// A P-256 key and a certificate request for `cn`.
bool KeyAndRequest(const Pki& pki, const std::string& name,
                   const std::string& cn, std::string* log) {
  return Openssl(
      {"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", pki.Path(name + ".key"), "-out",
       pki.Path(name + ".csr"), "-subj", "/CN=" + cn},
      log);
}

bool MakeCa(const Pki& pki, const std::string& name, std::string* log) {
  return Openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                  pki.Path(name + ".key"), "-out", pki.Path(name + ".pem"),
                  "-days", "3", "-subj", "/CN=regserve test " + name, "-addext",
                  "basicConstraints=critical,CA:TRUE", "-addext",
                  "keyUsage=critical,keyCertSign,cRLSign"},
                 log);
}

// Signs `name`.csr with CA `ca`, with the extensions in `ext`.
bool Sign(const Pki& pki, const std::string& name, const std::string& ca,
          const std::string& ext, std::string* log) {
  WriteAll(pki.Path(name + ".ext"), ext);
  return Openssl(
      {"x509", "-req", "-in", pki.Path(name + ".csr"), "-CA",
       pki.Path(ca + ".pem"), "-CAkey", pki.Path(ca + ".key"), "-set_serial",
       absl::StrCat(1000 + name.size() * 7 + ca.size()), "-days", "3",
       "-extfile", pki.Path(name + ".ext"), "-out", pki.Path(name + ".pem")},
      log);
}

constexpr char kServerExt[] =
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    "extendedKeyUsage=serverAuth\n";
constexpr char kClientExt[] = "extendedKeyUsage=clientAuth\n";

// An expired server certificate (valid on 1-2 January 2020) signed by `ca`.
// openssl 3.0's x509 command cannot backdate, so this uses `openssl ca` with
// a minimal configuration and explicit -startdate/-enddate.
bool SignExpired(const Pki& pki, const std::string& name, const std::string& ca,
                 std::string* log) {
  const std::string db = pki.Path("ca_db");
  mkdir(db.c_str(), 0700);
  WriteAll(db + "/index.txt", "");
  WriteAll(db + "/serial", "2020\n");
  WriteAll(pki.Path("ca.cnf"),
           absl::StrCat("[ca]\ndefault_ca = test_ca\n"
                        "[test_ca]\ndatabase = ",
                        db, "/index.txt\nserial = ", db,
                        "/serial\nnew_certs_dir = ", db,
                        "\ndefault_md = sha256\npolicy = any\n"
                        "unique_subject = no\nx509_extensions = ext\n"
                        "[any]\ncommonName = supplied\n"
                        "[ext]\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n"
                        "extendedKeyUsage = serverAuth\n"));
  return Openssl(
      {"ca", "-batch", "-config", pki.Path("ca.cnf"), "-cert",
       pki.Path(ca + ".pem"), "-keyfile", pki.Path(ca + ".key"), "-in",
       pki.Path(name + ".csr"), "-out", pki.Path("expired.pem"), "-startdate",
       "20200101000000Z", "-enddate", "20200102000000Z", "-notext"},
      log);
}

bool MakePki(const Pki& pki, std::string* log) {
  return MakeCa(pki, "ca", log) && MakeCa(pki, "other_ca", log) &&
         KeyAndRequest(pki, "server", "localhost", log) &&
         Sign(pki, "server", "ca", kServerExt, log) &&
         SignExpired(pki, "server", "ca", log) &&
         KeyAndRequest(pki, "client", "alice", log) &&
         Sign(pki, "client", "ca", kClientExt, log) &&
         KeyAndRequest(pki, "other_client", "mallory", log) &&
         Sign(pki, "other_client", "other_ca", kClientExt, log);
}

std::string TokenFile(const std::vector<std::pair<std::string, std::string>>&
                          principals_and_tokens) {
  std::string text = "# principal token\n";
  for (const auto& [principal, token] : principals_and_tokens) {
    absl::StrAppend(&text, principal, " ", token, "\n");
  }
  return text;
}

std::string DefaultTokens() {
  return TokenFile(
      {{"alice", kAliceToken}, {"bob", kBobToken}, {"carol", kCarolToken}});
}

// A server-side job spec with upload sizes declared for the two brain
// slices: a Submit that sends only this leaves the job uploading.
v1::SubmitRequest UploadSpec() {
  v1::SubmitRequest r;
  v1::JobSpec* spec = r.mutable_spec();
  spec->set_transform(v1::TRANSFORM_KIND_RIGID);
  spec->mutable_fixed()->mutable_upload()->set_byte_size(
      ReadAll(Fixed()).size());
  spec->mutable_fixed()->mutable_upload()->set_file_name("fixed.png");
  spec->mutable_moving()->mutable_upload()->set_byte_size(
      ReadAll(Moving()).size());
  spec->mutable_moving()->mutable_upload()->set_file_name("moving.png");
  return r;
}

// Sends `requests` on a Submit call with `token`, half-closes, and returns
// the call's status.
grpc::Status RawSubmit(v1::Registration::Stub* stub, const std::string& token,
                       const std::vector<v1::SubmitRequest>& requests) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  auto stream = stub->Submit(&ctx);
  for (const v1::SubmitRequest& r : requests) {
    if (!stream->Write(r)) break;
  }
  stream->WritesDone();
  v1::JobEvent e;
  while (stream->Read(&e)) {
  }
  return stream->Finish();
}

// A Submit call that sent its spec and nothing else: its job stays in the
// uploading state (unfinished) until the call is cancelled.
class OpenUpload {
 public:
  OpenUpload(v1::Registration::Stub* stub, const std::string& token) {
    ctx_.AddMetadata("authorization", "Bearer " + token);
    stream_ = stub->Submit(&ctx_);
    written_ = stream_->Write(UploadSpec());
  }
  ~OpenUpload() { Cancel(); }
  bool written() const { return written_; }
  // Cancels the call; the server aborts the upload and fails the job.
  void Cancel() {
    if (stream_ == nullptr) return;
    ctx_.TryCancel();
    v1::JobEvent e;
    while (stream_->Read(&e)) {
    }
    stream_->Finish();
    stream_.reset();
  }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SubmitRequest, v1::JobEvent>>
      stream_;
  bool written_ = false;
};

class SecurityE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new Pki{MakeTempDir("regserve_pki")};
    std::string log;
    pki_ok_ = MakePki(*pki_, &log);
    ASSERT_TRUE(pki_ok_) << log;
    tokens_path_ = new std::string(pki_->Path("tokens"));
    WriteAll(*tokens_path_, DefaultTokens());
    chmod(tokens_path_->c_str(), 0600);
    input_root_ = new std::string(MakeTempDir("regserve_sec_inputs"));
    outside_ = new std::string(MakeTempDir("regserve_sec_outside"));
    WriteAll(*input_root_ + "/fixed.png", ReadAll(Fixed()));
    WriteAll(*outside_ + "/secret.png", ReadAll(Fixed()));
    ASSERT_EQ(0, symlink((*outside_ + "/secret.png").c_str(),
                         (*input_root_ + "/escape.png").c_str()))
        << std::strerror(errno);
    // A 400x400 image: more pixels than kMaxPixels, few bytes.
    large_ = new std::string(*input_root_ + "/large.png");
    ImageSpec spec;
    spec.width = 400;
    spec.height = 400;
    spec.channels = 1;
    absl::StatusOr<Image> large = Image::AllocateZeroed(spec);
    ASSERT_TRUE(large.ok());
    ASSERT_TRUE(WriteImageFile(*large_, *large).ok());

    const std::vector<std::string> common = {
        "--stream_tile_size=64", "--elastix_threads=1", "--cpu_slots=2"};
    main_ = new Daemon();
    std::vector<std::string> flags = common;
    flags.insert(
        flags.end(),
        {"--tls_cert=" + pki_->Path("server.pem"),
         "--tls_key=" + pki_->Path("server.key"),
         "--auth_tokens=" + *tokens_path_, "--input_root=" + *input_root_,
         absl::StrCat("--max_image_pixels=", kMaxPixels),
         absl::StrCat("--max_upload=", kMaxUpload),
         "--max_jobs_per_principal=1", "--max_message_size=2M"});
    ASSERT_TRUE(main_->Start(MakeTempDir("regserve_sec_main"), flags))
        << ReadAll(main_->stderr_path());

    mtls_ = new Daemon();
    flags = common;
    flags.insert(flags.end(), {"--tls_cert=" + pki_->Path("server.pem"),
                               "--tls_key=" + pki_->Path("server.key"),
                               "--tls_client_ca=" + pki_->Path("ca.pem")});
    ASSERT_TRUE(mtls_->Start(MakeTempDir("regserve_sec_mtls"), flags))
        << ReadAll(mtls_->stderr_path());
  }

  static void TearDownTestSuite() {
    for (Daemon* d : {main_, mtls_}) {
      if (d == nullptr) continue;
      EXPECT_EQ(d->Stop(), 0) << ReadAll(d->stderr_path());
      delete d;
    }
    main_ = mtls_ = nullptr;
  }

  void SetUp() override { ASSERT_TRUE(pki_ok_); }

  // Options for the main daemon: TLS trusting our CA, and `token`.
  static RegistrationClient::Options Tls(const std::string& address,
                                         const std::string& token,
                                         const std::string& ca = "ca") {
    RegistrationClient::Options o;
    o.address = address;
    o.token = token;
    o.timeout = absl::Seconds(60);
    EXPECT_TRUE(LoadTlsFiles(pki_->Path(ca + ".pem"), "", "", &o.tls).ok());
    return o;
  }
  static RegistrationClient Main(const std::string& token) {
    return RegistrationClient(Tls(main_->address(), token));
  }

  static void ExpectServing(Daemon* daemon,
                            RegistrationClient::Options options) {
    options.address = daemon->address();
    options.token.clear();  // health needs no token
    RegistrationClient client(options);
    bool serving = false;
    const grpc::Status s = client.CheckHealth("", &serving);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(serving);
  }
  static void ExpectMainServing() {
    ExpectServing(main_, Tls(main_->address(), ""));
  }

  // regctl against the main daemon over TLS, with `extra` global options.
  static CommandResult Regctl(const std::vector<std::string>& extra,
                              const std::vector<std::string>& command) {
    std::vector<std::string> args = {"--tls_ca", pki_->Path("ca.pem")};
    args.insert(args.end(), extra.begin(), extra.end());
    args.insert(args.end(), command.begin(), command.end());
    return RunRegctl(main_->address(), args);
  }

  static std::string TokenFileFor(const std::string& token) {
    const std::string path = MakeTempDir("sec_token") + "/token";
    WriteAll(path, token + "\n");
    return path;
  }

  // The id of `token`'s only unfinished job, waiting for it to appear.
  static std::string WaitForUnfinishedJob(const std::string& token) {
    RegistrationClient client = Main(token);
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      v1::ListJobsResponse jobs;
      if (client.ListJobs(&jobs).ok()) {
        for (const v1::JobStatus& j : jobs.jobs()) {
          if (j.state() == v1::JOB_STATE_UPLOADING) return j.job_id();
        }
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return "";
  }

  // Waits until `token`'s job `id` is finished.
  static bool WaitFinished(const std::string& token, const std::string& id) {
    RegistrationClient client = Main(token);
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      v1::JobStatus job;
      if (client.GetJob(id, &job).ok() &&
          (job.state() == v1::JOB_STATE_COMPLETED ||
           job.state() == v1::JOB_STATE_FAILED ||
           job.state() == v1::JOB_STATE_CANCELLED)) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  // Sends SIGHUP to the main daemon and waits for its log to report the
  // reload (`marker` appears once more than before).
  static bool Sighup(const std::string& marker) {
    const auto count = [&] {
      const std::string err = ReadAll(main_->stderr_path());
      size_t n = 0;
      for (size_t at = err.find(marker); at != std::string::npos;
           at = err.find(marker, at + 1)) {
        ++n;
      }
      return n;
    };
    const size_t before = count();
    kill(main_->pid(), SIGHUP);
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      if (count() > before) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  static Pki* pki_;
  static bool pki_ok_;
  static std::string* tokens_path_;
  static std::string* input_root_;
  static std::string* outside_;
  static std::string* large_;
  static Daemon* main_;
  static Daemon* mtls_;
};
Pki* SecurityE2eTest::pki_ = nullptr;
bool SecurityE2eTest::pki_ok_ = false;
std::string* SecurityE2eTest::tokens_path_ = nullptr;
std::string* SecurityE2eTest::input_root_ = nullptr;
std::string* SecurityE2eTest::outside_ = nullptr;
std::string* SecurityE2eTest::large_ = nullptr;
Daemon* SecurityE2eTest::main_ = nullptr;
Daemon* SecurityE2eTest::mtls_ = nullptr;

TEST_F(SecurityE2eTest, TlsAndTokenRegctlSubmitAligns) {
  const std::string dir = MakeTempDir("sec_regctl");
  const std::string out = dir + "/registered.png";
  CommandResult r = Regctl({"--token_file", TokenFileFor(kAliceToken)},
                           {"submit", "--fixed", Fixed(), "--moving", Moving(),
                            "--output", out, "--transform", "rigid"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GT(FileNcc(Fixed(), out), 0.85);

  // The token from the environment, and the hyphenated option spelling.
  setenv("REGSERVE_TOKEN", kAliceToken, 1);
  CommandResult list =
      RunRegctl(main_->address(), {"--tls-ca", pki_->Path("ca.pem"), "list"});
  unsetenv("REGSERVE_TOKEN");
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("JOB_STATE_COMPLETED"), std::string::npos)
      << list.out;
  // Health is open: no token needed.
  CommandResult health = Regctl({}, {"health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(health.out, "SERVING\n");
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, TlsLibrarySubmitCompletes) {
  // Connect by name: the certificate carries DNS:localhost as well.
  RegistrationClient::Options o = Tls(
      "localhost:" + main_->address().substr(main_->address().rfind(':') + 1),
      kBobToken);
  RegistrationClient client(o);
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  bool completed = false;
  const grpc::Status s =
      client.Submit(spec, {Fixed(), Moving()}, [&](const v1::JobEvent& e) {
        completed |= e.has_completed();
        return true;
      });
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(completed);
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, ClientsThatCannotVerifyTheServerAreRefused) {
  v1::ServerInfo info;
  // Trusting an unrelated CA.
  RegistrationClient wrong_ca(Tls(main_->address(), kAliceToken, "other_ca"));
  grpc::Status s = wrong_ca.GetServerInfo(&info);
  EXPECT_EQ(s.error_code(), Code::UNAVAILABLE) << s.error_message();
  CommandResult r = RunRegctl(
      main_->address(),
      {"--tls_ca", pki_->Path("other_ca.pem"), "--timeout", "10", "health"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  // Expecting a name the certificate does not carry.
  RegistrationClient::Options o = Tls(main_->address(), kAliceToken);
  o.tls.server_name = "regserve.example.org";
  s = RegistrationClient(o).GetServerInfo(&info);
  EXPECT_EQ(s.error_code(), Code::UNAVAILABLE) << s.error_message();
  // Plaintext against a TLS server.
  RegistrationClient::Options plain;
  plain.address = main_->address();
  plain.token = kAliceToken;
  plain.timeout = absl::Seconds(10);
  s = RegistrationClient(plain).GetServerInfo(&info);
  EXPECT_EQ(s.error_code(), Code::UNAVAILABLE) << s.error_message();
  // The right CA works (control).
  s = Main(kAliceToken).GetServerInfo(&info);
  EXPECT_TRUE(s.ok()) << s.error_message();
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, ExpiredServerCertificateIsRefused) {
  Daemon expired;
  ASSERT_TRUE(expired.Start(MakeTempDir("regserve_sec_expired"),
                            {"--tls_cert=" + pki_->Path("expired.pem"),
                             "--tls_key=" + pki_->Path("server.key")}))
      << ReadAll(expired.stderr_path());
  RegistrationClient client(Tls(expired.address(), ""));
  bool serving = false;
  grpc::Status s = client.CheckHealth("", &serving);
  EXPECT_EQ(s.error_code(), Code::UNAVAILABLE) << s.error_message();
  CommandResult r = RunRegctl(
      expired.address(),
      {"--tls_ca", pki_->Path("ca.pem"), "--timeout", "10", "health"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_EQ(expired.Stop(), 0);
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, RenewedCertificateIsUsedWithoutARestart) {
  // The daemon's certificate files, in a directory of their own.
  const std::string dir = MakeTempDir("regserve_sec_rotate");
  const std::string cert = dir + "/tls.pem", key = dir + "/tls.key";
  WriteAll(cert, ReadAll(pki_->Path("server.pem")));
  WriteAll(key, ReadAll(pki_->Path("server.key")));
  chmod(key.c_str(), 0600);
  Daemon daemon;
  ASSERT_TRUE(daemon.Start(
      MakeTempDir("regserve_sec_rotate_data"),
      {"--tls_cert=" + cert, "--tls_key=" + key, "--tls_reload_interval=1s"}))
      << ReadAll(daemon.stderr_path());
  // Health over a fresh connection, trusting only CA `ca`.
  const auto health = [&](const std::string& ca) {
    bool serving = false;
    return RegistrationClient(Tls(daemon.address(), "", ca))
        .CheckHealth("", &serving);
  };
  grpc::Status s = health("ca");
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(health("other_ca").error_code(), Code::UNAVAILABLE);

  // Renewal: a new key and a certificate from another CA replace the files
  // (key first, as documented).
  std::string log;
  ASSERT_TRUE(KeyAndRequest(*pki_, "renewed", "localhost", &log) &&
              Sign(*pki_, "renewed", "other_ca", kServerExt, &log))
      << log;
  WriteAll(key, ReadAll(pki_->Path("renewed.key")));
  WriteAll(cert, ReadAll(pki_->Path("renewed.pem")));
  bool renewed = false;
  for (const absl::Time end = absl::Now() + absl::Seconds(20);
       !renewed && absl::Now() < end; absl::SleepFor(absl::Milliseconds(250))) {
    renewed = health("other_ca").ok();
  }
  EXPECT_TRUE(renewed) << "the renewed certificate was not taken up\n"
                       << ReadAll(daemon.stderr_path());
  s = health("ca");
  EXPECT_EQ(s.error_code(), Code::UNAVAILABLE) << s.error_message();
  EXPECT_EQ(daemon.Stop(), 0);

  // A key that does not belong to the certificate stops the start, with a
  // message that says so.
  Daemon mismatched;
  EXPECT_FALSE(mismatched.Start(MakeTempDir("regserve_sec_mismatch"),
                                {"--tls_cert=" + pki_->Path("server.pem"),
                                 "--tls_key=" + pki_->Path("client.key")}));
  EXPECT_NE(ReadAll(mismatched.stderr_path())
                .find("--tls_key does not match the certificate"),
            std::string::npos)
      << ReadAll(mismatched.stderr_path());
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, StalledUploadsAndStreamFloodsAreBounded) {
  constexpr int kIdleSeconds = 5;
  Daemon daemon;
  ASSERT_TRUE(
      daemon.Start(MakeTempDir("regserve_sec_streams"),
                   {"--max_streams=3",
                    absl::StrCat("--upload_idle_timeout=", kIdleSeconds, "s")}))
      << ReadAll(daemon.stderr_path());
  RegistrationClient::Options o;
  o.address = daemon.address();
  o.timeout = absl::Seconds(60);
  RegistrationClient client(o);
  // Three Submit calls that send their spec (declaring uploads) and then
  // nothing: they hold all three streams.
  struct Stalled {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::SubmitRequest, v1::JobEvent>>
        stream;
  };
  std::vector<std::unique_ptr<Stalled>> stalled;
  for (int i = 0; i < 3; ++i) {
    stalled.push_back(std::make_unique<Stalled>());
    stalled.back()->stream = client.stub()->Submit(&stalled.back()->ctx);
    ASSERT_TRUE(stalled.back()->stream->Write(UploadSpec()));
  }
  std::vector<std::string> ids;
  for (const absl::Time end = absl::Now() + absl::Seconds(kIdleSeconds - 1);
       ids.size() < 3 && absl::Now() < end;
       absl::SleepFor(absl::Milliseconds(50))) {
    v1::ListJobsResponse jobs;
    ids.clear();
    if (!client.ListJobs(&jobs).ok()) continue;
    for (const v1::JobStatus& j : jobs.jobs()) {
      if (j.state() == v1::JOB_STATE_UPLOADING) ids.push_back(j.job_id());
    }
  }
  ASSERT_EQ(ids.size(), 3u);
  // A fourth stream is refused at once; unary calls still answer.
  v1::WatchRequest watch;
  watch.set_job_id(ids[0]);
  grpc::ClientContext ctx4;
  ctx4.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto fourth = client.stub()->Watch(&ctx4, watch);
  v1::JobEvent ev;
  while (fourth->Read(&ev)) {
  }
  grpc::Status s = fourth->Finish();
  EXPECT_EQ(s.error_code(), Code::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("--max_streams"), std::string::npos)
      << s.error_message();
  v1::ServerInfo info;
  EXPECT_TRUE(client.GetServerInfo(&info).ok());

  // The silent uploads are abandoned after the idle timeout: their jobs
  // fail with DEADLINE_EXCEEDED and a message saying why, their calls end.
  for (const std::string& id : ids) {
    v1::JobStatus job;
    for (const absl::Time end = absl::Now() + absl::Seconds(30);
         absl::Now() < end; absl::SleepFor(absl::Milliseconds(100))) {
      if (client.GetJob(id, &job).ok() &&
          job.state() != v1::JOB_STATE_UPLOADING)
        break;
    }
    EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED) << id;
    EXPECT_EQ(job.failure().code(), static_cast<int>(Code::DEADLINE_EXCEEDED))
        << job.failure().message();
    EXPECT_NE(job.failure().message().find("no message from the client"),
              std::string::npos)
        << job.failure().message();
  }
  for (auto& st : stalled) {
    while (st->stream->Read(&ev)) {
    }
    EXPECT_FALSE(st->stream->Finish().ok());
  }
  // The streams are free again: a whole job goes through.
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  s = client.Submit(spec, {Fixed(), Moving()},
                    [](const v1::JobEvent&) { return true; });
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(daemon.Stop(), 0);
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, MutualTlsRequiresAClientCertificateFromItsCa) {
  RegistrationClient::Options o = Tls(mtls_->address(), "");
  v1::ListJobsResponse jobs;
  grpc::Status s = RegistrationClient(o).ListJobs(&jobs);
  EXPECT_EQ(s.error_code(), Code::UNAVAILABLE) << s.error_message();

  RegistrationClient::Options foreign = o;
  ASSERT_TRUE(LoadTlsFiles(pki_->Path("ca.pem"), pki_->Path("other_client.pem"),
                           pki_->Path("other_client.key"), &foreign.tls)
                  .ok());
  s = RegistrationClient(foreign).ListJobs(&jobs);
  EXPECT_EQ(s.error_code(), Code::UNAVAILABLE) << s.error_message();

  RegistrationClient::Options good = o;
  ASSERT_TRUE(LoadTlsFiles(pki_->Path("ca.pem"), pki_->Path("client.pem"),
                           pki_->Path("client.key"), &good.tls)
                  .ok());
  s = RegistrationClient(good).ListJobs(&jobs);
  EXPECT_TRUE(s.ok()) << s.error_message();
  CommandResult r = RunRegctl(
      mtls_->address(),
      {"--tls_ca", pki_->Path("ca.pem"), "--tls_cert", pki_->Path("client.pem"),
       "--tls_key", pki_->Path("client.key"), "server-info"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = RunRegctl(mtls_->address(), {"--tls_ca", pki_->Path("ca.pem"),
                                   "--timeout", "10", "server-info"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  ExpectServing(mtls_, good);
}

TEST_F(SecurityE2eTest, CallsWithoutAValidTokenAreUnauthenticated) {
  for (const std::string& token : {std::string(), std::string("not-a-token-"
                                                              "0123456789")}) {
    SCOPED_TRACE(token.empty() ? "no token" : "bad token");
    RegistrationClient client = Main(token);
    v1::ServerInfo info;
    EXPECT_EQ(client.GetServerInfo(&info).error_code(), Code::UNAUTHENTICATED);
    v1::ListJobsResponse jobs;
    EXPECT_EQ(client.ListJobs(&jobs).error_code(), Code::UNAUTHENTICATED);
    v1::JobStatus job;
    EXPECT_EQ(client.GetJob("0123", &job).error_code(), Code::UNAUTHENTICATED);
    v1::CancelResponse cancelled;
    EXPECT_EQ(client.Cancel("0123", &cancelled).error_code(),
              Code::UNAUTHENTICATED);
    EXPECT_EQ(client.Watch("0123", 0, nullptr).error_code(),
              Code::UNAUTHENTICATED);
    v1::JobSpec spec;
    spec.set_transform(v1::TRANSFORM_KIND_RIGID);
    EXPECT_EQ(client.Submit(spec, {Fixed(), Moving()}, nullptr).error_code(),
              Code::UNAUTHENTICATED);
  }
  // Another scheme, and two authorization entries.
  RegistrationClient client = Main("");
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", std::string("Basic ") + kAliceToken);
    v1::ListJobsResponse jobs;
    EXPECT_EQ(client.stub()->ListJobs(&ctx, {}, &jobs).error_code(),
              Code::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", std::string("Bearer ") + kAliceToken);
    ctx.AddMetadata("authorization", std::string("Bearer ") + kBobToken);
    v1::ListJobsResponse jobs;
    EXPECT_EQ(client.stub()->ListJobs(&ctx, {}, &jobs).error_code(),
              Code::UNAUTHENTICATED);
  }
  CommandResult r = Regctl({}, {"list"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("UNAUTHENTICATED"), std::string::npos) << r.err;

  // Reflection needs no token (it describes the public protocol only).
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
  const std::string list_services("\x3a\x00", 2);  // list_services = ""
  grpc::Slice slice(list_services);
  grpc::ByteBuffer request(&slice, 1);
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_TRUE(ok) << "reflection answered nothing";
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (ok && response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices)
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  EXPECT_NE(bytes.find("regserve.v1.Registration"), std::string::npos);
  call->WritesDone(reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, JobsAreInvisibleToOtherPrincipals) {
  RegistrationClient alice = Main(kAliceToken);
  RegistrationClient bob = Main(kBobToken);
  OpenUpload upload(alice.stub(), kAliceToken);
  ASSERT_TRUE(upload.written());
  const std::string id = WaitForUnfinishedJob(kAliceToken);
  ASSERT_FALSE(id.empty());
  ASSERT_EQ(id.size(), 32u);  // 128 random bits in hex

  v1::JobStatus job;
  EXPECT_TRUE(alice.GetJob(id, &job).ok());
  EXPECT_EQ(bob.GetJob(id, &job).error_code(), Code::NOT_FOUND);
  v1::CancelResponse cancelled;
  EXPECT_EQ(bob.Cancel(id, &cancelled).error_code(), Code::NOT_FOUND);
  EXPECT_EQ(bob.Watch(id, 0, nullptr).error_code(), Code::NOT_FOUND);
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(bob.ListJobs(&jobs).ok());
  for (const v1::JobStatus& j : jobs.jobs()) EXPECT_NE(j.job_id(), id);
  // A principal named in metadata is not trusted: only the token counts.
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", std::string("Bearer ") + kBobToken);
    ctx.AddMetadata("regserve-principal", "alice");
    v1::GetJobRequest request;
    request.set_job_id(id);
    EXPECT_EQ(bob.stub()->GetJob(&ctx, request, &job).error_code(),
              Code::NOT_FOUND);
  }
  CommandResult r =
      Regctl({"--token_file", TokenFileFor(kBobToken)}, {"cancel", id});
  EXPECT_EQ(r.exit_code, 6) << r.err;
  // Bob's attempts left the job alone.
  ASSERT_TRUE(alice.GetJob(id, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_UPLOADING);
  upload.Cancel();
  EXPECT_TRUE(WaitFinished(kAliceToken, id));
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, SighupReloadsTheTokenFile) {
  v1::ListJobsResponse jobs;
  // Bob out, dave in.
  WriteAll(*tokens_path_, TokenFile({{"alice", kAliceToken},
                                     {"carol", kCarolToken},
                                     {"dave", kDaveToken}}));
  ASSERT_TRUE(Sighup("SIGHUP: reloaded 3 token(s)"))
      << ReadAll(main_->stderr_path());
  EXPECT_TRUE(Main(kDaveToken).ListJobs(&jobs).ok());
  EXPECT_EQ(Main(kBobToken).ListJobs(&jobs).error_code(),
            Code::UNAUTHENTICATED);
  EXPECT_TRUE(Main(kAliceToken).ListJobs(&jobs).ok());

  // A broken file is refused and the previous table stays in force.
  WriteAll(*tokens_path_, "dave short\n");
  ASSERT_TRUE(Sighup("SIGHUP: cannot reload")) << ReadAll(main_->stderr_path());
  EXPECT_TRUE(Main(kDaveToken).ListJobs(&jobs).ok());
  EXPECT_EQ(Main(kBobToken).ListJobs(&jobs).error_code(),
            Code::UNAUTHENTICATED);

  WriteAll(*tokens_path_, DefaultTokens());
  ASSERT_TRUE(Sighup("SIGHUP: reloaded 3 token(s)"));
  EXPECT_TRUE(Main(kBobToken).ListJobs(&jobs).ok());
  EXPECT_EQ(Main(kDaveToken).ListJobs(&jobs).error_code(),
            Code::UNAUTHENTICATED);
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, UnprotectedNonLoopbackListenIsRefused) {
  const std::string regserved = BinaryDir() + "/server/regserved";
  const std::string data = MakeTempDir("regserve_sec_listen");
  std::string out;
  EXPECT_EQ(
      RunProgram({regserved, "--data_dir=" + data, "--listen=0.0.0.0:0"}, &out),
      2);
  EXPECT_NE(out.find("refusing to listen on 0.0.0.0:0"), std::string::npos)
      << out;
  EXPECT_NE(out.find("--insecure_listen_any"), std::string::npos) << out;
  // Bad security flags are refused too (exit 2, before anything starts).
  const std::vector<std::vector<std::string>> bad = {
      {"--tls_cert=" + pki_->Path("server.pem")},
      {"--tls_client_ca=" + pki_->Path("ca.pem")},
      {"--tls_cert=" + pki_->Path("server.pem"),
       "--tls_key=" + pki_->Path("missing.key")},
      {"--tls_cert=" + pki_->Path("server.ext"),
       "--tls_key=" + pki_->Path("server.key")},
      {"--auth_tokens=" + pki_->Path("missing-tokens")},
      {"--max_message_size=1K"},
      // Metrics tokens without an endpoint, or a file that cannot be read.
      {"--metrics_tokens=" + *tokens_path_},
      {"--metrics_listen=127.0.0.1:0",
       "--metrics_tokens=" + pki_->Path("missing-tokens")}};
  std::vector<Child> children;  // in parallel: each takes ~1 s to load
  for (const std::vector<std::string>& flags : bad) {
    std::vector<std::string> argv = {regserved, "--data_dir=" + data,
                                     "--listen=127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    children.push_back(StartProgram(argv));
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(WaitProgram(children[i], &out), 2) << bad[i][0] << ": " << out;
  }

  // With --insecure_listen_any it starts, and says so loudly.
  Daemon any;
  ASSERT_TRUE(any.Start(data, {"--listen=0.0.0.0:0", "--insecure_listen_any"}))
      << ReadAll(any.stderr_path());
  EXPECT_NE(ReadAll(any.stderr_path())
                .find("WARNING: --insecure_listen_any: listening on 0.0.0.0:0 "
                      "WITHOUT TLS AND WITHOUT AUTHENTICATION"),
            std::string::npos)
      << ReadAll(any.stderr_path());
  RegistrationClient::Options plain;
  plain.address =
      "127.0.0.1:" + any.address().substr(any.address().rfind(':') + 1);
  bool serving = false;
  EXPECT_TRUE(RegistrationClient(plain).CheckHealth("", &serving).ok());
  EXPECT_TRUE(serving);
  EXPECT_EQ(any.Stop(), 0);
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, LimitsAreEnforcedWithTheirCodes) {
  RegistrationClient carol = Main(kCarolToken);
  v1::JobSpec rigid;
  rigid.set_transform(v1::TRANSFORM_KIND_RIGID);
  // Upload bytes: a declared size above --max_upload.
  {
    v1::SubmitRequest spec = UploadSpec();
    spec.mutable_spec()->mutable_fixed()->mutable_upload()->set_byte_size(
        kMaxUpload + 1);
    const grpc::Status s = RawSubmit(carol.stub(), kCarolToken, {spec});
    EXPECT_EQ(s.error_code(), Code::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find(
                  absl::StrCat("exceeds the limit of ", kMaxUpload)),
              std::string::npos)
        << s.error_message();
  }
  // Pixels: refused when the header is read, for an upload and for a
  // server-side path.
  {
    grpc::Status s = carol.Submit(rigid, {*large_, Moving()}, nullptr);
    EXPECT_EQ(s.error_code(), Code::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find(absl::StrCat(
                  "160000 pixels, above the server limit of ", kMaxPixels)),
              std::string::npos)
        << s.error_message();
    v1::JobSpec server_side = rigid;
    server_side.mutable_fixed()->set_server_path("large.png");
    s = carol.Submit(server_side, {"", Moving()}, nullptr);
    EXPECT_EQ(s.error_code(), Code::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("above the server limit"),
              std::string::npos)
        << s.error_message();
  }
  // Message size: a 3 MiB JobSpec against --max_message_size=2M.
  {
    v1::SubmitRequest spec = UploadSpec();
    spec.mutable_spec()->set_client_label(std::string(3 << 20, 'x'));
    const grpc::Status s = RawSubmit(carol.stub(), kCarolToken, {spec});
    EXPECT_EQ(s.error_code(), Code::RESOURCE_EXHAUSTED) << s.error_message();
  }
  // Unfinished jobs per principal (--max_jobs_per_principal=1).
  {
    OpenUpload upload(carol.stub(), kCarolToken);
    ASSERT_TRUE(upload.written());
    const std::string id = WaitForUnfinishedJob(kCarolToken);
    ASSERT_FALSE(id.empty());
    grpc::Status s = carol.Submit(rigid, {Fixed(), Moving()}, nullptr);
    EXPECT_EQ(s.error_code(), Code::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_NE(
        s.error_message().find("principal carol has 1 unfinished jobs (limit "
                               "1)"),
        std::string::npos)
        << s.error_message();
    // Another principal has its own share.
    OpenUpload other(carol.stub(), kAliceToken);
    ASSERT_TRUE(other.written());
    EXPECT_FALSE(WaitForUnfinishedJob(kAliceToken).empty());
    other.Cancel();
    // Once carol's job is finished she can submit again.
    upload.Cancel();
    ASSERT_TRUE(WaitFinished(kCarolToken, id));
    s = carol.Submit(rigid, {Fixed(), Moving()}, nullptr);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, ServerPathsStayInsideTheInputRoot) {
  RegistrationClient alice = Main(kAliceToken);
  for (const std::string& path :
       {std::string("../") + outside_->substr(outside_->rfind('/') + 1) +
            "/secret.png",
        std::string("sub/../../etc/passwd"), std::string("escape.png"),
        *outside_ + "/secret.png", std::string("/etc/passwd")}) {
    SCOPED_TRACE(path);
    v1::JobSpec spec;
    spec.set_transform(v1::TRANSFORM_KIND_RIGID);
    spec.mutable_fixed()->set_server_path(path);
    const grpc::Status s = alice.Submit(spec, {"", Moving()}, nullptr);
    EXPECT_EQ(s.error_code(), Code::PERMISSION_DENIED) << s.error_message();
  }
  CommandResult r =
      Regctl({"--token_file", TokenFileFor(kAliceToken)},
             {"submit", "--fixed-path", "escape.png", "--moving", Moving(),
              "--output", MakeTempDir("sec_escape") + "/o.png"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos) << r.err;
  ExpectMainServing();
}

TEST_F(SecurityE2eTest, ParameterFilesCannotNameOutputPaths) {
  RegistrationClient alice = Main(kAliceToken);
  const std::string base =
      "(Transform \"EulerTransform\")\n(Metric "
      "\"AdvancedMattesMutualInformation\")\n";
  for (const std::string& line :
       {std::string("(OutputDirectory \"/tmp/regserve-evil\")\n"),
        std::string("(ResultImageFileName \"/etc/cron.d/evil\")\n"),
        std::string("(WriteTransformParametersEachIteration \"true\")\n")}) {
    SCOPED_TRACE(line);
    v1::JobSpec spec;
    spec.set_transform(v1::TRANSFORM_KIND_RIGID);
    spec.add_elastix_parameters(base + line);
    const grpc::Status s = alice.Submit(spec, {Fixed(), Moving()}, nullptr);
    EXPECT_EQ(s.error_code(), Code::INVALID_ARGUMENT) << s.error_message();
  }
  const std::string file = MakeTempDir("sec_params") + "/evil.txt";
  WriteAll(file, base + "(OutputDirectory \"/tmp/regserve-evil\")\n");
  CommandResult r =
      Regctl({"--token_file", TokenFileFor(kAliceToken)},
             {"submit", "--fixed", Fixed(), "--moving", Moving(), "--output",
              MakeTempDir("sec_params_out") + "/o.png", "--parameters", file});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("OutputDirectory"), std::string::npos) << r.err;
  struct stat st;
  EXPECT_NE(stat("/tmp/regserve-evil", &st), 0);
  ExpectMainServing();
}

}  // namespace
}  // namespace e2e
}  // namespace regserve
