/*
 * Ternary GEMV/GEMM kernels over planar weights (see libs/ternary/src/planar.rs for the layout and
 * src/reference.rs for the definition every function here must match bit for bit).
 *
 * Names state the operation, operands and ISA: ntk_gemv_i2p_i8_<isa> multiplies planar 2-bit codes
 * (i2p) by int8 activations. Each SIMD function carries its own target attribute; the file is built
 * without -march flags so the binary runs on any x86-64, and with -ffp-contract=off so the compiler
 * neither fuses nor splits a multiply-add: every FMA is written out (fmaf / _mm256_fmadd_ps) and
 * rounds exactly once, like f32::mul_add in the reference.
 *
 * SIMD trick (AVX2/AVX-512): a code's weight w is looked up as c = w + 1 in {0, 1, 2} (code 10, the
 * invalid one, looks up c = 1, i.e. w = 0); maddubs(c, x) sums are exact in int16 and
 * sum(w * x) = sum(c * x) - sum(x), with sum(x) per group precomputed once per activation vector.
 * |sum(c * x)| over a group <= 128 * 2 * 128 = 32768 fits int16 at every step of the reductions.
 *
 * Callers (src/kernels.rs) check every length and alignment before calling; these functions trust
 * their arguments: `codes` and `scales` cover whole tiles of 8 rows, `x` holds groups * 128 bytes.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define NTK_GROUP 128
#define NTK_GROUP_BYTES 32
#define NTK_TILE 8
/* GEMM processes at most this many activation vectors per weight pass (its accumulators live on
 * the stack); larger batches are split by the caller. */
#define NTK_MAX_BATCH 16

/* The weights of one matrix, as laid out by PlanarWeights. */
typedef struct {
    const uint8_t *codes;     /* row r, group g at codes + r * code_row_stride + g * 32 */
    size_t code_row_stride;   /* bytes: groups * 32 (rows contiguous) */
    const float *scales;      /* tile t at scales + t * scale_tile_stride, then [entry][row % 8] */
    size_t scale_tile_stride; /* floats: entries * 8 */
    size_t groups;            /* groups per row (cols rounded up to 128) */
    unsigned scale_shift;     /* group g uses scale entry g >> scale_shift (shared scales) */
} ntk_weights;

/* The scale entry of group g: groups that share a scale read the same entry. */
#define NTK_SCALE_ENTRY(w, g) ((g) >> (w)->scale_shift)

/* One or several quantized activation vectors: vector b at x + b * x_stride, its group sums at
 * x_sums + b * groups, its scale act_scales[b]. */
typedef struct {
    const int8_t *x;
    size_t x_stride;
    const int32_t *x_sums;
    const float *act_scales;
    size_t batch;
} ntk_acts;

/* Weight of each 2-bit code: 00 -> 0, 01 -> +1, 10 (invalid) -> 0, 11 -> -1. */
static const int8_t NTK_TRIT[4] = {0, 1, 0, -1};

/* ------------------------------------------------------------------------------------------------
 * Portable scalar C: the same loop as the reference, one row at a time.
 */

static int32_t group_dot_scalar(const uint8_t *group_codes, const int8_t *x) {
    int32_t sum = 0;
    for (int i = 0; i < NTK_GROUP_BYTES; i++) {
        uint8_t byte = group_codes[i];
        for (int k = 0; k < 4; k++) {
            sum += NTK_TRIT[(byte >> (2 * k)) & 3] * (int32_t)x[i + NTK_GROUP_BYTES * k];
        }
    }
    return sum;
}

static float scale_at(const ntk_weights *w, size_t row, size_t group) {
    return w->scales[(row / NTK_TILE) * w->scale_tile_stride + NTK_SCALE_ENTRY(w, group) * NTK_TILE +
                     row % NTK_TILE];
}

/* Rows [row_begin, row_begin + row_count) of y = W x; y points at the output of row_begin. */
void ntk_gemv_i2p_i8_scalar(const ntk_weights *w, const ntk_acts *a, size_t row_begin,
                            size_t row_count, float *y) {
    for (size_t i = 0; i < row_count; i++) {
        size_t row = row_begin + i;
        const uint8_t *codes = w->codes + row * w->code_row_stride;
        float acc = 0.0f;
        for (size_t g = 0; g < w->groups; g++) {
            int32_t dot = group_dot_scalar(codes + g * NTK_GROUP_BYTES, a->x + g * NTK_GROUP);
            acc = fmaf(scale_at(w, row, g), (float)dot, acc);
        }
        y[i] = acc * a->act_scales[0];
    }
}

/* Same rows for every vector of the batch; each group of weights is decoded once for all vectors.
 * Output of vector b, row row_begin + i at y[b * y_stride + i]. */
