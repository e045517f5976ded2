/*
 * Dense INT8 product (u8 activations, s8 weights, s32 accumulators) with the
 * fused epilogue of the sparse kernels, written once and compiled per ISA.
 * The including unit defines the primitives:
 *   QG_V, QG_BYTES      vector type and its width in bytes (32 or 64)
 *   QG_LOAD, QG_STORE   unaligned load/store; QG_ZERO()
 *   QG_X, QG_XPREP(v)   an activation vector made ready for QG_DOT
 *   QG_W, QG_WPREP(p)   the 32-bit weight group at p, broadcast, ready for QG_DOT
 *   QG_DOT(acc, x, w)   acc += the 4 u8 x s8 products of each 32-bit lane, exact
 *   QG_MRS              weight rows per microkernel pass (divides BSK_QGEMM_MR)
 *   QG_WWIDE(dst, src)  optional: the MR weight groups of one K-group (src,
 *                       MR int32 of the panel) prepared once per row chunk
 *                       into 2 * MR int32 at dst, which QG_WPREP then reads
 *                       (p[0] and p[BSK_QGEMM_MR] for row p)
 *   QG_NV               token vectors per tile (1 .. 4)
 *   BSK_QGEMM_FN        name of the entry point
 *
 * Layouts.  The weight panel (bsk_qdense, packed once) holds rows in blocks
 * of MR = 8, K-group by K-group: a microkernel reads its rows' 32-bit groups
 * linearly.  The activations of a tile of up to QG_NV vectors of tokens are
 * packed per call into the VNNI layout [G][width][4] (G = ceil(K / 4)): for
 * each group of four input features and each token, its four bytes are
 * adjacent, in token order; tokens past N and features past K are zeros.
 *
 * Microkernel: QG_MRS rows x nv token vectors of accumulators; per K-group
 * nv activation loads and QG_MRS weight broadcasts feed QG_MRS * nv dots.
 * Where a weight group needs work before its broadcast can meet the dot (AVX2
 * without VNNI: sign extension to 16 bits), QG_WWIDE does it once per row
 * chunk into a per-thread copy that every token tile then reads.
 *
 * The tile's MR x width accumulators then go through the shared epilogue
 * (bsk_epilogue_rows, four rows at a time so the (N, M) output gets 4-wide
 * stores), so the results are those of the sparse kernels bit for bit.
 *
 * Threads: the team is laid out as Tm x Tn over (row blocks) x (token
 * vectors), the split with the least work on the busiest thread; each thread
 * packs its own token tiles (threads sharing tokens pack them twice, which
 * costs K x N bytes against M x K x N / threads dots), so there is no barrier
 * between packing and compute.  Every output is computed by one thread in
 * the same order whatever the split: results do not depend on the threads.
 */
#include "simd/epilogue.h"
#include "simd/interleave.h"

#define QG_LANES (QG_BYTES / 4)            /* tokens per vector */
#define QG_MR BSK_QGEMM_MR                 /* rows per weight block */
#define QG_TILE (QG_NV * QG_LANES)         /* tokens per tile, at most */
#define QG_CHUNK_BYTES (256 << 10)         /* weights per row chunk (L2 share) */
#define QG_SPAN_TOKENS 512                 /* tokens packed at a time per thread */
#ifdef QG_WWIDE
#define QG_WWORDS 2                        /* int32 per prepared weight group */
#else
#define QG_WWORDS 1
#endif

#if QG_MR % QG_MRS || QG_MRS > 8 || QG_NV < 1 || QG_NV > 4
#error "QG_MRS must divide BSK_QGEMM_MR (<= 8) and QG_NV lie in 1 .. 4"
#endif

/* ---- activation packing --------------------------------------------------------- */

/* 16 tokens of one K-group from four feature rows (16 bytes each) -> 64 bytes
 * in VNNI order: token t's four bytes at 4t. */
