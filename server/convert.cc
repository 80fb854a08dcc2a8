// Copyright regserve authors.
#include "server/convert.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "server/status_util.h"

namespace regserve {
namespace {

absl::Status UnknownEnum(absl::string_view field, int value,
                         absl::string_view choices) {
  return absl::InvalidArgumentError(absl::StrCat(
      "spec.", field, ": unknown value ", value, "; use one of ", choices,
      " (or leave it UNSPECIFIED for the server default)"));
}

absl::StatusOr<Compression> CompressionFromProto(int compression) {
  switch (compression) {
    case v1::COMPRESSION_UNSPECIFIED:
    case v1::COMPRESSION_DEFLATE:
      return Compression::kDeflate;
    case v1::COMPRESSION_NONE:
      return Compression::kNone;
    case v1::COMPRESSION_ZSTD:
      return Compression::kZstd;
    case v1::COMPRESSION_JPEG:
      return Compression::kJpeg;
    default:
      return UnknownEnum("compression", compression,
                         "NONE, DEFLATE, ZSTD, JPEG");
  }
}

ImageSource SourceFromProto(const v1::ImageSource& proto) {
  ImageSource source;
  switch (proto.source_case()) {
    case v1::ImageSource::kUpload:
      source.upload_bytes = proto.upload().byte_size();
      source.upload_name = proto.upload().file_name();
      break;
    case v1::ImageSource::kServerPath:
      source.path = proto.server_path();
      break;
    case v1::ImageSource::SOURCE_NOT_SET:
      break;
  }
  return source;
}

int64_t UnixMillisOrZero(absl::Time t) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return 0;
  return absl::ToUnixMillis(t);
}

void ImageSpecToProto(const ImageSpec& spec, v1::ImageInfo* out) {
  out->set_width(spec.width);
  out->set_height(spec.height);
  out->set_channels(spec.channels);
  out->set_sample_type(spec.channels > 0 ? SampleTypeToProto(spec.type)
                                         : v1::SAMPLE_TYPE_UNSPECIFIED);
}

void MemoryToProto(const StageMemory& m, v1::StageMemory* out) {
  out->set_ram_bytes(m.ram_bytes);
  out->set_vram_bytes(m.vram_bytes);
}

void TimingsToProto(const std::vector<StageTiming>& timings,
                    google::protobuf::RepeatedPtrField<v1::StageTiming>* out) {
  for (const StageTiming& t : timings) {
    v1::StageTiming* p = out->Add();
    p->set_stage(StageToProto(t.stage));
    p->set_seconds(t.seconds);
  }
}

void FilesToProto(const std::vector<TransformFile>& files,
                  google::protobuf::RepeatedPtrField<v1::TransformFile>* out) {
  for (const TransformFile& f : files) {
    v1::TransformFile* p = out->Add();
    p->set_name(f.name);
    p->set_content(f.text);
  }
}

// Sets the deprecated text twin of Tile.encoding, for clients that predate
// the enum (the one place that touches the deprecated field).
void SetLegacyEncodingName(TileEncoding encoding, v1::Tile* tile) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  switch (encoding) {
    case TileEncoding::kRaw:
    case TileEncoding::kZstd:
    case TileEncoding::kDeflate:
      tile->set_encoding_name(std::string(TileEncodingName(encoding)));
      break;
  }
#pragma GCC diagnostic pop
}

absl::StatusOr<RefineMode> RefineFromProto(int refine) {
  switch (refine) {
    case v1::REFINE_UNSPECIFIED:
    case v1::REFINE_AUTO:
      return RefineMode::kAuto;
    case v1::REFINE_OFF:
      return RefineMode::kOff;
    case v1::REFINE_ON:
      return RefineMode::kOn;
    default:
      return UnknownEnum("refine", refine, "AUTO, OFF, ON");
  }
}

}  // namespace

