"""IOB2-constrained decoding of a test set's per-word distributions: decoding.iob2_labels (Viterbi over batches of
sentences of similar length) against a per-sentence numpy Viterbi, the straightforward way, and the argmax.

The distributions are synthetic, sized like CoNLL-2003 test (3,453 sentences of the real file's lengths when
../shared/data is there, else lengths drawn around its mean of 13.4 words; 9 labels).

    python bench/bench_decoding.py [--repeats 5]
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from ensemble_distill.data.conll import read_conll
from ensemble_distill.decoding import iob2_labels, iob2_scores
from ensemble_distill.predictions import predicted_labels

from common import best_time, print_speedups

LABELS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003-en" / "eng.testb"


def sentence_lengths(rng) -> np.ndarray:
    if TEST.is_file():
        return np.array([len(sentence.tokens) for sentence in read_conll(TEST)])
    return rng.geometric(1 / 13.4, size=3453)


def per_sentence_viterbi(probs, offsets, names) -> np.ndarray:
    """One sentence at a time, numpy, the baseline."""
    transitions, start = (t.numpy() for t in iob2_scores(names))
    log_probs = np.log(np.maximum(probs, 1e-300))
    out = np.empty(len(probs), dtype=np.int64)
    for a, b in zip(offsets[:-1], offsets[1:]):
        score, back = start + log_probs[a], []
        for t in range(a + 1, b):
            total = score[:, None] + transitions
            back.append(total.argmax(0))
            score = total.max(0) + log_probs[t]
        path = [int(score.argmax())]
        for pointers in reversed(back):
            path.append(int(pointers[path[-1]]))
        out[a:b] = path[::-1]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # steadier figures on a shared machine
    rng = np.random.default_rng(0)
    lengths = sentence_lengths(rng)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    logits = rng.normal(size=(offsets[-1], len(LABELS))) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    batched = iob2_labels(probs, offsets, LABELS)
    looped = per_sentence_viterbi(probs, offsets, LABELS)
    assert (batched == looped).all(), "the two Viterbis disagree"
    timings = {"argmax (predicted_labels)": best_time(lambda: predicted_labels(probs, LABELS), args.repeats),
               "iob2_labels (batched Viterbi)": best_time(lambda: iob2_labels(probs, offsets, LABELS), args.repeats),
               "per-sentence numpy Viterbi [baseline]": best_time(
                   lambda: per_sentence_viterbi(probs, offsets, LABELS), args.repeats)}
    print(f"decoding {len(lengths)} sentences, {offsets[-1]} words, {len(LABELS)} labels "
          f"({'CoNLL-2003 test lengths' if TEST.is_file() else 'synthetic lengths'}), 1 thread, best of "
          f"{args.repeats}")
    print_speedups(timings, "per-sentence numpy Viterbi [baseline]")


if __name__ == "__main__":
    main()
