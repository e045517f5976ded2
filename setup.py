"""Build blocksparse: static kernel libraries per ISA variant, one Cython extension.

Each variant's units are compiled with that variant's flags only (never
-march=native unless BLOCKSPARSE_NATIVE=1), so the baseline code that runs
before CPU detection cannot contain instructions the CPU may lack; VARIANTS
below describes every variant once (flags, sources).  Float products and
encoder kernels may contract a*b+c into FMA; the INT8 kernels and the
quantization are compiled with -ffp-contract=off so they give the same bits on
every variant.  Environment switches:

  BLOCKSPARSE_SANITIZE=address,undefined  build with sanitizers
  BLOCKSPARSE_NATIVE=1                    add -march=native everywhere
  BLOCKSPARSE_NO_OPENMP=1                 build without OpenMP
  BLOCKSPARSE_DEBUG_CYTHON=1              Cython bounds/wraparound checks on
"""
import glob
import os
import platform
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The ISA variants, each described once.  A variant's compiler flags are "-m" plus each
# of its features.  Detection (src/dispatch.c) checks every CPU feature those flags
# enable: the compiler is asked which (variant_features), and each must have its CPUID
# bit in src/cpu_features.h, so the flags and the checks cannot drift apart.  Sources:
# "exact" units are compiled with -ffp-contract=off (INT8 products, quantization: the
# same bits on every variant), "fast" ones may contract a*b+c into FMA (float products,
# encoder kernels); "probes" units hold the ceiling probes that only
# blocksparse.bench._probes calls.  Adding a variant: docs/adding_an_isa.rst.
VARIANTS = {
    "avx2": {
        "features": ["avx2", "fma"],
        "probe": "__m256i f(__m256i a){return _mm256_madd_epi16(a, a);}",
        "fast": ["src/avx2/spmm_float_avx2.c", "src/avx2/spmm_double_avx2.c",
                 "src/avx2/nn_avx2.c"],
        "exact": ["src/avx2/qspmm_avx2.c", "src/avx2/quantize_avx2.c", "src/avx2/qgemm_avx2.c",
                  "src/avx2/attn_q8_avx2.c"],
        "probes": ["src/probe/probe_avx2.c"],
    },
    "avx_vnni": {
        "features": ["avx2", "fma", "avxvnni"],
        "probe": "__m256i f(__m256i a){return _mm256_dpbusd_avx_epi32(a, a, a);}",
        "exact": ["src/avxvnni/qspmm_avxvnni.c", "src/avxvnni/quantize_avxvnni.c",
                  "src/avxvnni/qgemm_avxvnni.c", "src/avxvnni/attn_q8_avxvnni.c"],
        "probes": ["src/probe/probe_avxvnni.c"],
    },
    "avx512_vnni": {
        "features": ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                     "avx512vnni"],
        "probe": "__m512i f(__m512i a){return _mm512_dpbusd_epi32(a, a, a);}",
        "fast": ["src/avx512vnni/spmm_float_avx512vnni.c",
                 "src/avx512vnni/spmm_double_avx512vnni.c", "src/avx512vnni/nn_avx512vnni.c"],
        "exact": ["src/avx512vnni/qspmm_avx512vnni.c", "src/avx512vnni/quantize_avx512vnni.c",
                  "src/avx512vnni/qgemm_avx512vnni.c", "src/avx512vnni/attn_q8_avx512vnni.c"],
        "probes": ["src/probe/probe_avx512vnni.c"],
    },
}
# The portable units: dispatch, the drivers of the encoder kernels, the scalar variant.
SCALAR_SOURCES = ["src/dispatch.c", "src/nn/tokens.c", "src/nn/attention.c",
                  "src/nn/attention_q8.c", "src/nn/layer_q8.c", "src/ref/spmm_scalar.c",
                  "src/ref/quantize_scalar.c",
                  "src/ref/nn_scalar.c", "src/ref/qgemm_scalar.c", "src/ref/attn_q8_scalar.c"]


def isa_flags(variant):
    return ["-m" + f for f in VARIANTS[variant]["features"]]


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


