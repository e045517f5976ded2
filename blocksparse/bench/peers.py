"""Dense peers of the SpMM benchmark, each limited to the row's thread count.

Every builder returns ``{name: callable}`` for one product shape, the weight
(M, K) = (out_features, in_features) times N tokens, and records why a peer
is missing in ``errors``.  The peers compute the whole dense product (a
dense library cannot skip the pruned blocks), in their own layout:

* ``torch_int_mm``: ``torch._int_mm``, int8 (N, K) x int8 (K, M) -> int32 (oneDNN);
* ``torch_qlinear``: ``torch.ao.nn.quantized.Linear`` on the oneDNN engine, uint8 in and out;
* ``ort_matmulinteger``: ONNX Runtime ``MatMulInteger``, uint8 x int8 -> int32,
  ``intra_op_num_threads`` = the row's threads;
* ``openvino_int8``: an OpenVINO model made with the opset API, float input ->
  ``FakeQuantize`` (256 levels, u8) -> ``MatMul`` with int8 weights dequantized
  per row, compiled with ``INFERENCE_NUM_THREADS`` = the row's threads and
  f32 inference precision: the CPU plugin turns it into one u8 x i8 INT8
  ``FullyConnected`` (checked from the runtime model: a primitive whose name
  ends in ``_I8``; otherwise the peer is recorded as float, not INT8);
* ``numpy_f32``: dense float32 ``W @ X`` through NumPy's BLAS, limited with
  threadpoolctl (without it the BLAS is unlimited and the peer is flagged
  ``unfair``: it never sets the bar).

PyTorch threads follow :func:`blocksparse.bench._common.thread_limits`.
"""
import warnings

import numpy as np

INT8_PEERS = ("torch_int_mm", "torch_qlinear", "ort_matmulinteger", "openvino_int8")
ALL_PEERS = INT8_PEERS + ("numpy_f32",)
INSTALL_HINT = "pip install torch==2.13.0 onnxruntime onnx openvino threadpoolctl"


def _short(exc):
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def _torch_peers(M, K, N, wanted, errors):
    peers = {}
    try:
        import torch
    except ImportError as exc:
        for name in ("torch_int_mm", "torch_qlinear"):
            if name in wanted:
                errors[name] = f"not installed ({_short(exc)})"
        return peers
    gen = torch.Generator().manual_seed(0)
    if "torch_int_mm" in wanted:
        a = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=gen)
        b = torch.randint(-127, 128, (K, M), dtype=torch.int8, generator=gen)
        try:
            torch._int_mm(a, b)
            peers["torch_int_mm"] = lambda: torch._int_mm(a, b)
        except (RuntimeError, AttributeError) as exc:  # shapes it refuses, old versions
            errors["torch_int_mm"] = _short(exc)
    if "torch_qlinear" in wanted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.backends.quantized.engine = "onednn"
                ql = torch.ao.nn.quantized.Linear(K, M, dtype=torch.qint8)
                wq = torch.quantize_per_tensor(torch.randn(M, K, generator=gen), 0.05, 0,
                                               torch.qint8)
                ql.set_weight_bias(wq, None)
                ql.scale, ql.zero_point = 1.0, 0
                xq = torch.quantize_per_tensor(torch.rand(N, K, generator=gen), 1 / 255, 0,
                                               torch.quint8)
                ql(xq)
            peers["torch_qlinear"] = lambda: ql(xq)
        except (RuntimeError, AttributeError) as exc:
            errors["torch_qlinear"] = _short(exc)
    return peers


