"""The docs are checked like code: every ```python block of README.md and
docs/*.md runs (a page's blocks in order, in one namespace, as a reader would
type them), and docs/api.md is what docs/gen_api.py writes from the current
docstrings and signatures. A failure means a page shows code that no longer
works, or a reference that no longer matches the API."""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

if not (ROOT / "docs" / "gen_api.py").exists():      # tests run from an installed wheel elsewhere
    pytest.skip("docs/ is not next to these tests", allow_module_level=True)


def blocks(page):
    return BLOCK.findall(page.read_text())


def test_readme_has_an_example():
    assert blocks(ROOT / "README.md")


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_examples_run(page, capsys):
    ns = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(blocks(page)):
        start = page.read_text().count("\n", 0, page.read_text().index(code)) + 1
        # Line numbers in a traceback are the page's own.
        exec(compile("\n" * (start - 1) + code, str(page), "exec"), ns)


def test_api_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    current = (ROOT / "docs" / "api.md").read_text()
    assert gen.generate() == current, "docs/api.md is stale: run `python docs/gen_api.py`"
