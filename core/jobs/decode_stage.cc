// Copyright regserve authors.
//
// Decode: the fixed image streamed in strips straight into its grayscale
// registration copy (core/image/streamed_gray.h: never held whole, the same
// bits as decoding it whole); then the moving image read whole (kept for the
// warp, in pinned memory when the warp runs on CUDA) and its copy made, or,
// when the plan reads it by region, streamed into its copy as well (and into
// the job's spill file in the same pass when the file reads only in order)
// and opened as the warp's region source. Both at once where the plan says
// so (Plan::decode_concurrent). Memory: Plan::decode.
#include <algorithm>
#include <future>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/image/file_region_source.h"
#include "core/image/streamed_gray.h"
#include "core/jobs/stage_runner.h"

namespace regserve {
namespace {

class DecodeStage final : public PipelineStage {
 public:
  explicit DecodeStage(const StageServices* services) : s_(*services) {}
  std::optional<Stage> stage() const override { return Stage::kDecode; }

  absl::Status Run(JobRun* run, StageHost* host) override {
    const Plan& plan = run->rec.info.plan;
    REGSERVE_ASSIGN_OR_RETURN(
        Reservation r,
        host->Acquire(Lane::kCpu, plan.decode.ram_bytes, 0, "decode"));
    host->Started(Stage::kDecode);
    const absl::Time start = absl::Now();
    if (plan.decode_concurrent) {
      host->Progress(Stage::kDecode, 0.0, "reading both images");
      REGSERVE_RETURN_IF_ERROR(DecodeBoth(r.threads(), run));
    } else {
      for (ImageRole role : {ImageRole::kFixed, ImageRole::kMoving}) {
        host->Progress(Stage::kDecode, role == ImageRole::kFixed ? 0.0 : 0.5,
                       absl::StrCat("reading the ", RoleName(role), " image"));
        REGSERVE_RETURN_IF_ERROR(
            role == ImageRole::kFixed ? StreamFixed(r.threads(), run)
            : plan.moving_streamed    ? StreamMoving(r.threads(), run)
                                      : DecodeOne(role, r.threads(), run));
      }
    }
    host->Progress(Stage::kDecode, 1.0, "decoded");
    host->Finished(Stage::kDecode, start);
    return absl::OkStatus();
  }

