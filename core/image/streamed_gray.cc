// Copyright regserve authors.
//
// The streamed grayscale copy. One thread decodes the next chunk of source
// rows while the workers reduce the current one (two chunk buffers), so
// decoding and reducing overlap. Each chunk: every source row reduced to the
// target width once (rows split among the workers), then added into the
// output rows it falls in (output rows split among the workers), source rows
// in ascending order, as MakeGrayscaleCopy adds them; the normalisation runs
// once at the end. Same sums in the same order: the same bits.
#include "core/image/streamed_gray.h"

#include <algorithm>
#include <exception>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/image/grayscale_kernel.h"
#include "core/image/oiio_input.h"
#include "core/image/oiio_type.h"

namespace regserve {
namespace {

using gray_internal::GrayKernel;
using oiio_internal::DescribeSource;
using oiio_internal::DrainErrors;
using oiio_internal::OpenInput;
using oiio_internal::Source;

// Runs f(t) for t in [0, n), t = 0 on the calling thread.
absl::Status ParallelFor(int n, const std::function<void(int)>& f) {
  std::vector<std::thread> workers;
  try {
    workers.reserve(n - 1);
    for (int t = 1; t < n; ++t) workers.emplace_back(f, t);
  } catch (const std::exception& e) {
    for (std::thread& w : workers) w.join();
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start grayscale worker threads: ", e.what()));
  }
  f(0);
  for (std::thread& w : workers) w.join();
  return absl::OkStatus();
}

// Decodes source rows [y0, y1) into `rows` (y1 - y0 rows of the decoded
// type): rows of tiles for a tiled file, scanlines otherwise (whole strips
// when the chunk is aligned to them, which OpenImageIO then decompresses in
// parallel). Runs on the reader thread, which drains OIIO's errors itself.
absl::Status ReadRows(const Source& src, OpenInput* in, int64_t y0, int64_t y1,
                      Image* rows) {
  const ImageSpec& s = in->ours;
  const OIIO::TypeDesc type = OiioTypeOf(s.type);
  try {
    const bool ok =
        in->spec.tile_width > 0
            ? in->input->read_tiles(0, 0, 0, static_cast<int>(s.width),
                                    static_cast<int>(y0), static_cast<int>(y1),
                                    0, 1, 0, s.channels, type, rows->data())
            : in->input->read_scanlines(0, 0, static_cast<int>(y0),
                                        static_cast<int>(y1), 0, 0, s.channels,
                                        type, rows->data());
    // Some readers (libjpeg) report recoverable damage only as a pending
    // error after returning success; treat that as corrupt data too.
    if (!ok || in->input->has_error()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot decode rows ", y0, " to ", y1 - 1, " of ",
                       DescribeSource(src), " (", s.DebugString(),
                       "): ", DrainErrors(in->input.get()),
                       ". The file is truncated or corrupt; re-export it"));
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot decode rows ", y0, " to ", y1 - 1, " of ",
                     DescribeSource(src), ": OpenImageIO threw: ", e.what()));
  }
  return absl::OkStatus();
}

// What one streamed read holds: two chunks of source rows, the current
// chunk's rows reduced to the target width, one luma row per worker.
struct Buffers {
  Image chunk[2];
  std::vector<float> reduced;
  std::vector<std::vector<float>> luma;
};

absl::StatusOr<Buffers> AllocateBuffers(const ImageSpec& source,
                                        int64_t target_width, int workers) {
  Buffers b;
  ImageSpec chunk = source;
  chunk.height = source.stream_rows;
  for (Image& c : b.chunk) {
    REGSERVE_ASSIGN_OR_RETURN(c, Image::Allocate(chunk));
  }
  try {
    b.reduced.resize(static_cast<size_t>(source.stream_rows) * target_width);
    b.luma.resize(workers);
    for (std::vector<float>& l : b.luma) l.resize(source.width);
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate grayscale row buffers: ", e.what()));
  }
  return b;
}

// Adds source rows [y0, y1) (in `rows`) into the output.
absl::Status ReduceChunk(const GrayKernel& kernel, const Image& rows,
                         int64_t y0, int64_t y1, int workers, Buffers* b,
                         Image* out) {
  const int64_t tw = out->width();
  const int64_t n = y1 - y0;
  const int reducers = static_cast<int>(std::min<int64_t>(workers, n));
  REGSERVE_RETURN_IF_ERROR(ParallelFor(reducers, [&](int t) {
    for (int64_t i = n * t / reducers; i < n * (t + 1) / reducers; ++i) {
      kernel.reduce(rows.row(i), rows.width(), kernel.wx, b->luma[t].data(),
                    b->reduced.data() + i * tw);
    }
  }));
  const int64_t lo = kernel.wy.OutputsOf(y0).first;
  const int64_t hi = kernel.wy.OutputsOf(y1 - 1).second;
  const int adders = static_cast<int>(std::min<int64_t>(workers, hi - lo));
  return ParallelFor(adders, [&](int t) {
    const int64_t r0 = lo + (hi - lo) * t / adders;
    const int64_t r1 = lo + (hi - lo) * (t + 1) / adders;
    for (int64_t k = y0; k < y1; ++k) {
      gray_internal::AccumulateRow(
          kernel.wy, k, b->reduced.data() + (k - y0) * tw, r0, r1, out);
    }
  });
}

