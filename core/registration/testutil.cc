// Copyright regserve authors.
#include "core/registration/testutil.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/registration/metaimage.h"
#include "itkImage.h"
#include "itkImageFileReader.h"
#include "itkJPEGImageIO.h"
#include "itkPNGImageIO.h"

namespace regserve {
namespace testutil {

absl::StatusOr<Image> ReadGrayFloat(const std::string& path) {
  if (absl::EndsWith(path, ".mhd")) {
    auto meta = ReadMetaImage(path);
    if (!meta.ok()) return meta.status();
    if (meta->channels != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": expected 1 channel"));
    }
    auto img =
        Image::Allocate({meta->width, meta->height, 1, SampleType::kFloat32});
    if (!img.ok()) return img.status();
    std::memcpy(img->data(), meta->data.data(), img->size_bytes());
    return img;
  }
  using ItkImage = itk::Image<float, 2>;
  auto reader = itk::ImageFileReader<ItkImage>::New();
  reader->SetFileName(path);
  // Set the IO explicitly: no factory registration is needed.
  if (absl::EndsWith(path, ".png")) {
    reader->SetImageIO(itk::PNGImageIO::New());
  } else if (absl::EndsWith(path, ".jpg") || absl::EndsWith(path, ".jpeg")) {
    reader->SetImageIO(itk::JPEGImageIO::New());
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": only .png, .jpg and .mhd are supported"));
  }
  try {
    reader->Update();
  } catch (const itk::ExceptionObject& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("ITK could not read '", path, "': ", e.GetDescription()));
  }
  ItkImage::Pointer itk_image = reader->GetOutput();
  auto size = itk_image->GetLargestPossibleRegion().GetSize();
  auto img =
      Image::Allocate({static_cast<int64_t>(size[0]),
                       static_cast<int64_t>(size[1]), 1, SampleType::kFloat32});
  if (!img.ok()) return img.status();
  std::memcpy(img->data(), itk_image->GetBufferPointer(), img->size_bytes());
  return img;
}

Image Pad(const Image& image, int border, float value) {
  int64_t w = image.width() + 2 * border;
  int64_t h = image.height() + 2 * border;
  Image out = Image::Allocate({w, h, 1, SampleType::kFloat32}).value();
  float* o = out.as<float>();
  std::fill(o, o + w * h, value);
  const float* in = image.as<float>();
  for (int64_t y = 0; y < image.height(); ++y) {
    std::memcpy(o + (y + border) * w + border, in + y * image.width(),
                image.width() * sizeof(float));
  }
  return out;
}

Image DownsampleBox(const Image& image, int factor) {
  int64_t w = image.width() / factor;
  int64_t h = image.height() / factor;
  Image out = Image::Allocate({w, h, 1, SampleType::kFloat32}).value();
  const float* in = image.as<float>();
  float* o = out.as<float>();
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      double sum = 0;
      for (int dy = 0; dy < factor; ++dy) {
        const float* row = in + (y * factor + dy) * image.width() + x * factor;
        for (int dx = 0; dx < factor; ++dx) sum += row[dx];
      }
      o[y * w + x] = static_cast<float>(sum / (factor * factor));
    }
  }
  return out;
}

std::array<double, 2> FieldAt(const DisplacementField& f, double x, double y) {
  double gx = std::clamp((x - f.origin_x) / f.spacing_x, 0.0,
                         static_cast<double>(f.width - 1));
  double gy = std::clamp((y - f.origin_y) / f.spacing_y, 0.0,
                         static_cast<double>(f.height - 1));
  int64_t x0 = std::min<int64_t>(static_cast<int64_t>(gx), f.width - 1);
  int64_t y0 = std::min<int64_t>(static_cast<int64_t>(gy), f.height - 1);
  int64_t x1 = std::min<int64_t>(x0 + 1, f.width - 1);
  int64_t y1 = std::min<int64_t>(y0 + 1, f.height - 1);
  double fx = gx - x0, fy = gy - y0;
  auto lerp = [&](const std::vector<float>& v) {
    double top = v[y0 * f.width + x0] * (1 - fx) + v[y0 * f.width + x1] * fx;
    double bot = v[y1 * f.width + x0] * (1 - fx) + v[y1 * f.width + x1] * fx;
    return top * (1 - fy) + bot * fy;
  };
  return {lerp(f.dx), lerp(f.dy)};
}

