// The packing ops (packing.cpp): shared with their CPU kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>

namespace qatkit::ops {

/// Bytes per packed row of `k` codes.
std::int64_t packed_row_bytes(std::int64_t k, std::int64_t bits, const std::string& packing);

/// bits / offset / packing valid together, or ValueError naming `op` and the argument.
void check_packing_args(const char* op, std::int64_t bits, std::int64_t offset, const std::string& packing);

/// [lowest, highest] code the packing stores.
std::pair<std::int64_t, std::int64_t> packable_code_range(std::int64_t bits, std::int64_t offset,
                                                          const std::string& packing);

/// The device-generic implementations (ATen ops), behind the CPU kernel's checks.
at::Tensor pack_weights_impl(const at::Tensor& codes, std::int64_t bits, std::int64_t offset,
                             c10::string_view packing);
at::Tensor unpack_weights_impl(const at::Tensor& packed, std::int64_t bits, std::int64_t k, std::int64_t offset,
                               c10::string_view packing);

}  // namespace qatkit::ops
