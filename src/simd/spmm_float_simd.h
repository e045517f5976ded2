/*
 * Vectorized float block-CSR x dense kernels, written once with GCC/Clang
 * vector extensions and compiled per ISA (see src/avx2, src/avx512vnni).
 * The including file defines
 *   BSK_T       float or double
 *   BSK_TSIZE   sizeof(BSK_T), as a number the preprocessor can see
 *   BSK_VBYTES  vector width in bytes (32 for AVX2, 64 for AVX-512)
 *   BSK_ACC     accumulator vectors to keep in registers
 *   BSK_FN      name of the entry point to define
 *
 * Both forms run the same compute core on a packed activation panel:
 *
 *   panel P    [K][NT]: one token tile of NT = NV * lanes tokens, k-major,
 *              64-byte aligned and private to the thread.  For Y = W @ X the
 *              tile is copied row by row from X (K, N); for Y = X @ W.T it
 *              is transposed from X (N, K) in lanes x lanes register blocks.
 *              The row stride NT is a compile-time constant of the core, so
 *              the inner loop is one index load plus loads at constant
 *              offsets (a runtime ldx made GCC spill address arithmetic).
 *   core       RB rows of one block row x NV vectors of tokens held in
 *              registers; each stored weight is broadcast once and
 *              multiplied into NV panel vectors.  (4, 1): RB = 4 rows share
 *              every panel load.  (1, 4): RB = 1, one panel load per FMA,
 *              so it is bound by L1 load bandwidth and the panel must stay
 *              close: see K-chunks.
 *   K-chunks   the block columns are walked in chunks of about
 *              BSK_CHUNK_BYTES of panel; all rows of a row block (about
 *              BSK_YBLOCK_BYTES of accumulators) finish one chunk before
 *              the next, so the chunk stays in L1/L2 while it is reused.
 *              Accumulators go to memory between chunks and come back
 *              exactly, so every output is still summed over k in
 *              ascending order in one register lane: chunking, tiling and
 *              the thread split do not change any result.
 *   output     accumulators of a row block live in a private aligned buffer
 *              (ys, rows x NT) between chunks and are copied (W @ X) or
 *              transposed (Linear form) into Y once the row block is done.
 *              Accumulating in Y itself was no faster on one thread and
 *              slower on two: NumPy's Y is only 16-byte aligned, so the two
 *              threads' token tiles share a cache line in every row.
 *   threads    one parallel region with no barrier inside: when the token
 *              tiles divide evenly among the threads (N = 128 or 384 with
 *              64-token tiles on two threads), thread p takes every np-th
 *              tile and all rows, so no tile is packed twice; otherwise it
 *              takes a contiguous range of block rows holding about the same
 *              number of stored blocks (split on 16-row boundaries), packs
 *              every tile itself and computes its rows.  Either way each
 *              output element is computed by one thread in the same order.
 */
#include "bsk_internal.h"

typedef BSK_T bsk_vec __attribute__((vector_size(BSK_VBYTES)));
typedef BSK_T bsk_vec_u __attribute__((vector_size(BSK_VBYTES), aligned(BSK_TSIZE)));
#define BSK_LANES (BSK_VBYTES / BSK_TSIZE)

#ifndef BSK_CHUNK_BYTES
#define BSK_CHUNK_BYTES (64 * 1024)
#endif
/* Widest token tile.  64 tokens are as fast per flop as 128 for (1, 4) and
 * give N = 128 two tiles, so two threads split tiles and pack nothing twice. */
#ifndef BSK_MAX_NT
#define BSK_MAX_NT 64
#endif
#ifndef BSK_YBLOCK_BYTES
#define BSK_YBLOCK_BYTES (64 * 1024)
#endif

/* ---- lanes x lanes transpose ------------------------------------------- */