void ntk_gemm_i2p_i8_scalar(const ntk_weights *w, const ntk_acts *a, size_t row_begin,
                            size_t row_count, float *y, size_t y_stride) {
    float acc[NTK_MAX_BATCH];
    int8_t trits[NTK_GROUP];
    for (size_t i = 0; i < row_count; i++) {
        size_t row = row_begin + i;
        const uint8_t *codes = w->codes + row * w->code_row_stride;
        for (size_t b = 0; b < a->batch; b++) acc[b] = 0.0f;
        for (size_t g = 0; g < w->groups; g++) {
            const uint8_t *group_codes = codes + g * NTK_GROUP_BYTES;
            for (int j = 0; j < NTK_GROUP; j++) {
                trits[j] = NTK_TRIT[(group_codes[j % NTK_GROUP_BYTES] >> (2 * (j / NTK_GROUP_BYTES))) & 3];
            }
            float scale = scale_at(w, row, g);
            for (size_t b = 0; b < a->batch; b++) {
                const int8_t *x = a->x + b * a->x_stride + g * NTK_GROUP;
                int32_t dot = 0;
                for (int j = 0; j < NTK_GROUP; j++) dot += trits[j] * (int32_t)x[j];
                acc[b] = fmaf(scale, (float)dot, acc[b]);
            }
        }
        for (size_t b = 0; b < a->batch; b++) y[b * y_stride + i] = acc[b] * a->act_scales[b];
    }
}

#ifdef NTK_FAULT_INJECTION
/* A deliberately wrong kernel for the tests of verify-triangle: the scalar kernel with the last
 * weight of every row ignored (an off-by-one loop bound). Compiled only with the fault-injection
 * feature. */
void ntk_gemv_i2p_i8_faulty(const ntk_weights *w, const ntk_acts *a, size_t row_begin,
                            size_t row_count, float *y) {
    for (size_t i = 0; i < row_count; i++) {
        size_t row = row_begin + i;
        const uint8_t *codes = w->codes + row * w->code_row_stride;
        float acc = 0.0f;
        for (size_t g = 0; g < w->groups; g++) {
            int32_t dot = group_dot_scalar(codes + g * NTK_GROUP_BYTES, a->x + g * NTK_GROUP);
            if (g + 1 == w->groups) {
                uint8_t last = codes[g * NTK_GROUP_BYTES + NTK_GROUP_BYTES - 1] >> 6;
                dot -= NTK_TRIT[last] * (int32_t)a->x[g * NTK_GROUP + NTK_GROUP - 1];
            }
            acc = fmaf(scale_at(w, row, g), (float)dot, acc);
        }
        y[i] = acc * a->act_scales[0];
    }
}
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

/* Software prefetch of the weight stream. Rows are contiguous, so a matrix's codes are one linear
 * stream, read tile by tile (8 rows) and, inside a tile, group by group across the rows; the
 * hardware prefetchers follow that pattern poorly on weights that are not in cache (one token's
 * GEMVs read the whole model, tens of MB). While tile t runs its group g, this fetches the group's
 * share (8 * 32 bytes) of the bytes a distance ahead of the tile (4 KB), and the matching
 * scales (a tile's scales take stride bytes, an eighth of its codes), so by the end of the tile
 * the stream is fetched that far ahead. A prefetch never faults, past the end included; the
 * addresses are formed as integers so no pointer leaves its array. Measured on the model's shapes
 * (gemv-bench --cold): 2x the GEMV's GOPS at 1 thread. Defined for a distance and a cache level. */
#define NTK_DEFINE_PREFETCH(NAME, DISTANCE, HINT)                                                  \
    static inline void NAME(const uint8_t *tile_codes, const float *tile_scales, size_t g,        \
                            size_t entry) {                                                        \
        uintptr_t codes = (uintptr_t)tile_codes + (DISTANCE) + g * NTK_TILE * NTK_GROUP_BYTES;     \
        for (int line = 0; line < NTK_TILE * NTK_GROUP_BYTES; line += 64)                          \
            _mm_prefetch((const char *)(codes + line), HINT);                                      \
        uintptr_t scales =                                                                         \
            (uintptr_t)tile_scales + (DISTANCE) / 8 + entry * NTK_TILE * sizeof(float);            \
        _mm_prefetch((const char *)scales, HINT);                                                  \
    }

NTK_DEFINE_PREFETCH(prefetch_ahead, 4096, _MM_HINT_T0)
/* The VNNI kernel reads two tiles at once, each group after group: into L2 only and twice as far
 * ahead it streams from memory faster (gemv-bench --cold, one vector, 4096x768 and 32768x768:
 * 86-124 GOPS into L1 at 4 KB, 145-175 into L2 at 8 KB; the row kernels lose with it). */
NTK_DEFINE_PREFETCH(prefetch_ahead_l2, 8192, _MM_HINT_T1)

/* ------------------------------------------------------------------------------------------------
 * AVX2 + FMA: tiles of 8 rows, one group at a time, 8 rows' group sums reduced into one vector so
 * the per-row FMA chain (in group order, as the reference) is one vector FMA per group.
 */

#define NTK_AVX2 __attribute__((target("avx2,fma")))

/* c = w + 1 of the low code of each nibble (LO) and of the high code (HI), per nibble value. */
#define NTK_C_LO 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0
#define NTK_C_HI 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0

/* sum(c * x) of one group of one row, as 16 int16 partial sums. */
NTK_AVX2 static inline __m256i group_cx_avx2(const uint8_t *group_codes, __m256i x0, __m256i x1,
                                             __m256i x2, __m256i x3) {
    const __m256i lut_lo = _mm256_setr_epi8(NTK_C_LO, NTK_C_LO);
    const __m256i lut_hi = _mm256_setr_epi8(NTK_C_HI, NTK_C_HI);
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_load_si256((const __m256i *)group_codes);
    __m256i lo = _mm256_and_si256(v, nibble);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
    __m256i s = _mm256_maddubs_epi16(_mm256_shuffle_epi8(lut_lo, lo), x0);
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_shuffle_epi8(lut_hi, lo), x1));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_shuffle_epi8(lut_lo, hi), x2));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_shuffle_epi8(lut_hi, hi), x3));
    return s;
}

