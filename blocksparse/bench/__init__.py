"""The benchmark suites of ``python -m blocksparse bench``, shipped with the package.

* :mod:`.spmm_int8`: INT8 block-sparse ``W @ X`` against dense INT8 peers;
* :mod:`.spmm_float`: float32 products against ``scipy.sparse.bsr_array`` and NumPy;
* :mod:`.bert`: BERT encoders end to end against PyTorch, ONNX Runtime and OpenVINO
  on the same pruned weights, optionally under contention;
* :mod:`.ceiling`: the machine's ceilings (``vpdpbusd``, FMA, bandwidth) from probes
  compiled into the package (``blocksparse.bench._probes``);
* :mod:`.peers`, :mod:`.bert_peers`: the peers, each limited to the row's threads;
* :mod:`.plot`: the figure; :mod:`._common`: timing in interleaved rounds, the
  quiet-machine check and tables.

Every suite exposes ``run(args, progress=None) -> dict`` (the contract is in
:mod:`blocksparse._cli_bench`).  Nothing here is imported by ``import blocksparse``.
"""
