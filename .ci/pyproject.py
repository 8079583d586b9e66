"""What .ci/run reads from pyproject.toml, so its matrix cannot drift from it.

python .ci/pyproject.py versions             the claimed CPythons, one per line
python .ci/pyproject.py lowest               pip constraints: each runtime
                                             dependency pinned to its declared floor
python .ci/pyproject.py check-lowest FILE    fail unless the installed versions are
                                             those pins (run inside the venv)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([^,;\s]+)\s*(?:;(.*))?$")


def project() -> dict:  # type: ignore[type-arg]
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]


def versions() -> list[str]:
    prefix = "Programming Language :: Python :: "
    found = [c.removeprefix(prefix) for c in project().get("classifiers", [])]
    return sorted((v for v in found if re.fullmatch(r"3\.\d+", v)), key=lambda v: int(v[2:]))


def lowest() -> list[str]:
    pins = []
    for requirement in project()["dependencies"]:
        match = _FLOOR.match(requirement)
        if match is None:
            sys.exit(f"runtime dependency {requirement!r} declares no '>=' floor to test")
        name, floor, marker = match.groups()
        pins.append(f"{name}=={floor}" + (f"; {marker.strip()}" if marker else ""))
    return pins


def check_lowest(path: str) -> None:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement  # pytest's own dependency

    wrong = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            installed = "none"
        if installed not in requirement.specifier:
            wrong.append(f"{requirement.name} {installed} (pinned {requirement.specifier})")
    if wrong:
        sys.exit("the lowest-versions run did not get its pins: " + ", ".join(wrong))


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "versions":
        print("\n".join(versions()))
    elif command == "lowest":
        print("\n".join(lowest()))
    elif command == "check-lowest" and len(sys.argv) == 3:
        check_lowest(sys.argv[2])
    else:
        sys.exit(__doc__)
