/*
 * INT8 block-sparse x dense kernels (u8 activations, s8 weights, s32
 * accumulators), written once and compiled per ISA.  The including file
 * defines the vector primitives:
 *   QV                 integer vector type, QV_BYTES its width (32 or 64)
 *   QV_LOAD/QV_STORE   unaligned load/store, QV_ZERO()
 *   QV_UNPACK{LO,HI}{8,16}(a, b)  per-128-bit-lane interleaves
 *   QV_UNPERMUTE(a, b, c, d)      lane-grouped order -> token order, in place
 *   QW, QW_PREP(w32)   a weight group prepared for QV_DOT
 *   QV_DOT(acc, x, w)  acc += sum of 4 u8*s8 products per 32-bit lane, exact
 *   BSK_QFN            name of the entry point to define
 *
 * Two kernels, chosen by the block shape (DESIGN.md, "Storage"):
 *
 * (1, 4) blocks, one row at a time: activations are packed once per call in
 *   the VNNI layout [tile][K/4][NT][4], so one block (one 32-bit weight group,
 *   broadcast) meets NT/lanes contiguous activation vectors: one load and
 *   one dot per vector, no shuffles in the inner loop.
 *
 * (4, 1) blocks, one 4-row strip at a time (the paper's kernel): the strip's
 *   blocks were grouped four at a time at pack time (bsk_qbcsr.gcols/gw).
 *   For each group the four activation rows are loaded and interleaved into
 *   32-bit groups with four byte and four word unpacks, then each of the four
 *   rows does one dot per vector with its own broadcast weight group: four
 *   loads and eight shuffles feed sixteen dots.
 *
 * Token order.  The unpacks work inside 128-bit lanes, so four interleaved
 * vectors a, b, c, d built from rows holding tokens 0 .. 4*lanes-1 hold, in
 * 32-bit lane q = 4*L + j of vector v, token 16*L + 4*v + j ("lane-grouped"
 * order).  Both kernels accumulate in that order (the (1, 4) packing uses the
 * same unpacks) and QV_UNPERMUTE restores token order once per tile.
 */
#include "simd/epilogue.h"

#define QV_LANES (QV_BYTES / 4)       /* int32 lanes per vector */
#define CHUNK (4 * QV_LANES)          /* tokens in one lane-grouped chunk */
#define NT_ROW (2 * CHUNK)            /* tokens per tile, (1, 4) kernel */
#define NT_STRIP CHUNK                /* tokens per tile, (4, 1) kernel */
/* Rows handled per token tile before moving to the next tile: the tile's
 * activation panel and the chunk's weights stay in L2 together, instead of
 * streaming every tile's panel from L3 for each row. */
#define STRIP_CHUNK 16                /* 4-row strips */
#define ROW_CHUNK 64                  /* rows of the (1, 4) kernel */

/* Token held by lane-grouped position q of a chunk (see above). */
static inline int grouped_token(int q)
{
    const int v = q / QV_LANES, L = (q % QV_LANES) / 4, j = q % 4;
    return 16 * L + 4 * v + j;
}

/* Unpermute 4 * chunks accumulators and store them in token order. */
static inline void store_tokens(QV *acc, int chunks, int32_t *out)
{
    for (int c = 0; c < chunks; c++) {
        QV *a = acc + 4 * c;
        QV_UNPERMUTE(a[0], a[1], a[2], a[3]);
        for (int v = 0; v < 4; v++)
            QV_STORE(out + c * CHUNK + v * QV_LANES, a[v]);
    }
}

/* Interleave 4 rows of CHUNK tokens into 4 lane-grouped VNNI vectors. */
static inline void interleave4(QV x0, QV x1, QV x2, QV x3, QV *x)
{
    const QV a01 = QV_UNPACKLO8(x0, x1), b01 = QV_UNPACKHI8(x0, x1);
    const QV a23 = QV_UNPACKLO8(x2, x3), b23 = QV_UNPACKHI8(x2, x3);
    x[0] = QV_UNPACKLO16(a01, a23);
    x[1] = QV_UNPACKHI16(a01, a23);
    x[2] = QV_UNPACKLO16(b01, b23);
    x[3] = QV_UNPACKHI16(b01, b23);
}

