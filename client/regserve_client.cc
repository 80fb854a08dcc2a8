// Copyright regserve authors.
#include "client/regserve_client.h"

#include <sys/stat.h>

#include <fstream>
#include <future>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/channel_target.h"
#include "grpcpp/generic/generic_stub.h"

namespace regserve {
namespace {

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Fills `source` as an upload of the file at `path`.
grpc::Status DeclareUpload(const std::string& path, const char* what,
                           v1::ImageSource* source, uint64_t* size) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("cannot read the ", what, " image \"",
                                     path, "\": no such regular file"));
  }
  *size = static_cast<uint64_t>(st.st_size);
  source->mutable_upload()->set_byte_size(*size);
  source->mutable_upload()->set_file_name(BaseName(path));
  return grpc::Status::OK;
}

}  // namespace

const char* StageLabel(v1::Stage stage) {
  switch (stage) {
    case v1::STAGE_UPLOAD:
      return "upload";
    case v1::STAGE_DECODE:
      return "decode";
    case v1::STAGE_REGISTRATION:
      return "registration";
    case v1::STAGE_WARP:
      return "warp";
    case v1::STAGE_STREAM:
      return "stream";
    case v1::STAGE_QUALITY:
      return "quality";
    case v1::STAGE_INITIAL_ALIGNMENT:
      return "initial_alignment";
    case v1::STAGE_REFINE:
      return "refine";
    default:
      return "unknown";
  }
}

absl::Status LoadTlsFiles(const std::string& ca_path,
                          const std::string& cert_path,
                          const std::string& key_path,
                          RegistrationClient::TlsOptions* tls) {
  if (cert_path.empty() != key_path.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate and its key go together: give both or neither");
  }
  const auto read = [](const std::string& path, const char* what,
                       std::string* out) -> absl::Status {
    if (path.empty()) return absl::OkStatus();
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    if (in) text << in.rdbuf();
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read the ", what, " file \"", path, "\""));
    }
    if (text.str().find("-----BEGIN ") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", what, " file \"", path, "\" holds no PEM block"));
    }
    *out = text.str();
    return absl::OkStatus();
  };
  absl::Status s = read(ca_path, "CA certificate", &tls->root_certs_pem);
  if (s.ok()) s = read(cert_path, "client certificate", &tls->cert_chain_pem);
  if (s.ok()) s = read(key_path, "client key", &tls->private_key_pem);
  if (s.ok()) tls->enabled = true;
  return s;
}

std::shared_ptr<grpc::Channel> RegistrationClient::MakeChannel(
    const Options& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // tiles can be large
  // The server enforces its own limit (ServerInfo.max_message_bytes).
  args.SetMaxSendMessageSize(-1);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls.enabled) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls.root_certs_pem;
    ssl.pem_cert_chain = options.tls.cert_chain_pem;
    ssl.pem_private_key = options.tls.private_key_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls.server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls.server_name);
    }
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  // A list of replicas or a dns:/// name: new calls spread over them. A
  // list that does not resolve is left to fail at the first call (regctl
  // checks it first, with ResolveChannelTarget's message).
  absl::StatusOr<ChannelTarget> target = ResolveChannelTarget(options.address);
  if (target.ok() && target->balanced) {
    args.SetLoadBalancingPolicyName("round_robin");
  }
  return grpc::CreateCustomChannel(
      target.ok() ? target->target : options.address, credentials, args);
}

std::shared_ptr<grpc::Channel> RegistrationClient::MakeChannel(
    const std::string& address) {
  Options options;
  options.address = address;
  return MakeChannel(options);
}

RegistrationClient::RegistrationClient(Options options)
    : RegistrationClient(options, MakeChannel(options)) {}

RegistrationClient::RegistrationClient(Options options,
                                       std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::Registration::NewStub(channel_)) {}

void RegistrationClient::Prepare(grpc::ClientContext* context) const {
  if (!options_.token.empty()) {
    context->AddMetadata("authorization", "Bearer " + options_.token);
  }
  if (options_.timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  }
}

bool RegistrationClient::WaitForConnected(absl::Duration timeout) {
  return channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + timeout));
}

