"""CPU detection: a variant runs only where every feature its flags enable is present.

The detection routine (``bsk_isa_mask_for`` in src/dispatch.c) is tested on
made-up CPUID feature sets and XCR0 values: it must accept a variant with all
of its features and the register state they need, and refuse it when any one
feature or state bit is missing.  The feature lists themselves come from the
build (setup.py asks the compiler which features each variant's flags
enable); they are checked against the flags and, where a C compiler is at
hand, against the compiler's own feature macros.
"""
import re
import shlex
import shutil
import subprocess
import sysconfig

import pytest
from hypothesis import given
from hypothesis import strategies as st

import blocksparse
from blocksparse import _kernels

NAMES = _kernels.ISA_NAMES
XCR0_ALL = 0xE7        # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
YMM_STATE = (0x2, 0x4)
ZMM_STATE = (0x20, 0x40, 0x80)


def features(name):
    return set(_kernels.isa_features(NAMES.index(name)))


def accepted(feats, xcr0=XCR0_ALL):
    return {NAMES[i] for i in _kernels.isa_mask_for(sorted(feats), xcr0)}


@pytest.mark.parametrize("name", NAMES)
def test_variant_accepted_with_all_its_features(name):
    assert name in accepted(features(name))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "scalar"])
def test_variant_refused_when_one_feature_is_missing(name):
    need = features(name)
    assert need, f"{name} checks no CPU feature"
    for missing in sorted(need):
        assert name not in accepted(need - {missing}), f"{name} accepted without {missing}"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "scalar"])
def test_variant_refused_without_os_register_state(name):
    need = features(name)
    for bit in YMM_STATE:
        assert name not in accepted(need, XCR0_ALL & ~bit), f"{name} without XCR0 bit {bit:#x}"
    evex = any(f.startswith("AVX512") for f in need)  # EVEX needs the opmask/ZMM state
    for bit in ZMM_STATE:
        assert (name in accepted(need, XCR0_ALL & ~bit)) != evex, f"{name}, bit {bit:#x}"


def test_scalar_needs_nothing():
    assert features("scalar") == set()
    assert "scalar" in accepted(set(), 0)


def test_the_features_the_flags_name_are_checked():
    """The issue's list, plus what the flags imply (AVX from AVX2)."""
    assert {"AVX", "AVX2", "FMA"} <= features("avx2")
    assert {"AVX", "AVX2", "FMA", "AVXVNNI"} <= features("avx_vnni")
    assert {"AVX", "AVX2", "FMA", "AVX512F", "AVX512BW", "AVX512VL", "AVX512DQ",
            "AVX512VNNI"} <= features("avx512_vnni")
    for i, name in enumerate(NAMES):
        flags = _kernels.isa_flags(i)
        if flags is None:
            continue
        for flag in flags.split():
            assert flag.startswith("-m") and flag[2:].upper() in features(name), (name, flag)


@given(st.sets(st.sampled_from(_kernels.FEATURE_NAMES)))
def test_accepted_exactly_when_every_feature_is_present(feats):
    got = accepted(feats)
    for name in NAMES:
        assert (name in got) == (features(name) <= feats), name


def test_real_detection_is_the_same_routine():
    feats, xcr0 = _kernels.cpu_features()
    want = accepted(feats, xcr0)
    for i, name in enumerate(NAMES):
        assert _kernels.isa_detected(i) == (name in want), name
    assert set(blocksparse.available_isas()) == {n for i, n in enumerate(NAMES)
                                                 if n in want and _kernels.isa_built(i)}


def test_unknown_feature_name_is_refused():
    with pytest.raises(ValueError, match="unknown CPU feature 'AVX1024'"):
        _kernels.isa_mask_for(["AVX1024"], XCR0_ALL)


def _compiler():
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    return cc if cc and shutil.which(cc[0]) else None


@pytest.mark.skipif(_compiler() is None, reason="needs the C compiler")
@pytest.mark.parametrize("name", [n for n in NAMES if n != "scalar"])
def test_every_feature_macro_of_the_flags_is_checked(name):
    """Independently of setup.py: each feature macro the flags define is checked."""
    flags = _kernels.isa_flags(NAMES.index(name))
    if flags is None:
        pytest.skip(f"{name} is not built")

    def macros(extra):
        out = subprocess.run(_compiler() + extra + ["-dM", "-E", "-x", "c", "/dev/null"],
                             capture_output=True, text=True, check=True).stdout
        return {line.split()[1] for line in out.splitlines() if line.startswith("#define ")}

    new = {m for m in macros(flags.split()) - macros([]) if re.fullmatch(r"__[A-Z0-9_]+__", m)}
    enabled = {m[2:-2] for m in new}
    assert enabled <= set(_kernels.FEATURE_NAMES), "a feature detection cannot check"
    assert enabled == features(name)
