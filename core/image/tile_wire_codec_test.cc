// Copyright regserve authors.
#include "core/image/tile_wire_codec.h"

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>

#include "gtest/gtest.h"

namespace regserve {
namespace {

// A smooth gradient with a little noise, in the shape's sample type: like a
// photo, it compresses, and every byte of each sample varies.
std::string MakeSamples(const WireTileShape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> noise(-3, 3);
  std::string out(s.raw_bytes(), '\0');
  size_t i = 0;
  for (int64_t y = 0; y < s.height; ++y) {
    for (int64_t x = 0; x < s.width; ++x) {
      for (int c = 0; c < s.channels; ++c, ++i) {
        const double v = (x * 3 + y * 2 + c * 40) % 250 + noise(rng);
        if (s.type == SampleType::kUInt8) {
          out[i] = static_cast<char>(static_cast<uint8_t>(v));
        } else if (s.type == SampleType::kUInt16) {
          const uint16_t w = static_cast<uint16_t>(v * 257 + noise(rng));
          std::memcpy(&out[i * 2], &w, 2);
        } else {
          const float f = static_cast<float>(v / 255.0 + 1e-4 * noise(rng));
          std::memcpy(&out[i * 4], &f, 4);
        }
      }
    }
  }
  return out;
}

using Param = std::tuple<TileEncoding, SampleType, int>;

class TileWireCodecTest : public ::testing::TestWithParam<Param> {};

TEST_P(TileWireCodecTest, RoundTripsBitExactIncludingEdgeTiles) {
  const auto [encoding, type, channels] = GetParam();
  auto enc = TileWireEncoder::Create(encoding);
  ASSERT_TRUE(enc.ok()) << enc.status();
  TileWireDecoder dec;
  // A full tile, an edge column, an edge row, the corner, a single pixel.
  const int64_t sizes[][2] = {{256, 256}, {37, 256}, {256, 5}, {37, 5}, {1, 1}};
  for (const auto& wh : sizes) {
    WireTileShape shape{wh[0], wh[1], channels, type};
    const std::string raw = MakeSamples(shape, static_cast<uint32_t>(wh[0]));
    std::string data = raw;
    TileEncoding used = TileEncoding::kRaw;
    ASSERT_TRUE((*enc)->Encode(shape, &data, &used).ok());
    if (encoding != TileEncoding::kRaw && wh[0] * wh[1] > 1000) {
      // Photo-like samples shrink, so the encoder keeps its encoding.
      EXPECT_EQ(used, encoding);
      EXPECT_LT(data.size(), raw.size());
    }
    std::string back;
    ASSERT_TRUE(dec.Decode(used, shape, data, &back).ok());
    ASSERT_EQ(back.size(), raw.size());
    EXPECT_TRUE(back == raw) << wh[0] << "x" << wh[1];
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, TileWireCodecTest,
    ::testing::Combine(::testing::Values(TileEncoding::kRaw,
                                         TileEncoding::kZstd,
                                         TileEncoding::kDeflate),
                       ::testing::Values(SampleType::kUInt8,
                                         SampleType::kUInt16,
                                         SampleType::kFloat32),
                       ::testing::Values(1, 3, 4)));

TEST(TileWireCodec, NoiseIsSentRawRatherThanGrowing) {
  WireTileShape shape{128, 128, 3, SampleType::kUInt8};
  std::mt19937 rng(7);
  std::string raw(shape.raw_bytes(), '\0');
  for (char& c : raw) c = static_cast<char>(rng());
  for (TileEncoding e : {TileEncoding::kZstd, TileEncoding::kDeflate}) {
    auto enc = TileWireEncoder::Create(e);
    ASSERT_TRUE(enc.ok());
    std::string data = raw;
    TileEncoding used = e;
    ASSERT_TRUE((*enc)->Encode(shape, &data, &used).ok());
    EXPECT_EQ(used, TileEncoding::kRaw);
    EXPECT_TRUE(data == raw);
  }
}

TEST(TileWireCodec, CorruptOrMismatchedInputIsAnError) {
  WireTileShape shape{64, 64, 3, SampleType::kUInt16};
  const std::string raw = MakeSamples(shape, 1);
  TileWireDecoder dec;
  for (TileEncoding e : {TileEncoding::kZstd, TileEncoding::kDeflate}) {
    auto enc = TileWireEncoder::Create(e);
    ASSERT_TRUE(enc.ok());
    std::string data = raw;
    TileEncoding used;
    ASSERT_TRUE((*enc)->Encode(shape, &data, &used).ok());
    ASSERT_EQ(used, e);
    std::string out;
    // Truncated.
    absl::Status s =
        dec.Decode(e, shape, absl::string_view(data).substr(0, 10), &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    // Bytes flipped in the middle.
    std::string bad = data;
    for (size_t i = bad.size() / 3; i < bad.size() / 3 + 16; ++i)
      bad[i] ^= 0x5a;
    s = dec.Decode(e, shape, bad, &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    // Garbage, empty input, and a tile that decodes to another size.
    EXPECT_FALSE(dec.Decode(e, shape, "not compressed at all", &out).ok());
    EXPECT_FALSE(dec.Decode(e, shape, "", &out).ok());
    WireTileShape smaller = shape;
    smaller.height = 63;
    EXPECT_FALSE(dec.Decode(e, smaller, data, &out).ok());
    smaller.height = 65;
    EXPECT_FALSE(dec.Decode(e, smaller, data, &out).ok());
    // The decoder still works afterwards.
    ASSERT_TRUE(dec.Decode(e, shape, data, &out).ok());
    EXPECT_TRUE(out == raw);
  }
  std::string out;
  EXPECT_FALSE(dec.Decode(TileEncoding::kRaw, shape, "short", &out).ok());
  EXPECT_FALSE(dec.Decode(static_cast<TileEncoding>(9), shape, raw, &out).ok());
  WireTileShape empty{0, 4, 3, SampleType::kUInt8};
  EXPECT_FALSE(dec.Decode(TileEncoding::kZstd, empty, "", &out).ok());
}

TEST(TileWireCodec, EncoderRefusesDataOfTheWrongSize) {
  auto enc = TileWireEncoder::Create(TileEncoding::kZstd);
  ASSERT_TRUE(enc.ok());
  std::string data(100, 'x');
  TileEncoding used;
  EXPECT_EQ(
      (*enc)->Encode({10, 10, 3, SampleType::kUInt8}, &data, &used).code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(TileWireCodec, NamesParse) {
  for (TileEncoding e :
       {TileEncoding::kRaw, TileEncoding::kZstd, TileEncoding::kDeflate}) {
    auto p = ParseTileEncoding(TileEncodingName(e));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, e);
  }
  absl::Status s = ParseTileEncoding("lz4").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("raw, zstd or deflate"), std::string::npos);
}

}  // namespace
}  // namespace regserve
