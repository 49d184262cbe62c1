// W4A8 convs directly on their padded planes (QConvDirectArgs), what the ISA files share: the tiles of
// 16 output pixels (one per 32-bit lane) built from the planes with SSE2 loads and byte unpacks, and
// the chunks of tiles. Included inside each ISA file's own anonymous namespace (internal linkage:
// each file compiles its own copy with its own instruction set, as loops.h).
//
// conv2d_w4a8's patch-row route built each pixel's K codes in PyTorch's (c, i, j) order (a group of K
// spans channels and taps in that order), one 8-byte copy per (c, i) run, then gemm_w4 on the rows
// and, for an NCHW output, a float transpose: on Zen 5 the copies were a quarter and the transpose a
// sixteenth of a 364 x 32 x 8 x 8 -> 64 conv's time. Here a tile holds 16 output pixels, one per
// 32-bit lane: dword (q, p) of the tile is pixel p's codes of taps 4q .. 4q + 3, read from the planes
// (where 16 pixels run along one output row at stride 1, 16 consecutive bytes per tap) and
// interleaved by byte unpacks, once per tile for every output channel: the stored code + 128, the
// unsigned operand of vpdpbusd (AVX-512) or vpmaddubsw (AVX2) against a weight row's four codes,
// broadcast, so each lane sums one pixel's products; the group's init (QConvDirectArgs) takes out the 128
// and the zero point, so each lane's acc[g] is finish_w4's integer, and the float64 combination is
// the same exact products summed in group order. Outputs go straight into the NCHW planes (or, for
// NHWC, 4 channels of each pixel as one 16-byte store).

#pragma once

// Tiles of codes per chunk: every channel's pass re-reads the chunk, which stays in L2.
constexpr std::int64_t kChunkBytes = std::int64_t{384} << 10;

// Rows r0..r3 (16 pixels' codes of 4 consecutive taps) as 16 dwords (pixel p: its 4 codes), + 128,
// at dst (64 bytes): the ISA's store4 puts the four quarters (pixels 0-3, 4-7, 8-11, 12-15) together.
template <class Store4>
inline void interleave4(std::uint8_t* dst, __m128i r0, __m128i r1, __m128i r2, __m128i r3, const Store4& store4) {
  const __m128i t0 = _mm_unpacklo_epi8(r0, r1), t1 = _mm_unpackhi_epi8(r0, r1);
  const __m128i t2 = _mm_unpacklo_epi8(r2, r3), t3 = _mm_unpackhi_epi8(r2, r3);
  store4(dst, _mm_unpacklo_epi16(t0, t2), _mm_unpackhi_epi16(t0, t2), _mm_unpacklo_epi16(t1, t3),
         _mm_unpackhi_epi16(t1, t3));
}

inline __m128i load16(const std::int8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

struct Tile {
  std::int64_t yo[16];  // lane p's output offset (channel 0)
  int nv = 0;           // valid lanes
  bool simple = false;  // 16 valid lanes, one image, consecutive pixels (yo[p] = yo[0] + p * y_ps)
};

// Every tap's 16 codes, row(o) for tap offset o, as the tile's dwords.
template <class Row, class Store4>
inline void fill_quads(std::uint8_t* out, std::int64_t quads, const std::int64_t* koff, const Row& row,
                       const Store4& store4) {
  for (std::int64_t q = 0; q < quads; ++q) {
    const std::int64_t* o = koff + 4 * q;
    interleave4(out + 64 * q, row(o[0]), row(o[1]), row(o[2]), row(o[3]), store4);
  }
}

inline __m128i load8(const std::int8_t* p) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)); }

// The even bytes of a (pixels 0-7) then of b (8-15): 16 pixels at column stride 2.
inline __m128i even_bytes(__m128i a, __m128i b) {
  const __m128i m = _mm_set1_epi16(0x00FF);
  return _mm_packus_epi16(_mm_and_si128(a, m), _mm_and_si128(b, m));
}

