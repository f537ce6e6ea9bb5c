/* One training step of a Linear-ReLU chain with mean cross-entropy: forward, loss, backward, masks;
 * and the forward-only evaluation of a whole split (summed loss and correct predictions).
 *
 * At LeNet-300-100 sizes a step is a handful of ~50-200 us GEMMs; done op by op from Python, the
 * ~30 small tensor ops between them (bias, ReLU, softmax, its gradient, bias sums, ReLU backward,
 * mask multiplies, the batch gather) cost as much again. Here they are plain loops between calls
 * to the BLAS sgemm that torch itself uses (MKL), whose address Python passes in, so the GEMMs are
 * exactly as fast as torch's and everything else is one pass over data that is still in cache.
 *
 * Matrices are row-major; sgemm is column-major, so a row-major (r x c) matrix is passed as its
 * column-major transpose. Integer arguments to sgemm point at 64-bit slots holding small values,
 * which reads correctly for both the 32-bit (LP64) and 64-bit (ILP64) BLAS interfaces on the
 * little-endian machines torch ships MKL for. Built and loaded by prunelab/native; used by
 * prunelab/training/native_mlp.py, which checks its result against torch before trusting it.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef void (*sgemm_fn)(const char *, const char *, const int64_t *, const int64_t *, const int64_t *,
                         const float *, const float *, const int64_t *, const float *, const int64_t *,
                         const float *, float *, const int64_t *);

typedef struct {
    int64_t in, out;
    const float *w, *b;   /* weight (out x in), bias (out) or NULL */
    float *gw, *gb;       /* their gradients: written, not accumulated */
    const uint8_t *mw, *mb; /* masks (1 kept, 0 pruned) applied to the gradients, or NULL */
    float *act;           /* batch x out: ReLU output (hidden layers) or logits (last) */
    float *grad;          /* batch x out: d loss / d pre-activation */
} mlp_layer;

