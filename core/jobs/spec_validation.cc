// Copyright regserve authors.
#include "core/jobs/spec_validation.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/registration/registration.h"

namespace regserve {
namespace {

constexpr int kMaxCustomParameters = 8;
constexpr size_t kMaxParameterBytes = 1 << 20;
constexpr size_t kMaxLabelBytes = 256;
constexpr size_t kMaxPathBytes = 4096;
constexpr int kMaxPriority = 1000;

absl::Status ValidateUploadName(const std::string& field,
                                absl::string_view name) {
  size_t dot = name.rfind('.');
  absl::string_view ext = dot == absl::string_view::npos ? absl::string_view()
                                                         : name.substr(dot + 1);
  bool ok = !ext.empty() && ext.size() <= 8;
  for (char c : ext) {
    ok = ok && absl::ascii_isalnum(static_cast<unsigned char>(c));
  }
  if (!ok || name.size() > 255) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".upload.file_name '", name.substr(0, 64),
        "' must end in a file extension naming the format (e.g. scan.tif)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateSource(ImageRole role, const ImageSource& src,
                            const SpecDefaults& d) {
  const std::string field = SourceField(role);
  const bool has_path = !src.path.empty();
  const bool has_upload = src.upload_bytes > 0 || !src.upload_name.empty();
  if (has_path && has_upload) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": give either server_path or upload, not both"));
  }
  if (!has_path && !has_upload) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": missing: give a server_path or upload the image"));
  }
  if (has_path) {
    if (src.path.size() > kMaxPathBytes ||
        src.path.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".server_path is not a valid path"));
    }
    return absl::OkStatus();
  }
  if (src.upload_bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".upload.byte_size must be > 0"));
  }
  if (src.upload_bytes > d.max_upload_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".upload.byte_size ", src.upload_bytes,
                     " exceeds the limit of ", d.max_upload_bytes, " bytes"));
  }
  return ValidateUploadName(field, src.upload_name);
}

absl::Status ValidateOptions(const JobOptions& o) {
  if (static_cast<int>(o.transform) < 0 || static_cast<int>(o.transform) > 2) {
    return absl::InvalidArgumentError(
        "spec.transform is not a known transform");
  }
  if (static_cast<int>(o.interpolation) < 0 ||
      static_cast<int>(o.interpolation) > 2) {
    return absl::InvalidArgumentError(
        "spec.interpolation is not a known interpolation");
  }
  if (static_cast<int>(o.device) < 0 || static_cast<int>(o.device) > 2) {
    return absl::InvalidArgumentError("spec.device is not a known device");
  }
  if (static_cast<int>(o.refine) < 0 || static_cast<int>(o.refine) > 2) {
    return absl::InvalidArgumentError("spec.refine is not a known mode");
  }
  if (!std::isfinite(o.max_registration_megapixels) ||
      o.max_registration_megapixels < 0) {
    return absl::InvalidArgumentError(
        "spec.max_registration_megapixels must be >= 0 (0 = server default)");
  }
  if (static_cast<int>(o.compression) < 0 ||
      static_cast<int>(o.compression) > 3) {
    return absl::InvalidArgumentError(
        "spec.compression is not a known compression (none, deflate, zstd, "
        "jpeg)");
  }
  if (o.jpeg_quality < 0 || o.jpeg_quality > 100) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.jpeg_quality must be from 1 to 100 (0 = ", kDefaultJpegQuality,
        "), not ", o.jpeg_quality));
  }
  return absl::OkStatus();
}

absl::Status ValidateParameters(const std::vector<std::string>& texts) {
  if (texts.size() > static_cast<size_t>(kMaxCustomParameters)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.elastix_parameters: at most ", kMaxCustomParameters, " files"));
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string field = absl::StrCat("spec.elastix_parameters[", i, "]");
    if (texts[i].size() > kMaxParameterBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " is larger than ", kMaxParameterBytes, " bytes"));
    }
    absl::Status s = ValidateParameterText(texts[i]);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string SourceField(ImageRole role) {
  return absl::StrCat("spec.", RoleName(role));
}

std::string UploadExtension(absl::string_view name) {
  return absl::AsciiStrToLower(name.substr(name.rfind('.') + 1));
}

absl::StatusOr<JobSpec> ValidateJobSpec(const JobSpec& in,
                                        const SpecDefaults& d) {
  JobSpec spec = in;
  REGSERVE_RETURN_IF_ERROR(ValidateSource(ImageRole::kFixed, spec.fixed, d));
  REGSERVE_RETURN_IF_ERROR(ValidateSource(ImageRole::kMoving, spec.moving, d));
  if (spec.options.device == DevicePreference::kUnspecified) {
    spec.options.device = d.device;
  }
  REGSERVE_RETURN_IF_ERROR(ValidateOptions(spec.options));
  if (spec.options.max_registration_megapixels == 0) {
    spec.options.max_registration_megapixels = d.max_registration_megapixels;
  }
  if (spec.options.jpeg_quality == 0) {
    spec.options.jpeg_quality = kDefaultJpegQuality;
  }
  REGSERVE_RETURN_IF_ERROR(ValidateParameters(spec.custom_parameters));
  if (spec.priority < -kMaxPriority || spec.priority > kMaxPriority) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.priority must be in [", -kMaxPriority, ", ", kMaxPriority, "]"));
  }
  if (!std::isfinite(spec.fill_value)) {
    return absl::InvalidArgumentError(
        "spec.fill_value must be a finite number");
  }
  // Where it may go is OutputRoot's to say, at CreateJob (file system).
  if (spec.output_path.size() > kMaxPathBytes ||
      spec.output_path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("spec.output_path is not a valid path");
  }
  if (spec.client_label.size() > kMaxLabelBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.client_label is longer than ", kMaxLabelBytes, " bytes"));
  }
  return spec;
}

}  // namespace regserve