static inline void interleave16(const uint8_t *r0, const uint8_t *r1, const uint8_t *r2,
                                const uint8_t *r3, uint8_t *dst)
{
    bsk_interleave4x16(_mm_loadu_si128((const __m128i *)r0), _mm_loadu_si128((const __m128i *)r1),
                       _mm_loadu_si128((const __m128i *)r2), _mm_loadu_si128((const __m128i *)r3),
                       dst);
}

/* Four tokens x four K-groups (16 bytes of each token's row) -> the four
 * groups' 16-byte runs of the four tokens: a 4 x 4 transpose of dwords. */
static inline void transpose4x4_groups(const uint8_t *src, int64_t lds, uint8_t *dst,
                                       int64_t ldd)
{
    const __m128i t0 = _mm_loadu_si128((const __m128i *)src);
    const __m128i t1 = _mm_loadu_si128((const __m128i *)(src + lds));
    const __m128i t2 = _mm_loadu_si128((const __m128i *)(src + 2 * lds));
    const __m128i t3 = _mm_loadu_si128((const __m128i *)(src + 3 * lds));
    const __m128i a = _mm_unpacklo_epi32(t0, t1), b = _mm_unpackhi_epi32(t0, t1);
    const __m128i c = _mm_unpacklo_epi32(t2, t3), d = _mm_unpackhi_epi32(t2, t3);
    _mm_storeu_si128((__m128i *)dst, _mm_unpacklo_epi64(a, c));
    _mm_storeu_si128((__m128i *)(dst + ldd), _mm_unpackhi_epi64(a, c));
    _mm_storeu_si128((__m128i *)(dst + 2 * ldd), _mm_unpacklo_epi64(b, d));
    _mm_storeu_si128((__m128i *)(dst + 3 * ldd), _mm_unpackhi_epi64(b, d));
}

/* Pack tokens n0 .. n0 + cnt - 1 into the tile P = [G4][W16][4] (G4: the K-groups
 * rounded up to 4, W16: width rounded up to 16 tokens), zeros past cnt and K.
 * The vector code works on whole 64-byte pieces; a piece at the edge of X is
 * first copied into a zeroed 4 x 16-byte buffer, so no byte is handled alone
 * and nothing past X is read. */
static void pack_tile(const uint8_t *X, int64_t ldx, int xt, int64_t K, int64_t n0,
                      int64_t cnt, int64_t width, uint8_t *P)
{
    const int64_t G4 = (K + 15) / 16 * 4, W16 = (width + 15) / 16 * 16, ldp = 4 * W16;
    uint8_t tmp[4][16];
    if (!xt) { /* X (K, N): interleave four feature rows, 16 tokens at a time */
        X += n0;
        for (int64_t g = 0; g < G4; g++)
            for (int64_t n = 0; n < W16; n += 16) {
                const uint8_t *r = X + 4 * g * ldx + n;
                if (4 * g + 4 <= K && n + 16 <= cnt) {
                    interleave16(r, r + ldx, r + 2 * ldx, r + 3 * ldx, P + g * ldp + 4 * n);
                    continue;
                }
                for (int j = 0; j < 4; j++)
                    bsk_copy_part(tmp[j], r + j * ldx, 4 * g + j < K ? cnt - n : 0, 16);
                interleave16(tmp[0], tmp[1], tmp[2], tmp[3], P + g * ldp + 4 * n);
            }
        return;
    }
    /* X (N, K): 4 tokens x 4 groups at a time, a transpose of 32-bit groups */
    X += n0 * ldx;
    for (int64_t n = 0; n < W16; n += 4)
        for (int64_t g = 0; g < G4; g += 4) {
            const uint8_t *r = X + n * ldx + 4 * g;
            if (n + 4 <= cnt && 4 * g + 16 <= K) {
                transpose4x4_groups(r, ldx, P + g * ldp + 4 * n, ldp);
                continue;
            }
            for (int i = 0; i < 4; i++)
                bsk_copy_part(tmp[i], r + i * ldx, n + i < cnt ? K - 4 * g : 0, 16);
            transpose4x4_groups(tmp[0], 16, P + g * ldp + 4 * n, ldp);
        }
}

