/*
 * Bodies of the ceiling probes, instantiated per ISA with the macros below
 * (the same pattern as src/simd/): each file defines the vector type and the
 * intrinsics, then includes this header.  Chains are separate variables, not
 * an array, so that they stay in registers: the loops are one instruction
 * per chain plus the loop counter (check with objdump -d).
 *
 *   BSK_PROBE_VEC, BSK_PROBE_SET1(x), BSK_PROBE_ADD(a, b),
 *   BSK_PROBE_DOT(acc, a, b), BSK_PROBE_BYTES  -> BSK_PROBE_DPBUSD_FN (chains BSK_PROBE_CHAINS)
 *   BSK_PROBE_FVEC, BSK_PROBE_FSET1(x), BSK_PROBE_FMA(a, b, c), BSK_PROBE_FLOAD(p),
 *   BSK_PROBE_FADD(a, b), BSK_PROBE_FLANES -> BSK_PROBE_FMA_FN, BSK_PROBE_FMA_LOAD_FN
 *   (chains BSK_PROBE_FCHAINS, BSK_PROBE_FCHAINS_N of them)
 */
#include <stdint.h>
#include <string.h>

#define BSK_C12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define BSK_C14(X) BSK_C12(X) X(12) X(13)
#define BSK_C16(X) BSK_C14(X) X(14) X(15)
#define BSK_C24(X) BSK_C16(X) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)

#ifdef BSK_PROBE_DPBUSD_FN
int64_t BSK_PROBE_DPBUSD_FN(int64_t iters, int32_t seed)
{
    const BSK_PROBE_VEC a = BSK_PROBE_SET1(0x01010101 ^ seed);
    const BSK_PROBE_VEC b = BSK_PROBE_SET1(0x01020304 + seed);
#define BSK_DECL(i) BSK_PROBE_VEC c##i = BSK_PROBE_SET1(i);
#define BSK_STEP(i) c##i = BSK_PROBE_DOT(c##i, a, b);
#define BSK_SUM(i) s = BSK_PROBE_ADD(s, c##i);
    BSK_PROBE_CHAINS(BSK_DECL)
    for (int64_t it = 0; it < iters; it++) {
        BSK_PROBE_CHAINS(BSK_STEP)
    }
    BSK_PROBE_VEC s = BSK_PROBE_SET1(0);
    BSK_PROBE_CHAINS(BSK_SUM)
#undef BSK_DECL
#undef BSK_STEP
#undef BSK_SUM
    int32_t lanes[BSK_PROBE_BYTES / 4];
    memcpy(lanes, &s, sizeof(lanes));
    int64_t total = 0;
    for (int i = 0; i < BSK_PROBE_BYTES / 4; i++)
        total += lanes[i];
    return total;
}
#endif

#ifdef BSK_PROBE_FMA_FN
static int64_t bsk_probe_fsink(BSK_PROBE_FVEC s)
{
    float lanes[BSK_PROBE_FLANES];
    memcpy(lanes, &s, sizeof(lanes));
    double total = 0.0;
    for (int i = 0; i < BSK_PROBE_FLANES; i++)
        total += lanes[i];
    return (int64_t)total;
}

/* Independent FMA chains in registers: the FMA issue rate. */
int64_t BSK_PROBE_FMA_FN(int64_t iters, float seed)
{
    const BSK_PROBE_FVEC b = BSK_PROBE_FSET1(1.0000001f + seed);
    const BSK_PROBE_FVEC c = BSK_PROBE_FSET1(1e-7f);
#define BSK_DECL(i) BSK_PROBE_FVEC a##i = BSK_PROBE_FSET1((float)(i));
#define BSK_STEP(i) a##i = BSK_PROBE_FMA(a##i, b, c);
#define BSK_SUM(i) s = BSK_PROBE_FADD(s, a##i);
    BSK_PROBE_FCHAINS(BSK_DECL)
    for (int64_t it = 0; it < iters; it++) {
        BSK_PROBE_FCHAINS(BSK_STEP)
    }
    BSK_PROBE_FVEC s = BSK_PROBE_FSET1(0.0f);
    BSK_PROBE_FCHAINS(BSK_SUM)
#undef BSK_DECL
#undef BSK_STEP
#undef BSK_SUM
    return bsk_probe_fsink(s);
}

/* One vector load from an L1-resident buffer per FMA: the ceiling of a
 * kernel that cannot reuse activation loads across rows (blocksize (1, 4)). */
int64_t BSK_PROBE_FMA_LOAD_FN(const float *buf, int64_t nvec, int64_t reps)
{
    const BSK_PROBE_FVEC w = BSK_PROBE_FSET1(0.999f);
#define BSK_DECL(i) BSK_PROBE_FVEC a##i = BSK_PROBE_FSET1(0.0f);
#define BSK_STEP(i) a##i = BSK_PROBE_FMA(w, BSK_PROBE_FLOAD(buf + (i + v0) * BSK_PROBE_FLANES), a##i);
#define BSK_SUM(i) s = BSK_PROBE_FADD(s, a##i);
    BSK_PROBE_FCHAINS(BSK_DECL)
    for (int64_t r = 0; r < reps; r++) {
        for (int64_t v0 = 0; v0 + BSK_PROBE_FCHAINS_N <= nvec; v0 += BSK_PROBE_FCHAINS_N) {
            BSK_PROBE_FCHAINS(BSK_STEP)
        }
        __asm__ volatile("" : : "r"(buf) : "memory");  /* reload every repetition */
    }
    BSK_PROBE_FVEC s = BSK_PROBE_FSET1(0.0f);
    BSK_PROBE_FCHAINS(BSK_SUM)
#undef BSK_DECL
#undef BSK_STEP
#undef BSK_SUM
    return bsk_probe_fsink(s);
}
#endif
