// Portable fake-quant chunk functions: the scalar bodies, left to the compiler's vectorizer.
#include "fake_quant_cpu.h"
#include "loops.h"

namespace qatkit::kernels::cpu {
namespace {

struct ScalarVec {
  template <typename S>
  static std::uint32_t fwd8_const(const S* x, S* y, float s, float inv, float z, float qmin, float qmax) {
    return detail::scalar8_const<S>(x, y, s, inv, z, qmin, qmax);
  }
  template <typename S>
  static std::uint32_t fwd16_const(const S* x, S* y, float s, float inv, float z, float qmin, float qmax) {
    return detail::scalar8_const<S>(x, y, s, inv, z, qmin, qmax) |
           (detail::scalar8_const<S>(x + 8, y + 8, s, inv, z, qmin, qmax) << 8);
  }
  template <typename S>
  static std::uint32_t fwd8_vary(const S* x, S* y, const float* s, const float* z, float qmin, float qmax) {
    return detail::scalar8_vary<S>(x, y, s, z, qmin, qmax);
  }
  template <typename S>
  static void lsq8(const S* x, const S* dy, S* dx, float s, float inv, float lo, float hi, double* ds, double* dz) {
    detail::lsq8_scalar<S>(x, dy, dx, s, inv, lo, hi, ds, dz);
  }
  template <typename S>
  static void bwd8(const S* g, std::uint8_t bits, S* dx) {
    for (int k = 0; k < 8; ++k) dx[k] = ((bits >> k) & 1u) ? g[k] : S{};
  }
};

}  // namespace

const FakeQuantKernels& fake_quant_baseline() {
  static const FakeQuantKernels k{&detail::forward_dispatch<ScalarVec>,     &detail::backward_dispatch<ScalarVec>,
                                  &detail::qparams_valid_scalar,           &detail::lsq_run_dispatch<ScalarVec>,
                                  &detail::lsq_row_dispatch,               &detail::pact_run_dispatch};
  return k;
}

}  // namespace qatkit::kernels::cpu
