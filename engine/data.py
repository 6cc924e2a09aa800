"""The data layer: read a table, map its columns to roles, validate it with clear errors, split it.

    df = read_table("data.csv")                  # or .tsv .json .jsonl .parquet, a DataFrame, a Hub id
    mapping = guess_columns(df)                   # {"anchor": "question", "positive": "answer"}
    summary = validate(df, mapping, "data.csv")   # raises DataError, or returns counts and warnings
    train_df, eval_df = split(prepare(df, mapping))
    train_dataset = to_dataset(train_df)

A role is what a column means to a sentence-transformers loss: anchor, positive and negative are
texts, score is a float similarity, label an integer class. `prepare` names the columns the way
sentence-transformers reads them: the text columns in order, then "score" or "label".

This module imports neither torch nor `datasets` at import time, so the studio can use it cheaply.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from engine.bundled import ASSETS_DIR
from engine.tasks.embedding import LOSSES  # the embedding task's losses per data shape (pairs, triplets, ...)

ROLES = ("anchor", "positive", "negative", "score", "label")
TEXT_ROLES = ("anchor", "positive", "negative")
MIN_ROWS = 8  # fewer rows than this cannot fill one batch and an eval split
READERS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
SAMPLE_DIR = ASSETS_DIR / "debian-pairs"

# Common column names per role, most telling first; compared after lower-casing and turning
# spaces and hyphens into underscores.
ROLE_NAMES = {
    "anchor": ("anchor", "query", "question", "sentence1", "sentence_1", "sentence_a", "text1", "text_1",
               "text_a", "premise", "title", "prompt", "input"),
    "positive": ("positive", "pos", "document", "doc", "passage", "answer", "sentence2", "sentence_2",
                 "sentence_b", "text2", "text_2", "text_b", "hypothesis", "context", "response", "body",
                 "content", "text", "output"),
    "score": ("score", "similarity", "similarity_score", "relevance", "relevance_score", "sim"),
    "label": ("label", "labels"),
}
NEGATIVE_PREFIXES = ("neg", "hard_neg")


class DataError(ValueError):
    """Bad input data. The message names the source, the row (1-based, counting data rows, not the
    header) and the column where it applies, and says what to do about it."""


@dataclass
class DataSummary:
    rows: int  # usable rows: after exact duplicates are dropped
    task: str  # a key of LOSSES
    loss: str  # the default loss for the task
    duplicates: int  # rows repeating an earlier (anchor, positive) pair
    empty_values: dict[str, int]  # column -> empty or missing values
    text_lengths: dict[str, list[int]]  # role -> characters per row (all negatives under "negative")
    warnings: list[str]
    columns: dict  # the mapping: role -> column (a list of columns for "negative")

    def to_dict(self) -> dict:
        return asdict(self)


def read_table(source, *, config: str | None = None, split: str | None = None,
               max_bytes: int | None = None) -> pd.DataFrame:
    """Read a local file, copy a DataFrame, or load a Hugging Face dataset (`config`, `split`)."""
    if isinstance(source, pd.DataFrame):
        return _nonempty(source.copy(), "the DataFrame")
    path = Path(source).expanduser()
    if not path.exists():
        if isinstance(source, Path) or path.suffix.lower() in READERS or str(source).startswith((".", "/", "~")):
            raise DataError(f"file not found: {source}. Check the path.")
        return _read_hub(str(source), config, split)
    name = path.name
    if path.is_dir():
        raise DataError(f"{source} is a folder; pass one {', '.join(READERS)} file in it.")
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{name}: unknown file type '{suffix}'. Save it as {', '.join(READERS)}.")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise DataError(f"{name} is {_size(size)}, over the {_size(max_bytes)} limit. "
                        "Pass a smaller file, for example a sample of its rows.")
    try:
        if suffix in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.DataFrame.from_records(_read_json_records(path, name))
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError(f"{name} is not UTF-8 text. Save it with UTF-8 encoding.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{name} is empty. Add a header line and rows.") from None
    except (pd.errors.ParserError, OSError, ValueError) as e:
        kind = suffix.lstrip(".").upper()
        raise DataError(f"{name} could not be read as {kind} ({e}). Check that it is a valid {kind} file.") from None
    return _nonempty(df, name)


def _read_json_records(path: Path, name: str) -> list[dict]:
    """A JSON array of objects, or one object per line (JSON lines)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            numbered = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as e:
            raise DataError(f"{name}, line {e.lineno}: not valid JSON ({e.msg}). Fix the file.") from None
        unit = "item"
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{name}, line {lineno}: not valid JSON ({e.msg}). A {path.suffix} file holds "
                                "one JSON object per line (or, as .json, an array of objects).") from None
        unit = "line"
    for number, record in numbered:
        if not isinstance(record, dict):
            raise DataError(f"{name}, {unit} {number}: expected an object like "
                            f'{{"anchor": "...", "positive": "..."}}, got {type(record).__name__}.')
    return [record for _, record in numbered]


