"""The task commands: ``classify``, ``ner`` and ``qa`` (JSON lines out).

Each loads a task model and its tokenizer from ``--model DIR`` through the
pipelines of :mod:`blocksparse.pipelines`, reads its inputs from the
arguments, a file or standard input, and writes one JSON object per input
line, in input order, to standard output or ``--output``.
"""
import json
import sys

from ._cli import UsageError, blocksize, fraction, output_file, positive_int

__all__ = ["add_parsers", "run_classify", "run_ner", "run_qa"]

_INPUT = ("Inputs: TEXT arguments, then the lines of --file (one text per line, blank lines\n"
          "included; '-' reads standard input); without either, standard input when it is\n"
          "not a terminal.  Output: one JSON object per input, in input order.")


def _add_model_options(p):
    from ._cli import _BLOCK_RULE
    p.add_argument("--model", required=True, metavar="DIR",
                   help="checkpoint directory (config.json, model.safetensors, tokenizer.json; "
                        "transformers' or written by sparsify / save_pretrained)")
    p.add_argument("--sparsity", type=fraction, metavar="S",
                   help="prune the encoder's Linear weights to this block sparsity")
    p.add_argument("--blocksize", type=blocksize, default=(4, 1), metavar="R,C",
                   help="block shape for --sparsity (default: 4,1). " + _BLOCK_RULE)
    p.add_argument("--int8", action="store_true", help="INT8 weights and activations")
    p.add_argument("--batch-tokens", type=positive_int, default=8192, metavar="N",
                   help="at most N padded tokens per forward pass (default: %(default)s)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the JSON lines to FILE (replaced atomically) instead of stdout")


def _add_texts(p):
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts")
    p.add_argument("-f", "--file", metavar="PATH",
                   help="read texts from a file, one per line ('-' for standard input)")
    p.add_argument("--max-length", type=positive_int, metavar="N",
                   help="truncate at N tokens, special tokens included (default and at most: "
                        "what the model takes)")


def add_parsers(sub, formatter):
    """Add ``classify``, ``ner`` and ``qa`` to the subparsers of ``python -m blocksparse``."""
    p = sub.add_parser(
        "classify", formatter_class=formatter,
        help="labels and scores of texts (or text pairs) with a sequence classifier",
        description=(
            "Classify texts with a *ForSequenceClassification model (BERT, DistilBERT,\n"
            "RoBERTa, XLM-RoBERTa, ELECTRA and the pre-LayerNorm variants;\n"
            "blocksparse.pipelines.TextClassificationPipeline).\n"
            "Scores: the softmax of the logits for a single-label model, the sigmoid for a\n"
            "multi-label or one-label model (a cross-encoder), the logits for regression, as\n"
            "transformers' text-classification pipeline (--function overrides).\n"
            "With --pairs every input is TEXT<TAB>TEXT_PAIR (cross-encoder scoring).\n\n"
            + _INPUT),
        epilog=("examples:\n"
                "  python -m blocksparse classify --model ./sst2 \"I loved it.\" \"Awful.\"\n"
                "  python -m blocksparse classify --model ./ms-marco --pairs --int8 -f "
                "pairs.tsv\n"
                "  cat reviews.txt | python -m blocksparse classify --model ./sst2 --all-labels"))
    _add_texts(p)
    _add_model_options(p)
    p.add_argument("--pairs", action="store_true",
                   help="each input is two texts separated by a TAB")
    p.add_argument("--top-k", type=positive_int, default=1, metavar="K",
                   help="the K best labels (default: 1)")
    p.add_argument("--all-labels", action="store_true", help="every label, best first")
    p.add_argument("--function", choices=("softmax", "sigmoid", "none"),
                   help="from logits to scores (default: as the model's config says)")
    p.set_defaults(command_module="_cli_tasks", command_func="run_classify")

    p = sub.add_parser(
        "ner", formatter_class=formatter,
        help="named entities of texts with a token classifier",
        description=(
            "Tag texts with a *ForTokenClassification model\n"
            "(blocksparse.pipelines.TokenClassificationPipeline): per token the softmax of\n"
            "the logits, then transformers' aggregation: 'simple' (default) merges adjacent\n"
            "tokens of one entity type (B-/I- labels), 'first', 'average' and 'max' first\n"
            "make the tokens of a word agree, 'none' keeps one entity per token.  Entities\n"
            "carry character offsets into the text.\n\n" + _INPUT),
        epilog=("examples:\n"
                "  python -m blocksparse ner --model ./bert-ner \"Marie Curie worked in "
                "Paris.\"\n"
                "  python -m blocksparse ner --model ./bert-ner --aggregation first -f news.txt"))
    _add_texts(p)
    _add_model_options(p)
    p.add_argument("--aggregation", default="simple",
                   choices=("simple", "none", "first", "average", "max"),
                   help="how tokens become entities (default: %(default)s)")
    p.add_argument("--ignore-labels", default="O", metavar="LIST",
                   help="comma-separated labels left out (default: %(default)s; '' keeps all)")
    p.set_defaults(command_module="_cli_tasks", command_func="run_ner")

    p = sub.add_parser(
        "qa", formatter_class=formatter,
        help="answer questions about a context with an extractive QA model",
        description=(
            "Answer questions with a *ForQuestionAnswering model\n"
            "(blocksparse.pipelines.QuestionAnsweringPipeline): the best span of the\n"
            "context by p_start * p_end, at most --max-answer-len tokens, long contexts in\n"
            "overlapping windows, as transformers' question-answering pipeline.\n\n"
            "Inputs: --question and --context for one pair; or JSON lines with keys\n"
            "\"question\" and \"context\" from --file ('-' reads standard input) or from\n"
            "standard input when it is not a terminal.  Output: one JSON object per pair."),
        epilog=("examples:\n"
                "  python -m blocksparse qa --model ./squad --question \"Where?\" "
                "--context \"In Paris.\"\n"
                "  python -m blocksparse qa --model ./squad --int8 -f questions.jsonl "
                "-o answers.jsonl"))
    p.add_argument("--question", metavar="TEXT", help="the question (with --context)")
    p.add_argument("--context", metavar="TEXT", help="the text to answer from")
    p.add_argument("-f", "--file", metavar="PATH",
                   help="JSON lines {\"question\": ..., \"context\": ...} ('-': standard input)")
    _add_model_options(p)
    p.add_argument("--top-k", type=positive_int, default=1, metavar="K",
                   help="answers per question (default: 1)")
    p.add_argument("--max-answer-len", type=positive_int, default=15, metavar="N",
                   help="longest answer in tokens (default: %(default)s)")
    p.add_argument("--max-length", type=positive_int, default=384, metavar="N",
                   help="tokens per window, question included (default: %(default)s, at most "
                        "what the model takes)")
    p.add_argument("--doc-stride", type=int, default=128, metavar="N",
                   help="context tokens two windows share (default: %(default)s)")
    p.add_argument("--handle-impossible-answer", action="store_true",
                   help="let the empty answer compete with the spans")
    p.set_defaults(command_module="_cli_tasks", command_func="run_qa")