absl::StatusOr<JobSpec> SpecFromProto(const v1::JobSpec& proto) {
  JobSpec spec;
  spec.fixed = SourceFromProto(proto.fixed());
  spec.moving = SourceFromProto(proto.moving());

  switch (static_cast<int>(proto.transform())) {
    case v1::TRANSFORM_KIND_UNSPECIFIED:
    case v1::TRANSFORM_KIND_BSPLINE:
      spec.options.transform = TransformKind::kBSpline;
      break;
    case v1::TRANSFORM_KIND_RIGID:
      spec.options.transform = TransformKind::kRigid;
      break;
    case v1::TRANSFORM_KIND_AFFINE:
      spec.options.transform = TransformKind::kAffine;
      break;
    default:
      return UnknownEnum("transform", proto.transform(),
                         "RIGID, AFFINE, BSPLINE");
  }
  switch (static_cast<int>(proto.output_resolution())) {
    case v1::OUTPUT_RESOLUTION_UNSPECIFIED:
    case v1::OUTPUT_RESOLUTION_FULL:
      spec.options.output_full_resolution = true;
      break;
    case v1::OUTPUT_RESOLUTION_REGISTRATION:
      spec.options.output_full_resolution = false;
      break;
    default:
      return UnknownEnum("output_resolution", proto.output_resolution(),
                         "FULL, REGISTRATION");
  }
  switch (static_cast<int>(proto.interpolation())) {
    case v1::INTERPOLATION_UNSPECIFIED:
    case v1::INTERPOLATION_LINEAR:
      spec.options.interpolation = Interpolation::kLinear;
      break;
    case v1::INTERPOLATION_CUBIC:
      spec.options.interpolation = Interpolation::kCubic;
      break;
    case v1::INTERPOLATION_NEAREST:
      spec.options.interpolation = Interpolation::kNearest;
      break;
    default:
      return UnknownEnum("interpolation", proto.interpolation(),
                         "LINEAR, CUBIC, NEAREST");
  }
  switch (static_cast<int>(proto.device())) {
    case v1::DEVICE_UNSPECIFIED:
      spec.options.device = DevicePreference::kUnspecified;
      break;
    case v1::DEVICE_AUTO:
      spec.options.device = DevicePreference::kAuto;
      break;
    case v1::DEVICE_CPU:
      spec.options.device = DevicePreference::kCpu;
      break;
    case v1::DEVICE_CUDA:
      spec.options.device = DevicePreference::kCuda;
      break;
    default:
      return UnknownEnum("device", proto.device(), "AUTO, CPU, CUDA");
  }
  REGSERVE_ASSIGN_OR_RETURN(spec.options.refine,
                            RefineFromProto(proto.refine()));
  spec.options.max_registration_megapixels =
      proto.max_registration_megapixels();
  spec.custom_parameters.assign(proto.elastix_parameters().begin(),
                                proto.elastix_parameters().end());
  spec.priority = proto.priority();
  spec.fill_value = proto.fill_value();
  spec.client_label = proto.client_label();
  spec.output_path = proto.output_path();
  spec.overwrite_output = proto.overwrite_output();
  REGSERVE_ASSIGN_OR_RETURN(spec.options.compression,
                            CompressionFromProto(proto.compression()));
  spec.options.jpeg_quality = proto.jpeg_quality();
  return spec;
}

absl::StatusOr<ImageRole> RoleFromProto(int role) {
  switch (role) {
    case v1::IMAGE_ROLE_FIXED:
      return ImageRole::kFixed;
    case v1::IMAGE_ROLE_MOVING:
      return ImageRole::kMoving;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk.role: ", role == 0 ? "UNSPECIFIED" : absl::StrCat(role),
          " is not an image role; tag each chunk IMAGE_ROLE_FIXED or "
          "IMAGE_ROLE_MOVING"));
  }
}

