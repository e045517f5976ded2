"""The peer server for the serving benchmark: the same server with ONNX Runtime inside.

Everything but the encoder is ``blocksparse serve``'s code: the OpenAI API,
the tokenizer and truncation, the dynamic batcher, pooling and
normalization (:class:`blocksparse.pipelines.EmbeddingPipeline` with
``model=`` an ONNX Runtime session).  The encoder is the model directory's
checkpoint exported with ``torch.onnx`` and quantized to INT8 by
onnxruntime (dynamic quantization, QInt8 weights), the way BERT usually runs
INT8 on ONNX Runtime; so the load test compares the two engines alone.

    python benchmarks/serve_peer_ort.py --model DIR [--onnx PATH] [--threads N] [--port P]

Without ``--onnx`` the export is made first (needs torch, transformers, onnx
and onnxruntime: ``pip install torch==2.13.0`` first, then ``pip install
transformers onnx onnxruntime``) into a temporary directory.  Why not
infinity-emb: its releases pin numpy<2 (this package builds against
numpy 2), an old uvicorn/typer/click, and pull sentence-transformers and
torch for the encoder; the same design with ONNX Runtime inside measures
the engines without the rest of two different servers.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


class OrtEncoder:
    """``encoder(ids, attention_mask=, token_type_ids=)`` -> last hidden state, on ONNX Runtime."""

    def __init__(self, path, threads):
        from _onnx import session
        self.session = session(path, threads)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.dtype = "onnxruntime-int8" if "int8" in os.path.basename(path) else "onnxruntime"

    def __call__(self, ids, attention_mask, token_type_ids=None):
        feed = {"input_ids": ids.astype(np.int64),
                "attention_mask": attention_mask.astype(np.int64)}
        if "token_type_ids" in self.inputs and token_type_ids is not None:
            feed["token_type_ids"] = token_type_ids.astype(np.int64)
        return self.session.run(["last_hidden_state"], feed)[0]


def export(model_dir, directory, quantize=True):
    """The INT8 ONNX file of a Hugging Face BERT directory (made in `directory`)."""
    import transformers
    from _onnx import export_bert_int8
    model = transformers.BertModel.from_pretrained(model_dir, add_pooling_layer=False)
    return export_bert_int8(model, directory, quantize=quantize)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face BERT directory with "
                   "tokenizer.json and the sentence-transformers files")
    p.add_argument("--onnx", help="an ONNX file to serve (default: export --model now)")
    p.add_argument("--fp32", action="store_true", help="export without INT8 quantization")
    p.add_argument("--name", help="model name in responses")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="ONNX Runtime intra-op threads")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-batch-tokens", type=int, default=8192)
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    args = p.parse_args(argv)

    from blocksparse.pipelines import EmbeddingPipeline
    from blocksparse.serve import ServerSettings, bind, create_app, run
    tmp = None
    path = args.onnx
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="serve_peer_ort_")
        path = export(args.model, tmp.name, quantize=not args.fp32)
    try:
        pipeline = EmbeddingPipeline(args.model, model=OrtEncoder(path, args.threads),
                                     max_batch_tokens=args.max_batch_tokens, name=args.name)
        settings = ServerSettings(max_batch_tokens=args.max_batch_tokens,
                                  max_wait=args.max_wait_ms / 1e3, workers=args.workers)
        sock = bind(args.host, args.port)
        host, port = sock.getsockname()[:2]
        print(f"serve_peer_ort: {pipeline!r}; listening on http://{host}:{port}", flush=True)
        run(create_app(pipeline, settings), sock)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print("serve_peer_ort: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
