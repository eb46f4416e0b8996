"""Turn WikiText-2 raw text files into one .jsonl of articles (for benchmarks; not used by tests).

Usage: python scripts/wikitext_jsonl.py OUT.jsonl VAL.txt [TRAIN.txt ...]
Articles start at lines of the form ` = Title = `; the articles of VAL.txt come
first, so `pgolf data build --val-docs N` with the printed N holds them out.
"""

import json
import re
import sys

TITLE = re.compile(r"^ = [^=].* = $")


def articles(path):
    documents, current = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if TITLE.match(line.rstrip("\n")) and current:
                documents.append("".join(current).strip())
                current = []
            current.append(line)
    documents.append("".join(current).strip())
    return [text for text in documents if text]


def main(out_path, val_path, *train_paths):
    val = articles(val_path)
    train = [text for path in train_paths for text in articles(path)]
    with open(out_path, "w", encoding="utf-8") as handle:
        for text in val + train:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    print(f"val_docs:{len(val)} train_docs:{len(train)} -> {out_path}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
