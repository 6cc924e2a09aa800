"""The data layer: read a table, map its columns to roles, validate it with clear errors, split it.

    df = read_table("data.csv")                  # or .tsv .json .jsonl .parquet, a DataFrame, a Hub id
    guess = column_guess(df)                      # .mapping {"anchor": "question_text", ...}, .describe() says why
    summary = validate(df, guess.mapping, "data.csv")  # raises DataError, or returns counts and warnings
    train_df, eval_df = split(prepare(df, guess.mapping))
    train_dataset = to_dataset(train_df)

A role is what a column means to a sentence-transformers loss: anchor, positive and negative are
texts, score is a float similarity, label an integer class. `prepare` names the columns the way
sentence-transformers reads them: the text columns in order, then "score" or "label".

A DataError's message fits any front end: it names a file by its base name (never a server path), the row and
the column, and says what to do without naming a flag; `error.fix`, where set, is the command line's next step.
MappingError, a DataError, means other columns should be mapped (the studio points at its dropdowns).

This module imports neither torch nor `datasets` at import time, so the studio can use it cheaply.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from engine.bundled import ASSETS_DIR
from engine.tasks import all_roles
from engine.tasks.classifier import ROLES as CLASSIFIER_ROLES
from engine.tasks.embedding import LOSSES  # the embedding task's losses per data shape (pairs, triplets, ...)

ROLES = ("anchor", "positive", "negative", "score", "label")
TEXT_ROLES = ("anchor", "positive", "negative")
ROLE_MEANINGS = {"anchor": "the queries (or questions)", "positive": "the texts each query should find"}
MIN_ROWS = 8  # fewer rows than this cannot fill one batch and an eval split
READERS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
SAMPLE_DIR = ASSETS_DIR / "debian-pairs"

# Common column names per role, most telling first. A name is compared by its words (case, spaces, hyphens,
# underscores and camelCase ignored), less the filler words below: "question_text" and "QuestionText" read as
# "question". The anchor is guessed first, so "text" is the positive beside a "title" and the anchor beside a
# "summary".
ROLE_NAMES = {
    "anchor": ("anchor", "query", "question", "q", "sentence1", "sentence_1", "sentence_a", "text1", "text_1",
               "text_a", "premise", "title", "prompt", "instruction", "input", "source", "text"),
    "positive": ("positive", "pos", "document", "doc", "passage", "answer", "a", "response", "completion", "reply",
                 "sentence2", "sentence_2", "sentence_b", "text2", "text_2", "text_b", "hypothesis", "summary",
                 "body", "content", "context", "output", "target", "text"),
    "score": ("score", "similarity", "similarity_score", "relevance", "relevance_score", "sim", "rating"),
    "label": ("label", "labels", "class", "is_match", "is_relevant", "relevant"),
}
# A classifier's roles (engine.tasks.classifier), label first: "description" is the text beside a "category", and
# "text_pair" (which reads as "pair") the second text of a pair. "title" and "question" come last: a short title
# beside a longer description is not the text to classify.
CLASSIFIER_ROLE_NAMES = {
    "label": ("label", "labels", "category", "section", "class", "topic", "intent", "sentiment", "genre", "tag"),
    "text": ("text", "sentence", "description", "sentence1", "sentence_1", "sentence_a", "text1", "text_1", "text_a",
             "premise", "content", "body", "document", "review", "comment", "message", "utterance", "question",
             "title"),
    "text_pair": ("pair", "sentence2", "sentence_2", "sentence_b", "text2", "text_2", "text_b",
                  "hypothesis"),
}
FILLER_WORDS = ("text", "str", "string", "column", "col", "field")
SHORT_PAIR = ("q", "a")  # one-letter names say something only as this pair
NEGATIVE_PREFIXES = ("neg", "hard_neg")

# What the score and label losses learn from (sentence-transformers' loss docs). CosineSimilarityLoss regresses the
# cosine of the two embeddings onto the score, so a score must be a cosine; CoSENT and AnglE only compare scores
# with each other, so any one scale serves, and a value far off the scale of the rest is a typo or a unit mix-up.
SCORE_BOUNDS = {"CosineSimilarityLoss": (-1.0, 1.0)}
SCORE_OUTLIER_SPREADS = 10  # a score further than this many interquartile ranges off the middle half is off the scale
BINARY_LABEL_LOSSES = ("OnlineContrastiveLoss", "ContrastiveLoss")  # 1: similar, 0: dissimilar
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but tab, line feed, carriage return
DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


class DataError(ValueError):
    """Bad input data. The message names the source (a file by its base name), the row (1-based, counting data
    rows, not the header) and the column where it applies, and says what to do about it in words that fit any
    front end. `fix`, where set, is a better next step for the command line (it may name a flag)."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.fix = fix