/* Sums of the lanes of a and b, interleaved by unpacking at the given width and adding. */
#define NTK_MERGE(width, a, b) \
    _mm256_add_epi16(_mm256_unpacklo_##width((a), (b)), _mm256_unpackhi_##width((a), (b)))

/* Keeps GCC from hoisting the next row's work above this point: without it GCC computes all eight
 * rows' products first and spills them (~60 stack accesses per group, -10% throughput). */
#define NTK_MATERIALIZE(v) __asm__ volatile("" : "+x"(v))

/* Sum of c * x over one group for 8 rows, row r of the tile given by ROW_SUM(r) (an expression of
 * r yielding 16 int16 partial sums), reduced into one vector of 8 int32: lane r = row r's sum.
 * A transposing tree of unpack + add (vphaddw costs 2 cycles each on Zen 3, these 0.5), merged as
 * the rows come so few registers stay live: after the epi16, epi32 and epi64 levels each 128-bit
 * half holds the 8 row sums of its half of the lanes. Partial sums stay within the int16 bound of
 * the group sum (see the top of this file). */
#define NTK_TILE_SUMS_AVX2(out, ROW_SUM)                                                           \
    do {                                                                                           \
        __m256i q[4];                                                                              \
        for (int p = 0; p < 4; p++) {                                                              \
            __m256i even = ROW_SUM(2 * p);                                                         \
            NTK_MATERIALIZE(even);                                                                 \
            __m256i odd = ROW_SUM(2 * p + 1);                                                      \
            NTK_MATERIALIZE(odd);                                                                  \
            q[p] = NTK_MERGE(epi16, even, odd);                                                    \
        }                                                                                          \
        __m256i rows = NTK_MERGE(epi64, NTK_MERGE(epi32, q[0], q[1]), NTK_MERGE(epi32, q[2], q[3])); \
        (out) = _mm256_cvtepi16_epi32(                                                             \
            _mm_add_epi16(_mm256_castsi256_si128(rows), _mm256_extracti128_si256(rows, 1)));       \
    } while (0)

/* One tile: 8 rows starting at `row` (a multiple of 8), outputs of the first `count` stored. */
NTK_AVX2 static void gemv_tile_avx2(const ntk_weights *w, const ntk_acts *a, size_t row,
                                    size_t count, float *y) {
    const uint8_t *codes = w->codes + row * w->code_row_stride;
    const float *scales = w->scales + (row / NTK_TILE) * w->scale_tile_stride;
    const size_t stride = w->code_row_stride;
    __m256 acc = _mm256_setzero_ps();
    for (size_t g = 0; g < w->groups; g++) {
        prefetch_ahead(codes, scales, g, NTK_SCALE_ENTRY(w, g));
        const int8_t *xg = a->x + g * NTK_GROUP;
        __m256i x0 = _mm256_load_si256((const __m256i *)xg);
        __m256i x1 = _mm256_load_si256((const __m256i *)(xg + 32));
        __m256i x2 = _mm256_load_si256((const __m256i *)(xg + 64));
        __m256i x3 = _mm256_load_si256((const __m256i *)(xg + 96));
        const uint8_t *gc = codes + g * NTK_GROUP_BYTES;
#define NTK_GEMV_ROW(r) group_cx_avx2(gc + (r) * stride, x0, x1, x2, x3)
        __m256i sums;
        NTK_TILE_SUMS_AVX2(sums, NTK_GEMV_ROW);
#undef NTK_GEMV_ROW
        __m256i dots = _mm256_sub_epi32(sums, _mm256_set1_epi32(a->x_sums[g]));
        acc = _mm256_fmadd_ps(_mm256_load_ps(scales + NTK_SCALE_ENTRY(w, g) * NTK_TILE), _mm256_cvtepi32_ps(dots), acc);
    }
    __m256 out = _mm256_mul_ps(acc, _mm256_set1_ps(a->act_scales[0]));
    if (count == NTK_TILE) {
        _mm256_storeu_ps(y, out);
    } else {
        float tmp[NTK_TILE];
        _mm256_storeu_ps(tmp, out);
        for (size_t i = 0; i < count; i++) y[i] = tmp[i];
    }
}

NTK_AVX2 void ntk_gemv_i2p_i8_avx2(const ntk_weights *w, const ntk_acts *a, size_t row_begin,
                                   size_t row_count, float *y) {
    for (size_t i = 0; i < row_count; i += NTK_TILE) {
        size_t count = row_count - i < NTK_TILE ? row_count - i : NTK_TILE;
        gemv_tile_avx2(w, a, row_begin + i, count, y + i);
    }
}

/* sum(c * x) of one group of one row from its decoded c vectors, as 16 int16 partial sums. */
NTK_AVX2 static inline __m256i cx_decoded_avx2(const __m256i c[4], __m256i x0, __m256i x1,
                                               __m256i x2, __m256i x3) {
    __m256i s = _mm256_maddubs_epi16(c[0], x0);
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c[1], x1));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c[2], x2));
    return _mm256_add_epi16(s, _mm256_maddubs_epi16(c[3], x3));
}

