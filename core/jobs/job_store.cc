// Copyright regserve authors.
#include "core/jobs/job_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/common/status_macros.h"

namespace regserve {
namespace {

constexpr char kSpecFormat[] = "regserve-job-spec-1";
constexpr char kStateFormat[] = "regserve-job-state-1";

class Writer {
 public:
  void Add(absl::string_view key, absl::string_view value) {
    absl::StrAppend(&text_, key, "=", EscapeValue(value), "\n");
  }
  void AddInt(absl::string_view key, int64_t v) { Add(key, absl::StrCat(v)); }
  void AddUint(absl::string_view key, uint64_t v) { Add(key, absl::StrCat(v)); }
  void AddDouble(absl::string_view key, double v) {
    Add(key, absl::StrFormat("%.17g", v));
  }
  void AddTime(absl::string_view key, absl::Time t) {
    if (t == absl::InfinitePast()) {
      Add(key, "-inf");
    } else if (t == absl::InfiniteFuture()) {
      Add(key, "inf");
    } else {
      AddInt(key, absl::ToUnixNanos(t));
    }
  }
  std::string Finish() {
    Add("end", "1");
    return std::move(text_);
  }

 private:
  std::string text_;
};

class Reader {
 public:
  static absl::StatusOr<Reader> Parse(absl::string_view text,
                                      absl::string_view format) {
    Reader r;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (line.empty()) continue;
      size_t eq = line.find('=');
      if (eq == absl::string_view::npos) {
        return absl::DataLossError(absl::StrCat("job file line without '=': '",
                                                line.substr(0, 80), "'"));
      }
      REGSERVE_ASSIGN_OR_RETURN(std::string value,
                                UnescapeValue(line.substr(eq + 1)));
      r.values_[std::string(line.substr(0, eq))] = std::move(value);
    }
    if (r.values_.count("end") == 0) {
      return absl::DataLossError("job file is truncated (no end marker)");
    }
    auto it = r.values_.find("format");
    if (it == r.values_.end() || it->second != format) {
      return absl::DataLossError(absl::StrCat("job file is not ", format));
    }
    return r;
  }

  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  absl::StatusOr<std::string> Str(const std::string& key) const {
    auto it = values_.find(key);
    if (it == values_.end()) {
      return absl::DataLossError(absl::StrCat("job file lacks '", key, "'"));
    }
    return it->second;
  }
  absl::StatusOr<int64_t> Int(const std::string& key) const {
    REGSERVE_ASSIGN_OR_RETURN(std::string s, Str(key));
    int64_t v = 0;
    if (!absl::SimpleAtoi(s, &v)) return Bad(key, s);
    return v;
  }
  absl::StatusOr<uint64_t> Uint(const std::string& key) const {
    REGSERVE_ASSIGN_OR_RETURN(std::string s, Str(key));
    uint64_t v = 0;
    if (!absl::SimpleAtoi(s, &v)) return Bad(key, s);
    return v;
  }
  absl::StatusOr<double> Double(const std::string& key) const {
    REGSERVE_ASSIGN_OR_RETURN(std::string s, Str(key));
    double v = 0;
    if (!absl::SimpleAtod(s, &v)) return Bad(key, s);
    return v;
  }
  absl::StatusOr<absl::Time> Time(const std::string& key) const {
    REGSERVE_ASSIGN_OR_RETURN(std::string s, Str(key));
    if (s == "-inf") return absl::InfinitePast();
    if (s == "inf") return absl::InfiniteFuture();
    int64_t v = 0;
    if (!absl::SimpleAtoi(s, &v)) return Bad(key, s);
    return absl::FromUnixNanos(v);
  }

