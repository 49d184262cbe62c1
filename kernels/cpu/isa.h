// The one CPU instruction-set chooser shared by every kernel family (fake_quant/, sign/, reduce/,
// quantize/): detection, the QATKIT_CPU_ISA environment override and set_isa(). Each family keeps
// one function table per ISA and looks the active one up through table_for().
#pragma once

namespace qatkit::kernels::cpu {

/// Instruction sets with their own kernel builds. kBaseline is portable C++ (always available);
/// kAvx2 is compiled with -mavx2 -mfma -mf16c -mpopcnt and needs all four at run time; kAvx512 (AVX-512
/// F/BW/VL + VNNI, on top of AVX2) has tables only where a family has an AVX-512 file (the integer
/// GEMMs; the sign family's binary_codes); every other family runs its AVX2 table under it. kAmx is kAvx512 plus Intel AMX tiles
/// (AMX-TILE + AMX-INT8, with the OS's permission for their state): the integer GEMM family's W8A8
/// kernel on int8 tiles and, where the CPU has AMX-BF16 too, its weight-only 4-bit kernel on bf16
/// tiles; every other kernel the AVX-512 table's (every family without an AMX table runs its
/// AVX-512 one under it).
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };
inline constexpr int kIsaCount = 4;

/// "baseline" / "avx2" / "avx512" / "amx".
const char* isa_name(Isa isa);

/// True on an AMD CPU (a table may take another kernel where one measured faster there).
bool cpu_is_amd();

/// True where the CPU has AMX-BF16 besides the tiles and permission of Isa::kAmx: the amx table's
/// weight-only 4-bit kernel on bf16 tiles needs it (its other kernels do not).
bool cpu_has_amx_bf16();

/// True when this build contains `isa`'s kernels and this CPU can run them.
bool isa_supported(Isa isa);

/// The ISA in use: the best supported one, unless overridden by set_isa() or the
/// QATKIT_CPU_ISA environment variable ("baseline", "avx2", "avx512" or "amx").
Isa active_isa();

/// Selects an ISA by name for every family; returns false (and changes nothing) for an unknown or
/// unsupported name.
bool set_isa(const char* name);

/// A family's table for `isa` (nullptr when `isa` is not supported). `avx2` / `avx512` are the
/// getters of the tables compiled for those ISAs, nullptr when the family's file was compiled
/// without that ISA (a non-x86 build) or the family has no AVX-512 file (kAvx512 then gives the AVX2
/// table). A getter is called only once the CPU is known to run its ISA: its body is compiled for
/// that ISA, and the compiler may use the ISA's registers anywhere in it (GCC copies an AVX-512
/// table with zmm moves, which raised SIGILL on an AVX2-only AMD EPYC when every getter was
/// called up front).
template <class Table>
const Table* table_for(Isa isa, const Table& baseline, const Table* (*avx2)(), const Table* (*avx512)() = nullptr,
                       const Table* (*amx)() = nullptr) {
  if (isa == Isa::kBaseline) return &baseline;
  if (!isa_supported(isa)) return nullptr;
  if (isa == Isa::kAmx && amx != nullptr) {
    if (const Table* t = amx()) return t;
  }
  if ((isa == Isa::kAvx512 || isa == Isa::kAmx) && avx512 != nullptr) {
    if (const Table* t = avx512()) return t;
  }
  return avx2 != nullptr ? avx2() : nullptr;
}

/// A family's table for the active ISA.
template <class Table>
const Table& active_table(const Table& baseline, const Table* (*avx2)(), const Table* (*avx512)() = nullptr,
                          const Table* (*amx)() = nullptr) {
  const Table* t = table_for(active_isa(), baseline, avx2, avx512, amx);
  return t ? *t : baseline;
}

}  // namespace qatkit::kernels::cpu