class MappingError(DataError):
    """The columns mapped to roles do not fit the table: a front end asks for other columns (the studio's
    dropdowns; the CLI's --columns, in `fix`)."""


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
    labels: dict = field(default_factory=dict)  # a classifier's classes: label -> rows, most common first

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
    with path.open("rb") as f:
        utf16 = f.read(2) in (b"\xff\xfe", b"\xfe\xff")
    if utf16 and suffix != ".parquet":
        raise DataError(f"{name} is UTF-16 text. Save it with UTF-8 encoding.")
    try:
        if suffix in (".csv", ".tsv"):
            df = _read_delimited(path, name, "\t" if suffix == ".tsv" else ",")
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
        detail = str(e).replace(str(path), name)  # the reader names the file by its full path: keep it off the page
        raise DataError(f"{name} could not be read as {kind} ({detail}). "
                        f"Check that it is a valid {kind} file.") from None
    return _nonempty(df, name)


def _read_delimited(path: Path, name: str, delimiter: str) -> pd.DataFrame:
    """A CSV or TSV file (a UTF-8 byte order mark is allowed), its header checked before pandas renames
    repeated names ("query", "query.1")."""
    text = path.read_text(encoding="utf-8-sig")  # undecodable bytes (a binary file) fail here, before sniffing
    first_line = next((line for line in text.splitlines() if line.strip()), "")  # pandas skips blank lines too
    header = next((row for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if row), [])
    if not first_line:
        raise DataError(f"{name} is empty. Add a header line and rows.")
    counts = {d: first_line.count(d) for d in DELIMITERS}
    likely = max(counts, key=counts.get)
    if likely != delimiter and counts[likely] > counts[delimiter]:
        kind = {",": ".csv", "\t": ".tsv"}.get(likely)
        rename = f"rename it to {path.stem}{kind}" if kind else f"save it with {DELIMITERS[delimiter]}s between values"
        raise DataError(f"{name} looks {DELIMITERS[likely]}-separated: its header line has "
                        f"{_counted(counts[likely], DELIMITERS[likely])} and "
                        f"{_counted(counts[delimiter], DELIMITERS[delimiter])}, and a {path.suffix} file is "
                        f"{DELIMITERS[delimiter]}-separated. {rename[0].upper()}{rename[1:]}.")
    _check_column_names(header, name)
    try:
        return pd.read_csv(io.StringIO(text, newline=""), sep=delimiter)
    except pd.errors.ParserError as e:
        counted = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if counted:
            fields, line, saw = counted.groups()
            raise DataError(f"{name}, line {line}: {saw} values where the header has {fields}. A value holding "
                            f"a {DELIMITERS[delimiter]} needs double quotes around it; quote it, or fix that "
                            "line.") from None
        unclosed = re.search(r"EOF inside string starting at row (\d+)", str(e))
        if unclosed:
            raise DataError(f"{name}, row {unclosed.group(1)}: a double quote opens a value that never closes, so "
                            "the rest of the file reads as one value. Close the quote, or write a quote inside a "
                            'value as two ("").') from None
        raise


def _check_column_names(columns, name: str) -> None:
    seen: dict = {}
    for position, column in enumerate(columns, start=1):
        if column in seen:
            raise DataError(f"{name}: the column name '{column}' is used twice (columns {seen[column]} and "
                            f"{position}). Give each column its own name.")
        seen[column] = position


