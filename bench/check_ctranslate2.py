"""Does a model's CTranslate2 export translate as `ensemble-distill translate` does? Line by line, on real text.

Our side is `translate --beam K --length-penalty 0` (tasks.nmt.translate_ids, length-sorted batches), scored by
teacher forcing (summed log-probability, EOS included: the search's score at length penalty 0). CTranslate2's side
is the README's snippet (sentencepiece pieces in, beam K, length_penalty 0, min_decoding_length 0) under float32 and
int8 weights, with two length limits: the fixed max_decoding_length=256, and our per-sentence cap
(export.ctranslate2_translate_capped: max_decoding_length = cap - 1, one call per distinct cap, as CTranslate2 stops
at its limit without EOS where we force EOS as the cap's last token). Prints per setting how many
lines have the same output subwords, how many of the others reach our cap, and the largest score difference over
identical hypotheses that ended with EOS before the cap; and on how many lines our beam's output scores below
greedy decoding's (a search error: the greedy path was pruned). Reads the model folder and the text only.

    python bench/check_ctranslate2.py --model runs/m30k-ce/students/student-3-top64 [--lines 1000 --beam 4]
"""

import argparse
import tempfile
from pathlib import Path

import ctranslate2
import numpy as np
import torch

from ensemble_distill import load_model
from ensemble_distill.data.parallel import read_lines
from ensemble_distill.export import ctranslate2_translate_capped, export_ctranslate2
from ensemble_distill.models.beam_search import output_length_caps
from ensemble_distill.models.translation import collate
from ensemble_distill.tasks.nmt import ParallelSplit, hypothesis_scores, translate_ids


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a translation model folder (member or student)")
    parser.add_argument("--source", default="/work/shared/data/multi30k-de-en/test_2016_flickr.de.gz")
    parser.add_argument("--lines", type=int, default=1000, help="the first LINES non-blank lines of --source")
    parser.add_argument("--beam", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)

    loaded = load_model(args.model)
    model, vocab = loaded.model, loaded.vocab
    positions = model.config.max_positions
    lines = [line for line in read_lines(args.source) if line][: args.lines]
    sources = vocab.encode(lines)
    assert all(len(s) < positions for s in sources), "a source longer than the model's positions: not compared"
    ours = translate_ids([model], ParallelSplit([(s, []) for s in sources], []), args.beam, 0.0, batch_sentences=64)
    our_scores, _ = hypothesis_scores([model], sources, ours, batch_sentences=64)
    greedy = translate_ids([model], ParallelSplit([(s, []) for s in sources], []), 1, 0.0, batch_sentences=64)
    greedy_scores, _ = hypothesis_scores([model], sources, greedy, batch_sentences=64)
    caps = output_length_caps(collate([(s, []) for s in sources]).src, positions).tolist()
    at_cap = np.array([len(h) + 1 == cap for h, cap in zip(ours, caps)])
    print(f"{args.model}: {len(lines)} lines of {args.source}, beam {args.beam}, length penalty 0; our outputs "
          f"at their cap: {at_cap.sum()}; beam {args.beam} below greedy by its own score (summed log-probability, "
          f"by more than 1e-4: a search error, the greedy path pruned): {(our_scores < greedy_scores - 1e-4).sum()}")

    options = dict(beam_size=args.beam, length_penalty=0.0, min_decoding_length=0, max_input_length=positions,
                   return_scores=True)
    with tempfile.TemporaryDirectory() as folder:
        out = export_ctranslate2(model, vocab.path, Path(folder) / "ct2")
        pieces = vocab.processor.encode(lines, out_type=str)  # what a CTranslate2 user feeds it (README)
        assert [vocab.processor.piece_to_id(p) for p in pieces[0]] == sources[0]
        for compute_type in ("float32", "int8"):
            translator = ctranslate2.Translator(str(out), compute_type=compute_type, intra_threads=1)
            for limit in ("256", "our cap"):
                results = (translator.translate_batch(pieces, max_decoding_length=256, **options) if limit == "256"
                           else ctranslate2_translate_capped(translator, pieces, caps, **options))
                theirs = [[vocab.processor.piece_to_id(p) for p in r.hypotheses[0]] for r in results]
                same = np.array([a == b for a, b in zip(ours, theirs)])
                ended = same & ~at_cap
                gap = np.abs(np.array([r.scores[0] for r in results]) - our_scores)[ended].max(initial=0.0)
                print(f"  {compute_type:7s} max_decoding_length {limit:7s}: {same.sum():4d} of {len(lines)} lines the "
                      f"same ({(same & at_cap).sum()} at our cap); {(~same).sum():3d} differ, {(~same & at_cap).sum()}"
                      f" of them at our cap; scores of the {ended.sum()} same that end before the cap within "
                      f"{gap:.1e}")


if __name__ == "__main__":
    main()
