"""Build the bundled sample: (synopsis, long description) pairs from Debian's package descriptions.

    python assets/build_debian_pairs.py            # reads /var/lib/apt/lists/*i18n_Translation-en*
    python assets/build_debian_pairs.py --lists DIR --out assets/debian-pairs

A query is a package's one-line synopsis ("Real-time strategy game of ancient warfare"); its
document is the long description, unwrapped into one line of plain text. Package families share
boilerplate (Haskell libraries, debug symbols, Qt modules, cross compilers, ...), so a description
whose most common sentence is shared by many others counts as that sentence's template, and only a
few of each template are kept. The output depends only on the input lists and the seed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

SEED = 42
TRAIN_ROWS = 4000
TEST_ROWS = 500
MIN_DOCUMENT_CHARS = 80
MAX_DOCUMENT_CHARS = 1000
TEMPLATE_MIN_SHARE = 8  # a sentence found in this many descriptions is boilerplate
PER_TEMPLATE = 3  # descriptions kept per boilerplate sentence or synopsis template

# Synopsis templates that the sentence rule misses, because the package name is inside the sentence.
SYNOPSIS_TEMPLATES = {
    "debug symbols": re.compile(r"debug(ging)? symbols|-dbg(sym)?\b", re.I),
    "transitional": re.compile(r"transitional|dummy package", re.I),
    "documentation": re.compile(r"documentation|\bdocs\b|\bmanual\b", re.I),
    "development files": re.compile(r"development (files|headers|package)|header files|\(dev\)", re.I),
    "metapackage": re.compile(r"meta-?package", re.I),
    "translations": re.compile(r"translations?\b|language (pack|files)|localization|l10n", re.I),
    "rust crate": re.compile(r"rust crate|- rust source code", re.I),
    "go library": re.compile(r"\bgo(lang)? (library|package)", re.I),
    "node module": re.compile(r"node\.?js|\bnode module", re.I),
    "perl module": re.compile(r"perl (module|extension|interface)", re.I),
    "r package": re.compile(r"\bGNU R\b|\bR package\b", re.I),
    "python module": re.compile(r"python 3 (module|library|bindings|interface)|\(python 3\)", re.I),
}

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def read_lists(lists_dir: Path) -> str:
    """Decompressed text of every English translation list in `lists_dir` (apt stores them lz4'd)."""
    files = sorted(lists_dir.glob("*i18n_Translation-en*"))
    files = [f for f in files if not f.name.endswith(".diff_Index")]
    if not files:
        raise SystemExit(
            f"no *i18n_Translation-en* files in {lists_dir}; run: apt-get update -o Acquire::Languages=en"
        )
    return "\n\n".join(lz4_text(f) for f in files)


def lz4_text(path: Path) -> str:
    """The text of one apt list, which apt stores lz4'd or plain."""
    if path.suffix != ".lz4":
        return path.read_text(encoding="utf-8")
    lz4cat = shutil.which("lz4cat")
    # apt-helper ships with apt itself, so it works where Debian's lz4 is not installed.
    cmd = [lz4cat, str(path)] if lz4cat else ["/usr/lib/apt/apt-helper", "cat-file", str(path)]
    return subprocess.run(cmd, check=True, capture_output=True).stdout.decode("utf-8")


def parse_descriptions(text: str) -> dict[str, tuple[str, str]]:
    """package -> (synopsis, long description as one line). The first list that names a package wins."""
    packages: dict[str, tuple[str, str]] = {}
    for stanza in text.split("\n\n"):
        package = synopsis = None
        paragraphs: list[list[str]] = [[]]
        for line in stanza.splitlines():
            if line.startswith("Package: "):
                package = line[len("Package: "):].strip()
            elif line.startswith("Description-en: "):
                synopsis = line[len("Description-en: "):].strip()
            elif line.startswith(" ") and synopsis is not None:
                # Debian's format: " ." is an empty line between paragraphs; other lines are wrapped text.
                if line.strip() == ".":
                    paragraphs.append([])
                else:
                    paragraphs[-1].append(line.strip())
        if package and synopsis and package not in packages:
            document = " ".join(" ".join(p) for p in paragraphs if p)
            packages[package] = (synopsis.rstrip("."), re.sub(r"\s+", " ", document).strip())
    return packages


def is_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) >= 0.97 * len(letters)


def shorten(document: str) -> str:
    """Cut to MAX_DOCUMENT_CHARS at the last sentence end (or word end) that fits."""
    if len(document) <= MAX_DOCUMENT_CHARS:
        return document
    head = document[: MAX_DOCUMENT_CHARS + 1]
    ends = [m.start() for m in SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= MAX_DOCUMENT_CHARS // 2:
        return head[: ends[-1]].strip()
    return head[: head.rfind(" ")].strip()


def template_of(synopsis: str, sentences: list[str], sentence_share: Counter) -> str | None:
    for name, pattern in SYNOPSIS_TEMPLATES.items():
        if pattern.search(synopsis):
            return name
    shared = max(sentences, key=lambda s: sentence_share[s], default=None)
    if shared is not None and sentence_share[shared] >= TEMPLATE_MIN_SHARE:
        return shared
    return None


def build_pairs(packages: dict[str, tuple[str, str]], seed: int = SEED) -> list[dict]:
    candidates = []
    for package, (synopsis, document) in sorted(packages.items()):
        if len(document) < MIN_DOCUMENT_CHARS or len(synopsis.split()) < 2:
            continue
        if not (is_english(synopsis) and is_english(document)):
            continue
        sentences = [s.lower() for s in SENTENCE_END.split(document)]
        candidates.append((package, synopsis, document, sentences))

    sentence_share = Counter(s for *_, sentences in candidates for s in set(sentences))
    random.Random(seed).shuffle(candidates)

    pairs, seen, per_template = [], set(), Counter()
    for package, synopsis, document, sentences in candidates:
        # Packages of one source often share the opening sentence: keep one of them.
        keys = {("query", synopsis.lower()), ("document", document), ("opening", sentences[0])}
        if keys & seen:
            continue
        template = template_of(synopsis, sentences, sentence_share)
        if template is not None and per_template[template] >= PER_TEMPLATE:
            continue
        seen |= keys
        per_template[template] += 1
        pairs.append({"package": package, "query": synopsis, "document": shorten(document)})
        if len(pairs) == TRAIN_ROWS + TEST_ROWS:
            break
    if len(pairs) < TRAIN_ROWS + TEST_ROWS:
        raise SystemExit(f"only {len(pairs)} pairs passed the filters; need {TRAIN_ROWS + TEST_ROWS}")
    return pairs


def write_jsonl(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lists", type=Path, default=Path("/var/lib/apt/lists"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "debian-pairs")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    pairs = build_pairs(parse_descriptions(read_lists(args.lists)), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(pairs[:TRAIN_ROWS], args.out / "train.jsonl")
    write_jsonl(pairs[TRAIN_ROWS:], args.out / "test.jsonl")
    print(f"wrote {TRAIN_ROWS} train and {TEST_ROWS} test pairs to {args.out}")


if __name__ == "__main__":
    main()