 private:
  static absl::Status Bad(const std::string& key, const std::string& value) {
    return absl::DataLossError(absl::StrCat("job file has a bad value for '",
                                            key, "': '", value, "'"));
  }
  std::map<std::string, std::string> values_;
};

template <typename E, size_t N>
absl::StatusOr<E> ParseEnum(absl::string_view key, absl::string_view name,
                            const E (&values)[N],
                            absl::string_view (*namer)(E)) {
  for (E v : values) {
    if (namer(v) == name) return v;
  }
  return absl::DataLossError(
      absl::StrCat("job file has unknown ", key, " '", name, "'"));
}

constexpr Stage kStages[] = {
    Stage::kUpload, Stage::kDecode,  Stage::kRegistration,     Stage::kWarp,
    Stage::kStream, Stage::kQuality, Stage::kInitialAlignment, Stage::kRefine};
constexpr JobState kStates[] = {JobState::kUploading, JobState::kQueued,
                                JobState::kRunning,   JobState::kCompleted,
                                JobState::kFailed,    JobState::kCancelled};
constexpr SampleType kSampleTypes[] = {SampleType::kUInt8, SampleType::kUInt16,
                                       SampleType::kFloat32};
constexpr WarpDevice kWarpDevices[] = {WarpDevice::kCpu, WarpDevice::kCuda};

void AddImageSpec(Writer* w, const std::string& prefix, const ImageSpec& s) {
  w->AddInt(prefix + ".width", s.width);
  w->AddInt(prefix + ".height", s.height);
  w->AddInt(prefix + ".channels", s.channels);
  w->Add(prefix + ".type", SampleTypeName(s.type));
  w->AddUint(prefix + ".decode_scratch_bytes", s.decode_scratch_bytes);
  w->AddInt(prefix + ".stream_rows", s.stream_rows);
  w->AddUint(prefix + ".stream_scratch_bytes", s.stream_scratch_bytes);
  w->AddInt(prefix + ".region_chunk_width", s.region_chunk_width);
  w->AddInt(prefix + ".region_chunk_height", s.region_chunk_height);
}

absl::Status ReadImageSpec(const Reader& r, const std::string& prefix,
                           ImageSpec* s) {
  REGSERVE_ASSIGN_OR_RETURN(s->width, r.Int(prefix + ".width"));
  REGSERVE_ASSIGN_OR_RETURN(s->height, r.Int(prefix + ".height"));
  REGSERVE_ASSIGN_OR_RETURN(int64_t channels, r.Int(prefix + ".channels"));
  s->channels = static_cast<int>(channels);
  REGSERVE_ASSIGN_OR_RETURN(std::string type, r.Str(prefix + ".type"));
  REGSERVE_ASSIGN_OR_RETURN(s->type, ParseEnum(prefix + ".type", type,
                                               kSampleTypes, &SampleTypeName));
  // Absent in state files written before it existed: unknown (0).
  s->decode_scratch_bytes = 0;
  if (r.Has(prefix + ".decode_scratch_bytes")) {
    REGSERVE_ASSIGN_OR_RETURN(s->decode_scratch_bytes,
                              r.Uint(prefix + ".decode_scratch_bytes"));
  }
  s->stream_rows = 0;
  s->stream_scratch_bytes = 0;
  if (r.Has(prefix + ".stream_rows")) {
    REGSERVE_ASSIGN_OR_RETURN(s->stream_rows, r.Int(prefix + ".stream_rows"));
    REGSERVE_ASSIGN_OR_RETURN(s->stream_scratch_bytes,
                              r.Uint(prefix + ".stream_scratch_bytes"));
  }
  // Absent before region reads existed: read in order (a spill).
  s->region_chunk_width = 0;
  s->region_chunk_height = 0;
  if (r.Has(prefix + ".region_chunk_width")) {
    REGSERVE_ASSIGN_OR_RETURN(s->region_chunk_width,
                              r.Int(prefix + ".region_chunk_width"));
    REGSERVE_ASSIGN_OR_RETURN(s->region_chunk_height,
                              r.Int(prefix + ".region_chunk_height"));
  }
  return absl::OkStatus();
}

void AddSource(Writer* w, const std::string& prefix, const ImageSource& s) {
  w->Add(prefix + ".path", s.path);
  w->AddUint(prefix + ".upload_bytes", s.upload_bytes);
  w->Add(prefix + ".upload_name", s.upload_name);
}

absl::Status ReadSource(const Reader& r, const std::string& prefix,
                        ImageSource* s) {
  REGSERVE_ASSIGN_OR_RETURN(s->path, r.Str(prefix + ".path"));
  REGSERVE_ASSIGN_OR_RETURN(s->upload_bytes, r.Uint(prefix + ".upload_bytes"));
  REGSERVE_ASSIGN_OR_RETURN(s->upload_name, r.Str(prefix + ".upload_name"));
  return absl::OkStatus();
}

void AddStageMemory(Writer* w, const std::string& prefix,
                    const StageMemory& m) {
  w->AddUint(prefix + ".ram", m.ram_bytes);
  w->AddUint(prefix + ".vram", m.vram_bytes);
}

absl::Status ReadStageMemory(const Reader& r, const std::string& prefix,
                             StageMemory* m) {
  REGSERVE_ASSIGN_OR_RETURN(m->ram_bytes, r.Uint(prefix + ".ram"));
  REGSERVE_ASSIGN_OR_RETURN(m->vram_bytes, r.Uint(prefix + ".vram"));
  return absl::OkStatus();
}

void AddList(Writer* w, const std::string& prefix,
             const std::vector<std::string>& items) {
  w->AddInt(prefix + ".count", static_cast<int64_t>(items.size()));
  for (size_t i = 0; i < items.size(); ++i) {
    w->Add(absl::StrCat(prefix, ".", i), items[i]);
  }
}

absl::Status ReadList(const Reader& r, const std::string& prefix,
                      std::vector<std::string>* items) {
  REGSERVE_ASSIGN_OR_RETURN(int64_t count, r.Int(prefix + ".count"));
  if (count < 0 || count > 100000) {
    return absl::DataLossError(
        absl::StrCat("job file: bad ", prefix, ".count"));
  }
  items->clear();
  for (int64_t i = 0; i < count; ++i) {
    REGSERVE_ASSIGN_OR_RETURN(std::string item,
                              r.Str(absl::StrCat(prefix, ".", i)));
    items->push_back(std::move(item));
  }
  return absl::OkStatus();
}

}  // namespace

