// Writes an fp32 array as NumPy's .npy (format 1.0, little-endian '<f4', C order), for
// logits dumps that numpy.load reads directly.
#pragma once

#include <string>

#include "core/tensor.h"

namespace primus::infer {

// `t`: any float dtype and device (converted to fp32 host). Throws naming the path on I/O errors.
void write_npy_f32(const std::string& path, const Tensor& t);

}  // namespace primus::infer
