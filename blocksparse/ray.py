"""Scale-out on Ray: batch embedding with Ray Data, online serving with Ray Serve.

Needs the ``ray`` extra (``pip install 'blocksparse[ray]'``); the rest of
the package never imports this module or Ray.

* :class:`Embedder` is a callable class for
  :meth:`ray.data.Dataset.map_batches`: each actor of the pool loads the
  model once, then adds an ``embedding`` column (float32 vectors) to every
  batch that has a ``text`` column.
* :func:`embed_dataset` wires it with an actor pool; :func:`embed_files`
  goes from a Parquet or JSON-lines corpus to a Parquet dataset, and
  ``python -m blocksparse.ray INPUT OUTPUT`` runs it from the shell, on the
  local machine or on a cluster (``--address``).
* :func:`deployment` is a Ray Serve application whose replicas run the
  same server as ``blocksparse serve`` (:func:`blocksparse.serve.create_app`:
  the OpenAI embeddings API, dynamic batching, metrics).

Examples
--------
Embed a JSON-lines corpus (one ``{"id": ..., "text": ...}`` object per
line) into Parquet with two actors, one core each:

>>> import ray                                                # doctest: +SKIP
>>> from blocksparse.ray import embed_files
>>> ray.init(num_cpus=2)                                      # doctest: +SKIP
>>> embed_files("corpus.jsonl", "embeddings/", dtype="int8",
...             concurrency=2, num_cpus=1)                    # doctest: +SKIP

Serve the model behind Ray Serve's HTTP proxy, two replicas:

>>> from ray import serve                                     # doctest: +SKIP
>>> from blocksparse.ray import deployment
>>> serve.run(deployment(dtype="int8", num_replicas=2))      # doctest: +SKIP
"""
import argparse
import sys

__all__ = ["Embedder", "embed_dataset", "embed_files", "deployment", "main"]


class Embedder:
    """Add sentence embeddings to a batch of texts (for ``Dataset.map_batches``).

    The model is loaded once, when Ray constructs the actor; every call then
    embeds one batch with :class:`blocksparse.pipelines.EmbeddingPipeline`.

    Parameters
    ----------
    model_dir : str, optional
        Model directory, readable on every node (default: the packaged
        all-MiniLM-L6-v2 of each node's environment).
    text_column : str, optional
        Column holding the texts (strings).
    output_column : str, optional
        Column to add: float32 vectors of the model's dimension.
    threads : int, optional
        Kernel threads per actor (:func:`blocksparse.set_num_threads`);
        match it to the actor's ``num_cpus``.
    **options
        Passed to :class:`~blocksparse.pipelines.EmbeddingPipeline`
        (``dtype``, ``sparsity``, ``blocksize``, ``max_length``,
        ``normalize``, ``max_batch_tokens``).

    Notes
    -----
    A batch may be a dict of NumPy arrays (``batch_format="numpy"``: the
    output column is a 2-D array), a pandas DataFrame (one array per row)
    or a pyarrow Table (a fixed-size list column, which Parquet readers
    without Ray read as lists of floats).  The batch comes back with the
    column added and its rows in their order.
    """

    def __init__(self, model_dir=None, *, text_column="text", output_column="embedding",
                 threads=None, **options):
        if threads is not None:
            import blocksparse
            blocksparse.set_num_threads(threads)
        from .pipelines import EmbeddingPipeline
        self.pipeline = EmbeddingPipeline(model_dir, **options)
        self.text_column = text_column
        self.output_column = output_column

    def _texts(self, column):
        texts = list(column)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"column {self.text_column!r} must hold strings; row {i} is "
                                f"{type(t).__name__}")
        return texts

    def __call__(self, batch):
        """The batch with the embedding column added.

        Parameters
        ----------
        batch : dict of ndarray, pandas.DataFrame or pyarrow.Table

        Returns
        -------
        the same kind as `batch`

        Raises
        ------
        KeyError
            If the text column is missing.
        TypeError
            If a text is not a string.
        """
        if hasattr(batch, "append_column") and hasattr(batch, "schema"):  # pyarrow.Table
            import pyarrow as pa
            emb = self.pipeline.embed(self._texts(batch.column(self.text_column).to_pylist()))
            values = pa.array(emb.reshape(-1), type=pa.float32())
            column = pa.FixedSizeListArray.from_arrays(values, emb.shape[1])
            return batch.append_column(self.output_column, column)
        emb = self.pipeline.embed(self._texts(batch[self.text_column]))
        if hasattr(batch, "iloc"):  # pandas.DataFrame
            batch = batch.copy()
            batch[self.output_column] = list(emb)
            return batch
        out = dict(batch)
        out[self.output_column] = emb
        return out


def embed_dataset(dataset, model_dir=None, *, concurrency=1, num_cpus=1, batch_size=256,
                  text_column="text", output_column="embedding", **options):
    """Add an embedding column to a Ray Dataset with a pool of :class:`Embedder` actors.

    Parameters
    ----------
    dataset : ray.data.Dataset
        With a string column `text_column`.
    model_dir : str, optional
    concurrency : int or tuple of int, optional
        Actors in the pool (or ``(min, max)`` for an autoscaling pool).
    num_cpus : float, optional
        CPUs reserved per actor; also its kernel threads.
    batch_size : int, optional
        Rows per call; each actor sorts a batch by length and runs it in
        forward passes of ``max_batch_tokens``.
    text_column, output_column : str, optional
    **options
        Passed to :class:`~blocksparse.pipelines.EmbeddingPipeline`.

    Returns
    -------
    ray.data.Dataset
        Lazy: nothing runs until it is consumed or written.
    """
    kwargs = dict(options, model_dir=model_dir, text_column=text_column,
                  output_column=output_column, threads=max(int(num_cpus), 1))
    return dataset.map_batches(Embedder, fn_constructor_kwargs=kwargs,
                               concurrency=concurrency, num_cpus=num_cpus,
                               batch_size=batch_size, batch_format="pyarrow")