absl::Status CheckLimits(const Source& src, const ImageSpec& spec,
                         int64_t target_width, int64_t target_height,
                         const StreamedGrayOptions& options) {
  if (spec.pixels() > options.max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat(
        DescribeSource(src), " is ", spec.width, "x", spec.height, " = ",
        spec.pixels(), " pixels, above the limit of ", options.max_pixels,
        " pixels; downscale the image or raise the pixel limit"));
  }
  const uint64_t bytes =
      StreamedGrayscaleWorkBytes(spec, target_width, options.threads) +
      static_cast<uint64_t>(target_width) * target_height * sizeof(float);
  if (bytes > options.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "streaming the grayscale copy of ", DescribeSource(src), " (",
        spec.DebugString(), ", ", spec.stream_rows, " rows at a time) needs ",
        bytes, " bytes, above the memory budget of ", options.max_bytes,
        " bytes; raise the budget"));
  }
  return absl::OkStatus();
}

// Decodes every chunk, the next one on a reader thread while this one is
// reduced.
absl::Status StreamRows(const Source& src, OpenInput* in,
                        const GrayKernel& kernel, int workers,
                        const StreamedGrayOptions& options, Buffers* b,
                        Image* out) {
  const int64_t height = in->ours.height;
  const int64_t step = in->ours.stream_rows;
  auto end_of = [&](int64_t y0) { return std::min(height, y0 + step); };
  REGSERVE_RETURN_IF_ERROR(ReadRows(src, in, 0, end_of(0), &b->chunk[0]));
  int i = 0;
  for (int64_t y0 = 0; y0 < height; y0 += step, ++i) {
    const int64_t y1 = end_of(y0);
    absl::Status next = absl::OkStatus();
    std::thread reader;
    if (y1 < height) {
      try {
        reader = std::thread([&, y1, i] {
          next = ReadRows(src, in, y1, end_of(y1), &b->chunk[(i + 1) % 2]);
        });
      } catch (const std::exception& e) {
        return absl::ResourceExhaustedError(
            absl::StrCat("cannot start the decoding thread: ", e.what()));
      }
    }
    absl::Status s =
        ReduceChunk(kernel, b->chunk[i % 2], y0, y1, workers, b, out);
    if (s.ok() && options.on_rows)
      s = options.on_rows(b->chunk[i % 2], y0, y1 - y0);
    if (s.ok() && options.check_cancel) s = options.check_cancel();
    if (reader.joinable()) reader.join();
    REGSERVE_RETURN_IF_ERROR(s);
    REGSERVE_RETURN_IF_ERROR(next);
  }
  return absl::OkStatus();
}

absl::StatusOr<OpenInput> OpenStreamed(const Source& src,
                                       const StreamedGrayOptions& options) {
  REGSERVE_ASSIGN_OR_RETURN(OpenInput in, oiio_internal::OpenForReading(src));
  if (options.chunk_bytes > 0) {
    oiio_internal::SetStreamLayout(in.spec, in.container, in.is_tiff,
                                   options.chunk_bytes, &in.ours);
  }
  return in;
}

}  // namespace

absl::StatusOr<ImageSpec> ReadGrayscaleLayout(
    const std::string& path, const StreamedGrayOptions& options) {
  Source src;
  src.name = path;
  REGSERVE_ASSIGN_OR_RETURN(OpenInput in, OpenStreamed(src, options));
  try {
    in.input->close();
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("closing ", DescribeSource(src), " threw: ", e.what()));
  }
  return in.ours;
}

absl::StatusOr<Image> ReadGrayscaleCopyFile(
    const std::string& path, int64_t target_width, int64_t target_height,
    const StreamedGrayOptions& options) {
  Source src;
  src.name = path;
  REGSERVE_ASSIGN_OR_RETURN(OpenInput in, OpenStreamed(src, options));
  const ImageSpec& spec = in.ours;
  REGSERVE_RETURN_IF_ERROR(
      CheckLimits(src, spec, target_width, target_height, options));
  if (options.check_spec) REGSERVE_RETURN_IF_ERROR(options.check_spec(spec));
  REGSERVE_ASSIGN_OR_RETURN(
      const GrayKernel kernel,
      gray_internal::MakeGrayKernel(spec, target_width, target_height));
  const int workers = std::max(1, options.threads);
  REGSERVE_ASSIGN_OR_RETURN(Buffers b,
                            AllocateBuffers(spec, target_width, workers));
  ImageSpec gray;
  gray.width = target_width;
  gray.height = target_height;
  gray.channels = 1;
  gray.type = SampleType::kFloat32;
  REGSERVE_ASSIGN_OR_RETURN(Image out, Image::AllocateZeroed(gray));
  try {
    in.input->threads(workers);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("OpenImageIO threw: ", e.what()));
  }
  REGSERVE_RETURN_IF_ERROR(
      StreamRows(src, &in, kernel, workers, options, &b, &out));
  REGSERVE_RETURN_IF_ERROR(ParallelFor(
      static_cast<int>(std::min<int64_t>(workers, target_height)), [&](int t) {
        const int64_t n = std::min<int64_t>(workers, target_height);
        gray_internal::NormalizeRows(kernel.norm, target_height * t / n,
                                     target_height * (t + 1) / n, &out);
      }));
  try {
    in.input->close();
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("closing ", DescribeSource(src), " threw: ", e.what()));
  }
  if (options.metadata != nullptr) {
    *options.metadata = oiio_internal::MetadataOfSpec(in.spec);
  }
  return out;
}

}  // namespace regserve
