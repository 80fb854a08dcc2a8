// Copyright regserve authors.
#include "server/daemon_config.h"

#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "core/common/tile_grid.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

ABSL_DECLARE_FLAG(std::string, listen);
ABSL_DECLARE_FLAG(std::string, data_dir);
ABSL_DECLARE_FLAG(std::string, ram_budget);
ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(int, max_queue);
ABSL_DECLARE_FLAG(int, max_streams);
ABSL_DECLARE_FLAG(int, stream_threads);
ABSL_DECLARE_FLAG(int64_t, stream_tile_size);
ABSL_DECLARE_FLAG(std::string, max_message_size);
ABSL_DECLARE_FLAG(std::string, max_upload);
ABSL_DECLARE_FLAG(absl::Duration, upload_idle_timeout);
ABSL_DECLARE_FLAG(std::string, metrics_tokens);
ABSL_DECLARE_FLAG(std::string, auth_tokens);
ABSL_DECLARE_FLAG(std::string, tls_cert);
ABSL_DECLARE_FLAG(bool, insecure_listen_any);
ABSL_DECLARE_FLAG(double, gpu_refine_elastix_megapixels);
ABSL_DECLARE_FLAG(double, gpu_refine_elastix_iterations);
ABSL_DECLARE_FLAG(double, correction_elastix_megapixels);
ABSL_DECLARE_FLAG(double, correction_elastix_iterations);
ABSL_DECLARE_FLAG(int, shift_correction_passes);

namespace regserve {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Each test changes flags under a saver, which restores them afterwards.
class DaemonConfigTest : public ::testing::Test {
 protected:
  absl::FlagSaver saver_;
};

// The message of the error from DaemonConfigFromFlags; "" when it is OK.
std::string FlagError() {
  absl::StatusOr<DaemonConfig> config = DaemonConfigFromFlags();
  if (config.ok()) return "";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(config.status().message());
}

TEST_F(DaemonConfigTest, Defaults) {
  absl::StatusOr<DaemonConfig> c = DaemonConfigFromFlags();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen_address.host, "127.0.0.1");
  EXPECT_EQ(c->listen_address.port, 50051);
  EXPECT_EQ(c->resources.ram_bytes, 0u);
  EXPECT_EQ(c->resources.vram_bytes, 0u);
  EXPECT_EQ(c->resources.devices.preference, DevicePreference::kAuto);
  EXPECT_EQ(c->resources.elastix_threads, 0);
  EXPECT_EQ(c->resources.cpu_slots, 0);
  EXPECT_EQ(c->stream_threads, 8);
  EXPECT_EQ(c->max_message_bytes, 8u << 20);
  EXPECT_EQ(c->max_upload_bytes, 8ull << 30);
  EXPECT_FALSE(c->tls.enabled());
  EXPECT_THAT(ExposureWarnings(*c), IsEmpty());
  EXPECT_DOUBLE_EQ(c->elastix_before_gpu_refine.max_megapixels, 2.0);
  EXPECT_DOUBLE_EQ(c->elastix_before_gpu_refine.iteration_scale, 0.5);
  EXPECT_FALSE(c->elastix_before_gpu_refine.linear_stage);
}

TEST_F(DaemonConfigTest, ParsesValues) {
  absl::SetFlag(&FLAGS_listen, "[::1]:0");
  absl::SetFlag(&FLAGS_ram_budget, "8G");
  absl::SetFlag(&FLAGS_device, "cuda:0,2");
  absl::SetFlag(&FLAGS_stream_threads, 3);
  absl::StatusOr<DaemonConfig> c = DaemonConfigFromFlags();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen_address.host, "::1");
  EXPECT_EQ(c->resources.ram_bytes, 8ull << 30);
  EXPECT_EQ(c->resources.devices.preference, DevicePreference::kCuda);
  EXPECT_EQ(c->resources.devices.gpus, (std::vector<int>{0, 2}));
  EXPECT_EQ(c->stream_threads, 3);
}

