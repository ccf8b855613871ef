"""The MWAA recipe (docs/mwaa/requirements-<airflow>.txt) is what README shows and what the
matrix installs; its constraint URL names the published file whose pins the matrix stores."""

from __future__ import annotations

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "docs", "mwaa", "requirements-*.txt")))
URL = re.compile(
    r'^--constraint "https://raw\.githubusercontent\.com/apache/airflow/constraints-(?P<tag>[\d.]+)/'
    r'(?P<file>constraints-3\.\d+\.txt)"$'
)


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]


def test_there_is_a_recipe_per_constrained_matrix_version():
    assert [os.path.basename(p) for p in RECIPES] == ["requirements-2.11.0.txt", "requirements-3.0.6.txt"]


def test_each_recipe_pins_this_version_under_its_airflows_constraints():
    version = re.search(r'^version = "([^"]+)"', _read("pyproject.toml"), re.M).group(1)
    matrix = _read("scripts", "test_matrix.sh")
    for path in RECIPES:
        airflow = os.path.basename(path)[len("requirements-") : -len(".txt")]
        constraint, provider = _lines(path)
        m = URL.match(constraint)
        assert m, constraint
        assert m["tag"] == airflow
        assert provider == f"airflow-provider-orchesjob[airflow]=={version}"
        # The stored pins stand in for that URL (unreachable from CI): they must come from the same file.
        stored = os.path.join("tests", "matrix", "constraints", f"airflow-{airflow}.txt")
        header = " ".join(line.lstrip("# ") for line in _read(stored).splitlines() if line.startswith("#"))
        assert f"constraints-{airflow}, {m['file']}" in header, stored
        assert f"|{stored}|docs/mwaa/{os.path.basename(path)}|" in matrix, "the matrix must install the recipe"


def test_readme_shows_the_recipes_as_they_are():
    readme = _read("README.md")
    for path in RECIPES:
        assert "\n".join(_lines(path)) in readme, os.path.basename(path)
