"""The persistent XLA compilation cache (config.compile_cache): a resumed run, after a
preemption or a crash, loads its compiled programs from disk instead of compiling again.

'auto' keeps a cache jax already has (JAX_COMPILATION_CACHE_DIR, or jax.config set by the
caller), else puts it in $MMJAX_CACHE/compile when MMJAX_CACHE is set (each host's local
disk), else in WORKDIR/compile_cache; 'off' disables it; anything else is a directory.
jax keys each entry by the program, the devices, the flags and the jax version, so a
changed config or topology simply misses. Every program is cached (the minimum compile
time and entry size are set to 0), small CPU programs too.
"""

from __future__ import annotations

import contextlib
import os

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")


def directory(setting: str, workdir: str) -> str | None:
    """The cache directory a config.compile_cache value means (None: off)."""
    if setting in ("off", ""):
        return None
    if setting != "auto":
        return setting
    if jax.config.jax_compilation_cache_dir:  # the user's (or a test session's) own choice wins
        return jax.config.jax_compilation_cache_dir
    root = os.environ.get("MMJAX_CACHE")
    return os.path.join(root, "compile") if root else os.path.join(workdir, "compile_cache")


@contextlib.contextmanager
def persistent(setting: str, workdir: str):
    """Uses the cache for the block; jax's settings are as before afterwards (a process
    that trains twice, like the tests, uses each run's own directory)."""
    path = directory(setting, workdir)
    if path is None:
        yield None
        return
    previous = {name: getattr(jax.config, name) for name in _SETTINGS}
    if previous["jax_compilation_cache_dir"] != path:
        jax_cache.reset_cache()  # jax opens its cache once, at the first compile that uses it
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    try:
        yield path
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        if previous["jax_compilation_cache_dir"] != path:
            jax_cache.reset_cache()
