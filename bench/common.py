"""Pieces the benchmarks share: best-of-N timing and a tokenised CoNLL-2003 sample with a split encoder.

The benchmarks run as scripts (`python bench/x.py`), so this folder is on sys.path and `import common` works.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from ensemble_distill.data.conll import label_vocab, read_conll, tag_corpus
from ensemble_distill.data.subwords import encode_sentences, load_tokenizer
from ensemble_distill.encoders import default_encoder_path, load_pretrained, split_encoder


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def print_speedups(timings: dict, baseline: str, decimals: int = 1) -> None:
    """A table of each method's time (ms, `decimals` places) and its speed-up over `timings[baseline]` (seconds)."""
    print(f"  {'method':40s} {'ms':>9s}   speed-up over the baseline")
    for name, secs in timings.items():
        print(f"  {name:40s} {secs * 1e3:9.{decimals}f}   {timings[baseline] / secs:7.1f}x")


@dataclass
class ConllSample:
    tokenizer: object
    labels: list
    corpus: object
    windows: list
    bottom: object
    top: object

    @property
    def n_words(self) -> int:
        return sum(len(w.word_starts) for w in self.windows)


def conll_sample(data_root, n_sentences: int, finetune_layers: int = 2) -> ConllSample:
    """The first n training sentences of CoNLL-2003, tokenised for MiniLM, and MiniLM split for tuning."""
    path = default_encoder_path()
    tokenizer, max_length = load_tokenizer(path)
    sentences = read_conll(Path(data_root) / "conll2003-en/eng.train")[:n_sentences]
    labels = label_vocab(sentences)
    corpus = tag_corpus("eng.train", sentences, labels)
    windows = encode_sentences(tokenizer, [s.tokens for s in sentences], max_length, corpus.tag_ids)
    bottom, top = split_encoder(load_pretrained(path), finetune_layers)
    return ConllSample(tokenizer, labels, corpus, windows, bottom, top)