std::string EscapeValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        out += c;
    }
  }
  return out;
}

absl::StatusOr<std::string> UnescapeValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    char c = value[i];
    if (c == '\r') return absl::DataLossError("job file value has a raw CR");
    if (c != '\\') {
      out += c;
      continue;
    }
    if (++i == value.size()) {
      return absl::DataLossError("job file value ends inside an escape");
    }
    switch (value[i]) {
      case '\\':
        out += '\\';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      default:
        return absl::DataLossError(absl::StrCat(
            "job file value has a bad escape '\\", value.substr(i, 1), "'"));
    }
  }
  return out;
}

std::string EncodeJobSpec(const JobRecord& record) {
  const JobInfo& info = record.info;
  const JobSpec& spec = info.spec;
  Writer w;
  w.Add("format", kSpecFormat);
  w.Add("id", info.id);
  w.Add("principal", info.principal);
  w.AddUint("sequence", record.sequence);
  w.AddTime("created", info.created);
  AddSource(&w, "fixed", spec.fixed);
  AddSource(&w, "moving", spec.moving);
  w.Add("options.transform", TransformKindName(spec.options.transform));
  w.AddDouble("options.max_registration_megapixels",
              spec.options.max_registration_megapixels);
  w.Add("options.device", DevicePreferenceName(spec.options.device));
  w.Add("options.interpolation", InterpolationName(spec.options.interpolation));
  w.AddInt("options.output_full_resolution",
           spec.options.output_full_resolution ? 1 : 0);
  w.Add("options.compression", CompressionName(spec.options.compression));
  w.AddInt("options.jpeg_quality", spec.options.jpeg_quality);
  w.Add("options.refine", RefineModeName(spec.options.refine));
  AddList(&w, "custom_parameters", spec.custom_parameters);
  w.AddInt("priority", spec.priority);
  w.AddDouble("fill_value", spec.fill_value);
  w.Add("client_label", spec.client_label);
  w.Add("output_path", spec.output_path);
  w.AddInt("overwrite_output", spec.overwrite_output ? 1 : 0);
  return w.Finish();
}

absl::Status DecodeJobSpec(absl::string_view text, JobRecord* record) {
  REGSERVE_ASSIGN_OR_RETURN(Reader r, Reader::Parse(text, kSpecFormat));
  JobInfo& info = record->info;
  JobSpec& spec = info.spec;
  REGSERVE_ASSIGN_OR_RETURN(info.id, r.Str("id"));
  if (!IsValidJobId(info.id)) return absl::DataLossError("job file: bad id");
  REGSERVE_ASSIGN_OR_RETURN(info.principal, r.Str("principal"));
  REGSERVE_ASSIGN_OR_RETURN(record->sequence, r.Uint("sequence"));
  REGSERVE_ASSIGN_OR_RETURN(info.created, r.Time("created"));
  REGSERVE_RETURN_IF_ERROR(ReadSource(r, "fixed", &spec.fixed));
  REGSERVE_RETURN_IF_ERROR(ReadSource(r, "moving", &spec.moving));
  REGSERVE_ASSIGN_OR_RETURN(std::string s, r.Str("options.transform"));
  REGSERVE_ASSIGN_OR_RETURN(spec.options.transform, ParseTransformKind(s));
  REGSERVE_ASSIGN_OR_RETURN(spec.options.max_registration_megapixels,
                            r.Double("options.max_registration_megapixels"));
  REGSERVE_ASSIGN_OR_RETURN(s, r.Str("options.device"));
  // Specs are stored resolved; "unspecified" only in records built by hand.
  if (s == DevicePreferenceName(DevicePreference::kUnspecified)) {
    spec.options.device = DevicePreference::kUnspecified;
  } else {
    REGSERVE_ASSIGN_OR_RETURN(spec.options.device, ParseDevicePreference(s));
  }
  REGSERVE_ASSIGN_OR_RETURN(s, r.Str("options.interpolation"));
  REGSERVE_ASSIGN_OR_RETURN(spec.options.interpolation, ParseInterpolation(s));
  REGSERVE_ASSIGN_OR_RETURN(int64_t full,
                            r.Int("options.output_full_resolution"));
  spec.options.output_full_resolution = full != 0;
  // Specs stored before the option existed: deflate, as results were then.
  if (r.Has("options.compression")) {
    REGSERVE_ASSIGN_OR_RETURN(s, r.Str("options.compression"));
    REGSERVE_ASSIGN_OR_RETURN(spec.options.compression, ParseCompression(s));
    REGSERVE_ASSIGN_OR_RETURN(int64_t quality, r.Int("options.jpeg_quality"));
    spec.options.jpeg_quality = static_cast<int>(quality);
  }
  // Specs stored before the option existed: auto, the default.
  if (r.Has("options.refine")) {
    REGSERVE_ASSIGN_OR_RETURN(s, r.Str("options.refine"));
    REGSERVE_ASSIGN_OR_RETURN(spec.options.refine, ParseRefineMode(s));
  }
  REGSERVE_RETURN_IF_ERROR(
      ReadList(r, "custom_parameters", &spec.custom_parameters));
  REGSERVE_ASSIGN_OR_RETURN(int64_t priority, r.Int("priority"));
  spec.priority = static_cast<int>(priority);
  REGSERVE_ASSIGN_OR_RETURN(spec.fill_value, r.Double("fill_value"));
  REGSERVE_ASSIGN_OR_RETURN(spec.client_label, r.Str("client_label"));
  // Specs stored before the option existed: no output path.
  if (r.Has("output_path")) {
    REGSERVE_ASSIGN_OR_RETURN(spec.output_path, r.Str("output_path"));
    REGSERVE_ASSIGN_OR_RETURN(int64_t overwrite, r.Int("overwrite_output"));
    spec.overwrite_output = overwrite != 0;
  }
  return absl::OkStatus();
}

