"""The BERT runtimes people use, on the same weights as blocksparse's model.

:class:`BertPeers` takes the float32 :class:`blocksparse.nn.BertModel` whose
encoder Linear weights are already pruned (the model blocksparse quantizes
for its own runs, made from the same seed), copies its weights into a
``transformers.BertModel`` and builds, when the packages are installed:

* ``torch_fp32``: that model, float32, ``torch.inference_mode`` (a reference,
  never the bar: it is not INT8);
* ``torch_int8``: ``torch.ao.quantization.quantize_dynamic`` (qint8 Linear);
* ``ort_int8``: the model exported to ONNX (opset 17) and quantized with
  ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights);
* ``ort_int8_static``: the same ONNX model quantized statically to QDQ
  (``quantize_static``: per-channel int8 weights, uint8 activations with
  MinMax ranges from four random calibration sequences; only the Linear
  MatMuls, as blocksparse) run by ONNX Runtime;
* ``openvino_int8``: that QDQ model compiled by OpenVINO (static shapes, f32
  outside the quantized products); the runtime model is checked for INT8
  primitives (``int8_layers`` of ``matmul_layers``) and the peer counts as
  INT8 only if it has some.

ONNX Runtime gets ``intra_op_num_threads``, OpenVINO ``INFERENCE_NUM_THREADS``
and PyTorch ``torch.set_num_threads`` equal to the row's thread count.
Everything is optional: a peer that cannot be built is recorded in ``errors``
with the reason.
"""
import logging
import os
import tempfile
import warnings

import numpy as np

from .peers import _short, openvino_config, openvino_int8_layers, ort_session

PEERS = ("torch_fp32", "torch_int8", "ort_int8", "ort_int8_static", "openvino_int8")
INT8_PEERS = ("torch_int8", "ort_int8", "ort_int8_static", "openvino_int8")


def _dense(lin):
    """A Linear layer's float weight as a dense (out, in) array."""
    w = lin.weight
    return np.asarray(w.toarray() if hasattr(w, "toarray") else w, dtype=np.float32)


def hf_state_dict(model):
    """The weights of a float blocksparse BertModel under transformers' BERT names."""
    emb = model.embeddings
    sd = {"embeddings.word_embeddings.weight": emb.word,
          "embeddings.position_embeddings.weight": emb.position,
          "embeddings.LayerNorm.weight": emb.ln.weight,
          "embeddings.LayerNorm.bias": emb.ln.bias}
    if emb.token_type is not None:
        sd["embeddings.token_type_embeddings.weight"] = emb.token_type
    H = model.config["hidden_size"]
    for i, layer in enumerate(model.encoder):
        p = f"encoder.layer.{i}."
        qkv, qkv_b = _dense(layer.attention.qkv), layer.attention.qkv.bias
        for j, part in enumerate(("query", "key", "value")):
            sd[p + f"attention.self.{part}.weight"] = qkv[j * H:(j + 1) * H]
            sd[p + f"attention.self.{part}.bias"] = qkv_b[j * H:(j + 1) * H]
        for name, lin in (("attention.output.dense", layer.attention.out),
                          ("intermediate.dense", layer.ffn1), ("output.dense", layer.ffn2)):
            sd[p + name + ".weight"] = _dense(lin)
            sd[p + name + ".bias"] = lin.bias
        for name, ln in (("attention.output.LayerNorm", layer.ln1),
                         ("output.LayerNorm", layer.ln2)):
            sd[p + name + ".weight"] = ln.weight
            sd[p + name + ".bias"] = ln.bias
    return sd


def _calibration(vocab, seq, n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(vocab // 20, vocab, (1, seq)).astype(np.int64),
             "attention_mask": np.ones((1, seq), np.int64)} for _ in range(n)]


