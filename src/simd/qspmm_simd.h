/*
 * INT8 block-sparse x dense kernels (u8 activations, s8 weights, s32
 * accumulators), written once and compiled per ISA.  The including file
 * defines the vector primitives:
 *   QV                 integer vector type, QV_BYTES its width (16, 32 or 64)
 *   QV_LOAD/QV_STORE   unaligned load/store, QV_ZERO()
 *   QV_UNPACK{LO,HI}{8,16}(a, b)  per-128-bit-lane interleaves
 *   QV_UNPERMUTE(a, b, c, d)      lane-grouped order -> token order, in place
 *   QW, QW_PREP(w32)   a weight group prepared for QV_DOT
 *   QV_DOT(acc, x, w)  acc += sum of 4 u8*s8 products per 32-bit lane, exact
 *   BSK_QFN            name of the entry point to define
 *   BSK_QLFN           name of the Linear form's entry point on float32 tokens
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
 * Token order.  The unpacks work inside 128-bit lanes: four vectors built
 * from rows holding positions 0 .. 4*lanes-1 hold, in 32-bit lane 4*L + j of
 * vector v, position 16*L + 4*v + j.  The activations are packed per call
 * anyway, so the packing stores the tokens in the order that makes those
 * lanes come out in token order (panel_order for the (4, 1) panels,
 * QV_UNPERMUTE once per packed group for the (1, 4) panels): accumulators are
 * stored as they are, with no shuffles per output.
 *
 * Threads.  The work is a grid of token tiles x row ranges ("parts", of equal
 * stored work); each thread takes an equal share of the grid and packs the
 * tiles it needs itself, so there is no barrier between packing and compute
 * and no thread reads another's panels.  (M, N) outputs are split by rows
 * (every thread packs every tile), (N, M) outputs by tiles as far as they go
 * (see the entry point).
 */
#include "simd/epilogue.h"
#include "simd/quantize_row.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define QV_LANES (QV_BYTES / 4)       /* int32 lanes per vector */
#define CHUNK (4 * QV_LANES)          /* tokens in one interleaved chunk */
#define NT_ROW (2 * CHUNK)            /* tokens per tile, (1, 4) kernel */
#define NT_STRIP CHUNK                /* tokens per tile, (4, 1) kernel */
/* Rows handled per token tile before moving to the next tile: the chunk's
 * weights stay in L1/L2 while the tiles of a batch pass under them. */
#define STRIP_CHUNK 16                /* 4-row strips */
#define ROW_CHUNK 64                  /* rows of the (1, 4) kernel */
/* Packed activations one thread keeps at a time (tiles are packed and used
 * in batches of about this size, so they stay in L2). */
#define PANEL_BATCH_BYTES ((int64_t)256 * 1024)
/* Stage of the (N, M) layout: NT_STRIP tokens x the 4 * STRIP_CHUNK rows of a chunk. */
#define STAGE_LD (4 * STRIP_CHUNK)
/* Stored-work units of one row range (a strip or a row) besides its blocks:
 * the epilogue and the loop, so that parts split the time evenly. */
#define ROW_OVERHEAD 2

typedef int32_t bsk_qv_i32 __attribute__((vector_size(QV_BYTES)));

/* Interleave 4 rows of CHUNK positions into 4 lane-grouped VNNI vectors. */
static inline void interleave4(QV x0, QV x1, QV x2, QV x3, QV *x)
{
    const QV a01 = QV_UNPACKLO8(x0, x1), b01 = QV_UNPACKHI8(x0, x1);
    const QV a23 = QV_UNPACKLO8(x2, x3), b23 = QV_UNPACKHI8(x2, x3);
    x[0] = QV_UNPACKLO16(a01, a23);
    x[1] = QV_UNPACKHI16(a01, a23);
    x[2] = QV_UNPACKLO16(b01, b23);
    x[3] = QV_UNPACKHI16(b01, b23);
}

/* A chunk of CHUNK tokens (4-token dwords in token order) rearranged so that
 * interleave4 of four such rows yields the tokens in order: stored dword
 * 4*L + v holds token dword v * (QV_LANES / 4) + L (a 4 x lanes/4 transpose
 * of dwords; the identity for 128-bit vectors). */
static inline QV panel_order(QV x)
{
#if QV_BYTES == 64
    const bsk_qv_i32 idx = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    return (QV)__builtin_shuffle((bsk_qv_i32)x, idx);
#elif QV_BYTES == 32
    const bsk_qv_i32 idx = {0, 2, 4, 6, 1, 3, 5, 7};
    return (QV)__builtin_shuffle((bsk_qv_i32)x, idx);
#else
    return x;
#endif
}

