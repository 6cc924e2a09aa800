"""A corpus of bad training data, generated here rather than kept as files: each case is a file's name and bytes,
the column mapping to use (None: the entry point's own guess), settings that change what is valid (a loss), and
words the message must hold (the problem, and the row and column where there is one).

    python tests/bad_inputs.py OUT_DIR     # write every case's file into OUT_DIR, to try them by hand

tests/test_bad_inputs.py runs each case through the CLI, the studio's Data tab and the studio's start_run API (the
reranker's own cases, `reranker_cases`, go through the CLI in tests/test_reranker.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ROWS = 12  # enough rows to pass the row-count check, so each case fails for its own reason only
PAIRS = {"anchor": "question", "positive": "answer"}


@dataclass(frozen=True)
class BadInput:
    name: str
    filename: str
    content: bytes
    expect: tuple[str, ...]  # every one must appear in the message the user sees
    mapping: dict | None = None
    settings: dict = field(default_factory=dict)  # run settings (the Data tab cannot set them: a loss)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / self.name / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.content)
        return path


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `lacker ...` run in this process (no interpreter to start, no imports to
    repeat), leaving no SIGTERM handler of its own behind."""
    from engine import cli

    on_sigterm = signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = cli.main(argv)
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
    return code, out.getvalue(), err.getvalue()


def qa_rows(n: int = ROWS, **columns) -> list[dict]:
    """Question/answer rows; `columns` adds or replaces a column (a list of n values)."""
    rows = [{"question": f"what does package {i} do?", "answer": f"package {i} compresses files of kind {i}"}
            for i in range(n)]
    for column, values in columns.items():
        for row, value in zip(rows, values):
            row[column] = value
    return rows


def with_value(column: str, row: int, value, n: int = ROWS, **columns) -> list[dict]:
    """qa_rows with one cell (1-based data row) set to `value`."""
    rows = qa_rows(n, **columns)
    rows[row - 1][column] = value
    return rows


