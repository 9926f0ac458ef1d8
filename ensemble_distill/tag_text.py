"""Tagging new text with a tagger folder or an ensemble of them: read the input, tag it, span confidences, write.

    models = [load_model("runs/conll-iid/students/student-3")]        # tasks.ner.TaggerFolder (or K members)
    text = read_input("news.txt")                                      # .txt: one sentence a line
    tagged = tag(models, text.tokens)
    write_tagged("out/", text, tagged)                                  # entities.jsonl, predictions.conll

Input formats (`fmt`, default from the name: .jsonl/.json/.ndjson → jsonl, .txt → text, anything else and
standard input "-" → conll; with `tag_col` always conll):
- conll: one token a line (whitespace- or TAB-separated columns, the token in `token_col`, gold tags, if any, in
  `tag_col`), blank lines between sentences, `-DOCSTART-` lines skipped. A file of more than one column besides
  the tags must say which column is the token: nothing is guessed (an index in the first column is not a token).
- jsonl: one JSON object a line, {"tokens": ["Peter", "Blackburn", ...]}; blank lines skipped; its other fields
  (an "id") are copied to its line of entities.jsonl. A line of no tokens ("tokens": [], an empty document) keeps
  its line of entities.jsonl, with no entities, and has no block in predictions.conll.
- text: one sentence a line, split into words as the training data (CoNLL-2003, Europarl) is: Penn-Treebank style,
  by NLTK's NLTKWordTokenizer (nltk.tokenize.word_tokenize without its sentence splitter, as the line is one
  sentence). Abbreviations, hyphenated words, inner apostrophes and German ordinals stay one word ("U.S.", "D.C.",
  "Jean-Luc", "O'Brien", "EU-Kommission", "3."); the sentence-final period, commas, brackets, quotes and clitics
  ("'s", "n't") are split off, the typographic apostrophe ’ read as ' ("O’Brien"; "Paulo’s" → Paulo ’s):
  "O'Brien sued the U.S. in Washington, D.C. on Monday." → O'Brien sued the U.S. in Washington , D.C. on Monday .
  A line-final abbreviation loses its period to the sentence ("... and Co." → and Co .). The words are the line's
  own characters at the tokenizer's spans (not its `` and '' for a double quote); blank lines skipped.

entities.jsonl: per sentence {"sentence", "line", "tokens", "entities"}, "line" the file line of its first word.
Each entity: "type", word offsets "start", "end" (exclusive) into "tokens", "text" and "confidence". For text input
also "char_start", "char_end": character offsets (Python string indices, end exclusive) into the source line
(without its line break), and "text" is that exact source text, line[char_start:char_end] (what lies between its
words kept as typed). conll and jsonl inputs have no source line: no character offsets, and "text" is the words
joined by single spaces (as for a text line whose words are separated by single spaces).

Predicted labels: a single CRF model's are its Viterbi path (per encoder window, each word taken from the window
that owns it), as evaluation scores it; any other model's or ensemble's are the argmax of the (mean) distributions
(tasks/ner.py predict_scored, paper §3.1). With `decode="iob2"` (predict --decode iob2) every label sequence is a
valid IOB2 one, never opening a span with I-X: a per-word model's most probable valid path (decoding.py), a single
CRF's best path under its own scores with the invalid transitions forbidden (its learned scores make invalid
steps unlikely, not impossible). Either way a word's printed probability is its marginal.

Span confidence: the probability that exactly that span carries that type, right boundary included
(spans.py): IID the per-word product with the closing factor, over the merged per-word distributions (exact
whatever the windows, since an IID model's words are independent given the text); CRF the exact span marginal
by forward-backward in the encoder window that owns the span's first word; an ensemble the mean of its members'.
A CRF reads a long sentence window by window, so a span whose words, the word before it (when it could open with
I-) or the word after it are not all in that window has no exact marginal in any window: it gets the product
formula over the merged CRF marginals instead, with one warning that counts such spans.

Temperature scaling (`temperature` T; the T evaluation fitted on dev: calibrated.py): the system is the one
evaluation's "+ TS" row scores, the per-word distributions softmax(log q / T) of the model's (an ensemble: of its
mean) distributions q (a single IID model: softmax(logits / T)). That system is a per-word model, so its labels
are their most probable labels (those of q) and a span's confidence is the IID product formula over the scaled
distributions. A single CRF is refused: its labels are a Viterbi path and its confidences exact span marginals,
and no CRF has the rescaled marginals evaluation's TS gives it (scaling its scores by 1/T changes the marginals
otherwise), so entities.jsonl would mix two models.
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .calibration.task_metrics import OperatingPoint, precision_recall_at, threshold_for_precision
from .calibration.temperature import temperature_scaled
from .data import conll
from .data.conll import read_conll, tag_corpus
from .data.subwords import bucketed_batches, merge_windows
from .data.text import read_text_lines
from .decoding import decoded_labels, iob2_scores
from .errors import UserError, located
from .io_utils import atomic_write_json, atomic_write_text, strict_json
from .predictions import save_predictions
from .spans import (
    SpanLabels,
    Spans,
    crf_span_probabilities,
    decode_spans,
    iid_span_probabilities,
    iob2_repaired,
    span_events,
)
from .tasks.ner_batches import is_single_crf, tagger_emissions, tagging_predictions, window_batch

FORMATS = ("conll", "jsonl", "text")
STDIN = "-"


@dataclass
class TextInput:
    """Sentences read from a file: their words, the file line of each sentence's first word, with gold tags the
    sentences as read_conll reads them (None without) and, for text input, each sentence's source line and its
    words' character spans (start, end) into it (None for other inputs)."""
    path: str
    tokens: list[list[str]]
    lines: list[int]
    gold_sentences: list[conll.Sentence] | None = None
    sources: list[str] | None = None
    char_spans: list[list[tuple[int, int]]] | None = None
    fields: list[dict] | None = None  # jsonl input: each line's other fields (an "id"), copied to its output line

    @property
    def gold(self) -> list[list[str]] | None:
        """Per sentence its gold IOB2 tags, or None without gold."""
        return None if self.gold_sentences is None else [s.tags for s in self.gold_sentences]


