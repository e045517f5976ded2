/*
 * The x86 CPU features that an ISA variant's compiler flags can enable, with
 * where CPUID reports each and which XCR0 state components (registers the
 * operating system must save) its instructions use.
 *
 * setup.py reads this list: for every variant it asks the compiler which
 * feature macros (__AVX2__, __FMA__, __POPCNT__, ...) the variant's flags
 * define, and passes the matching bits as BSK_FEATURES_<VARIANT>; dispatch.c
 * runs the variant only where CPUID reports every one of them and XGETBV
 * shows their state enabled.  A flag that enables a feature missing from this
 * list leaves the variant unbuilt, so no variant can run where it would fault.
 *
 *   X(name, CPUID leaf, sub-leaf, register, bit, XCR0 state needed)
 */
#ifndef BLOCKSPARSE_CPU_FEATURES_H
#define BLOCKSPARSE_CPU_FEATURES_H

#include <stdint.h>

/* CPUID output registers */
#define BSK_EAX 0
#define BSK_EBX 1
#define BSK_ECX 2
#define BSK_EDX 3

/* XCR0 state components: SSE (XMM) and AVX (upper YMM); opmask, upper ZMM
 * of registers 0-15 and ZMM 16-31 */
#define BSK_XCR0_YMM UINT64_C(0x6)
#define BSK_XCR0_ZMM UINT64_C(0xe6)

#define BSK_CPU_FEATURES(X)                                                    \
    X(SSE3,        1, 0, BSK_ECX,  0, 0)                                       \
    X(SSSE3,       1, 0, BSK_ECX,  9, 0)                                       \
    X(FMA,         1, 0, BSK_ECX, 12, BSK_XCR0_YMM)                            \
    X(SSE4_1,      1, 0, BSK_ECX, 19, 0)                                       \
    X(SSE4_2,      1, 0, BSK_ECX, 20, 0)                                       \
    X(CRC32,       1, 0, BSK_ECX, 20, 0) /* an SSE4.2 instruction */           \
    X(POPCNT,      1, 0, BSK_ECX, 23, 0)                                       \
    X(XSAVE,       1, 0, BSK_ECX, 26, 0)                                       \
    X(AVX,         1, 0, BSK_ECX, 28, BSK_XCR0_YMM)                            \
    X(F16C,        1, 0, BSK_ECX, 29, BSK_XCR0_YMM)                            \
    X(BMI,         7, 0, BSK_EBX,  3, 0)                                       \
    X(AVX2,        7, 0, BSK_EBX,  5, BSK_XCR0_YMM)                            \
    X(BMI2,        7, 0, BSK_EBX,  8, 0)                                       \
    X(AVX512F,     7, 0, BSK_EBX, 16, BSK_XCR0_ZMM)                            \
    X(AVX512DQ,    7, 0, BSK_EBX, 17, BSK_XCR0_ZMM)                            \
    X(AVX512CD,    7, 0, BSK_EBX, 28, BSK_XCR0_ZMM)                            \
    X(AVX512BW,    7, 0, BSK_EBX, 30, BSK_XCR0_ZMM)                            \
    X(AVX512VL,    7, 0, BSK_EBX, 31, BSK_XCR0_ZMM)                            \
    X(AVX512VNNI,  7, 0, BSK_ECX, 11, BSK_XCR0_ZMM)                            \
    X(EVEX512,     7, 0, BSK_EBX, 16, BSK_XCR0_ZMM) /* GCC 14: part of AVX512F */ \
    X(AVXVNNI,     7, 1, BSK_EAX,  4, BSK_XCR0_YMM)                            \
    X(AVXVNNIINT8, 7, 1, BSK_EDX,  4, BSK_XCR0_YMM)

enum {
#define BSK_FEATURE_ENUM(name, leaf, sub, reg, bit, xcr0) BSK_FEATURE_##name,
    BSK_CPU_FEATURES(BSK_FEATURE_ENUM)
#undef BSK_FEATURE_ENUM
    BSK_FEATURE_COUNT
};

/* The bit of one feature in a feature mask (BSK_FEATURES_<VARIANT>). */
#define BSK_F(name) (UINT64_C(1) << BSK_FEATURE_##name)

#endif /* BLOCKSPARSE_CPU_FEATURES_H */