/* ---- (1, 4): packing and row kernel ------------------------------------ */

/* Panel of tile t: [K/4][NT_ROW] 32-bit groups, lane-grouped per chunk. */
static void pack_row(const uint8_t *X, int64_t ldx, int64_t K, int64_t N,
                     int xt, uint8_t *P, int64_t t, int64_t g0, int64_t g1)
{
    const int64_t G = K / 4, n0 = t * NT_ROW;
    uint8_t *pt = P + t * G * NT_ROW * 4;
    uint8_t rows[4][CHUNK];
    for (int64_t g = g0; g < g1; g++) {
        uint8_t *dst = pt + g * NT_ROW * 4;
        if (xt) {
            uint32_t *d32 = (uint32_t *)dst;
            for (int q = 0; q < NT_ROW; q++) {
                const int64_t n = n0 + (q / CHUNK) * CHUNK + grouped_token(q % CHUNK);
                uint32_t w = 0;
                if (n < N)
                    memcpy(&w, X + n * ldx + 4 * g, 4);
                d32[q] = w;
            }
            continue;
        }
        for (int c = 0; c < NT_ROW / CHUNK; c++) {
            const int64_t c0 = n0 + c * CHUNK;
            const uint8_t *src = X + 4 * g * ldx + c0;
            QV x[4];
            if (c0 + CHUNK <= N) {
                interleave4(QV_LOAD(src), QV_LOAD(src + ldx), QV_LOAD(src + 2 * ldx),
                            QV_LOAD(src + 3 * ldx), x);
            } else {
                const int64_t have = N - c0 > 0 ? N - c0 : 0;
                memset(rows, 0, sizeof(rows));
                for (int b = 0; b < 4; b++)
                    if (have)
                        memcpy(rows[b], src + b * ldx, (size_t)have);
                interleave4(QV_LOAD(rows[0]), QV_LOAD(rows[1]), QV_LOAD(rows[2]),
                            QV_LOAD(rows[3]), x);
            }
            for (int v = 0; v < 4; v++)
                QV_STORE(dst + c * CHUNK * 4 + v * QV_BYTES, x[v]);
        }
    }
}

static void row_kernel(const bsk_bcsr *W, int64_t m, const uint8_t *panel,
                       int32_t *acc_out)
{
    const int32_t *w32 = (const int32_t *)W->data;
    QV a0 = QV_ZERO(), a1 = QV_ZERO(), a2 = QV_ZERO(), a3 = QV_ZERO();
    QV a4 = QV_ZERO(), a5 = QV_ZERO(), a6 = QV_ZERO(), a7 = QV_ZERO();
    for (int64_t j = W->indptr[m]; j < W->indptr[m + 1]; j++) {
        const QW w = QW_PREP(w32[j]);
        const uint8_t *xp = panel + (int64_t)W->indices[j] * NT_ROW * 4;
        a0 = QV_DOT(a0, QV_LOAD(xp + 0 * QV_BYTES), w);
        a1 = QV_DOT(a1, QV_LOAD(xp + 1 * QV_BYTES), w);
        a2 = QV_DOT(a2, QV_LOAD(xp + 2 * QV_BYTES), w);
        a3 = QV_DOT(a3, QV_LOAD(xp + 3 * QV_BYTES), w);
        a4 = QV_DOT(a4, QV_LOAD(xp + 4 * QV_BYTES), w);
        a5 = QV_DOT(a5, QV_LOAD(xp + 5 * QV_BYTES), w);
        a6 = QV_DOT(a6, QV_LOAD(xp + 6 * QV_BYTES), w);
        a7 = QV_DOT(a7, QV_LOAD(xp + 7 * QV_BYTES), w);
    }
    QV acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    store_tokens(acc, 2, acc_out);
}