/* Bytes of a packed tile of `width` tokens (see pack_tile). */
static inline int64_t tile_bytes(int64_t K, int64_t width)
{
    return (K + 15) / 16 * 4 * 4 * ((width + 15) / 16 * 16);
}

/* ---- microkernel ------------------------------------------------------------------ */

#define QG_ROWS(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)
#define QG_DECL(r)                                                             \
    QG_V a##r##0 = QG_ZERO(), a##r##1 = QG_ZERO(), a##r##2 = QG_ZERO(),        \
         a##r##3 = QG_ZERO();
#define QG_STEP(r)                                                             \
    if (r < QG_MRS) {                                                          \
        const QG_W w = QG_WPREP(wp + r);                                       \
        a##r##0 = QG_DOT(a##r##0, x0, w);                                      \
        if (nv > 1)                                                            \
            a##r##1 = QG_DOT(a##r##1, x1, w);                                  \
        if (nv > 2)                                                            \
            a##r##2 = QG_DOT(a##r##2, x2, w);                                  \
        if (nv > 3)                                                            \
            a##r##3 = QG_DOT(a##r##3, x3, w);                                  \
    }
#define QG_SAVE(r)                                                             \
    if (r < QG_MRS) {                                                          \
        QG_STORE(acc + r * ldacc, a##r##0);                                    \
        if (nv > 1)                                                            \
            QG_STORE(acc + r * ldacc + QG_LANES, a##r##1);                     \
        if (nv > 2)                                                            \
            QG_STORE(acc + r * ldacc + 2 * QG_LANES, a##r##2);                 \
        if (nv > 3)                                                            \
            QG_STORE(acc + r * ldacc + 3 * QG_LANES, a##r##3);                 \
    }

/* acc[r][0 .. nv * LANES) = sum over the G groups of rows wp[r] (stride MR *
 * QG_WWORDS per group) times the packed activations xp (stride ldp bytes per
 * group). */
BSK_INLINE void qg_micro(const int nv, const int32_t *wp, const uint8_t *xp, int64_t G,
                         int64_t ldp, int32_t *acc, int64_t ldacc)
{
    QG_ROWS(QG_DECL)
    for (int64_t g = 0; g < G; g++, wp += QG_MR * QG_WWORDS, xp += ldp) {
        const QG_X x0 = QG_XPREP(QG_LOAD(xp));
        const QG_X x1 = nv > 1 ? QG_XPREP(QG_LOAD(xp + QG_BYTES)) : x0;
        const QG_X x2 = nv > 2 ? QG_XPREP(QG_LOAD(xp + 2 * QG_BYTES)) : x0;
        const QG_X x3 = nv > 3 ? QG_XPREP(QG_LOAD(xp + 3 * QG_BYTES)) : x0;
        QG_ROWS(QG_STEP)
    }
    QG_ROWS(QG_SAVE)
}
#undef QG_DECL
#undef QG_STEP
#undef QG_SAVE

/* One weight block (MR rows) times a packed tile of nv vectors. */
static void qg_block(int nv, const int32_t *wb, const uint8_t *P, int64_t G, int32_t *acc)
{
    const int64_t ldp = 4 * (((int64_t)nv * QG_LANES + 15) / 16 * 16);
    for (int s = 0; s < QG_MR; s += QG_MRS) {
        switch (nv) {
        case 1: qg_micro(1, wb + s, P, G, ldp, acc + s * QG_TILE, QG_TILE); break;
#if QG_NV >= 2
        case 2: qg_micro(2, wb + s, P, G, ldp, acc + s * QG_TILE, QG_TILE); break;
#endif
#if QG_NV >= 3
        case 3: qg_micro(3, wb + s, P, G, ldp, acc + s * QG_TILE, QG_TILE); break;
#endif
#if QG_NV >= 4
        default: qg_micro(4, wb + s, P, G, ldp, acc + s * QG_TILE, QG_TILE); break;
#endif
        }
    }
}

/* ---- the (N, M) output ------------------------------------------------------------ */

/* v[r][c] -> v[c][r] for BSK_VL vectors of BSK_VL lanes (the unit's vectors,
 * vec16.h): at each level s the off-diagonal s x s blocks of every 2s x 2s
 * block are swapped (one two-source permute per vector and level). */
static inline void qg_transpose(bsk_vi v[BSK_VL])
{
#define QG_LEVEL(s)                                                                     \
    do {                                                                                \
        const bsk_vi lo = BSK_VL_IOTA;                                                  \
        const bsk_vi bit = (lo & (s)) != 0;                                             \
        const bsk_vi keep = (bsk_vi)((lo & ~bit) | ((BSK_VL + lo - (s)) & bit));        \
        const bsk_vi take = (bsk_vi)(((lo + (s)) & ~bit) | ((BSK_VL + lo) & bit));      \
        for (int i = 0; i < BSK_VL; i++)                                                \
            if (!(i & (s))) {                                                           \
                const bsk_vi a = v[i], b = v[i + (s)];                                  \
                v[i] = __builtin_shuffle(a, b, keep);                                   \
                v[i + (s)] = __builtin_shuffle(a, b, take);                             \
            }                                                                           \
    } while (0)
#if BSK_VL == 16
    QG_LEVEL(8);
#endif
    QG_LEVEL(4);
    QG_LEVEL(2);
    QG_LEVEL(1);
#undef QG_LEVEL
}

/*
 * The epilogue of up to 16 rows (m0 ..) x the tokens n0 .. n0 + cnt_all - 1 of an
 * accumulator tile, stored into the (N, M) output: bsk_epi_values gives each
 * row's results for a vector of tokens (the arithmetic of every INT8 kernel),
 * BSK_VL x BSK_VL transposes turn them into each token's run of 16 rows, stored
 * at once.  Writing a token's cache line in one piece matters: the tokens of a
 * tile are M elements apart, so when M * 4 is a multiple of 4096 all of them
 * fall into one L1 set, and the 16-byte pieces of the 4-row transposed stores
 * evict each other's lines (a 3072 x 768 x 128 product ran at 75 % instead of
 * 87 %).
 */
BSK_INLINE void qg_store_tokens_k(const bsk_epilogue *e, const int32_t *acc, int64_t ld,
                                  int rows, int64_t m0, int64_t n0, int64_t cnt_all,
                                  void *out, int64_t ldo, const int kind, const int act)
{
    for (int64_t t = 0; t < cnt_all; t += BSK_VL) {
        const int cnt = cnt_all - t < BSK_VL ? (int)(cnt_all - t) : BSK_VL;
        bsk_vi v[16];
        for (int r = 0; r < 16; r++)
            v[r] = r < rows ? bsk_epi_values(e, *(const bsk_vi_u *)(acc + r * ld + t),
                                             m0 + r, n0 + t, cnt, kind, act)
                            : (bsk_vi){0};
        /* v[BSK_VL * b + tok]: token tok's rows BSK_VL * b .. */
        for (int b = 0; b < 16; b += BSK_VL)
            qg_transpose(v + b);
        for (int tok = 0; tok < cnt; tok++) {
            const int64_t at = (n0 + t + tok) * ldo + m0;
            for (int b = 0; b < rows; b += BSK_VL) {
                const int n = rows - b < BSK_VL ? rows - b : BSK_VL;
                if (kind == BSK_OUT_U8) {
                    const bsk_vb q = __builtin_convertvector(v[b + tok], bsk_vb);
                    memcpy((uint8_t *)out + at + b, &q, (size_t)n);
                } else {
                    memcpy((int32_t *)out + at + b, &v[b + tok], 4 * (size_t)n);
                }
            }
        }
    }
}

#define QG_EPI_CASE(kind, act)                                                          \
    qg_store_tokens_k(e, acc, ld, rows, m0, n0, cnt_all, out, ldo, kind, act)

/* Dispatch once per tile to a loop specialised for the output kind and activation. */
static void qg_store_tokens(const bsk_epilogue *e, const int32_t *acc, int64_t ld, int rows,
                            int64_t m0, int64_t n0, int64_t cnt_all, void *out, int64_t ldo)
{
    const int act = e->kind == BSK_OUT_I32 ? BSK_ACT_NONE : e->act;
    switch (e->kind * 3 + act) {
    case 0: QG_EPI_CASE(BSK_OUT_I32, BSK_ACT_NONE); break;
    case 3: QG_EPI_CASE(BSK_OUT_F32, BSK_ACT_NONE); break;
    case 4: QG_EPI_CASE(BSK_OUT_F32, BSK_ACT_RELU); break;
    case 5: QG_EPI_CASE(BSK_OUT_F32, BSK_ACT_GELU); break;
    case 6: QG_EPI_CASE(BSK_OUT_U8, BSK_ACT_NONE); break;
    case 7: QG_EPI_CASE(BSK_OUT_U8, BSK_ACT_RELU); break;
    default: QG_EPI_CASE(BSK_OUT_U8, BSK_ACT_GELU); break;
    }
}
#undef QG_EPI_CASE

/* ---- threads and entry point --------------------------------------------------------- */

/* Tm x Tn = T threads over nrb row blocks x nvec token vectors: the least work
 * on the busiest thread, ties to more token parts (less duplicated packing). */
static void qg_grid(int64_t nrb, int64_t nvec, int T, int *Tm, int *Tn)
{
    int64_t best = -1;
    for (int tn = 1; tn <= T; tn++) {
        if (T % tn)
            continue;
        const int tm = T / tn;
        const int64_t cost = ((nrb + tm - 1) / tm) * ((nvec + tn - 1) / tn);
        if (best < 0 || cost <= best) {
            best = cost;
            *Tm = tm;
            *Tn = tn;
        }
    }
}

bsk_status BSK_QGEMM_FN(const bsk_qdense *W, const uint8_t *X, int64_t ldx, int64_t N,
                        int xt, void *Y, int64_t ldy, int yt, const bsk_epilogue *epi,
                        int nt)
{
    const int64_t M = W->M, K = W->K, G = (K + 3) / 4;
    if (N == 0 || M == 0)
        return BSK_OK;
    const int64_t nrb = (M + QG_MR - 1) / QG_MR, nvec = (N + QG_LANES - 1) / QG_LANES;
    int status = BSK_OK;
    bsk_team_clock clock;
    nt = bsk_team_begin(&clock, nt);

#pragma omp parallel num_threads(nt)
    {
        int T = 1, tid = 0, Tm = 1, Tn = 1;
#ifdef _OPENMP
        T = omp_get_num_threads();
        tid = omp_get_thread_num();
#endif
        BSK_TEAM_ENTER(&clock, tid);
        qg_grid(nrb, nvec, T, &Tm, &Tn);
        int64_t rb0, rb1, v0, v1;
        bsk_split(nrb, Tm, tid / Tn, &rb0, &rb1);
        bsk_split(nvec, Tn, tid % Tn, &v0, &v1);
        /* this thread's token vectors [v0, v1), at most QG_SPAN_TOKENS at a time, in
         * tiles of at most QG_NV vectors, all packed first, one after the other */
        const int64_t span = QG_SPAN_TOKENS / QG_LANES, max_tiles = span / QG_NV + 1;
        int64_t offset[QG_SPAN_TOKENS / QG_LANES / QG_NV + 2];
        uint8_t *P = (uint8_t *)bsk_alloc((size_t)((span * QG_LANES / 16 + max_tiles) *
                                                   tile_bytes(K, 16)));
        int32_t *acc = (int32_t *)bsk_alloc(2 * QG_MR * QG_TILE * sizeof(int32_t));
        /* row chunks of about QG_CHUNK_BYTES of (prepared) weights, each run over
         * every tile, so the chunk stays in L2 and the weights are read from
         * memory once */
        const int64_t rc_blocks =
            2 * (QG_CHUNK_BYTES / (2 * QG_MR * 4 * QG_WWORDS * (G > 0 ? G : 1)) + 1);
#ifdef QG_WWIDE
        int32_t *Wc = (int32_t *)bsk_alloc((size_t)(rc_blocks * G * QG_MR * QG_WWORDS) * 4);
        const int wc_ok = Wc != NULL;
#else
        const int wc_ok = 1;
#endif
        if (!P || !acc || !wc_ok) {
#pragma omp atomic write
            status = BSK_ENOMEM;
        }
        for (int64_t s0 = v0; P && acc && wc_ok && rb0 < rb1 && s0 < v1; s0 += span) {
            const int64_t nvs = v1 - s0 < span ? v1 - s0 : span;
            const int64_t ntiles = (nvs + QG_NV - 1) / QG_NV;
            offset[0] = 0;
            for (int64_t t = 0; t < ntiles; t++) {
                int64_t t0, t1;
                bsk_split(nvs, (int)ntiles, (int)t, &t0, &t1);
                const int64_t n0 = (s0 + t0) * QG_LANES, width = (t1 - t0) * QG_LANES;
                pack_tile(X, ldx, xt, K, n0, N - n0 < width ? N - n0 : width, width,
                          P + offset[t]);
                offset[t + 1] = offset[t] + tile_bytes(K, width);
            }
            for (int64_t rc = rb0; rc < rb1; rc += rc_blocks) {
                const int64_t rc1 = rc + rc_blocks < rb1 ? rc + rc_blocks : rb1;
#ifdef QG_WWIDE
                for (int64_t g = 0; g < (rc1 - rc) * G; g++)
                    QG_WWIDE(Wc + g * QG_MR * QG_WWORDS, W->panel + rc * G * QG_MR + g * QG_MR);
                const int32_t *wchunk = Wc;
#else
                const int32_t *wchunk = W->panel + rc * G * QG_MR;
#endif
                for (int64_t t = 0; t < ntiles; t++) {
                    int64_t t0, t1;
                    bsk_split(nvs, (int)ntiles, (int)t, &t0, &t1);
                    const int nv = (int)(t1 - t0);
                    const int64_t n0 = (s0 + t0) * QG_LANES;
                    const uint8_t *Pt = P + offset[t];
                    const int64_t cnt = N - n0 < nv * QG_LANES ? N - n0 : nv * QG_LANES;
                    /* two blocks (16 rows) at a time: a 64-byte line of the (N, M) output */
                    for (int64_t rb = rc; rb < rc1; rb += 2) {
                        const int64_t m0 = rb * QG_MR;
                        const int64_t pair = rb + 1 < rc1 ? 2 * QG_MR : QG_MR;
                        const int rows = (int)(M - m0 < pair ? M - m0 : pair);
                        const int32_t *wb = wchunk + (rb - rc) * G * QG_MR * QG_WWORDS;
                        qg_block(nv, wb, Pt, G, acc);
                        if (rb + 1 < rc1)
                            qg_block(nv, wb + G * QG_MR * QG_WWORDS, Pt, G,
                                     acc + QG_MR * QG_TILE);
                        if (yt)
                            qg_store_tokens(epi, acc, QG_TILE, rows, m0, n0, cnt, Y, ldy);
                        else
                            bsk_epilogue_rows(epi, acc, QG_TILE, rows, m0, n0, cnt, N, Y,
                                              ldy, 0);
                    }
                }
            }
        }
        free(P);
        free(acc);
#ifdef QG_WWIDE
        free(Wc);
#endif
        BSK_TEAM_LEAVE(&clock, tid);
    }
    bsk_team_end(&clock);
    return (bsk_status)status;
}

#undef QG_ROWS
#undef QG_LANES
#undef QG_MR
#undef QG_TILE
#undef QG_CHUNK_BYTES
#undef QG_SPAN_TOKENS
#undef QG_WWORDS
