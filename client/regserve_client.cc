// Copyright regserve authors.
#include "client/regserve_client.h"

#include <sys/stat.h>

#include <fstream>
#include <future>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
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
  return grpc::CreateCustomChannel(options.address, credentials, args);
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

grpc::Status RegistrationClient::Submit(v1::JobSpec spec, const Inputs& inputs,
                                        const EventCallback& on_event,
                                        const UploadCallback& on_upload,
                                        grpc::ClientContext* context) {
  struct Upload {
    v1::ImageRole role;
    std::string path;
    uint64_t size = 0;
  };
  std::vector<Upload> uploads;
  if (!inputs.fixed_path.empty()) {
    Upload u{v1::IMAGE_ROLE_FIXED, inputs.fixed_path};
    grpc::Status s =
        DeclareUpload(u.path, "fixed", spec.mutable_fixed(), &u.size);
    if (!s.ok()) return s;
    uploads.push_back(u);
  }
  if (!inputs.moving_path.empty()) {
    Upload u{v1::IMAGE_ROLE_MOVING, inputs.moving_path};
    grpc::Status s =
        DeclareUpload(u.path, "moving", spec.mutable_moving(), &u.size);
    if (!s.ok()) return s;
    uploads.push_back(u);
  }

  grpc::ClientContext own_context;
  if (context == nullptr) context = &own_context;
  Prepare(context);
  std::unique_ptr<grpc::ClientReaderWriter<v1::SubmitRequest, v1::JobEvent>>
      stream = stub_->Submit(context);

  v1::SubmitRequest request;
  *request.mutable_spec() = spec;
  bool writing = stream->Write(request);
  std::vector<char> buffer(options_.chunk_bytes > 0 ? options_.chunk_bytes
                                                    : 1 << 20);
  for (const Upload& u : uploads) {
    if (!writing) break;
    std::ifstream in(u.path, std::ios::binary);
    if (!in) {
      context->TryCancel();
      stream->Finish();
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("cannot open \"", u.path, "\""));
    }
    uint64_t sent = 0;
    while (writing && sent < u.size) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      const std::streamsize got = in.gcount();
      if (got <= 0) break;  // the file shrank: the server reports truncation
      request.Clear();
      v1::ImageChunk* chunk = request.mutable_chunk();
      chunk->set_role(u.role);
      chunk->set_offset(sent);
      chunk->set_data(buffer.data(), static_cast<size_t>(got));
      writing = stream->Write(request);
      sent += static_cast<uint64_t>(got);
      if (on_upload) on_upload(u.role, sent, u.size);
    }
  }
  if (writing) stream->WritesDone();

  v1::JobEvent event;
  while (stream->Read(&event)) {
    if (on_event && !on_event(event)) {
      context->TryCancel();
      while (stream->Read(&event)) {
      }
      break;
    }
  }
  return stream->Finish();
}

grpc::Status RegistrationClient::Watch(const std::string& job_id,
                                       int64_t from_tile,
                                       const EventCallback& on_event,
                                       grpc::ClientContext* context) {
  grpc::ClientContext own_context;
  if (context == nullptr) context = &own_context;
  Prepare(context);
  v1::WatchRequest request;
  request.set_job_id(job_id);
  request.set_from_tile(from_tile);
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
