"""The notebooks in ``notebooks/``: keep them clean, and run them with parameters.

``python -m tests.notebook_support`` strips outputs, execution counts and editor
metadata from every notebook (run it before committing one);
``python -m tests.notebook_support --check`` only reports, and fails if one is dirty.

``execute(...)`` runs a notebook top to bottom with nbclient, papermill-style:
the values given are injected in a cell right after the one tagged
``parameters``, and a last cell prints the values of chosen expressions as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
CLEAN_METADATA = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
#: The only cell metadata a committed notebook keeps.
CELL_METADATA_KEYS = {"tags"}
RESULT_MARKER = "NOTEBOOK-RESULT:"


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def clean(nb: Any) -> Any:
    """The notebook without outputs, execution counts, editor metadata or empty tags."""
    nb.metadata = json.loads(json.dumps(CLEAN_METADATA))
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in CELL_METADATA_KEYS and v}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def problems(nb: Any) -> list[str]:
    """Why a committed notebook is not clean (empty when it is)."""
    found = []
    if nb.metadata != CLEAN_METADATA:
        found.append(f"notebook metadata should be exactly {CLEAN_METADATA}, not {dict(nb.metadata)}")
    for index, cell in enumerate(nb.cells):
        where = f"cell {index} ({cell.get('id', '?')})"
        if set(cell.metadata) - CELL_METADATA_KEYS:
            found.append(f"{where}: metadata {sorted(set(cell.metadata) - CELL_METADATA_KEYS)}")
        if cell.cell_type == "code":
            if cell.outputs:
                found.append(f"{where}: has {len(cell.outputs)} outputs")
            if cell.execution_count is not None:
                found.append(f"{where}: execution count {cell.execution_count}")
    return found


def parameters_index(nb: Any) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"expected one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def write(nb: Any, path: Path) -> None:
    import nbformat

    nbformat.validate(nb)
    text = nbformat.writes(nb)
    text = text if text.endswith("\n") else text + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def execute(
    path: Path,
    parameters: Mapping[str, Any],
    collect: Mapping[str, str],
    *,
    cwd: Path,
    timeout: int = 120,
) -> tuple[Any, dict[str, Any]]:
    """Run ``path`` with ``parameters`` injected; return the executed notebook and the JSON
    values of the ``collect`` expressions (``{"name": "python expression"}``), evaluated at the end."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    where = parameters_index(nb)
    injected = "# Parameters injected by the test\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    nb.cells.insert(where + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    pairs = ", ".join(f"{json.dumps(name)}: ({expression})" for name, expression in collect.items())
    nb.cells.append(
        nbformat.v4.new_code_cell(
            f"import json as _json\nprint({RESULT_MARKER!r} + _json.dumps({{{pairs}}}, default=str))"
        )
    )
    client = NotebookClient(
        nb, timeout=timeout, startup_timeout=60, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(line for line in printed.splitlines() if line.startswith(RESULT_MARKER))
    return nb, json.loads(line[len(RESULT_MARKER) :])


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="report dirty notebooks, change nothing")
    args = parser.parse_args(argv)
    dirty = 0
    for path in notebook_paths():
        nb = nbformat.read(path, as_version=4)
        found = problems(nb)
        if args.check:
            for problem in found:
                print(f"{path.name}: {problem}")
            dirty += bool(found)
        else:
            write(clean(nb), path)
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())