/* GEMM: per tile and group, the 8 rows' c vectors are decoded once into `c` and reused for every
 * activation vector; accumulators acc[b] hold the 8 rows of vector b. */
NTK_AVX2 void ntk_gemm_i2p_i8_avx2(const ntk_weights *w, const ntk_acts *a, size_t row_begin,
                                   size_t row_count, float *y, size_t y_stride) {
    const __m256i lut_lo = _mm256_setr_epi8(NTK_C_LO, NTK_C_LO);
    const __m256i lut_hi = _mm256_setr_epi8(NTK_C_HI, NTK_C_HI);
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const size_t stride = w->code_row_stride;
    for (size_t i = 0; i < row_count; i += NTK_TILE) {
        size_t row = row_begin + i;
        size_t count = row_count - i < NTK_TILE ? row_count - i : NTK_TILE;
        const uint8_t *codes = w->codes + row * stride;
        const float *scales = w->scales + (row / NTK_TILE) * w->scale_tile_stride;
        __m256 acc[NTK_MAX_BATCH];
        for (size_t b = 0; b < a->batch; b++) acc[b] = _mm256_setzero_ps();
        for (size_t g = 0; g < w->groups; g++) {
            prefetch_ahead(codes, scales, g, NTK_SCALE_ENTRY(w, g));
            __m256i c[8][4];
            for (int r = 0; r < 8; r++) {
                __m256i v = _mm256_load_si256((const __m256i *)(codes + r * stride + g * NTK_GROUP_BYTES));
                __m256i lo = _mm256_and_si256(v, nibble);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                c[r][0] = _mm256_shuffle_epi8(lut_lo, lo);
                c[r][1] = _mm256_shuffle_epi8(lut_hi, lo);
                c[r][2] = _mm256_shuffle_epi8(lut_lo, hi);
                c[r][3] = _mm256_shuffle_epi8(lut_hi, hi);
            }
            __m256 group_scales = _mm256_load_ps(scales + NTK_SCALE_ENTRY(w, g) * NTK_TILE);
            for (size_t b = 0; b < a->batch; b++) {
                const int8_t *xg = a->x + b * a->x_stride + g * NTK_GROUP;
                __m256i x0 = _mm256_load_si256((const __m256i *)xg);
                __m256i x1 = _mm256_load_si256((const __m256i *)(xg + 32));
                __m256i x2 = _mm256_load_si256((const __m256i *)(xg + 64));
                __m256i x3 = _mm256_load_si256((const __m256i *)(xg + 96));
#define NTK_GEMM_ROW(r) cx_decoded_avx2(c[r], x0, x1, x2, x3)
                __m256i sums;
                NTK_TILE_SUMS_AVX2(sums, NTK_GEMM_ROW);
#undef NTK_GEMM_ROW
                __m256i dots = _mm256_sub_epi32(sums,
                                                _mm256_set1_epi32(a->x_sums[b * w->groups + g]));
                acc[b] = _mm256_fmadd_ps(group_scales, _mm256_cvtepi32_ps(dots), acc[b]);
            }
        }
        for (size_t b = 0; b < a->batch; b++) {
            float out[NTK_TILE];
            _mm256_storeu_ps(out, _mm256_mul_ps(acc[b], _mm256_set1_ps(a->act_scales[b])));
            for (size_t r = 0; r < count; r++) y[b * y_stride + i + r] = out[r];
        }
    }
}

/* ------------------------------------------------------------------------------------------------
 * AVX-512: two rows per 512-bit register (row r in the low 256 bits, row r + 4 in the high), the
 * activations broadcast to both halves. The BW variant sums with maddubs like AVX2; the VNNI variant
 * accumulates c * x straight into int32 with vpdpbusd. Both reduce to the same 8-lane vector and run
 * the same FMA chain, so they are bit-identical to the reference by the same argument as AVX2.
 */

#define NTK_AVX512BW __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define NTK_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))