def _read_hub(dataset_id: str, config: str | None, split: str | None) -> pd.DataFrame:
    import datasets

    split = split or "train"
    try:
        dataset = datasets.load_dataset(dataset_id, config, split=split)
    except ConnectionError:
        raise DataError(f"Hugging Face dataset '{dataset_id}' is not available offline: the Hub cannot be "
                        "reached and it is not in the local cache. Pass a local .csv, .tsv, .json, .jsonl "
                        "or .parquet file instead.") from None
    except FileNotFoundError:
        raise DataError(f"Hugging Face dataset '{dataset_id}' not found, and it is not a local file either. "
                        "Check the id (owner/name) or the path.") from None
    except ValueError as e:
        raise DataError(f"Hugging Face dataset '{dataset_id}': {e}. Pass the config and split it names.") from None
    return _nonempty(dataset.to_pandas(), f"{dataset_id} ({split})")


def _nonempty(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if df.empty:
        raise DataError(f"{name} has no rows. Pass a table with a header and at least {MIN_ROWS} rows.")
    return df


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def guess_columns(columns) -> dict:
    """Guess role -> column from common names (`columns`: names, or a DataFrame to look at dtypes too).

    Negatives are every column named negative*, neg*, hard_negative*, in table order. If no anchor or
    positive name is found and exactly the right number of text columns is left, they are taken in order.
    """
    names = list(columns.columns if isinstance(columns, pd.DataFrame) else columns)
    normal = {name: re.sub(r"[\s\-]+", "_", str(name).strip().lower()) for name in names}
    mapping: dict = {}
    taken: set = set()
    for role in ("anchor", "positive", "score", "label"):
        found = next((name for candidate in ROLE_NAMES[role] for name in names
                      if normal[name] == candidate and name not in taken), None)
        if found is not None:
            mapping[role] = found
            taken.add(found)
    negatives = [name for name in names if name not in taken and normal[name].startswith(NEGATIVE_PREFIXES)]
    if negatives:
        mapping["negative"] = negatives
        taken.update(negatives)

    missing = [role for role in ("anchor", "positive") if role not in mapping]
    # Names alone say nothing about contents; with a DataFrame only text columns count.
    left = [name for name in names if name not in taken
            and (not isinstance(columns, pd.DataFrame) or pd.api.types.is_string_dtype(columns[name]))]
    if missing and len(left) == len(missing):
        mapping.update(zip(missing, left))
    return {role: mapping[role] for role in ROLES if role in mapping}


def parse_column_spec(spec: str) -> dict:
    """'anchor=q,positive=d,negative=n1,negative=n2' -> {"anchor": "q", "positive": "d", "negative": ["n1", "n2"]}."""
    example = "anchor=question,positive=answer"
    mapping: dict = {}
    for part in spec.split(","):
        role, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not role or not column:
            raise DataError(f"column spec '{spec}': '{part.strip()}' is not role=column. "
                            f"Write role=column pairs separated by commas, e.g. {example}.")
        if role not in ROLES:
            raise DataError(f"column spec '{spec}': unknown role '{role}'. Roles are: {', '.join(ROLES)}.")
        if role == "negative":
            mapping.setdefault("negative", []).append(column)
        elif role in mapping:
            raise DataError(f"column spec '{spec}': role '{role}' is given twice. Only negative may repeat.")
        else:
            mapping[role] = column
    return mapping


def _negatives(mapping: dict) -> list[str]:
    negative = mapping.get("negative") or []
    return [negative] if isinstance(negative, str) else list(negative)


def task_for(mapping: dict) -> str:
    """"pairs", "triplets", "scored-pairs" or "labelled-pairs", from which roles are mapped."""
    missing = [role for role in ("anchor", "positive") if not mapping.get(role)]
    if missing:
        raise DataError(f"no column is mapped to {' or '.join(missing)}. Map both anchor and positive, "
                        "e.g. --columns anchor=question,positive=answer.")
    extras = [role for role in ("negative", "score", "label") if mapping.get(role)]
    if len(extras) > 1:
        raise DataError(f"roles {' and '.join(extras)} cannot be combined: map negatives (triplets), "
                        "a score (scored pairs) or a label (labelled pairs), only one of them.")
    return {"negative": "triplets", "score": "scored-pairs", "label": "labelled-pairs"}.get(
        extras[0] if extras else None, "pairs")


def default_loss(mapping: dict, df: pd.DataFrame | None = None) -> str:
    """The loss to train with unless the user picks another of LOSSES[task].

    Labelled pairs with 0/1 labels (or when `df` is not given) use OnlineContrastiveLoss; more classes
    need SoftmaxLoss.
    """
    task = task_for(mapping)
    if task == "labelled-pairs" and df is not None:
        labels = set(pd.to_numeric(df[mapping["label"]], errors="coerce").dropna().unique())
        if not labels <= {0, 1}:
            return "SoftmaxLoss"
    return LOSSES[task][0]


def validate(df: pd.DataFrame, mapping: dict, source_name: str = "data") -> DataSummary:
    """Check `df` against `mapping` and summarise it; raise DataError at the first problem."""
    for role in ("anchor", "positive"):
        if not mapping.get(role):
            raise DataError(f"no column of {source_name} is mapped to {role}; "
                            f"columns are: {', '.join(map(str, df.columns))}. {_spec_hint(df)}")
    task = task_for(mapping)
    roles = [(role, column) for role in ROLES for column in
             (_negatives(mapping) if role == "negative" else [mapping.get(role)]) if column]
    for role, column in roles:
        if column not in df.columns:
            what = f"'{column}'" if column == role else f"'{column}' (for {role})"
            raise DataError(f"column {what} not found in {source_name}; columns are: "
                            f"{', '.join(map(str, df.columns))}. {_spec_hint(df)}")

    empty_values = {}
    for role, column in roles:
        empty_values[column] = int(df[column].map(_is_empty).sum())
        for row, value in enumerate(df[column], start=1):
            problem = _value_problem(role, value)
            if problem:
                raise DataError(f"{source_name}, row {row}, column '{column}': {problem}")

    prepared = prepare(df, mapping)
    dropped = len(df) - len(prepared)
    for role in ("anchor", "positive"):
        if len(df) >= MIN_ROWS and prepared[role].nunique() == 1:
            raise DataError(f"{source_name}: every {role} (column '{mapping[role]}') is the same text, "
                            f"{_clip(prepared[role].iloc[0])}. Check the column mapping.")
    if len(prepared) < MIN_ROWS:
        counted = (f"{len(prepared)} usable rows ({len(df)} less {dropped} exact copies)" if dropped
                   else f"{len(df)} rows")
        raise DataError(f"{source_name} has {counted}; training needs at least {MIN_ROWS}. Add rows.")

    stripped = pd.DataFrame({role: df[mapping[role]].str.strip() for role in ("anchor", "positive")})
    duplicates = int(stripped.duplicated().sum())
    warnings = []
    if duplicates:
        warnings.append(f"{source_name}: {duplicates} rows repeat an earlier (anchor, positive) pair"
                        + (f"; {dropped} exact copies are dropped before training." if dropped else "."))
    lengths = {role: prepared[role].str.len().tolist() for role in ("anchor", "positive")}
    negative_columns = [c for c in prepared.columns if c.startswith("negative")]
    if negative_columns:
        lengths["negative"] = [n for c in negative_columns for n in prepared[c].str.len().tolist()]
    columns = {role: _negatives(mapping) if role == "negative" else mapping[role]
               for role in ROLES if mapping.get(role)}
    return DataSummary(rows=len(prepared), task=task, loss=default_loss(mapping, df), duplicates=duplicates,
                       empty_values=empty_values, text_lengths=lengths, warnings=warnings, columns=columns)


def _is_empty(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _value_problem(role: str, value) -> str | None:
    """What is wrong with one cell, and the fix; None when it is fine."""
    if role in TEXT_ROLES:
        if _is_empty(value):
            return "empty value. Fill it in or drop the row."
        if not isinstance(value, str):
            return f"not text ({value!r}, a {type(value).__name__}). Make it text or drop the row."
        return None
    what = "score" if role == "score" else "label"
    if _is_empty(value):
        return f"empty {what}. Fill it in or drop the row."
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if role == "score" and not math.isfinite(number):
        return f"{value!r} is not a number. Scores are numbers, e.g. 0.8: fix it or drop the row."
    if role == "label" and not (math.isfinite(number) and number.is_integer()):
        return (f"{value!r} is not an integer. Labels are integer classes (0, 1, ...): "
                "number text labels or drop the row.")
    return None


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _spec_hint(df: pd.DataFrame) -> str:
    guess = guess_columns(df)
    if "anchor" in guess and "positive" in guess:
        spec = f"anchor={guess['anchor']},positive={guess['positive']}"
    else:
        spec = "anchor=COLUMN,positive=COLUMN"
    return f"Pass --columns {spec}"


def prepare(df: pd.DataFrame, mapping: dict) -> pd.DataFrame:
    """The mapped columns only, named as sentence-transformers reads them: anchor, positive, negative,
    negative_2, ..., then score (float) or label (int). Text is stripped; exact duplicate rows are
    dropped. Call `validate` first: this does not check the data."""
    negatives = _negatives(mapping)
    out = pd.DataFrame({"anchor": df[mapping["anchor"]], "positive": df[mapping["positive"]]})
    for i, column in enumerate(negatives, start=1):
        out["negative" if i == 1 else f"negative_{i}"] = df[column]
    out = out.apply(lambda texts: texts.str.strip())
    if mapping.get("score"):
        out["score"] = pd.to_numeric(df[mapping["score"]]).astype(float)
    if mapping.get("label"):
        out["label"] = pd.to_numeric(df[mapping["label"]]).astype(int)
    return out.drop_duplicates().reset_index(drop=True)


def split(df: pd.DataFrame, eval_size: float | int = 0.1, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a prepared table into (train, eval); every row of one anchor lands on the same side,
    so retrieval eval never sees a training query. `eval_size`: a fraction (0 < f < 1) or a row count."""
    if "anchor" not in df.columns:
        raise DataError("split() takes a prepared table (with an 'anchor' column). Call prepare(df, mapping) first.")
    n = len(df)
    if isinstance(eval_size, float) and 0 < eval_size < 1:
        wanted = max(1, round(eval_size * n))
    elif isinstance(eval_size, numbers.Integral) and not isinstance(eval_size, bool) and eval_size >= 1:
        wanted = int(eval_size)
    else:
        raise DataError(f"eval_size={eval_size!r}: pass a fraction between 0 and 1 (e.g. 0.1) "
                        "or a row count (e.g. 200).")

    anchors = df["anchor"].drop_duplicates().sample(frac=1.0, random_state=seed)
    group_sizes = df["anchor"].value_counts()
    eval_anchors, eval_rows = set(), 0
    for anchor in anchors:
        if eval_rows >= wanted:
            break
        eval_anchors.add(anchor)
        eval_rows += int(group_sizes[anchor])

    in_eval = df["anchor"].isin(eval_anchors)
    train_rows = n - int(in_eval.sum())
    if train_rows < MIN_ROWS:
        raise DataError(f"cannot split {n} rows with eval_size={eval_size!r}: train would keep {train_rows} rows "
                        f"and needs at least {MIN_ROWS}. Add rows, lower eval_size, or pass a separate eval file.")
    return df[~in_eval].reset_index(drop=True), df[in_eval].reset_index(drop=True)


def to_dataset(df: pd.DataFrame):
    """A `datasets.Dataset` with the same columns, for SentenceTransformerTrainer."""
    from datasets import Dataset

    return Dataset.from_pandas(df, preserve_index=False)


def load_sample(split: str = "train") -> pd.DataFrame:
    """The bundled Debian sample (columns package, query, document); see assets/debian-pairs/README.md."""
    if split not in ("train", "test"):
        raise DataError(f"the sample has splits 'train' and 'test', not {split!r}.")
    return read_table(SAMPLE_DIR / f"{split}.jsonl")


def read_extra_corpus(source) -> list[str]:
    """Documents from a file: its document / text / passage / positive column, else its first column."""
    table = read_table(source)
    column = next((c for c in ("document", "text", "passage", "positive") if c in table.columns), table.columns[0])
    return table[column].dropna().astype(str).tolist()