def input_format(path, fmt: str | None = None, tag_col: int | None = None) -> str:
    """`fmt` if given, else conll when gold tags are given, else from the file name (see the module doc)."""
    if fmt is not None:
        return fmt
    name = str(path).lower().removesuffix(".gz")
    if tag_col is not None or name == STDIN:
        return "conll"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    return "text" if name.endswith(".txt") else "conll"


def read_input(path, fmt: str | None = None, token_col: int | None = None,
               tag_col: int | None = None, scheme: str = "iob2", encoding: str = "utf-8", comment_prefix: str = "#",
               token_prefix: str = "") -> TextInput:
    """Read sentences (and gold tags when `tag_col` is given) from `path` ("-": standard input) in format `fmt`.

    Raises UserError naming the file (and line) for anything that cannot be read as stated.
    """
    fmt = input_format(path, fmt, tag_col)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: not one of {', '.join(FORMATS)}")
    if fmt != "conll" and (tag_col is not None or token_col is not None):
        raise UserError(f"{path}: --tag-col and --token-col are for --format conll; this input is read as {fmt}")
    lines = read_text_lines(path, encoding, setting=conll.FLAGS("encoding"))
    if fmt == "jsonl":
        return _jsonl(path, lines)
    if fmt == "text":
        return _text(path, lines)
    n_columns = _columns(path, lines, comment_prefix)
    if token_col is None:
        others = n_columns - (tag_col is not None)
        if others > 1:
            raise UserError(f"{path}: {n_columns} columns; say which holds the token with --token-col (and the gold "
                            "tags with --tag-col); one sentence a line is --format text")
        token_col = 1 if tag_col in (0, -n_columns) else 0
    if tag_col is None:
        return _tokens_only(path, lines, token_col, n_columns, comment_prefix, token_prefix)
    sentences = read_conll(path, token_col, tag_col, scheme, encoding=encoding, comment_prefix=comment_prefix,
                           token_prefix=token_prefix, lines=lines, names=conll.FLAGS)
    return TextInput(str(path), [s.tokens for s in sentences], [s.line for s in sentences], sentences)


def _columns(path, lines, comment_prefix) -> int:
    first = conll._first_token_line(lines, comment_prefix)
    if first is None:
        raise located(path, None, "no tokens (one token a line, a blank line between sentences)")
    return len(conll._split(lines[first - 1], _sep(lines[first - 1])))