class BertPeers:
    """The peer runtimes for one model (one configuration and sparsity).

    Parameters
    ----------
    float_model : blocksparse.nn.BertModel
        float32, with the pruned weights the INT8 model quantizes.
    wanted : sequence of str
        Peer names to build (a subset of :data:`PEERS`).
    seq : int
        Sequence length of the calibration inputs.
    note : callable, optional
        Progress messages.
    """

    def __init__(self, float_model, wanted, seq=128, note=None):
        self.errors, self.info = {}, {}
        self.wanted = [p for p in PEERS if p in wanted]
        self._note = note or (lambda msg: None)
        self._tmp = None
        self._ort_dynamic = self._qdq = None
        self.vocab = float_model.config["vocab_size"]
        self.seq = seq
        if not self.wanted:
            return
        try:
            import torch
            import transformers
        except ImportError as exc:
            for p in self.wanted:
                self.errors[p] = f"needs torch and transformers ({_short(exc)})"
            self.wanted = []
            return
        self.torch = torch
        cfg = float_model.config
        tcfg = transformers.BertConfig(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"], hidden_act=cfg["hidden_act"],
            max_position_embeddings=cfg["max_position_embeddings"],
            type_vocab_size=max(1, cfg["type_vocab_size"]), layer_norm_eps=cfg["layer_norm_eps"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = transformers.BertModel(tcfg, add_pooling_layer=False).eval()
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
              hf_state_dict(float_model).items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if "position_ids" not in k and "token_type_ids" not in k]
        if missing or unexpected:
            raise RuntimeError(f"weights do not map onto transformers' BERT: missing "
                               f"{missing[:3]}, unexpected {unexpected[:3]}")
        self.model = model
        if "torch_int8" in self.wanted:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model_int8 = torch.ao.quantization.quantize_dynamic(
                    model, {torch.nn.Linear}, dtype=torch.qint8)
        if {"ort_int8", "ort_int8_static", "openvino_int8"} & set(self.wanted):
            self._onnx()

    def _onnx(self):
        """Export to ONNX; quantize dynamically (ORT) and statically to QDQ (ORT, OpenVINO)."""
        torch = self.torch
        onnx_peers = [p for p in ("ort_int8", "ort_int8_static", "openvino_int8")
                      if p in self.wanted]
        try:
            import onnx
            from onnxruntime.quantization import (CalibrationDataReader, QuantFormat,
                                                  QuantType, quantize_dynamic, quantize_static)
        except ImportError as exc:
            for p in onnx_peers:
                self.errors[p] = f"needs onnx and onnxruntime ({_short(exc)})"
            return

        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        class Reader(CalibrationDataReader):
            def __init__(self, batches):
                self.it = iter(batches)

            def get_next(self):
                return next(self.it, None)

        self._tmp = tempfile.TemporaryDirectory(prefix="blocksparse_bench_bert_")
        fp32 = os.path.join(self._tmp.name, "model.onnx")
        ids = torch.ones((1, 16), dtype=torch.int64)
        self._note("exporting to ONNX")
        root = logging.getLogger()
        level = root.level
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                root.setLevel(logging.ERROR)  # quantizers' pre-processing hints
                torch.onnx.export(Wrapped(self.model), (ids, ids), fp32,
                                  input_names=["input_ids", "attention_mask"],
                                  output_names=["last_hidden_state"],
                                  dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                                "attention_mask": {0: "batch", 1: "seq"}},
                                  opset_version=17, dynamo=False)
                if "ort_int8" in self.wanted:
                    self._note("quantizing for ONNX Runtime (dynamic)")
                    self._ort_dynamic = os.path.join(self._tmp.name, "model.dynamic.onnx")
                    quantize_dynamic(fp32, self._ort_dynamic, weight_type=QuantType.QInt8)
                if {"ort_int8_static", "openvino_int8"} & set(self.wanted):
                    self._note("quantizing statically to QDQ (calibration)")
                    graph = onnx.load(fp32, load_external_data=False).graph
                    inits = {t.name for t in graph.initializer}
                    linears = [n.name for n in graph.node
                               if n.op_type == "MatMul" and n.input[1] in inits]
                    self._qdq = os.path.join(self._tmp.name, "model.qdq.onnx")
                    quantize_static(fp32, self._qdq,
                                    Reader(_calibration(self.vocab, self.seq)),
                                    quant_format=QuantFormat.QDQ,
                                    activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8, per_channel=True,
                                    op_types_to_quantize=["MatMul"], nodes_to_quantize=linears)
        except Exception as exc:  # noqa: BLE001  (export or quantization failed: say why)
            for p in onnx_peers:
                if not (p == "ort_int8" and self._ort_dynamic and os.path.exists(
                        self._ort_dynamic)):
                    self.errors[p] = _short(exc)
        finally:
            root.setLevel(level)

    @property
    def names(self):
        """The peers that were built."""
        out = []
        for p in self.wanted:
            if p in self.errors:
                continue
            if p == "ort_int8" and not self._ort_dynamic:
                continue
            if p in ("ort_int8_static", "openvino_int8") and not self._qdq:
                continue
            out.append(p)
        return out

    def runner(self, peer, ids, mask, threads):
        """A no-argument callable running `peer` on (ids, mask) with `threads` threads.

        Returns None (and records the reason in ``errors``) if the runtime
        refuses to build it.
        """
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        try:
            if peer in ("torch_fp32", "torch_int8"):
                torch = self.torch
                model = self.model if peer == "torch_fp32" else self.model_int8
                ti, tm = torch.from_numpy(feed["input_ids"]), torch.from_numpy(
                    feed["attention_mask"])

                def run():
                    with torch.inference_mode():
                        return model(input_ids=ti, attention_mask=tm).last_hidden_state
                return run
            if peer in ("ort_int8", "ort_int8_static"):
                sess = ort_session(self._ort_dynamic if peer == "ort_int8" else self._qdq,
                                   threads)
                return lambda: sess.run(None, feed)[0]
            if peer == "openvino_int8":
                import openvino as ov
                core = ov.Core()
                model = core.read_model(self._qdq)
                model.reshape({"input_ids": list(ids.shape), "attention_mask": list(ids.shape)})
                compiled = core.compile_model(model, "CPU", openvino_config(threads))
                int8, total = openvino_int8_layers(compiled)
                self.info["openvino_int8"] = {"int8_layers": int8, "matmul_layers": total}
                request = compiled.create_infer_request()
                return lambda: request.infer(feed)[0]
        except Exception as exc:  # noqa: BLE001
            self.errors[peer] = _short(exc)
            return None
        raise ValueError(f"unknown peer {peer!r}")

    def kind(self, peer):
        """``"int8"`` if `peer` runs INT8 products, else ``"float"``."""
        if peer == "openvino_int8":
            return "int8" if self.info.get(peer, {}).get("int8_layers") else "float"
        return "int8" if peer in INT8_PEERS else "float"

    def close(self):
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