/* Two-input shuffles: interleave the low (high) halves of a and b. */
#if BSK_LANES == 16
#define BSK_LO 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define BSK_HI 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#define BSK_LOG2_LANES 4
#elif BSK_LANES == 8
#define BSK_LO 0, 8, 1, 9, 2, 10, 3, 11
#define BSK_HI 4, 12, 5, 13, 6, 14, 7, 15
#define BSK_LOG2_LANES 3
#elif BSK_LANES == 4
#define BSK_LO 0, 4, 1, 5
#define BSK_HI 2, 6, 3, 7
#define BSK_LOG2_LANES 2
#else
#error "unsupported vector width"
#endif

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define BSK_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#if BSK_TSIZE == 4
typedef int32_t bsk_ivec __attribute__((vector_size(BSK_VBYTES)));
#else
typedef int64_t bsk_ivec __attribute__((vector_size(BSK_VBYTES)));
#endif
#define BSK_SHUF(a, b, ...) __builtin_shuffle(a, b, (bsk_ivec){__VA_ARGS__})
#endif

/* Transpose a lanes x lanes block held in r[0 .. lanes): log2(lanes)
 * rounds of the perfect shuffle (row i and row i + lanes/2 interleaved into
 * rows 2i and 2i+1) turn rows into columns. */
BSK_INLINE void transpose_block(bsk_vec *r)
{
#pragma GCC unroll 4
    for (int s = 0; s < BSK_LOG2_LANES; s++) {
        bsk_vec t[BSK_LANES];
#pragma GCC unroll 16
        for (int i = 0; i < BSK_LANES / 2; i++) {
            t[2 * i] = BSK_SHUF(r[i], r[i + BSK_LANES / 2], BSK_LO);
            t[2 * i + 1] = BSK_SHUF(r[i], r[i + BSK_LANES / 2], BSK_HI);
        }
#pragma GCC unroll 16
        for (int i = 0; i < BSK_LANES; i++)
            r[i] = t[i];
    }
}

/* dst[i * ldd + j] = src[j * lds + i] for i < rows, j < cols, in
 * lanes x lanes blocks.  by_dst walks the blocks along dst rows (write
 * streams sequential: use it when dst is the big, cold array), otherwise
 * along src rows. */
BSK_INLINE void transpose_blockcopy(BSK_T *dst, int64_t ldd, const BSK_T *src,
                                    int64_t lds, int64_t i, int64_t j)
{
    bsk_vec r[BSK_LANES];
#pragma GCC unroll 16
    for (int l = 0; l < BSK_LANES; l++)
        r[l] = *(const bsk_vec_u *)(src + (j + l) * lds + i);
    transpose_block(r);
#pragma GCC unroll 16
    for (int l = 0; l < BSK_LANES; l++)
        *(bsk_vec_u *)(dst + (i + l) * ldd + j) = r[l];
}

static void transpose_copy(BSK_T *dst, int64_t ldd, const BSK_T *src,
                           int64_t lds, int64_t rows, int64_t cols, int by_dst)
{
    const int64_t L = BSK_LANES;
    const int64_t rf = rows / L * L, cf = cols / L * L;
    if (by_dst) {
        for (int64_t i = 0; i < rf; i += L)
            for (int64_t j = 0; j < cf; j += L)
                transpose_blockcopy(dst, ldd, src, lds, i, j);
    } else {
        for (int64_t j = 0; j < cf; j += L)
            for (int64_t i = 0; i < rf; i += L)
                transpose_blockcopy(dst, ldd, src, lds, i, j);
    }
    for (int64_t i = rf; i < rows; i++) /* ragged edges */
        for (int64_t j = 0; j < cf; j++)
            dst[i * ldd + j] = src[j * lds + i];
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = cf; j < cols; j++)
            dst[i * ldd + j] = src[j * lds + i];
}

/* ---- compute core -------------------------------------------------------- */

/*
 * Block rows [i0, i1), block columns below bend, starting at cur[i - i0]
 * (advanced on return).  Accumulator rows live at ys + (row - i0 * R) * NT;
 * `first` starts them at zero instead of loading them.  RB rows x NV vectors
 * per register tile; C_ == 0 means the block width is read at run time.
 */
