// The one CPU instruction-set chooser shared by every kernel family (fake_quant/, sign/, reduce/,
// quantize/): detection, the QATKIT_CPU_ISA environment override and set_isa(). Each family keeps
// one function table per ISA and looks the active one up through table_for().
#pragma once

namespace qatkit::kernels::cpu {

/// Instruction sets with their own kernel builds. kBaseline is portable C++ (always available);
/// kAvx2 is compiled with -mavx2 -mfma -mf16c and needs all three at run time.
enum class Isa : int { kBaseline = 0, kAvx2 = 1 };
inline constexpr int kIsaCount = 2;

/// "baseline" / "avx2".
const char* isa_name(Isa isa);

/// True when this build contains `isa`'s kernels and this CPU can run them.
bool isa_supported(Isa isa);

/// The ISA in use: the best supported one, unless overridden by set_isa() or the
/// QATKIT_CPU_ISA environment variable ("baseline" or "avx2").
Isa active_isa();

/// Selects an ISA by name for every family; returns false (and changes nothing) for an unknown or
/// unsupported name.
bool set_isa(const char* name);

/// A family's table for `isa` (nullptr when `isa` is not supported); `avx2` is nullptr when the
/// family's AVX2 file was compiled without AVX2 (a non-x86 build).
template <class Table>
const Table* table_for(Isa isa, const Table& baseline, const Table* avx2) {
  if (isa == Isa::kBaseline) return &baseline;
  return isa_supported(isa) ? avx2 : nullptr;
}

/// A family's table for the active ISA.
template <class Table>
const Table& active_table(const Table& baseline, const Table* avx2) {
  const Table* t = table_for(active_isa(), baseline, avx2);
  return t ? *t : baseline;
}

}  // namespace qatkit::kernels::cpu