TEST_F(DaemonConfigTest, BadValuesNameTheFlag) {
  absl::SetFlag(&FLAGS_listen, "nowhere");
  EXPECT_THAT(FlagError(), HasSubstr("--listen"));
  absl::SetFlag(&FLAGS_listen, "127.0.0.1:0");

  absl::SetFlag(&FLAGS_ram_budget, "lots");
  EXPECT_THAT(FlagError(), HasSubstr("--ram_budget"));
  absl::SetFlag(&FLAGS_ram_budget, "");

  absl::SetFlag(&FLAGS_device, "tpu");
  EXPECT_THAT(FlagError(), HasSubstr("--device"));
  absl::SetFlag(&FLAGS_device, "auto");

  absl::SetFlag(&FLAGS_max_upload, "8X");
  EXPECT_THAT(FlagError(), HasSubstr("--max_upload"));
  absl::SetFlag(&FLAGS_max_upload, "8G");

  for (const char* size : {"1K", "1M", "2G", "big"}) {
    absl::SetFlag(&FLAGS_max_message_size, size);
    EXPECT_THAT(FlagError(), HasSubstr("--max_message_size")) << size;
  }
  absl::SetFlag(&FLAGS_max_message_size, "2M");
  EXPECT_EQ(FlagError(), "");

  absl::SetFlag(&FLAGS_max_streams, 0);
  EXPECT_THAT(FlagError(), HasSubstr("--max_streams"));
  absl::SetFlag(&FLAGS_max_streams, 1);

  absl::SetFlag(&FLAGS_stream_threads, 0);
  EXPECT_THAT(FlagError(), HasSubstr("--stream_threads"));
  absl::SetFlag(&FLAGS_stream_threads, 1);

  absl::SetFlag(&FLAGS_upload_idle_timeout, absl::ZeroDuration());
  EXPECT_THAT(FlagError(), HasSubstr("--upload_idle_timeout"));
  absl::SetFlag(&FLAGS_upload_idle_timeout, absl::Seconds(1));

  absl::SetFlag(&FLAGS_gpu_refine_elastix_megapixels, -1.0);
  EXPECT_THAT(FlagError(), HasSubstr("--gpu_refine_elastix_megapixels"));
  absl::SetFlag(&FLAGS_gpu_refine_elastix_megapixels, 0.0);
  EXPECT_EQ(FlagError(), "");
  for (double x : {0.0, -0.5, 101.0}) {
    absl::SetFlag(&FLAGS_gpu_refine_elastix_iterations, x);
    EXPECT_THAT(FlagError(), HasSubstr("--gpu_refine_elastix_iterations"));
  }
  absl::SetFlag(&FLAGS_gpu_refine_elastix_iterations, 1.0);
  absl::SetFlag(&FLAGS_correction_elastix_megapixels, -1.0);
  EXPECT_THAT(FlagError(), HasSubstr("--correction_elastix_megapixels"));
  absl::SetFlag(&FLAGS_correction_elastix_megapixels, 0.5);
  absl::SetFlag(&FLAGS_correction_elastix_iterations, 0.0);
  EXPECT_THAT(FlagError(), HasSubstr("--correction_elastix_iterations"));
  absl::SetFlag(&FLAGS_correction_elastix_iterations, 0.25);
  for (int passes : {-1, 21}) {
    absl::SetFlag(&FLAGS_shift_correction_passes, passes);
    EXPECT_THAT(FlagError(), HasSubstr("--shift_correction_passes"));
  }
  absl::SetFlag(&FLAGS_shift_correction_passes, 0);
  EXPECT_EQ(FlagError(), "");
  absl::SetFlag(&FLAGS_shift_correction_passes, 2);

  absl::SetFlag(&FLAGS_metrics_tokens, "/some/file");
  EXPECT_THAT(FlagError(), HasSubstr("--metrics_listen"));
  absl::SetFlag(&FLAGS_metrics_tokens, "");
  EXPECT_EQ(FlagError(), "");
}

// What the core validates is passed through untouched: the core's rule is
// the only one (e.g. TileGrid::kMaxEdge for the tile size).
TEST_F(DaemonConfigTest, LeavesTheCoresChecksToTheCore) {
  absl::SetFlag(&FLAGS_stream_tile_size, TileGrid::kMaxEdge);
  absl::StatusOr<DaemonConfig> c = DaemonConfigFromFlags();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->stream_tile_size, TileGrid::kMaxEdge);
  absl::SetFlag(&FLAGS_stream_tile_size, 500);
  absl::SetFlag(&FLAGS_max_queue, 0);
  absl::SetFlag(&FLAGS_data_dir, "");
  absl::SetFlag(&FLAGS_max_upload, "0");
  EXPECT_EQ(FlagError(), "");
}

