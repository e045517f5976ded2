"""ONNX Runtime peers: export a transformers BERT to ONNX and quantize it to INT8.

Shared by ``bench_bert.py`` (in-process timing) and ``serve_peer_ort.py``
(the peer embeddings server).  Needs torch, transformers, onnx and
onnxruntime; imported only by the scripts that use them.
"""
import logging
import os
import warnings

import numpy as np


def export_bert_int8(model, directory, quantize=True):
    """Write ``model.onnx`` (and ``model.int8.onnx``) for a transformers BertModel.

    The graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic
    batch and sequence axes) and returns ``last_hidden_state``; INT8 is
    onnxruntime's dynamic quantization with QInt8 weights, the usual way to
    run BERT in INT8 on ONNX Runtime.

    Parameters
    ----------
    model : transformers.BertModel
    directory : str
    quantize : bool, optional

    Returns
    -------
    str
        Path of the INT8 model (or of the float one without `quantize`).
    """
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    fp32 = os.path.join(directory, "model.onnx")
    int8 = os.path.join(directory, "model.int8.onnx")
    ids = np.random.default_rng(0).integers(1000, 2000, size=(1, 16))
    mask = np.ones_like(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(model.eval()), (torch.tensor(ids), torch.tensor(mask)), fp32,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                        "attention_mask": {0: "batch", 1: "seq"}},
                          opset_version=17, dynamo=False)
        if not quantize:
            return fp32
        from onnxruntime.quantization import QuantType, quantize_dynamic
        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's pre-processing hint
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    return int8


def session(path, threads):
    """An ONNX Runtime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