def _read_json_records(path: Path, name: str) -> list[dict]:
    """A JSON array of objects, or one object per line (JSON lines); a UTF-8 byte order mark is allowed."""
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataError(f"{name} is empty. Add rows: one JSON object per line, or an array of objects.")
    if text.lstrip().startswith("["):
        numbered = list(enumerate(_parse_json(text, name), start=1))
        unit = "item"
    else:
        try:  # one object over several lines, or one wrapping the rows, is not JSON lines
            whole = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            whole = None
        if isinstance(whole, dict) and ("\n" in text.strip() or _rows_key(whole)):
            raise DataError(_object_problem(whole, name))
        numbered = [(lineno, _parse_json(line, name, lineno))
                    for lineno, line in enumerate(text.splitlines(), start=1) if line.strip()]
        unit = "line"
    for number, record in numbered:
        if not isinstance(record, dict):
            raise DataError(f"{name}, {unit} {number}: expected an object like "
                            f'{{"anchor": "...", "positive": "..."}}, got {_kind(record)}.')
    if numbered:  # json keeps the last of repeated keys; the first row's own keys show whether any repeat
        pairs, _end = json.JSONDecoder(object_pairs_hook=list).raw_decode(text, text.index("{"))
        _check_column_names([key for key, _value in pairs], name)
    return [record for _, record in numbered]