// The tile of pixels [m0, m0 + nv) into A (K / 4 dwords of 16 lanes); lanes past nv repeat the last
// pixel (their outputs are not stored). vt: K * 16 + 16 bytes of scratch.
template <class Store4>
void build_tile(const QConvDirectArgs& g, std::int64_t m0, int nv, std::uint8_t* A, std::int8_t* vt, Tile& tile,
                const Store4& store4) {
  std::int64_t xo[16];
  for (int p = 0; p < 16; ++p) {
    const std::int64_t m = m0 + std::min(p, nv - 1), b = m / g.L, l = m % g.L;
    xo[p] = b * g.img + (l / g.wo) * g.row + (l % g.wo) * g.col;
    tile.yo[p] = b * g.y_img + l * g.y_ps;
  }
  tile.nv = nv;
  bool simple = nv == 16;
  for (int p = 1; p < 16; ++p) simple = simple && tile.yo[p] == tile.yo[0] + p * g.y_ps;
  tile.simple = simple;
  // the lanes' runs: consecutive pixels of one output row (xo a column stride apart)
  const std::int64_t cs = g.col;
  int runs = 0;
  int start[16];
  const std::int8_t* src[16];
  for (int p = 0; p < 16; ++p) {
    if (p == 0 || xo[p] != xo[p - 1] + cs) {
      start[runs] = p;
      src[runs++] = g.x + xo[p];
    }
  }
  const std::int64_t quads = g.K / 4;
  const std::int64_t* koff = g.koff;
  std::uint8_t* out = A;
  // one run of 16, two of 8 or four of 4 (a tile over 1, 2 or 4 rows of a 16+, 8 or 4 pixel wide
  // output) at column stride 1 or 2: each tap's codes from one to four loads put together in a register
  // (at stride 2 the even bytes of twice as many)
  const bool even = runs == 1 || (runs == 2 && start[1] == 8) || (runs == 4 && start[1] == 4 && start[2] == 8 && start[3] == 12);
  if (even && cs == 1) {
    const std::int8_t *x0 = src[0], *x1 = src[runs > 1 ? 1 : 0], *x2 = src[runs > 2 ? 2 : 0], *x3 = src[runs > 2 ? 3 : 0];
    if (runs == 1) return fill_quads(out, quads, koff, [&](std::int64_t o) { return load16(x0 + o); }, store4);
    if (runs == 2) {
      return fill_quads(out, quads, koff, [&](std::int64_t o) { return _mm_unpacklo_epi64(load8(x0 + o), load8(x1 + o)); }, store4);
    }
    return fill_quads(out, quads, koff, [&](std::int64_t o) {
      std::int32_t v[4];
      std::memcpy(v, x0 + o, 4);
      std::memcpy(v + 1, x1 + o, 4);
      std::memcpy(v + 2, x2 + o, 4);
      std::memcpy(v + 3, x3 + o, 4);
      return _mm_setr_epi32(v[0], v[1], v[2], v[3]);
    }, store4);
  }
  if (even && cs == 2) {  // reads one byte past a run's last code (the planes' slack covers the last)
    const std::int8_t *x0 = src[0], *x1 = src[runs > 1 ? 1 : 0], *x2 = src[runs > 2 ? 2 : 0], *x3 = src[runs > 2 ? 3 : 0];
    if (runs == 1) return fill_quads(out, quads, koff, [&](std::int64_t o) { return even_bytes(load16(x0 + o), load16(x0 + o + 16)); }, store4);
    if (runs == 2) return fill_quads(out, quads, koff, [&](std::int64_t o) { return even_bytes(load16(x0 + o), load16(x1 + o)); }, store4);
    return fill_quads(out, quads, koff, [&](std::int64_t o) {
      return even_bytes(_mm_unpacklo_epi64(load8(x0 + o), load8(x1 + o)), _mm_unpacklo_epi64(load8(x2 + o), load8(x3 + o)));
    }, store4);
  }
  // otherwise each tap's row of 16 codes assembled in vt, byte by byte where the column stride is
  // not 1, else by one 16-byte copy per run in lane order (each copy's excess is overwritten by the
  // next run's, the last one's by the next tap's row; the planes have 64 bytes of slack past their end)
  const std::int64_t K = g.K;
  if (cs != 1) {
    for (std::int64_t k = 0; k < K; ++k)
      for (int p = 0; p < 16; ++p) vt[k * 16 + p] = g.x[xo[p] + koff[k]];
  } else {
    for (std::int64_t k = 0; k < K; ++k) {
      std::int8_t* row = vt + k * 16;
      for (int r = 0; r < runs; ++r) std::memcpy(row + start[r], src[r] + koff[k], 16);
    }
  }
  for (std::int64_t q = 0; q < quads; ++q) {
    const std::int8_t* v = vt + q * 64;
    interleave4(out + 64 * q, load16(v), load16(v + 16), load16(v + 32), load16(v + 48), store4);
  }
}

// Pixels [m_begin, m_end) in chunks of tiles (each tile built by build_tile with the ISA's store4),
// then pass(A, tiles, nt) computes every output channel of a chunk's nt tiles.
template <class Store4, class Pass>
void conv_tiles_chunks(const QConvDirectArgs& g, std::int64_t m_begin, std::int64_t m_end, const Store4& store4,
                    const Pass& pass) {
  if (m_end <= m_begin || g.N <= 0) return;
  const std::int64_t tile_bytes = g.K * 16;
  const std::int64_t chunk_tiles = std::max<std::int64_t>(1, kChunkBytes / tile_bytes);
  struct TagA {};
  struct TagV {};
  struct TagT {};
  const BoundedScratch<std::uint8_t, TagA> a_buf(static_cast<std::size_t>(chunk_tiles * tile_bytes));
  const BoundedScratch<std::int8_t, TagV> v_buf(static_cast<std::size_t>(tile_bytes + 16));
  const BoundedScratch<Tile, TagT> t_buf(static_cast<std::size_t>(chunk_tiles));
  std::uint8_t* A = a_buf.get();
  Tile* tiles = t_buf.get();
  for (std::int64_t m0 = m_begin; m0 < m_end; m0 += chunk_tiles * 16) {
    const std::int64_t nt = std::min(chunk_tiles, (m_end - m0 + 15) / 16);
    for (std::int64_t t = 0; t < nt; ++t) {
      const std::int64_t mt = m0 + 16 * t;
      build_tile(g, mt, static_cast<int>(std::min<std::int64_t>(16, m_end - mt)), A + t * tile_bytes, v_buf.get(),
                 tiles[t], store4);
    }
    pass(static_cast<const std::uint8_t*>(A), static_cast<const Tile*>(tiles), nt);
  }
}

