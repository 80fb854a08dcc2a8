// Copyright regserve authors.
//
// The CUDA warper (built only against a CUDA LibTorch).
//
// One pass (the tile covers the output): the output is computed in 512-row
// bands on the compute stream and each band is downloaded on the D2H stream
// into the Warper's pinned output buffer while the next ones compute. Band
// by band, the field node rows and the 256-row source chunks it reads are
// queued on the H2D stream just before it (the field staged into pinned
// memory and its block bounds computed by worker threads in row order,
// RowStager), and the band waits for them alone (one event). So the first
// band starts after its own rows, not after the whole field and image: on
// the H200 the field queued behind the whole image held every band back
// until the upload ended (33.5 ms for 283.6 MP, the download then
// following it; docs/benchmarks.md). Source chunks from pageable memory
// block the host while they copy; from pinned memory
// (PinnedHostAllocator) they do not. The host synchronises once, at the
// end.
//
// Tiled: per output tile, the source region the field points to (plus the
// interpolation halo) is uploaded with cudaMemcpy2DAsync into one of two
// region slots, the tile is computed into one of two device tile slots and
// downloaded into one of two pinned host slots; tile k-1 is handed to the
// callback while tile k is in flight. Regions larger than a slot (strongly
// varying fields) are split into smaller output rectangles.
//
// The displacement field (113 MB for a 14.1 MP field) is copied by several
// host threads into a pinned staging buffer, 4 MiB at a time, and each chunk
// is queued for upload as soon as it is staged: a pageable upload of the same
// field ran at 6.7 GB/s and held the first band back by about 17 ms.
//
// Ownership: the Warper owns its three CUDA streams, its events, its pinned
// host buffers (cudaHostAlloc: output staging and field staging) and its device
// buffers (LibTorch caching allocator tensors); buffers are reused across
// calls, resized when a call needs a different size, and all are released in
// the destructor.
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/common/status_macros.h"
#include "core/warp/warp.h"
#include "core/warp/warp_internal.h"

namespace regserve {
namespace warp_internal {
namespace {

// Host threads that bound the field's blocks: the cores, at most 8.
int BoundThreads() {
  return static_cast<int>(
      std::max(1u, std::min(8u, std::thread::hardware_concurrency())));
}

absl::Status CudaStatus(cudaError_t e, absl::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": out of memory (", cudaGetErrorString(e), ")"));
  }
  return absl::InternalError(
      absl::StrCat(what, " failed: ", cudaGetErrorString(e)));
}

#define REGSERVE_CUDA_RETURN(expr, what) \
  REGSERVE_RETURN_IF_ERROR(CudaStatus((expr), (what)))

class PinnedAllocatorImpl final : public HostAllocator {
 public:
  void* Allocate(size_t bytes) override {
    void* p = nullptr;
    if (cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocDefault) !=
        cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return p;
  }
  void Free(void* p, size_t /*bytes*/) override { cudaFreeHost(p); }
};

// Hands out one pre-allocated buffer; Free does nothing. Lets an Image view
// the Warper's pinned staging memory for the duration of a callback.
class BorrowedAllocator final : public HostAllocator {
 public:
  explicit BorrowedAllocator(void* p) : p_(p) {}
  void* Allocate(size_t /*bytes*/) override { return p_; }
  void Free(void* /*p*/, size_t /*bytes*/) override {}

 private:
  void* p_;
};

// Band slots of the one pass at most (WarpOptions::cuda_band_slots).
constexpr int kEventSlots = 8;
static_assert(kCudaBandSlots <= kEventSlots);

// The one pass's phases, timed on the GPU (WarpOptions::cuda_timeline).
enum TimedPhase {
  kTStart,       // h2d stream, before the first source chunk
  kTField,       // h2d stream, the first band's field and source rows up
  kTFirstBand,   // compute stream, the first band computed
  kTSource,      // h2d stream, the whole source uploaded
  kTKernels,     // compute stream, the last band computed
  kTDownloaded,  // d2h stream, the last band downloaded
  kTimedPhases
};

// Stages the field into pinned memory (the dx plane, then the dy plane, as
// on the device) and computes its block bounds, in groups of node rows
// taken in order by worker threads, so that the one pass can upload each
// band's rows and start it as soon as they are there, not after the whole
// field. A thread that waits for a group stages groups itself meanwhile
// (and does all of them when no worker could be started).
class RowStager {
 public:
  static constexpr int64_t kGroupRows = 4 * FieldBounds::kBlock;

  RowStager(const DisplacementField& field, uint8_t* pinned,
            FieldBounds* bounds, int threads)
      : field_(field),
        pinned_(pinned),
        bounds_(bounds),
        groups_((field.height + kGroupRows - 1) / kGroupRows),
        done_(new std::atomic<bool>[static_cast<size_t>(groups_)]) {
    for (int64_t g = 0; g < groups_; ++g) done_[g].store(false);
    try {
      for (int t = 0; t < threads && t < groups_; ++t) {
        workers_.emplace_back([this] {
          while (StageNext()) {
          }
        });
      }
    } catch (const std::system_error&) {
      // Fewer workers: WaitRows stages the rest.
    }
  }
  ~RowStager() {
    for (std::thread& w : workers_) w.join();
  }
  RowStager(const RowStager&) = delete;
  RowStager& operator=(const RowStager&) = delete;