namespace {
// Plan fields added after the state format was first written: older files
// lack them, and recovery re-derives the stream tiles.
absl::Status ReadPlanExtras(const Reader& r, Plan* p) {
  if (!r.Has("plan.stream_tile_size")) return absl::OkStatus();
  REGSERVE_ASSIGN_OR_RETURN(p->stream_tile_size,
                            r.Int("plan.stream_tile_size"));
  REGSERVE_ASSIGN_OR_RETURN(int64_t writer,
                            r.Int("plan.result_writer_ram_bytes"));
  p->result_writer_ram_bytes = static_cast<uint64_t>(writer);
  REGSERVE_RETURN_IF_ERROR(
      ReadStageMemory(r, "plan.warp_cpu_fallback", &p->warp_cpu_fallback));
  REGSERVE_ASSIGN_OR_RETURN(p->warp_cpu_tile_size,
                            r.Int("plan.warp_cpu_tile_size"));
  REGSERVE_ASSIGN_OR_RETURN(writer, r.Int("plan.result_writer_cpu_ram_bytes"));
  p->result_writer_cpu_ram_bytes = static_cast<uint64_t>(writer);
  // Plans stored before concurrent decoding decoded one image at a time.
  if (r.Has("plan.decode_concurrent")) {
    REGSERVE_ASSIGN_OR_RETURN(int64_t both, r.Int("plan.decode_concurrent"));
    p->decode_concurrent = both != 0;
  }
  // Plans stored before region reads existed held the moving image.
  if (r.Has("plan.moving_streamed")) {
    REGSERVE_ASSIGN_OR_RETURN(int64_t streamed, r.Int("plan.moving_streamed"));
    p->moving_streamed = streamed != 0;
    REGSERVE_ASSIGN_OR_RETURN(p->moving_cache_bytes,
                              r.Uint("plan.moving_cache_bytes"));
    REGSERVE_ASSIGN_OR_RETURN(p->spill_bytes, r.Uint("plan.spill_bytes"));
  }
  if (r.Has("plan.result_writer_threads")) {
    REGSERVE_ASSIGN_OR_RETURN(int64_t threads,
                              r.Int("plan.result_writer_threads"));
    p->result_writer_threads = static_cast<int>(threads);
  }
  return absl::OkStatus();
}

// The initial alignment's memory; files written before the stage existed
// lack it, and the stage then reserves as much as the registration did.
absl::Status ReadInitialAlignmentPlan(const Reader& r, Plan* p) {
  if (!r.Has("plan.initial_alignment.ram")) {
    p->initial_alignment = p->registration;
    return absl::OkStatus();
  }
  return ReadStageMemory(r, "plan.initial_alignment", &p->initial_alignment);
}

// The refinement's plan (absent in files written before it existed: no
// refinement, which a recovered job then skips).
void AddRefinePlan(Writer* w, const Plan& p) {
  w->AddInt("plan.refine_enabled", p.refine_enabled ? 1 : 0);
  w->Add("plan.refine_device", WarpDeviceName(p.refine_device));
  w->AddInt("plan.refine_max_pixels", p.refine_max_pixels);
  w->AddInt("plan.refine_width", p.refine_width);
  w->AddInt("plan.refine_height", p.refine_height);
  w->AddInt("plan.refine_levels", p.refine_levels);
  w->AddInt("plan.refine_iterations", p.refine_iterations);
  AddStageMemory(w, "plan.refine", p.refine);
}

absl::Status ReadRefinePlan(const Reader& r, Plan* p) {
  if (!r.Has("plan.refine_enabled")) {
    p->refine_enabled = false;
    return absl::OkStatus();
  }
  REGSERVE_ASSIGN_OR_RETURN(const int64_t enabled,
                            r.Int("plan.refine_enabled"));
  p->refine_enabled = enabled != 0;
  REGSERVE_ASSIGN_OR_RETURN(std::string s, r.Str("plan.refine_device"));
  REGSERVE_ASSIGN_OR_RETURN(
      p->refine_device,
      ParseEnum("plan.refine_device", s, kWarpDevices, &WarpDeviceName));
  REGSERVE_ASSIGN_OR_RETURN(p->refine_max_pixels,
                            r.Int("plan.refine_max_pixels"));
  REGSERVE_ASSIGN_OR_RETURN(p->refine_width, r.Int("plan.refine_width"));
  REGSERVE_ASSIGN_OR_RETURN(p->refine_height, r.Int("plan.refine_height"));
  REGSERVE_ASSIGN_OR_RETURN(const int64_t levels, r.Int("plan.refine_levels"));
  REGSERVE_ASSIGN_OR_RETURN(const int64_t iterations,
                            r.Int("plan.refine_iterations"));
  if (levels < 0 || levels > 16 || iterations < 0 || iterations > 100000) {
    return absl::DataLossError("job file: bad plan.refine_levels/iterations");
  }
  p->refine_levels = static_cast<int>(levels);
  p->refine_iterations = static_cast<int>(iterations);
  return ReadStageMemory(r, "plan.refine", &p->refine);
}

// The shift correction's plan (absent in files written before it existed:
// none, as such jobs ran).
void AddShiftCorrectionPlan(Writer* w, const Plan& p) {
  w->AddInt("plan.shift_correction_passes", p.shift_correction_passes);
  w->AddInt("plan.shift_correction_after_refine",
            p.shift_correction_after_refine ? 1 : 0);
  AddStageMemory(w, "plan.shift_correction", p.shift_correction);
}

absl::Status ReadShiftCorrectionPlan(const Reader& r, Plan* p) {
  if (!r.Has("plan.shift_correction_passes")) return absl::OkStatus();
  REGSERVE_ASSIGN_OR_RETURN(const int64_t passes,
                            r.Int("plan.shift_correction_passes"));
  if (passes < 0 || passes > 100) {
    return absl::DataLossError("job file: bad plan.shift_correction_passes");
  }
  p->shift_correction_passes = static_cast<int>(passes);
  // Absent before corrections after a GPU refinement existed: before.
  if (r.Has("plan.shift_correction_after_refine")) {
    REGSERVE_ASSIGN_OR_RETURN(const int64_t after,
                              r.Int("plan.shift_correction_after_refine"));
    p->shift_correction_after_refine = after != 0;
  }
  return ReadStageMemory(r, "plan.shift_correction", &p->shift_correction);
}

// elastix's own copy and schedule (absent in files written before they
// existed: the registration copy and the preset, as such jobs ran).
void AddElastixPlan(Writer* w, const Plan& p) {
  w->AddInt("plan.elastix_fixed_width", p.elastix_fixed_width);
  w->AddInt("plan.elastix_fixed_height", p.elastix_fixed_height);
  w->AddInt("plan.elastix_moving_width", p.elastix_moving_width);
  w->AddInt("plan.elastix_moving_height", p.elastix_moving_height);
  w->AddDouble("plan.elastix_iteration_scale", p.elastix_iteration_scale);
  w->AddInt("plan.elastix_linear_stage", p.elastix_linear_stage ? 1 : 0);
}

absl::Status ReadElastixPlan(const Reader& r, Plan* p) {
  if (!r.Has("plan.elastix_fixed_width")) return absl::OkStatus();
  REGSERVE_ASSIGN_OR_RETURN(p->elastix_fixed_width,
                            r.Int("plan.elastix_fixed_width"));
  REGSERVE_ASSIGN_OR_RETURN(p->elastix_fixed_height,
                            r.Int("plan.elastix_fixed_height"));
  REGSERVE_ASSIGN_OR_RETURN(p->elastix_moving_width,
                            r.Int("plan.elastix_moving_width"));
  REGSERVE_ASSIGN_OR_RETURN(p->elastix_moving_height,
                            r.Int("plan.elastix_moving_height"));
  REGSERVE_ASSIGN_OR_RETURN(p->elastix_iteration_scale,
                            r.Double("plan.elastix_iteration_scale"));
  REGSERVE_ASSIGN_OR_RETURN(const int64_t linear,
                            r.Int("plan.elastix_linear_stage"));
  p->elastix_linear_stage = linear != 0;
  const bool sizes_ok =
      p->elastix_fixed_width >= 0 && p->elastix_fixed_height >= 0 &&
      p->elastix_moving_width >= 0 && p->elastix_moving_height >= 0 &&
      (p->elastix_fixed_width > 0) == (p->elastix_moving_width > 0);
  if (!sizes_ok || !(p->elastix_iteration_scale > 0) ||
      !(p->elastix_iteration_scale <= 100)) {
    return absl::DataLossError("job file: bad plan.elastix_* values");
  }
  return absl::OkStatus();
}

constexpr QualityVerdict kVerdicts[] = {
    QualityVerdict::kGood, QualityVerdict::kPoor, QualityVerdict::kUnchecked};

// The quality stage's plan and summary (absent in files written before it
// existed: the stage then reserves as much as the registration did).
void AddQuality(Writer* w, const Plan& p, const QualitySummary& q) {
  AddStageMemory(w, "plan.quality", p.quality);
  w->AddInt("quality.computed", q.computed ? 1 : 0);
  w->Add("quality.verdict", QualityVerdictName(q.verdict));
  w->AddDouble("quality.mean_px", q.mean_px);
  w->AddDouble("quality.p95_px", q.p95_px);
  w->AddDouble("quality.max_px", q.max_px);
  w->AddDouble("quality.checked_fraction", q.checked_fraction);
  w->AddDouble("quality.unmatched_fraction", q.unmatched_fraction);
  w->AddInt("quality.measured", q.measured);
  w->AddInt("quality.unmatched", q.unmatched);
  w->AddInt("quality.unknown", q.unknown);
  w->Add("quality.warning", q.warning);
}

absl::Status ReadQuality(const Reader& r, Plan* p, QualitySummary* q) {
  *q = QualitySummary();
  if (!r.Has("plan.quality.ram")) {
    p->quality = p->registration;
    return absl::OkStatus();
  }
  REGSERVE_RETURN_IF_ERROR(ReadStageMemory(r, "plan.quality", &p->quality));
  REGSERVE_ASSIGN_OR_RETURN(const int64_t computed, r.Int("quality.computed"));
  q->computed = computed != 0;
  REGSERVE_ASSIGN_OR_RETURN(std::string s, r.Str("quality.verdict"));
  REGSERVE_ASSIGN_OR_RETURN(
      q->verdict,
      ParseEnum("quality.verdict", s, kVerdicts, &QualityVerdictName));
  REGSERVE_ASSIGN_OR_RETURN(q->mean_px, r.Double("quality.mean_px"));
  REGSERVE_ASSIGN_OR_RETURN(q->p95_px, r.Double("quality.p95_px"));
  REGSERVE_ASSIGN_OR_RETURN(q->max_px, r.Double("quality.max_px"));
  REGSERVE_ASSIGN_OR_RETURN(q->checked_fraction,
                            r.Double("quality.checked_fraction"));
  REGSERVE_ASSIGN_OR_RETURN(q->unmatched_fraction,
                            r.Double("quality.unmatched_fraction"));
  int64_t n = 0;
  REGSERVE_ASSIGN_OR_RETURN(n, r.Int("quality.measured"));
  q->measured = static_cast<int>(n);
  REGSERVE_ASSIGN_OR_RETURN(n, r.Int("quality.unmatched"));
  q->unmatched = static_cast<int>(n);
  REGSERVE_ASSIGN_OR_RETURN(n, r.Int("quality.unknown"));
  q->unknown = static_cast<int>(n);
  REGSERVE_ASSIGN_OR_RETURN(q->warning, r.Str("quality.warning"));
  return absl::OkStatus();
}
}  // namespace

