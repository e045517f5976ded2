"""Build blocksparse: one static library per ISA, one Cython extension.

Each ISA's kernels are compiled with that ISA's flags only (never
-march=native unless BLOCKSPARSE_NATIVE=1), so the baseline code that runs
before CPU detection cannot contain instructions the CPU may lack.  The
float kernels may contract a*b+c into FMA; the INT8 kernels are compiled
with -ffp-contract=off so their float epilogue gives the same bits on every
ISA.  Environment switches:

  BLOCKSPARSE_SANITIZE=address,undefined  build with sanitizers
  BLOCKSPARSE_NATIVE=1                    add -march=native everywhere
  BLOCKSPARSE_NO_OPENMP=1                 build without OpenMP
  BLOCKSPARSE_DEBUG_CYTHON=1              Cython bounds/wraparound checks on
"""
import glob
import os
import platform
import shlex
import subprocess
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma"],
    "avx_vnni": ["-mavx2", "-mfma", "-mavxvnni"],
    "avx512_vnni": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl",
                    "-mavx512dq", "-mavx512vnni"],
}
ISA_PROBES = {
    "avx2": "__m256i f(__m256i a){return _mm256_madd_epi16(a, a);}",
    "avx_vnni": "__m256i f(__m256i a){return _mm256_dpbusd_avx_epi32(a, a, a);}",
    "avx512_vnni": "__m512i f(__m512i a){return _mm512_dpbusd_epi32(a, a, a);}",
}
# (library suffix, sources) per ISA; "_f" libraries hold the float kernels, "_p" the
# ceiling probes, which only blocksparse.bench._probes calls.
ISA_SOURCES = {
    "avx2": {"f": ["src/avx2/spmm_float_avx2.c", "src/avx2/spmm_double_avx2.c"],
             "q": ["src/avx2/qspmm_avx2.c", "src/avx2/quantize_avx2.c"],
             "p": ["src/probe/probe_avx2.c"]},
    "avx_vnni": {"q": ["src/avxvnni/qspmm_avxvnni.c", "src/avxvnni/quantize_avxvnni.c"],
                 "p": ["src/probe/probe_avxvnni.c"]},
    "avx512_vnni": {"f": ["src/avx512vnni/spmm_float_avx512vnni.c",
                          "src/avx512vnni/spmm_double_avx512vnni.c"],
                    "q": ["src/avx512vnni/qspmm_avx512vnni.c",
                          "src/avx512vnni/quantize_avx512vnni.c"],
                    "p": ["src/probe/probe_avx512vnni.c"]},
}


def compiler_accepts(flags, code="int main(void){return 0;}\n", link=False):
    """True if the C compiler builds `code` with `flags`."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        out = os.path.join(tmp, "probe.out")
        cmd = cc + flags + ([] if link else ["-c"]) + [src, "-o", out]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


def env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


base_cflags = ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-Wall",
               "-Wno-unknown-pragmas", "-Wno-psabi", "-fvisibility=hidden"]
link_args = []
if env_flag("BLOCKSPARSE_NATIVE"):
    base_cflags.append("-march=native")
sanitize = os.environ.get("BLOCKSPARSE_SANITIZE", "").strip()
if sanitize:
    san = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    base_cflags = [f for f in base_cflags if f != "-O3"] + ["-O1"] + san
    link_args += san

openmp = (not env_flag("BLOCKSPARSE_NO_OPENMP")
          and compiler_accepts(["-fopenmp"], "#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n",
                               link=True))
if openmp:
    base_cflags.append("-fopenmp")
    link_args.append("-fopenmp")

is_x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
built_isas = [isa for isa in ISA_FLAGS
              if is_x86 and compiler_accepts(ISA_FLAGS[isa],
                                             "#include <immintrin.h>\n" + ISA_PROBES[isa])]
macros = [(f"BSK_HAVE_{isa.upper()}", "1") for isa in built_isas]

exact = ["-ffp-contract=off"]
libraries = [("bsk_core", {"sources": ["src/dispatch.c", "src/ref/spmm_scalar.c", "src/ref/quantize_scalar.c"]
                           + sorted(glob.glob("src/nn/*.c")),
                           "include_dirs": ["include"], "macros": macros,
                           "cflags": base_cflags + exact}),
             # before the ISA libraries: the linker resolves its calls into them
             ("bsk_probe", {"sources": ["src/probe/probe.c"], "include_dirs": ["include"],
                            "macros": macros, "cflags": base_cflags})]
for isa in built_isas:
    for kind, sources in ISA_SOURCES[isa].items():
        flags = base_cflags + ISA_FLAGS[isa] + (exact if kind == "q" else ["-ffp-contract=fast"])
        libraries.append((f"bsk_{isa}_{kind}", {"sources": sources, "include_dirs": ["include"],
                                                "macros": macros, "cflags": flags}))


class BuildExt(build_ext):
    """Build the static kernel libraries first, also for build_ext --inplace."""

    def run(self):
        if self.distribution.has_c_libraries():
            clib = self.get_finalized_command("build_clib")
            # build_clib does not track headers: rebuild when one is newer
            headers = glob.glob("include/**/*.h", recursive=True) + glob.glob("src/**/*.h",
                                                                              recursive=True)
            archives = glob.glob(os.path.join(clib.build_clib, "*.a"))
            if archives and headers and max(map(os.path.getmtime, headers)) > \
                    min(map(os.path.getmtime, archives)):
                clib.force = True
            if clib.force:  # `ar rcs` would keep objects of deleted sources
                for archive in archives:
                    os.remove(archive)
            self.run_command("build_clib")
        super().run()


directives = {"language_level": 3, "embedsignature": True}
if not env_flag("BLOCKSPARSE_DEBUG_CYTHON"):
    directives.update(boundscheck=False, wraparound=False, initializedcheck=False,
                      cdivision=True)

extensions = [Extension(
    "blocksparse._kernels",
    sources=["blocksparse/_kernels.pyx"],
    include_dirs=["include", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=[f for f in base_cflags if f not in ("-Wall", "-fvisibility=hidden")]
    + ["-Wno-unused-function"],
    extra_link_args=link_args,
    # relink when a kernel source or header changes (build_clib rebuilds them)
    depends=sorted(glob.glob("src/**/*.[ch]", recursive=True)
                   + glob.glob("include/**/*.h", recursive=True)),
), Extension(
    "blocksparse.bench._probes",
    sources=["blocksparse/bench/_probes.pyx"],
    include_dirs=["include"],
    extra_compile_args=[f for f in base_cflags if f not in ("-Wall", "-fvisibility=hidden")],
    extra_link_args=link_args,
    depends=sorted(glob.glob("src/probe/*.[ch]") + ["include/blocksparse/bsk_probe.h"]),
)]

setup(
    libraries=libraries,
    ext_modules=cythonize(extensions, compiler_directives=directives),
    cmdclass={"build_ext": BuildExt},
)
