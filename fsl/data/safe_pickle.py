"""Reading data-set pickles without running code from them.

`pickle.load` calls whatever callable a file names (`__reduce__` -> `os.system`, ...), and the
Mini-ImageNet pickles (learn2learn's, MetaOptNet's) usually come from file-sharing links. These
files hold only dicts, lists, tuples, strings, numbers and NumPy arrays, so the unpickler here
resolves nothing but what NumPy's array reconstruction needs; any other global is refused before
it is called, with the file and the global named.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

from fsl.errors import DataError

# (module, name) pairs a Mini-ImageNet pickle may reference: NumPy's array and scalar
# reconstruction (protocol 2: `_reconstruct` + `_codecs.encode` for the raw bytes; protocol 5:
# `_frombuffer`), and the dtype and ndarray classes they rebuild.
ALLOWED_GLOBALS = frozenset({
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})
# Pickles written by NumPy 1.x name the same functions under numpy.core: both spellings are
# checked as numpy._core, then loaded from whichever of the two this NumPy has.
_RENAMED_MODULES = {"numpy.core.multiarray": "numpy._core.multiarray", "numpy.core.numeric": "numpy._core.numeric"}


def _installed(module: str) -> str:
    import importlib.util

    if not module.startswith("numpy._core."):
        return module
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return module if found else module.replace("numpy._core.", "numpy.core.", 1)


class UnsafePickleError(DataError):
    """The pickle names a global outside `ALLOWED_GLOBALS`; nothing from it was called."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: Path, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        module = _RENAMED_MODULES.get(module, module)
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"{self.source}: refused to load: the pickle references {module}.{name}, "
                                    f"which a data set never needs (it could run code)")
        return super().find_class(_installed(module), name)


def load_data_pickle(path: Path) -> Any:
    """The object in a data-set pickle, refusing any global a data file has no need for.

    `encoding="latin1"` reads MetaOptNet's Python 2 pickles (NumPy arrays pickled by Python 2
    hold their bytes as latin-1 strings).
    """
    with path.open("rb") as f:
        return _RestrictedUnpickler(f, path, encoding="latin1").load()
