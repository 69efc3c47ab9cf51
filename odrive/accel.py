"""A compiled copy of the simulator's hot path (mypyc), opt in, for long simulations.

The engine loop, the built-in FCFS scheduler and free-list allocator, the roofline latency model and the simulator
loop are plain, fully typed Python; mypyc compiles those modules to C extensions without changing what they do.
``build`` copies the ``odrive`` and ``sim`` packages into a build folder and compiles the modules in
``COMPILED_MODULES`` there; ``run`` starts a command with that folder first on ``PYTHONPATH``, so the same code,
policies and registries load compiled. The source tree is never touched: editing a policy never leaves a stale
binary shadowing it, and a build whose sources changed since is rebuilt before it is used (``run``;
``check`` tells). ``python -c "import odrive.accel as a, odrive.core.engine as e; print(a.is_compiled(e))"`` under
``run`` prints True. User-defined
schedulers, allocators, executors and latency models still subclass the compiled bases (they run interpreted).

    python -m odrive.accel build                  # compile (about 20 s; needs mypy and a C compiler)
    python -m odrive.accel run -- python -m sim --workload ...   # any command, compiled
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PACKAGES = ("odrive", "sim")
SHARED_DIRS = ("data",)
COMPILED_MODULES = (
    "odrive/core/request.py",
    "odrive/core/executor.py",
    "odrive/core/buckets.py",
    "odrive/core/metrics.py",
    "odrive/core/decode_runs.py",
    "odrive/core/engine.py",
    "odrive/allocators/base.py",
    "odrive/allocators/free_list.py",
    "odrive/schedulers/config.py",
    "odrive/schedulers/plan.py",
    "odrive/schedulers/base.py",
    "odrive/schedulers/fcfs.py",
    "sim/latency/batch_shape.py",
    "sim/latency/base.py",
    "sim/latency/roofline.py",
    "sim/executor.py",
    "sim/simulator.py",
)
# Third-party packages are typed as Any (``--no-site-packages``): their calls go through Python either way, and
# leaving numpy's, pandas' and jax's stubs out makes the type check four times faster.
MYPY_FLAGS = ("--no-site-packages", "--ignore-missing-imports", "--follow-imports=silent")
MANIFEST = "odrive-accel.json"
SETUP = """\
from setuptools import setup
from mypyc.build import mypycify

setup(name="odrive-accel", ext_modules=mypycify([*{flags!r}, *{modules!r}]))
"""


def source_root() -> Path:
    """The folder holding the ``odrive`` and ``sim`` packages this interpreter imports."""
    return Path(__file__).resolve().parents[1]


def default_dir() -> Path:
    """``$ODRIVE_ACCEL_DIR``; else ``build/odrive-accel`` in a checkout (next to ``pyproject.toml``); else, for
    an installed package, ``odrive/accel`` in the user's cache folder (never inside site-packages)."""
    if os.environ.get("ODRIVE_ACCEL_DIR"):
        return Path(os.environ["ODRIVE_ACCEL_DIR"])
    root = source_root()
    if (root / "pyproject.toml").is_file():
        return root / "build" / "odrive-accel"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "odrive" / "accel"


def source_digest(root: Path | None = None) -> str:
    """SHA-256 over every ``.py`` file (relative path and bytes) of the ``odrive`` and ``sim`` packages under
    ``root``; also the code version of sweep caches (``sim.sweep.cache.code_version``)."""
    root = root or source_root()
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(root: Path | None = None) -> str:
    """What a build depends on: the sources (:func:`source_digest`), the module list and the Python version."""
    return hashlib.sha256(repr((COMPILED_MODULES, sys.version, source_digest(root))).encode()).hexdigest()


def is_fresh(out: Path | None = None) -> bool:
    """Whether ``out`` holds a build of the current sources."""
    manifest = (out or default_dir()) / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("fingerprint") == fingerprint()


def build(out: Path | None = None, *, force: bool = False, log=print) -> Path:
    """Compile the hot path into ``out`` (default :func:`default_dir`), unless a fresh build is there already.
    Returns the folder to put first on ``PYTHONPATH``. Raises ``RuntimeError`` with the compiler's output when
    the build fails (mypyc rejects code it cannot compile faithfully, e.g. a type annotation that is wrong)."""
    out = (out or default_dir()).resolve()
    if not force and is_fresh(out):
        return out
    root = source_root()
    if out == root or any(out == root / p or root / p in out.parents for p in PACKAGES):
        raise ValueError(f"build folder {out} would overwrite the sources in {root}")
    try:
        import mypyc  # noqa: F401
    except ImportError as err:
        raise RuntimeError("the compiled build needs mypy (pip install 'odrive[fast]')") from err
    for stale in (*PACKAGES, *SHARED_DIRS, "build", MANIFEST):  # mypy's cache stays: rebuilds are faster
        path = out / stale
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        shutil.copytree(root / package, out / package, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    for shared in SHARED_DIRS:  # data the packages find next to themselves (shipped profiles, traces)
        if (root / shared).exists():
            (out / shared).symlink_to(root / shared, target_is_directory=True)
    (out / "setup_accel.py").write_text(SETUP.format(flags=list(MYPY_FLAGS), modules=list(COMPILED_MODULES)))
    log(f"compiling {len(COMPILED_MODULES)} modules with mypyc into {out} ...")
    proc = subprocess.run(
        [sys.executable, "setup_accel.py", "build_ext", "--inplace"], cwd=out, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        raise RuntimeError(f"mypyc build failed (exit {proc.returncode}):\n{tail}")
    (out / MANIFEST).write_text(json.dumps({"fingerprint": fingerprint(root), "modules": list(COMPILED_MODULES)}))
    return out


def environment(out: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) for a process that imports the compiled build in ``out``: ``out`` first
    on ``PYTHONPATH``, then the working directory, with ``PYTHONSAFEPATH`` set. Python otherwise puts the script's
    folder or the working directory (``-m``, ``-c``) ahead of ``PYTHONPATH``, and from a checkout that would load
    the ``.py`` sources instead."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(out), os.getcwd(), env.get("PYTHONPATH", "")) if p)
    env["PYTHONSAFEPATH"] = "1"
    return env


def is_compiled(module: object) -> bool:
    """Whether ``module`` was loaded from a compiled extension (``.so``/``.pyd``), not from its ``.py``."""
    return not str(getattr(module, "__file__", "")).endswith(".py")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m odrive.accel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--dir", type=Path, default=None,
                   help="build folder (default: $ODRIVE_ACCEL_DIR or build/odrive-accel)")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile (skipped when a fresh build exists)")
    b.add_argument("--force", action="store_true", help="rebuild even if fresh")
    sub.add_parser("check", help="exit 0 if the build is fresh, 1 if missing or stale")
    r = sub.add_parser("run", help="run a command with the compiled build (built first if needed)")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    out = args.dir or default_dir()
    if args.command == "check":
        fresh = is_fresh(out)
        print(f"{out}: {'fresh' if fresh else 'missing or stale'}")
        return 0 if fresh else 1
    try:
        out = build(out, force=getattr(args, "force", False), log=lambda m: print(m, file=sys.stderr))
    except (RuntimeError, ValueError) as err:
        print(f"odrive.accel: {err}", file=sys.stderr)
        return 2
    if args.command == "build":
        print(out)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("run needs a command, e.g. run -- python -m sim --help")
    return subprocess.call(cmd, env=environment(out))


if __name__ == "__main__":
    raise SystemExit(main())
