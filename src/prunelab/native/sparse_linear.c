/* y = x W^T + bias for a sparse float32 weight W (rows: outputs, columns: inputs) in one of four
 * formats, packed once at load by prunelab/compress/formats.py, which also times them:
 *
 *   CSR16   row pointers (int32), uint16 column indices, values: the fewest bytes of CSR
 *   CSR32   the same with int32 column indices (any width)
 *   BITMAP  row pointers, one uint16 bit mask per row and 16 columns, the kept values in row order
 *   NM      N kept of every M consecutive inputs (2:4, ...): N values and N uint8 offsets per group
 *           (padded with zero weights where a group keeps fewer); row pointers i * groups * N
 *
 * Two ways to run, by the number n of input vectors:
 *   n == 1 (one token or image: every weight is used once, so bytes are the cost): each output is
 *          a dot product. CSR and N:M gather x at the kept columns 16 at a time (AVX-512; AVX2:
 *          8), BITMAP expands each 16-column group's values under its mask; scalar elsewhere.
 *   n >= 2: inputs are taken T (8, 16, 32 or 64) at a time and transposed into a scratch tile
 *          xt[column][T], so that every kept weight w[i, c] becomes one broadcast (a load) times
 *          T contiguous inputs xt[c] (T/16 AVX-512 FMAs, their x operand from memory), the T sums
 *          of an output row staying in registers while its kept weights stream past. 16 output
 *          rows at a time are transposed back into y (16 x 16 in registers). The vector code is
 *          GCC/clang vector extensions: AVX-512, AVX2 or SSE2 as the build flags allow.
 * This inner loop is bound by loads (six per kept weight at T = 64: its index, its value and four
 * lines of x, for four FMAs); bigger tiles or L1-sized column panels measured slower here.
 *
 * Threads (OpenMP; the count is the caller's, i.e. torch's) each take a range of output rows
 * holding an equal share of the kept weights, aligned to 16 rows so that no two threads write one
 * cache line of y, and fill the shared input tile together.
 *
 * Layouts: 0 (rows): x is (n, cols) row-major and y (n, rows), as nn.Linear; 1 (channels): x is
 * `groups` blocks of (cols, n) and y of (rows, n), an NCHW 1x1 convolution with n = H*W, whose
 * input needs no transposition. Built and loaded by prunelab/native.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

enum { CSR16 = 0, CSR32 = 1, BITMAP = 2, NM = 3 };
enum { ROWS = 0, CHANNELS = 1 };

typedef struct {
    int32_t format, nm_n, nm_m, reserved;
    int64_t rows, cols;
    const int32_t *indptr; /* rows + 1: where each row's values start */
    const void *index;     /* CSR16: uint16 columns, CSR32: int32 columns, BITMAP: uint16 masks
                              (rows x ceil(cols / 16)), NM: uint8 offsets within each group */
    const float *values;
    const float *bias; /* NULL: none */
} sparse_t;

/* The ABI of the library, checked by the loader against its ctypes mirror of sparse_t. */
int prunelab_sparse_abi(void) { return (int)sizeof(sparse_t) * 100 + 1; }

typedef float v16 __attribute__((vector_size(64), aligned(64)));
typedef float v8 __attribute__((vector_size(32), aligned(32)));

/* A float in every lane: a broadcast from memory (a load, not a shuffle competing with the FMAs). */
#ifdef __AVX512F__
#define SPLAT_v16(p) ((v16)_mm512_set1_ps(*(p)))
#else
#define SPLAT_v16(p) ((v16){*(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p)})
#endif
#ifdef __AVX__
#define SPLAT_v8(p) ((v8)_mm256_set1_ps(*(p)))
#else
#define SPLAT_v8(p) ((v8){*(p), *(p), *(p), *(p), *(p), *(p), *(p), *(p)})
#endif

#define MAXT 64 /* widest input tile */
#define AHEAD 1024 /* kept weights prefetched ahead: the hardware prefetcher stops at every 4 KB page */
#define RB 16   /* output rows per transposed store */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t groups16(int64_t cols) { return (cols + 15) / 16; }