BSK_INLINE void rows_core(const bsk_bcsr *W, int64_t i0, int64_t i1,
                          int64_t bend, int first, const BSK_T *P, BSK_T *ys,
                          int32_t *cur, const int RB,
                          const int C_, const int NV)
{
    const int64_t R = W->R, C = C_ ? C_ : W->C, RC = R * C;
    const int64_t NT = (int64_t)NV * BSK_LANES;
    const BSK_T *data = (const BSK_T *)W->data;
    const int32_t *ind = W->indices;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t jb = cur[i - i0], je = W->indptr[i + 1];
        const int any = jb < je && ind[jb] < bend;
        if (!first && !any)
            continue; /* nothing in this chunk: accumulators stay in memory */
        int64_t jend = jb;
        for (int64_t r0 = 0; r0 < R; r0 += RB) {
            BSK_T *y = ys + ((i - i0) * R + r0) * NT;
            bsk_vec acc[8][8];
#pragma GCC unroll 8
            for (int rr = 0; rr < RB; rr++)
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++)
                    acc[rr][v] = first ? (bsk_vec){0}
                                       : *(const bsk_vec *)(y + rr * NT + v * BSK_LANES);
            const BSK_T *blk = data + jb * RC + r0 * C;
            /* the first row group finds the chunk's end, the others reuse it */
            const int64_t jlim = r0 == 0 ? je : jend;
            int64_t j = jb;
            for (; j < jlim; j++, blk += RC) {
                const int64_t col = ind[j];
                if (r0 == 0 && col >= bend)
                    break;
                const bsk_vec *xk = (const bsk_vec *)(P + col * C * NT);
#pragma GCC unroll 16
                for (int64_t c = 0; c < C; c++) {
                    bsk_vec x[8];
#pragma GCC unroll 8
                    for (int v = 0; v < NV; v++)
                        x[v] = xk[c * NV + v];
#pragma GCC unroll 8
                    for (int rr = 0; rr < RB; rr++) {
                        const BSK_T w = blk[rr * C + c];
#pragma GCC unroll 8
                        for (int v = 0; v < NV; v++)
                            acc[rr][v] += w * x[v];
                    }
                }
            }
            if (r0 == 0)
                jend = j;
#pragma GCC unroll 8
            for (int rr = 0; rr < RB; rr++)
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++)
                    *(bsk_vec *)(y + rr * NT + v * BSK_LANES) = acc[rr][v];
        }
        cur[i - i0] = (int32_t)jend;
    }
}

typedef void (*rows_fn)(const bsk_bcsr *, int64_t, int64_t, int64_t, int,
                        const BSK_T *, BSK_T *, int32_t *);

#define BSK_ROWS(RB, C, NV)                                                   \
    static void rows_##RB##_##C##_##NV(const bsk_bcsr *W, int64_t i0,         \
                                       int64_t i1, int64_t bend, int first,   \
                                       const BSK_T *P, BSK_T *ys,             \
                                       int32_t *cur)                          \
    {                                                                         \
        rows_core(W, i0, i1, bend, first, P, ys, cur, RB, C, NV);             \
    }
/* block width 1 (e.g. (4, 1), (16, 1)), 4 (e.g. (1, 4), (4, 4)), any */
#define BSK_ROWS_C(RB, NV) BSK_ROWS(RB, 1, NV) BSK_ROWS(RB, 4, NV) BSK_ROWS(RB, 0, NV)
BSK_ROWS_C(1, 1) BSK_ROWS_C(1, 2) BSK_ROWS_C(1, 4) BSK_ROWS_C(1, 8)
BSK_ROWS_C(2, 1) BSK_ROWS_C(2, 2) BSK_ROWS_C(2, 4)
BSK_ROWS_C(4, 1) BSK_ROWS_C(4, 2) BSK_ROWS_C(4, 4)
BSK_ROWS_C(8, 1) BSK_ROWS_C(8, 2)

