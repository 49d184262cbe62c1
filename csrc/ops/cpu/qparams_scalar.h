// One channel's (scale, zero_point) from its min/max as scalar float32 arithmetic: the element-by-
// element form of qparams_from_min_max (../choose_qparams.cpp, torch.ao MinMaxObserver's
// _calculate_qparams), in the same operations and order, so the results are bit identical to the
// ATen composite. Files that include this are compiled with -ffp-contract=off (CMakeLists.txt): a
// fused multiply-add would round differently.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

namespace qatkit::ops {

struct ScalarQParams {
  float scale;
  std::int32_t zero_point;
};

inline ScalarQParams qparams_scalar(float mn, float mx, std::int64_t quant_min, std::int64_t quant_max,
                                    bool symmetric) {
  const float min_neg = std::fmin(mn, 0.0f);
  const float max_pos = std::fmax(mx, 0.0f);
  if (symmetric) {
    const float amax = std::fmax(-min_neg, max_pos);
    const float s = std::fmax(amax / (static_cast<float>(quant_max - quant_min) / 2.0f), FLT_EPSILON);
    return {s, static_cast<std::int32_t>(quant_min < 0 ? 0 : (quant_min + quant_max + 1) / 2)};
  }
  const float s = std::fmax((max_pos - min_neg) / static_cast<float>(quant_max - quant_min), FLT_EPSILON);
  const float zf = -std::nearbyint(min_neg / s) + static_cast<float>(quant_min);
  const float z = std::fmin(std::fmax(zf, static_cast<float>(quant_min)), static_cast<float>(quant_max));
  return {s, static_cast<std::int32_t>(z)};
}

}  // namespace qatkit::ops