namespace {

// How long Submit waits for `created` before it uploads anyway (a server
// older than `created` sends nothing before the upload ends).
constexpr absl::Duration kCreatedWait = absl::Seconds(10);

// The Submit call on the callback API, driven from the calling thread: the
// reactions only record what completed; Drive() reads the next chunk,
// hands each event to the caller and starts the next operation, so that
// events (`created`, upload progress) arrive while the upload goes on and
// every callback runs on the calling thread. The chunks follow `created`:
// a refused spec costs no upload, and the caller has the job id before the
// first byte is sent.
class SubmitStream final
    : public grpc::ClientBidiReactor<v1::SubmitRequest, v1::JobEvent> {
 public:
  struct Upload {
    v1::ImageRole role;
    std::string path;
    uint64_t size = 0;
  };

  SubmitStream(v1::Registration::Stub* stub, grpc::ClientContext* context,
               v1::JobSpec spec, std::vector<Upload> uploads,
               size_t chunk_bytes, const RegistrationClient::TileOptions& tiles)
      : context_(context),
        uploads_(std::move(uploads)),
        buffer_(chunk_bytes > 0 ? chunk_bytes : 1 << 20) {
    *request_.mutable_spec() = std::move(spec);
    request_.set_tile_encoding(tiles.encoding);
    request_.set_omit_tiles(tiles.omit_tiles);
    stub->async()->Submit(context, this);
    // Operations start from Drive(), outside the reactions: hold the call
    // open until the last of them has been started.
    AddHold();
    {
      absl::MutexLock lock(&mu_);
      read_pending_ = true;
      write_pending_ = true;
    }
    StartRead(&event_);
    StartWrite(&request_);
    StartCall();
  }

  // Runs the call to its end; returns its status.
  grpc::Status Drive(const RegistrationClient::EventCallback& on_event,
                     const RegistrationClient::UploadCallback& on_upload) {
    bool writing = true, following = true;
    bool may_upload = uploads_.empty();  // after the first event
    const absl::Time upload_anyway = absl::Now() + kCreatedWait;
    grpc::Status local_error;
    size_t upload = 0;  // index into uploads_
    uint64_t sent = 0;  // bytes of uploads_[upload] sent
    std::ifstream in;
    // The chunk in flight, reported to on_upload once written.
    std::optional<std::pair<size_t, uint64_t>> in_flight;
    while (true) {
      bool read_done = false, read_ok = false, write_done = false,
           write_ok = false;
      {
        absl::MutexLock lock(&mu_);
        if (!reading_ && !write_in_progress_) break;
        mu_.AwaitWithDeadline(
            absl::Condition(
                +[](SubmitStream* s) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                  return (s->reading_ && !s->read_pending_) ||
                         (s->write_in_progress_ && !s->write_pending_);
                },
                this),
            may_upload ? absl::InfiniteFuture() : upload_anyway);
        if (reading_ && !read_pending_) {
          read_done = true;
          read_ok = read_ok_;
          if (!read_ok) reading_ = false;  // the server ended the stream
        }
        if (!write_pending_ && write_in_progress_) {
          write_done = true;
          write_ok = write_ok_;
          write_in_progress_ = false;
        }
      }
      if (write_done) {
        if (!write_ok) writing = false;  // the call broke: its status says why
        if (write_ok && in_flight && on_upload) {
          on_upload(uploads_[in_flight->first].role, in_flight->second,
                    uploads_[in_flight->first].size);
        }
        in_flight.reset();
      }
      if (read_done) {
        if (!read_ok) {
          writing = false;
        } else {
          may_upload = true;
          if (following && on_event && !on_event(event_)) {
            following = false;
            context_->TryCancel();
          }
          StartNextRead();
        }
      }
      if (!writing || write_busy()) continue;
      if (!may_upload && absl::Now() < upload_anyway) continue;
      // The write slot is free: the next chunk, or the half-close.
      while (upload < uploads_.size() && sent >= uploads_[upload].size) {
        ++upload;
        sent = 0;
        in.close();
      }
      if (upload == uploads_.size()) {
        writing = false;
        StartWritesDoneOp();
        continue;
      }
      const Upload& u = uploads_[upload];
      if (!in.is_open()) {
        in.open(u.path, std::ios::binary);
        if (!in) {
          local_error =
              grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                           absl::StrCat("cannot open \"", u.path, "\""));
          writing = false;
          context_->TryCancel();
          continue;
        }
      }
      in.read(buffer_.data(), static_cast<std::streamsize>(buffer_.size()));
      const std::streamsize got = in.gcount();
      if (got <= 0) {
        // The file shrank: half-close; the server reports the truncation.
        upload = uploads_.size();
        writing = false;
        StartWritesDoneOp();
        continue;
      }
      request_.Clear();
      v1::ImageChunk* chunk = request_.mutable_chunk();
      chunk->set_role(u.role);
      chunk->set_offset(sent);
      chunk->set_data(buffer_.data(), static_cast<size_t>(got));
      sent += static_cast<uint64_t>(got);
      in_flight.emplace(upload, sent);
      StartNextWrite();
    }
    RemoveHold();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
    return local_error.ok() ? status_ : local_error;
  }

  void OnReadDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    read_pending_ = false;
    read_ok_ = ok;
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    write_pending_ = false;
    write_ok_ = ok;
  }
  void OnWritesDoneDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    write_pending_ = false;
    write_ok_ = ok;
  }
  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }

 private:
  bool write_busy() {
    absl::MutexLock lock(&mu_);
    return write_in_progress_;
  }
  void StartNextRead() {
    {
      absl::MutexLock lock(&mu_);
      read_pending_ = true;
    }
    StartRead(&event_);  // not under mu_: the reaction may run inline
  }
  void StartNextWrite() {
    {
      absl::MutexLock lock(&mu_);
      write_pending_ = true;
      write_in_progress_ = true;
    }
    StartWrite(&request_);
  }
  void StartWritesDoneOp() {
    {
      absl::MutexLock lock(&mu_);
      write_pending_ = true;
      write_in_progress_ = true;
    }
    StartWritesDone();
  }

  grpc::ClientContext* const context_;
  const std::vector<Upload> uploads_;
  std::vector<char> buffer_;
  v1::SubmitRequest request_;  // the message being written
  v1::JobEvent event_;         // the message being read

  absl::Mutex mu_;
  bool read_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool read_ok_ ABSL_GUARDED_BY(mu_) = false;
  bool write_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool write_ok_ ABSL_GUARDED_BY(mu_) = false;
  // A write (or the half-close) was started and Drive has not yet seen it
  // finish; the spec's write counts.
  bool write_in_progress_ ABSL_GUARDED_BY(mu_) = true;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  // Until the server's stream has ended (set by Drive).
  bool reading_ ABSL_GUARDED_BY(mu_) = true;
};

}  // namespace