/* Codes of one group for rows r (low half) and r + 4 (high half). */
NTK_AVX512BW static inline __m512i load_row_pair(const uint8_t *group_codes, size_t stride) {
    __m256i low = _mm256_load_si256((const __m256i *)group_codes);
    __m256i high = _mm256_load_si256((const __m256i *)(group_codes + 4 * stride));
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

/* The c vectors (trit + 1, four runs of 32 weights) of one group for rows r and r + 4. */
NTK_AVX512BW static inline void decode_row_pair(const uint8_t *group_codes, size_t stride,
                                                __m512i c[4]) {
    const __m512i lut_lo = _mm512_broadcast_i32x4(_mm_setr_epi8(NTK_C_LO));
    const __m512i lut_hi = _mm512_broadcast_i32x4(_mm_setr_epi8(NTK_C_HI));
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    __m512i v = load_row_pair(group_codes, stride);
    __m512i lo = _mm512_and_si512(v, nibble);
    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
    c[0] = _mm512_shuffle_epi8(lut_lo, lo);
    c[1] = _mm512_shuffle_epi8(lut_hi, lo);
    c[2] = _mm512_shuffle_epi8(lut_lo, hi);
    c[3] = _mm512_shuffle_epi8(lut_hi, hi);
}

/* Row sums of four row pairs: pair[r] holds 8 int32 partial sums of row r (low 256 bits) and of
 * row r + 4 (high). Returns lane r = the sum of row r's partials, r = 0..7. Integer sums are exact
 * in any order, so the order of this tree is free: 12 single-uop instructions (a tree of
 * _mm256_hadd_epi32, three uops each, took 25). */
NTK_AVX512BW static inline __m256i reduce_pairs_epi32(const __m512i pair[4]) {
    /* Per 128-bit lane: [p0(0)+p0(2), p1(0)+p1(2), p0(1)+p0(3), p1(1)+p1(3)], likewise p2, p3. */
    __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(pair[0], pair[1]),
                                 _mm512_unpackhi_epi32(pair[0], pair[1]));
    __m512i b = _mm512_add_epi32(_mm512_unpacklo_epi32(pair[2], pair[3]),
                                 _mm512_unpackhi_epi32(pair[2], pair[3]));
    /* Per 128-bit lane: the lane's sum of p0, p1, p2, p3. Lanes 0-1: rows 0-3; lanes 2-3: 4-7. */
    __m512i c = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    /* Lane 0: rows 0-3 in full; lane 2: rows 4-7 in full. */
    __m512i d = _mm512_add_epi32(c, _mm512_shuffle_i32x4(c, c, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castsi512_si256(_mm512_shuffle_i32x4(d, d, _MM_SHUFFLE(2, 0, 2, 0)));
}

#define NTK_DEFINE_GEMV_AVX512(NAME, ATTR, PAIR_SUM)                                              \
    ATTR void NAME(const ntk_weights *w, const ntk_acts *a, size_t row_begin, size_t row_count,     \
                   float *y) {                                                                      \
        const size_t stride = w->code_row_stride;                                                  \
        for (size_t i = 0; i < row_count; i += NTK_TILE) {                                         \
            size_t row = row_begin + i;                                                            \
            size_t count = row_count - i < NTK_TILE ? row_count - i : NTK_TILE;                    \
            const uint8_t *codes = w->codes + row * stride;                                        \
            const float *scales = w->scales + (row / NTK_TILE) * w->scale_tile_stride;             \
            __m256 acc = _mm256_setzero_ps();                                                      \
            for (size_t g = 0; g < w->groups; g++) {                                               \
                prefetch_ahead(codes, scales, g, NTK_SCALE_ENTRY(w, g));                           \
                const int8_t *xg = a->x + g * NTK_GROUP;                                           \
                __m512i x0 = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)xg));       \
                __m512i x1 = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(xg + 32))); \
                __m512i x2 = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(xg + 64))); \
                __m512i x3 = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(xg + 96))); \
                __m512i pairs[4];                                                                  \
                for (int r = 0; r < 4; r++) {                                                      \
                    __m512i c[4];                                                                  \
                    decode_row_pair(codes + r * stride + g * NTK_GROUP_BYTES, stride, c);          \
                    pairs[r] = PAIR_SUM(c[0], c[1], c[2], c[3], x0, x1, x2, x3);                   \
                }                                                                                  \
                __m256i dots =                                                                     \
                    _mm256_sub_epi32(reduce_pairs_epi32(pairs), _mm256_set1_epi32(a->x_sums[g]));  \
                acc = _mm256_fmadd_ps(_mm256_load_ps(scales + NTK_SCALE_ENTRY(w, g) * NTK_TILE),                       \
                                      _mm256_cvtepi32_ps(dots), acc);                              \
            }                                                                                      \
            float out[NTK_TILE];                                                                   \
            _mm256_storeu_ps(out, _mm256_mul_ps(acc, _mm256_set1_ps(a->act_scales[0])));           \
            for (size_t r = 0; r < count; r++) y[i + r] = out[r];                                  \
        }                                                                                          \
    }

/* sum(c * x) as 16 int32 per register with maddubs (int16) then madd with ones (int32). */
NTK_AVX512BW static inline __m512i pair_sum_bw(__m512i c0, __m512i c1, __m512i c2, __m512i c3,
                                               __m512i x0, __m512i x1, __m512i x2, __m512i x3) {
    __m512i s = _mm512_maddubs_epi16(c0, x0);
    s = _mm512_add_epi16(s, _mm512_maddubs_epi16(c1, x1));
    s = _mm512_add_epi16(s, _mm512_maddubs_epi16(c2, x2));
    s = _mm512_add_epi16(s, _mm512_maddubs_epi16(c3, x3));
    return _mm512_madd_epi16(s, _mm512_set1_epi16(1));
}

NTK_DEFINE_GEMV_AVX512(ntk_gemv_i2p_i8_avx512bw, NTK_AVX512BW, pair_sum_bw)

/* GEMM: per tile and group, the four row pairs' c vectors are decoded once (16 registers) and
 * reused for every activation vector, whose sums are those of the GEMV above (same reduction, same
 * FMA chain per vector), so every output is the GEMV's, bit for bit. */
