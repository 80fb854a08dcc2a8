// Copyright regserve authors.
//
// Tiles on the wire in the encoding the client asks for, and results that
// the server writes under its --output_root (JobSpec.output_path), through
// a real regserved on loopback: driven by regctl and by the client library.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/regserve_client.h"
#include "core/image/image_io.h"
#include "core/image/tile_wire_codec.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"

namespace regserve {
namespace e2e {
namespace {

using Code = grpc::StatusCode;

std::string Fixed() {
  return TestData("itk_brain/BrainProtonDensitySlice.png");
}
std::string Moving() {
  return TestData("itk_brain/BrainProtonDensitySliceR10X13Y17.png");
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

// The names in `dir` (hidden ones too: a temporary file left behind).
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  return names;
}

class WireOutputE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    output_root_ = new std::string(MakeTempDir("regserve_wire_out"));
    daemon_ = new Daemon();
    ASSERT_TRUE(
        daemon_->Start(MakeTempDir("regserve_wire_data"),
                       {"--stream_tile_size=64", "--elastix_threads=1",
                        "--cpu_slots=2", "--output_root=" + *output_root_}))
        << ReadAll(daemon_->stderr_path());
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0) << ReadAll(daemon_->stderr_path());
    delete daemon_;
    delete output_root_;
  }

  static RegistrationClient Client() {
    RegistrationClient::Options o;
    o.address = daemon_->address();
    o.timeout = absl::Seconds(120);
    return RegistrationClient(o);
  }

  static CommandResult Submit(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"submit",   "--fixed", Fixed(),
                                     "--moving", Moving(),  "--transform",
                                     "rigid"};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunRegctl(daemon_->address(), args);
  }

  static Daemon* daemon_;
  static std::string* output_root_;
};
Daemon* WireOutputE2eTest::daemon_ = nullptr;
std::string* WireOutputE2eTest::output_root_ = nullptr;

