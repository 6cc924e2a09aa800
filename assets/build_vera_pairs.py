"""Build the demo sample: (acronym, expansion) pairs from V.E.R.A., the computing-acronym dictionary
that Debian ships as dict-vera.

    apt-get install -y dict-vera                    # /usr/share/dictd/vera.{index,dict.dz}
    python assets/build_vera_pairs.py
    python assets/build_vera_pairs.py --dict /usr/share/dictd/vera --out assets/vera-pairs

A query is an acronym ("IPX"); its document is what V.E.R.A. says it stands for, with the topics it
files it under ("Internet Packet eXchange (Novell, Netware)"). A general-purpose embedding model
reads an acronym as a few word pieces and matches it poorly (NDCG@10 0.22 for
all-MiniLM-L6-v2), while the rule that ties the two, the initials, is the same for every pair: a
minute of fine-tuning visibly learns it. The acronym itself is taken out of its document, where
V.E.R.A. lists it among the topics, so the match is never a copy. An acronym with more than one
meaning is left out: its query would have several right answers. The output depends only on the
dictionary and the seed.
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path

from build_debian_pairs import write_jsonl

SEED = 42
TEST_ROWS = 300
MIN_DOCUMENT_CHARS = 12
LICENSE = Path("/usr/share/common-licenses/GFDL-1.3")  # V.E.R.A. is GFDL 1.1 or later; its own copy is 1.3

# dictd's index stores offsets and lengths in base 64 with this alphabet.
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
WORD = re.compile(r"[A-Za-z0-9]+(?:[-./&][A-Za-z0-9]+)*")


def b64_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + B64.index(char)
    return value


def read_entries(dict_base: Path) -> list[tuple[str, str]]:
    """(headword as printed, definition as one line) for every entry of DICT.index / DICT.dict.dz."""
    index, data = dict_base.with_suffix(".index"), dict_base.with_suffix(".dict.dz")
    if not index.exists() or not data.exists():
        raise SystemExit(f"no {index} or {data}; run: apt-get install -y dict-vera")
    body = gzip.decompress(data.read_bytes())  # dictzip is gzip with a random-access table we do not need
    entries = []
    for line in index.read_text(encoding="utf-8").splitlines():
        word, offset, length = line.split("\t")
        if word.startswith("00-database-"):
            continue
        start = b64_number(offset)
        # The entry's first line is the headword in its own case (the index has it lowercased).
        headword, *text = body[start:start + b64_number(length)].decode("utf-8").splitlines()
        entries.append((headword.strip(), re.sub(r"\s+", " ", " ".join(text)).strip()))
    return entries


def squashed(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def without_acronym(acronym: str, document: str) -> str:
    """The document less every spelling of the acronym ("ACPI", "IMT-2000" for IMT2000), with the list
    punctuation it leaves behind tidied."""
    target = squashed(acronym)
    text = WORD.sub(lambda word: "" if squashed(word[0]) == target else word[0], document)
    text = re.sub(r'""|\(\s*[,;]?\s*\)', "", text)
    text = re.sub(r"\(\s*[,;]\s*", "(", text)
    text = re.sub(r"\s*[,;]\s*(?=[,;)])", "", text)
    text = re.sub(r",\s*,", ",", text)
    return re.sub(r"\s+", " ", text).strip(" ,;")


def build_pairs(entries: list[tuple[str, str]], seed: int = SEED) -> list[dict]:
    meanings = defaultdict(list)
    for acronym, document in entries:
        meanings[squashed(acronym)].append((acronym, document))
    pairs = []
    for (acronym, document), *others in meanings.values():
        if others:
            continue
        document = without_acronym(acronym, document)
        if len(document) < MIN_DOCUMENT_CHARS or squashed(acronym) in squashed(document):
            continue
        pairs.append({"query": acronym, "document": document})
    random.Random(seed).shuffle(pairs)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dict", type=Path, default=Path("/usr/share/dictd/vera"),
                        help="the dictionary without its suffix: DICT.index and DICT.dict.dz")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "vera-pairs")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    pairs = build_pairs(read_entries(args.dict), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(pairs[TEST_ROWS:], args.out / "train.jsonl")
    write_jsonl(pairs[:TEST_ROWS], args.out / "test.jsonl")
    shutil.copyfile(LICENSE, args.out / "COPYING")  # the GFDL asks for its text to travel with every copy
    print(f"wrote {len(pairs) - TEST_ROWS} train and {TEST_ROWS} test pairs to {args.out}")


if __name__ == "__main__":
    main()