#define NTK_DEFINE_GEMM_AVX512(NAME, ATTR, PAIR_SUM)                                              \
    ATTR void NAME(const ntk_weights *w, const ntk_acts *a, size_t row_begin, size_t row_count,     \
                   float *y, size_t y_stride) {                                                     \
        const size_t stride = w->code_row_stride;                                                  \
        for (size_t i = 0; i < row_count; i += NTK_TILE) {                                         \
            size_t row = row_begin + i;                                                            \
            size_t count = row_count - i < NTK_TILE ? row_count - i : NTK_TILE;                    \
            const uint8_t *codes = w->codes + row * stride;                                        \
            const float *scales = w->scales + (row / NTK_TILE) * w->scale_tile_stride;             \
            __m256 acc[NTK_MAX_BATCH];                                                             \
            for (size_t b = 0; b < a->batch; b++) acc[b] = _mm256_setzero_ps();                    \
            for (size_t g = 0; g < w->groups; g++) {                                               \
                prefetch_ahead(codes, scales, g, NTK_SCALE_ENTRY(w, g));                           \
                __m512i c[4][4];                                                                   \
                for (int r = 0; r < 4; r++)                                                        \
                    decode_row_pair(codes + r * stride + g * NTK_GROUP_BYTES, stride, c[r]);       \
                __m256 group_scales = _mm256_load_ps(scales + NTK_SCALE_ENTRY(w, g) * NTK_TILE);                       \
                for (size_t b = 0; b < a->batch; b++) {                                            \
                    const int8_t *xg = a->x + b * a->x_stride + g * NTK_GROUP;                     \
                    __m512i x0 = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)xg));   \
                    __m512i x1 =                                                                   \
                        _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(xg + 32)));     \
                    __m512i x2 =                                                                   \
                        _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(xg + 64)));     \
                    __m512i x3 =                                                                   \
                        _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(xg + 96)));     \
                    __m512i pairs[4];                                                              \
                    for (int r = 0; r < 4; r++)                                                    \
                        pairs[r] = PAIR_SUM(c[r][0], c[r][1], c[r][2], c[r][3], x0, x1, x2, x3);   \
                    __m256i dots = _mm256_sub_epi32(reduce_pairs_epi32(pairs),                     \
                                                    _mm256_set1_epi32(a->x_sums[b * w->groups + g])); \
                    acc[b] = _mm256_fmadd_ps(group_scales, _mm256_cvtepi32_ps(dots), acc[b]);      \
                }                                                                                  \
            }                                                                                      \
            for (size_t b = 0; b < a->batch; b++) {                                                \
                float out[NTK_TILE];                                                               \
                _mm256_storeu_ps(out, _mm256_mul_ps(acc[b], _mm256_set1_ps(a->act_scales[b])));    \
                for (size_t r = 0; r < count; r++) y[b * y_stride + i + r] = out[r];              \
            }                                                                                      \
        }                                                                                          \
    }

NTK_DEFINE_GEMM_AVX512(ntk_gemm_i2p_i8_avx512bw, NTK_AVX512BW, pair_sum_bw)

/* ------------------------------------------------------------------------------------------------
 * VNNI GEMV and GEMM, on the interleaved code layout (docs/formats.md): inside a tile, group after
 * group, and in a group the 4-byte word j of the tile's 8 rows together. One 256-bit load of each
 * of two tiles gives t_j, whose 32-bit lane i holds bytes 4j..4j+3 of row i's 32 code bytes (rows
 * 0-7 from the first tile, 8-15 from the second); decoded, lane i of c_k holds c = w + 1 of
 * weights 32k + 4j .. 32k + 4j + 3 of row i, and one vpdpbusd with those four activations
 * broadcast adds row i's four products into lane i. After the 32 (j, k) steps each lane holds its
 * row's exact group sum c·x, then the FMA chain per row and vector runs in group order, as the
 * reference. No horizontal sums and no transpose; the decoding is done once per group for up to
 * NTK_VNNI_CHUNK vectors.
 */

#define NTK_VNNI_CHUNK 8
/* Loops over vectors and chains unroll completely, so their sums stay in registers (GCC left the
 * loop over the vectors rolled, with every sum reloaded from the stack). */
#define NTK_UNROLL _Pragma("GCC unroll 8")
/* Bytes of one group of a tile (8 rows x 32), and of one word of a tile (8 rows x 4). */
#define NTK_TILE_GROUP_BYTES (NTK_TILE * NTK_GROUP_BYTES)
#define NTK_TILE_WORD_BYTES (NTK_TILE * 4)

/* acc += c · (the four bytes at ptr, broadcast), with the broadcast folded into the instruction
 * (GCC keeps a separate vpbroadcastd for the intrinsics, one more instruction per vpdpbusd). */
typedef int32_t __attribute__((may_alias, aligned(1))) ntk_unaligned_i32;
#define NTK_DPBUSD_BROADCAST(acc, c, ptr)                                                          \
    __asm__("vpdpbusd %2%{1to16%}, %1, %0"                                                        \
            : "+v"(acc)                                                                            \
            : "v"(c), "m"(*(const ntk_unaligned_i32 *)(ptr)))

/* Codes of a tile that is not there (the second of a block past the last tile), read with steps
 * of 0: code 00, weight 0, with scale 0. */
static const uint8_t NTK_ABSENT_CODES[NTK_TILE_WORD_BYTES] __attribute__((aligned(32))) = {0};
static const float NTK_ABSENT_SCALES[NTK_TILE] __attribute__((aligned(32))) = {0};

/* Rows [row, row + count) (row a multiple of 8, count <= 16) for the n vectors [v0, v0 + n),
 * n <= NTK_VNNI_CHUNK. Every call passes a constant n, and GCC compiles a copy for each, so every
 * loop over the vectors unrolls; not always_inline, which made GCC 12 drop the prefetches. Each
 * vector's sums run in several dependency chains, which hide vpdpbusd's latency: one per k
 * (four) for one or two vectors, even and odd k (two) for more. */
