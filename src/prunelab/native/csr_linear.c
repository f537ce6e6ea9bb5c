/* y = x @ W^T + bias for a CSR weight W (rows: outputs), x and y row-major float32.
 *
 * Batch rows are taken 64 at a time and transposed into a scratch block, so that every kept weight
 * w[i, c] becomes one broadcast times 64 contiguous inputs x[b0:b0+64, c]: with AVX2 the 64 sums
 * of an output stay in eight registers while its kept weights stream past. Built and loaded by
 * prunelab/native (see compress/native.py for its use); without AVX2 the plain loop below is used.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define BLOCK 64

int prunelab_csr_linear(const int32_t *indptr, const int32_t *indices, const float *values,
                        const float *bias, const float *x, float *y, int64_t n, int64_t in_features,
                        int64_t out_features) {
    float *xt = aligned_alloc(32, sizeof(float) * BLOCK * (size_t)(in_features > 0 ? in_features : 1));
    if (!xt) return 1;
    float acc[BLOCK] __attribute__((aligned(32)));
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
        const int64_t nb = n - b0 < BLOCK ? n - b0 : BLOCK;
        if (nb < BLOCK) memset(xt, 0, sizeof(float) * BLOCK * (size_t)in_features);
        for (int64_t c0 = 0; c0 < in_features; c0 += 16) { /* tiled transpose of the block */
            const int64_t c1 = c0 + 16 < in_features ? c0 + 16 : in_features;
            for (int64_t j = 0; j < nb; j++) {
                const float *row = x + (b0 + j) * in_features;
                for (int64_t c = c0; c < c1; c++) xt[c * BLOCK + j] = row[c];
            }
        }
        for (int64_t i = 0; i < out_features; i++) {
            const float b = bias ? bias[i] : 0.0f;
#ifdef __AVX2__
            __m256 a[BLOCK / 8];
            for (int r = 0; r < BLOCK / 8; r++) a[r] = _mm256_set1_ps(b);
            for (int32_t k = indptr[i]; k < indptr[i + 1]; k++) {
                const __m256 w = _mm256_set1_ps(values[k]);
                const float *xr = xt + (int64_t)indices[k] * BLOCK;
                for (int r = 0; r < BLOCK / 8; r++) a[r] = _mm256_fmadd_ps(w, _mm256_load_ps(xr + 8 * r), a[r]);
            }
            for (int r = 0; r < BLOCK / 8; r++) _mm256_store_ps(acc + 8 * r, a[r]);
#else
            for (int j = 0; j < BLOCK; j++) acc[j] = b;
            for (int32_t k = indptr[i]; k < indptr[i + 1]; k++) {
                const float w = values[k];
                const float *xr = xt + (int64_t)indices[k] * BLOCK;
                for (int j = 0; j < BLOCK; j++) acc[j] += w * xr[j];
            }
#endif
            for (int64_t j = 0; j < nb; j++) y[(b0 + j) * out_features + i] = acc[j];
        }
    }
    free(xt);
    return 0;
}
