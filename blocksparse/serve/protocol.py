"""The OpenAI embeddings API: request validation, response and error bodies.

Pure functions over bytes and dicts (no web framework), so that every rule
is testable on its own.  What a request may hold, as OpenAI documents it:

* ``input``: a string, a list of strings, a list of token ids, or a list
  of lists of token ids; not empty, no empty string, at most
  ``max_inputs`` items.  Token ids are the model tokenizer's ids of the
  text without special tokens; the server adds ``[CLS]``/``[SEP]`` and
  truncates as for a text.
* ``model``: a string (any name is accepted; the response names the served
  model).
* ``encoding_format``: ``"float"`` (default) or ``"base64"``: the
  little-endian float32 bytes of each vector, base64-encoded.
* ``dimensions``: only the model's own dimension is accepted.
* ``user``: a string, ignored.

Errors are ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status, as OpenAI sends them.
"""
import base64
import json
import numbers

import numpy as np

__all__ = ["RequestError", "EmbeddingRequest", "parse_embedding_request", "error_body",
           "embedding_response"]

ENCODING_FORMATS = ("float", "base64")


class RequestError(ValueError):
    """A request the server refuses, with its HTTP status and OpenAI error fields.

    Parameters
    ----------
    message : str
    status : int, optional
    param : str, optional
        The request field at fault.
    type : str, optional
        OpenAI's error type (``invalid_request_error`` for 4xx).
    code : str, optional
    """

    def __init__(self, message, *, status=400, param=None, type="invalid_request_error",
                 code=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.type = type
        self.code = code

    def body(self):
        """The JSON-ready error body."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message, *, type="invalid_request_error", param=None, code=None):
    """OpenAI's error shape.

    Parameters
    ----------
    message : str
    type, param, code : str or None

    Returns
    -------
    dict
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class EmbeddingRequest:
    """A validated embeddings request.

    Attributes
    ----------
    inputs : list of str or list of list of int
    tokens : bool
        True when `inputs` are token-id lists.
    encoding_format : {"float", "base64"}
    model : str or None
    dimensions : int or None
    """

    __slots__ = ("inputs", "tokens", "encoding_format", "model", "dimensions")

    def __init__(self, inputs, tokens, encoding_format="float", model=None, dimensions=None):
        self.inputs = inputs
        self.tokens = tokens
        self.encoding_format = encoding_format
        self.model = model
        self.dimensions = dimensions


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _inputs(value, max_inputs):
    """(inputs, tokens) from the ``input`` field."""
    if isinstance(value, str):
        items, tokens = [value], False
    elif isinstance(value, list):
        if not value:
            raise RequestError("'input' must not be an empty list", param="input")
        if all(isinstance(v, str) for v in value):
            items, tokens = value, False
        elif all(_is_int(v) for v in value):
            items, tokens = [value], True
        elif all(isinstance(v, list) for v in value):
            for i, v in enumerate(value):
                if not v:
                    raise RequestError(f"'input[{i}]' must not be an empty token list",
                                       param="input")
                if not all(_is_int(t) for t in v):
                    raise RequestError(f"'input[{i}]' must be a list of integer token ids",
                                       param="input")
            items, tokens = value, True
        else:
            raise RequestError("'input' must be a string, a list of strings, a list of token "
                               "ids or a list of lists of token ids (not a mix)", param="input")
    else:
        raise RequestError(f"'input' must be a string or a list, got {_json_type(value)}",
                           param="input")
    if len(items) > max_inputs:
        raise RequestError(f"'input' has {len(items)} items; this server takes at most "
                           f"{max_inputs} per request", param="input")
    if not tokens:
        for i, t in enumerate(items):
            if not t.strip():
                raise RequestError(f"'input[{i}]' is an empty string" if len(items) > 1 else
                                   "'input' is an empty string", param="input")
    return items, tokens


def _json_type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def parse_embedding_request(body, *, max_inputs=2048):
    """Validate the JSON body of ``POST /v1/embeddings``.

    Parameters
    ----------
    body : bytes
    max_inputs : int, optional
        Items allowed in ``input``.

    Returns
    -------
    EmbeddingRequest

    Raises
    ------
    RequestError
        Status 400 for a body that is not a JSON object or a field of the
        wrong type or value; the message names the field.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestError(f"the request body must be a JSON object, got {_json_type(data)}")
    if "input" not in data:
        raise RequestError("'input' is required", param="input")
    inputs, tokens = _inputs(data["input"], max_inputs)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"'model' must be a string, got {_json_type(model)}", param="model")
    fmt = data.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ENCODING_FORMATS:
        raise RequestError(f"'encoding_format' must be 'float' or 'base64', got {fmt!r}",
                           param="encoding_format")
    dims = data.get("dimensions")
    if dims is not None and (not _is_int(dims) or dims < 1):
        raise RequestError(f"'dimensions' must be a positive integer, got {dims!r}",
                           param="dimensions")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError(f"'user' must be a string, got {_json_type(user)}", param="user")
    return EmbeddingRequest(inputs, tokens, fmt, model, dims)


def encode_vector(row, encoding_format):
    """One embedding as OpenAI sends it: a list of floats or base64 float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(row, dtype=np.float32).tolist()


def embedding_response(rows, *, model, encoding_format, prompt_tokens):
    """The body of a successful ``POST /v1/embeddings``.

    Parameters
    ----------
    rows : ndarray of shape (n, dim)
    model : str
    encoding_format : {"float", "base64"}
    prompt_tokens : int

    Returns
    -------
    bytes
        JSON.
    """
    data = [{"object": "embedding", "index": i, "embedding": encode_vector(r, encoding_format)}
            for i, r in enumerate(rows)]
    body = {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": int(prompt_tokens), "total_tokens": int(prompt_tokens)}}
    return json.dumps(body, separators=(",", ":")).encode()