float SampleBilinear(const Image& image, double x, double y, float outside) {
  if (x < 0 || y < 0 || x > image.width() - 1 || y > image.height() - 1) {
    return outside;
  }
  int64_t x0 = static_cast<int64_t>(x), y0 = static_cast<int64_t>(y);
  int64_t x1 = std::min<int64_t>(x0 + 1, image.width() - 1);
  int64_t y1 = std::min<int64_t>(y0 + 1, image.height() - 1);
  double fx = x - x0, fy = y - y0;
  const float* p = image.as<float>();
  int64_t w = image.width();
  double top = p[y0 * w + x0] * (1 - fx) + p[y0 * w + x1] * fx;
  double bot = p[y1 * w + x0] * (1 - fx) + p[y1 * w + x1] * fx;
  return static_cast<float>(top * (1 - fy) + bot * fy);
}

Image WarpWithField(const Image& moving, const DisplacementField& field,
                    int64_t width, int64_t height) {
  Image out = Image::Allocate({width, height, 1, SampleType::kFloat32}).value();
  float* o = out.as<float>();
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      std::array<double, 2> d = FieldAt(field, x, y);
      o[y * width + x] = SampleBilinear(moving, x + d[0], y + d[1]);
    }
  }
  return out;
}

Image WarpWithMap(
    const Image& image,
    const std::function<std::array<double, 2>(double, double)>& map) {
  Image out = Image::Allocate(image.spec()).value();
  float* o = out.as<float>();
  for (int64_t y = 0; y < image.height(); ++y) {
    for (int64_t x = 0; x < image.width(); ++x) {
      std::array<double, 2> q = map(x, y);
      o[y * image.width() + x] = SampleBilinear(image, q[0], q[1]);
    }
  }
  return out;
}

std::array<double, 6> FitAffine(const DisplacementField& f) {
  // Normal equations for [x y 1] -> qx and -> qy (3x3, solved by Cramer).
  double s[3][3] = {{0}};
  double bx[3] = {0}, by[3] = {0};
  for (int64_t j = 0; j < f.height; ++j) {
    for (int64_t i = 0; i < f.width; ++i) {
      double x = f.origin_x + i * f.spacing_x;
      double y = f.origin_y + j * f.spacing_y;
      double v[3] = {x, y, 1.0};
      double qx = x + f.dx[j * f.width + i];
      double qy = y + f.dy[j * f.width + i];
      for (int a = 0; a < 3; ++a) {
        for (int b = 0; b < 3; ++b) s[a][b] += v[a] * v[b];
        bx[a] += v[a] * qx;
        by[a] += v[a] * qy;
      }
    }
  }
  auto det3 = [](const double m[3][3]) {
    return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
           m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
           m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
  };
  double d = det3(s);
  auto solve = [&](const double rhs[3], double out[3]) {
    for (int c = 0; c < 3; ++c) {
      double m[3][3];
      for (int a = 0; a < 3; ++a) {
        for (int b = 0; b < 3; ++b) m[a][b] = b == c ? rhs[a] : s[a][b];
      }
      out[c] = det3(m) / d;
    }
  };
  double cx[3], cy[3];
  solve(bx, cx);
  solve(by, cy);
  return {cx[0], cx[1], cy[0], cy[1], cx[2], cy[2]};
}

std::array<double, 2> MeanDisplacement(const DisplacementField& f) {
  double sx = 0, sy = 0;
  for (size_t i = 0; i < f.dx.size(); ++i) {
    sx += f.dx[i];
    sy += f.dy[i];
  }
  double n = static_cast<double>(std::max<size_t>(1, f.dx.size()));
  return {sx / n, sy / n};
}

}  // namespace testutil
}  // namespace regserve
