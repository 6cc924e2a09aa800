"""Build the bundled classifier sample: a Debian package's long description -> its archive section.

    python assets/build_debian_sections.py        # reads /var/lib/apt/lists/*_Packages* and *i18n_Translation-en*
    python assets/build_debian_sections.py --lists DIR --out assets/debian-sections

The section is the `Section:` field of the package lists (admin, devel, games, ...); the text is the long
description from the English translation list, unwrapped as for the retrieval sample (build_debian_pairs.py,
whose reading, cleaning and boilerplate rules this reuses). The output depends only on the lists and the seed.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, defaultdict
from pathlib import Path

from build_debian_pairs import (MIN_DOCUMENT_CHARS, SENTENCE_END, is_english, lz4_text, parse_descriptions,
                                read_lists, shorten, template_of, write_jsonl)

SEED = 42
# Sections a description tells apart by what the software does, not by how it is packaged (the language
# sections such as perl or haskell hold mostly one boilerplate text each).
SECTIONS = ("admin", "devel", "games", "graphics", "libs", "python", "sound", "web")
PER_SECTION = 500  # at most; web has fewer, so the classes are a little imbalanced, as real labels are
TEST_SHARE = 0.12  # of each section, so every label is in the test split
PER_TEMPLATE = 5  # descriptions kept per boilerplate sentence or synopsis template, in each section


def read_sections(lists_dir: Path) -> dict[str, str]:
    """package -> section, from the package lists; the first list that names a package wins."""
    files = sorted(f for f in lists_dir.glob("*_Packages*") if not f.name.endswith(".diff_Index"))
    if not files:
        raise SystemExit(f"no *_Packages files in {lists_dir}; run: apt-get update -o Acquire::Languages=en")
    sections: dict[str, str] = {}
    for f in files:
        for stanza in lz4_text(f).split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines() if line[:1].isalpha() and ": " in line)
            package, section = fields.get("Package"), fields.get("Section")
            if package and section:
                sections.setdefault(package, section.rpartition("/")[2])  # "contrib/net" is net
    return sections


def build_rows(descriptions: dict[str, tuple[str, str]], sections: dict[str, str], seed: int = SEED) -> list[dict]:
    """Up to PER_SECTION rows of each of SECTIONS: {"package", "text", "section"}, in a fixed shuffled order."""
    candidates = []
    for package, (synopsis, document) in sorted(descriptions.items()):
        section = sections.get(package)
        if section not in SECTIONS or len(document) < MIN_DOCUMENT_CHARS or not is_english(document):
            continue
        candidates.append((package, section, synopsis, document, [s.lower() for s in SENTENCE_END.split(document)]))
    sentence_share = Counter(s for *_, sentences in candidates for s in set(sentences))
    random.Random(seed).shuffle(candidates)

    by_section, seen, per_template = defaultdict(list), set(), Counter()
    for package, section, synopsis, document, sentences in candidates:
        keys = {("document", document), ("opening", sentences[0])}  # sibling packages share their opening
        template = template_of(synopsis, sentences, sentence_share)
        if keys & seen or len(by_section[section]) >= PER_SECTION:
            continue
        if template is not None and per_template[section, template] >= PER_TEMPLATE:
            continue
        seen |= keys
        per_template[section, template] += 1
        by_section[section].append({"package": package, "text": shorten(document), "section": section})
    missing = [s for s in SECTIONS if len(by_section[s]) < 100]
    if missing:
        raise SystemExit(f"sections {', '.join(missing)} have fewer than 100 usable descriptions in these lists")
    return [row for section in SECTIONS for row in by_section[section]]


def split_rows(rows: list[dict], seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train, test): TEST_SHARE of each section held out, both shuffled."""
    train, test = [], []
    for section in SECTIONS:
        of_section = [row for row in rows if row["section"] == section]
        held = round(TEST_SHARE * len(of_section))
        test += of_section[:held]
        train += of_section[held:]
    random.Random(seed).shuffle(train)
    random.Random(seed).shuffle(test)
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lists", type=Path, default=Path("/var/lib/apt/lists"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "debian-sections")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    rows = build_rows(parse_descriptions(read_lists(args.lists)), read_sections(args.lists), args.seed)
    train, test = split_rows(rows, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, args.out / "train.jsonl")
    write_jsonl(test, args.out / "test.jsonl")
    counts = Counter(row["section"] for row in rows)
    print(f"wrote {len(train)} train and {len(test)} test rows to {args.out}: "
          + ", ".join(f"{section} {counts[section]}" for section in SECTIONS))


if __name__ == "__main__":
    main()
