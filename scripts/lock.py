"""Refresh the lock files: exact versions and hashes of every dependency, direct and transitive.

    python scripts/lock.py            # rewrite every lock from setup.py (needs uv: in the dev extra),
                                      # keeping locked versions where the requirements still allow
    python scripts/lock.py --upgrade  # the same, taking the newest releases (the scheduled refresh)
    python scripts/lock.py --check    # exit 1 when setup.py and a lock disagree (what the test checks)

The inputs are setup.py's ``install_requires`` and all its extras, plus the build backend (the
project is installed with ``--no-build-isolation``, so setuptools comes from the lock too). uv
resolves them for each Python that README names, on Linux x86_64:

- ``requirements/lock-py311.txt``: this machine and CI. torch is the CPU build
  (``torch==2.13.0+cpu``), found in ``/opt/wheels`` here and on download.pytorch.org/whl/cpu in an
  image; with a plain PyPI torch pip would fetch a multi-GB CUDA build.
- ``requirements/lock-py312.txt``: the GPU machines, which bring their own CUDA torch; torch and the
  ``models`` extra are left out (and with them the nvidia-* wheels that PyPI's torch pulls in).
- ``requirements/orcbench.txt``: orcbench, installed ``--no-deps`` (it pins numpy<2, which would
  break torch and matplotlib; only its shipped model data is used).
- ``function_templates/python3-torch/requirements.lock``: what the sidecar needs inside a function
  image (the template's requirements.txt; torch comes with the base image).

Each lock starts with ``# input-sha256: ...``, a digest of the requirements it was resolved from;
``--check`` (and tests/unit/test_lock.py) recompute it, so editing setup.py without refreshing fails.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = ROOT / "function_templates" / "python3-torch"
BUILD_REQUIRES = ("setuptools>=68", "wheel")
"""The build backend (pyproject.toml's build-system), locked because installs skip build isolation."""
NO_DEPS = ("orcbench==0.1.4",)
"""Installed without their dependencies (see the module docstring)."""
TORCH_WHEELS = Path("/opt/wheels")
"""Where this kind of machine keeps torch's CPU build; on other machines, the PyTorch CPU index."""
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PLATFORM = "x86_64-manylinux_2_28"
DIGEST_PREFIX = "# input-sha256: "


@dataclass(frozen=True)
class Lock:
    """One lock file and what it is resolved from."""

    path: Path
    requirements: tuple[str, ...]
    python: str
    universal: bool = False
    no_deps: bool = False
    torch_cpu: bool = False


def setup_requirements(setup_py: Path = ROOT / "setup.py",
                       skip_extras: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``install_requires`` plus every extra of setup.py but ``skip_extras``, read without running it."""
    call = next(node for node in ast.walk(ast.parse(setup_py.read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
              if kw.arg in ("install_requires", "extras_require")}
    reqs = list(kwargs.get("install_requires", []))
    for extra in sorted(set(kwargs.get("extras_require", {})) - set(skip_extras)):
        reqs.extend(kwargs["extras_require"][extra])
    return tuple(reqs)


def template_requirements(path: Path = TEMPLATE_DIR / "requirements.txt") -> tuple[str, ...]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line)


def _name(req: str) -> str:
    for i, ch in enumerate(req):
        if not (ch.isalnum() or ch in "-_."):
            return req[:i].lower().replace("_", "-")
    return req.lower().replace("_", "-")


def locks() -> tuple[Lock, ...]:
    project = setup_requirements() + BUILD_REQUIRES
    # The GPU machines keep their own torch: no torch, and no "models" extra (the packaged MiniLM
    # pulls torch in through sentence-transformers).
    gpu_host = setup_requirements(skip_extras=("models",)) + BUILD_REQUIRES
    return (
        Lock(ROOT / "requirements" / "lock-py311.txt", project, "3.11", torch_cpu=True),
        Lock(ROOT / "requirements" / "lock-py312.txt",
             tuple(r for r in gpu_host if _name(r) != "torch"), "3.12"),
        Lock(ROOT / "requirements" / "orcbench.txt", NO_DEPS, "3.11", universal=True, no_deps=True),
        Lock(TEMPLATE_DIR / "requirements.lock", template_requirements(), "3.11", universal=True),
    )


def input_digest(requirements: tuple[str, ...]) -> str:
    """Order-free digest of the requirement strings a lock is resolved from."""
    return hashlib.sha256("\n".join(sorted(r.strip() for r in requirements)).encode()).hexdigest()


def recorded_digest(path: Path) -> str | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line[len(DIGEST_PREFIX):].strip()
    return None


def stale(lock: Lock) -> str | None:
    """Why ``lock`` disagrees with its inputs, or None when it is current."""
    got = recorded_digest(lock.path)
    if got is None:
        return f"{lock.path.relative_to(ROOT)}: missing, or without a '{DIGEST_PREFIX.strip()}' line"
    if got != input_digest(lock.requirements):
        return (f"{lock.path.relative_to(ROOT)}: resolved from other requirements than setup.py's now; "
                "refresh with: python scripts/lock.py")
    return None


def compile_lock(lock: Lock, uv: str, upgrade: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text("\n".join(lock.requirements) + "\n")
        out = Path(tmp) / "lock.txt"
        if lock.path.exists() and not upgrade:  # uv keeps an output file's pins where they still fit
            out.write_text(lock.path.read_text())
        cmd = [uv, "pip", "compile", str(src), "--quiet", "--generate-hashes", "--no-header",
               "--python-version", lock.python, "--output-file", str(out)]
        if upgrade:
            cmd.append("--upgrade")
        cmd += ["--universal"] if lock.universal else ["--python-platform", PLATFORM]
        if lock.no_deps:
            cmd.append("--no-deps")
        if lock.torch_cpu:
            cmd += ["--find-links", str(TORCH_WHEELS)] if TORCH_WHEELS.is_dir() else \
                ["--extra-index-url", TORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match"]
        subprocess.run(cmd, check=True)
        body = out.read_text().replace(str(src), "requirements.in")
    header = (f"# Generated by `python scripts/lock.py` for Python {lock.python}"
              f"{'' if lock.universal else ' on ' + PLATFORM}; do not edit by hand.\n"
              f"{DIGEST_PREFIX}{input_digest(lock.requirements)}\n")
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    lock.path.write_text(header + body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="only check that every lock matches setup.py; exit 1 if not")
    parser.add_argument("--upgrade", action="store_true",
                        help="take the newest releases (the scheduled refresh); without it, packages "
                             "keep their locked versions where the requirements still allow them")
    args = parser.parse_args(argv)
    if args.check:
        problems = [p for p in map(stale, locks()) if p]
        print("\n".join(problems) or "every lock matches its inputs")
        return 1 if problems else 0
    uv = shutil.which("uv")
    if uv is None:
        print("uv not found: `bash scripts/setup.sh` installs it (dev extra)", file=sys.stderr)
        return 2
    for lock in locks():
        print(f"[lock] {lock.path.relative_to(ROOT)} (Python {lock.python})", flush=True)
        compile_lock(lock, uv, args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
