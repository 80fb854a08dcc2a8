// Copyright regserve authors.
//
// Warp: resamples the full-resolution moving image through the field into
// the fixed frame, on the GPU the scheduler placed it on (falling back to
// the CPU when that GPU's warper cannot start), and writes the tiles to the
// partial result. Memory: Plan::warp, or Plan::warp_cpu_fallback.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/common/status_macros.h"
#include "core/image/field_coarsen.h"
#include "core/jobs/stage_runner.h"

namespace regserve {
namespace {

// The warp reads a coarser copy of the field when that moves no output
// pixel by more than this (field_coarsen.h): the 283.6 MP job's field on
// its 20 MP registration grid is 160 MB, which then crosses PCIe beside the
// image (docs/benchmarks.md, "Session 6's device runs").
constexpr double kFieldTolerancePx = 0.01;
constexpr int kMaxFieldCoarsening = 8;

class WarpStage final : public PipelineStage {
 public:
  explicit WarpStage(const StageServices* services) : s_(*services) {}
  std::optional<Stage> stage() const override { return Stage::kWarp; }

  absl::Status Run(JobRun* run, StageHost* host) override {
    const Plan& plan = run->rec.info.plan;
    const bool cuda = plan.warp_device == WarpDevice::kCuda;
    REGSERVE_ASSIGN_OR_RETURN(
        Reservation r,
        host->Acquire(cuda ? Lane::kGpu : Lane::kCpu, plan.warp.ram_bytes,
                      plan.warp.vram_bytes, "warp"));
    host->Started(Stage::kWarp);
    const absl::Time start = absl::Now();
    WarperPool::Lease lease;
    std::unique_ptr<Warper> cpu;
    Warper* warper = nullptr;
    if (cuda) {
      const int ordinal = OrdinalOf(r);
      lease = s_.warpers->AcquireCuda(ordinal);
      if (lease.ok()) {
        warper = lease.warper();
      } else {
        REGSERVE_ASSIGN_OR_RETURN(
            r, FallBack(plan, ordinal, lease, std::move(r), host));
      }
    }
    if (warper == nullptr) {
      REGSERVE_ASSIGN_OR_RETURN(cpu, s_.warpers->CreateCpu());
      warper = cpu.get();
    }
    absl::StatusOr<WarpStats> stats = WarpInto(run, warper, r.threads(), host);
    if (lease.ok() && r.gpu() >= 0) {
      // Before the reservation goes: what the warper keeps cached on its
      // GPU is ours, not another process's, for the next admission there.
      s_.scheduler->SetRetainedVram(r.gpu(), warper->retained_device_bytes());
    }
    lease = WarperPool::Lease();
    if (!stats.ok()) return stats.status();
    r.Release();
    run->moving = Image();
    run->moving_regions.reset();
    RemoveQuietly(run->dir.spill());
    host->Progress(Stage::kWarp, 1.0,
                   absl::StrCat("warped on ", stats->device, " in ",
                                absl::StrFormat("%.2f", stats->seconds), " s"),
                   nullptr, /*force=*/true);
    host->Finished(Stage::kWarp, start);
    return absl::OkStatus();
  }

 private:
  int OrdinalOf(const Reservation& r) const {
    const auto& ordinals = s_.scheduler->config().gpu_ordinals;
    const int index = std::max(0, r.gpu());
    return index < static_cast<int>(ordinals.size()) ? ordinals[index] : index;
  }

  // The GPU's warper is unavailable: trade the GPU reservation for the CPU
  // warp's planned memory.
  absl::StatusOr<Reservation> FallBack(const Plan& plan, int ordinal,
                                       const WarperPool::Lease& lease,
                                       Reservation gpu, StageHost* host) {
    gpu.Release();
    const std::string reason = absl::StrCat(
        "CUDA warper for GPU ", ordinal, " unavailable (",
        lease.failure().message(), "); warping on the CPU instead");
    host->AddPlanReason(reason);
    host->Progress(Stage::kWarp, 0.0, reason);
    if (plan.warp_cpu_fallback.ram_bytes == 0) {
      return absl::ResourceExhaustedError(absl::StrCat(
          reason, ", but the CPU warp does not fit the RAM budget"));
    }
    return host->Acquire(Lane::kCpu, plan.warp_cpu_fallback.ram_bytes, 0,
                         "warp (cpu fallback)");
  }

  // `threads`: the reservation's CPU threads (CPU warp, compression).
  absl::StatusOr<WarpStats> WarpInto(JobRun* run, Warper* warper, int threads,
                                     StageHost* host);
  void StreamBand(const TileGrid& grid, const TileRect& rect, const Image& band,
                  const std::atomic<bool>& writing, StageHost* host) const;
  absl::Status StoreAndStream(const TileGrid& grid, const TileRect& rect,
                              const Image& band, TiledTiffWriter* writer,
                              StageHost* host) const;
  WarpOptions Options(const JobRun& run, bool cpu, int threads) const;
  TiledTiffOptions WriterOptions(const JobRun& run, int threads) const;

