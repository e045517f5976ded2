"""The activation functions checkpoint configs name, as the encoder applies them.

Hugging Face configs name the feed-forward activation (``hidden_act``, or
``activation`` for DistilBERT) and some heads fix their own (the BERT pooler
``tanh``, the ELECTRA classification head ``gelu``).  Two of them, ``relu``
and the erf form of ``gelu``, are fused into the kernels' epilogue (the INT8
product and the float bias + activation kernel); the others run as a float32
pass over the product's output, in place, right after it.

==========================  ==================================================  =========
name                        function                                            where
==========================  ==================================================  =========
``gelu``, ``gelu_python``   ``0.5 x (1 + erf(x / sqrt 2))``                     epilogue
``relu``                    ``max(x, 0)``                                       epilogue
``gelu_new``,               ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715       float
``gelu_pytorch_tanh``       x^3)))`` (the tanh approximation)
``gelu_fast``               ``0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715      float
                            x^2)))``
``quick_gelu``              ``x sigmoid(1.702 x)``                              float
``tanh``                    ``tanh(x)``                                         float
==========================  ==================================================  =========
"""
import math

import numpy as np

__all__ = ["ACTIVATIONS", "FFN_ACTIVATIONS", "check_activation", "epilogue_activation",
           "apply_activation"]

# config name -> the kernels' epilogue activation computing it
_EPILOGUE = {"gelu": "gelu", "gelu_python": "gelu", "relu": "relu"}
_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))


def _gelu_tanh(y):
    # 0.5 y (1 + tanh(c (y + 0.044715 y^3))), in place with one temporary
    t = y * y
    t *= np.float32(0.044715)
    t += np.float32(1.0)
    t *= y
    t *= _SQRT_2_OVER_PI
    np.tanh(t, out=t)
    t += np.float32(1.0)
    t *= np.float32(0.5)
    y *= t


def _gelu_fast(y):
    t = y * y
    t *= np.float32(0.044715)
    t += np.float32(1.0)
    t *= y
    t *= np.float32(0.7978845608)
    np.tanh(t, out=t)
    t += np.float32(1.0)
    t *= np.float32(0.5)
    y *= t


def _quick_gelu(y):
    # x * sigmoid(1.702 x) = x / (1 + exp(-1.702 x)); exp may overflow to inf, giving 0
    t = y * np.float32(-1.702)
    with np.errstate(over="ignore"):
        np.exp(t, out=t)
    t += np.float32(1.0)
    y /= t


_FLOAT = {"gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "gelu_fast": _gelu_fast,
          "quick_gelu": _quick_gelu, "tanh": lambda y: np.tanh(y, out=y)}

#: Every activation name the heads accept.
ACTIVATIONS = tuple(sorted(set(_EPILOGUE) | set(_FLOAT)))
#: The feed-forward activations of encoder layers (``hidden_act``): all but ``tanh``.
FFN_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "tanh")


def check_activation(name, what="activation", allowed=ACTIVATIONS):
    """Return `name` if it is one of `allowed`.

    Parameters
    ----------
    name : str
    what : str, optional
        How to call the value in the message, e.g. ``"config key 'hidden_act'"``.
    allowed : tuple of str, optional
        :data:`ACTIVATIONS` or :data:`FFN_ACTIVATIONS`.

    Raises
    ------
    ValueError
        Naming `what` and the supported names.
    """
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {name!r}")
    return name


def epilogue_activation(name):
    """The kernels' fused activation (None, "relu", "gelu") computing `name`, or None."""
    return _EPILOGUE.get(name)


def apply_activation(y, name):
    """Apply the activation `name` to the float32 array `y` in place and return `y`.

    Parameters
    ----------
    y : ndarray, float32, C-contiguous
    name : str or None
        From :data:`ACTIVATIONS`; None leaves `y` as it is.

    Returns
    -------
    ndarray
        `y` itself.

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn.activations import apply_activation
    >>> y = np.array([-1.0, 0.0, 2.0], dtype=np.float32)
    >>> np.round(apply_activation(y, "gelu_new").astype(np.float64), 4).tolist()
    [-0.1588, 0.0, 1.9546]
    """
    if name is None or not y.size:
        return y
    if y.dtype != np.float32 or not y.flags.c_contiguous or not y.flags.writeable:
        raise ValueError("y must be a writable C-contiguous float32 array")
    fused = _EPILOGUE.get(name)
    if fused is not None:
        from . import _ops
        _ops._bias_act(y if y.ndim == 2 else y.reshape(1, -1), None, fused)
        return y
    _FLOAT[check_activation(name)](y)
    return y
