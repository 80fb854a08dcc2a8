// Copyright regserve authors.
#include "core/registration/metaimage.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/registration/test_temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace regserve {
namespace {

using ::testing::HasSubstr;

std::string TempDir() {
  std::string d = MakeTestTempDir("regserve_metaimage");
  EXPECT_FALSE(d.empty());
  return d;
}

void WriteString(const std::string& path, const std::string& s) {
  std::ofstream out(path, std::ios::binary);
  out << s;
}

TEST(MetaImage, WriteThenReadKeepsPixelsSpacingAndOrigin) {
  std::string dir = TempDir();
  Image img = Image::Allocate({5, 3, 1, SampleType::kFloat32}).value();
  for (int i = 0; i < 15; ++i) img.as<float>()[i] = 0.5f * i - 2.0f;
  ASSERT_TRUE(
      WriteMetaImage(dir + "/a.mhd", img, {4.0, 2.5}, {1.5, 0.75}).ok());
  auto back = ReadMetaImage(dir + "/a.mhd");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->width, 5);
  EXPECT_EQ(back->height, 3);
  EXPECT_EQ(back->channels, 1);
  EXPECT_DOUBLE_EQ(back->spacing[0], 4.0);
  EXPECT_DOUBLE_EQ(back->spacing[1], 2.5);
  EXPECT_DOUBLE_EQ(back->origin[0], 1.5);
  EXPECT_DOUBLE_EQ(back->origin[1], 0.75);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(back->data[i], 0.5f * i - 2.0f);
}

TEST(MetaImage, WriteRejectsWrongImages) {
  Image rgb = Image::Allocate({2, 2, 3, SampleType::kUInt8}).value();
  EXPECT_EQ(WriteMetaImage("/tmp/x.mhd", rgb, {1, 1}, {0, 0}).code(),
            absl::StatusCode::kInvalidArgument);
  Image f = Image::Allocate({2, 2, 1, SampleType::kFloat32}).value();
  EXPECT_EQ(WriteMetaImage("/tmp/x.png", f, {1, 1}, {0, 0}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteMetaImage("/nonexistent/dir/x.mhd", f, {1, 1}, {0, 0}).code(),
            absl::StatusCode::kInternal);
}

TEST(MetaImage, ReadsTheElastixExampleInt16) {
  const char* root = std::getenv("REGSERVE_TEST_DATA");
  ASSERT_NE(root, nullptr);
  std::string mhd = absl::StrCat(root, "/elastix_example/fixed.mhd");
  auto img = ReadMetaImage(mhd);
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->width, 256);
  EXPECT_EQ(img->height, 256);
  // Compare a few samples with the raw bytes.
  std::ifstream raw(absl::StrCat(root, "/elastix_example/fixed.raw"),
                    std::ios::binary);
  for (int idx : {0, 1000, 33000, 65535}) {
    raw.seekg(idx * 2);
    int16_t v;
    raw.read(reinterpret_cast<char*>(&v), 2);
    EXPECT_EQ(img->data[idx], static_cast<float>(v)) << idx;
  }
}

TEST(MetaImage, ReadsATwoChannelFieldAndLocalData) {
  std::string dir = TempDir();
  float data[2 * 3 * 2];
  for (int i = 0; i < 12; ++i) data[i] = static_cast<float>(i);
  std::string header =
      "ObjectType = Image\nNDims = 2\nBinaryData = True\n"
      "BinaryDataByteOrderMSB = False\nCompressedData = False\n"
      "TransformMatrix = 1 0 0 1\nOffset = 1.5 2.5\nCenterOfRotation = 0 0\n"
      "ElementSpacing = 4 6\nDimSize = 3 2\nAnatomicalOrientation = ??\n"
      "ElementNumberOfChannels = 2\nElementType = MET_FLOAT\n"
      "ElementDataFile = LOCAL\n";
  WriteString(
      dir + "/f.mhd",
      header + std::string(reinterpret_cast<char*>(data), sizeof(data)));
  auto field = ReadDisplacementField(dir + "/f.mhd");
  ASSERT_TRUE(field.ok()) << field.status();
  EXPECT_EQ(field->width, 3);
  EXPECT_EQ(field->height, 2);
  EXPECT_DOUBLE_EQ(field->origin_x, 1.5);
  EXPECT_DOUBLE_EQ(field->origin_y, 2.5);
  EXPECT_DOUBLE_EQ(field->spacing_x, 4);
  EXPECT_DOUBLE_EQ(field->spacing_y, 6);
  EXPECT_EQ(field->dx[4], 8.0f);
  EXPECT_EQ(field->dy[4], 9.0f);
}