def _kind(value) -> str:
    """What a value is called in JSON (an array, a string, a number, null), the words a user knows for it."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return "a number"
    kinds = {list: "an array", dict: "an object", str: "a string", bool: "true or false", type(None): "null"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _rows_key(value, path: tuple = ()) -> tuple | None:
    """The keys leading to the first list of objects inside a JSON object (the rows), if any."""
    if isinstance(value, dict):
        for key, inner in value.items():
            found = _rows_key(inner, (*path, key)) if len(path) < 3 else None
            if found:
                return found
    elif isinstance(value, list) and path and value and all(isinstance(item, dict) for item in value):
        return path
    return None


def _object_problem(whole: dict, name: str) -> str:
    rows_at = _rows_key(whole)
    if rows_at:
        where = " → ".join(f"'{key}'" for key in rows_at)
        inner = whole
        for key in rows_at:
            inner = inner[key]
        return (f"{name} holds one JSON object, not a list of rows; the rows ({_counted(len(inner), 'object')}) "
                f"are under the key {where}. Save that list alone as the file (an array of objects), or one "
                "object per line.")
    return (f"{name} holds one JSON object spread over several lines, not rows. Write an array of objects "
            f'([{{"anchor": "...", "positive": "..."}}, ...]) or one object per line (JSON lines).')


# json's messages, in words for someone who did not write a parser
JSON_PROBLEMS = {
    "Expecting value": "a value is missing or is not JSON (a trailing comma, single quotes, or NaN?)",
    "Expecting ',' delimiter": "a comma is missing between two items",
    "Expecting ':' delimiter": "a colon is missing after a key",
    "Expecting property name enclosed in double quotes": "a key is not in double quotes (or a comma trails)",
    "Extra data": "more follows the end of the JSON value (a .json file holds one array; use .jsonl for "
                  "one object per line)",
    "Invalid control character at": "a string holds a raw tab or line break; write it as \\t or \\n",
    "Invalid \\escape": "a backslash starts an escape JSON does not know; write a backslash as \\\\",
}


def _parse_json(text: str, name: str, lineno: int | None = None):
    """json.loads, with errors a person can act on: where, what, and whether the file was cut off."""
    where = f"{name}, line {lineno}" if lineno else name
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{where}: the JSON is nested too deeply to be rows of a table. "
                        'Each row is one flat object like {"anchor": "...", "positive": "..."}.') from None
    except json.JSONDecodeError as e:
        line = lineno or e.lineno
        if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):
            cut = "the line" if lineno else "the file"
            raise DataError(f"{name}, line {line}: the JSON stops before it is complete, so {cut} looks cut off. "
                            "Save or download it again, whole.") from None
        problem = JSON_PROBLEMS.get(e.msg, e.msg[0].lower() + e.msg[1:])
        column = e.colno if lineno is None else e.pos + 1
        raise DataError(f"{name}, line {line}, character {column}: not valid JSON: {problem}. Fix that spot "
                        "and save the file again.") from None


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


def _counted(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


@dataclass
class ColumnGuess:
    """Which column `column_guess` picked for each role, and why (role -> reason, for the user to read)."""

    mapping: dict
    reasons: dict

    def describe(self) -> str:
        """'anchor: question_text (reads as "question"); positive: answer_text (reads as "answer")'."""
        picked = []
        for role, column in self.mapping.items():
            shown = ", ".join(column) if isinstance(column, list) else column
            picked.append(f"{role}: {shown} ({self.reasons[role]})")
        return "; ".join(picked)


def _name_key(name) -> str:
    """'Question_Text', 'question-text', 'QuestionText' -> 'question'; 'Sentence A' -> 'sentence_a'."""
    words = re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower())
    kept = [word for word in words if word not in FILLER_WORDS]
    if not any(len(word) > 1 and not word.isdigit() for word in kept):  # "text_1", "text_a" keep their "text"
        kept = words
    return "_".join(kept)


def column_guess(columns, task: str = "embedding") -> ColumnGuess:
    """Guess role -> column for `task` from common names (`columns`: names, or a DataFrame to look at dtypes too).

    Names match ROLE_NAMES (a classifier's: CLASSIFIER_ROLE_NAMES) by their words (see `_name_key`). For the pair
    tasks, negatives are every column named negative*, neg*, hard_negative*, in table order, and a table of exactly
    two columns whose names say nothing (text columns, when a DataFrame is given) is taken in order, anchor first,
    the way sentence-transformers reads columns; in any other table an unknown name is left for the user to map:
    position alone is no evidence.
    """
    names = list(columns.columns if isinstance(columns, pd.DataFrame) else columns)
    keys = {name: _name_key(name) for name in names}
    if task == "classifier":
        mapping, reasons = _by_name(keys, CLASSIFIER_ROLE_NAMES)
        roles = [role for role in CLASSIFIER_ROLES if role in mapping]
        return ColumnGuess({role: mapping[role] for role in roles}, {role: reasons[role] for role in roles})
    if not set(SHORT_PAIR) <= set(keys.values()):
        keys = {name: key for name, key in keys.items() if key not in SHORT_PAIR}
    mapping, reasons = _by_name(keys, ROLE_NAMES)
    negatives = [name for name in names if name not in mapping.values()
                 and _name_key(name).startswith(NEGATIVE_PREFIXES)]
    if negatives:
        mapping["negative"] = negatives
        reasons["negative"] = "named negative" if len(negatives) == 1 else "each named negative"

    texts = [name for name in names if not isinstance(columns, pd.DataFrame)
             or pd.api.types.is_string_dtype(columns[name])]
    if not mapping and len(names) == 2 and texts == names:
        mapping = dict(zip(("anchor", "positive"), names))
        reasons = {"anchor": "the first of the only two columns", "positive": "the second of the only two columns"}
    roles = [role for role in ROLES if role in mapping]
    return ColumnGuess({role: mapping[role] for role in roles}, {role: reasons[role] for role in roles})


def _by_name(keys: dict, role_names: dict) -> tuple[dict, dict]:
    """(role -> column, role -> reason): for each role of `role_names` in turn, the first of its names that some
    column (name -> key) reads as, a column taking one role only."""
    mapping: dict = {}
    reasons: dict = {}
    for role, candidates in role_names.items():
        found = next((name for candidate in candidates for name in keys
                      if keys[name] == candidate and name not in mapping.values()), None)
        if found is not None:
            mapping[role] = found
            reasons[role] = "its name" if keys[found] == str(found) else f'reads as "{keys[found]}"'
    return mapping, reasons


def guess_columns(columns, task: str = "embedding") -> dict:
    """role -> column, as `column_guess` picks them for `task`."""
    return column_guess(columns, task).mapping


def parse_column_spec(spec: str) -> dict:
    """'anchor=q,positive=d,negative=n1,negative=n2' -> {"anchor": "q", "positive": "d", "negative": ["n1", "n2"]}."""
    example = "anchor=question,positive=answer"
    mapping: dict = {}
    for part in spec.split(","):
        role, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not role or not column:
            raise DataError(f"column spec '{spec}': '{part.strip()}' is not role=column. "
                            f"Write role=column pairs separated by commas, e.g. {example}.")
        known = all_roles()
        if role not in known:
            raise DataError(f"column spec '{spec}': unknown role '{role}'. Roles are: {', '.join(known)}.")
        if role == "negative":
            mapping.setdefault("negative", []).append(column)
        elif role in mapping:
            raise DataError(f"column spec '{spec}': role '{role}' is given twice. Only negative may repeat.")
        else:
            mapping[role] = column
    return mapping


def negatives_of(mapping: dict) -> list[str]:
    """The negative columns of a mapping, as a list (a mapping may name one as a string)."""
    negative = mapping.get("negative") or []
    return [negative] if isinstance(negative, str) else list(negative)


def mapped_columns(mapping: dict) -> list[tuple[str, str]]:
    """(role, column) for every column the mapping names, in ROLES order (negatives in their own order)."""
    return [(role, column) for role in ROLES
            for column in (negatives_of(mapping) if role == "negative" else [mapping.get(role)]) if column]


def task_for(mapping: dict) -> str:
    """"pairs", "triplets", "scored-pairs" or "labelled-pairs", from which roles are mapped."""
    missing = [role for role in ("anchor", "positive") if not mapping.get(role)]
    if missing:
        raise MappingError(f"no column is mapped to {' or '.join(missing)}. Map both anchor (the query) and "
                           "positive (the text it should find).", fix="pass --columns anchor=COLUMN,positive=COLUMN")
    extras = [role for role in ("negative", "score", "label") if mapping.get(role)]
    if len(extras) > 1:
        raise MappingError(f"roles {' and '.join(extras)} cannot be combined: map negatives (triplets), "
                           "a score (scored pairs) or a label (labelled pairs), only one of them.")
    return {"negative": "triplets", "score": "scored-pairs", "label": "labelled-pairs"}.get(
        extras[0] if extras else None, "pairs")


def default_loss(mapping: dict, df: pd.DataFrame | None = None, losses: dict = LOSSES) -> str:
    """The loss to train with unless the user picks another of losses[task] (a task module's LOSSES; the
    embedding task's by default).

    Labelled pairs with 0/1 labels (or when `df` is not given) take the first; more classes need SoftmaxLoss
    where the task offers it.
    """
    task = task_for(mapping)
    if task == "labelled-pairs" and df is not None and "SoftmaxLoss" in losses[task]:
        labels = set(pd.to_numeric(df[mapping["label"]], errors="coerce").dropna().unique())
        if not labels <= {0, 1}:
            return "SoftmaxLoss"
    return losses[task][0]


def validate(df: pd.DataFrame, mapping: dict, source_name: str = "data", loss: str | None = None,
             losses: dict = LOSSES) -> DataSummary:
    """Check `df` against `mapping` (and the scores or labels against `loss`, by default the data shape's default
    loss in `losses`, a task module's LOSSES) and summarise it; raise DataError (MappingError for the mapping) at
    the first problem. The checks every pair task shares: a task module adds its own (engine.tasks)."""
    _check_column_names(df.columns, source_name)
    columns_are = f"columns are: {', '.join(map(str, df.columns))}"
    for role in ("anchor", "positive"):
        if not mapping.get(role):
            guess = guess_columns(df)
            raise MappingError(f"no column of {source_name} is mapped to {role}; {columns_are}. Map {role} to "
                               f"the column that holds {ROLE_MEANINGS[role]}.", fix=_spec_hint(guess))
    try:
        task = task_for(mapping)
    except MappingError as error:
        raise MappingError(f"{source_name}: {error}", fix=error.fix) from None
    roles = mapped_columns(mapping)
    for role, column in roles:
        if column not in df.columns:
            what = f"'{column}'" if column == role else f"'{column}' (for {role})"
            raise MappingError(f"column {what} not found in {source_name}; {columns_are}.",
                               fix=_spec_hint(guess_columns(df)))
    for i, (role, column) in enumerate(roles):
        other = next((r for r, c in roles[:i] if c == column), None)
        if other:
            raise MappingError(f"column '{column}' of {source_name} is mapped to both {other} and {role}; "
                               f"a model would learn to match each text with itself. Map {role} to another column.")
    loss = loss or default_loss(mapping, df, losses)

    empty_values = {}
    for role, column in roles:
        empty_values[column] = int(df[column].map(_is_empty).sum())
        for row, value in enumerate(df[column], start=1):
            problem = _value_problem(role, value, loss)
            if problem:
                raise DataError(f"{source_name}, row {row}, column '{column}': {problem}")
    if mapping.get("score"):
        _check_score_scale(pd.to_numeric(df[mapping["score"]]), mapping["score"], source_name, loss)

    prepared = prepare(df, mapping)
    dropped = len(df) - len(prepared)
    for role in ("anchor", "positive"):
        if len(df) >= MIN_ROWS and prepared[role].nunique() == 1:
            raise MappingError(f"{source_name}: every {role} (column '{mapping[role]}') is the same text, "
                               f"{_clip(repr(prepared[role].iloc[0]))}. Check the column mapping.")
    if len(prepared) >= MIN_ROWS and (prepared["anchor"] == prepared["positive"]).all():
        raise MappingError(f"{source_name}: in every row the positive (column '{mapping['positive']}') is the same "
                           f"text as the anchor (column '{mapping['anchor']}'). Map positive to the column with "
                           "the texts the anchors should find.")
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
    columns = {role: negatives_of(mapping) if role == "negative" else mapping[role]
               for role in ROLES if mapping.get(role)}
    return DataSummary(rows=len(prepared), task=task, loss=default_loss(mapping, df, losses), duplicates=duplicates,
                       empty_values=empty_values, text_lengths=lengths, warnings=warnings, columns=columns)


def _is_empty(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def text_problem(value) -> str | None:
    """What is wrong with one text cell (empty, not text, control characters), and the fix; None when it is fine."""
    if _is_empty(value):
        return "empty value. Fill it in or drop the row."
    if not isinstance(value, str):
        return f"not text ({_clip(repr(value))}, {_kind(value)}). Make it text or drop the row."
    control = CONTROL_CHARACTERS.search(value)
    if control:
        char = control.group()
        what = "a NUL character" if char == "\x00" else f"the control character U+{ord(char):04X}"
        return (f"the text holds {what} at character {control.start() + 1}, which no tokenizer reads as text "
                "(often a sign of a binary or mis-encoded file). Remove it or drop the row.")
    return None


def _value_problem(role: str, value, loss: str) -> str | None:
    """What is wrong with one cell, and the fix; None when it is fine."""
    if role in TEXT_ROLES:
        return text_problem(value)
    what = "score" if role == "score" else "label"
    if _is_empty(value):
        return f"empty {what}. Fill it in or drop the row."
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if role == "score":
        if not math.isfinite(number):
            return f"{value!r} is not a number. Scores are numbers, e.g. 0.8: fix it or drop the row."
        low, high = SCORE_BOUNDS.get(loss, (-math.inf, math.inf))
        if not low <= number <= high:
            return (f"{value!r} is outside {low:g} to {high:g}, the cosine similarities {loss} learns. Scale the "
                    "scores into 0 to 1 (ratings of 0 to 5 divided by 5), or train with CoSENTLoss.")
        return None
    if not (math.isfinite(number) and number.is_integer()):
        return (f"{value!r} is not an integer. Labels are integer classes (0, 1, ...): "
                "number text labels or drop the row.")
    if number < 0:
        return f"{value!r} is negative. Labels are classes numbered 0, 1, ...: renumber them."
    if loss in BINARY_LABEL_LOSSES and number > 1:
        return (f"{value!r} is not 0 or 1; {loss} takes 1 for a matching pair and 0 for a pair that does not "
                "match. Make the labels 0/1, or train with SoftmaxLoss for several classes.")
    return None


def _check_score_scale(scores: pd.Series, column: str, source_name: str, loss: str) -> None:
    """A score far off the scale of the others (a typo, a unit mix-up) would stretch the scale the held-out
    evaluation splits at and, for a bounded loss, was caught per cell already."""
    if loss in SCORE_BOUNDS or len(scores) < MIN_ROWS:
        return
    low, high = scores.quantile(0.25), scores.quantile(0.75)  # quartiles: one wild value cannot move them
    spread = high - low
    if not spread:
        return
    fence_low, fence_high = low - SCORE_OUTLIER_SPREADS * spread, high + SCORE_OUTLIER_SPREADS * spread
    off = (scores < fence_low) | (scores > fence_high)
    if off.any():
        row = int(off.to_numpy().argmax())
        raise DataError(f"{source_name}, row {row + 1}, column '{column}': {scores.iloc[row]:g} is far off the "
                        f"scale of the other scores (half of them lie between {low:g} and {high:g}). Fix it or "
                        "drop the row.")


def _clip(shown: str, limit: int = 60) -> str:
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _spec_hint(guess: dict) -> str:
    """The --columns flag to pass (the CLI's fix line)."""
    anchor, positive = guess.get("anchor", "COLUMN"), guess.get("positive", "COLUMN")
    return f"pass --columns anchor={anchor},positive={positive}"


def prepare(df: pd.DataFrame, mapping: dict) -> pd.DataFrame:
    """The mapped columns only, named as sentence-transformers reads them: anchor, positive, negative,
    negative_2, ..., then score (float) or label (int). Text is stripped; exact duplicate rows are
    dropped. Call `validate` first: this does not check the data."""
    negatives = negatives_of(mapping)
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
