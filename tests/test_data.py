"""The data layer: reading each format, guessing and parsing column roles, validation errors that
name the file, row, column and fix, preparing, splitting, and the bundled Debian sample."""

import json

import pandas as pd
import pytest

from engine.data import (
    LOSSES,
    MIN_ROWS,
    DataError,
    MappingError,
    column_guess,
    default_loss,
    guess_columns,
    load_sample,
    parse_column_spec,
    prepare,
    read_table,
    split,
    task_for,
    to_dataset,
    validate,
)

PAIRS = {"anchor": "question", "positive": "answer"}


def qa(n=10):
    return pd.DataFrame({"question": [f"question {i}" for i in range(n)],
                         "answer": [f"answer number {i}" for i in range(n)]})


def error(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


# Reading

@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_each_format_reads_the_same_table(tmp_path, suffix):
    df = qa(3)
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(df.to_dict("records")))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")) + "\n\n")
    else:
        df.to_parquet(path)
    got = read_table(path)
    assert got.columns.tolist() == ["question", "answer"]
    assert got["answer"].tolist() == ["answer number 0", "answer number 1", "answer number 2"]


def test_json_file_may_hold_json_lines(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"q": "a", "d": "b"}\n{"q": "c", "d": "d"}\n')
    assert read_table(str(path))["q"].tolist() == ["a", "c"]


def test_a_dataframe_is_copied():
    df = qa(3)
    got = read_table(df)
    got.loc[0, "question"] = "changed"
    assert df.loc[0, "question"] == "question 0"