std::string EncodeJobState(const JobRecord& record) {
  const JobInfo& info = record.info;
  Writer w;
  w.Add("format", kStateFormat);
  w.Add("state", JobStateName(info.state));
  w.Add("stage", StageName(info.stage));
  // Where the stage is: what a fleet replica that does not run the job
  // shows (job_fleet.cc); recovery resets it.
  w.AddDouble("stage_fraction", info.stage_fraction);
  w.Add("stage_detail", info.stage_detail);
  w.AddInt("attempts", info.attempts);
  w.AddInt("checkpointed_runs", record.checkpointed_runs);
  w.AddInt("failure.code", static_cast<int>(info.failure.code()));
  w.Add("failure.message", info.failure.message());
  w.Add("fixed_input", record.fixed_input);
  w.Add("moving_input", record.moving_input);
  w.AddInt("have_input_specs", record.have_input_specs ? 1 : 0);
  AddImageSpec(&w, "fixed_spec", record.fixed_spec);
  AddImageSpec(&w, "moving_spec", record.moving_spec);
  w.AddInt("has_plan", info.has_plan ? 1 : 0);
  const Plan& p = info.plan;
  w.AddInt("plan.registration_fixed_width", p.registration_fixed_width);
  w.AddInt("plan.registration_fixed_height", p.registration_fixed_height);
  w.AddInt("plan.registration_moving_width", p.registration_moving_width);
  w.AddInt("plan.registration_moving_height", p.registration_moving_height);
  w.AddDouble("plan.registration_factor", p.registration_factor);
  w.AddInt("plan.output_width", p.output_width);
  w.AddInt("plan.output_height", p.output_height);
  w.Add("plan.warp_device", WarpDeviceName(p.warp_device));
  w.AddInt("plan.tile_size", p.tile_size);
  AddStageMemory(&w, "plan.decode", p.decode);
  AddStageMemory(&w, "plan.registration", p.registration);
  AddStageMemory(&w, "plan.warp", p.warp);
  w.AddInt("plan.stream_tile_size", p.stream_tile_size);
  w.AddInt("plan.result_writer_ram_bytes",
           static_cast<int64_t>(p.result_writer_ram_bytes));
  AddStageMemory(&w, "plan.warp_cpu_fallback", p.warp_cpu_fallback);
  w.AddInt("plan.warp_cpu_tile_size", p.warp_cpu_tile_size);
  w.AddInt("plan.result_writer_cpu_ram_bytes",
           static_cast<int64_t>(p.result_writer_cpu_ram_bytes));
  w.AddInt("plan.result_writer_threads", p.result_writer_threads);
  w.AddInt("plan.moving_streamed", p.moving_streamed ? 1 : 0);
  w.AddInt("plan.decode_concurrent", p.decode_concurrent ? 1 : 0);
  w.AddUint("plan.moving_cache_bytes", p.moving_cache_bytes);
  w.AddUint("plan.spill_bytes", p.spill_bytes);
  AddStageMemory(&w, "plan.initial_alignment", p.initial_alignment);
  AddRefinePlan(&w, p);
  AddShiftCorrectionPlan(&w, p);
  AddElastixPlan(&w, p);
  AddList(&w, "plan.reasons", p.reasons);
  w.AddInt("timings.count", static_cast<int64_t>(info.timings.size()));
  for (size_t i = 0; i < info.timings.size(); ++i) {
    w.Add(absl::StrCat("timings.", i, ".stage"),
          StageName(info.timings[i].stage));
    w.AddDouble(absl::StrCat("timings.", i, ".seconds"),
                info.timings[i].seconds);
  }
  w.AddDouble("registration_metric", info.registration_metric);
  AddQuality(&w, p, info.quality);
  AddImageSpec(&w, "output", info.output);
  w.Add("result_path", info.result_path);
  w.Add("output_path", info.output_path);
  w.Add("transform_dir", info.transform_dir);
  AddList(&w, "transform_files", info.transform_files);
  w.AddInt("tile_size", info.tiles.edge());
  w.AddInt("tile_count", info.tiles.count());
  w.AddTime("finished", info.finished);
  return w.Finish();
}

