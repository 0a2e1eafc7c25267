"""Both notebooks, executed top to bottom in a real kernel against `dash-ray up` (tiny models)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.once]  # what a notebook or the page sees does not depend on the Redis server

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def execute(path: Path) -> Any:
    """Run a notebook in a fresh python3 kernel (it inherits this process's environment);
    returns it with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return book


def images_in(book: Any) -> list[bytes]:
    """The PNG images a notebook's outputs hold (image/png outputs and <img> in HTML)."""
    found = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                found.append(base64.b64decode(data["image/png"]))
            found += [base64.b64decode(chunk.split('"', 1)[0])
                      for chunk in str(data.get("text/html", "")).split("data:image/png;base64,")[1:]]
    return found


def errors_in(book: Any) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in book.cells for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


@pytest.mark.parametrize("name, at_least", [("quickstart", 4 + 1 + 1 + 1 + 1), ("batch", 1 + 1)])
def test_notebook_runs_top_to_bottom_and_shows_images(up: dict[str, Any], name: str, at_least: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASH_URL", up["base"])
    monkeypatch.setenv("DASH_TOKEN", up["token"])
    book = execute(NOTEBOOKS / f"{name}.ipynb")
    assert errors_in(book) == []
    images = images_in(book)
    assert len(images) >= at_least and all(i.startswith(b"\x89PNG") for i in images)
