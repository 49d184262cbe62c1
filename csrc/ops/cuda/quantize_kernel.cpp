// CUDA kernels of the quantize family: the CPU's shape/dtype/device checks, then the torch-free
// launchers of kernels/cuda/quantize_cuda.h on the current stream. No value checks (no host
// sync): qparams come from choose_qparams / the QAT modules, validated where they are created.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../../../kernels/cuda/quantize_cuda.h"
#include "../quantize_checks.h"

namespace qatkit::ops {
namespace {

at::Tensor quantize_affine_cuda(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                std::int64_t quant_min, std::int64_t quant_max, std::optional<std::int64_t> axis,
                                std::optional<std::int64_t> group_size, std::optional<at::ScalarType> dtype) {
  constexpr const char* op = "quantize_affine";
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor codes = at::empty(input.sizes(), input.options().dtype(code_dtype(op, dtype)));
  const QuantizeLaunch l =
      prepare_quantize(op, input, scale, zero_point, quant_min, quant_max, axis, group_size, codes);
  C10_CUDA_CHECK(kernels::cuda::launch_quantize(l.args, c10::cuda::getCurrentCUDAStream()));
  return codes;
}

at::Tensor dequantize_affine_cuda(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero_point,
                                  std::optional<std::int64_t> axis, std::optional<std::int64_t> group_size,
                                  std::optional<at::ScalarType> output_dtype) {
  constexpr const char* op = "dequantize_affine";
  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(dequantize_dtype(op, output_dtype)));
  const DequantizeLaunch l = prepare_dequantize(op, codes, scale, zero_point, axis, group_size, out);
  C10_CUDA_CHECK(kernels::cuda::launch_dequantize(l.args, c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qatkit, CUDA, m) {
  m.impl("quantize_affine", &quantize_affine_cuda);
  m.impl("dequantize_affine", &dequantize_affine_cuda);
}

}  // namespace qatkit::ops
