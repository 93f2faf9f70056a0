"""Read pickles of numpy arrays (Point-MAE's ModelNet ``.dat`` caches and few-shot ``.pkl`` folds) safely.

A pickle can run any code while it loads. ``load_numpy_pickle`` unpickles with a restricted ``Unpickler`` whose
``find_class`` resolves only what numpy needs to rebuild arrays and scalars (``_reconstruct``, ``ndarray``,
``dtype``, ``scalar``, ``_frombuffer`` and ``_codecs.encode`` for protocol-2 bytes); containers (lists, tuples,
dicts), numbers and strings need no lookup. Anything else ends with one ``PointCloudFormatError`` naming the file
and the refused global, and nothing of the file is run.
"""
from __future__ import annotations

import codecs
import os
import pickle

import numpy as np

from pcmae.io.errors import PointCloudFormatError

try:  # numpy >= 2 names its core ``numpy._core``; pickles written with numpy 1 name ``numpy.core``
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_ALLOWED = {("multiarray", "_reconstruct"): _multiarray._reconstruct,
            ("multiarray", "scalar"): _multiarray.scalar,
            ("numeric", "_frombuffer"): _numeric._frombuffer}
_NUMPY_MODULES = {"numpy.core.multiarray": "multiarray", "numpy._core.multiarray": "multiarray",
                  "numpy.core.numeric": "numeric", "numpy._core.numeric": "numeric"}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        key = (_NUMPY_MODULES.get(module), name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays are read)")


def load_numpy_pickle(path: str | os.PathLike):
    """The object pickled in ``path``, when it is built only of containers, numbers, strings and numpy arrays.

    Raises FileNotFoundError if the file is missing and PointCloudFormatError (one line) for anything else."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            obj = _NumpyOnlyUnpickler(f).load()
        except Exception as err:  # truncated bytes, refused globals, not a pickle: pickle raises many kinds
            raise PointCloudFormatError(f"{path}: not a pickle of numpy arrays ({type(err).__name__}: {err})") from None
    if _holds_objects(obj):
        raise PointCloudFormatError(f"{path}: holds numpy arrays of Python objects (dtype=object); "
                                    "only numeric arrays are read")
    return obj


def _holds_objects(obj) -> bool:
    if isinstance(obj, np.ndarray):
        return obj.dtype.hasobject
    if isinstance(obj, (list, tuple)):
        return any(_holds_objects(x) for x in obj)
    if isinstance(obj, dict):
        return any(_holds_objects(x) for x in obj.values())
    return False
