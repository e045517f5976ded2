/*
 * Loop-shape probes behind the INT8 kernel notes (docs/results/int8_spmm.md):
 *   A: one 512-bit load feeding each vpdpbusd (the (1, 4) row kernel's loop)
 *   C: 512-bit byte/word unpacks alone (the (4, 1) strip kernel's shuffles)
 * Build and run: gcc -O2 -mavx512f -mavx512bw -mavx512vnni vnni_loop_probes.c && ./a.out
 * Rates are per nanosecond; divide by the clock (vnni_ceiling.py gives 2 dots per cycle).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((aligned(64))) uint8_t buf[16384];
int main(){
  for(int i=0;i<16384;i++) buf[i]=i*7;
  const int64_t iters=20000000;
  /* A: 8 chains, each vpdpbusd with a fresh load from L1 (1 load per dot) */
  __m512i a0=_mm512_setzero_si512(),a1=a0,a2=a0,a3=a0,a4=a0,a5=a0,a6=a0,a7=a0;
  __m512i w=_mm512_set1_epi32(0x01020304);
  double t=now();
  for(int64_t it=0;it<iters;it++){
    const uint8_t *p=buf+((it*512)&8191);
    a0=_mm512_dpbusd_epi32(a0,_mm512_load_si512(p),w);
    a1=_mm512_dpbusd_epi32(a1,_mm512_load_si512(p+64),w);
    a2=_mm512_dpbusd_epi32(a2,_mm512_load_si512(p+128),w);
    a3=_mm512_dpbusd_epi32(a3,_mm512_load_si512(p+192),w);
    a4=_mm512_dpbusd_epi32(a4,_mm512_load_si512(p+256),w);
    a5=_mm512_dpbusd_epi32(a5,_mm512_load_si512(p+320),w);
    a6=_mm512_dpbusd_epi32(a6,_mm512_load_si512(p+384),w);
    a7=_mm512_dpbusd_epi32(a7,_mm512_load_si512(p+448),w);
    __asm__ volatile("":"+v"(w));
  }
  t=now()-t;
  __m512i s=_mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0,a1),_mm512_add_epi32(a2,a3)),_mm512_add_epi32(_mm512_add_epi32(a4,a5),_mm512_add_epi32(a6,a7)));
  printf("A load+dot: %.2f dpbusd/ns (%d)\n", iters*8/t/1e9, _mm512_reduce_add_epi32(s));
  /* C: unpack throughput alone, 8 independent chains */
  __m512i u0=_mm512_set1_epi32(1),u1=_mm512_set1_epi32(2),u2=u0,u3=u1,u4=u0,u5=u1,u6=u0,u7=u1;
  t=now();
  for(int64_t it=0;it<iters;it++){
    u0=_mm512_unpacklo_epi8(u0,u1); u2=_mm512_unpackhi_epi8(u2,u3); u4=_mm512_unpacklo_epi16(u4,u5); u6=_mm512_unpackhi_epi16(u6,u7);
    u1=_mm512_unpacklo_epi8(u1,u0); u3=_mm512_unpackhi_epi8(u3,u2); u5=_mm512_unpacklo_epi16(u5,u4); u7=_mm512_unpackhi_epi16(u7,u6);
  }
  t=now()-t;
  s=_mm512_add_epi32(_mm512_add_epi32(u0,u2),_mm512_add_epi32(u4,u6));
  printf("C unpack: %.2f /ns (%d)\n", iters*8/t/1e9, _mm512_reduce_add_epi32(s));
  return 0;
}
