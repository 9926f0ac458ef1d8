"""Beam-search decoding on one CPU thread: CTranslate2 (float32 and int8 weights) against our beam search, on the
same exported model.

Real Multi30k sources (the first --sentences of test_2016_flickr.de, read only) under a joint 8K sentencepiece
vocabulary trained on Multi30k's training pairs (a few seconds, into a temporary folder), and the "small" preset
with random weights: speed does not depend on what a model learnt, except where decoding stops, so both decoders
generate exactly --decode-len tokens a hypothesis (CTranslate2 with min_decoding_length = max_decoding_length; ours
with max_len, whose last step is a forced EOS, as random models rarely pick EOS). Batches of --batch-size
sentences of similar length on both sides. Repeats are taken in turns and the fastest of each case is kept: on
a shared machine other jobs only ever slow a run down, and the minimum is the least disturbed.

    python bench/bench_ctranslate2.py [--sentences 128 --beam 4 --decode-len 16,64 --repeats 5]
"""

import argparse
import tempfile
import time
from pathlib import Path

import ctranslate2
import numpy as np
import torch

from ensemble_distill.data.parallel import read_lines, read_parallel
from ensemble_distill.data.vocab import joint_sentences, train_vocab
from ensemble_distill.export import export_ctranslate2
from ensemble_distill.models.beam_search import beam_search
from ensemble_distill.models.translation import TransformerConfig, TranslationModel, collate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/multi30k-de-en")
    parser.add_argument("--sentences", type=int, default=128)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--decode-len", default="16,64", help="tokens generated a hypothesis, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data)

    with tempfile.TemporaryDirectory() as folder:
        vocab = train_vocab(joint_sentences(read_parallel(data / "train.de.gz", data / "train.en.gz")),
                            Path(folder) / "vocab.model")
        torch.manual_seed(0)
        model = TranslationModel(TransformerConfig.preset("small", vocab_size=len(vocab))).eval()
        export_ctranslate2(model, vocab.path, Path(folder) / "ct2")
        translators = {compute_type: ctranslate2.Translator(str(Path(folder) / "ct2"), compute_type=compute_type,
                                                            inter_threads=1, intra_threads=1)
                       for compute_type in ("float32", "int8")}

        lines = read_lines(data / "test_2016_flickr.de.gz")[:args.sentences]
        ids = vocab.encode(lines)
        order = np.argsort([len(x) for x in ids], kind="stable")  # as CTranslate2 sorts a batch it splits
        batches = [collate([(ids[i], []) for i in order[start:start + args.batch_size]]).src
                   for start in range(0, len(order), args.batch_size)]
        pieces = [vocab.processor.encode(line, out_type=str) for line in lines]

        lengths = [int(n) for n in args.decode_len.split(",")]
        cases = {}
        for length in lengths:
            cases[("ours", length)] = lambda n=length: [beam_search([model], src, beam_size=args.beam, max_len=n)
                                                        for src in batches]
            for compute_type, translator in translators.items():
                cases[(f"CTranslate2 {compute_type}", length)] = (
                    lambda t=translator, n=length: t.translate_batch(
                        pieces, max_batch_size=args.batch_size, beam_size=args.beam, length_penalty=0.0,
                        min_decoding_length=n, max_decoding_length=n))
        times = {case: [] for case in cases}
        for _ in range(args.repeats):
            for case, run in cases.items():
                started = time.perf_counter()
                run()
                times[case].append(time.perf_counter() - started)
        fastest = {case: min(t) for case, t in times.items()}

    print(f"small preset (d 192, 2+2 layers, vocab {len(vocab)}), beam {args.beam}, {len(lines)} Multi30k sources "
          f"in batches of {args.batch_size}, 1 thread, fastest of {args.repeats} repeats")
    for length in lengths:
        ours = fastest[("ours", length)]
        for name in ("ours", "CTranslate2 float32", "CTranslate2 int8"):
            seconds = fastest[(name, length)]
            print(f"{length:3d} tokens  {name:20s} {len(lines) / seconds:7.1f} sentences/s  "
                  f"{ours / seconds:5.2f}x ours")
    if len(lengths) > 1:
        first, last = lengths[0], lengths[-1]
        for name in ("ours", "CTranslate2 float32", "CTranslate2 int8"):
            cost = fastest[(name, last)] / fastest[(name, first)]
            print(f"{name}: {last / first:.0f}x longer outputs cost {cost:.2f}x the time")


if __name__ == "__main__":
    main()