def ort_session(model_bytes_or_path, threads):
    """An ONNX Runtime CPU session with `threads` intra-op threads, one inter-op."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes_or_path, opts, providers=["CPUExecutionProvider"])


def _ort_peer(M, K, N, threads, errors):
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        from onnx import TensorProto, helper
    except ImportError as exc:
        errors["ort_matmulinteger"] = f"not installed ({_short(exc)})"
        return {}
    rng = np.random.default_rng(0)
    B = helper.make_tensor("B", TensorProto.INT8, [K, M],
                           rng.integers(-127, 128, (K, M), dtype=np.int8).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "spmm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [N, K])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [N, M])], [B])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    try:
        sess = ort_session(model.SerializeToString(), threads)
    except Exception as exc:  # noqa: BLE001  (any runtime refusal: say why, go on)
        errors["ort_matmulinteger"] = _short(exc)
        return {}
    a = rng.integers(0, 256, (N, K), dtype=np.uint8)
    return {"ort_matmulinteger": lambda: sess.run(None, {"A": a})}


def openvino_config(threads):
    """Compile options of every OpenVINO peer: `threads` threads, one stream, f32
    where not quantized (no automatic bf16), latency mode, threads not pinned to
    cores (like the other contenders', so that none is stuck on a core that a
    busy process shares)."""
    return {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False}


def openvino_int8_layers(compiled):
    """``(int8, total)``: matrix-product layers of a compiled OpenVINO model, and
    how many of them run an INT8 primitive (``*_I8``, e.g. ``brgemm_avx512_I8``)."""
    int8 = total = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info:
            continue
        if str(info["layerType"].astype(str)) not in ("FullyConnected", "MatMul"):
            continue
        total += 1
        prim = str(info["primitiveType"].astype(str)) if "primitiveType" in info else ""
        if prim.upper().endswith("_I8"):
            int8 += 1
    return int8, total


def _openvino_peer(M, K, N, threads, errors, info):
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError as exc:
        errors["openvino_int8"] = f"not installed ({_short(exc)})"
        return {}
    rng = np.random.default_rng(0)
    try:
        x = ops.parameter([N, K], np.float32, name="x")
        lo, hi = ops.constant(np.float32(0.0)), ops.constant(np.float32(1.0))
        xq = ops.fake_quantize(x, lo, hi, lo, hi, 256)
        w = ops.convert(ops.constant(rng.integers(-127, 128, (M, K), dtype=np.int8)), np.float32)
        scale = ops.constant((rng.random((M, 1)) * 0.01 + 1e-3).astype(np.float32))
        y = ops.matmul(xq, ops.multiply(w, scale), False, True)
        model = ov.Model([y], [x], "dense_int8")
        compiled = ov.Core().compile_model(model, "CPU", openvino_config(threads))
        int8, total = openvino_int8_layers(compiled)
        request = compiled.create_infer_request()
    except Exception as exc:  # noqa: BLE001
        errors["openvino_int8"] = _short(exc)
        return {}
    info["openvino_int8"] = {"int8_layers": int8, "matmul_layers": total}
    X = rng.random((N, K), dtype=np.float32)
    return {"openvino_int8": lambda: request.infer({0: X})}


def dense_peers(M, K, N, threads, wanted=ALL_PEERS):
    """The peers of one (M, K) x N product at `threads` threads.

    Returns
    -------
    fns : dict
        ``{name: callable}`` of the peers that could be built.
    errors : dict
        ``{name: reason}`` for the wanted peers that could not.
    info : dict
        ``{name: {...}}``: ``kind`` (``"int8"`` or ``"float"``), ``unfair``
        (not limited to `threads`), ``int8_layers`` for OpenVINO.
    """
    from ._common import blas_limits_available
    wanted = set(wanted)
    errors, info = {}, {}
    fns = _torch_peers(M, K, N, wanted, errors)
    if "ort_matmulinteger" in wanted:
        fns.update(_ort_peer(M, K, N, threads, errors))
    if "openvino_int8" in wanted:
        fns.update(_openvino_peer(M, K, N, threads, errors, info))
    if "numpy_f32" in wanted:
        rng = np.random.default_rng(1)
        Wf = rng.standard_normal((M, K)).astype(np.float32)
        Xf = rng.standard_normal((K, N)).astype(np.float32)
        fns["numpy_f32"] = lambda: Wf @ Xf
    for name in fns:
        entry = info.setdefault(name, {})
        entry["kind"] = "int8" if name in INT8_PEERS else "float"
        if name == "openvino_int8" and not entry.get("int8_layers"):
            entry["kind"] = "float"  # OpenVINO chose a float kernel: not an INT8 peer
        entry["unfair"] = name == "numpy_f32" and not blas_limits_available()
    return fns, errors, info