TEST_F(DaemonConfigTest, UnprotectedNonLoopbackListenIsRefused) {
  absl::SetFlag(&FLAGS_listen, "0.0.0.0:0");
  EXPECT_THAT(FlagError(), HasSubstr("refusing to listen on 0.0.0.0:0"));
  EXPECT_THAT(FlagError(), HasSubstr("--insecure_listen_any"));

  absl::SetFlag(&FLAGS_insecure_listen_any, true);
  absl::StatusOr<DaemonConfig> c = DaemonConfigFromFlags();
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(ExposureWarnings(*c).size(), 1u);
  EXPECT_THAT(ExposureWarnings(*c)[0],
              HasSubstr("WITHOUT TLS AND WITHOUT AUTHENTICATION"));
  absl::SetFlag(&FLAGS_insecure_listen_any, false);

  // Tokens alone, or TLS alone, are enough to start, with a warning.
  absl::SetFlag(&FLAGS_auth_tokens, "/tokens");
  c = DaemonConfigFromFlags();
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(ExposureWarnings(*c).size(), 1u);
  EXPECT_THAT(ExposureWarnings(*c)[0], HasSubstr("without TLS"));
  absl::SetFlag(&FLAGS_auth_tokens, "");
  absl::SetFlag(&FLAGS_tls_cert, "/server.pem");
  c = DaemonConfigFromFlags();
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(ExposureWarnings(*c).size(), 1u);
  EXPECT_THAT(ExposureWarnings(*c)[0], HasSubstr("with TLS but no"));
}

TEST(ExposureWarningsTest, MetricsOffLoopbackWithoutTokens) {
  DaemonConfig c;
  c.listen_address.host = "127.0.0.1";
  c.metrics_listen = "0.0.0.0:9464";
  ASSERT_EQ(ExposureWarnings(c).size(), 1u);
  EXPECT_THAT(ExposureWarnings(c)[0], HasSubstr("without --metrics_tokens"));
  c.metrics_tokens = "/metrics-tokens";
  EXPECT_THAT(ExposureWarnings(c), IsEmpty());
  c.metrics_tokens.clear();
  c.metrics_listen = "127.0.0.1:0";
  EXPECT_THAT(ExposureWarnings(c), IsEmpty());
}

TEST(FlagNamesInCoreMessageTest, NamesTheFlags) {
  EXPECT_EQ(FlagNamesInCoreMessage("max_queue must be >= 1"),
            "--max_queue must be >= 1");
  EXPECT_EQ(FlagNamesInCoreMessage(
                "max_upload_bytes and max_pixels must be positive"),
            "--max_upload and --max_image_pixels must be positive");
  EXPECT_EQ(FlagNamesInCoreMessage(
                "default_max_registration_megapixels must be positive"),
            "--max_registration_megapixels must be positive");
  EXPECT_EQ(FlagNamesInCoreMessage("stream_tile_size: must be a multiple of "
                                   "16 in [16, 8192], got 500"),
            "--stream_tile_size: must be a multiple of 16 in [16, 8192], got "
            "500");
  EXPECT_EQ(FlagNamesInCoreMessage("data_dir is required"),
            "--data_dir is required");
}

TEST(FlagNamesInCoreMessageTest, LeavesPathsAndOtherWordsAlone) {
  EXPECT_EQ(FlagNamesInCoreMessage("input_root '/srv/input_root' is not an "
                                   "existing directory"),
            "--input_root '/srv/input_root' is not an existing directory");
  EXPECT_EQ(FlagNamesInCoreMessage("bad data_dir \"/x/data_dir\": denied"),
            "bad --data_dir \"/x/data_dir\": denied");
  EXPECT_EQ(FlagNamesInCoreMessage("--max_queue and max_queue_x stay"),
            "--max_queue and max_queue_x stay");
  EXPECT_EQ(FlagNamesInCoreMessage("pipeline_threads must be >= 0"),
            "pipeline_threads must be >= 0");
  EXPECT_EQ(FlagNamesInCoreMessage(""), "");
}

}  // namespace
}  // namespace regserve