def _read(path, fmt):
    import ray.data
    fmt = fmt or ("parquet" if str(path).rstrip("/").endswith(".parquet") else
                  "json" if str(path).endswith((".jsonl", ".json", ".jsonl.gz")) else None)
    if fmt == "parquet":
        return ray.data.read_parquet(path)
    if fmt == "json":
        return ray.data.read_json(path, lines=True)
    raise ValueError(f"input_path {path!r}: say format='parquet' or 'json' (JSON lines)")


def embed_files(input_path, output_path, model_dir=None, *, input_format=None, concurrency=1,
                num_cpus=1, batch_size=256, text_column="text", output_column="embedding",
                **options):
    """Embed a Parquet or JSON-lines corpus and write it, with the embeddings, to Parquet.

    Parameters
    ----------
    input_path : str
        A file or directory (local, or any filesystem Ray reads: ``s3://``
        and the like on a cluster).
    output_path : str
        Directory for the Parquet files (one or more per block).
    model_dir : str, optional
    input_format : {None, "parquet", "json"}, optional
        None guesses from the suffix (``.parquet``; ``.jsonl``, ``.json``).
    concurrency, num_cpus, batch_size, text_column, output_column, **options
        As in :func:`embed_dataset`.

    Notes
    -----
    Starts a local Ray instance if none is running (``ray.init()``); call
    ``ray.init(address=...)`` first to use a cluster.  Every other column
    of the input is kept.
    """
    import ray
    if not ray.is_initialized():
        ray.init()
    ds = embed_dataset(_read(input_path, input_format), model_dir, concurrency=concurrency,
                       num_cpus=num_cpus, batch_size=batch_size, text_column=text_column,
                       output_column=output_column, **options)
    ds.write_parquet(output_path)


def deployment(model_dir=None, *, settings=None, num_replicas=1, num_cpus=1, name=None,
               **options):
    """A Ray Serve application running ``blocksparse serve``'s app in each replica.

    Parameters
    ----------
    model_dir : str, optional
        Readable on every node that hosts a replica.
    settings : blocksparse.serve.ServerSettings, optional
        Batching and limits, per replica.
    num_replicas : int or "auto", optional
    num_cpus : float, optional
        CPUs per replica; also its kernel threads.
    name : str, optional
        Model name in responses.
    **options
        Passed to :class:`~blocksparse.pipelines.EmbeddingPipeline`.

    Returns
    -------
    ray.serve.Application
        Run it with ``serve.run(app, route_prefix="/")``: the replicas answer
        ``POST /v1/embeddings`` and the other routes of
        :func:`blocksparse.serve.create_app` behind Ray Serve's proxy.
    """
    from ray import serve

    threads = max(int(num_cpus), 1)

    def build_app():
        # runs in each replica: one model and one batcher per replica
        import blocksparse
        from blocksparse.pipelines import EmbeddingPipeline
        from blocksparse.serve import create_app
        blocksparse.set_num_threads(threads)
        return create_app(EmbeddingPipeline(model_dir, name=name, **options), settings)

    ingress = serve.ingress(build_app)()
    return serve.deployment(ingress, name="blocksparse-embeddings", num_replicas=num_replicas,
                            ray_actor_options={"num_cpus": num_cpus}).bind()


def main(argv=None):
    """``python -m blocksparse.ray INPUT OUTPUT``: embed a corpus to Parquet on Ray.

    Parameters
    ----------
    argv : list of str, optional

    Returns
    -------
    int
        Exit status.
    """
    p = argparse.ArgumentParser(
        prog="python -m blocksparse.ray",
        description="Embed a Parquet or JSON-lines corpus (a 'text' column) to Parquet with a "
                    "pool of Ray actors, each loading the model once.")
    p.add_argument("input", help="Parquet file/directory or JSON-lines file")
    p.add_argument("output", help="output directory (Parquet)")
    p.add_argument("--model", metavar="DIR", help="model directory (default: packaged MiniLM)")
    p.add_argument("--int8", action="store_true", help="INT8 weights and activations")
    p.add_argument("--sparsity", type=float, metavar="S", help="prune at load time")
    p.add_argument("--actors", type=int, default=1, help="actors in the pool (default: 1)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0,
                   help="CPUs (and kernel threads) per actor (default: 1)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per call (default: 256)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--format", choices=("parquet", "json"), help="input format")
    p.add_argument("--address", help="Ray cluster address (default: start a local instance)")
    args = p.parse_args(argv)
    if args.actors < 1 or args.batch_size < 1 or not args.cpus_per_actor > 0:
        p.error("--actors and --batch-size must be positive, --cpus-per-actor > 0")
    import ray
    ray.init(address=args.address)
    embed_files(args.input, args.output, args.model, input_format=args.format,
                concurrency=args.actors, num_cpus=args.cpus_per_actor,
                batch_size=args.batch_size, text_column=args.text_column,
                dtype="int8" if args.int8 else None, sparsity=args.sparsity)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