NTK_AVX512VNNI static void gemm_block_vnni(
    const ntk_weights *w, const ntk_acts *a, size_t row, size_t count, size_t v0, const int n,
    float *y, size_t y_stride) {
    const __m512i lut_lo = _mm512_broadcast_i32x4(_mm_setr_epi8(NTK_C_LO));
    const __m512i lut_hi = _mm512_broadcast_i32x4(_mm_setr_epi8(NTK_C_HI));
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    const int chains = n <= 2 ? 4 : 2;
    const int has_second = count > NTK_TILE;
    const uint8_t *codes_a = w->codes + row * w->code_row_stride;
    const float *scales_a = w->scales + (row / NTK_TILE) * w->scale_tile_stride;
    const uint8_t *codes_b = has_second ? codes_a + NTK_TILE * w->code_row_stride : NTK_ABSENT_CODES;
    const size_t word_step_b = has_second ? NTK_TILE_WORD_BYTES : 0;
    const size_t group_step_b = has_second ? NTK_TILE_GROUP_BYTES : 0;
    const float *scales_b = has_second ? scales_a + w->scale_tile_stride : NTK_ABSENT_SCALES;
    const size_t scale_step_b = has_second ? NTK_TILE : 0;
    __m512 acc[NTK_VNNI_CHUNK];
    NTK_UNROLL for (int b = 0; b < n; b++) acc[b] = _mm512_setzero_ps();
    for (size_t g = 0; g < w->groups; g++) {
        prefetch_ahead_l2(codes_a, scales_a, g, NTK_SCALE_ENTRY(w, g));
        if (has_second) prefetch_ahead_l2(codes_b, scales_b, g, NTK_SCALE_ENTRY(w, g));
        const uint8_t *group_a = codes_a + g * NTK_TILE_GROUP_BYTES;
        const uint8_t *group_b = codes_b + g * group_step_b;
        __m512i sums[4][NTK_VNNI_CHUNK];
        NTK_UNROLL for (int k = 0; k < chains; k++)
            NTK_UNROLL for (int b = 0; b < n; b++) sums[k][b] = _mm512_setzero_si512();
        for (int j = 0; j < 8; j++) {
            __m512i t = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_load_si256((const __m256i *)(group_a + j * NTK_TILE_WORD_BYTES))),
                _mm256_load_si256((const __m256i *)(group_b + j * word_step_b)), 1);
            __m512i lo = _mm512_and_si512(t, nibble);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(t, 4), nibble);
            __m512i c[4] = {_mm512_shuffle_epi8(lut_lo, lo), _mm512_shuffle_epi8(lut_hi, lo),
                            _mm512_shuffle_epi8(lut_lo, hi), _mm512_shuffle_epi8(lut_hi, hi)};
            NTK_UNROLL for (int k = 0; k < 4; k++) {
                NTK_UNROLL for (int b = 0; b < n; b++) {
                    const int8_t *x = a->x + (v0 + b) * a->x_stride + g * NTK_GROUP + 32 * k + 4 * j;
                    NTK_DPBUSD_BROADCAST(sums[k % chains][b], c[k], x);
                }
            }
        }
        __m512 group_scales = _mm512_castpd_ps(_mm512_insertf64x4(
            _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_load_ps(scales_a + NTK_SCALE_ENTRY(w, g) * NTK_TILE))),
            _mm256_castps_pd(_mm256_load_ps(scales_b + NTK_SCALE_ENTRY(w, g) * scale_step_b)), 1));
        NTK_UNROLL for (int b = 0; b < n; b++) {
            __m512i total = _mm512_add_epi32(sums[0][b], sums[1][b]);
            if (chains == 4)
                total = _mm512_add_epi32(total, _mm512_add_epi32(sums[2][b], sums[3][b]));
            __m512i dots =
                _mm512_sub_epi32(total, _mm512_set1_epi32(a->x_sums[(v0 + b) * w->groups + g]));
            acc[b] = _mm512_fmadd_ps(group_scales, _mm512_cvtepi32_ps(dots), acc[b]);
        }
    }
    /* Lanes past count are rows that are not there: not stored. */
    const __mmask16 present = (__mmask16)((1u << count) - 1);
    NTK_UNROLL for (int b = 0; b < n; b++)
        _mm512_mask_storeu_ps(y + (v0 + b) * y_stride, present,
                              _mm512_mul_ps(acc[b], _mm512_set1_ps(a->act_scales[v0 + b])));
}

/* Rows [row_begin, row_begin + row_count), two tiles at a time, for the n vectors from v0. */
NTK_AVX512VNNI static inline __attribute__((always_inline)) void gemm_rows_vnni(
    const ntk_weights *w, const ntk_acts *a, size_t row_begin, size_t row_count, size_t v0,
    const int n, float *y, size_t y_stride) {
    for (size_t i = 0; i < row_count; i += 2 * NTK_TILE) {
        size_t count = row_count - i < 2 * NTK_TILE ? row_count - i : 2 * NTK_TILE;
        gemm_block_vnni(w, a, row_begin + i, count, v0, n, y + i, y_stride);
    }
}