  // The node rows staged once rows [0, rows) are: whole groups.
  int64_t RowsFor(int64_t rows) const {
    return std::min(field_.height,
                    (rows + kGroupRows - 1) / kGroupRows * kGroupRows);
  }
  // Returns once node rows [0, rows) are staged and their blocks bounded.
  void WaitRows(int64_t rows) {
    const int64_t last =
        std::min(groups_, (rows + kGroupRows - 1) / kGroupRows);
    for (int64_t g = 0; g < last; ++g) {
      while (!done_[g].load(std::memory_order_acquire)) {
        if (!StageNext()) std::this_thread::yield();
      }
    }
  }

 private:
  bool StageNext() {
    const int64_t g = next_.fetch_add(1);
    if (g >= groups_) return false;
    const int64_t r0 = g * kGroupRows;
    const int64_t r1 = std::min(field_.height, r0 + kGroupRows);
    const size_t row = static_cast<size_t>(field_.width) * sizeof(float);
    const size_t plane = field_.dx.size() * sizeof(float);
    const size_t off = static_cast<size_t>(r0) * row;
    const size_t len = static_cast<size_t>(r1 - r0) * row;
    std::memcpy(pinned_ + off,
                reinterpret_cast<const uint8_t*>(field_.dx.data()) + off, len);
    std::memcpy(pinned_ + plane + off,
                reinterpret_cast<const uint8_t*>(field_.dy.data()) + off, len);
    bounds_->ComputeBlockRows(
        field_, r0 / FieldBounds::kBlock,
        (r1 + FieldBounds::kBlock - 1) / FieldBounds::kBlock);
    done_[g].store(true, std::memory_order_release);
    return true;
  }

  const DisplacementField& field_;
  uint8_t* const pinned_;
  FieldBounds* const bounds_;
  const int64_t groups_;
  std::unique_ptr<std::atomic<bool>[]> done_;
  std::atomic<int64_t> next_{0};
  std::vector<std::thread> workers_;
};

class CudaWarper final : public Warper {
 public:
  explicit CudaWarper(int device) : device_(device) {}