v1::Stage StageToProto(Stage stage) {
  switch (stage) {
    case Stage::kUpload:
      return v1::STAGE_UPLOAD;
    case Stage::kDecode:
      return v1::STAGE_DECODE;
    case Stage::kRegistration:
      return v1::STAGE_REGISTRATION;
    case Stage::kWarp:
      return v1::STAGE_WARP;
    case Stage::kStream:
      return v1::STAGE_STREAM;
    case Stage::kQuality:
      return v1::STAGE_QUALITY;
    case Stage::kInitialAlignment:
      return v1::STAGE_INITIAL_ALIGNMENT;
    case Stage::kRefine:
      return v1::STAGE_REFINE;
  }
  return v1::STAGE_UNSPECIFIED;
}

v1::JobState JobStateToProto(JobState state) {
  switch (state) {
    case JobState::kUploading:
      return v1::JOB_STATE_UPLOADING;
    case JobState::kQueued:
      return v1::JOB_STATE_QUEUED;
    case JobState::kRunning:
      return v1::JOB_STATE_RUNNING;
    case JobState::kCompleted:
      return v1::JOB_STATE_COMPLETED;
    case JobState::kFailed:
      return v1::JOB_STATE_FAILED;
    case JobState::kCancelled:
      return v1::JOB_STATE_CANCELLED;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

v1::SampleType SampleTypeToProto(SampleType type) {
  switch (type) {
    case SampleType::kUInt8:
      return v1::SAMPLE_TYPE_UINT8;
    case SampleType::kUInt16:
      return v1::SAMPLE_TYPE_UINT16;
    case SampleType::kFloat32:
      return v1::SAMPLE_TYPE_FLOAT32;
  }
  return v1::SAMPLE_TYPE_UNSPECIFIED;
}

v1::TransformKind TransformToProto(TransformKind kind) {
  switch (kind) {
    case TransformKind::kRigid:
      return v1::TRANSFORM_KIND_RIGID;
    case TransformKind::kAffine:
      return v1::TRANSFORM_KIND_AFFINE;
    case TransformKind::kBSpline:
      return v1::TRANSFORM_KIND_BSPLINE;
  }
  return v1::TRANSFORM_KIND_UNSPECIFIED;
}

void PlanToProto(const Plan& plan, v1::Plan* out) {
  out->set_registration_fixed_width(plan.registration_fixed_width);
  out->set_registration_fixed_height(plan.registration_fixed_height);
  out->set_registration_moving_width(plan.registration_moving_width);
  out->set_registration_moving_height(plan.registration_moving_height);
  out->set_registration_factor(plan.registration_factor);
  out->set_output_width(plan.output_width);
  out->set_output_height(plan.output_height);
  out->set_warp_device(std::string(WarpDeviceName(plan.warp_device)));
  out->set_warp_tile_size(plan.tile_size);
  MemoryToProto(plan.decode, out->mutable_decode_memory());
  MemoryToProto(plan.registration, out->mutable_registration_memory());
  MemoryToProto(plan.warp, out->mutable_warp_memory());
  for (const std::string& r : plan.reasons) out->add_reasons(r);
  MemoryToProto(plan.quality, out->mutable_quality_memory());
  if (plan.refine_enabled) {
    out->set_refine_device(std::string(WarpDeviceName(plan.refine_device)));
  }
  MemoryToProto(plan.refine, out->mutable_refine_memory());
}

void QualitySummaryToProto(const QualitySummary& s, v1::QualitySummary* out) {
  out->set_estimated(s.computed);
  switch (s.verdict) {
    case QualityVerdict::kGood:
      out->set_verdict(v1::QUALITY_VERDICT_GOOD);
      break;
    case QualityVerdict::kPoor:
      out->set_verdict(v1::QUALITY_VERDICT_POOR);
      break;
    case QualityVerdict::kUnchecked:
      out->set_verdict(v1::QUALITY_VERDICT_UNCHECKED);
      break;
  }
  out->set_mean_px(s.mean_px);
  out->set_p95_px(s.p95_px);
  out->set_max_px(s.max_px);
  out->set_checked_fraction(s.checked_fraction);
  out->set_unmatched_fraction(s.unmatched_fraction);
  out->set_measured_patches(s.measured);
  out->set_unmatched_patches(s.unmatched);
  out->set_unknown_patches(s.unknown);
  out->set_warning(s.warning);
}

void QualityMapToProto(const QualityMap& map, v1::QualityMap* out) {
  const QualityGrid& g = map.grid;
  out->set_cols(g.cols);
  out->set_rows(g.rows);
  for (int x : g.x0) out->add_x0(x * g.scale_x);
  for (int y : g.y0) out->add_y0(y * g.scale_y);
  out->set_patch_width(g.patch_size * g.scale_x);
  out->set_patch_height(g.patch_size * g.scale_y);
  out->set_stride_x(g.stride * g.scale_x);
  out->set_stride_y(g.stride * g.scale_y);
  for (PatchState s : g.state) {
    out->add_state(s == PatchState::kMeasured ? v1::QUALITY_PATCH_STATE_MEASURED
                   : s == PatchState::kUnmatched
                       ? v1::QUALITY_PATCH_STATE_UNMATCHED
                       : v1::QUALITY_PATCH_STATE_UNKNOWN);
  }
  *out->mutable_error_px() = {g.error_px.begin(), g.error_px.end()};
  *out->mutable_dx() = {g.dx.begin(), g.dx.end()};
  *out->mutable_dy() = {g.dy.begin(), g.dy.end()};
  const Image& t = map.thumbnail;
  if (!t.empty() && t.channels() == 1 && t.type() == SampleType::kUInt8) {
    out->set_thumbnail_width(static_cast<int32_t>(t.width()));
    out->set_thumbnail_height(static_cast<int32_t>(t.height()));
    out->set_thumbnail(reinterpret_cast<const char*>(t.data()), t.size_bytes());
  }
}

v1::TileEncoding TileEncodingToProto(TileEncoding encoding) {
  switch (encoding) {
    case TileEncoding::kRaw:
      return v1::TILE_ENCODING_RAW;
    case TileEncoding::kZstd:
      return v1::TILE_ENCODING_ZSTD;
    case TileEncoding::kDeflate:
      return v1::TILE_ENCODING_DEFLATE;
  }
  return v1::TILE_ENCODING_UNSPECIFIED;
}

absl::StatusOr<TileEncoding> TileEncodingFromProto(int encoding,
                                                   absl::string_view field) {
  switch (encoding) {
    case v1::TILE_ENCODING_UNSPECIFIED:
    case v1::TILE_ENCODING_RAW:
      return TileEncoding::kRaw;
    case v1::TILE_ENCODING_ZSTD:
      return TileEncoding::kZstd;
    case v1::TILE_ENCODING_DEFLATE:
      return TileEncoding::kDeflate;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          field, " ", encoding,
          " is not a known tile encoding: use TILE_ENCODING_RAW (1), "
          "TILE_ENCODING_ZSTD (2) or TILE_ENCODING_DEFLATE (3)"));
  }
}