TEST(MetaImage, RejectsBadHeaders) {
  std::string dir = TempDir();
  WriteString(dir + "/d.raw", std::string(16, '\0'));
  struct Case {
    const char* header;
    const char* want;
  } cases[] = {
      {"NDims = 3\nDimSize = 2 2 1\nElementType = MET_FLOAT\n"
       "ElementDataFile = d.raw\n",
       "NDims"},
      {"NDims = 2\nDimSize = 2 2\nElementType = MET_FLOAT\n"
       "BinaryDataByteOrderMSB = True\nElementDataFile = d.raw\n",
       "big-endian"},
      {"NDims = 2\nDimSize = 2 2\nElementType = MET_FLOAT\n"
       "CompressedData = True\nElementDataFile = d.raw\n",
       "compressed"},
      {"NDims = 2\nDimSize = 2 2\nElementType = MET_LONG_LONG\n"
       "ElementDataFile = d.raw\n",
       "ElementType"},
      {"NDims = 2\nDimSize = 4 4\nElementType = MET_FLOAT\n"
       "ElementDataFile = d.raw\n",
       "has 16 bytes"},
      {"NDims = 2\nDimSize = 2 2\nElementType = MET_FLOAT\n"
       "TransformMatrix = 0 1 1 0\nElementDataFile = d.raw\n",
       "TransformMatrix"},
      {"NDims = 2\nDimSize = 2 2\nElementType = MET_FLOAT\n"
       "ElementDataFile = ../d.raw\n",
       "next to the header"},
      {"NDims = 2\nDimSize = -2 2\nElementType = MET_FLOAT\n"
       "ElementDataFile = d.raw\n",
       "DimSize"},
  };
  for (const Case& c : cases) {
    WriteString(dir + "/h.mhd", c.header);
    auto img = ReadMetaImage(dir + "/h.mhd");
    ASSERT_FALSE(img.ok()) << c.header;
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(img.status().message()), HasSubstr(c.want));
  }
  // A corrupt header must be refused before it turns into an allocation:
  // 1048576 x 1048576 doubles is 8 TiB (bad_alloc, or the OOM killer).
  WriteString(dir + "/ten.raw", std::string(10, '\0'));
  const std::string huge[] = {
      "NDims = 2\nDimSize = 1048576 1048576\nElementType = MET_DOUBLE\n"
      "ElementNumberOfChannels = 4\nElementDataFile = ten.raw\n",
      "NDims = 2\nDimSize = 1048576 1048576\nElementType = MET_DOUBLE\n"
      "ElementDataFile = LOCAL\n0123456789",
      "NDims = 2\nDimSize = 1048576 1048576\nElementType = MET_DOUBLE\n"
      "ElementDataFile = LOCAL",  // no newline, no data
  };
  for (const std::string& header : huge) {
    WriteString(dir + "/huge.mhd", header);
    auto start = std::chrono::steady_clock::now();
    auto img = ReadMetaImage(dir + "/huge.mhd");
    EXPECT_LT(std::chrono::steady_clock::now() - start,
              std::chrono::seconds(1));
    ASSERT_FALSE(img.ok()) << header;
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument)
        << img.status();
    const std::string msg(img.status().message());
    EXPECT_THAT(msg, HasSubstr("huge.mhd"));
    EXPECT_THAT(
        msg,
        HasSubstr(absl::StrCat(
            "DimSize needs ",
            1048576ull * 1048576ull * 8 *
                (header.find("Channels = 4") != std::string::npos ? 4 : 1))));
  }
  EXPECT_THAT(std::string(ReadMetaImage(dir + "/huge.mhd").status().message()),
              HasSubstr("has 0 bytes"));
  WriteString(dir + "/huge.mhd", huge[0]);
  EXPECT_THAT(std::string(ReadMetaImage(dir + "/huge.mhd").status().message()),
              HasSubstr("ten.raw' has 10 bytes"));
  WriteString(dir + "/huge.mhd", huge[1]);
  EXPECT_THAT(std::string(ReadMetaImage(dir + "/huge.mhd").status().message()),
              HasSubstr("has 10 bytes"));
  // NaN compares false with both bounds, so it must be refused explicitly.
  WriteString(dir + "/nan.mhd",
              "NDims = 2\nDimSize = nan 2\nElementType = MET_FLOAT\n"
              "ElementDataFile = d.raw\n");
  EXPECT_THAT(std::string(ReadMetaImage(dir + "/nan.mhd").status().message()),
              HasSubstr("DimSize"));
  // A data file that is not a regular file (here a directory).
  ASSERT_EQ(::mkdir((dir + "/sub.raw").c_str(), 0700), 0);
  WriteString(dir + "/dirdata.mhd",
              "NDims = 2\nDimSize = 2 2\nElementType = MET_FLOAT\n"
              "ElementDataFile = sub.raw\n");
  EXPECT_EQ(ReadMetaImage(dir + "/dirdata.mhd").status().code(),
            absl::StatusCode::kInvalidArgument);
  // A one-channel image is not a deformation field.
  WriteString(dir + "/one.mhd",
              "NDims = 2\nDimSize = 2 2\nElementType = MET_FLOAT\n"
              "ElementDataFile = d.raw\n");
  EXPECT_EQ(ReadDisplacementField(dir + "/one.mhd").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadMetaImage(dir + "/missing.mhd").status().code(),
            absl::StatusCode::kNotFound);
  WriteString(dir + "/nodata.mhd",
              "NDims = 2\nDimSize = 2 2\nElementType = MET_FLOAT\n"
              "ElementDataFile = nothere.raw\n");
  EXPECT_EQ(ReadMetaImage(dir + "/nodata.mhd").status().code(),
            absl::StatusCode::kNotFound);
}

