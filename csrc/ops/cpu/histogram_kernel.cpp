// CPU kernel of _histogram_update: one pass over the data with per-thread integer counts (rows
// split across threads, or one row's values in chunks), then added to the float64 histogram. The
// bin arithmetic is the composite's (../histogram.cpp) in the data's dtype, compiled without
// fused multiply-add (CMakeLists.txt), so the counts equal torch.histc's. NaN raises and leaves the
// histogram as it was (the cast of a NaN position is undefined; the observers check finiteness
// first, this keeps the op safe on its own).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <torch/library.h>

#include <atomic>
#include <algorithm>
#include <cmath>
#include <vector>

#include "../histogram.h"

namespace qatkit::ops {
namespace {

/// Adds the bins of x[0..n) to counts[0..bins); false when a value is NaN (counted nowhere). In
/// blocks: the bin indices first (a loop without stores to the counts, which the compiler
/// vectorizes), then the increments.
template <typename scalar_t>
bool count_values(const scalar_t* x, std::int64_t n, scalar_t lo, scalar_t hi, std::int64_t bins,
                  std::int64_t* counts) {
  const scalar_t width = hi - lo;
  const scalar_t nb = static_cast<scalar_t>(bins);
  const scalar_t top = nb - 1;
  constexpr std::int64_t kBlock = 256;
  std::int32_t idx[kBlock];
  int nan = 0;
  for (std::int64_t start = 0; start < n; start += kBlock) {
    const std::int64_t len = std::min(kBlock, n - start);
    const scalar_t* xb = x + start;
    for (std::int64_t i = 0; i < len; ++i) {
      const scalar_t v = xb[i];
      nan |= static_cast<int>(v != v);
      scalar_t pos = (v - lo) * nb / width;  // histc's arithmetic, in this order
      pos = pos > 0 ? pos : scalar_t(0);     // (NaN lands here: 0, and is reported below)
      pos = pos < top ? pos : top;           // pos in [nb - 1, nb]: the last bin, as trunc would give
      idx[i] = static_cast<std::int32_t>(pos);
    }
    for (std::int64_t i = 0; i < len; ++i) counts[idx[i]] += 1;
  }
  return nan == 0;
}

void histogram_update_cpu(const at::Tensor& rows_in, at::Tensor& histogram, const at::Tensor& lo,
                          const at::Tensor& hi) {
  check_histogram_update_args(rows_in, histogram, lo, hi);
  const at::Tensor rows = rows_in.contiguous();
  const std::int64_t channels = rows.size(0), n = rows.size(1), bins = histogram.size(1);
  if (rows.numel() == 0) return;
  const at::Tensor lo_c = lo.contiguous(), hi_c = hi.contiguous();
  const double* plo = lo_c.const_data_ptr<double>();
  const double* phi = hi_c.const_data_ptr<double>();
  double* hist = histogram.mutable_data_ptr<double>();
  // every count first (integers, per row or per chunk), then added to the histogram only when no
  // value was NaN: a rejected batch leaves the histogram as it was
  std::atomic<bool> finite{true};
  std::vector<std::int64_t> counts;
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "_histogram_update", [&] {
    const scalar_t* x = rows.const_data_ptr<scalar_t>();
    if (channels > 1 || n < 262144) {  // a row per task: each writes only its own counts row
      counts.assign(channels * bins, 0);
      at::parallel_for(0, channels, std::max<std::int64_t>(1, 131072 / std::max<std::int64_t>(n, 1)),
                       [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t c = begin; c < end; ++c) {
          if (!count_values<scalar_t>(x + c * n, n, static_cast<scalar_t>(plo[c]), static_cast<scalar_t>(phi[c]),
                                      bins, counts.data() + c * bins)) {
            finite = false;
          }
        }
      });
      return;
    }
    // one long row: chunks of it in parallel, each with its own counts, summed after
    // chunks of >= 128k values: below that, waking a second thread costs more than it saves
    const std::int64_t chunks = std::min<std::int64_t>(at::get_num_threads(), (n + 131071) / 131072);
    counts.assign(chunks * bins, 0);
    const std::int64_t per = (n + chunks - 1) / chunks;
    at::parallel_for(0, chunks, 1, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t k = begin; k < end; ++k) {
        const std::int64_t start = k * per, len = std::min(per, n - start);
        if (len > 0 && !count_values<scalar_t>(x + start, len, static_cast<scalar_t>(plo[0]),
                                               static_cast<scalar_t>(phi[0]), bins, counts.data() + k * bins)) {
          finite = false;
        }
      }
    });
    for (std::int64_t k = 1; k < chunks; ++k) {
      for (std::int64_t b = 0; b < bins; ++b) counts[b] += counts[k * bins + b];
    }
    counts.resize(bins);
  });
  TORCH_CHECK_VALUE(finite.load(), "_histogram_update: rows holds NaN; the histogram is left as it was");
  for (std::int64_t i = 0; i < channels * bins; ++i) hist[i] += static_cast<double>(counts[i]);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CPU, m) { m.impl("_histogram_update", &histogram_update_cpu); }

}  // namespace qatkit::ops
