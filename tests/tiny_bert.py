"""A tiny random BERT checkpoint with a real tokenizer, for the pruning and training tests.

The model is random (hidden 32, two layers); the tokenizer is a small
WordPiece over the words of some texts, so the offline corpus turns into
real token sequences and every forward pass takes well under a second.
"""
import collections
import re

from blocksparse.nn import BertModel

CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
           max_position_embeddings=64)


def write_tokenizer(directory, texts, size=300):
    """A WordPiece tokenizer.json over the `size` commonest words of `texts`; its vocab size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    words = collections.Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(special + [w for w, _ in words.most_common(size)])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]",
                                            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(directory / "tokenizer.json"))
    return len(vocab)


def tiny_checkpoint(directory, texts, seed=1):
    """Write a tiny dense float32 BERT + tokenizer to `directory`; return it."""
    vocab = write_tokenizer(directory, texts)
    model = BertModel.from_config(dict(CFG, vocab_size=vocab), seed=seed)
    for layer in model.encoder:  # BERT's init scale leaves the residual stream in charge;
        for lin in layer.linears:  # larger weights make pruning matter, as in a trained model
            lin.weight *= 15
    model.save_pretrained(directory)
    return directory
