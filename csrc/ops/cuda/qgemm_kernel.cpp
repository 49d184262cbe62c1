// CUDA kernels of the integer GEMM family (linear_int8, linear_w2a8, linear_w1a8): the CPU's
// checks, the input rows quantized into an int8 buffer on the device, then the torch-free
// launchers of kernels/cuda/qgemm_cuda.h on the current stream; the same bits as the CPU.
// conv2d_int8 has no CUDA kernel (the dispatcher says so).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../../../kernels/cuda/qgemm_cuda.h"
#include "../qgemm_checks.h"

namespace qatkit::ops {
namespace {

at::Tensor linear_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                       const at::Tensor& out_scale, double act_scale, std::int64_t act_zero_point,
                       std::int64_t act_quant_min, std::int64_t act_quant_max, const std::optional<at::Tensor>& bias,
                       int weight_bits) {
  const std::int32_t shift = check_linear_int8_args(input, weight, corr, out_scale, act_scale, act_zero_point,
                                                    act_quant_min, act_quant_max, bias, weight_bits);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), c = corr.contiguous(), os = out_scale.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const std::int64_t N = w.size(0), K = x.size(-1);
  const std::int64_t K_row = weight_bits == 8 ? K : w.size(1) * (8 / weight_bits);
  const auto rows = rows_and_output_shape(x, N);
  const std::int64_t M = rows.first;
  const std::vector<std::int64_t>& shape = rows.second;
  at::Tensor y = at::empty(shape, input.options());
  if (y.numel() == 0) return y;
  at::Tensor a = at::empty({M, K_row}, input.options().dtype(at::kChar));
  at::Tensor a_sum = at::empty({M}, input.options().dtype(at::kInt));
  const kernels::ActQuantArgs q = act_quant_args(act_scale, act_zero_point, act_quant_min, act_quant_max, shift);
  C10_CUDA_CHECK(kernels::cuda::launch_quantize_rows(x.data_ptr<float>(), a.data_ptr<std::int8_t>(),
                                                     a_sum.data_ptr<std::int32_t>(), M, K, K_row, q, stream));
  if (weight_bits == 8) {
    kernels::QGemmArgs g;
    g.a = a.data_ptr<std::int8_t>();
    g.w = w.data_ptr<std::int8_t>();
    g.corr = c.data_ptr<std::int32_t>();
    g.out_scale = os.data_ptr<float>();
    g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
    g.y = y.data_ptr<float>();
    g.M = M;
    g.N = N;
    g.K = K;
    g.y_rs = N;
    C10_CUDA_CHECK(kernels::cuda::launch_gemm_s8(g, stream));
  } else {
    kernels::QGemmPackedArgs g;
    g.a = a.data_ptr<std::int8_t>();
    g.a_sum = a_sum.data_ptr<std::int32_t>();
    g.w = w.data_ptr<std::uint8_t>();
    g.corr = c.data_ptr<std::int32_t>();
    g.out_scale = os.data_ptr<float>();
    g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
    g.y = y.data_ptr<float>();
    g.M = M;
    g.N = N;
    g.K_pad = K_row;
    g.y_rs = N;
    C10_CUDA_CHECK(kernels::cuda::launch_gemm_packed(g, weight_bits, stream));
  }
  return y;
}

at::Tensor linear_int8_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double s, std::int64_t z, std::int64_t lo, std::int64_t hi,
                            const std::optional<at::Tensor>& bias) {
  return linear_cuda(input, weight, corr, out_scale, s, z, lo, hi, bias, 8);
}

at::Tensor linear_w2a8_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double s, std::int64_t z, std::int64_t lo, std::int64_t hi,
                            const std::optional<at::Tensor>& bias) {
  return linear_cuda(input, weight, corr, out_scale, s, z, lo, hi, bias, 2);
}

at::Tensor linear_w1a8_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& corr,
                            const at::Tensor& out_scale, double s, std::int64_t z, std::int64_t lo, std::int64_t hi,
                            const std::optional<at::Tensor>& bias) {
  return linear_cuda(input, weight, corr, out_scale, s, z, lo, hi, bias, 1);
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) {
  m.impl("linear_int8", &linear_int8_cuda);
  m.impl("linear_w2a8", &linear_w2a8_cuda);
  m.impl("linear_w1a8", &linear_w1a8_cuda);
}

}  // namespace qatkit::ops
