/*
 * Hardware ceiling probes of the performance model (docs/performance.rst).
 *
 * Each probe is a tight loop bound by one resource: the vpdpbusd issue rate
 * (512-bit EVEX, 256-bit EVEX with AVX-512 VL, 256-bit VEX AVX-VNNI), the
 * INT8 rate of AVX2 without VNNI (vpmaddubsw and vpmaddwd), the
 * float FMA issue rate (from registers, and with one L1 vector load per FMA)
 * and the read bandwidth of a caller-supplied buffer.  They are compiled into
 * the package with the ISA's flags (per-ISA static libraries, like the
 * kernels), so measuring needs no C compiler at run time.  The caller must
 * check that the CPU supports the probe's ISA before running it; probes not
 * compiled in return BSK_EUNSUPPORTED.  Single-threaded: several threads
 * measure a multi-core ceiling by running probes at the same time.
 */
#ifndef BLOCKSPARSE_BSK_PROBE_H
#define BLOCKSPARSE_BSK_PROBE_H

#include <stdint.h>

#include "bsk.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    BSK_PROBE_DPBUSD_ZMM = 0,      /* 512-bit EVEX vpdpbusd, 24 chains (AVX-512 VNNI) */
    BSK_PROBE_DPBUSD_YMM_EVEX = 1, /* 256-bit EVEX vpdpbusd, 24 chains (AVX-512 VL + VNNI) */
    BSK_PROBE_DPBUSD_YMM_VEX = 2,  /* 256-bit VEX {vex} vpdpbusd, 14 chains (AVX-VNNI) */
    BSK_PROBE_FMA_ZMM = 3,         /* 512-bit float FMA from registers, 16 chains */
    BSK_PROBE_FMA_YMM = 4,         /* 256-bit float FMA from registers, 12 chains */
    BSK_PROBE_FMA_LOAD_ZMM = 5,    /* one 512-bit L1 load per FMA */
    BSK_PROBE_FMA_LOAD_YMM = 6,    /* one 256-bit L1 load per FMA */
    BSK_PROBE_READ = 7,            /* read bandwidth of the buffer (portable C) */
    BSK_PROBE_MADDUBS_YMM = 8,     /* AVX2 INT8 without VNNI: vpmaddubsw + vpmaddwd + vpaddd, 12 chains */
    BSK_PROBE_MADDWD_YMM = 9,      /* AVX2 INT8, exact form: vpmaddwd + vpaddd on widened bytes, 12 chains */
    BSK_PROBE_COUNT = 10
} bsk_probe_kind;

/* 1 if probe `kind` is compiled into this build. */
int bsk_probe_built(int kind);

/*
 * Run probe `kind` for `reps` repetitions of its loop.  `buf` / `nbytes`:
 * the L1 buffer of the FMA_LOAD probes (at least 1 KiB, 64-byte aligned) or
 * the buffer READ sums (a multiple of 64 bytes); ignored by the others.
 * On success *work holds the operations done (int8 multiply-adds for
 * vpdpbusd and the AVX2 INT8 probes, float operations (2 per FMA lane) for FMA, bytes for READ),
 * *seconds the elapsed time (CLOCK_MONOTONIC) and *sink a value derived
 * from the results, so the work cannot be optimized away.
 */
bsk_status bsk_probe_run(int kind, int64_t reps, const void *buf, int64_t nbytes,
                         double *work, double *seconds, int64_t *sink);

/* The ISA probes, called by bsk_probe_run (each returns its sink value). */
int64_t bsk_probe_dpbusd_zmm_avx512_vnni(int64_t iters, int32_t seed);
int64_t bsk_probe_dpbusd_ymm_avx512_vnni(int64_t iters, int32_t seed);
int64_t bsk_probe_fma_avx512_vnni(int64_t iters, float seed);
int64_t bsk_probe_fma_load_avx512_vnni(const float *buf, int64_t nvec, int64_t reps);
int64_t bsk_probe_dpbusd_ymm_avx_vnni(int64_t iters, int32_t seed);
int64_t bsk_probe_fma_avx2(int64_t iters, float seed);
int64_t bsk_probe_fma_load_avx2(const float *buf, int64_t nvec, int64_t reps);
int64_t bsk_probe_maddubs_avx2(int64_t iters, int32_t seed);
int64_t bsk_probe_maddwd_avx2(int64_t iters, int32_t seed);

/* Independent chains per probe loop iteration (the work per iteration). */
#define BSK_PROBE_DPBUSD_EVEX_CHAINS 24
#define BSK_PROBE_DPBUSD_VEX_CHAINS 14
#define BSK_PROBE_FMA_CHAINS_ZMM 16
#define BSK_PROBE_FMA_CHAINS_YMM 12
#define BSK_PROBE_MADD_CHAINS 12

#ifdef __cplusplus
}
#endif

#endif /* BLOCKSPARSE_BSK_PROBE_H */