NTK_AVX512VNNI void ntk_gemm_i2p_i8_avx512vnni(const ntk_weights *w, const ntk_acts *a,
                                               size_t row_begin, size_t row_count, float *y,
                                               size_t y_stride) {
    size_t v0 = 0;
    for (; v0 + NTK_VNNI_CHUNK <= a->batch; v0 += NTK_VNNI_CHUNK)
        gemm_rows_vnni(w, a, row_begin, row_count, v0, NTK_VNNI_CHUNK, y, y_stride);
    /* The rest, through a copy of the block compiled for exactly that many vectors. */
    switch (a->batch - v0) {
    case 1: gemm_rows_vnni(w, a, row_begin, row_count, v0, 1, y, y_stride); break;
    case 2: gemm_rows_vnni(w, a, row_begin, row_count, v0, 2, y, y_stride); break;
    case 3: gemm_rows_vnni(w, a, row_begin, row_count, v0, 3, y, y_stride); break;
    case 4: gemm_rows_vnni(w, a, row_begin, row_count, v0, 4, y, y_stride); break;
    case 5: gemm_rows_vnni(w, a, row_begin, row_count, v0, 5, y, y_stride); break;
    case 6: gemm_rows_vnni(w, a, row_begin, row_count, v0, 6, y, y_stride); break;
    case 7: gemm_rows_vnni(w, a, row_begin, row_count, v0, 7, y, y_stride); break;
    default: break;
    }
}

/* ------------------------------------------------------------------------------------------------
 * Arithmetic peak probes: `rounds` rounds of 12 independent multiply(-accumulate) chains with the
 * instruction each kernel's inner loop is built on (vpdpbusd for VNNI, vpmaddubsw for BW and
 * AVX2), in inline assembly so the compiler neither folds them nor shuffles registers between
 * them. Twelve chains hide the instructions' latency and stay in registers. Returns a value that
 * depends on every result. Rounds x 12 x (products per instruction) is the work; the caller times
 * it.
 */

#define NTK_PEAK_ROUND(STEP)                                                                       \
    STEP(a0); STEP(a1); STEP(a2); STEP(a3); STEP(a4); STEP(a5);                                    \
    STEP(a6); STEP(a7); STEP(a8); STEP(a9); STEP(a10); STEP(a11)
#define NTK_PEAK_XOR(XOR)                                                                          \
    XOR(XOR(XOR(a0, a1), XOR(a2, a3)), XOR(XOR(a4, a5), XOR(a6, a7))), XOR(XOR(a8, a9), XOR(a10, a11))
#define NTK_PEAK_INIT(SET1)                                                                        \
    a0 = SET1(seed), a1 = SET1(seed + 1), a2 = SET1(seed + 2), a3 = SET1(seed + 3),                \
    a4 = SET1(seed + 4), a5 = SET1(seed + 5), a6 = SET1(seed + 6), a7 = SET1(seed + 7),            \
    a8 = SET1(seed + 8), a9 = SET1(seed + 9), a10 = SET1(seed + 10), a11 = SET1(seed + 11)

/* One probe: `u` and `s` are the fixed operands, STEP(acc) one instruction on chain acc, REDUCE
 * folds the last vector to 32 bits. */
#define NTK_DEFINE_PEAK(NAME, ATTR, VEC, SET1, XOR, STEP, REDUCE)                                  \
    ATTR uint32_t NAME(size_t rounds, int32_t seed) {                                              \
        const VEC u = SET1(seed * 3), s = SET1(seed * 7);                                          \
        (void)u;                                                                                   \
        VEC NTK_PEAK_INIT(SET1);                                                                   \
        for (size_t r = 0; r < rounds; r++) {                                                      \
            NTK_PEAK_ROUND(STEP);                                                                  \
        }                                                                                          \
        return REDUCE(XOR(NTK_PEAK_XOR(XOR)));                                                     \
    }

#define NTK_VPDPBUSD_STEP(acc) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s))
#define NTK_VPMADDUBSW_STEP(acc) __asm__("vpmaddubsw %1, %0, %0" : "+v"(acc) : "v"(s))
#define NTK_VPMADDUBSW_YMM_STEP(acc) __asm__("vpmaddubsw %1, %0, %0" : "+x"(acc) : "x"(s))

NTK_AVX512BW static inline uint32_t reduce_peak_zmm(__m512i v) {
    return (uint32_t)_mm512_reduce_add_epi32(v);
}
NTK_AVX2 static inline uint32_t reduce_peak_ymm(__m256i v) {
    return (uint32_t)_mm256_extract_epi32(v, 0);
}

NTK_DEFINE_PEAK(ntk_peak_avx512vnni, NTK_AVX512VNNI, __m512i, _mm512_set1_epi32, _mm512_xor_si512,
                NTK_VPDPBUSD_STEP, reduce_peak_zmm)
NTK_DEFINE_PEAK(ntk_peak_avx512bw, NTK_AVX512BW, __m512i, _mm512_set1_epi32, _mm512_xor_si512,
                NTK_VPMADDUBSW_STEP, reduce_peak_zmm)
NTK_DEFINE_PEAK(ntk_peak_avx2, NTK_AVX2, __m256i, _mm256_set1_epi32, _mm256_xor_si256,
                NTK_VPMADDUBSW_YMM_STEP, reduce_peak_ymm)

int ntk_has_x86_kernels(void) { return 1; }
#else
int ntk_has_x86_kernels(void) { return 0; }
#endif