/* ---- (4, 1): packing and strip kernel ---------------------------------- */

/* dst[c * ldd + r] = src[r * lds + c] for a 16 x 16 byte tile (SSE2
 * unpacks: bytes, words, dwords, qwords). */
static inline void transpose16x16_u8(const uint8_t *src, int64_t lds, uint8_t *dst,
                                     int64_t ldd)
{
    __m128i a[16], b[16];
    for (int i = 0; i < 16; i++)
        a[i] = _mm_loadu_si128((const __m128i *)(src + i * lds));
    for (int p = 0; p < 8; p++) { /* rows 2p, 2p+1; cols 0-7 / 8-15 */
        b[2 * p] = _mm_unpacklo_epi8(a[2 * p], a[2 * p + 1]);
        b[2 * p + 1] = _mm_unpackhi_epi8(a[2 * p], a[2 * p + 1]);
    }
    for (int q = 0; q < 4; q++) { /* rows 4q..4q+3; cols 4c..4c+3 at a[4q + c] */
        a[4 * q + 0] = _mm_unpacklo_epi16(b[4 * q + 0], b[4 * q + 2]);
        a[4 * q + 1] = _mm_unpackhi_epi16(b[4 * q + 0], b[4 * q + 2]);
        a[4 * q + 2] = _mm_unpacklo_epi16(b[4 * q + 1], b[4 * q + 3]);
        a[4 * q + 3] = _mm_unpackhi_epi16(b[4 * q + 1], b[4 * q + 3]);
    }
    for (int o = 0; o < 2; o++) /* rows 8o..8o+7; cols 2c, 2c+1 at b[8o + c] */
        for (int c4 = 0; c4 < 4; c4++) {
            b[8 * o + 2 * c4] = _mm_unpacklo_epi32(a[8 * o + c4], a[8 * o + 4 + c4]);
            b[8 * o + 2 * c4 + 1] = _mm_unpackhi_epi32(a[8 * o + c4], a[8 * o + 4 + c4]);
        }
    for (int c2 = 0; c2 < 8; c2++) {
        _mm_storeu_si128((__m128i *)(dst + (2 * c2) * ldd), _mm_unpacklo_epi64(b[c2], b[8 + c2]));
        _mm_storeu_si128((__m128i *)(dst + (2 * c2 + 1) * ldd),
                         _mm_unpackhi_epi64(b[c2], b[8 + c2]));
    }
}

/* Panel of tile t: [K][NT_STRIP] bytes in token order (zero padded). */
static void pack_strip(const uint8_t *X, int64_t ldx, int64_t N, int xt,
                       uint8_t *pt, int64_t n0, int64_t k0, int64_t k1)
{
    const int64_t cnt = N - n0 < NT_STRIP ? N - n0 : NT_STRIP;
    if (!xt) {
        for (int64_t k = k0; k < k1; k++) {
            memcpy(pt + k * NT_STRIP, X + k * ldx + n0, (size_t)cnt);
            memset(pt + k * NT_STRIP + cnt, 0, (size_t)(NT_STRIP - cnt));
        }
        return;
    }
    /* X is (N, K): transpose 16 x 16 tiles, ragged edges byte by byte */
    int64_t nfull = cnt / 16 * 16, kfull = k0 + (k1 - k0) / 16 * 16;
    for (int64_t nb = 0; nb < nfull; nb += 16)
        for (int64_t kb = k0; kb < kfull; kb += 16)
            transpose16x16_u8(X + (n0 + nb) * ldx + kb, ldx, pt + kb * NT_STRIP + nb, NT_STRIP);
    for (int64_t k = k0; k < k1; k++) {
        uint8_t *dst = pt + k * NT_STRIP;
        for (int64_t n = (k < kfull ? nfull : 0); n < cnt; n++)
            dst[n] = X[(n0 + n) * ldx + k];
        memset(dst + cnt, 0, (size_t)(NT_STRIP - cnt));
    }
}