grpc::Status RegistrationClient::Submit(v1::JobSpec spec, const Inputs& inputs,
                                        const EventCallback& on_event,
                                        const UploadCallback& on_upload,
                                        grpc::ClientContext* context,
                                        const TileOptions& tiles) {
  std::vector<SubmitStream::Upload> uploads;
  if (!inputs.fixed_path.empty()) {
    SubmitStream::Upload u{v1::IMAGE_ROLE_FIXED, inputs.fixed_path};
    grpc::Status s =
        DeclareUpload(u.path, "fixed", spec.mutable_fixed(), &u.size);
    if (!s.ok()) return s;
    uploads.push_back(u);
  }
  if (!inputs.moving_path.empty()) {
    SubmitStream::Upload u{v1::IMAGE_ROLE_MOVING, inputs.moving_path};
    grpc::Status s =
        DeclareUpload(u.path, "moving", spec.mutable_moving(), &u.size);
    if (!s.ok()) return s;
    uploads.push_back(u);
  }

  grpc::ClientContext own_context;
  if (context == nullptr) context = &own_context;
  Prepare(context);
  SubmitStream call(stub_.get(), context, std::move(spec), std::move(uploads),
                    options_.chunk_bytes, tiles);
  return call.Drive(on_event, on_upload);
}

grpc::Status RegistrationClient::Watch(const std::string& job_id,
                                       int64_t from_tile,
                                       const EventCallback& on_event,
                                       grpc::ClientContext* context,
                                       const TileOptions& tiles) {
  grpc::ClientContext own_context;
  if (context == nullptr) context = &own_context;
  Prepare(context);
  v1::WatchRequest request;
  request.set_job_id(job_id);
  request.set_from_tile(from_tile);
  request.set_tile_encoding(tiles.encoding);
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader =
      stub_->Watch(context, request);
  v1::JobEvent event;
  while (reader->Read(&event)) {
    if (on_event && !on_event(event)) {
      context->TryCancel();
      while (reader->Read(&event)) {
      }
      break;
    }
  }
  return reader->Finish();
}

grpc::Status RegistrationClient::Cancel(const std::string& job_id,
                                        v1::CancelResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::CancelRequest request;
  request.set_job_id(job_id);
  return stub_->Cancel(&context, request, response);
}

grpc::Status RegistrationClient::GetJob(const std::string& job_id,
                                        v1::JobStatus* response) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  return stub_->GetJob(&context, request, response);
}

grpc::Status RegistrationClient::ListJobs(v1::ListJobsResponse* response) {
  response->Clear();
  v1::ListJobsRequest request;
  request.set_page_size(1000);
  for (;;) {
    grpc::ClientContext context;
    Prepare(&context);
    v1::ListJobsResponse page;
    grpc::Status status = stub_->ListJobs(&context, request, &page);
    if (!status.ok()) return status;
    for (v1::JobStatus& job : *page.mutable_jobs())
      *response->add_jobs() = std::move(job);
    if (page.next_page_token().empty()) return grpc::Status::OK;
    request.set_page_token(page.next_page_token());
  }
}

grpc::Status RegistrationClient::GetServerInfo(v1::ServerInfo* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), response);
}

grpc::Status RegistrationClient::CheckHealth(const std::string& service,
                                             bool* serving) {
  *serving = false;
  // HealthCheckRequest { string service = 1; } encoded by hand: the health
  // proto is not installed with gRPC's development package.
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes.push_back(0x0a);
    request_bytes.push_back(static_cast<char>(service.size()));
    request_bytes += service;
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::GenericStub generic(channel_);
  grpc::ClientContext context;
  Prepare(&context);
  if (options_.timeout == absl::InfiniteDuration()) {
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  }
  std::promise<grpc::Status> done;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check",
                    grpc::StubOptions(), &request, &response,
                    [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return status;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "unreadable health answer");
  }
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // HealthCheckResponse { ServingStatus status = 1; }, SERVING = 1.
  *serving = bytes.size() == 2 && bytes[0] == 0x08 && bytes[1] == 0x01;
  return grpc::Status::OK;
}

}  // namespace regserve
