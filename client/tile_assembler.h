// Copyright regserve authors.
//
// TileAssembler: writes the streamed result tiles of a job into an image
// file, and can resume after an interruption.
//
// While tiles arrive, the pixels go into OUT.partial (raw, interleaved
// samples of the whole image, written in place) and the progress into
// OUT.partial.state (job id, layout and the count of tiles received in row-
// major order, replaced atomically after each tile). A .tif/.tiff output is
// encoded band by band (one row of tiles, read back from the raw file) as
// each band completes, into OUT.partial.tif, so that little is left to do
// when the last tile arrives and the image never has to fit in memory;
// Finish() encodes what is left, renames it to OUT and removes the partial
// files. Any other format is encoded by Finish() through
// regserve::WriteImageFile. A later run that finds the state of the same job
// continues from next_tile() (and encodes the bands received before from the
// raw file).
//
//   REGSERVE_ASSIGN_OR_RETURN(auto out, TileAssembler::Open("out.tif",
//   job_id)); watch from out->next_tile(); for each tile: out->AddTile(tile);
//   REGSERVE_RETURN_IF_ERROR(out->Finish());
//
// Tiles come RAW, ZSTD or DEFLATE (core/image/tile_wire_codec.h), each as
// its own `encoding` says.
//
// Errors: InvalidArgument for tiles that do not fit the layout or do not
// decode; Internal /
// the file system's error for I/O failures (the message names the file).
// Thread safety: not thread-safe; one assembler per output.
#ifndef REGSERVE_CLIENT_TILE_ASSEMBLER_H_
#define REGSERVE_CLIENT_TILE_ASSEMBLER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/image/image.h"
#include "core/image/tile_wire_codec.h"
#include "core/image/tiled_tiff_writer.h"
#include "regserve/v1/regserve.pb.h"

namespace regserve {

class TileAssembler {
 public:
  struct Layout {
    int64_t width = 0;
    int64_t height = 0;
    int channels = 0;
    int sample_type = 0;  // regserve.v1.SampleType
    int64_t tile_size = 0;
    int64_t tile_count = 0;
    bool operator==(const Layout& o) const {
      return width == o.width && height == o.height && channels == o.channels &&
             sample_type == o.sample_type && tile_size == o.tile_size &&
             tile_count == o.tile_count;
    }
  };

  // Opens the assembler for `output_path`. With `resume`, partial state of
  // the same `job_id` is kept (next_tile() > 0); otherwise, or when the state
  // belongs to another job, it starts over.
  static absl::StatusOr<std::unique_ptr<TileAssembler>> Open(
      const std::string& output_path, const std::string& job_id, bool resume);
  ~TileAssembler();

  // The first tile not yet received (tiles arrive in row-major order).
  int64_t next_tile() const { return next_tile_; }
  bool complete() const {
    return layout_.tile_count > 0 && next_tile_ >= layout_.tile_count;
  }
  const Layout& layout() const { return layout_; }

  // Stores one tile (its message carries the layout). A tile already
  // received is ignored; one beyond next_tile() is InvalidArgument (a gap).
  absl::Status AddTile(const v1::Tile& tile);

  // Encodes the output file from the received tiles and removes the partial
  // files. FailedPrecondition if tiles are missing.
  absl::Status Finish();

  // The partial files' paths (for tests and messages).
  std::string partial_path() const { return output_path_ + ".partial"; }
  std::string state_path() const { return output_path_ + ".partial.state"; }
  std::string encoded_path() const { return output_path_ + ".partial.tif"; }

 private:
  TileAssembler(std::string output_path, std::string job_id)
      : output_path_(std::move(output_path)), job_id_(std::move(job_id)) {}
  absl::Status StartLayout(const Layout& layout);
  absl::Status SaveState();
  absl::Status LoadState();
  bool TiffOutput() const;
  absl::StatusOr<ImageSpec> OutputSpec() const;  // the whole image's
  // Encodes the bands before `bands` that are not yet encoded.
  absl::Status EncodeBands(int64_t bands);

  const std::string output_path_;
  const std::string job_id_;
  Layout layout_;
  int64_t next_tile_ = 0;
  int fd_ = -1;
  TileWireDecoder decoder_;
  std::string samples_;                      // the decoded tile, reused
  std::unique_ptr<TiledTiffWriter> writer_;  // encoded_path(), when open
  int64_t bands_encoded_ = 0;
};

}  // namespace regserve

#endif  // REGSERVE_CLIENT_TILE_ASSEMBLER_H_
