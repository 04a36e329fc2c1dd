"""moeplace: decide which GPU holds which expert of a Mixture-of-Experts model.

The package ``placer`` holds everything but the optimisation formulations (those live in ``solvers``).
"""

import os as _os
import sys as _sys
import tempfile as _tempfile

__version__ = "0.1.0"


def _can_cache_in(folder: str) -> bool:
    """Whether numba could keep its cache in ``folder``: what its locators try (create it, write a file)."""
    try:
        _os.makedirs(folder, exist_ok=True)
        _tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def _numba_cache_fallback() -> None:
    """numba caches the compiled kernels (``@njit(cache=True)``) beside the sources or in the user's cache
    folder; where neither is writable (a read-only install and a read-only or missing HOME) it fails at import
    with "no locator available". Then the cache goes to a folder of this user under the temporary directory,
    silently. An explicit ``NUMBA_CACHE_DIR`` is left alone."""
    if _os.environ.get("NUMBA_CACHE_DIR"):
        return
    user_cache = _os.path.join(_os.environ.get("XDG_CACHE_HOME") or _os.path.expanduser("~/.cache"), "numba")
    # Cheap test first (every command imports this): the package folder, where __pycache__ lives.
    if _os.access(_os.path.dirname(_os.path.abspath(__file__)), _os.W_OK) or _can_cache_in(user_cache):
        return
    uid = _os.getuid() if hasattr(_os, "getuid") else "user"
    folder = _os.path.join(_tempfile.gettempdir(), f"moeplace-numba-cache-{uid}")
    _os.environ["NUMBA_CACHE_DIR"] = folder
    config = _sys.modules.get("numba.core.config")
    if config is not None:  # numba already imported: it read its settings then
        config.CACHE_DIR = folder


_numba_cache_fallback()