/* ---- scratch memory, kept by the calling thread between calls (no page faults per call) ---- */
static __thread void *scratch;
static __thread size_t scratch_size;

static void *scratch_get(size_t bytes) {
    if (bytes > scratch_size) {
        free(scratch);
        bytes = (bytes + 4095) & ~(size_t)4095;
        scratch = aligned_alloc(64, bytes);
        scratch_size = scratch ? bytes : 0;
    }
    return scratch;
}

/* Ask for the weights of the stream AHEAD kept weights past row i's (a hint: never faults). */
static void prefetch_row(const sparse_t *L, int64_t i) {
    const int64_t nnz = L->indptr[L->rows];
    const int64_t s = L->indptr[i] + AHEAD, e = min64(L->indptr[i + 1] + AHEAD, nnz);
    const int64_t width = L->format == CSR16 ? 2 : L->format == CSR32 ? 4 : L->format == NM ? 1 : 0;
    for (int64_t k = s; k < e; k += 16) __builtin_prefetch(L->values + k);
    for (int64_t k = s; width && k < e; k += 64 / width) __builtin_prefetch((const char *)L->index + width * k);
    if (L->format == BITMAP && i + 8 < L->rows) {
        const int64_t g16 = groups16(L->cols);
        for (int64_t g = 0; g < g16; g += 32) __builtin_prefetch((const uint16_t *)L->index + (i + 8) * g16 + g);
    }
}

/* ---- BITMAP and NM: the columns of row i decoded into dec (its values start at indptr[i]) ---- */
static int32_t decode(const sparse_t *L, int64_t i, int32_t *dec) {
    if (L->format == BITMAP) {
        const int64_t g16 = groups16(L->cols);
        const uint16_t *mask = (const uint16_t *)L->index + i * g16;
        int32_t j = 0;
#ifdef __AVX512F__
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (int64_t g = 0; g < g16; g++) {
            const __mmask16 m = mask[g];
            _mm512_mask_compressstoreu_epi32(dec + j, m, _mm512_add_epi32(lane, _mm512_set1_epi32((int)(16 * g))));
            j += __builtin_popcount(m);
        }
#else
        for (int64_t g = 0; g < g16; g++)
            for (unsigned m = mask[g]; m; m &= m - 1) dec[j++] = (int32_t)(16 * g + __builtin_ctz(m));
#endif
        return j;
    }
    /* NM: slot s of the row is in group s / N, at offset off[s] in it */
    const int32_t start = L->indptr[i], len = L->indptr[i + 1] - start, n = L->nm_n, m = L->nm_m;
    const uint8_t *off = (const uint8_t *)L->index + start;
    for (int32_t s = 0, g = 0; s < len; g++)
        for (int32_t j = 0; j < n; j++, s++) dec[s] = g * m + off[s];
    return len;
}

/* ---- n >= 2: one output row of a tile, T = LANES * NV inputs wide, into out ---- */
/* U independent sets of accumulators hide the FMA latency where a row has few vectors (NV). */
#define ROW_KERNEL(NAME, V, LANES, NV, U, IT)                                                              \
    static void NAME(const IT *idx, const float *val, int32_t len, const float *xt, float b, float *out) { \
        enum { T = LANES * NV };                                                                           \
        V acc[U][NV];                                                                                      \
        for (int v = 0; v < NV; v++) acc[0][v] = SPLAT_##V(&b);                                            \
        for (int u = 1; u < U; u++)                                                                        \
            for (int v = 0; v < NV; v++) acc[u][v] = (V){};                                                \
        int32_t k = 0;                                                                                     \
        for (; k + U <= len; k += U)                                                                       \
            for (int u = 0; u < U; u++) {                                                                  \
                const V *xr = (const V *)(xt + (int64_t)idx[k + u] * T);                                   \
                const V w = SPLAT_##V(val + k + u);                                                        \
                for (int v = 0; v < NV; v++) acc[u][v] += w * xr[v];                                        \
            }                                                                                              \
        for (; k < len; k++) {                                                                             \
            const V *xr = (const V *)(xt + (int64_t)idx[k] * T);                                           \
            const V w = SPLAT_##V(val + k);                                                                \
            for (int v = 0; v < NV; v++) acc[0][v] += w * xr[v];                                            \
        }                                                                                                  \
        for (int u = 1; u < U; u++)                                                                        \
            for (int v = 0; v < NV; v++) acc[0][v] += acc[u][v];                                            \
        for (int v = 0; v < NV; v++) ((V *)out)[v] = acc[0][v];                                            \
    }

