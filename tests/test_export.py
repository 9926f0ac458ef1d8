"""Exports run in the ecosystem's own tools and agree with our models: a Hugging Face token-classification pipeline
against our tagger per word, CTranslate2 against our Transformer per token (scores and searches)."""

import ctranslate2
import numpy as np
import pytest
import torch
from test_beam_search import toy_examples  # the toy task: ids 4..9 symbols, 10 "copy", 11 "reverse"
from transformers import AutoModelForTokenClassification, pipeline

from ensemble_distill.data.subwords import collate as collate_windows
from ensemble_distill.data.subwords import encode_sentences, load_tokenizer
from ensemble_distill.data.vocab import SubwordVocab, train_vocab
from ensemble_distill.encoders import load_pretrained, resolve_encoder, split_encoder
from ensemble_distill.errors import UserError
from ensemble_distill.export import (
    SENTENCEPIECE_FILE,
    ctranslate2_translate_capped,
    export_ctranslate2,
    export_hf_token_classification,
)
from ensemble_distill.models.beam_search import beam_search, greedy_decode, output_length_caps
from ensemble_distill.models.tagger import Tagger
from ensemble_distill.models.translation import TransformerConfig, TranslationModel, collate, label_smoothed_loss

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
# Words a tokenizer splits in several ways: punctuation inside a word, a clitic, accents, a single letter.
SENTENCES = [
    "EU rejects German call to boycott British lamb .".split(),
    ["BRUSSELS", "1996-08-22"],
    ["Fischler", "proposed", "EU-wide", "measures", "after", "reports", "from", "Britain", "'s", "Größe", "x"],
    ["Peter"],
]



# ------------------------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def e5_path(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # converted into a temporary cache, never into the user's
        mp.setenv("ENSEMBLE_DISTILL_CACHE", str(tmp_path_factory.mktemp("cache")))
        return resolve_encoder("multilingual-e5-small")


def random_tagger(encoder_path, finetune_layers, seed=0):
    """A fresh IID tagger whose top layers moved away from the pretrained ones (so an export that kept the
    pretrained top would disagree) and whose classifier gives confident, varied labels."""
    bottom, top = split_encoder(load_pretrained(encoder_path), finetune_layers)
    torch.manual_seed(seed)
    tagger = Tagger(top, len(LABELS)).eval()
    with torch.no_grad():
        for parameter in tagger.top.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
        tagger.classifier.weight.normal_(std=0.2)
        tagger.classifier.bias.normal_(std=0.5)
    return bottom, tagger


def our_first_subword_probs(bottom, tagger, encoder_path, sentences, temperature):
    """Per sentence: the windows' word_starts and our [words, labels] probabilities softmax(logits / T)."""
    tokenizer, max_length = load_tokenizer(encoder_path)
    windows = encode_sentences(tokenizer, sentences, max_length)
    assert len(windows) == len(sentences)  # short sentences: one window each
    batch = collate_windows(windows, tokenizer.pad_token_id)
    with torch.no_grad():
        states = bottom(batch["input_ids"], batch["attention_mask"])
        logits = tagger.emissions(states, batch["attention_mask"], batch["word_starts"], batch["word_mask"])
    probs = (logits / (temperature or 1.0)).softmax(-1)
    return [(w.word_starts, probs[i, : len(w.word_starts)].numpy()) for i, w in enumerate(windows)]


@pytest.mark.parametrize("encoder, finetune_layers, temperature",
                         [("minilm", 2, None), ("minilm", 2, 1.7), ("e5", 4, 0.6)])
def test_hf_pipeline_labels_and_scores_equal_ours_at_first_subwords(encoder, finetune_layers, temperature,
                                                                     tmp_path, request):
    path = request.getfixturevalue("e5_path") if encoder == "e5" else resolve_encoder("minilm")
    bottom, tagger = random_tagger(path, finetune_layers)
    out = export_hf_token_classification(tagger, path, LABELS, tmp_path / "hf", temperature=temperature)

    hf, info = AutoModelForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())  # every weight read from the folder, none newly initialised or left over
    assert hf.config.ensemble_distill == {"temperature": temperature}  # what is folded in, null when nothing
    tag = pipeline("token-classification", model=str(out), aggregation_strategy="none", ignore_labels=[])
    results = tag(SENTENCES, is_split_into_words=True)
    ours = our_first_subword_probs(bottom, tagger, path, SENTENCES, temperature)
    for (word_starts, probs), result in zip(ours, results):
        at = {entry["index"]: entry for entry in result}  # "index": the subword's position in the input ids
        assert [at[i]["entity"] for i in word_starts.tolist()] == [LABELS[k] for k in probs.argmax(1)]
        np.testing.assert_allclose([at[i]["score"] for i in word_starts.tolist()], probs.max(1), atol=2e-5)
    assert len({k for _, probs in ours for k in probs.argmax(1)}) > 2  # several labels seen, not one constant