def _sep(line: str) -> str | None:
    return "\t" if "\t" in line.rstrip(" \t") else None


def _tokens_only(path, lines, token_col, n_columns, comment_prefix, token_prefix) -> TextInput:
    """CoNLL lines without tags: a line starting with the comment prefix before a sentence's first token is a
    comment when its column count is not the file's (so a lone `#` token is still a token)."""
    if not -n_columns <= token_col < n_columns:
        raise located(path, None, f"--token-col {token_col} is outside the file's {n_columns} columns")
    prefix = conll._token_prefix_pattern(token_prefix, conll.FLAGS)
    sep = _sep(lines[conll._first_token_line(lines, comment_prefix) - 1])
    sentences, starts, current = [], [], []
    for number, line in enumerate(lines + [""], start=1):
        if conll._is_break(line):
            if current:
                sentences.append(conll._without_prefix(path, current, starts[-1], prefix, conll.FLAGS) if prefix
                                 else current)
            current = []
            continue
        columns = conll._split(line, sep)
        if not current and conll._starts_comment(line, comment_prefix) and len(columns) != n_columns:
            continue
        if len(columns) != n_columns:
            raise located(path, number, f"{len(columns)} columns, but the file's first token line has {n_columns}")
        if not current:
            starts.append(number)
        current.append(columns[token_col])
    return TextInput(str(path), sentences, starts)


def _jsonl(path, lines) -> TextInput:
    tokens, starts, fields = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            words = record["tokens"]
        except (ValueError, TypeError, KeyError):
            raise located(path, number, 'not a JSON object with "tokens" (a list of words)') from None
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise located(path, number, '"tokens" must be a list of non-blank strings')
        tokens.append(words)
        starts.append(number)
        fields.append({key: value for key, value in record.items() if key not in OUTPUT_KEYS})
    if not tokens:
        raise located(path, None, 'no sentences (one JSON object {"tokens": [...]} a line)')
    return TextInput(str(path), tokens, starts, fields=fields)


def _text(path, lines) -> TextInput:
    from nltk.tokenize import NLTKWordTokenizer  # imported here: NLTK takes a second to import, only text needs it

    tokenizer = NLTKWordTokenizer()
    tokens, starts, sources, char_spans = [], [], [], []
    for number, line in enumerate(lines, start=1):
        # Its apostrophe rules are written for ' (as CoNLL-2003's text has it): the typographic apostrophe ’ would
        # be split off as a closing quote (O ’ Brien). One character for one, so the spans hold for the line.
        spans = list(tokenizer.span_tokenize(line.replace("’", "'")))
        if spans:
            tokens.append([line[a:b] for a, b in spans])
            starts.append(number)
            sources.append(line)
            char_spans.append(spans)
    if not tokens:
        raise located(path, None, "no sentences (one sentence a line)")
    if all(len(words) == 1 for words in tokens) and any(not line.strip() for line in lines):
        warnings.warn(f"{path}: read as one sentence a line (--format text), but it looks like one token a line "
                      "with blank lines between sentences: give --format conll for that")
    return TextInput(str(path), tokens, starts, sources=sources, char_spans=char_spans)


# ----------------------------------------------------------------------------------------------------------------
# Tagging


@dataclass
class Tagged:
    """What the models made of the sentences: per sentence the mean [words, labels] float32 distributions and the
    predicted int64 [words] label ids (a single CRF's Viterbi path, else by the decoding rule: the most probable
    labels, ties as predictions.predicted_labels, or the most probable valid IOB2 path), the predicted spans
    (seqeval's get_entities of those labels), each span's confidence float64 [N], and whether the labels are a
    Viterbi path."""
    labels: list[str]
    distributions: list[np.ndarray]
    predicted: list[np.ndarray]
    spans: Spans
    confidence: np.ndarray
    viterbi: bool = False


