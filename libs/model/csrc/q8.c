/*
 * Q8_0 head kernels: the dot products of one tile of 4 rows of a Q8_0 table with 1 or 2 f32
 * vectors (libs/model/src/q8.rs has the tile layout and `reference_dot`, the definition every
 * function here matches bit for bit).
 *
 * The definition has 16 lanes; lane l of block b takes the block's values l and l + 16:
 *     t = q[l] * x[l];  t = fma(q[l + 16], x[l + 16], t);  acc[l] = fma(d_b, t, acc[l])
 * then acc[l] + acc[l + 8], then + [l + 4], + [l + 2], + [l + 1]. AVX-512 keeps the 16 lanes in
 * one register, AVX2 in two (lanes 0-7 and 8-15); both ISAs define the same operations on their
 * 16-lane type (zero, load, widen 16 int8, set1, mul, fmadd, sum) and one kernel body,
 * NQ8_DEFINE_TILE, is written over them, so the two differ only in register width.
 *
 * Each function carries its own target attribute and is called only after runtime CPU detection;
 * the file is built without -march and with -ffp-contract=off (every FMA written out rounds once,
 * like f32::mul_add in the reference; no multiply and add are fused behind our back). Callers
 * check every length: `values` holds one tile (4 rows of `blocks` blocks), `scales` its 4 * blocks
 * scales, each vector 32 * blocks floats, `out` 4 * V floats (row-major).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define NQ8_BLOCK 32
#define NQ8_TILE 4
/* Blocks whose scales are widened to f32 at once (per row of the tile). */
#define NQ8_CHUNK 16
/* Software prefetch distance into the tile stream (bytes ahead of the block being read). */
#define NQ8_PREFETCH 4096

#define NQ8_AVX2 __attribute__((target("avx2,fma,f16c")))
#define NQ8_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

/* The sum of 8 lanes: (v[l] + v[l + 4]), then + [l + 2], then + [l + 1]. */
NQ8_AVX2 static inline float nq8_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* `n` (at most NQ8_TILE * NQ8_CHUNK) f16 scales widened to f32 into `dst`, zeros after them. */
NQ8_AVX2 static inline void nq8_widen_scales(const uint16_t *src, size_t n, float *dst) {
    uint16_t padded[NQ8_TILE * NQ8_CHUNK];
    if (n < NQ8_TILE * NQ8_CHUNK) {
        memset(padded, 0, sizeof padded);
        memcpy(padded, src, n * sizeof *src);
        src = padded;
    }
    for (size_t k = 0; k < NQ8_TILE * NQ8_CHUNK; k += 8)
        _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + k))));
}

/* Two cache lines (a block of the 4 rows) NQ8_PREFETCH bytes ahead; a prefetch never faults and
 * the address is formed as an integer, so nothing points outside the table. The tile stream is
 * sequential, yet with two vectors (more work per byte) the hardware prefetchers fall behind: on
 * the 2B4T head (128256 x 2560, Zen 4, one thread, shared machine) 42-53 ms without, 29-35 ms with
 * 2-8 KB ahead; one vector ~20 ms either way. */
static inline void nq8_prefetch(const int8_t *tile_block) {
    uintptr_t ahead = (uintptr_t)tile_block + NQ8_PREFETCH;
    _mm_prefetch((const char *)ahead, _MM_HINT_T0);
    _mm_prefetch((const char *)(ahead + 64), _MM_HINT_T0);
}

