"""The lock files agree with setup.py, and the environment the tests run in is the lock's.

A fresh machine installs exactly the lock (scripts/setup.sh); editing setup.py's requirements
without `python scripts/lock.py` must fail here, not on the next fresh machine.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("fastgshare_lock_script", ROOT / "scripts" / "lock.py")
assert _spec is not None and _spec.loader is not None
lock_script = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = lock_script  # dataclasses look their module up there
_spec.loader.exec_module(lock_script)

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def pins(path: Path) -> dict[str, Version]:
    found = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            found[canonicalize_name(m.group(1))] = Version(m.group(2))
    return found


def hashed_entries(path: Path) -> tuple[int, int]:
    """(pinned packages, pinned packages followed by at least one --hash)."""
    lines = path.read_text().splitlines()
    pinned = hashed = 0
    for i, line in enumerate(lines):
        if PIN.match(line):
            pinned += 1
            hashed += i + 1 < len(lines) and "--hash=sha256:" in lines[i + 1]
    return pinned, hashed


@pytest.mark.parametrize("lock", lock_script.locks(), ids=lambda lk: lk.path.name)
def test_every_lock_was_resolved_from_the_current_requirements(lock):
    assert lock_script.stale(lock) is None


@pytest.mark.parametrize("lock", lock_script.locks(), ids=lambda lk: lk.path.name)
def test_every_requirement_is_pinned_by_its_lock_with_hashes(lock):
    pinned = pins(lock.path)
    for raw in lock.requirements:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock.path.name} does not pin {req.name} (setup.py asks for {raw})"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"{lock.path.name} pins {req.name}=={pinned[name]}, outside setup.py's {raw}"
    count, with_hashes = hashed_entries(lock.path)
    assert count > 0 and with_hashes == count


def test_a_changed_requirement_makes_the_lock_stale():
    lock = next(lk for lk in lock_script.locks() if lk.path.name == "lock-py311.txt")
    changed = dataclasses.replace(lock, requirements=lock.requirements + ("left-pad>=1",))
    reason = lock_script.stale(changed)
    assert reason is not None and "python scripts/lock.py" in reason


def test_the_python_3_11_lock_takes_torch_cpu_and_the_gpu_lock_no_torch():
    assert str(pins(ROOT / "requirements" / "lock-py311.txt")["torch"]).endswith("+cpu")
    gpu = pins(ROOT / "requirements" / "lock-py312.txt")
    assert "torch" not in gpu and not any(name.startswith("nvidia-cu") for name in gpu)


def test_the_running_environment_is_the_lock():
    path = ROOT / "requirements" / f"lock-py{sys.version_info[0]}{sys.version_info[1]}.txt"
    if not path.exists():
        pytest.skip(f"no lock for Python {sys.version_info[0]}.{sys.version_info[1]}")
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not running in the project's .venv (scripts/setup.sh installs it from the lock)")
    differ = []
    for name, version in pins(path).items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            differ.append(f"{name}: locked {version}, not installed")
            continue
        if installed != version:
            differ.append(f"{name}: locked {version}, installed {installed}")
    assert not differ, "the environment is not the lock (run bash scripts/setup.sh):\n" + "\n".join(differ)


@pytest.mark.parametrize("dockerfile,lock", [
    ("Dockerfile", "requirements/lock-py311.txt"),
    ("function_templates/python3-torch/Dockerfile", "requirements.lock"),
])
def test_the_images_install_the_lock_with_hashes(dockerfile, lock):
    text = (ROOT / dockerfile).read_text()
    runs = " ".join(text.replace("\\\n", " ").splitlines())
    assert re.search(rf"COPY [^ ]*{re.escape(lock)}", runs), f"{dockerfile} does not copy {lock} in"
    assert re.search(rf"pip install [^&]*--require-hashes[^&]*-r {re.escape(lock)}", runs), \
        f"{dockerfile} does not install {lock} with --require-hashes"


def test_the_function_image_has_every_package_the_sidecar_imports():
    """The template's requirements.txt (what its image installs beside torch) names every
    distribution that ``python -m fast_manager.sidecar`` imports: a fresh process imports the
    sidecar and lists the third-party modules it loaded."""
    import subprocess

    code = ("import sys, fast_manager.sidecar\n"
            "own = {'fast_manager', 'fastgshare'}\n"
            "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)"
            " - own)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    dists = importlib.metadata.packages_distributions()
    imported = {canonicalize_name(d) for m in out if not m.startswith("_")  # .pth hooks, finders
                for d in dists.get(m, ())}
    text = (ROOT / "function_templates" / "python3-torch" / "requirements.txt").read_text()
    listed = {canonicalize_name(Requirement(line).name) for line in text.splitlines()
              if line.strip() and not line.startswith("#")}
    assert imported, out
    missing = imported - listed - {"fastgshare"}
    assert not missing, f"the sidecar imports {sorted(missing)}, which the function image lacks"
    assert "torch" not in imported and "numpy" not in imported