 private:
  static absl::Status SameSpec(const std::string& name, const ImageSpec& got,
                               const ImageSpec& want) {
    if (got.width != want.width || got.height != want.height ||
        got.channels != want.channels || got.type != want.type) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, " changed since submission (now ",
                       got.DebugString(), ", was ", want.DebugString(), ")"));
    }
    return absl::OkStatus();
  }

  // Plan::decode_concurrent: the fixed image streamed on a thread of its
  // own while this one reads the moving image, the threads shared. They
  // write disjoint parts of `run`; the first error (the fixed image's when
  // both fail) is the stage's.
  absl::Status DecodeBoth(int threads, JobRun* run) {
    const int fixed_threads = std::max(1, threads / 2);
    std::future<absl::Status> fixed = std::async(
        std::launch::async,
        [this, fixed_threads, run] { return StreamFixed(fixed_threads, run); });
    const absl::Status moving = DecodeOne(
        ImageRole::kMoving, std::max(1, threads - fixed_threads), run);
    REGSERVE_RETURN_IF_ERROR(fixed.get());
    return moving;
  }

  // The fixed image goes straight into its copy, checked against the
  // submitted header before any strip is decoded, the job's cancellation
  // checked between strips.
  absl::Status StreamFixed(int threads, JobRun* run) {
    const JobRecord& rec = run->rec;
    const Plan& plan = rec.info.plan;
    REGSERVE_ASSIGN_OR_RETURN(std::string path,
                              InputPathFor(s_, rec, ImageRole::kFixed));
    const std::string name = "the fixed image";
    StreamedGrayOptions o;
    o.threads = threads;
    o.max_pixels = s_.max_pixels;
    o.max_bytes = plan.decode.ram_bytes;
    o.metadata = &run->fixed_metadata;
    o.check_spec = [&](const ImageSpec& got) {
      return SameSpec(name, got, rec.fixed_spec);
    };
    o.check_cancel = [run] { return run->cancel->Check(); };
    absl::StatusOr<Image> gray = ReadGrayscaleCopyFile(
        path, plan.registration_fixed_width, plan.registration_fixed_height, o);
    if (!gray.ok()) {
      const absl::Status& s = gray.status();
      if (s.code() == absl::StatusCode::kFailedPrecondition ||
          s.code() == absl::StatusCode::kCancelled) {
        return s;  // already in the job's words
      }
      const absl::Status clean = WithoutPath(s, path, name);
      return absl::Status(
          clean.code(), absl::StrCat("decoding ", name, ": ", clean.message()));
    }
    run->fixed_gray = *std::move(gray);
    return absl::OkStatus();
  }

  // The moving image read by region: its copy streamed like the fixed one's,
  // its spill written in the same pass when the file reads only in order
  // (removed again if the pass fails), then its region source opened.
  absl::Status StreamMoving(int threads, JobRun* run) {
    const JobRecord& rec = run->rec;
    const Plan& plan = rec.info.plan;
    REGSERVE_ASSIGN_OR_RETURN(std::string path,
                              InputPathFor(s_, rec, ImageRole::kMoving));
    const std::string name = "the moving image";
    const bool spill = plan.spill_bytes > 0;
    std::unique_ptr<SpillWriter> writer;
    if (spill) {
      REGSERVE_ASSIGN_OR_RETURN(
          writer, SpillWriter::Create(run->dir.spill(), rec.moving_spec));
    }
    StreamedGrayOptions o;
    o.threads = threads;
    o.max_pixels = s_.max_pixels;
    o.max_bytes = plan.decode.ram_bytes;
    o.metadata = &run->moving_metadata;
    o.check_spec = [&](const ImageSpec& got) {
      return SameSpec(name, got, rec.moving_spec);
    };
    o.check_cancel = [run] { return run->cancel->Check(); };
    if (spill) {
      o.on_rows = [&](const Image& rows, int64_t, int64_t n) {
        return writer->Append(rows.data(), rows.row_bytes(), n);
      };
    }
    absl::StatusOr<Image> gray =
        ReadGrayscaleCopyFile(path, plan.registration_moving_width,
                              plan.registration_moving_height, o);
    absl::Status s = gray.status();
    if (s.ok() && spill) s = writer->Close();
    writer.reset();
    if (!s.ok()) {
      if (spill) RemoveQuietly(run->dir.spill());
      return JobError(s, path, name);
    }
    run->moving_gray = *std::move(gray);
    RegionSourceOptions ro;
    ro.cache_bytes = plan.moving_cache_bytes;
    ro.threads = threads;
    absl::StatusOr<std::unique_ptr<FileRegionSource>> src =
        spill ? OpenSpillRegionSource(run->dir.spill(), rec.moving_spec, ro)
              : OpenFileRegionSource(path, ro);
    if (!src.ok()) return JobError(src.status(), path, name);
    run->moving_regions = *std::move(src);
    return absl::OkStatus();
  }

  // `s` in the job's words: the path replaced by `name`.
  static absl::Status JobError(const absl::Status& s, const std::string& path,
                               const std::string& name) {
    if (s.code() == absl::StatusCode::kFailedPrecondition ||
        s.code() == absl::StatusCode::kCancelled) {
      return s;  // already in the job's words
    }
    const absl::Status clean = WithoutPath(s, path, name);
    return absl::Status(clean.code(),
                        absl::StrCat("decoding ", name, ": ", clean.message()));
  }

  absl::Status DecodeOne(ImageRole role, int threads, JobRun* run) {
    const JobRecord& rec = run->rec;
    const Plan& plan = rec.info.plan;
    const bool is_fixed = role == ImageRole::kFixed;
    REGSERVE_ASSIGN_OR_RETURN(std::string path, InputPathFor(s_, rec, role));
    ReadOptions ro;
    ro.max_bytes = plan.decode.ram_bytes;
    ro.max_pixels = s_.max_pixels;
    ro.threads = threads;
    ro.metadata = is_fixed ? &run->fixed_metadata : &run->moving_metadata;
    // The moving image feeds the CUDA warp: pinned memory uploads faster.
    if (!is_fixed && plan.warp_device == WarpDevice::kCuda) {
      ro.allocator = PinnedHostAllocator();
    }
    const std::string name = absl::StrCat("the ", RoleName(role), " image");
    absl::StatusOr<Image> image = ReadImageFile(path, ro);
    if (!image.ok()) {
      const absl::Status s = WithoutPath(image.status(), path, name);
      return absl::Status(s.code(),
                          absl::StrCat("decoding ", name, ": ", s.message()));
    }
    REGSERVE_RETURN_IF_ERROR(SameSpec(
        name, image->spec(), is_fixed ? rec.fixed_spec : rec.moving_spec));
    REGSERVE_RETURN_IF_ERROR(run->cancel->Check());
    absl::StatusOr<Image> gray =
        MakeGrayscaleCopy(*image,
                          is_fixed ? plan.registration_fixed_width
                                   : plan.registration_moving_width,
                          is_fixed ? plan.registration_fixed_height
                                   : plan.registration_moving_height,
                          threads);
    if (!gray.ok()) {
      return absl::Status(
          gray.status().code(),
          absl::StrCat("making the ", RoleName(role),
                       " registration copy: ", gray.status().message()));
    }
    (is_fixed ? run->fixed_gray : run->moving_gray) = *std::move(gray);
    if (!is_fixed) run->moving = *std::move(image);  // the fixed one is freed
    return absl::OkStatus();
  }

  const StageServices& s_;
};

}  // namespace

std::unique_ptr<PipelineStage> MakeDecodeStage(const StageServices* services) {
  return std::make_unique<DecodeStage>(services);
}

}  // namespace regserve
