"""Run the docstring examples of the package modules (doctest.testmod)."""
import doctest
import importlib

import pytest

MODULES = ["blocksparse._matrix", "blocksparse._prune", "blocksparse._quant",
           "blocksparse._config", "blocksparse._io", "blocksparse.pipelines.embedding",
           "blocksparse.serve.loadtest", "blocksparse.nn.activations",
           "blocksparse.pipelines.question_answering", "blocksparse._cli_model"]
# modules whose public functions carry Examples sections today
MUST_HAVE_EXAMPLES = {"blocksparse._matrix", "blocksparse._prune", "blocksparse._quant",
                      "blocksparse._config"}


@pytest.mark.thread_unsafe  # examples may switch the ISA (isa_context) while they run
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             raise_on_error=False, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
    if name in MUST_HAVE_EXAMPLES:
        assert result.attempted > 0, f"no examples found in {name}"


def test_doctest_runner_reports_failures():
    """The check above can fail: a wrong example is counted as a failure."""
    import types
    mod = types.ModuleType("fake_for_doctest")
    mod.__doc__ = ">>> 1 + 1\n3\n"
    result = doctest.testmod(mod, report=False)
    assert result.failed == 1