def tag(models: list, sentences: list[list[str]], batch_size: int = 64, temperature: float | None = None,
        decode: str = "argmax") -> Tagged:
    """Tag `sentences` with `models` (tasks.ner.TaggerFolder; several: an ensemble, the mean of their
    distributions and of their span probabilities), temperature-scaled at `temperature` T > 0 if given (module
    doc), labelled by the decoding rule `decode` (decoding.DECODES; "iob2": the most probable valid IOB2 path of
    the distributions, of a single CRF's scores). Frozen encoder states are computed in memory, once
    per distinct encoder. Raises UserError when the models have different label sets, or for a temperature with a
    single CRF model."""
    labels = models[0].labels
    for model in models[1:]:
        if model.labels != labels:
            raise UserError(f"{model.folder}: labels {model.labels} differ from {models[0].folder}'s {labels}")
    worded = [i for i, words in enumerate(sentences) if words]
    if len(worded) < len(sentences):  # a sentence of no words (a jsonl line's empty list) gets no label, no span
        tagged = tag(models, [sentences[i] for i in worded], batch_size, temperature, decode) if worded else None
        return _with_empty_sentences(tagged, worded, len(sentences), labels)
    span_labels = SpanLabels.from_names(labels)
    viterbi = is_single_crf([model.tagger for model in models])
    if viterbi and temperature is not None:
        raise UserError(f"{models[0].folder}: a CRF model is not temperature-scaled: evaluation's TS rescales its "
                        "marginals, which no CRF path distribution has, and its entities' confidences are exact "
                        "span marginals of that distribution; tag with it unscaled, or scale an ensemble (--run)")
    splits = {}
    per_model = []  # (model, split, per-window distributions, per-window emissions, per-window Viterbi paths)
    for model in models:
        key = (model.spec["encoder"]["sha256"], model.spec["encoder"]["finetune_layers"])
        split = splits.setdefault(key, model.split(sentences))
        per_model.append((model, split, *_window_outputs(model, split, batch_size, viterbi, decode)))
    merged = [merge_windows(split.windows, probs) for _, split, probs, _, _ in per_model]
    distributions = [np.mean([m[s] for m in merged], axis=0) for s in range(len(sentences))]
    if temperature is not None:
        distributions = [temperature_scaled(d, temperature) for d in distributions]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in distributions])])
    if viterbi:
        (_, split, _, _, paths), = per_model
        predicted = merge_windows(split.windows, paths)
    else:
        ids = decoded_labels(np.concatenate(distributions), offsets, labels, decode)
        predicted = np.split(ids, offsets[1:-1])
    spans = decode_spans(np.concatenate(predicted), offsets, span_labels)
    if temperature is not None:  # a per-word model: the product formula over its scaled distributions
        confidence = iid_span_probabilities(np.concatenate(distributions), offsets, spans, span_labels)
        return Tagged(labels, distributions, predicted, spans, confidence, viterbi)
    confidence = np.zeros(len(spans))
    for (model, split, _, emissions, _), probs in zip(per_model, merged):
        own = iid_span_probabilities(np.concatenate(probs), offsets, spans, span_labels)
        if model.tagger.head == "crf":
            _exact_crf(model.tagger.crf, split.windows, emissions, spans, span_labels, own)
        confidence += own
    return Tagged(labels, distributions, predicted, spans, confidence / len(models), viterbi)