ROW_KERNEL(row8_u16, v8, 8, 1, 4, uint16_t)
ROW_KERNEL(row16_u16, v16, 16, 1, 4, uint16_t)
ROW_KERNEL(row32_u16, v16, 16, 2, 4, uint16_t)
ROW_KERNEL(row64_u16, v16, 16, 4, 2, uint16_t)
ROW_KERNEL(row8_i32, v8, 8, 1, 4, int32_t)
ROW_KERNEL(row16_i32, v16, 16, 1, 4, int32_t)
ROW_KERNEL(row32_i32, v16, 16, 2, 4, int32_t)
ROW_KERNEL(row64_i32, v16, 16, 4, 2, int32_t)

typedef void (*row_u16_fn)(const uint16_t *, const float *, int32_t, const float *, float, float *);
typedef void (*row_i32_fn)(const int32_t *, const float *, int32_t, const float *, float, float *);

static int tile_width(int64_t left) { return left > 32 ? 64 : left > 16 ? 32 : left > 8 ? 16 : 8; }

/* rows [i0, i1) of the tile into yt[(i - i0) * T] */
static void run_rows(const sparse_t *L, int64_t i0, int64_t i1, const float *xt, int T, float *yt, int32_t *dec) {
    const row_u16_fn f16 = T == 64 ? row64_u16 : T == 32 ? row32_u16 : T == 16 ? row16_u16 : row8_u16;
    const row_i32_fn f32 = T == 64 ? row64_i32 : T == 32 ? row32_i32 : T == 16 ? row16_i32 : row8_i32;
    for (int64_t i = i0; i < i1; i++) {
        const int32_t start = L->indptr[i];
        const float b = L->bias ? L->bias[i] : 0.0f;
        float *out = yt + (i - i0) * T;
        prefetch_row(L, i);
        if (L->format == CSR16)
            f16((const uint16_t *)L->index + start, L->values + start, L->indptr[i + 1] - start, xt, b, out);
        else if (L->format == CSR32)
            f32((const int32_t *)L->index + start, L->values + start, L->indptr[i + 1] - start, xt, b, out);
        else
            f32(dec, L->values + start, decode(L, i, dec), xt, b, out);
    }
}

/* ---- transpositions: dst[c * ldd + r] = src[r * lds + c] for r < nr, c < nc ---- */
#ifdef __AVX512F__
/* One block of up to 16 x 16: rows r < nr (columns c < nc of them) in, columns c < nc out. */
static void transpose16(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t nr, int64_t nc) {
    const __mmask16 cols = (__mmask16)((1u << nc) - 1), rows = (__mmask16)((1u << nr) - 1);
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = i < nr ? _mm512_maskz_loadu_ps(cols, src + i * lds) : _mm512_setzero_ps();
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xDD);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
    for (int i = 0; i < nc; i++) _mm512_mask_storeu_ps(dst + i * ldd, rows, r[i]);
}
#endif

static void transpose(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t nr, int64_t nc) {
    for (int64_t r0 = 0; r0 < nr; r0 += 16)
        for (int64_t c0 = 0; c0 < nc; c0 += 16) {
            const int64_t r1 = min64(r0 + 16, nr), c1 = min64(c0 + 16, nc);
#ifdef __AVX512F__
            transpose16(src + r0 * lds + c0, lds, dst + c0 * ldd + r0, ldd, r1 - r0, c1 - c0);
#else
            for (int64_t c = c0; c < c1; c++)
                for (int64_t r = r0; r < r1; r++) dst[c * ldd + r] = src[r * lds + c];
#endif
        }
}