// Every encoding gives regctl the same pixels, and the file the server
// writes to --output-path (its pyramidal TIFF, read through OpenImageIO)
// holds them too.
TEST_F(WireOutputE2eTest, EveryEncodingAndTheServerOutputHoldTheSamePixels) {
  const std::string dir = MakeTempDir("regserve_wire_client");
  std::vector<std::string> outputs;
  for (const std::string e : {"raw", "zstd", "deflate"}) {
    const std::string out = dir + "/" + e + ".tif";
    std::vector<std::string> extra = {"--output", out, "--tile-encoding", e};
    if (e == "raw") {
      extra.insert(extra.end(), {"--output-path", "sub/raw_server.tif"});
      ASSERT_EQ(mkdir((*output_root_ + "/sub").c_str(), 0755), 0);
    }
    const CommandResult r = Submit(extra);
    ASSERT_EQ(r.exit_code, 0) << e << ": " << r.err << r.out;
    outputs.push_back(out);
  }
  // regctl's default (zstd) too.
  const CommandResult r = Submit({"--output", dir + "/default.tif"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  outputs.push_back(dir + "/default.tif");
  const std::string server = *output_root_ + "/sub/raw_server.tif";
  outputs.push_back(server);
  for (size_t i = 1; i < outputs.size(); ++i) {
    std::string why;
    EXPECT_TRUE(SamePixels(outputs[0], outputs[i], &why))
        << outputs[i] << ": " << why;
  }
  auto image = ReadImageFile(server);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width(), 181);
  EXPECT_EQ(image->height(), 217);
  EXPECT_EQ(Entries(*output_root_ + "/sub"),
            std::vector<std::string>{"raw_server.tif"});
}

// With only --output-path, nothing is streamed: regctl says where the
// result is; an existing file is refused unless --overwrite-output.
TEST_F(WireOutputE2eTest, OutputPathAloneAndExistingFiles) {
  const CommandResult first = Submit({"--output-path", "only.tif"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const std::string path = *output_root_ + "/only.tif";
  EXPECT_NE(first.out.find("the server wrote " + path), std::string::npos)
      << first.out;
  ASSERT_TRUE(ReadImageFile(path).ok());
  const std::string before = ReadAll(path);

  const CommandResult again = Submit({"--output-path", "only.tif"});
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.err.find("ALREADY_EXISTS"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("--overwrite-output"), std::string::npos);

  // Replacing it: same job inputs, so the same pixels, in a new file.
  struct stat old_st;
  ASSERT_EQ(stat(path.c_str(), &old_st), 0);
  const CommandResult over =
      Submit({"--output-path", "only.tif", "--overwrite-output"});
  ASSERT_EQ(over.exit_code, 0) << over.err;
  struct stat new_st;
  ASSERT_EQ(stat(path.c_str(), &new_st), 0);
  EXPECT_NE(old_st.st_ino, new_st.st_ino);  // renamed over, not rewritten
  const std::string copy = MakeTempDir("regserve_wire_before") + "/b.tif";
  std::ofstream(copy, std::ios::binary) << before;
  std::string why;
  EXPECT_TRUE(SamePixels(path, copy, &why)) << why;

  // The client library: omit_tiles sends no tile event.
  RegistrationClient client = Client();
  v1::JobSpec spec;
  spec.set_transform(v1::TRANSFORM_KIND_RIGID);
  spec.set_output_path("lib.tif");
  int tiles = 0;
  std::string written;
  RegistrationClient::TileOptions t;
  t.omit_tiles = true;
  const grpc::Status s = client.Submit(
      spec, {Fixed(), Moving()},
      [&](const v1::JobEvent& e) {
        tiles += e.has_tile();
        if (e.has_completed()) written = e.completed().output_path();
        return true;
      },
      nullptr, nullptr, t);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(tiles, 0);
  EXPECT_EQ(written, *output_root_ + "/lib.tif");
  EXPECT_TRUE(SamePixels(path, written, &why)) << why;
}

// Outside the output root: refused at submit, PERMISSION_DENIED, nothing
// written anywhere.
TEST_F(WireOutputE2eTest, OutsideTheOutputRootIsPermissionDenied) {
  const std::string elsewhere = MakeTempDir("regserve_wire_elsewhere");
  ASSERT_EQ(symlink(elsewhere.c_str(), (*output_root_ + "/link").c_str()), 0);
  for (const std::string& p : std::vector<std::string>{
           "../escape.tif", elsewhere + "/abs.tif", "link/via.tif"}) {
    const CommandResult r = Submit({"--output-path", p, "--output",
                                    MakeTempDir("regserve_wire_x") + "/o.tif"});
    EXPECT_NE(r.exit_code, 0) << p;
    EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos)
        << p << ": " << r.err;
    EXPECT_NE(r.err.find("spec.output_path"), std::string::npos) << r.err;
    // Refused before the upload: no job ran.
    EXPECT_EQ(r.out.find("completed"), std::string::npos) << r.out;
  }
  EXPECT_TRUE(Entries(elsewhere).empty());
  EXPECT_FALSE(Exists(*output_root_ + "/../escape.tif"));
  // A directory that does not exist is the client's to fix.
  const CommandResult missing = Submit({"--output-path", "no/such/dir/a.tif"});
  EXPECT_NE(missing.err.find("INVALID_ARGUMENT"), std::string::npos)
      << missing.err;
}

TEST(WireOutputNoRootE2eTest, WithoutOutputRootOutputsAreRefused) {
  Daemon daemon;
  ASSERT_TRUE(daemon.Start(MakeTempDir("regserve_wire_noroot"),
                           {"--elastix_threads=1"}))
      << ReadAll(daemon.stderr_path());
  const CommandResult r =
      RunRegctl(daemon.address(), {"submit", "--fixed", Fixed(), "--moving",
                                   Moving(), "--output-path", "a.tif"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("no output root"), std::string::npos) << r.err;
  EXPECT_EQ(daemon.Stop(), 0);
}

// The client library: Watch in each encoding, decoded, equals RAW; an
// unknown encoding is INVALID_ARGUMENT naming the choices, on Watch and on
// Submit.
TEST_F(WireOutputE2eTest, WatchEncodingsDecodeToRawAndUnknownIsRefused) {
  RegistrationClient client = Client();
  std::string id;
  ASSERT_TRUE(client
                  .Submit(
                      [] {
                        v1::JobSpec s;
                        s.set_transform(v1::TRANSFORM_KIND_RIGID);
                        return s;
                      }(),
                      {Fixed(), Moving()},
                      [&](const v1::JobEvent& e) {
                        id = e.job_id();
                        return true;
                      })
                  .ok());
  const auto tiles_in = [&](v1::TileEncoding enc, int* compressed) {
    std::vector<std::string> raw;
    TileWireDecoder dec;
    RegistrationClient::TileOptions t;
    t.encoding = enc;
    const grpc::Status s = client.Watch(
        id, 0,
        [&](const v1::JobEvent& e) {
          if (!e.has_tile()) return true;
          const v1::Tile& tile = e.tile();
          const TileEncoding got =
              tile.encoding() == v1::TILE_ENCODING_ZSTD ? TileEncoding::kZstd
              : tile.encoding() == v1::TILE_ENCODING_DEFLATE
                  ? TileEncoding::kDeflate
                  : TileEncoding::kRaw;
          *compressed += got != TileEncoding::kRaw;
          std::string out;
          EXPECT_TRUE(dec.Decode(got,
                                 {tile.width(), tile.height(), tile.channels(),
                                  SampleType::kUInt8},
                                 tile.data(), &out)
                          .ok());
          raw.push_back(out);
          return true;
        },
        nullptr, t);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return raw;
  };
  int compressed = 0;
  const std::vector<std::string> raw =
      tiles_in(v1::TILE_ENCODING_RAW, &compressed);
  EXPECT_EQ(compressed, 0);
  ASSERT_EQ(raw.size(), 12u);
  for (v1::TileEncoding e :
       {v1::TILE_ENCODING_ZSTD, v1::TILE_ENCODING_DEFLATE}) {
    compressed = 0;
    EXPECT_TRUE(tiles_in(e, &compressed) == raw) << e;
    EXPECT_GT(compressed, 6) << e;  // most tiles shrink (the border is fill)
  }

  grpc::ClientContext ctx;
  v1::WatchRequest bad;
  bad.set_job_id(id);
  bad.set_tile_encoding(static_cast<v1::TileEncoding>(42));
  auto reader = client.stub()->Watch(&ctx, bad);
  v1::JobEvent ev;
  while (reader->Read(&ev)) {
  }
  const grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), Code::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("TILE_ENCODING_ZSTD"), std::string::npos)
      << s.error_message();

  grpc::ClientContext sctx;
  auto stream = client.stub()->Submit(&sctx);
  v1::SubmitRequest req;
  req.mutable_spec()->mutable_fixed()->set_server_path("a.png");
  req.mutable_spec()->mutable_moving()->set_server_path("b.png");
  req.set_tile_encoding(static_cast<v1::TileEncoding>(42));
  stream->Write(req);
  stream->WritesDone();
  while (stream->Read(&ev)) {
  }
  const grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), Code::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("tile_encoding"), std::string::npos)
      << st.error_message();
}

}  // namespace
}  // namespace e2e
}  // namespace regserve