static void gemm(sgemm_fn f, char ta, char tb, int64_t m, int64_t n, int64_t k, const float *a,
                 int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    const float one = 1.0f;
    f(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

static void mask(float *g, const uint8_t *m, int64_t n) {
    if (!m) return;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) g[i] = m[i] ? g[i] : 0.0f;
}

static void forward(sgemm_fn sgemm, int64_t n_layers, mlp_layer *layers, const float *x, int64_t batch) {
    const float *in = x;
    for (int64_t l = 0; l < n_layers; l++) {
        mlp_layer *L = &layers[l];
        /* act (batch x out) = in (batch x in) @ w^T */
        gemm(sgemm, 'T', 'N', L->out, batch, L->in, L->w, L->in, in, L->in, 0.0f, L->act, L->out);
        const int relu = l + 1 < n_layers;
        /* threads only for evaluation-sized chunks: a training batch is too small to pay for them,
         * and each row is independent, so the result is the same with any thread count */
#pragma omp parallel for schedule(static) if (batch * L->out >= 262144)
        for (int64_t r = 0; r < batch; r++) {
            float *h = L->act + r * L->out;
            if (L->b)
                for (int64_t j = 0; j < L->out; j++) h[j] += L->b[j];
            if (relu)
                for (int64_t j = 0; j < L->out; j++) h[j] = h[j] > 0.0f ? h[j] : 0.0f;
        }
        in = L->act;
    }
}

/* Softmax cross-entropy of the logits; leaves (softmax - one-hot) / batch in last->grad and adds
 * the summed loss, the correct predictions (first maximum, as torch.argmax) and the batch size to totals. */
static void loss_and_grad(mlp_layer *last, const int64_t *targets, int64_t batch, double *totals) {
    const int64_t c = last->out;
    const float inv = 1.0f / (float)batch;
    double loss = 0.0, correct = 0.0;
    for (int64_t r = 0; r < batch; r++) {
        const float *z = last->act + r * c;
        float *g = last->grad + r * c;
        int64_t arg = 0;
        for (int64_t j = 1; j < c; j++)
            if (z[j] > z[arg]) arg = j;
        float s = 0.0f;
        for (int64_t j = 0; j < c; j++) s += (g[j] = expf(z[j] - z[arg]));
        const int64_t t = targets[r];
        loss += (double)(z[arg] + logf(s) - z[t]);
        correct += arg == t;
        const float scale = inv / s;
        for (int64_t j = 0; j < c; j++) g[j] *= scale;
        g[t] -= inv;
    }
    totals[0] += loss;
    totals[1] += correct;
    totals[2] += (double)batch;
}

static void backward(sgemm_fn sgemm, int64_t n_layers, mlp_layer *layers, const float *x, int64_t batch) {
    for (int64_t l = n_layers - 1; l >= 0; l--) {
        mlp_layer *L = &layers[l];
        const float *a = l ? layers[l - 1].act : x;
        /* gw (out x in) = grad^T (out x batch) @ a (batch x in) */
        gemm(sgemm, 'N', 'T', L->in, L->out, batch, a, L->in, L->grad, L->out, 0.0f, L->gw, L->in);
        mask(L->gw, L->mw, L->in * L->out);
        if (L->gb) {
            memset(L->gb, 0, sizeof(float) * (size_t)L->out);
            for (int64_t r = 0; r < batch; r++)
                for (int64_t j = 0; j < L->out; j++) L->gb[j] += L->grad[r * L->out + j];
            mask(L->gb, L->mb, L->out);
        }
        if (l) { /* previous grad (batch x in) = grad (batch x out) @ w, through the ReLU */
            mlp_layer *P = &layers[l - 1];
            gemm(sgemm, 'N', 'N', L->in, batch, L->out, L->w, L->in, L->grad, L->out, 0.0f, P->grad, L->in);
            for (int64_t i = 0; i < batch * L->in; i++) P->grad[i] = P->act[i] > 0.0f ? P->grad[i] : 0.0f;
        }
    }
}

/* Rows idx[0..batch) of x_all (n x layers[0].in) and their labels are gathered into x and targets. */
void prunelab_mlp_step(sgemm_fn sgemm, int64_t n_layers, mlp_layer *layers, const float *x_all,
                       const int64_t *y_all, const int64_t *idx, int64_t batch, float *x,
                       int64_t *targets, double *totals) {
    const int64_t d = layers[0].in;
    for (int64_t r = 0; r < batch; r++) {
        memcpy(x + r * d, x_all + idx[r] * d, sizeof(float) * (size_t)d);
        targets[r] = y_all[idx[r]];
    }
    forward(sgemm, n_layers, layers, x, batch);
    loss_and_grad(&layers[n_layers - 1], targets, batch, totals);
    backward(sgemm, n_layers, layers, x, batch);
}

/* Summed cross-entropy of the logits and correct predictions (first maximum, as torch.argmax), added
 * to totals with the row count; the per-row arithmetic is that of loss_and_grad, without its gradient.
 * One thread on purpose: a parallel sum would add in an order that changes from run to run. */
static void loss_only(const mlp_layer *last, const int64_t *targets, int64_t batch, double *totals) {
    const int64_t c = last->out;
    double loss = 0.0, correct = 0.0;
    for (int64_t r = 0; r < batch; r++) {
        const float *z = last->act + r * c;
        int64_t arg = 0;
        for (int64_t j = 1; j < c; j++)
            if (z[j] > z[arg]) arg = j;
        float s = 0.0f;
        for (int64_t j = 0; j < c; j++) s += expf(z[j] - z[arg]);
        const int64_t t = targets[r];
        loss += (double)(z[arg] + logf(s) - z[t]);
        correct += arg == t;
    }
    totals[0] += loss;
    totals[1] += correct;
    totals[2] += (double)batch;
}

/* Evaluation of rows [0, n) of x (n x layers[0].in, contiguous) with labels y: forward in chunks of at
 * most `chunk` rows through the layers' act buffers (chunk x out each), loss and correct predictions
 * added to totals. Reads only w, b and act: the gradient fields of the table are not touched. After
 * the call, the last layer's act holds the logits of the last chunk (the Python side checks them). */
void prunelab_mlp_eval(sgemm_fn sgemm, int64_t n_layers, mlp_layer *layers, const float *x,
                       const int64_t *y, int64_t n, int64_t chunk, double *totals) {
    const int64_t d = layers[0].in;
    for (int64_t s = 0; s < n; s += chunk) {
        const int64_t rows = n - s < chunk ? n - s : chunk;
        forward(sgemm, n_layers, layers, x + s * d, rows);
        loss_only(&layers[n_layers - 1], y + s, rows, totals);
    }
}