/* xt[c * T + j] = input j of the tile at column c, for c in [c0, c1); zeros past the nb inputs */
static void fill_tile(const float *x, int32_t layout, int64_t n, int64_t cols, int64_t b0, int64_t nb,
                      int64_t c0, int64_t c1, float *xt, int64_t T) {
    if (c1 <= c0) return;
    if (layout == ROWS)
        transpose(x + b0 * cols + c0, cols, xt + c0 * T, T, nb, c1 - c0);
    else
        for (int64_t c = c0; c < c1; c++) memcpy(xt + c * T, x + c * n + b0, sizeof(float) * (size_t)nb);
    if (nb < T)
        for (int64_t c = c0; c < c1; c++) memset(xt + c * T + nb, 0, sizeof(float) * (size_t)(T - nb));
}

/* rows [i0, i0 + nr) of the tile, held in yt[r * T + j], into y */
static void store_tile(const float *yt, int64_t T, int32_t layout, float *y, int64_t n, int64_t rows,
                       int64_t b0, int64_t nb, int64_t i0, int64_t nr) {
    if (layout == ROWS)
        transpose(yt, T, y + b0 * rows + i0, rows, nr, nb);
    else
        for (int64_t r = 0; r < nr; r++) memcpy(y + (i0 + r) * n + b0, yt + r * T, sizeof(float) * (size_t)nb);
}

/* ---- n == 1: dot products ---- */
#ifdef __AVX512F__
static __mmask16 first(int32_t k) { return k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << k) - 1); }

/* The 16 column indices of slots [k, k + 16) of a row, in lanes under m */
static __m512i columns16(const sparse_t *L, const void *index, int32_t k, __mmask16 m) {
    if (L->format == CSR16)
        return _mm512_maskz_cvtepu16_epi32(m, _mm256_maskz_loadu_epi16(m, (const uint16_t *)index + k));
    if (L->format == CSR32) return _mm512_maskz_loadu_epi32(m, (const int32_t *)index + k);
    /* NM (N and M powers of two): slot k + l is in group (k + l) / N, which starts at column
     * group * M */
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i group = _mm512_srli_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(k)), __builtin_ctz(L->nm_n));
    const __m512i off = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, (const uint8_t *)index + k));
    return _mm512_maskz_add_epi32(m, _mm512_slli_epi32(group, __builtin_ctz(L->nm_m)), off);
}
#endif

#ifdef __AVX512F__
/* N:M at half density (2:4, 4:8, 8:16): 16 slots cover 32 consecutive inputs, so they are picked
 * from two registers of x by one permute instead of a gather */
static float dot_nm_half(const sparse_t *L, int64_t i, const float *x) {
    const int32_t start = L->indptr[i], len = L->indptr[i + 1] - start;
    const float *val = L->values + start;
    const uint8_t *off = (const uint8_t *)L->index + start;
    const int shift = __builtin_ctz(L->nm_n);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i base = _mm512_slli_epi32(_mm512_srli_epi32(lane, shift), shift + 1); /* (l / N) * M */
    const int64_t cols = L->cols;
    __m512 a = _mm512_setzero_ps(), c = _mm512_setzero_ps();
    for (int32_t k = 0; k < len; k += 16) {
        const __mmask16 m = first(len - k);
        const int64_t c0 = 2 * (int64_t)k, left = cols - c0;
        const __m512 lo = _mm512_maskz_loadu_ps(first((int32_t)min64(left, 16)), x + c0);
        const __m512 hi = _mm512_maskz_loadu_ps(left > 16 ? first((int32_t)min64(left - 16, 16)) : 0, x + c0 + 16);
        const __m512i idx = _mm512_add_epi32(base, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, off + k)));
        const __m512 picked = _mm512_permutex2var_ps(lo, idx, hi);
        if (k & 16)
            c = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, val + k), picked, c);
        else
            a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, val + k), picked, a);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a, c));
}
#endif