// Headers that ITK 5.2's MetaIO mishandles when it parses them itself: an
// NDims above 10 with a full TransformMatrix crashes it, a negative NDims
// makes it loop, and only its last NDims counts. All must be refused first.
TEST(MetaImage, RefusesHeadersThatBreakItk) {
  std::string dir = TempDir();
  WriteString(dir + "/d.raw", std::string(16, '\0'));
  static const char kNulInKey[] =
      "NDims\0x = 12\nDimSize = 2 2\nElementType = MET_FLOAT\n"
      "ElementDataFile = d.raw\n";
  std::string dims11, matrix11;
  for (int i = 0; i < 11; ++i) dims11 += " 2";
  for (int i = 0; i < 121; ++i) matrix11 += " 1";
  const std::string cases[] = {
      "NDims = 11\nDimSize =" + dims11 + "\nTransformMatrix =" + matrix11 +
          "\nElementType = MET_FLOAT\nElementDataFile = d.raw\n",
      "NDims = -5\nDimSize = 2 2\nElementType = MET_FLOAT\n"
      "ElementDataFile = d.raw\n",
      "NDims = 2\nDimSize = 2 2\nNDims: 12\nElementType = MET_FLOAT\n"
      "ElementDataFile = d.raw\n",
      std::string(kNulInKey, sizeof(kNulInKey) - 1),
      "NDims = 2\nDimSize\n= 2 2\nElementType = MET_FLOAT\n"
      "ElementDataFile = d.raw\n",
  };
  for (const std::string& header : cases) {
    WriteString(dir + "/h.mhd", header);
    auto start = std::chrono::steady_clock::now();
    auto img = ReadMetaImage(dir + "/h.mhd");
    EXPECT_LT(std::chrono::steady_clock::now() - start,
              std::chrono::seconds(1));
    ASSERT_FALSE(img.ok()) << header;
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument)
        << img.status();
  }
  // A FIFO as the header must not block the reader.
  ASSERT_EQ(::mkfifo((dir + "/fifo.mhd").c_str(), 0600), 0);
  EXPECT_EQ(ReadMetaImage(dir + "/fifo.mhd").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace regserve