void FailureToProto(const absl::Status& status, v1::Failed* out) {
  grpc::Status g = ToGrpcStatus(status);
  out->set_code(static_cast<int>(g.error_code()));
  out->set_code_name(std::string(GrpcCodeName(g.error_code())));
  out->set_message(g.error_message());
}

void JobInfoToProto(const JobInfo& info,
                    const std::vector<TransformFile>& transform_files,
                    v1::JobStatus* out) {
  out->set_job_id(info.id);
  out->set_state(JobStateToProto(info.state));
  out->set_stage(StageToProto(info.stage));
  out->set_stage_fraction(info.stage_fraction);
  out->set_stage_detail(info.stage_detail);
  out->set_queue_position(info.queue_position);
  if (info.has_plan) PlanToProto(info.plan, out->mutable_plan());
  if (!info.failure.ok()) FailureToProto(info.failure, out->mutable_failure());
  TimingsToProto(info.timings, out->mutable_timings());
  out->set_registration_metric(info.registration_metric);
  if (info.state == JobState::kCompleted) {
    ImageSpecToProto(info.output, out->mutable_output());
  }
  out->set_result_path(info.result_path);
  out->set_output_path(info.output_path);
  out->set_transform_dir(info.transform_dir);
  FilesToProto(transform_files, out->mutable_transform_files());
  out->set_tile_size(info.tiles.edge());
  out->set_tile_count(info.tiles.count());
  out->set_attempts(info.attempts);
  out->set_created_unix_ms(UnixMillisOrZero(info.created));
  out->set_finished_unix_ms(UnixMillisOrZero(info.finished));
  out->set_client_label(info.spec.client_label);
  out->set_priority(info.spec.priority);
  out->set_transform(TransformToProto(info.spec.options.transform));
  if (info.quality.computed || !info.quality.warning.empty()) {
    QualitySummaryToProto(info.quality, out->mutable_quality());
  }
}

