// Copyright regserve authors.
//
// The OpenImageIO sample format of a regserve SampleType, for the code that
// talks to OpenImageIO directly (image_io.cc, core/jobs/result_reader.cc).
#ifndef REGSERVE_CORE_IMAGE_OIIO_TYPE_H_
#define REGSERVE_CORE_IMAGE_OIIO_TYPE_H_

#include <OpenImageIO/typedesc.h>

#include "core/image/image.h"

namespace regserve {

// kUInt8 -> UINT8, kUInt16 -> UINT16, kFloat32 -> FLOAT.
OIIO::TypeDesc OiioTypeOf(SampleType type);

}  // namespace regserve

#endif  // REGSERVE_CORE_IMAGE_OIIO_TYPE_H_