def csv_bytes(rows: list[dict], delimiter: str = ",", header: list[str] | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    names = header or list(rows[0])
    writer.writerow(names)
    for row in rows:
        writer.writerow(row.values() if header else [row[c] for c in names])
    return out.getvalue().encode("utf-8")


def jsonl_bytes(rows: list) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")


def json_bytes(value) -> bytes:
    return json.dumps(value, indent=1).encode("utf-8")


def parquet_bytes(df: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    df.to_parquet(out)
    return out.getvalue()


def scores(values: dict[int, object], base: float = 0.5) -> list:
    """ROWS scores spread over 0..1, with the given 1-based rows replaced."""
    column = [round(base + 0.04 * (i % 10) - 0.2, 2) for i in range(ROWS)]
    for row, value in values.items():
        column[row - 1] = value
    return column


def labels(values: dict[int, object]) -> list:
    column = [i % 2 for i in range(ROWS)]
    for row, value in values.items():
        column[row - 1] = value
    return column


def cases() -> list[BadInput]:
    good = qa_rows()
    lines = csv_bytes(good).decode().splitlines(keepends=True)
    cases = [
        # How the file is written
        BadInput("tsv-named-csv", "pairs.csv", csv_bytes(good, "\t"),
                 ("pairs.csv", "looks tab-separated", "pairs.tsv")),
        BadInput("csv-named-tsv", "pairs.tsv", csv_bytes(good), ("pairs.tsv", "looks comma-separated", "pairs.csv")),
        BadInput("semicolon-csv", "excel.csv", csv_bytes(good, ";"), ("excel.csv", "looks semicolon-separated")),
        BadInput("unquoted-comma", "pairs.csv",
                ("".join(lines[:6]) + "what is zstd?,a fast, strong compressor\n" + "".join(lines[6:])).encode(),
                 ("pairs.csv", "line 7", "3 values where the header has 2", "double quotes")),
        BadInput("unclosed-quote", "pairs.csv",
                 ("".join(lines[:4]) + '"what is lz4?,fast\n' + "".join(lines[4:])).encode(),
                 ("pairs.csv", "row 4", "double quote", "never closes")),
        BadInput("empty-csv", "empty.csv", b"", ("empty.csv", "is empty")),
        BadInput("blank-lines-only", "blank.csv", b"\n\n  \n", ("blank.csv", "is empty")),
        BadInput("header-only", "header.csv", b"question,answer\n", ("header.csv", "has no rows")),
        BadInput("latin-1", "latin.csv", "question,answer\ncaf\xe9?,a drink\n".encode("latin-1"),
                 ("latin.csv", "not UTF-8")),
        BadInput("utf-16", "excel.csv", csv_bytes(good).decode().encode("utf-16"), ("excel.csv", "UTF-16")),
        BadInput("binary-as-csv", "pairs.csv", bytes(range(256)) * 8, ("pairs.csv", "not UTF-8")),
        BadInput("spreadsheet", "pairs.xlsx", b"PK\x03\x04" + b"\x00" * 60, ("pairs.xlsx", "type")),
        BadInput("corrupt-parquet", "pairs.parquet", b"PAR1 this is not parquet at all \x00\x01",
                 ("pairs.parquet", "could not be read as PARQUET")),
        BadInput("duplicate-header-csv", "pairs.csv", csv_bytes(good, header=["question", "question"]),
                 ("pairs.csv", "'question' is used twice", "columns 1 and 2")),
        BadInput("duplicate-header-tsv", "pairs.tsv",
                 csv_bytes(qa_rows(extra=["x"] * ROWS), "\t", header=["question", "answer", "answer"]),
                 ("pairs.tsv", "'answer' is used twice", "columns 2 and 3")),
        # JSON and JSON lines
        BadInput("jsonl-repeated-key", "pairs.jsonl",
                 b'{"question": "what is lz4?", "question": "a compressor"}\n' + jsonl_bytes(good),
                 ("pairs.jsonl", "'question' is used twice")),
        BadInput("json-object-wrapping-rows", "pairs.json", json_bytes({"data": good}),
                 ("pairs.json", "not a list of rows", "'data'")),
        BadInput("json-rows-nested-deeper", "squad.json", json_bytes({"version": "1.1", "data": {"train": good}}),
                 ("squad.json", "'data' → 'train'")),
        BadInput("jsonl-object-wrapping-rows", "pairs.jsonl", json.dumps({"rows": good}).encode(),
                 ("pairs.jsonl", "not a list of rows", "'rows'")),
        BadInput("json-one-pretty-object", "pairs.jsonl", json_bytes(good[0]), ("pairs.jsonl", "one JSON object")),
        BadInput("json-truncated-in-string", "pairs.json", json_bytes(good)[:-60], ("pairs.json", "cut off")),
        BadInput("json-truncated-after-comma", "pairs.json", json.dumps(good).rsplit("{", 1)[0].encode(),
                 ("pairs.json", "cut off")),
        BadInput("jsonl-last-line-truncated", "pairs.jsonl", jsonl_bytes(good)[:-25],
                 ("pairs.jsonl", f"line {ROWS}", "cut off")),
        BadInput("json-deeply-nested", "deep.json", b"[" * 200_000 + b"]" * 200_000,
                 ("deep.json", "nested too deeply")),
        BadInput("jsonl-deeply-nested", "deep.jsonl",
                 jsonl_bytes(good[:3]) + b'{"question": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n",
                 ("deep.jsonl", "line 4", "nested too deeply")),
        BadInput("json-trailing-comma", "pairs.json", json.dumps(good)[:-1].encode() + b",]",
                 ("pairs.json", "not valid JSON", "trailing comma")),
        BadInput("json-single-quotes", "pairs.json", str(good).encode(), ("pairs.json", "double quotes")),
        BadInput("json-two-arrays", "pairs.json", json.dumps(good).encode() * 2, ("pairs.json", "more follows")),
        BadInput("json-bad-escape", "pairs.json", json.dumps(good).replace("package 3 do?", "C:\\pkg do?").encode(),
                 ("pairs.json", "backslash")),
        BadInput("jsonl-array-line", "pairs.jsonl",
                 jsonl_bytes([*good[:2], ["what is lz4?", "a compressor"], *good[2:]]),
                 ("pairs.jsonl", "line 3", "expected an object", "an array")),
        BadInput("json-array-of-strings", "pairs.json", json_bytes([r["question"] for r in good]),
                 ("pairs.json", "item 1", "expected an object", "a string")),
        BadInput("json-null", "pairs.json", b"null", ("pairs.json", "expected an object", "null")),
        BadInput("json-empty-array", "pairs.json", b"[]", ("pairs.json", "has no rows")),
        BadInput("jsonl-whitespace-only", "pairs.jsonl", b"\n \n", ("pairs.jsonl", "is empty")),
        # Columns and the mapping
        BadInput("no-column-says-its-role", "pairs.csv",
                 csv_bytes(qa_rows(c=["x"] * ROWS), header=["col1", "col2", "col3"]),
                 ("anchor", "queries")),
        BadInput("mapped-column-missing", "pairs.csv", csv_bytes(good), ("pairs.csv", "'reply'", "not found"),
                 mapping={"anchor": "question", "positive": "reply"}),
        BadInput("one-column-for-two-roles", "pairs.csv", csv_bytes(good),
                 ("pairs.csv", "'question'", "mapped to both"),
                 mapping={"anchor": "question", "positive": "question"}),
        BadInput("positive-copies-anchor", "pairs.csv",
                 csv_bytes(qa_rows(answer=[r["question"] for r in good])), ("pairs.csv", "same text as the anchor")),
        BadInput("every-anchor-the-same", "pairs.csv", csv_bytes(qa_rows(question=["what is it?"] * ROWS)),
                 ("pairs.csv", "every anchor", "same text")),
        BadInput("too-few-rows", "pairs.csv", csv_bytes(qa_rows(5)), ("pairs.csv", "5 rows", "at least 8")),
        BadInput("copies-leave-too-few-rows", "pairs.csv", csv_bytes(qa_rows(4) * 3), ("pairs.csv", "4 usable rows")),
        BadInput("score-and-label-together", "pairs.csv", csv_bytes(qa_rows(score=scores({}), label=labels({}))),
                 ("pairs.csv", "cannot be combined"), mapping={**PAIRS, "score": "score", "label": "label"}),
        # Text cells
        BadInput("empty-answer", "pairs.csv", csv_bytes(with_value("answer", 5, "")),
                 ("pairs.csv", "row 5", "'answer'", "empty value")),
        BadInput("blank-question", "pairs.jsonl", jsonl_bytes(with_value("question", 9, "   ")),
                 ("pairs.jsonl", "row 9", "'question'", "empty value")),
        BadInput("null-question", "pairs.json", json_bytes(with_value("question", 2, None)),
                 ("pairs.json", "row 2", "'question'", "empty value")),
        BadInput("nul-byte-in-csv", "pairs.csv", csv_bytes(with_value("answer", 3, "zlib\x00 wrapper")),
                 ("pairs.csv", "row 3", "'answer'", "NUL")),
        BadInput("nul-escape-in-jsonl", "pairs.jsonl", jsonl_bytes(with_value("question", 4, "what\u0000is it")),
                 ("pairs.jsonl", "row 4", "'question'", "NUL")),
        BadInput("escape-character", "pairs.csv", csv_bytes(with_value("answer", 7, "\x1b[31mred\x1b[0m")),
                 ("pairs.csv", "row 7", "'answer'", "U+001B")),
        BadInput("bell-character", "pairs.tsv", csv_bytes(with_value("question", 11, "ring\x07"), "\t"),
                 ("pairs.tsv", "row 11", "'question'", "U+0007")),
        BadInput("number-as-question", "pairs.json", json_bytes(with_value("question", 2, 42)),
                 ("pairs.json", "row 2", "'question'", "not text")),
        BadInput("object-as-answer", "pairs.jsonl", jsonl_bytes(with_value("answer", 6, {"text": "nested"})),
                 ("pairs.jsonl", "row 6", "'answer'", "not text")),
        BadInput("numbers-in-parquet", "pairs.parquet",
                 parquet_bytes(pd.DataFrame({"question": list(range(ROWS)), "answer": [r["answer"] for r in good]})),
                 ("pairs.parquet", "row 1", "'question'", "not text"), mapping=PAIRS),
        BadInput("empty-negative", "triplets.csv",
                 csv_bytes(with_value("negative", 2, "", negative=[f"unrelated text {i}" for i in range(ROWS)])),
                 ("triplets.csv", "row 2", "'negative'", "empty value")),
        # Scores
        BadInput("score-is-a-word", "sts.csv", csv_bytes(qa_rows(score=scores({6: "high"}))),
                 ("sts.csv", "row 6", "'score'", "not a number")),
        BadInput("score-missing", "sts.csv", csv_bytes(qa_rows(score=scores({8: ""}))),
                 ("sts.csv", "row 8", "'score'", "empty score")),
        BadInput("score-a-billion", "sts.csv", csv_bytes(qa_rows(score=scores({9: 1e9}))),
                 ("sts.csv", "row 9", "'score'", "far off the scale")),
        BadInput("score-minus-fifty", "sts.jsonl", jsonl_bytes(qa_rows(score=scores({4: -50}))),
                 ("sts.jsonl", "row 4", "'score'", "far off the scale")),
        BadInput("score-infinite", "sts.csv", csv_bytes(qa_rows(score=scores({2: "inf"}))),
                 ("sts.csv", "row 2", "'score'", "not a number")),
        BadInput("score-beyond-cosine", "sts.csv", csv_bytes(qa_rows(score=scores({5: 3.5}))),
                 ("sts.csv", "row 5", "'score'", "outside -1 to 1", "CosineSimilarityLoss"),
                 settings={"loss": "CosineSimilarityLoss"}),
        # Labels
        BadInput("label-negative", "nli.csv", csv_bytes(qa_rows(label=labels({3: -1}))),
                 ("nli.csv", "row 3", "'label'", "negative")),
        BadInput("label-is-a-word", "nli.csv", csv_bytes(qa_rows(label=labels({10: "yes"}))),
                 ("nli.csv", "row 10", "'label'", "not an integer")),
        BadInput("label-fraction", "nli.jsonl", jsonl_bytes(qa_rows(label=labels({1: 0.5}))),
                 ("nli.jsonl", "row 1", "'label'", "not an integer")),
        BadInput("label-class-for-contrastive", "nli.csv", csv_bytes(qa_rows(label=labels({12: 2}))),
                 ("nli.csv", "row 12", "'label'", "not 0 or 1", "ContrastiveLoss"),
                 settings={"loss": "ContrastiveLoss"}),
    ]
    return cases + classifier_cases()


CLASSIFIER = {"task": "classifier"}
TEXTS = {"text": "body", "label": "section"}


def section_rows(n: int = ROWS, **columns) -> list[dict]:
    """Texts with a section label of three; `columns` adds or replaces a column (a list of n values)."""
    rows = [{"body": f"tool number {i} does job {i}", "section": ("admin", "games", "web")[i % 3]} for i in range(n)]
    for column, values in columns.items():
        for row, value in zip(rows, values):
            row[column] = value
    return rows


def classifier_cases() -> list[BadInput]:
    """The classifier task's own cases (`--task classifier`)."""
    def case(name, filename, content, expect, mapping=TEXTS):
        return BadInput(name, filename, content, expect, mapping=mapping, settings=CLASSIFIER)

    def with_section(row: int, value, n: int = ROWS) -> list[dict]:
        rows = section_rows(n)
        rows[row - 1]["section"] = value
        return rows

    return [
        case("classifier-one-class", "texts.csv", csv_bytes(section_rows(section=["games"] * ROWS)),
             ("texts.csv", "'section'", "'games'", "at least two classes")),
        case("classifier-float-labels", "texts.jsonl", jsonl_bytes(with_section(4, 0.7)),
             ("texts.jsonl", "row 4", "'section'", "fraction, not a class")),
        case("classifier-empty-text", "texts.csv", csv_bytes(section_rows(body=[*["a tool"] * 6, "", *["x"] * 5])),
             ("texts.csv", "row 7", "'body'", "empty value")),
        case("classifier-empty-label", "texts.json", json_bytes(with_section(3, None)),
             ("texts.json", "row 3", "'section'", "empty label")),
        case("classifier-list-label", "texts.jsonl", jsonl_bytes(with_section(5, ["games", "web"])),
             ("texts.jsonl", "row 5", "'section'", "not a class")),
        case("classifier-number-as-text", "texts.json", json_bytes(section_rows(body=[f"t {i}" for i in range(11)] + [7])),
             ("texts.json", "row 12", "'body'", "not text")),
        case("classifier-label-looks-like-ids", "texts.csv", csv_bytes(section_rows(section=list(range(ROWS)))),
             ("texts.csv", "'section'", "12 different labels", "not a class")),
        case("classifier-label-column-missing", "texts.csv", csv_bytes(section_rows()),
             ("texts.csv", "'category'", "not found"), mapping={"text": "body", "label": "category"}),
        case("classifier-no-label-mapped", "texts.csv", csv_bytes(section_rows()), ("texts.csv", "label", "class"),
             mapping={"text": "body"}),
        case("classifier-text-pair-is-text", "pairs.csv", csv_bytes(section_rows()),
             ("pairs.csv", "'body'", "mapped to both"), mapping={**TEXTS, "text_pair": "body"}),
        case("classifier-too-few-rows", "texts.csv", csv_bytes(section_rows(5)), ("texts.csv", "5 usable rows")),
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/bad_inputs.py OUT_DIR")
    for case in cases():
        print(case.write(Path(sys.argv[1])))


RERANKER = {"task": "reranker"}


def reranker_cases() -> list[BadInput]:
    """Data a reranker refuses (run settings task=reranker) beyond what every task refuses (`cases`):
    tests/test_reranker.py sends them through the CLI, tests/test_bad_inputs.py through the studio."""
    good = qa_rows()
    unrelated = [f"unrelated text {i}" for i in range(ROWS)]
    return [
        BadInput("reranker-positive-is-its-query", "pairs.csv", csv_bytes(with_value("answer", 4, good[3]["question"])),
                 ("pairs.csv", "row 4", "'answer'", "same text as its query"), settings=RERANKER),
        BadInput("reranker-negative-is-the-positive", "triplets.csv",
                 csv_bytes(with_value("negative", 6, good[5]["answer"], negative=unrelated)),
                 ("triplets.csv", "row 6", "'negative'", "same text as the positive"), settings=RERANKER),
        BadInput("reranker-empty-positive", "pairs.csv", csv_bytes(with_value("answer", 2, "")),
                 ("pairs.csv", "row 2", "'answer'", "empty value"), settings=RERANKER),
        BadInput("reranker-label-not-binary", "judged.csv", csv_bytes(qa_rows(label=labels({7: 2}))),
                 ("judged.csv", "row 7", "'label'", "not 0 or 1"), settings=RERANKER),
        BadInput("reranker-one-label-only", "judged.csv", csv_bytes(qa_rows(label=[1] * ROWS)),
                 ("judged.csv", "every label", "relevant (1) and not relevant (0)"), settings=RERANKER),
        BadInput("reranker-score-above-one", "graded.csv", csv_bytes(qa_rows(score=scores({3: 1.5}))),
                 ("graded.csv", "row 3", "'score'", "outside 0 to 1"), settings=RERANKER),
        BadInput("reranker-loss-does-not-fit", "judged.csv", csv_bytes(qa_rows(label=labels({}))),
                 ("judged.csv", "MultipleNegativesRankingLoss does not train a reranker on a label column"),
                 settings={**RERANKER, "loss": "MultipleNegativesRankingLoss"}),
    ]