void CancelResponseFromInfo(const JobInfo& info, v1::CancelResponse* out) {
  out->set_state(JobStateToProto(info.state));
  if ((info.state == JobState::kFailed || info.state == JobState::kCancelled) &&
      !info.failure.ok()) {
    FailureToProto(info.failure, out->mutable_failure());
  }
}

void CreatedEventToProto(const std::string& job_id, uint64_t upload_bytes,
                         v1::JobEvent* out) {
  out->Clear();
  out->set_job_id(job_id);
  out->mutable_created()->set_upload_bytes(upload_bytes);
}

void EventToProto(const JobEvent& event,
                  const std::vector<TransformFile>& transform_files,
                  v1::JobEvent* out) {
  out->Clear();
  out->set_job_id(event.job_id);
  switch (event.kind) {
    case JobEvent::Kind::kAccepted:
      PlanToProto(event.info.plan, out->mutable_accepted()->mutable_plan());
      break;
    case JobEvent::Kind::kQueued:
      out->mutable_queued()->set_position(event.queue_position);
      break;
    case JobEvent::Kind::kProgress: {
      v1::Progress* p = out->mutable_progress();
      p->set_stage(StageToProto(event.stage));
      p->set_fraction(event.fraction);
      p->set_detail(event.detail);
      if (event.stage == Stage::kRegistration) {
        const RegistrationProgress& r = event.registration;
        v1::RegistrationProgress* rp = p->mutable_registration();
        rp->set_elastix_stage(r.stage);
        rp->set_elastix_stages(r.num_stages);
        rp->set_resolution(r.resolution);
        rp->set_resolutions(r.num_resolutions);
        rp->set_iteration(r.iteration);
        rp->set_max_iterations(r.max_iterations);
        rp->set_metric(r.metric);
        if (p->detail().empty()) p->set_detail(r.message);
      }
      break;
    }
    case JobEvent::Kind::kTile: {
      v1::Tile* t = out->mutable_tile();
      t->set_index(event.tile_index);
      t->set_x(event.rect.x);
      t->set_y(event.rect.y);
      t->set_width(event.rect.w);
      t->set_height(event.rect.h);
      t->set_channels(event.channels);
      t->set_sample_type(SampleTypeToProto(event.sample_type));
      t->set_encoding(TileEncodingToProto(event.encoding));
      SetLegacyEncodingName(event.encoding, t);
      t->set_data(event.data);
      t->set_image_width(event.grid.width());
      t->set_image_height(event.grid.height());
      t->set_tile_size(event.grid.edge());
      t->set_tile_count(event.grid.count());
      break;
    }
    case JobEvent::Kind::kCompleted: {
      v1::Completed* c = out->mutable_completed();
      const JobInfo& info = event.info;
      TimingsToProto(info.timings, c->mutable_timings());
      c->set_registration_metric(info.registration_metric);
      ImageSpecToProto(info.output, c->mutable_output());
      c->set_result_path(info.result_path);
      c->set_output_path(info.output_path);
      c->set_transform_dir(info.transform_dir);
      FilesToProto(transform_files, c->mutable_transform_files());
      c->set_tile_size(info.tiles.edge());
      c->set_tile_count(info.tiles.count());
      if (info.quality.computed || !info.quality.warning.empty()) {
        QualitySummaryToProto(info.quality, c->mutable_quality());
      }
      if (info.quality_map != nullptr) {
        QualityMapToProto(*info.quality_map, c->mutable_quality_map());
      }
      break;
    }
    case JobEvent::Kind::kFailed: {
      absl::Status why = event.info.failure;
      if (why.ok()) why = absl::UnknownError("job failed without a reason");
      FailureToProto(why, out->mutable_failed());
      break;
    }
  }
}