/* ---- 16 lanes in one AVX-512 register ---- */
typedef __m512 nq8_avx512;
NQ8_AVX512 static inline nq8_avx512 nq8_zero_avx512(void) { return _mm512_setzero_ps(); }
NQ8_AVX512 static inline nq8_avx512 nq8_load_avx512(const float *p) { return _mm512_loadu_ps(p); }
NQ8_AVX512 static inline nq8_avx512 nq8_widen_avx512(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
NQ8_AVX512 static inline nq8_avx512 nq8_set1_avx512(float v) { return _mm512_set1_ps(v); }
NQ8_AVX512 static inline nq8_avx512 nq8_mul_avx512(nq8_avx512 a, nq8_avx512 b) {
    return _mm512_mul_ps(a, b);
}
NQ8_AVX512 static inline nq8_avx512 nq8_fmadd_avx512(nq8_avx512 a, nq8_avx512 b, nq8_avx512 c) {
    return _mm512_fmadd_ps(a, b, c);
}
NQ8_AVX512 static inline float nq8_sum_avx512(nq8_avx512 a) {
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    return nq8_hsum8(_mm256_add_ps(_mm512_castps512_ps256(a), hi));
}

/* ---- 16 lanes in two AVX2 registers: lo = lanes 0-7, hi = lanes 8-15 ---- */
typedef struct {
    __m256 lo, hi;
} nq8_avx2;
NQ8_AVX2 static inline nq8_avx2 nq8_zero_avx2(void) {
    nq8_avx2 r = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    return r;
}
NQ8_AVX2 static inline nq8_avx2 nq8_load_avx2(const float *p) {
    nq8_avx2 r = {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
    return r;
}
NQ8_AVX2 static inline __m256 nq8_widen8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
NQ8_AVX2 static inline nq8_avx2 nq8_widen_avx2(const int8_t *p) {
    nq8_avx2 r = {nq8_widen8(p), nq8_widen8(p + 8)};
    return r;
}
NQ8_AVX2 static inline nq8_avx2 nq8_set1_avx2(float v) {
    nq8_avx2 r = {_mm256_set1_ps(v), _mm256_set1_ps(v)};
    return r;
}
NQ8_AVX2 static inline nq8_avx2 nq8_mul_avx2(nq8_avx2 a, nq8_avx2 b) {
    nq8_avx2 r = {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
    return r;
}
NQ8_AVX2 static inline nq8_avx2 nq8_fmadd_avx2(nq8_avx2 a, nq8_avx2 b, nq8_avx2 c) {
    nq8_avx2 r = {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
    return r;
}
NQ8_AVX2 static inline float nq8_sum_avx2(nq8_avx2 a) {
    return nq8_hsum8(_mm256_add_ps(a.lo, a.hi));
}

/* The kernel: the tile's 4 rows with V vectors h[0..V], block by block in increasing order, each
 * block's 4 rows side by side in memory (one sequential stream). out[r * V + v] = row r . h[v]. */
#define NQ8_DEFINE_TILE(NAME, ATTR, ISA, V)                                                        \
    ATTR void NAME(const int8_t *values, const uint16_t *scales, size_t blocks,                   \
                   const float *const *h, float *out) {                                            \
        nq8_##ISA acc[NQ8_TILE][V];                                                                \
        for (int r = 0; r < NQ8_TILE; r++)                                                         \
            for (int v = 0; v < (V); v++)                                                          \
                acc[r][v] = nq8_zero_##ISA();                                                      \
        float d[NQ8_TILE * NQ8_CHUNK];                                                             \
        for (size_t first = 0; first < blocks; first += NQ8_CHUNK) {                               \
            size_t n = blocks - first < NQ8_CHUNK ? blocks - first : NQ8_CHUNK;                    \
            nq8_widen_scales(scales + NQ8_TILE * first, NQ8_TILE * n, d);                          \
            for (size_t i = 0; i < n; i++) {                                                       \
                size_t at = NQ8_BLOCK * (first + i);                                               \
                const int8_t *block = values + NQ8_TILE * at;                                      \
                nq8_prefetch(block);                                                               \
                nq8_##ISA x[V][2];                                                                 \
                for (int v = 0; v < (V); v++) {                                                    \
                    x[v][0] = nq8_load_##ISA(h[v] + at);                                           \
                    x[v][1] = nq8_load_##ISA(h[v] + at + 16);                                      \
                }                                                                                  \
                for (int r = 0; r < NQ8_TILE; r++) {                                               \
                    nq8_##ISA q0 = nq8_widen_##ISA(block + NQ8_BLOCK * r);                         \
                    nq8_##ISA q1 = nq8_widen_##ISA(block + NQ8_BLOCK * r + 16);                    \
                    nq8_##ISA s = nq8_set1_##ISA(d[NQ8_TILE * i + r]);                             \
                    for (int v = 0; v < (V); v++) {                                                \
                        nq8_##ISA t = nq8_fmadd_##ISA(q1, x[v][1], nq8_mul_##ISA(q0, x[v][0]));    \
                        acc[r][v] = nq8_fmadd_##ISA(s, t, acc[r][v]);                              \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int r = 0; r < NQ8_TILE; r++)                                                         \
            for (int v = 0; v < (V); v++)                                                          \
                out[r * (V) + v] = nq8_sum_##ISA(acc[r][v]);                                       \
    }

NQ8_DEFINE_TILE(nq8_tile_v1_avx512, NQ8_AVX512, avx512, 1)
NQ8_DEFINE_TILE(nq8_tile_v2_avx512, NQ8_AVX512, avx512, 2)
NQ8_DEFINE_TILE(nq8_tile_v1_avx2, NQ8_AVX2, avx2, 1)
NQ8_DEFINE_TILE(nq8_tile_v2_avx2, NQ8_AVX2, avx2, 2)

#else
/* No kernels off x86-64: the Rust reference runs (and ISO C wants a declaration). */
typedef int nq8_no_kernels;
#endif