def _with_empty_sentences(tagged: Tagged | None, worded: list[int], n_sentences: int, labels) -> Tagged:
    """The Tagged of all `n_sentences` from that of the sentences `worded` (their indices; None: none has a word),
    each other sentence with no words: [0, labels] distributions, no labels, no spans."""
    empty_probs, empty_ids = np.zeros((0, len(labels)), dtype=np.float32), np.zeros(0, dtype=np.int64)
    distributions, predicted = [empty_probs] * n_sentences, [empty_ids] * n_sentences
    if tagged is None:
        no_spans = Spans(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
        return Tagged(labels, distributions, predicted, no_spans, np.zeros(0))
    for i, d, p in zip(worded, tagged.distributions, tagged.predicted):
        distributions[i], predicted[i] = d, p
    spans = tagged.spans
    spans = Spans(np.asarray(worded, dtype=np.int64)[spans.sentence], spans.start, spans.end, spans.type)
    return Tagged(labels, distributions, predicted, spans, tagged.confidence, tagged.viterbi)


def _window_outputs(model, split, batch_size, viterbi: bool, decode: str = "argmax"):
    """Per window of `split`: the model's [words, labels] float32 distributions, [words, labels] emissions (on the
    model's device) and, with `viterbi` (a CRF model), its int64 [words] Viterbi path (`decode` "iob2": the best
    valid IOB2 path under its scores), else None."""
    constraints = iob2_scores(model.labels) if viterbi and decode == "iob2" else None
    lengths = [len(w.input_ids) for w in split.windows]
    probs, emissions, paths = [None] * len(lengths), [None] * len(lengths), [None] * len(lengths)
    model.tagger.eval()
    device = next(model.tagger.parameters()).device  # the frozen states come from the CPU (window_batch)
    with torch.no_grad():
        for chunk in bucketed_batches(lengths, batch_size):
            batch = window_batch(split, chunk, model.tokenizer.pad_token_id, device)
            scores = tagger_emissions(model.tagger, batch)
            dist = model.tagger.distributions(scores, batch["word_mask"]).float().cpu()
            best = model.tagger.crf.viterbi(scores, batch["word_mask"], constraints).cpu() if viterbi else None
            for row, (window, n) in enumerate(zip(chunk, batch["word_mask"].sum(1).tolist())):
                probs[window], emissions[window] = dist[row, :n].numpy(), scores[row, :n]
                if viterbi:
                    paths[window] = best[row, :n].numpy()
    return probs, emissions, paths


def _exact_crf(crf, windows, emissions, spans: Spans, labels: SpanLabels, confidence) -> None:
    """Set `confidence` [N] of each span to this CRF's exact span marginal in the window that owns the span's first
    word, where the span and its boundary words (the word before, the word after) lie in that window; the other
    spans keep the value they have (the product formula over the merged marginals)."""
    length = np.zeros(max(w.sentence for w in windows) + 1, dtype=np.int64)
    for w in windows:
        length[w.sentence] = max(length[w.sentence], w.first_word + len(w.word_starts))
    owner = np.full(len(spans), -1)
    for i, w in enumerate(windows):
        last = w.first_word + len(w.word_starts)
        owns = (spans.sentence == w.sentence) & (w.own_start <= spans.start) & (spans.start < w.own_end)
        fits = ((spans.start > w.first_word) | (spans.start == 0)) & (
            (spans.end < last) | (spans.end == length[spans.sentence]))
        owner[owns & fits & (spans.end <= last)] = i
    exact = np.flatnonzero(owner >= 0)
    if len(exact) < len(spans):
        warnings.warn(f"{len(spans) - len(exact)} spans of a CRF model cross an encoder window's edge: their "
                      "confidence is the per-word product over the merged CRF marginals, not an exact span marginal")
    if not len(exact):
        return
    used, row = np.unique(owner[exact], return_inverse=True)
    scores = torch.nn.utils.rnn.pad_sequence([emissions[i] for i in used], batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(emissions[i]), dtype=torch.bool, device=scores.device)
                                            for i in used], batch_first=True)
    first = np.array([windows[i].first_word for i in used])[row]
    local = Spans(row, spans.start[exact] - first, spans.end[exact] - first, spans.type[exact])
    with torch.no_grad():
        confidence[exact] = crf_span_probabilities(crf, scores, mask, local, labels)


def gold_ids(text: TextInput, labels: list[str], unknown_tag: str = "error") -> list[np.ndarray]:
    """Per sentence the gold tags' ids in `labels`; a tag the model lacks is refused (`unknown_tag` "error": UserError
    naming its line) or mapped to O ("O", with one warning that counts them), as data.unknown_tag does in training
    (data.conll.tag_corpus)."""
    return tag_corpus(text.path, text.gold_sentences, labels, unknown_tag, names=conll.FLAGS).tag_ids


def span_operating_events(tagged: Tagged, gold: list[np.ndarray]):
    """(confidence [N], correct [N], number of gold spans) of the predicted spans against gold ids per sentence."""
    offsets = np.concatenate([[0], np.cumsum([len(g) for g in gold])])
    gold_spans = decode_spans(np.concatenate(gold), offsets, SpanLabels.from_names(tagged.labels))
    confidence, correct = span_events(tagged.spans, tagged.confidence, gold_spans)
    return confidence, correct, len(gold_spans)


