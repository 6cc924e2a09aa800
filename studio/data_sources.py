"""Where a run's data comes from (one of the bundled samples, an uploaded or local file, a Hugging Face
dataset) and how the studio puts a copy of it into the run folder.

Every run trains on RUN_DIR/data/train.jsonl and is scored on RUN_DIR/data/eval.jsonl, written here
with the user's column names: the run is reproducible on its own, Compare searches exactly the
held-out split the worker evaluated, and an upload may be cleaned away later without breaking it.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from engine import data as data_layer
from engine.data import DataError
from studio.settings import ASSETS_DIR, REPO_ROOT, Settings, looks_like_path

# The bundled samples, each a folder of assets/ with its own train.jsonl and test.jsonl (see their README.md):
# vera-pairs (acronym -> what it stands for) is one the base model does poorly on and learns fast, so the demo
# preset visibly teaches in a minute on a CPU; debian-pairs (package synopsis -> description) is the larger,
# which the base model already does well on; debian-sections (package description -> its archive section) is the
# classifier's. A typed source or the API names them "demo", "sample" and "sections" ("sample" was the Debian
# pairs before the demo sample came).
SAMPLE_NAMES = {"sample": "debian-pairs", "demo": "vera-pairs", "sections": "debian-sections"}
DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
MB = 1024 * 1024
RUN_SOURCE = "source.json"  # in a run folder: the DataSource and column mapping the user picked


@dataclass(frozen=True)
class DataSource:
    kind: str  # "sample", "file" or "hub"
    location: str = ""  # the sample's folder (a value of SAMPLE_NAMES), the file's path, or the dataset id
    config: str | None = None
    split: str | None = None
    rows: int | None = None  # a sample's first rows only (a preset that must finish in a minute); None: all

    @property
    def label(self) -> str:
        """How a user names this source, and what `lacker train --data` takes (for a sample's first rows, a run
        writes those rows to a file of its own: `shown_data`)."""
        if self.kind == "sample":
            return _shown_path(self.sample_file("train"))
        return self.location

    @property
    def name(self) -> str:
        """How the page names this source: a file by its base name (the studio's folders are not the user's
        business), a dataset by its id."""
        if self.kind == "file":
            return Path(self.location).name
        return self.label + (f" (its first {self.rows:,} rows)" if self.rows else "")

    @property
    def card_name(self) -> str:
        """How the model card names this source (the run trains on its copy in the run folder, whose name says
        nothing): a file by its base name, a dataset by its id, a sample by its folder."""
        if self.kind != "sample":
            return self.name
        first = f"the first {self.rows:,} training rows of " if self.rows else ""
        return f"{first}{self.location} (a sample bundled with Lacker Studio)"

    @property
    def eval_label(self) -> str | None:
        return _shown_path(self.sample_file("test")) if self.kind == "sample" else None

    def sample_file(self, split: str) -> Path:
        """The bundled sample's train.jsonl or test.jsonl."""
        return ASSETS_DIR / self.location / f"{split}.jsonl"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "DataSource | None":
        return cls(**values) if values else None