  const StageServices& s_;
};

WarpOptions WarpStage::Options(const JobRun& run, bool cpu, int threads) const {
  const JobRecord& rec = run.rec;
  const Plan& plan = rec.info.plan;
  WarpOptions wo;
  wo.interpolation = rec.info.spec.options.interpolation;
  wo.fill_value = rec.info.spec.fill_value;
  wo.tile_size = cpu && plan.warp_device == WarpDevice::kCuda
                     ? plan.warp_cpu_tile_size
                     : plan.tile_size;
  if (!rec.info.spec.options.output_full_resolution) {
    // The registration copy's pixel centres, per axis (its width and height
    // are rounded separately, so the two factors differ slightly).
    const double fx = static_cast<double>(rec.fixed_spec.width) /
                      static_cast<double>(plan.registration_fixed_width);
    const double fy = static_cast<double>(rec.fixed_spec.height) /
                      static_cast<double>(plan.registration_fixed_height);
    wo.output_origin_x = (fx - 1.0) / 2.0;
    wo.output_origin_y = (fy - 1.0) / 2.0;
    wo.output_spacing_x = fx;
    wo.output_spacing_y = fy;
  }
  wo.cpu_threads = threads;
  wo.cancel = run.cancel;
  // A one-pass CPU warp hands over rows of stream tiles as they are done,
  // so the first tiles reach readers early.
  if (cpu && wo.tile_size == 0) wo.band_rows = plan.stream_tile_size;
  return wo;
}

// The stored result: a pyramid in the job's compression, on the stage's
// threads (at most those the plan sized the writer for). Its colours are
// the moving image's, so its ICC profile; its pixels lie on the fixed
// image's grid, so the fixed image's resolution (scaled when the output is
// at the registration size) and orientation, else the moving image's.
TiledTiffOptions WarpStage::WriterOptions(const JobRun& run,
                                          int threads) const {
  const Plan& plan = run.rec.info.plan;
  const JobOptions& jo = run.rec.info.spec.options;
  TiledTiffOptions o;
  o.tile = static_cast<int>(plan.stream_tile_size);
  o.compression = jo.compression;
  o.jpeg_quality = jo.jpeg_quality > 0 ? jo.jpeg_quality : kDefaultJpegQuality;
  o.threads = std::clamp(threads, 1, std::max(1, plan.result_writer_threads));
  o.pyramid = true;
  ImageMetadata& m = o.metadata;
  m.icc_profile = run.moving_metadata.icc_profile;
  const ImageMetadata& geometry = run.fixed_metadata.x_resolution > 0
                                      ? run.fixed_metadata
                                      : run.moving_metadata;
  m.x_resolution = geometry.x_resolution;
  m.y_resolution = geometry.y_resolution;
  m.resolution_unit = geometry.resolution_unit;
  if (!jo.output_full_resolution && m.x_resolution > 0) {
    m.x_resolution *= static_cast<double>(plan.output_width) /
                      static_cast<double>(run.rec.fixed_spec.width);
    m.y_resolution *= static_cast<double>(plan.output_height) /
                      static_cast<double>(run.rec.fixed_spec.height);
  }
  m.orientation = run.fixed_metadata.orientation > 0
                      ? run.fixed_metadata.orientation
                      : run.moving_metadata.orientation;
  return o;
}

// The stream tiles that a full-width band of whole tile rows completes, in
// order, for the readers that wait for them (live streaming while the warp
// goes on). A reader that holds its fill of unread tiles is waited for while
// the band is `writing` into the stored result (it stays in memory for that
// anyway: a one-pass GPU warp hands over the whole image at once); once it
// is written, such a reader gets the band's remaining tiles from the stored
// result instead, so a slow reader never holds the warp up.
void WarpStage::StreamBand(const TileGrid& grid, const TileRect& rect,
                           const Image& band, const std::atomic<bool>& writing,
                           StageHost* host) const {
  const int64_t edge = grid.edge();
  if (rect.x != 0 || rect.w != grid.width() || rect.y % edge != 0 ||
      (rect.h % edge != 0 && rect.y + rect.h != grid.height())) {
    return;  // not whole rows of stream tiles: readers get the stored ones
  }
  const size_t bpp = band.spec().bytes_per_pixel();
  for (int64_t row = rect.y / edge; row * edge < rect.y + rect.h; ++row) {
    for (int64_t col = 0; col < grid.cols(); ++col) {
      const int64_t index = row * grid.cols() + col;
      TileDemand demand = host->Demand(index);
      while (demand == TileDemand::kLater && writing.load()) {
        absl::SleepFor(absl::Microseconds(200));
        demand = host->Demand(index);
      }
      if (demand == TileDemand::kLater) return;
      if (demand == TileDemand::kNone) continue;
      JobEvent ev;
      ev.kind = JobEvent::Kind::kTile;
      ev.stage = Stage::kWarp;
      ev.tile_index = index;
      ev.grid = grid;
      ev.rect = grid.rect(index);
      ev.channels = band.channels();
      ev.sample_type = band.type();
      ev.encoding = TileEncoding::kRaw;
      const size_t line = static_cast<size_t>(ev.rect.w) * bpp;
      ev.data.resize(line * static_cast<size_t>(ev.rect.h));
      for (int64_t y = 0; y < ev.rect.h; ++y) {
        std::memcpy(&ev.data[static_cast<size_t>(y) * line],
                    band.row(ev.rect.y - rect.y + y) + ev.rect.x * bpp, line);
      }
      host->PublishTile(ev);
    }
  }
}

// Writes a finished band into the stored result and, on a thread of its own
// at the same time, streams it to the readers that wait (StreamBand).
absl::Status WarpStage::StoreAndStream(const TileGrid& grid,
                                       const TileRect& rect, const Image& band,
                                       TiledTiffWriter* writer,
                                       StageHost* host) const {
  std::atomic<bool> writing{true};
  std::thread streamer;
  try {
    streamer =
        std::thread([&] { StreamBand(grid, rect, band, writing, host); });
  } catch (const std::system_error&) {
    // No thread: stream first, without waiting for slow readers.
    writing = false;
    StreamBand(grid, rect, band, writing, host);
  }
  const absl::Status written = writer->WriteRegion(rect.x, rect.y, band);
  writing = false;
  if (streamer.joinable()) streamer.join();
  return written;
}

absl::StatusOr<WarpStats> WarpStage::WarpInto(JobRun* run, Warper* warper,
                                              int threads, StageHost* host) {
  const Plan& plan = run->rec.info.plan;
  ImageSpec out;
  out.width = plan.output_width;
  out.height = plan.output_height;
  const ImageSpec& moving = run->moving_regions != nullptr
                                ? run->moving_regions->spec()
                                : run->moving.spec();
  out.channels = moving.channels;
  out.type = moving.type;
  const std::string partial = run->partial_result;
  RemoveQuietly(partial);
  // A fleet run never touches the committed result: it may be another's.
  if (!run->fleet_run) RemoveQuietly(run->dir.result());
  REGSERVE_ASSIGN_OR_RETURN(
      std::unique_ptr<TiledTiffWriter> writer,
      OpenTiledTiffWriter(partial, out, WriterOptions(*run, threads)));
  const TileGrid grid(out.width, out.height, plan.stream_tile_size);
  const double total = static_cast<double>(out.width) * out.height;
  double done = 0;
  int64_t tiles = 0;
  const bool on_cpu = warper->device() == WarpDevice::kCpu;
  const TileCallback on_tile = [&](const TileRect& rect,
                                   const Image& tile) -> absl::Status {
    REGSERVE_RETURN_IF_ERROR(
        StoreAndStream(grid, rect, tile, writer.get(), host));
    done += static_cast<double>(rect.w) * static_cast<double>(rect.h);
    ++tiles;
    host->Progress(Stage::kWarp, done / total,
                   absl::StrFormat("warped %d tiles (%.0f%%)", tiles,
                                   100.0 * done / total),
                   nullptr, /*force=*/false);
    return absl::OkStatus();
  };
  const WarpOptions options = Options(*run, on_cpu, threads);
  const FieldCoarsening coarse =
      CoarsestFieldWithin(run->reg.field, kFieldTolerancePx,
                          kMaxFieldCoarsening, std::max(1, threads));
  const DisplacementField& field =
      coarse.factor > 1 ? coarse.field : run->reg.field;
  if (coarse.factor > 1) {
    host->AddPlanReason(absl::StrFormat(
        "warp: the field read at %dx%d nodes instead of %dx%d (%.1f MB "
        "instead of %.1f MB); it moves no pixel by more than %.4f px",
        field.width, field.height, run->reg.field.width, run->reg.field.height,
        field.bytes() / 1e6, run->reg.field.bytes() / 1e6,
        coarse.max_error_px));
  }
  absl::StatusOr<WarpStats> stats =
      run->moving_regions != nullptr
          ? warper->WarpRegions(run->moving_regions.get(), field, out.width,
                                out.height, options, on_tile)
          : warper->Warp(run->moving, field, out.width, out.height, options,
                         on_tile);
  absl::Status closed =
      stats.ok() ? writer->Close() : absl::Status(stats.status());
  writer.reset();
  if (!closed.ok()) {
    RemoveQuietly(partial);
    const absl::Status s = WithoutPath(closed, partial, "the result");
    return absl::Status(
        s.code(), absl::StrCat(stats.ok() ? "writing the result: " : "warp: ",
                               s.message()));
  }
  run->result_written = true;
  host->Warped(out, *stats);
  return stats;
}

}  // namespace

std::unique_ptr<PipelineStage> MakeWarpStage(const StageServices* services) {
  return std::make_unique<WarpStage>(services);
}

}  // namespace regserve
