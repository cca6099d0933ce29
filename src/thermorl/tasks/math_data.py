"""Math problem sources: shipped benchmarks by name, local files, and `datasets` datasets.

Every source becomes a list of rows with string fields ``problem`` and ``answer`` (renamed
from ``problem_field`` / ``answer_field``) plus whatever other fields the source carries
(e.g. MATH500's ``solution``). Bad data raises :class:`DataError` with one line naming the
file and, for JSON lines, the line number.

Sources:
  ``math500``, ``aime24``, ``amc23``, ``minerva``, ``olympiadbench``, ``gsm8k_test``, ``gsm8k_train``
      shipped with the package (``thermorl/data/math``, licences in its README);
  ``path/to/file.jsonl`` / ``.json`` (a list of objects) / ``.parquet``;
  ``path/to/dir`` saved by ``datasets.Dataset.save_to_disk``;
  ``hf:ID[:CONFIG[:SPLIT]]`` a Hugging Face hub dataset (downloads: an explicit request).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thermorl.errors import DataError

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "math"
BENCHMARKS = ("math500", "aime24", "amc23", "minerva", "olympiadbench", "gsm8k_test", "gsm8k_train")


def load_math_rows(
    source: str, problem_field: str = "problem", answer_field: str = "answer", split: str = "train"
) -> list[dict[str, Any]]:
    """Rows ``{"problem": str, "answer": str, **other fields}`` of ``source`` (see the module doc)."""
    if source in BENCHMARKS:
        path = DATA_DIR / f"{source}.jsonl"
    elif source.startswith("hf:"):
        return _normalise(_load_hub(source[3:], split), source, problem_field, answer_field, "row")
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(
                f"dataset {source!r} is neither a shipped benchmark ({', '.join(BENCHMARKS)}) nor an existing path"
            )
    if path.is_dir():
        return _normalise(_load_saved(path, split), source, problem_field, answer_field, "row")
    if path.suffix == ".parquet":
        return _normalise(_load_parquet(path), source, problem_field, answer_field, "row")
    rows = _load_json(path) if path.suffix == ".json" else _load_jsonl(path)
    return _normalise(rows, source, problem_field, answer_field, "row" if path.suffix == ".json" else "line")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read dataset {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"dataset {path} line {line}: not valid UTF-8 (byte {err.start})") from None
    if not text.strip():
        raise DataError(f"dataset {path} is empty")
    return text


def _load_jsonl(path: Path) -> list[tuple[int, Any]]:
    rows = []
    # split on "\n" only: splitlines() would also cut at U+2028 inside JSON strings
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"dataset {path} line {number}: malformed JSON ({err.msg})") from None
    return rows


def _load_json(path: Path) -> list[tuple[int, Any]]:
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"dataset {path} line {err.lineno}: malformed JSON ({err.msg})") from None
    if not isinstance(value, list):
        raise DataError(f"dataset {path} must hold a JSON list of objects, got {type(value).__name__}")
    return list(enumerate(value, start=1))


def _load_parquet(path: Path) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several unrelated types for unreadable files
        raise DataError(f"cannot read parquet dataset {path}: {str(err).splitlines()[0]}") from None
    return list(enumerate(table.to_pylist(), start=1))


def _load_saved(path: Path, split: str) -> list[tuple[int, Any]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{path} is not a dataset saved by datasets.save_to_disk: {str(err).splitlines()[0]}") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"dataset {path} has no split {split!r} (have: {', '.join(dataset)})")
        dataset = dataset[split]
    return list(enumerate(dataset, start=1))


def _load_hub(spec: str, default_split: str) -> list[tuple[int, Any]]:
    import datasets

    name, _, rest = spec.partition(":")
    config, _, split = rest.partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split=split or default_split)
    except Exception as err:  # noqa: BLE001 - network, missing dataset, bad split: all user-facing
        raise DataError(f"cannot load hub dataset {spec!r}: {str(err).strip().splitlines()[0]}") from None
    return list(enumerate(dataset, start=1))


def _normalise(
    rows: list[tuple[int, Any]], source: str, problem_field: str, answer_field: str, unit: str
) -> list[dict[str, Any]]:
    if not rows:
        raise DataError(f"dataset {source} is empty")
    out = []
    for number, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"dataset {source} {unit} {number}: expected a JSON object, got {type(row).__name__}")
        for name, option in ((problem_field, "task.problem_field"), (answer_field, "task.answer_field")):
            if row.get(name) is None:
                raise DataError(
                    f"dataset {source} {unit} {number}: missing field {name!r} (fields: {', '.join(row)}; "
                    f"set {option})"
                )
        extra = {k: v for k, v in row.items() if k not in (problem_field, answer_field)}
        out.append({**extra, "problem": str(row[problem_field]), "answer": str(row[answer_field])})
    return out
