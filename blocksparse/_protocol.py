"""How the matrix types meet NumPy: products work, everything else refuses clearly.

Without these hooks NumPy treats a matrix object as an opaque scalar:
``np.asarray(W)`` is a 0-d object array, ``np.dot(W, X)`` multiplies W by
every element of X (an object array of matrix copies, until memory runs
out) and ``W == W.copy()`` compares identities.  SciPy's sparse types share
the first two traps.  The choices here:

* products: ``np.dot`` and ``np.matmul`` (and so ``X @ W``) compute the
  product, as ``@`` does, stacks of matrices included (with ``np.dot``'s
  axis order for them);
* scalar ``np.multiply``/``np.true_divide``, ``np.negative``/``np.positive``
  act like the operators; ``np.shape``, ``np.ndim``, ``np.transpose`` and
  ``np.sum`` (axis, dtype) answer like the methods;
* implicit densification (``np.asarray``, ``np.array``), every other ufunc
  or NumPy function, and comparisons (``==``, ``<``, ...) with arrays,
  matrices or numbers raise :class:`TypeError` naming the way out
  (``toarray()`` or ``to_scipy()``).  Comparisons are refused, not
  computed, because their result (a boolean matrix) is not a type this
  package stores; the other elementwise operations are refused the same way.
  Comparing with anything else (``None``, a string) is False, as for any
  object, and hashing stays by identity.
"""
import numbers
import operator

import numpy as np

from ._scipy_api import called_by_scipy_product

__all__ = ["NumpyProtocol"]

# ufunc -> (method when the matrix is the first operand, method when it is the second)
_UFUNCS = {
    np.matmul: ("__matmul__", "__rmatmul__"),
    np.multiply: ("__mul__", "__rmul__"),
    np.true_divide: ("__truediv__", None),
    np.negative: ("__neg__", None),
    np.positive: ("__pos__", None),
}


def _is_operand(x):
    """Things a comparison with a matrix would have to broadcast against."""
    if isinstance(x, (NumpyProtocol, np.ndarray, np.generic, numbers.Number, list, tuple)):
        return True
    return type(x).__module__.startswith("scipy.sparse")


class NumpyProtocol:
    """Mixin: NumPy interop for a 2-D matrix type with ``@`` (see the module notes)."""

    _dense_hint = "toarray()"  # how the class becomes a dense array, for messages

    def _ways_out(self):
        return f".{self._dense_hint}" + (" (dense) or .to_scipy() (SciPy's sparse operations)"
                                         if hasattr(self, "to_scipy") else " (dense)")

    def _refuse(self, what):
        name = type(self).__name__
        return TypeError(f"{what} is not supported for {name} operands: a {name} is not an "
                         f"ndarray; use {self._ways_out()}; products are @, np.dot and "
                         f"np.matmul")

    def __array__(self, dtype=None, copy=None):
        # also reached from scipy.sparse operators: S @ W first tries np.asanyarray(W);
        # a 0-d object array makes SciPy hand the product to W.__rmatmul__
        if hasattr(self, "_sparse_matmul") and called_by_scipy_product():
            box = np.empty((), dtype=object)
            box[()] = self
            return box
        raise TypeError(f"a {type(self).__name__} is not converted to an ndarray implicitly "
                        f"(by np.asarray, np.array, or a scipy.sparse operation other than "
                        f"S @ W); call .{self._dense_hint} for a dense copy"
                        + (", .to_scipy() for SciPy's operations or W.multiply(S) for the "
                           "elementwise product" if hasattr(self, "to_scipy") else ""))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        names = _UFUNCS.get(ufunc)
        if names is None or method != "__call__" or kwargs:
            raise self._refuse(f"numpy.{ufunc.__name__}"
                               + ("" if method == "__call__" else f".{method}")
                               + (f" with {', '.join(sorted(kwargs))}=" if kwargs else ""))
        first = inputs[0] is self
        name = names[0] if first else names[1]
        method_ = getattr(self, name, None) if name else None
        result = NotImplemented if method_ is None else \
            method_(*[x for x in inputs if x is not self])
        if result is NotImplemented:
            raise self._refuse(f"numpy.{ufunc.__name__} with these operands")
        return result

    def __array_function__(self, func, types, args, kwargs):
        if func is np.dot and len(args) == 2 and not kwargs:
            a, b = args
            if np.ndim(a) == 0 or np.ndim(b) == 0:
                return operator.mul(a, b)
            if b is not self and np.ndim(b) > 2:
                # np.dot pairs the matrix with every (K, N) of b and puts the
                # matrix's rows first: (M, ..., N), where @ gives (..., M, N)
                return np.moveaxis(operator.matmul(a, b), -2, 0)
            return operator.matmul(a, b)
        if func is np.shape and args and args[0] is self:
            return self.shape
        if func is np.ndim and args and args[0] is self:
            return 2
        if func is np.transpose and args and args[0] is self and hasattr(self, "transpose"):
            return self.transpose(*args[1:], **kwargs)
        if func is np.sum and args and args[0] is self and hasattr(self, "sum") and \
                set(kwargs) <= {"axis", "dtype"} and len(args) <= 3:
            return self.sum(*args[1:], **kwargs)
        raise self._refuse(f"numpy.{func.__name__}")

    def _compare(self, other, symbol):
        if _is_operand(other):
            name = type(self).__name__
            raise TypeError(f"{name} does not support elementwise comparison ({symbol}): "
                            f"compare {self._ways_out()}")
        return NotImplemented

    def __eq__(self, other):
        return self._compare(other, "==")

    def __ne__(self, other):
        return self._compare(other, "!=")

    def __lt__(self, other):
        return self._compare(other, "<")

    def __le__(self, other):
        return self._compare(other, "<=")

    def __gt__(self, other):
        return self._compare(other, ">")

    def __ge__(self, other):
        return self._compare(other, ">=")

    __hash__ = object.__hash__