/* The accumulators are named variables, not an array: GCC keeps a 4x4 array
 * of vectors in registers only with extra copies and spills per iteration. */
#define STRIP_ROW(r, w, x0, x1, x2, x3)                                       \
    do {                                                                      \
        a##r##0 = QV_DOT(a##r##0, x0, w);                                      \
        a##r##1 = QV_DOT(a##r##1, x1, w);                                      \
        a##r##2 = QV_DOT(a##r##2, x2, w);                                      \
        a##r##3 = QV_DOT(a##r##3, x3, w);                                      \
    } while (0)

static void strip_kernel(const bsk_qbcsr *Wq, int64_t s, const uint8_t *panel,
                         int64_t ldp, int32_t *acc_out /* [4][NT_STRIP] */)
{
    QV a00 = QV_ZERO(), a01 = QV_ZERO(), a02 = QV_ZERO(), a03 = QV_ZERO();
    QV a10 = QV_ZERO(), a11 = QV_ZERO(), a12 = QV_ZERO(), a13 = QV_ZERO();
    QV a20 = QV_ZERO(), a21 = QV_ZERO(), a22 = QV_ZERO(), a23 = QV_ZERO();
    QV a30 = QV_ZERO(), a31 = QV_ZERO(), a32 = QV_ZERO(), a33 = QV_ZERO();
    const int32_t *cols = Wq->gcols + 4 * (int64_t)Wq->gptr[s];
    const int32_t *gw = Wq->gw + 4 * (int64_t)Wq->gptr[s];
    const int32_t *end = Wq->gw + 4 * (int64_t)Wq->gptr[s + 1];
    for (; gw < end; gw += 4, cols += 4) {
        QV x[4];
        interleave4(QV_LOAD(panel + (int64_t)cols[0] * ldp),
                    QV_LOAD(panel + (int64_t)cols[1] * ldp),
                    QV_LOAD(panel + (int64_t)cols[2] * ldp),
                    QV_LOAD(panel + (int64_t)cols[3] * ldp), x);
        const QW w0 = QW_PREP(gw[0]);
        STRIP_ROW(0, w0, x[0], x[1], x[2], x[3]);
        const QW w1 = QW_PREP(gw[1]);
        STRIP_ROW(1, w1, x[0], x[1], x[2], x[3]);
        const QW w2 = QW_PREP(gw[2]);
        STRIP_ROW(2, w2, x[0], x[1], x[2], x[3]);
        const QW w3 = QW_PREP(gw[3]);
        STRIP_ROW(3, w3, x[0], x[1], x[2], x[3]);
    }
    QV acc[4];
#define STRIP_STORE(r)                                                        \
    acc[0] = a##r##0, acc[1] = a##r##1, acc[2] = a##r##2, acc[3] = a##r##3;   \
    store_tokens(acc, 1, acc_out + r * NT_STRIP)
    STRIP_STORE(0);
    STRIP_STORE(1);
    STRIP_STORE(2);
    STRIP_STORE(3);
#undef STRIP_STORE
}
#undef STRIP_ROW

/* ---- entry point --------------------------------------------------------- */