absl::Status DecodeJobState(absl::string_view text, JobRecord* record) {
  REGSERVE_ASSIGN_OR_RETURN(Reader r, Reader::Parse(text, kStateFormat));
  JobInfo& info = record->info;
  REGSERVE_ASSIGN_OR_RETURN(std::string s, r.Str("state"));
  REGSERVE_ASSIGN_OR_RETURN(info.state,
                            ParseEnum("state", s, kStates, &JobStateName));
  REGSERVE_ASSIGN_OR_RETURN(s, r.Str("stage"));
  REGSERVE_ASSIGN_OR_RETURN(info.stage,
                            ParseEnum("stage", s, kStages, &StageName));
  if (r.Has("stage_fraction")) {  // absent in state files before it existed
    REGSERVE_ASSIGN_OR_RETURN(info.stage_fraction, r.Double("stage_fraction"));
    REGSERVE_ASSIGN_OR_RETURN(info.stage_detail, r.Str("stage_detail"));
  }
  REGSERVE_ASSIGN_OR_RETURN(int64_t attempts, r.Int("attempts"));
  info.attempts = static_cast<int>(attempts);
  record->checkpointed_runs = 0;  // absent in state files before it existed
  if (r.Has("checkpointed_runs")) {
    REGSERVE_ASSIGN_OR_RETURN(int64_t runs, r.Int("checkpointed_runs"));
    record->checkpointed_runs = static_cast<int>(runs);
  }
  REGSERVE_ASSIGN_OR_RETURN(int64_t code, r.Int("failure.code"));
  REGSERVE_ASSIGN_OR_RETURN(std::string message, r.Str("failure.message"));
  if (code < 0 || code > 16)
    return absl::DataLossError("job file: bad failure.code");
  info.failure = absl::Status(static_cast<absl::StatusCode>(code), message);
  REGSERVE_ASSIGN_OR_RETURN(record->fixed_input, r.Str("fixed_input"));
  REGSERVE_ASSIGN_OR_RETURN(record->moving_input, r.Str("moving_input"));
  REGSERVE_ASSIGN_OR_RETURN(int64_t have, r.Int("have_input_specs"));
  record->have_input_specs = have != 0;
  REGSERVE_RETURN_IF_ERROR(ReadImageSpec(r, "fixed_spec", &record->fixed_spec));
  REGSERVE_RETURN_IF_ERROR(
      ReadImageSpec(r, "moving_spec", &record->moving_spec));
  REGSERVE_ASSIGN_OR_RETURN(int64_t has_plan, r.Int("has_plan"));
  info.has_plan = has_plan != 0;
  Plan& p = info.plan;
  REGSERVE_ASSIGN_OR_RETURN(p.registration_fixed_width,
                            r.Int("plan.registration_fixed_width"));
  REGSERVE_ASSIGN_OR_RETURN(p.registration_fixed_height,
                            r.Int("plan.registration_fixed_height"));
  REGSERVE_ASSIGN_OR_RETURN(p.registration_moving_width,
                            r.Int("plan.registration_moving_width"));
  REGSERVE_ASSIGN_OR_RETURN(p.registration_moving_height,
                            r.Int("plan.registration_moving_height"));
  REGSERVE_ASSIGN_OR_RETURN(p.registration_factor,
                            r.Double("plan.registration_factor"));
  REGSERVE_ASSIGN_OR_RETURN(p.output_width, r.Int("plan.output_width"));
  REGSERVE_ASSIGN_OR_RETURN(p.output_height, r.Int("plan.output_height"));
  REGSERVE_ASSIGN_OR_RETURN(s, r.Str("plan.warp_device"));
  REGSERVE_ASSIGN_OR_RETURN(
      p.warp_device,
      ParseEnum("plan.warp_device", s, kWarpDevices, &WarpDeviceName));
  REGSERVE_ASSIGN_OR_RETURN(p.tile_size, r.Int("plan.tile_size"));
  REGSERVE_RETURN_IF_ERROR(ReadStageMemory(r, "plan.decode", &p.decode));
  REGSERVE_RETURN_IF_ERROR(
      ReadStageMemory(r, "plan.registration", &p.registration));
  REGSERVE_RETURN_IF_ERROR(ReadStageMemory(r, "plan.warp", &p.warp));
  REGSERVE_RETURN_IF_ERROR(ReadPlanExtras(r, &p));
  REGSERVE_RETURN_IF_ERROR(ReadInitialAlignmentPlan(r, &p));
  REGSERVE_RETURN_IF_ERROR(ReadRefinePlan(r, &p));
  REGSERVE_RETURN_IF_ERROR(ReadShiftCorrectionPlan(r, &p));
  REGSERVE_RETURN_IF_ERROR(ReadElastixPlan(r, &p));
  REGSERVE_RETURN_IF_ERROR(ReadList(r, "plan.reasons", &p.reasons));
  REGSERVE_ASSIGN_OR_RETURN(int64_t timings, r.Int("timings.count"));
  if (timings < 0 || timings > 64)
    return absl::DataLossError("job file: bad timings");
  info.timings.clear();
  for (int64_t i = 0; i < timings; ++i) {
    StageTiming t;
    REGSERVE_ASSIGN_OR_RETURN(s, r.Str(absl::StrCat("timings.", i, ".stage")));
    REGSERVE_ASSIGN_OR_RETURN(t.stage,
                              ParseEnum("stage", s, kStages, &StageName));
    REGSERVE_ASSIGN_OR_RETURN(
        t.seconds, r.Double(absl::StrCat("timings.", i, ".seconds")));
    info.timings.push_back(t);
  }
  REGSERVE_ASSIGN_OR_RETURN(info.registration_metric,
                            r.Double("registration_metric"));
  REGSERVE_RETURN_IF_ERROR(ReadQuality(r, &p, &info.quality));
  REGSERVE_RETURN_IF_ERROR(ReadImageSpec(r, "output", &info.output));
  REGSERVE_ASSIGN_OR_RETURN(info.result_path, r.Str("result_path"));
  if (r.Has("output_path")) {  // states written before it existed: none
    REGSERVE_ASSIGN_OR_RETURN(info.output_path, r.Str("output_path"));
  }
  REGSERVE_ASSIGN_OR_RETURN(info.transform_dir, r.Str("transform_dir"));
  REGSERVE_RETURN_IF_ERROR(
      ReadList(r, "transform_files", &info.transform_files));
  // The count is derived from the grid; the file keeps it for readers.
  REGSERVE_ASSIGN_OR_RETURN(const int64_t tile_edge, r.Int("tile_size"));
  info.tiles = info.has_plan ? TileGrid(info.plan.output_width,
                                        info.plan.output_height, tile_edge)
                             : TileGrid(0, 0, tile_edge);
  REGSERVE_ASSIGN_OR_RETURN(info.finished, r.Time("finished"));
  return absl::OkStatus();
}

absl::StatusOr<std::string> NewJobId() {
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot open /dev/urandom: ", std::strerror(errno)));
  }
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = read(fd, bytes + got, sizeof(bytes) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      close(fd);
      return absl::InternalError(
          absl::StrCat("cannot read /dev/urandom: ", std::strerror(err)));
    }
    got += static_cast<size_t>(n);
  }
  close(fd);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id;
  for (unsigned char b : bytes) {
    id += kHex[b >> 4];
    id += kHex[b & 15];
  }
  return id;
}

bool IsValidJobId(absl::string_view id) {
  if (id.size() != 32) return false;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace regserve