def dev_threshold(models: list, dev: TextInput, target_precision: float, temperature: float | None = None,
                  unknown_tag: str = "error", decode: str = "argmax") -> OperatingPoint:
    """The smallest span-confidence threshold whose precision on `dev` (with gold; tags the model lacks as
    `gold_ids` takes them) reaches `target_precision` (calibration.task_metrics.threshold_for_precision), of the
    models at `temperature`, decoded by `decode` (tag). Raises UserError when no threshold reaches it."""
    gold = gold_ids(dev, models[0].labels, unknown_tag)  # a tag the model lacks: refused before tagging
    tagged = tag(models, dev.tokens, temperature=temperature, decode=decode)
    confidence, correct, n_gold = span_operating_events(tagged, gold)
    point = threshold_for_precision(confidence, correct, n_gold, target_precision)
    if point is None:
        best = correct.mean() if len(correct) else float("nan")
        raise UserError(f"{dev.path}: no span-confidence threshold reaches precision {target_precision} on its "
                        f"{len(correct)} predicted spans (all kept: precision {best:.3f}); lower --target-precision")
    return point


OUTPUT_KEYS = ("sentence", "line", "tokens", "entities")  # entities.jsonl's own fields: no input field replaces one


def entities_jsonl(text: TextInput, tagged: Tagged, min_confidence: float = 0.0) -> str:
    """Per sentence a JSON line {"sentence", "line", "tokens", "entities"}, after the other fields of its jsonl
    input line (an "id": the caller's keys come through; one named as ours is dropped): each predicted span whose
    confidence is at least `min_confidence`, with its type, word offsets [start, end), for text input its
    character offsets [char_start, char_end) into the source line, its text (text input: the source line's
    characters there, else the words joined by spaces) and confidence (module doc)."""
    spans, keep = tagged.spans, tagged.confidence >= min_confidence
    types = SpanLabels.from_names(tagged.labels).types
    per_sentence = [[] for _ in text.tokens]
    for s, a, b, t, c in zip(spans.sentence[keep], spans.start[keep], spans.end[keep], spans.type[keep],
                             tagged.confidence[keep]):
        entity = {"type": types[t], "start": int(a), "end": int(b), "text": " ".join(text.tokens[s][a:b])}
        if text.char_spans is not None:
            first, last = text.char_spans[s][a][0], text.char_spans[s][b - 1][1]
            entity.update(char_start=first, char_end=last, text=text.sources[s][first:last])
        per_sentence[s].append({**entity, "confidence": float(c)})
    fields = text.fields or [{}] * len(text.tokens)
    return "".join(strict_json({**extra, "sentence": s, "line": line, "tokens": words, "entities": entities},
                               ensure_ascii=False) + "\n"
                   for s, (words, line, entities, extra) in enumerate(zip(text.tokens, text.lines, per_sentence,
                                                                          fields)))


def conll_text(text: TextInput, tagged: Tagged) -> str:
    """One line a word, TAB-separated: token, its gold tag (when given), the predicted label as valid IOB2 and the
    probability (marginal) of the label the model chose; a blank line after each sentence (a sentence of no
    words, from jsonl, has none).

    The predicted labels are Tagged.predicted (a single CRF's Viterbi path, else the most probable; ties: O, then
    the smallest name), which can hold an I-X that opens a span (after O): it is written B-X, the reading that
    gives entities.jsonl its spans (spans.iob2_repaired), so the file's spans are entities.jsonl's (before the
    confidence threshold) whether read as strict IOB2 or as conlleval reads them. Its probability stays the I-X's."""
    names, lines = np.asarray(tagged.labels), []
    offsets = np.cumsum([0, *map(len, tagged.predicted)])
    written = np.split(iob2_repaired(np.concatenate(tagged.predicted), offsets, SpanLabels.from_names(names)),
                       offsets[1:-1])
    gold = text.gold or [[]] * len(text.tokens)
    for words, probs, predicted, labels, tags in zip(text.tokens, tagged.distributions, tagged.predicted, written,
                                                     gold):
        if not words:  # a sentence of no words has no block (CoNLL cannot write one); entities.jsonl keeps its line
            continue
        for w, word in enumerate(words):
            # TAB-separated: a word read from a TAB-separated file or from JSON may hold a space
            lines.append("\t".join([word, *tags[w:w + 1], names[labels[w]], f"{probs[w, predicted[w]]:.4f}"]))
        lines.append("")
    return "\n".join(lines) + "\n"