bsk_status BSK_QFN(const bsk_qbcsr *Wq, const uint8_t *X, int64_t ldx,
                   int64_t N, int xt, void *Y, int64_t ldy, int yt,
                   const bsk_epilogue *epi, int nt)
{
    const bsk_bcsr *W = &Wq->w;
    const int64_t K = W->K;
    const int strip = W->R == 4 && W->C == 1;
    if (!strip && !(W->R == 1 && W->C == 4))
        return BSK_EUNSUPPORTED;
    if (strip && !Wq->gptr)
        return BSK_EINVAL;
    if (N == 0 || W->M == 0)
        return BSK_OK;

    const int64_t NT = strip ? NT_STRIP : NT_ROW;
    const int64_t ntiles = (N + NT - 1) / NT;
    /* (4, 1) with X given as (K, N) reads full tiles in place; only the
     * ragged last tile, or the transposed form, needs a packed panel. */
    const int64_t first_packed = strip && !xt ? N / NT : 0;
    const int64_t npacked = ntiles - first_packed;
    uint8_t *P = NULL;
    if (npacked) {
        P = (uint8_t *)bsk_alloc((size_t)(npacked * K * NT) + 64);
        if (!P)
            return BSK_ENOMEM;
    }
    int status = BSK_OK;
    (void)nt;

#pragma omp parallel num_threads(nt)
    {
        int32_t *acc = (int32_t *)bsk_alloc(4 * NT_ROW * sizeof(int32_t));
        if (!acc) {
#pragma omp atomic write
            status = BSK_ENOMEM;
        }
        if (strip) {
            const int64_t kchunks = (K + 63) / 64;
#pragma omp for schedule(static)
            for (int64_t u = 0; u < npacked * kchunks; u++) {
                const int64_t k0 = (u % kchunks) * 64, t = first_packed + u / kchunks;
                pack_strip(X, ldx, N, xt, P + (t - first_packed) * K * NT_STRIP,
                           t * NT_STRIP, k0, k0 + 64 < K ? k0 + 64 : K);
            }
#pragma omp for schedule(static)
            for (int64_t s0 = 0; s0 < W->M / 4; s0 += STRIP_CHUNK) {
                if (!acc)
                    continue;
                const int64_t s1 = s0 + STRIP_CHUNK < W->M / 4 ? s0 + STRIP_CHUNK : W->M / 4;
                for (int64_t t = 0; t < ntiles; t++) {
                    const uint8_t *panel = t < first_packed ? X + t * NT_STRIP
                                           : P + (t - first_packed) * K * NT_STRIP;
                    const int64_t ldp = t < first_packed ? ldx : NT_STRIP;
                    for (int64_t s = s0; s < s1; s++) {
                        strip_kernel(Wq, s, panel, ldp, acc);
                        bsk_epilogue_rows(epi, acc, NT_STRIP, 4, 4 * s, t * NT_STRIP,
                                          NT_STRIP, N, Y, ldy, yt);
                    }
                }
            }
        } else {
            const int64_t gchunks = (K / 4 + 31) / 32;
#pragma omp for schedule(static)
            for (int64_t u = 0; u < ntiles * gchunks; u++) {
                const int64_t g0 = (u % gchunks) * 32;
                pack_row(X, ldx, K, N, xt, P, u / gchunks, g0,
                         g0 + 32 < K / 4 ? g0 + 32 : K / 4);
            }
#pragma omp for schedule(static)
            for (int64_t m0 = 0; m0 < W->M; m0 += ROW_CHUNK) {
                if (!acc)
                    continue;
                const int64_t m1 = m0 + ROW_CHUNK < W->M ? m0 + ROW_CHUNK : W->M;
                for (int64_t t = 0; t < ntiles; t++) {
                    /* four rows at a time so the (N, M) output gets 4-wide stores */
                    for (int64_t m = m0; m < m1; m += 4) {
                        const int rows = m1 - m < 4 ? (int)(m1 - m) : 4;
                        for (int r = 0; r < rows; r++)
                            row_kernel(W, m + r, P + t * K * NT_ROW, acc + r * NT_ROW);
                        bsk_epilogue_rows(epi, acc, NT_ROW, rows, m, t * NT_ROW, NT_ROW,
                                          N, Y, ldy, yt);
                    }
                }
            }
        }
        free(acc);
    }
    free(P);
    return (bsk_status)status;
}