/* ---- (1, 4): packing and row kernel ------------------------------------ */

/* Panel of one tile: [K/4][NT_ROW] 32-bit groups in token order. */
static void pack_row(const uint8_t *X, int64_t ldx, int64_t K, int64_t N, int xt,
                     int64_t n0, uint8_t *pt)
{
    const int64_t G = K / 4;
    uint8_t rows[4][CHUNK];
    for (int64_t g = 0; g < G; g++) {
        uint8_t *dst = pt + g * NT_ROW * 4;
        if (xt) {
            uint32_t *d32 = (uint32_t *)dst;
            for (int q = 0; q < NT_ROW; q++) {
                uint32_t w = 0;
                if (n0 + q < N)
                    memcpy(&w, X + (n0 + q) * ldx + 4 * g, 4);
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
                for (int b = 0; b < 4; b++)
                    bsk_copy_part(rows[b], src + b * ldx, N - c0, CHUNK);
                interleave4(QV_LOAD(rows[0]), QV_LOAD(rows[1]), QV_LOAD(rows[2]),
                            QV_LOAD(rows[3]), x);
            }
            QV_UNPERMUTE(x[0], x[1], x[2], x[3]);
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
    QV_STORE(acc_out + 0 * QV_LANES, a0);
    QV_STORE(acc_out + 1 * QV_LANES, a1);
    QV_STORE(acc_out + 2 * QV_LANES, a2);
    QV_STORE(acc_out + 3 * QV_LANES, a3);
    QV_STORE(acc_out + 4 * QV_LANES, a4);
    QV_STORE(acc_out + 5 * QV_LANES, a5);
    QV_STORE(acc_out + 6 * QV_LANES, a6);
    QV_STORE(acc_out + 7 * QV_LANES, a7);
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

/* Panel of one tile: [K][NT_STRIP] bytes in panel_order (zero padded). */
static void pack_strip(const uint8_t *X, int64_t ldx, int64_t K, int64_t N, int xt,
                       int64_t n0, uint8_t *pt)
{
    const int64_t cnt = N - n0 < NT_STRIP ? N - n0 : NT_STRIP;
    if (!xt) {
        uint8_t row[NT_STRIP];
        for (int64_t k = 0; k < K; k++) {
            const uint8_t *src = X + k * ldx + n0;
            if (cnt < NT_STRIP) {
                bsk_copy_part(row, src, cnt, NT_STRIP);
                src = row;
            }
            QV_STORE(pt + k * NT_STRIP, panel_order(QV_LOAD(src)));
        }
        return;
    }
    /* X is (N, K): transpose 16 x 16 tiles, ragged edges byte by byte, then
     * put each row in panel order */
    const int64_t nfull = cnt / 16 * 16, kfull = K / 16 * 16;
    for (int64_t nb = 0; nb < nfull; nb += 16)
        for (int64_t kb = 0; kb < kfull; kb += 16)
            transpose16x16_u8(X + (n0 + nb) * ldx + kb, ldx, pt + kb * NT_STRIP + nb, NT_STRIP);
    for (int64_t k = 0; k < K; k++) {
        uint8_t *dst = pt + k * NT_STRIP;
        for (int64_t n = (k < kfull ? nfull : 0); n < cnt; n++)
            dst[n] = X[(n0 + n) * ldx + k];
        memset(dst + cnt, 0, (size_t)(NT_STRIP - cnt));
        QV_STORE(dst, panel_order(QV_LOAD(dst)));
    }
}

/* Float32 tokens to quantize while packing (the Linear form on float x,
 * BSK_QLFN): each thread quantizes the tokens of the tiles it packs, per
 * token, with quantize_row.h's pieces (the bytes of bsk_quantize_u8's
 * per-row mode), into the per-token parameters its own epilogue reads. */
typedef struct {
    const float *x;          /* (N, K) float32, ld ldx */
    float *scale;            /* this thread's parameters, by token (N) */
    int32_t *zero;
    float *out_scale;        /* the caller's: written by the tile's first part */
    int32_t *out_zero;
    int publish;             /* this part is its tiles' first */
    uint8_t *rows;           /* NT_STRIP x K codes */
    int nonfinite;
} bsk_xquant;

/* Panel of one tile from float tokens: the tile's tokens quantized into
 * q->rows, then pack_strip's transposition of them. */
static void pack_strip_f(bsk_xquant *q, int64_t ldx, int64_t K, int64_t N, int64_t n0,
                         uint8_t *pt)
{
    const int64_t cnt = N - n0 < NT_STRIP ? N - n0 : NT_STRIP;
    for (int64_t n = n0; n < n0 + cnt; n++) {
        const float *x = q->x + n * ldx;
        float lo = 0.0f, hi = 0.0f;
        q->nonfinite |= range_of(x, K, &lo, &hi);
        params_of(lo, hi, &q->scale[n], &q->zero[n]);
        quantize_row(x, K, q->scale[n], q->zero[n], q->rows + (n - n0) * K);
        if (q->publish) {
            q->out_scale[n] = q->scale[n];
            q->out_zero[n] = q->zero[n];
        }
    }
    pack_strip(q->rows, K, K, cnt, 1, 0, pt);
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

/* One accumulator vector holds a vector of the epilogue (vec16.h's unit
 * vector: 8 tokens in the 256-bit units, 16 in the 512-bit one). */
_Static_assert(QV_LANES == BSK_VL, "the epilogue takes the kernel's vectors as they are");

/* The epilogue of four rows m .. m+3 x BSK_VL tokens n .. (the first cnt valid),
 * straight from the accumulators; the tokens' scales and zero points are
 * loaded once for the four rows. */
static inline __attribute__((always_inline)) void
strip_out(const bsk_epilogue *e, bsk_vi v0, bsk_vi v1, bsk_vi v2, bsk_vi v3,
          int64_t m, int64_t m_out, int64_t n, int cnt, void *out, int64_t ldo, const int kind,
          const int act, const int yt, const int raw)
{
    if (cnt <= 0)
        return;
    bsk_vi q[4] = {v0, v1, v2, v3};
    if (!raw && (kind != BSK_OUT_I32 || e->rowsum)) {
        bsk_vi zx;
        bsk_vf sx;
        bsk_epi_tokens(e, n, cnt, kind, &zx, &sx);
        if (kind != BSK_OUT_I32 && e->f_x)
            bsk_epi_float_strip(e, q, zx, sx, m, n, cnt);
        else
            for (int r = 0; r < 4; r++)
                q[r] = bsk_epi_apply(e, q[r], m + r, n, cnt, zx, sx, kind, act);
    }
    if (yt) {
        bsk_store4_transposed(q, cnt, out, ldo, m_out, n, raw ? BSK_OUT_I32 : kind);
        return;
    }
    for (int r = 0; r < 4; r++)
        bsk_epi_store(q[r], m_out + r, n, cnt, out, ldo, kind, 0);
}

/* Strip s (rows 4s .. 4s+3) over one packed tile of tokens n0 .. n0+cnt-1,
 * with the epilogue applied from registers, into rows m_out .. m_out+3 of out
 * (4s for the output itself).  raw: the int32 accumulators, no epilogue (for
 * the staging buffer of the (N, M) layout). */
static inline __attribute__((always_inline)) void
strip_tile(const bsk_qbcsr *Wq, int64_t s, const uint8_t *panel, const bsk_epilogue *e,
           int64_t m_out, int64_t n0, int cnt, void *out, int64_t ldo, const int kind,
           const int act, const int yt, const int raw)
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
        interleave4(QV_LOAD(panel + (int64_t)cols[0] * NT_STRIP),
                    QV_LOAD(panel + (int64_t)cols[1] * NT_STRIP),
                    QV_LOAD(panel + (int64_t)cols[2] * NT_STRIP),
                    QV_LOAD(panel + (int64_t)cols[3] * NT_STRIP), x);
        const QW w0 = QW_PREP(gw[0]);
        STRIP_ROW(0, w0, x[0], x[1], x[2], x[3]);
        const QW w1 = QW_PREP(gw[1]);
        STRIP_ROW(1, w1, x[0], x[1], x[2], x[3]);
        const QW w2 = QW_PREP(gw[2]);
        STRIP_ROW(2, w2, x[0], x[1], x[2], x[3]);
        const QW w3 = QW_PREP(gw[3]);
        STRIP_ROW(3, w3, x[0], x[1], x[2], x[3]);
    }
#define STRIP_OUT(g)                                                          \
    strip_out(e, (bsk_vi)a0##g, (bsk_vi)a1##g, (bsk_vi)a2##g, (bsk_vi)a3##g, 4 * s, m_out, \
              n0 + BSK_VL * g, cnt - BSK_VL * g < BSK_VL ? cnt - BSK_VL * g : BSK_VL, out, \
              ldo, kind, act, yt, raw)
    STRIP_OUT(0);
    STRIP_OUT(1);
    STRIP_OUT(2);
    STRIP_OUT(3);
#undef STRIP_OUT
}
#undef STRIP_ROW

/* ---- the work split ------------------------------------------------------ */

/* First row unit (strip or row) of part p of `parts`: the parts hold equal
 * stored work (blocks or groups, plus ROW_OVERHEAD per unit).  work[] is the
 * prefix offset array (gptr or indptr) of `units` units. */
static int64_t part_start(const int32_t *work, int64_t units, int64_t p, int64_t parts)
{
    if (p <= 0)
        return 0;
    if (p >= parts)
        return units;
    const double total = (double)work[units] + (double)ROW_OVERHEAD * (double)units;
    const double target = total * (double)p / (double)parts;
    int64_t lo = 0, hi = units;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if ((double)work[mid] + (double)ROW_OVERHEAD * (double)mid < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        const int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Rows [u0, u1) (strips or rows) over tiles [t0, t1), packing the tiles in
 * batches of `batch` into P; kind, act and yt are compile-time constants in
 * each instantiation (see run_range). */
static inline __attribute__((always_inline)) void
run_range_k(const bsk_qbcsr *Wq, const uint8_t *X, int64_t ldx, int64_t N, int xt, void *Y,
            int64_t ldy, const bsk_epilogue *epi, int strip, int64_t u0, int64_t u1,
            int64_t t0, int64_t t1, int64_t batch, uint8_t *P, int32_t *acc,
            int32_t *stage, bsk_xquant *xq, const int kind, const int act, const int yt)
{
    const bsk_bcsr *W = &Wq->w;
    const int64_t K = W->K;
    const int64_t NT = strip ? NT_STRIP : NT_ROW;
    const int64_t panel = strip ? K * NT_STRIP : (K / 4) * NT_ROW * 4;
    const int64_t chunk = strip ? STRIP_CHUNK : ROW_CHUNK;
    for (int64_t b0 = t0; b0 < t1; b0 += batch) {
        const int64_t b1 = b0 + batch < t1 ? b0 + batch : t1;
        for (int64_t t = b0; t < b1; t++) {
            if (xq)
                pack_strip_f(xq, ldx, K, N, t * NT, P + (t - b0) * panel);
            else if (strip)
                pack_strip(X, ldx, K, N, xt, t * NT, P + (t - b0) * panel);
            else
                pack_row(X, ldx, K, N, xt, t * NT, P + (t - b0) * panel);
        }
        for (int64_t c0 = u0; c0 < u1; c0 += chunk) {
            const int64_t c1 = c0 + chunk < u1 ? c0 + chunk : u1;
            for (int64_t t = b0; t < b1; t++) {
                const uint8_t *pt = P + (t - b0) * panel;
                const int cnt = N - t * NT < NT ? (int)(N - t * NT) : (int)NT;
                if (strip && !yt) {
                    for (int64_t s = c0; s < c1; s++)
                        strip_tile(Wq, s, pt, epi, 4 * s, t * NT, cnt, Y, ldy, kind, act, 0, 0);
                    continue;
                }
                if (strip) {
                    /* (N, M) output: the chunk's accumulators go transposed into an
                     * L1-resident stage [token][feature], then each token's row of
                     * features gets the epilogue and one contiguous store, instead
                     * of 16-byte stores scattered over 64 output rows per strip */
                    for (int64_t s = c0; s < c1; s++)
                        strip_tile(Wq, s, pt, epi, 4 * (s - c0), 0, cnt, stage, STAGE_LD,
                                   BSK_OUT_I32, BSK_ACT_NONE, 1, 1);
                    const int64_t m0 = 4 * c0, F = 4 * (c1 - c0);
                    for (int n = 0; n < cnt; n++) {
                        const int64_t tok = t * NT + n;
                        for (int64_t f = 0; f < F; f += BSK_VL) {
                            const int c = F - f < BSK_VL ? (int)(F - f) : BSK_VL;
                            const bsk_vi v = bsk_epi_apply_token(
                                epi, bsk_vi_load_part(stage + n * STAGE_LD + f, c), m0 + f, tok,
                                c, kind, act);
                            bsk_epi_store(v, tok, m0 + f, c, Y, ldy, kind, 0);
                        }
                    }
                    continue;
                }
                /* four rows at a time so the (N, M) output gets 4-wide stores */
                for (int64_t m = c0; m < c1; m += 4) {
                    const int rows = c1 - m < 4 ? (int)(c1 - m) : 4;
                    for (int r = 0; r < rows; r++)
                        row_kernel(W, m + r, pt, acc + r * NT_ROW);
                    bsk_epilogue_rows_k(epi, acc, NT_ROW, rows, m, t * NT, NT, N, Y, ldy,
                                        kind, act, yt);
                }
            }
        }
    }
}

#define RUN_CASE(kind, act, yt)                                                \
    run_range_k(Wq, X, ldx, N, xt, Y, ldy, epi, strip, u0, u1, t0, t1, batch, P, acc, \
                stage, xq, kind, act, yt)

/* run_range_k specialised for the epilogue's (kind, act) and the layout. */
static void run_range(const bsk_qbcsr *Wq, const uint8_t *X, int64_t ldx, int64_t N, int xt,
                      void *Y, int64_t ldy, int yt, const bsk_epilogue *epi, int strip,
                      int64_t u0, int64_t u1, int64_t t0, int64_t t1, int64_t batch,
                      uint8_t *P, int32_t *acc, int32_t *stage, bsk_xquant *xq)
{
    const int act = epi->kind == BSK_OUT_I32 ? BSK_ACT_NONE : epi->act;
    switch ((epi->kind * 3 + act) * 2 + (yt ? 1 : 0)) {
    case 0: RUN_CASE(BSK_OUT_I32, BSK_ACT_NONE, 0); break;
    case 1: RUN_CASE(BSK_OUT_I32, BSK_ACT_NONE, 1); break;
    case 6: RUN_CASE(BSK_OUT_F32, BSK_ACT_NONE, 0); break;
    case 7: RUN_CASE(BSK_OUT_F32, BSK_ACT_NONE, 1); break;
    case 8: RUN_CASE(BSK_OUT_F32, BSK_ACT_RELU, 0); break;
    case 9: RUN_CASE(BSK_OUT_F32, BSK_ACT_RELU, 1); break;
    case 10: RUN_CASE(BSK_OUT_F32, BSK_ACT_GELU, 0); break;
    case 11: RUN_CASE(BSK_OUT_F32, BSK_ACT_GELU, 1); break;
    case 12: RUN_CASE(BSK_OUT_U8, BSK_ACT_NONE, 0); break;
    case 13: RUN_CASE(BSK_OUT_U8, BSK_ACT_NONE, 1); break;
    case 14: RUN_CASE(BSK_OUT_U8, BSK_ACT_RELU, 0); break;
    case 15: RUN_CASE(BSK_OUT_U8, BSK_ACT_RELU, 1); break;
    case 16: RUN_CASE(BSK_OUT_U8, BSK_ACT_GELU, 0); break;
    default: RUN_CASE(BSK_OUT_U8, BSK_ACT_GELU, 1); break;
    }
}
#undef RUN_CASE

/* ---- entry points -------------------------------------------------------- */

/* The product of both entry points; Xf non-NULL: float32 tokens (N, K) to
 * quantize per token while packing (then X is unused, xt and yt are 1, the
 * blocks (4, 1) and epi->rowsum set), their parameters into x_scale, x_zero. */
static bsk_status qspmm_run(const bsk_qbcsr *Wq, const uint8_t *X, const float *Xf, int64_t ldx,
                            int64_t N, int xt, void *Y, int64_t ldy, int yt,
                            const bsk_epilogue *epi, float *x_scale, int32_t *x_zero, int nt)
{
    const bsk_bcsr *W = &Wq->w;
    const int64_t K = W->K;
    const int strip = W->R == 4 && W->C == 1;
    if (!strip && !(W->R == 1 && W->C == 4))
        return BSK_EUNSUPPORTED;
    if (strip && !Wq->gptr)
        return BSK_EINVAL;
    if (Xf && !(strip && xt && yt && epi->rowsum))
        return BSK_EINVAL;
    if (N == 0 || W->M == 0)
        return BSK_OK;
    if (nt < 1)
        nt = 1;

    const int64_t NT = strip ? NT_STRIP : NT_ROW;
    const int64_t ntiles = (N + NT - 1) / NT;
    const int64_t units = strip ? W->M / 4 : W->M;
    const int32_t *work = strip ? Wq->gptr : W->indptr;
    const int64_t panel = strip ? K * NT_STRIP : (K / 4) * NT_ROW * 4;
    int status = BSK_OK, nonfinite = 0;
    bsk_team_clock clock;
    nt = bsk_team_begin(&clock, nt);

#pragma omp parallel num_threads(nt) reduction(| : nonfinite)
    {
#ifdef _OPENMP
        const int64_t id = omp_get_thread_num(), team = omp_get_num_threads();
#else
        const int64_t id = 0, team = 1;
#endif
        BSK_TEAM_ENTER(&clock, id);
        /* (row part, tile) grid with parts * ntiles a multiple of the team.  A
         * (M, N) output is split by rows: threads writing interleaved column
         * ranges of the same rows measured two to three times slower than one
         * thread on this Zen 4 (even with no cache line shared), so each
         * thread packs every tile it needs instead.  An (N, M) output is split
         * by tiles (whole output rows per thread) as far as the tiles go. */
        const int64_t parts = yt ? team / gcd64(ntiles, team) : team;
        const int64_t per = parts * ntiles / team;
        int64_t batch = PANEL_BATCH_BYTES / (panel > 0 ? panel : 1);
        batch = batch < 1 ? 1 : (batch > per ? per : batch);
        uint8_t *P = (uint8_t *)bsk_scratch(BSK_SCRATCH_PANEL, (size_t)(batch * panel) + 64);
        int32_t *acc = (int32_t *)bsk_scratch(BSK_SCRATCH_ACC, 4 * NT_ROW * sizeof(int32_t));
        int32_t *stage = (int32_t *)bsk_scratch(BSK_SCRATCH_STAGE,
                                                NT_STRIP * STAGE_LD * sizeof(int32_t));
        /* float tokens: this thread's parameters (by token, N of each) and
         * the codes of one tile, and an epilogue that reads them */
        bsk_xquant xq = {0};
        bsk_epilogue local;
        const bsk_epilogue *e = epi;
        uint8_t *xbuf = NULL;
        if (Xf) {
            const size_t params = ((size_t)N * 8 + 63) / 64 * 64;
            xbuf = (uint8_t *)bsk_scratch(BSK_SCRATCH_XQUANT, params + (size_t)(NT_STRIP * K));
            if (xbuf) {
                xq = (bsk_xquant){Xf, (float *)xbuf, (int32_t *)(xbuf + 4 * N), x_scale,
                                  x_zero, 0, xbuf + params, 0};
                local = *epi;
                local.x_scale = xq.scale;
                local.x_zero = xq.zero;
                e = &local;
            }
        }
        if (!P || !acc || !stage || (Xf && !xbuf)) {
#pragma omp atomic write
            status = BSK_ENOMEM;
        } else {
            /* grid cell c = part * ntiles + tile; this thread's cells, one
             * part at a time */
            for (int64_t c = id * per; c < (id + 1) * per;) {
                const int64_t part = c / ntiles, t0 = c % ntiles;
                int64_t t1 = t0 + ((id + 1) * per - c);
                t1 = t1 < ntiles ? t1 : ntiles;
                xq.publish = part == 0;
                run_range(Wq, X, ldx, N, xt, Y, ldy, yt, e, strip,
                          part_start(work, units, part, parts),
                          part_start(work, units, part + 1, parts), t0, t1, batch, P, acc, stage,
                          Xf ? &xq : NULL);
                c += t1 - t0;
            }
            nonfinite |= xq.nonfinite;
        }
        BSK_TEAM_LEAVE(&clock, id);
    }
    bsk_team_end(&clock);
    if (status == BSK_OK && nonfinite)
        status = BSK_ENONFINITE;
    return (bsk_status)status;
}

bsk_status BSK_QFN(const bsk_qbcsr *Wq, const uint8_t *X, int64_t ldx,
                   int64_t N, int xt, void *Y, int64_t ldy, int yt,
                   const bsk_epilogue *epi, int nt)
{
    return qspmm_run(Wq, X, NULL, ldx, N, xt, Y, ldy, yt, epi, NULL, NULL, nt);
}

bsk_status BSK_QLFN(const bsk_qbcsr *Wq, const float *X, int64_t ldx, int64_t N,
                    float *x_scale, int32_t *x_zero, void *Y, int64_t ldy,
                    const bsk_epilogue *epi, int nt)
{
    return qspmm_run(Wq, NULL, X, ldx, N, 1, Y, ldy, 1, epi, x_scale, x_zero, nt);
}
