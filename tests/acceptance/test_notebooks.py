"""The notebooks in ``notebooks/``, executed end to end by a real kernel against the API on
Serve over HTTP; and committed without outputs."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from PIL import Image

from tests.conftest import ROOT
from tests.helpers.serving import Api, module_api

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT_S = 240
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


#: One deployment for all notebooks (they only talk HTTP, so one database kind is enough).
api = module_api("notebooks", "sqlite")


# -- what the executed notebooks must show ----------------------------------------------------


def _outputs(nb: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    """The outputs of the one code cell tagged ``tag``."""
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0].outputs


def _text(outputs: list[nbformat.NotebookNode]) -> str:
    """Printed text and plain-text results, joined."""
    return "\n".join(
        o.text if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
        for o in outputs
    )


def _html(outputs: list[nbformat.NotebookNode]) -> str:
    (html,) = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    return html


def _table(outputs: list[nbformat.NotebookNode]) -> dict[str, dict[str, str]]:
    """The rows of the pandas table among ``outputs`` (a plain index), by index value."""
    soup = BeautifulSoup(_html(outputs), "html.parser")
    columns = [th.get_text() for th in soup.thead.find("tr").find_all("th")][1:]
    return {
        tr.th.get_text(): dict(zip(columns, [td.get_text() for td in tr("td")], strict=True))
        for tr in soup.tbody("tr")
    }


def _bars(
    nb: nbformat.NotebookNode, outputs: list[nbformat.NotebookNode]
) -> list[tuple[float, float]]:
    """(value, max) of each tqdm widget bar among ``outputs``, from the widget state the
    kernel reported last: a bar that ran to the end has value == max."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    bars = []
    for output in outputs:
        view = output.get("data", {}).get(WIDGET_VIEW)
        if view is None:
            continue
        children = state[view["model_id"]]["state"]["children"]
        for child in children:
            model = state[child.removeprefix("IPY_MODEL_")]
            if model["model_name"] == "FloatProgressModel":
                bars.append((model["state"]["value"], model["state"]["max"]))
    return bars


def _check_quickstart(nb: nbformat.NotebookNode) -> None:
    assert "{'slept': 2.0}" in _text(_outputs(nb, "job"))
    assert "'completed': 100" in _text(_outputs(nb, "batch"))


def _check_embeddings(nb: nbformat.NotebookNode) -> None:
    assert "(2000, 384) float32" in _text(_outputs(nb, "vectors"))
    sanity = re.search(r"on the query's topic: (\d+)/(\d+)", _text(_outputs(nb, "sanity")))
    assert sanity is not None
    hits, queries = map(int, sanity.groups())
    assert hits == queries >= 3
    neighbours = BeautifulSoup(_html(_outputs(nb, "neighbours")), "html.parser")
    assert len(neighbours.tbody.find_all("tr")) == 3 * queries


def _check_meshes(nb: nbformat.NotebookNode) -> None:
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb, "inputs"))
    grid = BeautifulSoup(_html(_outputs(nb, "thumbnails")), "html.parser")
    sources = [img["src"] for img in grid.find_all("img")]
    assert len(sources) == 8
    for source in sources:
        header, _, data = source.partition(",")
        assert header == "data:image/png;base64"
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        assert picture.format == "PNG" and picture.size == (256, 256)
    table = _table(_outputs(nb, "table"))
    assert len(table) == 8
    assert {(row["vertices"], row["triangles"]) for row in table.values()} == {
        (str(128 * 128), str(2 * 127 * 127))
    }


def _check_documents(nb: nbformat.NotebookNode) -> None:
    table = _table(_outputs(nb, "table"))
    expected = {
        "beekeeping.txt": ("txt", "honey"),
        "volcanoes.md": ("md", "magma"),
        "sourdough.html": ("html", "dough"),
        "lighthouses.txt": ("txt", "lighthouse"),
        "chess.md": ("md", "chess"),
        "coral-reefs.html": ("html", "coral"),
    }
    assert list(table) == list(expected)
    for name, (fmt, keyword) in expected.items():
        row = table[name]
        assert row["format"] == fmt and int(row["chunks"]) >= 1, row
        assert keyword in row["keywords"].split(", "), row
        assert row["summary"].strip(), row


CHECKS: dict[str, Callable[[nbformat.NotebookNode], None]] = {
    "quickstart": _check_quickstart,
    "embeddings": _check_embeddings,
    "meshes": _check_meshes,
    "documents": _check_documents,
}


# -- the tests ---------------------------------------------------------------------------------


def test_every_notebook_is_committed_without_outputs() -> None:
    assert NOTEBOOKS, "no notebooks in notebooks/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} cell {index} has outputs"
                assert cell.execution_count is None, f"{path.name} cell {index} was run"
        assert "widgets" not in nb.metadata, f"{path.name} keeps widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_end_to_end(
    path: Path, api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = CHECKS.get(path.stem)
    if check is None:
        pytest.fail(f"{path.name} has no checks: add what it must show to CHECKS")
    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.fail(f"no Jupyter kernel {KERNEL!r}: install ipykernel (pip install -e '.[test]')")
    # The kernel inherits this environment (PYTHONPATH with the repository: tests/conftest.py).
    monkeypatch.setenv("RAYPIPE_URL", api.url)
    monkeypatch.setenv("RAYPIPE_API_KEY", api.key("default"))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{exc}")
    batches = [c for c in nb.cells if "batch" in c.get("metadata", {}).get("tags", [])]
    for cell in batches:
        bars = _bars(nb, cell.outputs)
        assert bars, f"{path.name}: no progress bar in the batch cell"
        assert all(value == total for value, total in bars), bars
    check(nb)