def test_hf_export_refuses_what_is_not_a_plain_classifier(tiny_encoder, tmp_path):
    _, tagger = random_tagger(tiny_encoder, 1)
    with pytest.raises(ValueError, match="9 labels"):
        export_hf_token_classification(tagger, tiny_encoder, LABELS[:-1] + ["O"], tmp_path / "a")
    for temperature in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            export_hf_token_classification(tagger, tiny_encoder, LABELS, tmp_path / "a", temperature=temperature)
    for tiny in (1e-300, 1e-38):  # 1e-38: finite float32 weights whose scores overflow (the pipeline gave NaN)
        with pytest.raises(ValueError, match=f"temperature {tiny!r}: the classifier's weights divided by it overflow"):
            export_hf_token_classification(tagger, tiny_encoder, LABELS, tmp_path / "a", temperature=tiny)
    _, top = split_encoder(load_pretrained(tiny_encoder), 1)
    with pytest.raises(ValueError, match="'crf' head"):
        export_hf_token_classification(Tagger(top, len(LABELS), head="crf", lstm_hidden=4), tiny_encoder, LABELS,
                                       tmp_path / "a")
    _, deep = split_encoder(load_pretrained(tiny_encoder), 3)
    deep.layers.append(deep.layers[0])  # four tuned layers for a three-layer encoder
    with pytest.raises(ValueError, match="has only 3"):
        export_hf_token_classification(Tagger(deep, len(LABELS)), tiny_encoder, LABELS, tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temporary folder left


def test_an_export_never_writes_into_a_folder_that_holds_files(tiny_encoder, tmp_path):
    _, tagger = random_tagger(tiny_encoder, 1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        export_hf_token_classification(tagger, tiny_encoder, LABELS, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    out = export_hf_token_classification(tagger, tiny_encoder, LABELS, tmp_path / "empty")
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]  # no temporary folder left


# ------------------------------------------------------------------------------------------- CTranslate2



@pytest.fixture(scope="module")
def toy_vocab(tmp_path_factory):
    """A 12-piece sentencepiece model (pad, unk, <s>, </s>, ▁ and 7 letters): ids the size of the toy task's."""
    rng = np.random.default_rng(0)
    text = [" ".join(rng.choice(list("abcdefg"), 8)) for _ in range(200)]
    vocab = train_vocab(text, tmp_path_factory.mktemp("vocab") / "toy.model", vocab_size=12)
    assert len(vocab) == 12
    return vocab


def pieces_of(vocab, ids):
    return [vocab.processor.id_to_piece(i) for i in ids]


def ids_of(vocab, pieces):
    return [vocab.processor.piece_to_id(p) for p in pieces]


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
def test_ctranslate2_scores_equal_our_teacher_forced_log_probs(toy_vocab, norm_first, tmp_path):
    torch.manual_seed(0)
    config = TransformerConfig.preset("tiny", vocab_size=12, norm_first=norm_first, n_encoder_layers=2,
                                      n_decoder_layers=2, max_positions=32)
    model = TranslationModel(config).eval()  # random weights: every parameter matters, none has learnt to hide
    out = export_ctranslate2(model, toy_vocab.path, tmp_path / "ct2")

    pairs = toy_examples(torch.Generator().manual_seed(1), 8)
    batch = collate(pairs)
    with torch.no_grad():
        ours = model.log_probs_teacher_forced(batch.src, batch.tgt_in).gather(2, batch.tgt_out[..., None])[..., 0]
    results = ctranslate2.Translator(str(out), intra_threads=1).score_batch(
        [pieces_of(toy_vocab, src) for src, _ in pairs], [pieces_of(toy_vocab, tgt) for _, tgt in pairs])
    for row, ((_, target), result) in enumerate(zip(pairs, results)):
        assert ids_of(toy_vocab, result.tokens) == [*target, 3]  # target then EOS
        np.testing.assert_allclose(result.log_probs, ours[row, : len(target) + 1].numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def briefly_trained(toy_vocab):
    """40 updates on the toy task: EOS is learnt (every output ends before the length limit) but many outputs are
    still wrong, so greedy and beam search disagree on some sentences."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = TranslationModel(TransformerConfig.preset("tiny", vocab_size=12, max_positions=32))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, betas=(0.9, 0.98))
    for _ in range(40):
        batch = collate(toy_examples(generator, 128))
        loss = label_smoothed_loss(model(batch.src, batch.tgt_in), batch.tgt_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# Our search's settings in CTranslate2's terms: no length penalty (theirs is length**alpha, ours GNMT's, equal only
# at 0), an empty output allowed.
AS_OURS = dict(length_penalty=0.0, min_decoding_length=0, return_scores=True)


def test_ctranslate2_greedy_and_beam_outputs_equal_ours(toy_vocab, briefly_trained, tmp_path):
    out = export_ctranslate2(briefly_trained, toy_vocab.path, tmp_path / "ct2")
    translator = ctranslate2.Translator(str(out), intra_threads=1)
    held_out = toy_examples(torch.Generator().manual_seed(99), 200)
    src = collate(held_out).src
    caps = output_length_caps(src, briefly_trained.config.max_positions).tolist()
    assert len(set(caps)) == 4  # sources of 5 to 8 tokens: caps 17 to 22, four calls
    outputs = {}
    for beam in (1, 4):
        ours = beam_search([briefly_trained], src, beam_size=beam, alpha=0.0)
        theirs = ctranslate2_translate_capped(translator, [pieces_of(toy_vocab, s) for s, _ in held_out], caps,
                                              beam_size=beam, **AS_OURS)
        assert all(len(tokens) < cap - 1 for tokens, cap in zip(ours.tokens, caps))  # every output ended by choice
        assert [ids_of(toy_vocab, r.hypotheses[0]) for r in theirs] == ours.tokens
        np.testing.assert_allclose([r.scores[0] for r in theirs], ours.scores.numpy(), atol=1e-4)
        outputs[beam] = ours.tokens
    assert outputs[1] != outputs[4]  # the beam did change some outputs: the search itself was compared


def test_ctranslate2_stops_at_our_cap_without_eos(toy_vocab, briefly_trained, tmp_path):
    # A cap of 4 tokens, EOS included: the toy outputs (3 to 6 symbols) mostly reach it. Greedy, both stop after the
    # same 3 pieces, but we force EOS there and count its log-probability, CTranslate2 does not: where the cap
    # binds the scores differ by exactly log p(EOS | those 3 pieces), so a beam can rank its hypotheses otherwise.
    out = export_ctranslate2(briefly_trained, toy_vocab.path, tmp_path / "ct2")
    held_out = toy_examples(torch.Generator().manual_seed(99), 40)
    src = collate(held_out).src
    ours = greedy_decode([briefly_trained], src, max_len=4)
    caps = output_length_caps(src, briefly_trained.config.max_positions, max_len=4).tolist()
    theirs = ctranslate2_translate_capped(ctranslate2.Translator(str(out), intra_threads=1),
                                          [pieces_of(toy_vocab, s) for s, _ in held_out], caps, beam_size=1, **AS_OURS)
    assert [ids_of(toy_vocab, r.hypotheses[0]) for r in theirs] == ours.tokens
    at_cap = [i for i, tokens in enumerate(ours.tokens) if len(tokens) == 3]
    assert len(at_cap) >= 30
    hypotheses = collate([(held_out[i][0], ours.tokens[i]) for i in at_cap])
    with torch.no_grad():
        eos = briefly_trained.log_probs_teacher_forced(hypotheses.src, hypotheses.tgt_in)[:, -1, 3]  # after piece 3
    np.testing.assert_allclose([theirs[i].scores[0] for i in at_cap], (ours.scores[at_cap] - eos).numpy(), atol=1e-4)


def test_ctranslate2_folder_holds_the_sentencepiece_model_and_is_refused_a_wrong_vocabulary(toy_vocab, tmp_path):
    model = TranslationModel(TransformerConfig.preset("tiny", vocab_size=12, max_positions=32))
    out = export_ctranslate2(model, toy_vocab.path, tmp_path / "ct2")
    assert (out / SENTENCEPIECE_FILE).read_bytes() == toy_vocab.path.read_bytes()
    assert len(SubwordVocab(out / SENTENCEPIECE_FILE)) == 12
    with pytest.raises(ValueError, match="12 pieces; the model's vocabulary has 13"):
        export_ctranslate2(TranslationModel(TransformerConfig.preset("tiny", vocab_size=13)), toy_vocab.path,
                           tmp_path / "other")
    with pytest.raises(UserError, match="not an empty folder"):
        export_ctranslate2(model, toy_vocab.path, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]