# ---- running -----------------------------------------------------------------------------

def _lines(args):
    """Input lines: TEXT arguments and --file, or standard input when it is piped."""
    from ._cli_model import read_texts
    texts = getattr(args, "texts", [])
    file = args.file
    if not texts and not file:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no inputs: give TEXT arguments, --file PATH or pipe them in")
        file = "-"
    return read_texts(texts, file)


def _pipeline(cls, args, **options):
    from ._cli_model import _check_model_options, _model_dir
    from .pipelines._task import WrongTaskError
    model_dir = _model_dir(args.model)
    _check_model_options(model_dir, args, "--model")
    try:
        return cls(model_dir, dtype="int8" if args.int8 else None, sparsity=args.sparsity,
                   blocksize=args.blocksize, max_batch_tokens=args.batch_tokens, **options)
    except WrongTaskError as exc:
        raise UsageError(f"--model: {exc}") from None
    except ImportError as exc:
        raise UsageError(str(exc)) from None


def _write(records, args):
    """JSON lines to stdout, or atomically to --output."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if args.output:
        from ._atomic import replacing
        path = output_file(args.output, "--output")
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        print(f"wrote {path}: {len(lines)} lines", file=sys.stderr)
        return 0
    for line in lines:
        print(line)
    return 0


def run_classify(args):
    """Labels of texts (``blocksparse classify``)."""
    from .pipelines import TextClassificationPipeline
    lines = _lines(args)
    pairs = None
    if args.pairs:
        split = [line.split("\t", 1) for line in lines]
        bad = next((i for i, s in enumerate(split) if len(s) != 2), None)
        if bad is not None:
            raise UsageError(f"--pairs: input {bad + 1} has no TAB between its two texts")
        lines, pairs = [a for a, _ in split], [b for _, b in split]
    pipe = _pipeline(TextClassificationPipeline, args, max_length=args.max_length,
                     function_to_apply=args.function)
    top_k = None if args.all_labels else args.top_k
    out = pipe(lines, pairs, top_k=top_k)
    records = []
    for i, (text, res) in enumerate(zip(lines, out)):
        r = {"text": text}
        if pairs is not None:
            r["text_pair"] = pairs[i]
        if top_k == 1:
            r.update(res)
        else:
            r["labels"] = res
        records.append(r)
    return _write(records, args)


def run_ner(args):
    """Entities of texts (``blocksparse ner``)."""
    from .pipelines import TokenClassificationPipeline
    lines = _lines(args)
    ignore = [t.strip() for t in args.ignore_labels.split(",") if t.strip()]
    pipe = _pipeline(TokenClassificationPipeline, args, max_length=args.max_length,
                     aggregation_strategy=args.aggregation, ignore_labels=ignore)
    return _write([{"text": t, "entities": e} for t, e in zip(lines, pipe(lines))], args)


def _qa_inputs(args):
    if args.question is not None or args.context is not None:
        if args.question is None or args.context is None:
            raise UsageError("--question and --context go together")
        if args.file:
            raise UsageError("give --question/--context or --file, not both")
        return [{"question": args.question, "context": args.context}]
    args.texts = []
    items = []
    for n, line in enumerate(_lines(args), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"input line {n} is not JSON: {exc}") from None
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str)
                                                 for k in ("question", "context")):
            raise UsageError(f"input line {n} must be a JSON object with string keys "
                             f"'question' and 'context'")
        items.append(item)
    if not items:
        raise UsageError("no questions in the input")
    return items


def run_qa(args):
    """Answers to questions (``blocksparse qa``)."""
    from .pipelines import QuestionAnsweringPipeline
    items = _qa_inputs(args)
    if args.doc_stride < 0:
        raise UsageError(f"--doc-stride must be >= 0, got {args.doc_stride}")
    pipe = _pipeline(QuestionAnsweringPipeline, args, max_length=args.max_length,
                     doc_stride=args.doc_stride, max_answer_len=args.max_answer_len,
                     top_k=args.top_k, handle_impossible_answer=args.handle_impossible_answer)
    records = []
    for item, res in zip(items, pipe([{"question": i["question"], "context": i["context"]}
                                      for i in items])):
        r = {"question": item["question"]}
        if args.top_k == 1:
            r.update(res or {"answer": None, "score": None, "start": None, "end": None})
        else:
            r["answers"] = res
        records.append(r)
    return _write(records, args)
