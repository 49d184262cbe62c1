// CUDA kernel of _histogram_update: ATen ops on the current stream (bincount counts with atomics),
// the CPU kernel's bin arithmetic in the data's dtype (no fused multiply-add in ATen's elementwise
// kernels at this precision: sub, mul, div are separate ops), so the counts equal the CPU's.
// Values are not checked for NaN here (that would be a host sync): the observers check first.
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bincount.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../histogram.h"

namespace qatkit::ops {
namespace {

void histogram_update_cuda(const at::Tensor& rows, at::Tensor& histogram, const at::Tensor& lo, const at::Tensor& hi) {
  check_histogram_update_args(rows, histogram, lo, hi);
  const c10::cuda::CUDAGuard guard(rows.device());
  const std::int64_t channels = rows.size(0), bins = histogram.size(1);
  if (rows.numel() == 0) return;
  const at::Tensor lo_t = lo.to(rows.scalar_type()).reshape({channels, 1});  // the edges in the data's dtype
  const at::Tensor hi_t = hi.to(rows.scalar_type()).reshape({channels, 1});
  at::Tensor idx = rows.sub(lo_t).mul_(bins).div_(hi_t.sub(lo_t)).to(at::kLong).clamp_(0, bins - 1);
  idx.add_(at::arange(channels, idx.options()).mul_(bins).reshape({channels, 1}));
  const at::Tensor counts = at::bincount(idx.reshape(-1), {}, channels * bins);
  histogram.add_(counts.to(at::kDouble).reshape({channels, bins}));
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) { m.impl("_histogram_update", &histogram_update_cuda); }

}  // namespace qatkit::ops