def predefined_macros(flags):
    """{name: value} of the macros the C compiler predefines with `flags`."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    try:
        out = subprocess.run(cc + flags + ["-dM", "-E", "-x", "c", os.devnull],
                             capture_output=True, text=True).stdout
    except OSError:
        return {}
    return dict(line.split(" ", 2)[1:] for line in out.splitlines()
                if line.startswith("#define ") and line.count(" ") >= 2)


def checkable_features():
    """The feature names of src/cpu_features.h (those detection can check)."""
    with open("src/cpu_features.h") as f:
        return set(re.findall(r"^\s*X\((\w+),", f.read(), re.M))


def variant_features(variant, baseline, known):
    """CPU features the variant's flags enable (feature macros the compiler then
    defines beyond the baseline), or None if one cannot be checked at run time."""
    macros = predefined_macros(isa_flags(variant))
    enabled = sorted(m[2:-2] for m, v in macros.items()
                     if m not in baseline and v == "1" and re.fullmatch(r"__[A-Z0-9_]+__", m))
    unknown = [f for f in enabled if f not in known]
    if unknown:
        print(f"blocksparse: not building the {variant} variant: its flags enable "
              f"{', '.join(unknown)}, which src/cpu_features.h cannot check", file=sys.stderr)
        return None
    return enabled


is_x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
baseline_macros = predefined_macros([])
known_features = checkable_features()
macros, features_of, flags_of = [], [], []
built_isas = []
for isa in VARIANTS:
    flags = isa_flags(isa)
    enabled = None
    if is_x86 and compiler_accepts(flags, "#include <immintrin.h>\n" + VARIANTS[isa]["probe"]):
        enabled = variant_features(isa, baseline_macros, known_features)
    if enabled is not None:
        built_isas.append(isa)
        macros.append((f"BSK_HAVE_{isa.upper()}", "1"))
    # the features detection checks; for a variant not built, those its flags name
    features = enabled if enabled is not None else \
        [f.upper() for f in VARIANTS[isa]["features"] if f.upper() in known_features]
    features_of.append(f"[BSK_ISA_{isa.upper()}] = {{1, "
                       + "|".join(f"BSK_F({f})" for f in features) + "}")
    flags_of.append(f'[BSK_ISA_{isa.upper()}] = "{" ".join(flags)}"')
macros += [("BSK_VARIANT_FEATURES", ", ".join(features_of)),
           ("BSK_VARIANT_FLAGS", ", ".join(flags_of))]

exact = ["-ffp-contract=off"]
fast = ["-ffp-contract=fast"]
include_dirs = ["include", "src"]
# every unit is recompiled when a header changes (build_clib compares only sources otherwise)
headers = sorted(glob.glob("include/**/*.h", recursive=True) + glob.glob("src/**/*.h",
                                                                          recursive=True))
libraries = [("bsk_core", {"sources": SCALAR_SOURCES, "include_dirs": include_dirs,
                           "obj_deps": {"": headers}, "macros": macros,
                           "cflags": base_cflags + exact}),
             # before the ISA libraries: the linker resolves its calls into them
             ("bsk_probe", {"sources": ["src/probe/probe.c"], "include_dirs": include_dirs,
                            "obj_deps": {"": headers}, "macros": macros,
                            "cflags": base_cflags})]
for isa in built_isas:
    for kind, fp in (("fast", fast), ("exact", exact), ("probes", [])):
        if VARIANTS[isa].get(kind):
            libraries.append((f"bsk_{isa}_{kind}", {
                "sources": VARIANTS[isa][kind], "include_dirs": include_dirs,
                "obj_deps": {"": headers}, "macros": macros,
                "cflags": base_cflags + isa_flags(isa) + fp}))

# after the ISA libraries: generic helpers their kernels call (static linking resolves left to right)
libraries.append(("bsk_util", {"sources": ["src/scratch.c", "src/team.c"], "include_dirs": include_dirs,
                               "obj_deps": {"": headers}, "macros": macros,
                               "cflags": base_cflags}))

class BuildExt(build_ext):
    """Build the static kernel libraries first, also for build_ext --inplace."""

    def run(self):
        if self.distribution.has_c_libraries():
            clib = self.get_finalized_command("build_clib")
            # a header newer than an archive means its objects are recompiled (obj_deps);
            # archive afresh, since `ar rcs` would keep objects of deleted sources
            archives = glob.glob(os.path.join(clib.build_clib, "*.a"))
            if archives and headers and max(map(os.path.getmtime, headers)) > \
                    min(map(os.path.getmtime, archives)):
                clib.force = True
            if clib.force:
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
    include_dirs=include_dirs + [np.get_include()],
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