static float dot_gather(const sparse_t *L, int64_t i, const float *x, int32_t *dec) {
    const int32_t start = L->indptr[i], len = L->indptr[i + 1] - start;
    const float *val = L->values + start;
    const size_t width = L->format == CSR16 ? 2 : L->format == CSR32 ? 4 : 1;
    const void *index = (const char *)L->index + width * (size_t)start;
#ifdef __AVX512F__
    (void)dec;
    if (L->format == NM && 2 * L->nm_n == L->nm_m && L->nm_n <= 16) return dot_nm_half(L, i, x);
    __m512 a = _mm512_setzero_ps(), c = _mm512_setzero_ps();
    int32_t k = 0;
    for (; k + 32 <= len; k += 32) {
        const __m512i i0 = columns16(L, index, k, 0xFFFF), i1 = columns16(L, index, k + 16, 0xFFFF);
        a = _mm512_fmadd_ps(_mm512_loadu_ps(val + k), _mm512_i32gather_ps(i0, x, 4), a);
        c = _mm512_fmadd_ps(_mm512_loadu_ps(val + k + 16), _mm512_i32gather_ps(i1, x, 4), c);
    }
    for (; k < len; k += 16) {
        const __mmask16 m = first(len - k);
        const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, columns16(L, index, k, m), x, 4);
        a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, val + k), g, a);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a, c));
#else
    const uint16_t *idx16 = L->format == CSR16 ? (const uint16_t *)index : NULL;
    const int32_t *idx32 = L->format == CSR32 ? (const int32_t *)index : dec;
    if (L->format == NM) decode(L, i, dec);
    int32_t k = 0;
    float sum = 0.0f;
#ifdef __AVX2__
    __m256 a = _mm256_setzero_ps();
    for (; k + 8 <= len; k += 8) {
        const __m256i ix = idx16 ? _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(idx16 + k)))
                                 : _mm256_loadu_si256((const __m256i *)(idx32 + k));
        a = _mm256_fmadd_ps(_mm256_loadu_ps(val + k), _mm256_i32gather_ps(x, ix, 4), a);
    }
    float part[8];
    _mm256_storeu_ps(part, a);
    for (int j = 0; j < 8; j++) sum += part[j];
#endif
    float s0 = 0.0f, s1 = 0.0f;
    for (; k + 2 <= len; k += 2) {
        s0 += val[k] * x[idx16 ? idx16[k] : idx32[k]];
        s1 += val[k + 1] * x[idx16 ? idx16[k + 1] : idx32[k + 1]];
    }
    if (k < len) s0 += val[k] * x[idx16 ? idx16[k] : idx32[k]];
    return sum + s0 + s1;
#endif
}

static float dot_bitmap(const sparse_t *L, int64_t i, const float *x) {
    const int64_t g16 = groups16(L->cols);
    const uint16_t *mask = (const uint16_t *)L->index + i * g16;
    const float *val = L->values + L->indptr[i];
#ifdef __AVX512F__
    __m512 a = _mm512_setzero_ps(), c = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= g16; g += 2) {
        const __mmask16 m0 = mask[g], m1 = mask[g + 1];
        a = _mm512_fmadd_ps(_mm512_maskz_expandloadu_ps(m0, val), _mm512_maskz_loadu_ps(m0, x + 16 * g), a);
        val += __builtin_popcount(m0);
        c = _mm512_fmadd_ps(_mm512_maskz_expandloadu_ps(m1, val), _mm512_maskz_loadu_ps(m1, x + 16 * g + 16), c);
        val += __builtin_popcount(m1);
    }
    if (g < g16) {
        const __mmask16 m = mask[g];
        a = _mm512_fmadd_ps(_mm512_maskz_expandloadu_ps(m, val), _mm512_maskz_loadu_ps(m, x + 16 * g), a);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a, c));
#else
    float s = 0.0f;
    for (int64_t g = 0; g < g16; g++)
        for (unsigned m = mask[g]; m; m &= m - 1) s += *val++ * x[16 * g + __builtin_ctz(m)];
    return s;
#endif
}