#define BSK_PICK_C(RB, NV)                                                    \
    (C == 1 ? rows_##RB##_1_##NV : C == 4 ? rows_##RB##_4_##NV : rows_##RB##_0_##NV)

/* Register tile for block shape (R, C) and N tokens: RB rows (a divisor of
 * R) x NV vectors, NV as large as the accumulator budget allows but no
 * wider than N needs (a matrix-vector product uses one vector). */
static rows_fn choose_rows(int64_t R, int64_t C, int64_t N, int *nv_out)
{
    const int rb = R % 8 == 0 ? 8 : R % 4 == 0 ? 4 : R % 2 == 0 ? 2 : 1;
    int nvmax = BSK_ACC / rb;
    if (nvmax > 8)
        nvmax = 8;
    if (nvmax > BSK_MAX_NT / BSK_LANES)
        nvmax = BSK_MAX_NT / BSK_LANES;
    if (rb == 2 && nvmax > 4)
        nvmax = 4;
    if (nvmax < 1)
        nvmax = 1;
    const int64_t need = (N + BSK_LANES - 1) / BSK_LANES;
    int nv = 1;
    while (nv < need && nv < nvmax)
        nv *= 2;
    *nv_out = nv;
    switch (rb * 16 + nv) {
    case 16 + 1: return BSK_PICK_C(1, 1);
    case 16 + 2: return BSK_PICK_C(1, 2);
    case 16 + 4: return BSK_PICK_C(1, 4);
    case 16 + 8: return BSK_PICK_C(1, 8);
    case 32 + 1: return BSK_PICK_C(2, 1);
    case 32 + 2: return BSK_PICK_C(2, 2);
    case 32 + 4: return BSK_PICK_C(2, 4);
    case 64 + 1: return BSK_PICK_C(4, 1);
    case 64 + 2: return BSK_PICK_C(4, 2);
    case 64 + 4: return BSK_PICK_C(4, 4);
    case 128 + 1: return BSK_PICK_C(8, 1);
    default: return BSK_PICK_C(8, 2);
    }
}

/* ---- work split ---------------------------------------------------------- */

/* Boundary q of `parts` ranges of block rows [0, nbr): the first multiple
 * of gb (or nbr) where the cost prefix indptr[b] + b (one block's worth of
 * per-row overhead) reaches q / parts of the total.  Monotone in q, so the
 * ranges tile [0, nbr) and depend only on the matrix and `parts`. */
static int64_t split_point(const int32_t *indptr, int64_t nbr, int64_t gb,
                           int parts, int q)
{
    if (q <= 0)
        return 0;
    if (q >= parts)
        return nbr;
    const int64_t total = (int64_t)indptr[nbr] + nbr;
    const int64_t target = total * q / parts;
    int64_t lo = 0, hi = (nbr + gb - 1) / gb; /* granule boundaries */
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        const int64_t b = mid * gb < nbr ? mid * gb : nbr;
        if ((int64_t)indptr[b] + b >= target)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo * gb < nbr ? lo * gb : nbr;
}

/* ---- packing ------------------------------------------------------------- */

/* P[k][n] = token n0 + n of feature k for k0 <= k < k1 and n < cnt, 0 for
 * cnt <= n < NT (padding lanes are computed and dropped; zeros keep them
 * free of NaN and denormal slow paths). */
static void pack_rows(BSK_T *P, int64_t NT, const BSK_T *X, int64_t ldx,
                      int64_t k0, int64_t k1, int64_t n0, int64_t cnt,
                      int transposed)
{
    if (!transposed) {
        for (int64_t k = k0; k < k1; k++)
            memcpy(P + k * NT, X + k * ldx + n0, (size_t)cnt * sizeof(BSK_T));
    } else {
        transpose_copy(P + k0 * NT, NT, X + n0 * ldx + k0, ldx, k1 - k0, cnt, 0);
    }
    if (cnt < NT)
        for (int64_t k = k0; k < k1; k++)
            memset(P + k * NT + cnt, 0, (size_t)(NT - cnt) * sizeof(BSK_T));
}

/* ---- entry point ----------------------------------------------------------- */

bsk_status BSK_FN(const bsk_bcsr *W, const BSK_T *X, int64_t ldx, int64_t N,
                  BSK_T *Y, int64_t ldy, int transposed, int nt)
{
    const int64_t R = W->R, C = W->C, M = W->M, K = W->K;
    if (R <= 0 || C <= 0)
        return BSK_EINVAL;
    if (N <= 0 || M <= 0)
        return BSK_OK;
    if (nt < 1)
        nt = 1;
    int nv;
    const rows_fn fn = choose_rows(R, C, N, &nv);
    const int64_t NT = (int64_t)nv * BSK_LANES;
    const int64_t ntiles = (N + NT - 1) / NT;
    const int64_t nbr = M / R, nbc = K / C;
    /* block columns per K-chunk and block rows per row block */
    int64_t kcb = BSK_CHUNK_BYTES / (C * NT * BSK_TSIZE);
    if (kcb < 1)
        kcb = 1;
    int64_t gb = 16; /* block rows per split granule: 16 output rows */
    while (gb > 1 && (gb / 2) * R % 16 == 0)
        gb /= 2;
    int64_t mbr = BSK_YBLOCK_BYTES / (R * NT * BSK_TSIZE) / gb * gb;
    if (mbr < gb)
        mbr = gb;
    const int64_t ngran = (nbr + gb - 1) / gb;
    /* Linear form: when rows of Y are a multiple of 4 KiB apart, the lanes
     * rows one transposed block writes all fall in one L1 set and evict each
     * other (twice as slow for M = 1024, 3072, 4096); transpose into a
     * staging buffer with a padded stride instead and copy it out row by row. */
    const int stage = transposed && (ldy * BSK_TSIZE) % 4096 == 0;
    const int64_t ldst = mbr * R + BSK_LANES;
    int status = BSK_OK;
    bsk_team_clock clock;
    nt = bsk_team_begin(&clock, nt);

#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int p = omp_get_thread_num(), np = omp_get_num_threads();
#else
        const int p = 0, np = 1;
#endif
        BSK_TEAM_ENTER(&clock, p);
        /* pr row ranges x pt token-tile phases: whole tiles per thread when
         * they divide evenly (nothing packed twice), else row ranges */
        int pr, pt;
        if (ntiles % np == 0) {
            pr = 1;
            pt = np;
        } else {
            pr = (int)(ngran < np ? (ngran > 0 ? ngran : 1) : np);
            pt = (int)(np / pr < ntiles ? np / pr : ntiles);
        }
        const int64_t i0 = split_point(W->indptr, nbr, gb, pr, p % pr);
        const int64_t i1 = split_point(W->indptr, nbr, gb, pr, p % pr + 1);
        if (p < pr * pt && i0 < i1) {
            BSK_T *P = (BSK_T *)bsk_alloc((size_t)(K > 0 ? K : 1) * NT * sizeof(BSK_T));
            BSK_T *ys = (BSK_T *)bsk_alloc((size_t)(mbr * R * NT) * sizeof(BSK_T));
            int32_t *cur = (int32_t *)malloc((size_t)mbr * sizeof(int32_t));
            BSK_T *st = stage ? (BSK_T *)bsk_alloc((size_t)(NT * ldst) * sizeof(BSK_T)) : NULL;
            if (!P || !ys || !cur || (stage && !st)) {
#pragma omp atomic write
                status = BSK_ENOMEM;
            } else {
                for (int64_t t = p / pr; t < ntiles; t += pt) {
                    const int64_t n0 = t * NT, cnt = N - n0 < NT ? N - n0 : NT;
                    for (int64_t ib = i0; ib < i1; ib += mbr) {
                        const int64_t ie = ib + mbr < i1 ? ib + mbr : i1;
                        for (int64_t i = ib; i < ie; i++)
                            cur[i - ib] = W->indptr[i];
                        /* at least one pass, so K == 0 still writes zeros */
                        for (int64_t b0 = 0; b0 == 0 || b0 < nbc; b0 += kcb) {
                            const int64_t b1 = b0 + kcb < nbc ? b0 + kcb : nbc;
                            if (ib == i0) /* pack each chunk just before its first use */
                                pack_rows(P, NT, X, ldx, b0 * C, b1 * C, n0, cnt, transposed);
                            fn(W, ib, ie, b1, b0 == 0, P, ys, cur);
                        }
                        const int64_t rows = (ie - ib) * R;
                        if (transposed && !stage) {
                            transpose_copy(Y + n0 * ldy + ib * R, ldy, ys, NT, cnt, rows, 1);
                        } else if (transposed) {
                            transpose_copy(st, ldst, ys, NT, cnt, rows, 1);
                            for (int64_t n = 0; n < cnt; n++)
                                memcpy(Y + (n0 + n) * ldy + ib * R, st + n * ldst,
                                       (size_t)rows * sizeof(BSK_T));
                        } else {
                            for (int64_t r = 0; r < rows; r++)
                                memcpy(Y + (ib * R + r) * ldy + n0, ys + r * NT,
                                       (size_t)cnt * sizeof(BSK_T));
                        }
                    }
                }
            }
            free(P);
            free(ys);
            free(cur);
            free(st);
        }
        BSK_TEAM_LEAVE(&clock, p);
    }
    bsk_team_end(&clock);
    return (bsk_status)status;
}