def _shown_path(path: Path) -> str:
    """A bundled file as a command names it: relative in a checkout, absolute when installed from a wheel."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


SAMPLE = DataSource("sample", "debian-pairs")
DEMO_SAMPLE = DataSource("sample", "vera-pairs")
SECTIONS_SAMPLE = DataSource("sample", "debian-sections")
SAMPLE_TRAIN = SAMPLE.sample_file("train")


def source_from_text(text: str, settings: Settings, config: str | None = None, split: str | None = None) -> DataSource:
    """"sample" (the Debian pairs), "demo" (the acronym pairs) or "sections" (the Debian sections), a local file inside the allowed folders, or a
    Hugging Face dataset id."""
    text = (text or "").strip()
    if not text:
        raise DataError("give a file path or a Hugging Face dataset id (for example sentence-transformers/natural-questions)")
    if text.lower() in SAMPLE_NAMES:
        return DataSource("sample", SAMPLE_NAMES[text.lower()])
    if looks_like_path(text) or Path(text).suffix.lower() in DATA_SUFFIXES:
        resolved = settings.check_local_path(text)  # first: what exists outside the allowed folders stays unsaid
        if resolved.is_dir():
            raise DataError(f"{text} is a folder; give a CSV, TSV, JSON, JSONL or Parquet file inside it")
        if not resolved.exists():
            raise DataError(f"{text}: no such file. Upload it, or give the path of a file on the studio's machine")
        return DataSource("file", str(resolved))
    return DataSource("hub", text, config or None, split or None)


def source_from_upload(upload_path: str, settings: Settings) -> DataSource:
    """Check the size of an uploaded file and keep a copy under the runs home (Gradio's copy is temporary)."""
    path = Path(upload_path)
    size = path.stat().st_size
    limit = settings.max_upload_mb * MB
    name = path.name
    if size > limit:
        raise DataError(f"{name} is {size / MB:.0f} MB; this studio accepts uploads up to {settings.max_upload_mb} MB "
                        "(LACKER_MAX_UPLOAD_MB). Upload a smaller file or use a Hugging Face dataset id.")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise DataError(f"{name}: unsupported file type {path.suffix or '(none)'}; "
                        f"upload one of {', '.join(DATA_SUFFIXES)}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    target = settings.uploads_dir / digest / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return DataSource("file", str(target))


def read_source(source: DataSource, settings: Settings):
    """The source's rows as a DataFrame (cached: the Data tab re-validates on every mapping change)."""
    if source.kind == "file":
        settings.check_local_path(source.location)
        mtime = Path(source.location).stat().st_mtime
        return _read_cached(source, mtime, settings.max_upload_mb * MB)
    return _read_cached(source, None, None)


@lru_cache(maxsize=4)
def _read_cached(source: DataSource, mtime: float | None, max_bytes: int | None):
    if source.kind == "sample":
        table = data_layer.read_table(source.sample_file("train"))
        return table.head(source.rows) if source.rows else table
    return data_layer.read_table(source.location, config=source.config, split=source.split, max_bytes=max_bytes)


def held_out_frame(source: DataSource):
    """The sample's own test split; None for other sources (the held-out rows are split off the data)."""
    return data_layer.read_table(source.sample_file("test")) if source.kind == "sample" else None


def sample_held_out_size(eval_size: float, train_rows: int, test_rows: int) -> int:
    """How many queries (a classifier: texts) of the sample's test split a run holds out: the held-out fraction of
    all the sample's rows (as for any other source), at most the whole split. The training rows stay the sample's
    training split, so a held-out query is never one trained on."""
    wanted = eval_size if eval_size >= 1 else round(eval_size * (train_rows + test_rows))
    return max(1, min(int(wanted), test_rows))


@dataclass(frozen=True)
class HeldOut:
    train_rows: int
    held_out_rows: int  # the held-out queries, for a pair sample (a query a row); a classifier's texts
    note: str  # what the page says about it


def held_out_split(source: DataSource, settings: Settings, eval_size: float, task: str = "embedding") -> HeldOut:
    """How many rows a run of `task` on `source` trains on and holds out at this held-out fraction, and the page's
    words for it. The sample keeps its own test split (never trained on): the fraction picks how many of its rows."""
    rows = len(read_source(source, settings))
    test = held_out_frame(source)
    texts = task == "classifier"
    unit, whole = ("texts", "rows") if texts else ("queries", "pairs")
    if test is not None:
        held = sample_held_out_size(eval_size, rows, len(test))
        asked = round(eval_size * (rows + len(test)))
        capped = (f" The slider asks for {asked:,} ({eval_size:.0%} of its {rows + len(test):,} {whole}): that is "
                  f"capped at the whole test split." if asked > len(test) else "")
        return HeldOut(rows, held, f"Held out for evaluation: **{held:,} of the sample's {len(test):,} test {unit}** "
                                   f"({eval_size:.0%} of all its {whole}; the sample's own test split, never trained "
                                   f"on). Training uses its {rows:,} training {whole}.{capped}")
    held = max(1, round(eval_size * rows))
    kept_together = "each label keeps its share on both sides" if texts else "all rows of one query stay on one side"
    return HeldOut(rows - held, held, f"Held out for evaluation: **about {held:,} of the {rows:,} rows** "
                                      f"({eval_size:.0%}; {kept_together}); training uses the other {rows - held:,}.")


SOURCE_EVAL = "eval-source.jsonl"  # a sample run's held-out part, in the sample's column names
SOURCE_TRAIN = "train-source.jsonl"  # the rows a run on a sample's first rows trains on, in the sample's column names


def write_run_data(run_dir: Path, source: DataSource, settings: Settings, mapping: dict, eval_size: float,
                   seed: int, task: str = "embedding") -> dict:
    """Write RUN_DIR/data/{train,eval}.jsonl with the mapped columns named by role (the task's `prepare`, split by
    the task's `split`); returns the config keys that point the worker at them."""
    from engine.tasks import task_module

    steps = task_module(task)
    table = steps.prepare(read_source(source, settings), mapping)
    held_out = held_out_frame(source)
    folder = run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if held_out is None:
        table, held_out = steps.split(table, eval_size, seed)
    else:
        source_rows = held_out
        if "anchor" in mapping:  # every row of a held-out query: a pair task's split keeps a query's rows together
            column = source_rows[mapping["anchor"]].astype(str).str.strip()
            queries = column.drop_duplicates()
            kept = queries.sample(frac=1.0, random_state=seed).head(sample_held_out_size(eval_size, len(table),
                                                                                         len(queries)))
            in_source = source_rows[column.isin(kept)]
        else:
            in_source = source_rows.sample(n=sample_held_out_size(eval_size, len(table), len(source_rows)),
                                           random_state=seed).sort_index()
        held_out = steps.prepare(in_source, mapping)
        # the same rows in the sample's own column names: what the run's shell command holds out (its --columns
        # name those)
        in_source.to_json(folder / SOURCE_EVAL, orient="records", lines=True, force_ascii=False)
        if source.rows:
            read_source(source, settings).to_json(folder / SOURCE_TRAIN, orient="records", lines=True,
                                                  force_ascii=False)
    table.to_json(folder / "train.jsonl", orient="records", lines=True, force_ascii=False)
    held_out.to_json(folder / "eval.jsonl", orient="records", lines=True, force_ascii=False)
    columns = {role: role for role in ("anchor", "positive", "score", "label", "text", "text_pair")
               if role in table.columns}
    negatives = [c for c in table.columns if c.startswith("negative")]
    if negatives:
        columns["negative"] = negatives
    return {"data": str(folder / "train.jsonl"), "eval_data": str(folder / "eval.jsonl"),
            "data_config": None, "data_split": None, "columns": columns}


def shown_data(source: DataSource, overrides: dict) -> str:
    """The training file a shell command names for a run: the source as the user named it, or the run's copy of a
    sample's first rows."""
    return str(Path(overrides["data"]).parent / SOURCE_TRAIN) if source.rows else source.label


def shown_eval_data(source: DataSource, overrides: dict) -> str | None:
    """The held-out file a shell command names for a run: the sample's test split when the run holds all of it
    out, else the run's own copy of the part it holds out; None where the command splits --eval-size off."""
    if source.eval_label is None:
        return None
    whole = len(held_out_frame(source))
    return source.eval_label if len(read_run_eval(Path(overrides["eval_data"]).parent.parent)) == whole \
        else str(Path(overrides["eval_data"]).parent / SOURCE_EVAL)


def read_run_eval(run_dir: str | Path):
    """The held-out rows a run was scored on."""
    return data_layer.read_table(str(Path(run_dir) / "data" / "eval.jsonl"))