  absl::Status Init() {
    REGSERVE_CUDA_RETURN(cudaSetDevice(device_), "cudaSetDevice");
    cudaDeviceProp prop;
    REGSERVE_CUDA_RETURN(cudaGetDeviceProperties(&prop, device_),
                         "cudaGetDeviceProperties");
    name_ = absl::StrCat("cuda:", device_, " (", prop.name, ")");
    // LibTorch initialises its CUDA state (and the caching allocator's
    // per-device tables, needed by getDeviceStats/resetPeakStats) lazily on
    // the first CUDA tensor: make one now.
    try {
      at::empty(
          {1}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, device_));
    } catch (const c10::Error& e) {
      return absl::UnavailableError(
          absl::StrCat("LibTorch cannot use CUDA device ", device_, ": ",
                       e.what_without_backtrace()));
    }
    for (cudaStream_t* s : {&h2d_, &compute_, &d2h_}) {
      REGSERVE_CUDA_RETURN(cudaStreamCreateWithFlags(s, cudaStreamNonBlocking),
                           "cudaStreamCreate");
    }
    for (int k = 0; k < kEventSlots; ++k) {
      for (cudaEvent_t* e :
           {&comp_ev_[k], &d2h_ev_[k], &h2d_ev_[k], &kern_ev_[k]}) {
        REGSERVE_CUDA_RETURN(
            cudaEventCreateWithFlags(e, cudaEventDisableTiming),
            "cudaEventCreate");
      }
    }
    for (cudaEvent_t& e : timed_ev_) {
      REGSERVE_CUDA_RETURN(cudaEventCreate(&e), "cudaEventCreate");
    }
    return absl::OkStatus();
  }

  ~CudaWarper() override {
    cudaSetDevice(device_);
    SyncQuietly().IgnoreError();
    for (cudaEvent_t e : chunk_ev_) cudaEventDestroy(e);
    for (cudaEvent_t e : timed_ev_) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    for (int k = 0; k < kEventSlots; ++k) {
      for (cudaEvent_t e : {comp_ev_[k], d2h_ev_[k], h2d_ev_[k], kern_ev_[k]}) {
        if (e != nullptr) cudaEventDestroy(e);
      }
    }
    for (cudaStream_t s : {h2d_, compute_, d2h_}) {
      if (s != nullptr) cudaStreamDestroy(s);
    }
    if (out_host_ != nullptr) cudaFreeHost(out_host_);
    if (field_host_ != nullptr) cudaFreeHost(field_host_);
    if (region_host_ != nullptr) cudaFreeHost(region_host_);
    try {
      src_dev_ = at::Tensor();
      out_dev_ = at::Tensor();
      field_dev_ = at::Tensor();
      c10::cuda::CUDACachingAllocator::emptyCache();
    } catch (...) {
      // Destructors must not throw; the memory goes back with the context.
    }
  }

  WarpDevice device() const override { return WarpDevice::kCuda; }

  uint64_t retained_device_bytes() const override {
    try {
      // Everything the caching allocator holds on this device belongs to
      // this process, and between calls that is this warper's buffers.
      return static_cast<uint64_t>(
          c10::cuda::CUDACachingAllocator::getDeviceStats(device_)
              .reserved_bytes[0]  // StatType::AGGREGATE
              .current);
    } catch (const c10::Error&) {
      return 0;
    }
  }

  absl::StatusOr<WarpStats> Warp(const Image& moving,
                                 const DisplacementField& field,
                                 int64_t out_width, int64_t out_height,
                                 const WarpOptions& options,
                                 const TileCallback& on_tile) override {
    REGSERVE_RETURN_IF_ERROR(
        ValidateWarpInputs(moving, field, out_width, out_height, options));
    return Guarded(moving.spec(), field, out_width, out_height, options,
                   [&](WarpStats* stats) {
                     return WarpImpl(moving, field, out_width, out_height,
                                     options, on_tile, stats);
                   });
  }

  // The tiled path with each source region read from `moving` into a
  // pinned slot on this thread while the GPU computes the previous one.
  absl::StatusOr<WarpStats> WarpRegions(RegionSource* moving,
                                        const DisplacementField& field,
                                        int64_t out_width, int64_t out_height,
                                        const WarpOptions& options,
                                        const TileCallback& on_tile) override {
    const ImageSpec& spec = moving->spec();
    REGSERVE_RETURN_IF_ERROR(
        ValidateRegionWarpInputs(spec, field, out_width, out_height, options));
    return Guarded(spec, field, out_width, out_height, options,
                   [&](WarpStats* stats) {
                     return RegionsImpl(moving, field, out_width, out_height,
                                        options, on_tile, stats);
                   });
  }

 private:
  // Runs `impl` on this warper's device, turning LibTorch's and CUDA's
  // exceptions into a Status, and waits for every stream before returning
  // (nothing may still read the caller's memory or write our buffers).
  absl::StatusOr<WarpStats> Guarded(
      const ImageSpec& moving, const DisplacementField& field,
      int64_t out_width, int64_t out_height, const WarpOptions& options,
      const std::function<absl::Status(WarpStats*)>& impl) {
    const absl::Time start = absl::Now();
    WarpStats stats;
    absl::Status status;
    try {
      c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
      status = impl(&stats);
    } catch (const c10::OutOfMemoryError& e) {
      status = absl::ResourceExhaustedError(
          OomMessage(moving, field, out_width, out_height, options,
                     e.what_without_backtrace()));
    } catch (const c10::Error& e) {
      status = absl::InternalError(absl::StrCat("LibTorch CUDA error in warp: ",
                                                e.what_without_backtrace()));
    } catch (const std::exception& e) {
      status =
          absl::InternalError(absl::StrCat("CUDA warp failed: ", e.what()));
    }
    const absl::Status synced = SyncQuietly();
    if (status.ok()) status = synced;
    if (absl::IsResourceExhausted(status) &&
        status.message().find("tile_size") == absl::string_view::npos) {
      status = absl::ResourceExhaustedError(OomMessage(
          moving, field, out_width, out_height, options, status.message()));
    }
    if (!status.ok()) return status;
    stats.peak_device_bytes = static_cast<uint64_t>(
        c10::cuda::CUDACachingAllocator::getDeviceStats(device_)
            .allocated_bytes[0]  // StatType::AGGREGATE
            .peak);
    stats.device = name_;
    stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    return stats;
  }

  absl::Status SyncQuietly() {
    absl::Status s;
    for (cudaStream_t st : {h2d_, compute_, d2h_}) {
      if (st == nullptr) continue;
      const cudaError_t e = cudaStreamSynchronize(st);
      if (e != cudaSuccess && s.ok())
        s = CudaStatus(e, "cudaStreamSynchronize");
    }
    return s;
  }

  std::string OomMessage(const ImageSpec& moving,
                         const DisplacementField& field, int64_t out_w,
                         int64_t out_h, const WarpOptions& o,
                         absl::string_view detail) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) cudaGetLastError();
    int64_t suggest = 256;
    for (int64_t t = 16384; t >= 256; t /= 2) {
      if (o.tile_size > 0 && t >= o.tile_size) continue;
      const uint64_t need =
          EstimateWarpMemory(moving, out_w, out_h, field.width, field.height, t,
                             WarpDevice::kCuda)
              .device_bytes;
      if (need <= free_b * 8 / 10) {
        suggest = t;
        break;
      }
    }
    return absl::StrCat("out of CUDA memory on ", name_, " warping ", out_w,
                        "x", out_h, " with tile_size ", o.tile_size, " (",
                        free_b >> 20, " MiB free): retry with tile_size ",
                        suggest, " or smaller; ", detail);
  }

  // Device buffer management: first release every buffer whose size is
  // wrong, reset the allocator's peak counter, then allocate, so that the
  // peak reflects this call only.
  void PrepareDevice(int64_t src_bytes, int64_t out_bytes,
                     int64_t field_bytes) {
    auto fits = [](const at::Tensor& t, int64_t need) {
      return t.defined() && t.numel() >= need &&
             t.numel() <= need + need / 4 + (int64_t{64} << 20);
    };
    bool released = false;
    for (auto [t, need] :
         {std::pair<at::Tensor*, int64_t>{&src_dev_, src_bytes},
          {&out_dev_, out_bytes},
          {&field_dev_, field_bytes}}) {
      if (t->defined() && !fits(*t, need)) {
        *t = at::Tensor();
        released = true;
      }
    }
    if (released) c10::cuda::CUDACachingAllocator::emptyCache();
    c10::cuda::CUDACachingAllocator::resetPeakStats(device_);
    const auto opts =
        at::TensorOptions().dtype(at::kByte).device(at::kCUDA, device_);
    for (auto [t, need] :
         {std::pair<at::Tensor*, int64_t>{&src_dev_, src_bytes},
          {&out_dev_, out_bytes},
          {&field_dev_, field_bytes}}) {
      if (!t->defined()) *t = at::empty({std::max<int64_t>(need, 1)}, opts);
    }
  }

  // Makes *buf a pinned buffer of at least `bytes` (reused when its size is
  // within a factor of 2).
  static absl::Status PreparePinned(uint8_t** buf, size_t* have, size_t bytes,
                                    absl::string_view what) {
    if (*buf != nullptr && *have >= bytes &&
        *have <= 2 * bytes + (size_t{64} << 20)) {
      return absl::OkStatus();
    }
    if (*buf != nullptr) cudaFreeHost(*buf);
    *buf = nullptr;
    *have = 0;
    void* p = nullptr;
    if (cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocDefault) !=
        cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot pin ", bytes >> 20, " MiB of host memory for ",
                       what, "; use a smaller tile_size"));
    }
    *buf = static_cast<uint8_t*>(p);
    *have = bytes;
    return absl::OkStatus();
  }
  absl::Status PrepareOutputPinned(size_t bytes) {
    return PreparePinned(&out_host_, &out_host_bytes_, bytes,
                         "the warp output");
  }

  absl::Status EnsureChunkEvents(size_t n) {
    while (chunk_ev_.size() < n) {
      cudaEvent_t e;
      REGSERVE_CUDA_RETURN(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
                           "cudaEventCreate");
      chunk_ev_.push_back(e);
    }
    return absl::OkStatus();
  }

  // Stages dx then dy into the pinned field buffer with `threads` host
  // threads, kCudaFieldChunkBytes at a time, and queues each chunk's upload
  // on the compute stream (ahead of every kernel) as soon as it is staged.
  absl::Status UploadField(const DisplacementField& field, int threads,
                           WarpParams* base) {
    const size_t n = field.dx.size();
    const size_t half = n * sizeof(float);
    const size_t bytes = 2 * half;
    REGSERVE_RETURN_IF_ERROR(PreparePinned(&field_host_, &field_host_bytes_,
                                           bytes, "the displacement field"));
    uint8_t* dev = field_dev_.data_ptr<uint8_t>();
    const auto* dx = reinterpret_cast<const uint8_t*>(field.dx.data());
    const auto* dy = reinterpret_cast<const uint8_t*>(field.dy.data());
    const size_t chunks =
        (bytes + kCudaFieldChunkBytes - 1) / kCudaFieldChunkBytes;
    auto stage = [&](size_t c) {
      size_t b = c * kCudaFieldChunkBytes;
      const size_t e = std::min(bytes, b + kCudaFieldChunkBytes);
      if (b < half) {
        const size_t e1 = std::min(e, half);
        std::memcpy(field_host_ + b, dx + b, e1 - b);
        b = e1;
      }
      if (b < e) std::memcpy(field_host_ + b, dy + (b - half), e - b);
    };
    std::unique_ptr<std::atomic<bool>[]> staged(new std::atomic<bool>[chunks]);
    for (size_t c = 0; c < chunks; ++c) staged[c].store(false);
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t c = next++; c < chunks; c = next++) {
        stage(c);
        staged[c].store(true, std::memory_order_release);
      }
    };
    std::vector<std::thread> workers;
    try {
      for (int t = 0; t < threads && static_cast<size_t>(t) < chunks; ++t)
        workers.emplace_back(work);
    } catch (const std::system_error&) {
      // Fewer threads (possibly none: then the loop below stages inline).
    }
    absl::Status status;
    for (size_t c = 0; c < chunks; ++c) {
      if (workers.empty()) {
        if (next++ == c) {
          stage(c);
          staged[c].store(true, std::memory_order_release);
        }
      }
      while (!staged[c].load(std::memory_order_acquire))
        std::this_thread::yield();
      const size_t off = c * kCudaFieldChunkBytes;
      const size_t len = std::min(kCudaFieldChunkBytes, bytes - off);
      if (status.ok()) {
        status = CudaStatus(cudaMemcpyAsync(dev + off, field_host_ + off, len,
                                            cudaMemcpyHostToDevice, compute_),
                            "field upload");
      }
    }
    for (std::thread& w : workers) w.join();
    REGSERVE_RETURN_IF_ERROR(status);
    base->field_dx = reinterpret_cast<float*>(dev);
    base->field_dy = reinterpret_cast<float*>(dev + half);
    return absl::OkStatus();
  }

  // Stages and uploads the field while another thread computes its block
  // bounds on the host.
  absl::StatusOr<std::unique_ptr<FieldBounds>> UploadFieldAndBound(
      const DisplacementField& field, int threads, WarpParams* base) {
    std::unique_ptr<FieldBounds> bounds;
    bool failed = false;
    std::thread worker([&] {
      try {
        bounds = std::make_unique<FieldBounds>(field, threads);
      } catch (const std::exception&) {
        failed = true;
      }
    });
    const absl::Status up = UploadField(field, threads, base);
    worker.join();
    REGSERVE_RETURN_IF_ERROR(up);
    if (failed) {
      return absl::ResourceExhaustedError(
          "cannot allocate the field's block bounds");
    }
    return bounds;
  }

  // The one pass's timeline: the host marks, then the GPU phases measured
  // from kTStart and shifted by the host time at which it was recorded
  // (the first host mark).
  absl::Status Timeline(
      const std::vector<std::pair<std::string, double>>& host_marks,
      double host_end_ms, WarpStats* stats) {
    stats->timeline_ms = host_marks;
    const double base = host_marks.empty() ? 0.0 : host_marks.front().second;
    static constexpr const char* kNames[kTimedPhases] = {
        "gpu: start",           "gpu: first band's rows uploaded",
        "gpu: first band done", "gpu: source uploaded",
        "gpu: last band done",  "gpu: last band downloaded"};
    for (int k = kTField; k < kTimedPhases; ++k) {
      float ms = 0;
      REGSERVE_CUDA_RETURN(
          cudaEventElapsedTime(&ms, timed_ev_[kTStart], timed_ev_[k]),
          "cudaEventElapsedTime");
      stats->timeline_ms.emplace_back(kNames[k], base + ms);
    }
    stats->timeline_ms.emplace_back("host: synchronised", host_end_ms);
    return absl::OkStatus();
  }

  absl::Status Launch(const WarpParams& p) {
    return CudaStatus(static_cast<cudaError_t>(LaunchWarpKernel(p, compute_)),
                      "warp kernel launch");
  }

  // One pass, output in bands (see the header comment). Band b's field
  // rows and source rows go up on the H2D stream just before it, so band 0
  // starts as soon as its own rows are there, downloads overlap the rest of
  // the upload, and the field is never queued behind the whole image.
  absl::Status OnePass(const Image& moving, const DisplacementField& field,
                       int64_t out_w, int64_t out_h, const WarpOptions& options,
                       const TileCallback& on_tile, WarpParams base,
                       const WarpParams& host_params, int threads,
                       WarpStats* stats) {
    const absl::Time t0 = absl::Now();
    const bool timed = options.cuda_timeline;
    auto host_ms = [&] { return absl::ToDoubleMilliseconds(absl::Now() - t0); };
    const int64_t bpp = static_cast<int64_t>(moving.spec().bytes_per_pixel());
    const int64_t band_rows = std::min(
        options.cuda_band_rows > 0 ? options.cuda_band_rows : kCudaBandRows,
        out_h);
    const int64_t chunk_rows = options.cuda_chunk_rows > 0
                                   ? options.cuda_chunk_rows
                                   : kCudaSourceChunkRows;
    const int slots = std::clamp(
        options.cuda_band_slots > 0 ? options.cuda_band_slots : kCudaBandSlots,
        2, kEventSlots);
    const int64_t band_bytes = band_rows * out_w * bpp;
    const size_t plane = field.dx.size() * sizeof(float);
    PrepareDevice(static_cast<int64_t>(moving.size_bytes()), slots * band_bytes,
                  static_cast<int64_t>(2 * plane));
    REGSERVE_RETURN_IF_ERROR(
        PrepareOutputPinned(static_cast<size_t>(out_w * out_h * bpp)));
    REGSERVE_RETURN_IF_ERROR(PreparePinned(
        &field_host_, &field_host_bytes_, 2 * plane, "the displacement field"));
    uint8_t* src_dev = src_dev_.data_ptr<uint8_t>();
    uint8_t* out_dev = out_dev_.data_ptr<uint8_t>();
    uint8_t* field_dev = field_dev_.data_ptr<uint8_t>();
    base.field_dx = reinterpret_cast<float*>(field_dev);
    base.field_dy = reinterpret_cast<float*>(field_dev + plane);
    base.src = src_dev;
    base.src_stride = moving.width();
    const int64_t H = moving.height();
    const int64_t chunks = (H + chunk_rows - 1) / chunk_rows;
    const int64_t bands = (out_h + band_rows - 1) / band_rows;
    REGSERVE_RETURN_IF_ERROR(EnsureChunkEvents(static_cast<size_t>(bands)));
    std::vector<std::pair<std::string, double>> marks;
    if (timed) {
      marks.emplace_back("host: buffers ready", host_ms());
      REGSERVE_CUDA_RETURN(cudaEventRecord(timed_ev_[kTStart], h2d_),
                           "cudaEventRecord");
    }
    FieldBounds bounds(field, FieldBounds::Deferred{});
    RowStager stager(field, field_host_, &bounds, threads);
    int64_t issued = 0;  // source chunks queued
    auto issue_chunk = [&](int64_t c) -> absl::Status {
      const int64_t y0 = c * chunk_rows;
      const int64_t rows = std::min(chunk_rows, H - y0);
      const size_t off = static_cast<size_t>(y0) * moving.row_bytes();
      REGSERVE_CUDA_RETURN(
          cudaMemcpyAsync(src_dev + off, moving.data() + off,
                          static_cast<size_t>(rows) * moving.row_bytes(),
                          cudaMemcpyHostToDevice, h2d_),
          "source upload");
      return absl::OkStatus();
    };
    int64_t field_rows = 0;  // field node rows queued
    auto issue_field_rows = [&](int64_t rows) -> absl::Status {
      if (rows <= field_rows) return absl::OkStatus();
      stager.WaitRows(rows);
      const size_t row = static_cast<size_t>(field.width) * sizeof(float);
      const size_t off = static_cast<size_t>(field_rows) * row;
      const size_t len = static_cast<size_t>(rows - field_rows) * row;
      for (size_t p : {size_t{0}, plane}) {
        REGSERVE_CUDA_RETURN(
            cudaMemcpyAsync(field_dev + p + off, field_host_ + p + off, len,
                            cudaMemcpyHostToDevice, h2d_),
            "field upload");
      }
      field_rows = rows;
      return absl::OkStatus();
    };
    for (int64_t b = 0; b < bands; ++b) {
      if (options.cancel != nullptr)
        REGSERVE_RETURN_IF_ERROR(options.cancel->Check());
      const TileRect rect{0, b * band_rows, out_w,
                          std::min(band_rows, out_h - b * band_rows)};
      int64_t lo = 0, hi = 0;
      FieldNodeRows(host_params, rect, &lo, &hi);
      REGSERVE_RETURN_IF_ERROR(issue_field_rows(stager.RowsFor(hi + 1)));
      // Its block bounds are computed now (RowStager::WaitRows).
      const TileRect need = bounds.SourceRegion(host_params, rect);
      if (need.h > 0) {
        const int64_t last_chunk = (need.y + need.h - 1) / chunk_rows;
        while (issued <= last_chunk)
          REGSERVE_RETURN_IF_ERROR(issue_chunk(issued++));
      }
      // The H2D stream runs in order: this band's event covers its rows.
      REGSERVE_CUDA_RETURN(cudaEventRecord(chunk_ev_[b], h2d_),
                           "cudaEventRecord");
      REGSERVE_CUDA_RETURN(cudaStreamWaitEvent(compute_, chunk_ev_[b], 0),
                           "cudaStreamWaitEvent");
      if (timed && b == 0) {
        marks.emplace_back("host: first band queued", host_ms());
        REGSERVE_CUDA_RETURN(cudaEventRecord(timed_ev_[kTField], h2d_),
                             "cudaEventRecord");
      }
      REGSERVE_RETURN_IF_ERROR(LaunchBand(base, rect, b, slots, band_bytes, bpp,
                                          out_w, out_dev, timed, bands));
    }
    if (timed) {
      while (issued < chunks) REGSERVE_RETURN_IF_ERROR(issue_chunk(issued++));
      marks.emplace_back("host: every band queued", host_ms());
      REGSERVE_CUDA_RETURN(cudaEventRecord(timed_ev_[kTSource], h2d_),
                           "cudaEventRecord");
      REGSERVE_CUDA_RETURN(cudaEventRecord(timed_ev_[kTDownloaded], d2h_),
                           "cudaEventRecord");
    }
    REGSERVE_CUDA_RETURN(cudaStreamSynchronize(d2h_), "cudaStreamSynchronize");
    REGSERVE_RETURN_IF_ERROR(SyncQuietly());
    if (timed) REGSERVE_RETURN_IF_ERROR(Timeline(marks, host_ms(), stats));
    ImageSpec out_spec = moving.spec();
    out_spec.width = out_w;
    out_spec.height = out_h;
    BorrowedAllocator borrowed(out_host_);
    REGSERVE_ASSIGN_OR_RETURN(Image out, Image::Allocate(out_spec, &borrowed));
    REGSERVE_RETURN_IF_ERROR(on_tile(TileRect{0, 0, out_w, out_h}, out));
    stats->tiles = 1;
    return absl::OkStatus();
  }

  // Band b of the one pass: computed into its slot once the slot's last
  // download is done, then downloaded into the pinned output.
  absl::Status LaunchBand(const WarpParams& base, const TileRect& rect,
                          int64_t b, int slots, int64_t band_bytes, int64_t bpp,
                          int64_t out_w, uint8_t* out_dev, bool timed,
                          int64_t bands) {
    const int slot = static_cast<int>(b % slots);
    if (b >= slots) {
      REGSERVE_CUDA_RETURN(cudaStreamWaitEvent(compute_, d2h_ev_[slot], 0),
                           "cudaStreamWaitEvent");
    }
    WarpParams p = base;
    p.rect_x0 = rect.x;
    p.rect_y0 = rect.y;
    p.rect_w = rect.w;
    p.rect_h = rect.h;
    p.out = out_dev + slot * band_bytes;
    p.out_x0 = 0;
    p.out_y0 = rect.y;
    p.out_stride = out_w;
    REGSERVE_RETURN_IF_ERROR(Launch(p));
    for (const auto& [last, phase] :
         {std::pair{b == 0, kTFirstBand}, {b == bands - 1, kTKernels}}) {
      if (timed && last) {
        REGSERVE_CUDA_RETURN(cudaEventRecord(timed_ev_[phase], compute_),
                             "cudaEventRecord");
      }
    }
    REGSERVE_CUDA_RETURN(cudaEventRecord(comp_ev_[slot], compute_),
                         "cudaEventRecord");
    REGSERVE_CUDA_RETURN(cudaStreamWaitEvent(d2h_, comp_ev_[slot], 0),
                         "cudaStreamWaitEvent");
    REGSERVE_CUDA_RETURN(
        cudaMemcpyAsync(out_host_ + rect.y * out_w * bpp,
                        out_dev + slot * band_bytes,
                        static_cast<size_t>(rect.h * out_w * bpp),
                        cudaMemcpyDeviceToHost, d2h_),
        "output download");
    REGSERVE_CUDA_RETURN(cudaEventRecord(d2h_ev_[slot], d2h_),
                         "cudaEventRecord");
    return absl::OkStatus();
  }

  absl::Status WarpImpl(const Image& moving, const DisplacementField& field,
                        int64_t out_w, int64_t out_h,
                        const WarpOptions& options, const TileCallback& on_tile,
                        WarpStats* stats) {
    WarpParams base = MakeBaseParams(moving, field, options);
    // Host-side planning (FieldBounds, ExactSourceRegion) reads the field
    // through these parameters, so they keep the HOST field pointers; `base`
    // gets the device pointers in UploadField.
    const WarpParams host_params = base;
    const int64_t bpp = static_cast<int64_t>(moving.spec().bytes_per_pixel());
    const std::vector<TileRect> tiles =
        MakeTiles(out_w, out_h, options.tile_size);
    const int bound_threads = BoundThreads();
    if (tiles.size() == 1) {
      return OnePass(moving, field, out_w, out_h, options, on_tile, base,
                     host_params, bound_threads, stats);
    }

    const uint8_t* data = moving.data();
    const size_t row_bytes = moving.row_bytes();
    return Tiled(
        moving.spec(), field, out_w, out_h, options, on_tile, base, host_params,
        bound_threads,
        [&](const TileRect& src, int,
            size_t* pitch) -> absl::StatusOr<const uint8_t*> {
          *pitch = row_bytes;
          return data + src.y * row_bytes + src.x * bpp;
        },
        stats);
  }

  absl::Status RegionsImpl(RegionSource* moving, const DisplacementField& field,
                           int64_t out_w, int64_t out_h,
                           const WarpOptions& options,
                           const TileCallback& on_tile, WarpStats* stats) {
    const ImageSpec& spec = moving->spec();
    WarpParams base = MakeBaseParams(spec, field, options);
    const WarpParams host_params = base;
    const size_t bpp = spec.bytes_per_pixel();
    const int64_t cap =
        RegionCapacityPixels(spec.width, spec.height, options.tile_size);
    const size_t slot_bytes = static_cast<size_t>(cap) * bpp;
    REGSERVE_RETURN_IF_ERROR(PreparePinned(&region_host_, &region_host_bytes_,
                                           2 * slot_bytes,
                                           "the source regions"));
    std::vector<bool> used(2, false);
    const int bound_threads = BoundThreads();
    return Tiled(
        spec, field, out_w, out_h, options, on_tile, base, host_params,
        bound_threads,
        [&](const TileRect& src, int slot,
            size_t* pitch) -> absl::StatusOr<const uint8_t*> {
          // The slot's last upload must be done before it is refilled.
          if (used[slot]) {
            REGSERVE_CUDA_RETURN(cudaEventSynchronize(h2d_ev_[slot]),
                                 "cudaEventSynchronize");
          }
          used[slot] = true;
          uint8_t* dst = region_host_ + slot * slot_bytes;
          *pitch = static_cast<size_t>(src.w) * bpp;
          REGSERVE_RETURN_IF_ERROR(
              moving->ReadRegion(src.x, src.y, src.w, src.h, dst, *pitch));
          return dst;
        },
        stats);
  }

  // The source of a region item: a host pointer to its first pixel and the
  // row pitch, valid until the item's upload (recorded on h2d_ev_[slot]).
  using SourceFn = std::function<absl::StatusOr<const uint8_t*>(
      const TileRect& src, int slot, size_t* pitch)>;

  // Tiled: see the header comment.
  absl::Status Tiled(const ImageSpec& spec, const DisplacementField& field,
                     int64_t out_w, int64_t out_h, const WarpOptions& options,
                     const TileCallback& on_tile, WarpParams base,
                     const WarpParams& host_params, int bound_threads,
                     const SourceFn& source, WarpStats* stats) {
    const int64_t bpp = static_cast<int64_t>(spec.bytes_per_pixel());
    const int64_t field_bytes =
        static_cast<int64_t>(field.dx.size()) * 2 * sizeof(float);
    const std::vector<TileRect> tiles =
        MakeTiles(out_w, out_h, options.tile_size);
    const int64_t T = options.tile_size;
    const int64_t cap = RegionCapacityPixels(spec.width, spec.height, T);
    const int64_t tile_bytes = T * T * bpp;
    PrepareDevice(2 * cap * bpp, 2 * tile_bytes, field_bytes);
    REGSERVE_RETURN_IF_ERROR(
        PrepareOutputPinned(static_cast<size_t>(2 * tile_bytes)));
    uint8_t* src_dev = src_dev_.data_ptr<uint8_t>();
    uint8_t* out_dev = out_dev_.data_ptr<uint8_t>();
    REGSERVE_ASSIGN_OR_RETURN(std::unique_ptr<FieldBounds> bounds_ptr,
                              UploadFieldAndBound(field, bound_threads, &base));
    const FieldBounds& bounds = *bounds_ptr;

    auto deliver = [&](size_t k) -> absl::Status {
      const int slot = static_cast<int>(k % 2);
      REGSERVE_CUDA_RETURN(cudaEventSynchronize(d2h_ev_[slot]),
                           "cudaEventSynchronize");
      ImageSpec tile_spec = spec;
      tile_spec.width = tiles[k].w;
      tile_spec.height = tiles[k].h;
      BorrowedAllocator borrowed(out_host_ + slot * tile_bytes);
      REGSERVE_ASSIGN_OR_RETURN(Image img,
                                Image::Allocate(tile_spec, &borrowed));
      REGSERVE_RETURN_IF_ERROR(on_tile(tiles[k], img));
      ++stats->tiles;
      return absl::OkStatus();
    };

    std::vector<RegionItem> items;
    int64_t item_counter = 0;
    for (size_t k = 0; k < tiles.size(); ++k) {
      if (options.cancel != nullptr)
        REGSERVE_RETURN_IF_ERROR(options.cancel->Check());
      const TileRect& tile = tiles[k];
      const int slot = static_cast<int>(k % 2);
      if (k >= 2) {
        REGSERVE_CUDA_RETURN(cudaStreamWaitEvent(compute_, d2h_ev_[slot], 0),
                             "cudaStreamWaitEvent");
      }
      items.clear();
      PlanRegions(bounds, host_params, tile, cap, &items);
      for (const RegionItem& item : items) {
        const int s = static_cast<int>(item_counter % 2);
        if (item_counter >= 2) {
          REGSERVE_CUDA_RETURN(cudaStreamWaitEvent(h2d_, kern_ev_[s], 0),
                               "cudaStreamWaitEvent");
        }
        ++item_counter;
        uint8_t* region = src_dev + s * cap * bpp;
        if (item.src.w > 0 && item.src.h > 0) {
          size_t pitch = 0;
          REGSERVE_ASSIGN_OR_RETURN(const uint8_t* host,
                                    source(item.src, s, &pitch));
          REGSERVE_CUDA_RETURN(
              cudaMemcpy2DAsync(region, static_cast<size_t>(item.src.w * bpp),
                                host, pitch,
                                static_cast<size_t>(item.src.w * bpp),
                                static_cast<size_t>(item.src.h),
                                cudaMemcpyHostToDevice, h2d_),
              "source region upload");
          REGSERVE_CUDA_RETURN(cudaEventRecord(h2d_ev_[s], h2d_),
                               "cudaEventRecord");
          REGSERVE_CUDA_RETURN(cudaStreamWaitEvent(compute_, h2d_ev_[s], 0),
                               "cudaStreamWaitEvent");
        }
        WarpParams p = base;
        p.rect_x0 = item.out.x;
        p.rect_y0 = item.out.y;
        p.rect_w = item.out.w;
        p.rect_h = item.out.h;
        p.out = out_dev + slot * tile_bytes;
        p.out_x0 = tile.x;
        p.out_y0 = tile.y;
        p.out_stride = tile.w;
        p.src = region;
        p.src_x0 = item.src.x;
        p.src_y0 = item.src.y;
        p.src_stride = item.src.w;
        REGSERVE_RETURN_IF_ERROR(Launch(p));
        REGSERVE_CUDA_RETURN(cudaEventRecord(kern_ev_[s], compute_),
                             "cudaEventRecord");
      }
      REGSERVE_CUDA_RETURN(cudaEventRecord(comp_ev_[slot], compute_),
                           "cudaEventRecord");
      REGSERVE_CUDA_RETURN(cudaStreamWaitEvent(d2h_, comp_ev_[slot], 0),
                           "cudaStreamWaitEvent");
      REGSERVE_CUDA_RETURN(
          cudaMemcpyAsync(out_host_ + slot * tile_bytes,
                          out_dev + slot * tile_bytes,
                          static_cast<size_t>(tile.w * tile.h * bpp),
                          cudaMemcpyDeviceToHost, d2h_),
          "tile download");
      REGSERVE_CUDA_RETURN(cudaEventRecord(d2h_ev_[slot], d2h_),
                           "cudaEventRecord");
      if (k >= 1) REGSERVE_RETURN_IF_ERROR(deliver(k - 1));
    }
    return deliver(tiles.size() - 1);
  }

  const int device_;
  std::string name_;
  cudaStream_t h2d_ = nullptr;
  cudaStream_t compute_ = nullptr;
  cudaStream_t d2h_ = nullptr;
  cudaEvent_t comp_ev_[kEventSlots] = {};
  cudaEvent_t d2h_ev_[kEventSlots] = {};
  cudaEvent_t h2d_ev_[kEventSlots] = {};
  cudaEvent_t kern_ev_[kEventSlots] = {};
  std::vector<cudaEvent_t> chunk_ev_;
  cudaEvent_t timed_ev_[kTimedPhases] = {};
  // Device buffers (caching allocator): source (whole image or 2 region
  // slots), output (band ring or 2 tile slots), field (dx then dy).
  at::Tensor src_dev_;
  at::Tensor out_dev_;
  at::Tensor field_dev_;
  // Pinned host output staging (whole output or 2 tile slots).
  uint8_t* out_host_ = nullptr;
  size_t out_host_bytes_ = 0;
  // Pinned host field staging (dx then dy, as on the device).
  uint8_t* field_host_ = nullptr;
  size_t field_host_bytes_ = 0;
  // Pinned host source regions of WarpRegions (two slots).
  uint8_t* region_host_ = nullptr;
  size_t region_host_bytes_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Warper>> CreateCudaWarper(int cuda_device) {
  const int count = static_cast<int>(c10::cuda::device_count());
  if (count == 0) {
    return absl::UnavailableError(
        "CUDA warp requested but no CUDA device is visible (no driver, or "
        "CUDA_VISIBLE_DEVICES hides them); use the CPU warp");
  }
  if (cuda_device < 0 || cuda_device >= count) {
    return absl::UnavailableError(absl::StrCat("CUDA device ", cuda_device,
                                               " requested but only ", count,
                                               " visible"));
  }
  auto warper = std::make_unique<CudaWarper>(cuda_device);
  absl::Status s = warper->Init();
  if (!s.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot set up CUDA device ",
                                               cuda_device, ": ", s.message()));
  }
  return std::unique_ptr<Warper>(std::move(warper));
}

}  // namespace warp_internal

HostAllocator* PinnedHostAllocator() {
  static HostAllocator* const allocator =
      new warp_internal::PinnedAllocatorImpl();
  return c10::cuda::device_count() > 0 ? allocator : nullptr;
}

}  // namespace regserve