def predict(models: list, input_path, out_dir, *, fmt: str | None = None, min_confidence: float = 0.0,
            target_precision: float | None = None, dev=None, meta: dict | None = None,
            temperature: float | None = None, unknown_tag: str = "error", decode: str = "argmax",
            **reader) -> list[Path]:
    """Tag a file with `models` (one tagger folder, or an ensemble's members), temperature-scaled at `temperature`
    if given and labelled by the decoding rule `decode` (tag), and write into `out_dir`: entities.jsonl (spans of
    confidence >= the threshold), predictions.conll and, with gold (`reader["tag_col"]`), predictions.npz for
    `evaluate` (its meta records the temperature and the rule; it stores the labels unless they are the argmax).
    With `target_precision`, the threshold is picked on `dev` (a CoNLL file with gold, read with the same settings;
    for a text or jsonl input, `token_col` and `tag_col` are the dev file's) and threshold.json records it, the
    temperature, the dev operating point and, with gold, the input's.
    `unknown_tag`: a gold tag (of the input or dev) the models lack is refused ("error") or mapped to O ("O"), as
    data.unknown_tag in training.
    reader: read_input's layout settings. Returns the files written. Raises UserError for bad input."""
    if (target_precision is None) != (dev is None):
        raise UserError("--target-precision and --dev go together: the threshold is picked on a dev file with gold")
    if target_precision is not None and min_confidence:
        raise UserError(f"--min-confidence {min_confidence} and --target-precision {target_precision}: give one "
                        "(the target picks the confidence threshold on the dev file)")
    if dev is not None and reader.get("tag_col") is None:
        raise UserError("--target-precision: give --tag-col, the gold tag column of the --dev file (same layout as "
                        "the input)")
    # With a dev file the column settings describe it: a gold column does not make the input CoNLL (a .txt or
    # .jsonl input keeps the format its name says), and a text or jsonl input reads none of them.
    fmt = input_format(input_path, fmt, None if dev is not None else reader.get("tag_col"))
    columns = ("token_col", "tag_col") if dev is not None and fmt != "conll" else ()
    text = read_input(input_path, fmt, **{k: v for k, v in reader.items() if k not in columns})
    labels = models[0].labels
    gold = gold_ids(text, labels, unknown_tag) if text.gold is not None else None
    report = None
    if target_precision is not None:
        point = dev_threshold(models, read_input(dev, "conll", **reader), target_precision,
                              temperature, unknown_tag, decode)
        min_confidence = point.threshold
        report = {"target_precision": target_precision, "dev": str(dev), "threshold": point.threshold,
                  "temperature": temperature or 1.0, "decode": decode, "dev_operating_point": point.__dict__}
    tagged = tag(models, text.tokens, temperature=temperature, decode=decode)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "entities.jsonl", entities_jsonl(text, tagged, min_confidence))
    atomic_write_text(out_dir / "predictions.conll", conll_text(text, tagged))
    written = [out_dir / "entities.jsonl", out_dir / "predictions.conll"]
    if gold is not None:
        meta = {**(meta or {}), "input": str(input_path), "temperature": temperature or 1.0}
        meta |= {"decode": decode} if decode != "argmax" and not tagged.viterbi else {}
        stored = tagged.predicted if tagged.viterbi or "decode" in meta else None
        save_predictions(out_dir / "predictions.npz", tagging_predictions(tagged.distributions, gold, labels, meta,
                                                                              stored))
        written.append(out_dir / "predictions.npz")
    if report is not None:
        if gold is not None:
            report["input_operating_point"] = precision_recall_at(
                report["threshold"], *span_operating_events(tagged, gold)).__dict__
        atomic_write_json(out_dir / "threshold.json", report)
        written.append(out_dir / "threshold.json")
    return written


def threshold_summary(report: dict) -> str:
    """One line per operating point of threshold.json."""
    lines = [f"threshold {report['threshold']:.4f} (smallest reaching precision {report['target_precision']} on "
             f"{report['dev']})"]
    for name in ("dev", "input"):
        point = report.get(f"{name}_operating_point")
        if point:
            lines.append(f"  {name}: precision {point['precision']:.4f}, recall {point['recall']:.4f}, "
                         f"{point['n_kept']} spans kept")
    return "\n".join(lines)