void ServerInfoToProto(const absl::StatusOr<HardwareSnapshot>& hardware,
                       const SchedulerStats& scheduler,
                       const SchedulerConfig& scheduler_config,
                       const JobManager::Stats& jobs,
                       const JobManager::Options& options,
                       int64_t max_message_bytes, v1::ServerInfo* out) {
  out->set_protocol("regserve.v1");
  if (hardware.ok()) {
    out->set_ram_total_bytes(hardware->ram_total_bytes);
    out->set_ram_available_bytes(hardware->ram_available_bytes);
    out->set_cpu_cores(hardware->cpu_cores);
  }
  const size_t gpu_count = scheduler.vram_budget_bytes.size();
  for (size_t i = 0; i < gpu_count; ++i) {
    v1::Gpu* g = out->add_gpus();
    const int ordinal = i < scheduler_config.gpu_ordinals.size()
                            ? scheduler_config.gpu_ordinals[i]
                            : static_cast<int>(i);
    g->set_index(ordinal);
    if (hardware.ok()) {
      for (const GpuInfo& info : hardware->gpus) {
        if (info.index != ordinal) continue;
        g->set_name(info.name);
        g->set_vram_total_bytes(info.vram_total_bytes);
        g->set_vram_free_bytes(info.vram_free_bytes);
      }
    }
    g->set_vram_budget_bytes(scheduler.vram_budget_bytes[i]);
    if (i < scheduler.vram_reserved_bytes.size()) {
      g->set_vram_reserved_bytes(scheduler.vram_reserved_bytes[i]);
    }
    if (i < scheduler.gpu_running.size()) {
      g->set_warps_running(scheduler.gpu_running[i]);
    }
  }
  out->set_ram_budget_bytes(scheduler.ram_budget_bytes);
  out->set_ram_reserved_bytes(scheduler.ram_reserved_bytes);
  out->set_cpu_running(scheduler.cpu_running);
  out->set_cpu_slots(scheduler_config.cpu_slots);
  out->set_waiting(scheduler.waiting);
  for (const std::string& s : scheduler.held_labels) out->add_held(s);
  for (const std::string& s : scheduler.waiting_labels) out->add_waiting_for(s);
  out->set_jobs_queued(jobs.queued);
  out->set_jobs_running(jobs.running);
  out->set_jobs_uploading(jobs.uploading);
  for (const std::string& id : jobs.running_ids) out->add_running_job_ids(id);
  out->set_max_queue(options.max_queue);
  out->set_default_max_registration_megapixels(
      options.default_max_registration_megapixels);
  out->set_default_device(std::string(DevicePreferenceName(options.device)));
  out->set_input_root_enabled(!options.input_root.empty());
  out->set_output_root_enabled(!options.output_root.empty());
  out->set_max_message_bytes(max_message_bytes);
}

void FleetToProto(const std::string& self,
                  const std::vector<JobManager::FleetReplica>& replicas,
                  absl::Time now, v1::ServerInfo* out) {
  out->set_replica(self);
  for (const JobManager::FleetReplica& r : replicas) {
    v1::Replica* p = out->add_replicas();
    p->set_name(r.name);
    p->set_address(r.address);
    p->set_ram_budget_bytes(r.ram_budget_bytes);
    for (uint64_t v : r.vram_budget_bytes) p->add_vram_budget_bytes(v);
    for (const std::string& g : r.gpu_names) p->add_gpu_names(g);
    for (const std::string& id : r.running_ids) p->add_running_job_ids(id);
    p->set_heartbeat_age_seconds(
        std::max(0.0, absl::ToDoubleSeconds(now - r.heartbeat)));
  }
}

}  // namespace regserve
