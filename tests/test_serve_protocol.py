"""The OpenAI embeddings request rules and response shapes, without a server."""
import base64
import json

import numpy as np
import pytest

from blocksparse.serve.protocol import (RequestError, embedding_response, error_body,
                                        parse_embedding_request)


def parse(obj, **kw):
    return parse_embedding_request(json.dumps(obj).encode(), **kw)


@pytest.mark.parametrize("value, inputs, tokens", [
    ("a cat", ["a cat"], False),
    (["a", "b c"], ["a", "b c"], False),
    ([1, 2, 3], [[1, 2, 3]], True),
    ([[1, 2], [3]], [[1, 2], [3]], True),
])
def test_accepted_inputs(value, inputs, tokens):
    req = parse({"input": value, "model": "m"})
    assert req.inputs == inputs and req.tokens is tokens
    assert req.encoding_format == "float" and req.model == "m"


def test_optional_fields():
    req = parse({"input": "x", "encoding_format": "base64", "dimensions": 384, "user": "u"})
    assert (req.encoding_format, req.dimensions, req.model) == ("base64", 384, None)
    assert parse({"input": "x", "encoding_format": None}).encoding_format == "float"


BAD = [
    (b"not json", "not valid JSON", None),
    (b"\xff\xfe", "not valid JSON", None),
    (b"[1, 2]", "must be a JSON object, got an array", None),
    (b"{}", "'input' is required", "input"),
    (b'{"input": null}', "'input' must be a string or a list, got null", "input"),
    (b'{"input": 5}', "got a number", "input"),
    (b'{"input": {"a": 1}}', "got an object", "input"),
    (b'{"input": []}', "must not be an empty list", "input"),
    (b'{"input": ""}', "'input' is an empty string", "input"),
    (b'{"input": "   "}', "'input' is an empty string", "input"),
    (b'{"input": ["a", ""]}', "'input\\[1\\]' is an empty string", "input"),
    (b'{"input": ["a", 1]}', "not a mix", "input"),
    (b'{"input": [true, false]}', "not a mix", "input"),
    (b'{"input": [1.5, 2]}', "not a mix", "input"),
    (b'{"input": [[1], []]}', "'input\\[1\\]' must not be an empty token list", "input"),
    (b'{"input": [[1], ["a"]]}', "'input\\[1\\]' must be a list of integer token ids", "input"),
    (b'{"input": [[1], [true]]}', "'input\\[1\\]' must be a list of integer", "input"),
    (b'{"input": "x", "model": 3}', "'model' must be a string", "model"),
    (b'{"input": "x", "encoding_format": "hex"}', "'encoding_format' must be", "encoding_format"),
    (b'{"input": "x", "dimensions": 0}', "'dimensions' must be a positive", "dimensions"),
    (b'{"input": "x", "dimensions": "384"}', "'dimensions' must be a positive", "dimensions"),
    (b'{"input": "x", "user": 1}', "'user' must be a string", "user"),
]


@pytest.mark.parametrize("body, match, param", BAD)
def test_bad_requests(body, match, param):
    with pytest.raises(RequestError, match=match) as info:
        parse_embedding_request(body)
    err = info.value
    assert err.status == 400 and err.param == param
    assert err.body() == {"error": {"message": err.message, "type": "invalid_request_error",
                                    "param": param, "code": None}}


def test_too_many_inputs():
    with pytest.raises(RequestError, match="has 5 items; this server takes at most 4"):
        parse({"input": ["a"] * 5}, max_inputs=4)
    assert len(parse({"input": ["a"] * 4}, max_inputs=4).inputs) == 4


def test_response_float_and_base64():
    rows = np.array([[0.5, -1.25, 3.0], [1e-8, 2.0, -0.0]], dtype=np.float32)
    for fmt in ("float", "base64"):
        body = json.loads(embedding_response(rows, model="m", encoding_format=fmt,
                                             prompt_tokens=7))
        assert body["object"] == "list" and body["model"] == "m"
        assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert all(d["object"] == "embedding" for d in body["data"])
        for d, row in zip(body["data"], rows):
            if fmt == "base64":  # little-endian float32, as OpenAI sends it
                got = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
            else:
                got = np.array(d["embedding"], dtype=np.float32)
            np.testing.assert_array_equal(got, row, strict=True)


def test_error_body_shape():
    assert error_body("boom", type="server_error", code="x") == {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": "x"}}