def test_read_errors_name_the_file_and_the_fix(tmp_path):
    xlsx = tmp_path / "data.xlsx"
    xlsx.write_bytes(b"PK")
    assert error(read_table, xlsx) == "data.xlsx: unknown file type '.xlsx'. Save it as .csv, .tsv, .json, .jsonl, .parquet."

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    message = error(read_table, broken)
    assert message.startswith("broken.parquet could not be read as PARQUET") and "valid PARQUET file" in message

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"q": "a"}\n{"q": "b",\n')
    assert error(read_table, jsonl).startswith("data.jsonl, line 2: the JSON stops before it is complete")

    array = tmp_path / "data.json"
    array.write_text('[{"q": "a"}, "b"]')
    assert error(read_table, array).startswith("data.json, item 2: expected an object")

    big = tmp_path / "big.csv"
    big.write_text("q,d\n" + "a,b\n" * 499)  # 2,000 bytes
    assert error(read_table, big, max_bytes=100) == (
        "big.csv is 2.0 kB, over the 100 bytes limit. Pass a smaller file, for example a sample of its rows.")
    assert len(read_table(big, max_bytes=2000)) == 499

    header_only = tmp_path / "header.csv"
    header_only.write_text("question,answer\n")
    assert error(read_table, header_only) == f"header.csv has no rows. Pass a table with a header and at least {MIN_ROWS} rows."

    blank = tmp_path / "blank.csv"
    blank.write_text("")
    assert error(read_table, blank) == "blank.csv is empty. Add a header line and rows."

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("q,d\ncaf\xe9,b\n".encode("latin-1"))
    assert error(read_table, latin1) == "latin1.csv is not UTF-8 text. Save it with UTF-8 encoding."

    assert error(read_table, tmp_path / "missing.csv").startswith("file not found:")
    assert error(read_table, tmp_path).endswith("is a folder; pass one .csv, .tsv, .json, .jsonl, .parquet file in it.")


def test_hub_dataset_offline_says_to_pass_a_local_file(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    message = error(read_table, "lacker-tests/no-such-dataset", config="pair")
    assert "'lacker-tests/no-such-dataset' is not available offline" in message
    assert "Pass a local .csv, .tsv, .json, .jsonl or .parquet file instead." in message


# Roles

@pytest.mark.parametrize("columns, expected", [
    (["Query", "Document"], {"anchor": "Query", "positive": "Document"}),
    (["id", "question", "answer"], {"anchor": "question", "positive": "answer"}),
    (["sentence1", "sentence2", "score"], {"anchor": "sentence1", "positive": "sentence2", "score": "score"}),
    (["premise", "hypothesis", "label"], {"anchor": "premise", "positive": "hypothesis", "label": "label"}),
    (["anchor", "positive", "negative_1", "negative_2", "hard_negative"],
     {"anchor": "anchor", "positive": "positive", "negative": ["negative_1", "negative_2", "hard_negative"]}),
    (["title", "text"], {"anchor": "title", "positive": "text"}),
    (["Sentence A", "sentence-b", "Similarity"], {"anchor": "Sentence A", "positive": "sentence-b", "score": "Similarity"}),
    (["question", "reply", "neg"], {"anchor": "question", "positive": "reply", "negative": ["neg"]}),
    (["left", "right"], {"anchor": "left", "positive": "right"}),
    (["a", "b", "c"], {}),
])
def test_guess_columns_from_common_names(columns, expected):
    assert guess_columns(columns) == expected


def test_guess_columns_takes_unknown_names_in_order_only_in_a_two_column_table():
    two = pd.DataFrame({"left": ["a", "b"], "right": ["c", "d"]})
    guess = column_guess(two)
    assert guess.mapping == {"anchor": "left", "positive": "right"}
    assert guess.describe() == ("anchor: left (the first of the only two columns); "
                                "positive: right (the second of the only two columns)")
    # With more columns, position says nothing about which text is the query: nothing is guessed.
    df = pd.DataFrame({"id": [1, 2], "left": ["a", "b"], "rating": [0.5, 0.1], "right": ["c", "d"]})
    assert guess_columns(df) == {"score": "rating"}
    assert guess_columns(pd.DataFrame({"id": [1, 2], "text": ["a", "b"]})) == {"anchor": "text"}


@pytest.mark.parametrize("columns, expected", [
    (["ticket_id", "answer_text", "section", "question_text"], {"anchor": "question_text", "positive": "answer_text"}),
    (["QuestionText", "AnswerText"], {"anchor": "QuestionText", "positive": "AnswerText"}),
    (["Q", "A"], {"anchor": "Q", "positive": "A"}),
    (["id", "a", "b"], {}),
    (["Title", "Body"], {"anchor": "Title", "positive": "Body"}),
    (["text", "summary"], {"anchor": "text", "positive": "summary"}),
    (["summary", "text"], {"anchor": "text", "positive": "summary"}),
    (["prompt", "response"], {"anchor": "prompt", "positive": "response"}),
    (["PROMPT-TEXT", "Response Text"], {"anchor": "PROMPT-TEXT", "positive": "Response Text"}),
    (["text_a", "text_b"], {"anchor": "text_a", "positive": "text_b"}),
    (["Text 1", "Text 2", "score"], {"anchor": "Text 1", "positive": "Text 2", "score": "score"}),
])
def test_guess_columns_reads_names_as_people_write_them(columns, expected):
    assert guess_columns(columns) == expected


def test_the_guess_says_why_it_picked_each_column():
    guess = column_guess(["ticket_id", "answer_text", "section", "question_text", "score"])
    assert guess.describe() == ('anchor: question_text (reads as "question"); positive: answer_text '
                                '(reads as "answer"); score: score (its name)')


def test_parse_column_spec():
    assert parse_column_spec("anchor=q, positive = d,negative=n1,negative=n2,score=s") == {
        "anchor": "q", "positive": "d", "negative": ["n1", "n2"], "score": "s"}
    assert error(parse_column_spec, "anchor:q,positive=d") == (
        "column spec 'anchor:q,positive=d': 'anchor:q' is not role=column. "
        "Write role=column pairs separated by commas, e.g. anchor=question,positive=answer.")
    assert error(parse_column_spec, "query=q,positive=d") == (
        "column spec 'query=q,positive=d': unknown role 'query'. Roles are: anchor, positive, negative, score, label, text, text_pair.")
    assert "role 'anchor' is given twice" in error(parse_column_spec, "anchor=q,anchor=d")


def test_task_and_default_loss_per_mapping():
    binary = pd.DataFrame({"a": ["x", "y"], "b": ["u", "v"], "label": [0, 1]})
    three_classes = pd.DataFrame({"a": ["x", "y", "z"], "b": ["u", "v", "w"], "label": [0, 1, 2]})
    cases = [
        ({"anchor": "a", "positive": "b"}, None, "pairs", "MultipleNegativesRankingLoss"),
        ({"anchor": "a", "positive": "b", "negative": ["n"]}, None, "triplets", "MultipleNegativesRankingLoss"),
        ({"anchor": "a", "positive": "b", "score": "s"}, None, "scored-pairs", "CoSENTLoss"),
        ({"anchor": "a", "positive": "b", "label": "label"}, binary, "labelled-pairs", "OnlineContrastiveLoss"),
        ({"anchor": "a", "positive": "b", "label": "label"}, three_classes, "labelled-pairs", "SoftmaxLoss"),
    ]
    for mapping, df, task, loss in cases:
        assert task_for(mapping) == task
        assert default_loss(mapping, df) == loss
        assert loss in LOSSES[task]
    assert "CachedMultipleNegativesRankingLoss" in LOSSES["pairs"]
    assert "CachedMultipleNegativesRankingLoss" in LOSSES["triplets"]
    assert error(task_for, {"anchor": "a"}).startswith("no column is mapped to positive. Map both anchor (the query) "
                                                       "and positive")
    assert "cannot be combined" in error(task_for, {"anchor": "a", "positive": "b", "score": "s", "label": "l"})


# Validation

def test_missing_column_lists_the_real_ones_and_a_mapping_to_pass():
    df = qa()
    with pytest.raises(MappingError) as caught:
        validate(df, {"anchor": "question", "positive": "positive"}, "data.csv")
    assert str(caught.value) == "column 'positive' not found in data.csv; columns are: question, answer."
    assert caught.value.fix == "pass --columns anchor=question,positive=answer"  # the CLI's fix line, not the page's
    assert error(validate, df, {"anchor": "question", "positive": "reply"}, "data.csv").startswith(
        "column 'reply' (for positive) not found in data.csv")
    assert error(validate, df, {"anchor": "question"}, "data.csv").startswith(
        "no column of data.csv is mapped to positive; columns are: question, answer.")


@pytest.mark.parametrize("column, value, message", [
    ("answer", "   ", "data.csv, row 17, column 'answer': empty value. Fill it in or drop the row."),
    ("answer", None, "data.csv, row 17, column 'answer': empty value. Fill it in or drop the row."),
    ("question", 42, "data.csv, row 17, column 'question': not text (42, a number). Make it text or drop the row."),
])
def test_bad_text_names_the_row_and_column(column, value, message):
    df = qa(20).astype(object)
    df.loc[16, column] = value
    df.loc[18, column] = value  # only the first offending row is reported
    assert error(validate, df, PAIRS, "data.csv") == message


def test_bad_scores_and_labels_name_the_row():
    scored = qa().assign(score=[0.5] * 9 + ["high"])
    assert error(validate, scored, {**PAIRS, "score": "score"}, "sts.csv") == (
        "sts.csv, row 10, column 'score': 'high' is not a number. Scores are numbers, e.g. 0.8: fix it or drop the row.")
    scored.loc[2, "score"] = float("nan")
    assert error(validate, scored, {**PAIRS, "score": "score"}, "sts.csv") == (
        "sts.csv, row 3, column 'score': empty score. Fill it in or drop the row.")
    labelled = qa().assign(label=[0, 1] * 4 + [1.5, 0])
    assert error(validate, labelled, {**PAIRS, "label": "label"}, "nli.csv") == (
        "nli.csv, row 9, column 'label': 1.5 is not an integer. "
        "Labels are integer classes (0, 1, ...): number text labels or drop the row.")
    labelled["label"] = ["yes"] * 10
    assert error(validate, labelled, {**PAIRS, "label": "label"}, "nli.csv").startswith(
        "nli.csv, row 1, column 'label': 'yes' is not an integer.")


def test_too_few_rows_and_identical_rows():
    assert error(validate, qa(MIN_ROWS - 1), PAIRS, "tiny.csv") == (
        f"tiny.csv has {MIN_ROWS - 1} rows; training needs at least {MIN_ROWS}. Add rows.")
    copies = pd.concat([qa(5)] * 2, ignore_index=True)
    assert error(validate, copies, PAIRS, "copies.csv") == (
        f"copies.csv has 5 usable rows (10 less 5 exact copies); training needs at least {MIN_ROWS}. Add rows.")
    same = pd.DataFrame({"question": ["what is lz4?"] * 20, "answer": ["a compressor"] * 20})
    assert error(validate, same, PAIRS, "same.csv") == (
        "same.csv: every anchor (column 'question') is the same text, 'what is lz4?'. Check the column mapping.")


def test_duplicates_are_a_warning_not_an_error():
    df = pd.concat([qa(10), qa(3)], ignore_index=True)
    df.loc[12, "answer"] = "  answer number 2 "  # same pair once whitespace is stripped
    summary = validate(df, PAIRS, "data.csv")
    assert summary.duplicates == 3
    assert summary.rows == 10
    assert summary.warnings == [
        "data.csv: 3 rows repeat an earlier (anchor, positive) pair; 3 exact copies are dropped before training."]


def test_summary_is_json_and_counts_what_the_studio_shows():
    df = qa(10).assign(neg=[f"unrelated {i}" for i in range(10)])
    summary = validate(df, {**PAIRS, "negative": "neg"}, "data.csv")
    restored = json.loads(json.dumps(summary.to_dict()))
    assert restored["task"] == "triplets" and restored["loss"] == "MultipleNegativesRankingLoss"
    assert restored["rows"] == 10 and restored["warnings"] == []
    assert restored["columns"] == {"anchor": "question", "positive": "answer", "negative": ["neg"]}
    assert restored["empty_values"] == {"question": 0, "answer": 0, "neg": 0}
    assert restored["text_lengths"]["anchor"] == [len(q) for q in df["question"]]
    assert restored["text_lengths"]["negative"] == [len(n) for n in df["neg"]]


# Prepare, split, datasets

def test_prepare_names_and_orders_columns_as_sentence_transformers_reads_them():
    df = pd.DataFrame({"n2": ["c", "c"], "q": [" a ", "a"], "d": ["b", "b "], "n1": ["x", "x"]})
    out = prepare(df, {"anchor": "q", "positive": "d", "negative": ["n1", "n2"]})
    assert out.to_dict("records") == [{"anchor": "a", "positive": "b", "negative": "x", "negative_2": "c"}]

    scored = prepare(qa(3).assign(sim=["1", 0, 0.5]), {**PAIRS, "score": "sim"})
    assert scored.columns.tolist() == ["anchor", "positive", "score"]
    assert scored["score"].tolist() == [1.0, 0.0, 0.5]
    labelled = prepare(qa(2).assign(label=[1.0, 0.0]), {**PAIRS, "label": "label"})
    assert labelled["label"].tolist() == [1, 0] and labelled["label"].dtype.kind == "i"


def test_split_is_deterministic_and_keeps_an_anchors_rows_together():
    df = pd.DataFrame({"anchor": [f"q{i // 3}" for i in range(60)], "positive": [f"d{i}" for i in range(60)]})
    train, eval_ = split(df, eval_size=0.2, seed=7)
    again_train, again_eval = split(df, eval_size=0.2, seed=7)
    pd.testing.assert_frame_equal(train, again_train)
    pd.testing.assert_frame_equal(eval_, again_eval)
    assert len(eval_) == 12 and len(train) == 48
    assert not set(train["anchor"]) & set(eval_["anchor"])
    assert split(df, eval_size=0.2, seed=8)[1]["anchor"].tolist() != eval_["anchor"].tolist()
    assert len(split(df, eval_size=5)[1]) == 6  # whole groups of 3: rounds up to 6


def test_split_errors_say_how_many_rows_there_are():
    df = prepare(qa(9), PAIRS)
    assert error(split, df, 0.5) == (
        f"cannot split 9 rows with eval_size=0.5: train would keep 5 rows and needs at least {MIN_ROWS}. "
        "Add rows, lower eval_size, or pass a separate eval file.")
    assert error(split, df, 1.5).startswith("eval_size=1.5: pass a fraction between 0 and 1")
    assert error(split, qa(), 0.1).startswith("split() takes a prepared table")


def test_to_dataset_keeps_the_prepared_columns():
    dataset = to_dataset(prepare(qa(3).assign(score=[0.1, 0.2, 0.3]), {**PAIRS, "score": "score"}))
    assert dataset.column_names == ["anchor", "positive", "score"]
    assert dataset[0] == {"anchor": "question 0", "positive": "answer number 0", "score": 0.1}


# The bundled sample

def test_sample_loads_validates_and_keeps_queries_apart():
    train, test = load_sample("train"), load_sample("test")
    assert len(train) >= 3000 and len(test) >= 300
    mapping = guess_columns(train)
    assert mapping == {"anchor": "query", "positive": "document"}
    summary = validate(train, mapping, "debian-pairs/train.jsonl")
    assert summary.rows == len(train) and summary.duplicates == 0
    assert not set(train["query"]) & set(test["query"])
    assert error(load_sample, "validation") == "the sample has splits 'train' and 'test', not 'validation'."