/* ---- threads: output rows [r0, r1) holding about a 1/nt share of the kept weights ---- */
static int64_t split_row(const sparse_t *L, int t, int nt) {
    if (t <= 0) return 0;
    if (t >= nt) return L->rows;
    const int64_t target = (int64_t)L->indptr[L->rows] * t / nt;
    int64_t lo = 0, hi = L->rows; /* the first row whose values start at or past the target */
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (L->indptr[mid] < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return min64((lo + RB - 1) / RB * RB, L->rows);
}

static void thread_id(int *t, int *nt) {
#ifdef _OPENMP
    *t = omp_get_thread_num();
    *nt = omp_get_num_threads();
#else
    *t = 0;
    *nt = 1;
#endif
}

/* Returns 0, or 1 where scratch memory could not be had. */
int prunelab_sparse_linear(const sparse_t *L, const float *x, float *y, int64_t n, int64_t groups,
                           int32_t layout, int32_t threads) {
    const int64_t rows = L->rows, cols = L->cols;
    if (n <= 0 || groups <= 0 || rows <= 0) return 0;
    const int nth = threads < 1 ? 1 : threads;
    const size_t dec_len = (size_t)cols + (size_t)(L->nm_m > 16 ? L->nm_m : 16) + 16;
    if (n == 1) { /* vectors: x + g * cols -> y + g * rows in either layout */
        int32_t *dec = NULL;
        if (L->format == NM) {
            dec = scratch_get(sizeof(int32_t) * dec_len * (size_t)nth);
            if (!dec) return 1;
        }
#pragma omp parallel num_threads(nth) if (nth > 1)
        {
            int t, nt;
            thread_id(&t, &nt);
            const int64_t r0 = split_row(L, t, nt), r1 = split_row(L, t + 1, nt);
            int32_t *mine = dec ? dec + (size_t)t * dec_len : NULL;
            for (int64_t g = 0; g < groups; g++)
                for (int64_t i = r0; i < r1; i++) {
                    prefetch_row(L, i);
                    const float d = L->format == BITMAP ? dot_bitmap(L, i, x + g * cols)
                                                        : dot_gather(L, i, x + g * cols, mine);
                    y[g * rows + i] = d + (L->bias ? L->bias[i] : 0.0f);
                }
        }
        return 0;
    }
    /* the shared input tile; per thread: 16 rows of sums and a decoded row */
    const size_t xt_len = ((size_t)(cols > 0 ? cols : 1) * MAXT + 15) & ~(size_t)15;
    const size_t yt_len = (size_t)RB * MAXT;
    float *xt = scratch_get(sizeof(float) * (xt_len + yt_len * (size_t)nth) + sizeof(int32_t) * dec_len * (size_t)nth);
    if (!xt) return 1;
    const int64_t ng = layout == ROWS ? 1 : groups;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int t, nt;
        thread_id(&t, &nt);
        const int64_t r0 = split_row(L, t, nt), r1 = split_row(L, t + 1, nt);
        float *yt = xt + xt_len + (size_t)t * yt_len;
        int32_t *dec = (int32_t *)(xt + xt_len + yt_len * (size_t)nth) + (size_t)t * dec_len;
        const int64_t c0 = min64((cols * t / nt + 15) / 16 * 16, cols);
        const int64_t c1 = t + 1 == nt ? cols : min64((cols * (t + 1) / nt + 15) / 16 * 16, cols);
        for (int64_t g = 0; g < ng; g++) {
            const float *xg = x + g * cols * n;
            float *yg = y + g * rows * n;
            for (int64_t b0 = 0; b0 < n;) {
                const int T = tile_width(n - b0);
                const int64_t nb = min64(T, n - b0);
                fill_tile(xg, layout, n, cols, b0, nb, c0, c1, xt, T);
#pragma omp barrier
                for (int64_t i0 = r0; i0 < r1; i0 += RB) {
                    const int64_t i1 = min64(i0 + RB, r1);
                    run_rows(L, i0, i1, xt, T, yt, dec);
                    store_tile(yt, T, layout, yg, n, rows, b0, nb, i0, i1 - i0);
                }
#pragma omp barrier
                b0 += nb;
            }
        }
    }
    return 0;
}
