"""Tag schemes and the CoNLL column reader, on hand-worked examples and tiny fixture files."""

import warnings

import numpy as np
import pytest

from ensemble_distill.data.conll import label_vocab, read_conll, tag_corpus
from ensemble_distill.data.tags import TagError, entity_types, iob1_to_iob2, validate_iob2
from ensemble_distill.errors import UserError


# --- tag schemes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("iob1, iob2", [
    ("I-PER I-PER I-LOC", "B-PER I-PER B-LOC"),
    ("I-ORG B-ORG", "B-ORG B-ORG"),
    ("O I-MISC I-MISC O I-MISC", "O B-MISC I-MISC O B-MISC"),
    ("I-PER O I-PER B-PER I-PER", "B-PER O B-PER B-PER I-PER"),
    ("B-LOC I-LOC I-PER", "B-LOC I-LOC B-PER"),
    ("I-creative-work I-creative-work", "B-creative-work I-creative-work"),
    ("O O", "O O"),
])
def test_iob1_to_iob2(iob1, iob2):
    converted = iob1_to_iob2(iob1.split())
    assert converted == iob2.split()
    validate_iob2(converted)


@pytest.mark.parametrize("tags, index", [("I-PER", 0), ("O I-PER", 1), ("B-PER I-LOC", 1), ("B-PER I-PER O I-PER", 3)])
def test_validate_iob2_finds_the_first_bad_tag(tags, index):
    with pytest.raises(TagError) as caught:
        validate_iob2(tags.split())
    assert caught.value.index == index


@pytest.mark.parametrize("tag", ["U-PER", "E-LOC", "S-X", "L-ORG", "PER", "B-", "b-PER", "BPER"])
def test_unknown_tag_scheme(tag):
    with pytest.raises(TagError, match="unknown tag scheme"):
        iob1_to_iob2(["O", tag])
    with pytest.raises(TagError) as caught:
        validate_iob2(["O", tag])
    assert caught.value.index == 1


def test_entity_types():
    assert entity_types(["O", "B-PER", "I-PER", "B-LOC", "I-creative-work"]) == ["LOC", "PER", "creative-work"]


# --- reader: one fixture per real layout ---------------------------------------------------------------------

def write(tmp_path, name, text):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


CONLL2003 = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER

-DOCSTART- -X- O O

BRUSSELS NNP I-NP I-LOC
"""


def test_conll2003_layout(tmp_path):
    sentences = read_conll(write(tmp_path, "eng.train", CONLL2003), scheme="iob1")
    assert [s.tokens for s in sentences] == [["EU", "rejects", "German", "call", "."],
                                             ["Peter", "Blackburn", "Smith"], ["BRUSSELS"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O", "B-MISC", "O", "O"],
                                           ["B-PER", "I-PER", "B-PER"], ["B-LOC"]]
    assert [s.line for s in sentences] == [3, 9, 15]
    assert label_vocab(sentences) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_wnut17_layout_tabs_iob2_and_whitespace_only_separators(tmp_path):
    # WNUT-17 separates some sentences with a line holding a lone TAB; tokens may contain spaces and odd unicode
    text = "@paulwalk\tO\nIt\tO\n\t\nEmpire\tB-location\nState\tI-location\nwatched\u200bwas\tO\n\nnew york\tB-location\n"
    sentences = read_conll(write(tmp_path, "wnut17train.conll", text), scheme="iob2")
    assert [s.tokens for s in sentences] == [["@paulwalk", "It"], ["Empire", "State", "watched\u200bwas"], ["new york"]]
    assert [s.tags for s in sentences] == [["O", "O"], ["B-location", "I-location", "O"], ["B-location"]]
    assert [s.line for s in sentences] == [1, 4, 8]


def test_europarl_layout_five_tab_columns_no_final_blank_line(tmp_path):
    text = ("Frau\tFrau\tNN\tI-NC\tO\nSchulz\tSchulz\tNE\tI-NC\tI-PER\n\n"
            "Präsidentin\tPräsidentin\tNN\tI-NC\tO\nEuropäische\teuropäisch\tADJA\tI-NC\tI-ORG\n"
            "Union\tUnion\tNN\tI-NC\tI-ORG\nBerlin\tBerlin\tNE\tI-NC\tI-LOC")
    sentences = read_conll(write(tmp_path, "train.tsv", text), scheme="iob1")
    assert [s.tags for s in sentences] == [["O", "B-PER"], ["O", "B-ORG", "I-ORG", "B-LOC"]]
    assert sentences[1].tokens[0] == "Präsidentin"
    # another column as the token: the lemma
    lemmas = read_conll(write(tmp_path, "train.tsv", text), token_col=1, tag_col=4)
    assert lemmas[1].tokens == ["Präsidentin", "europäisch", "Union", "Berlin"]


def test_explicit_separator_and_crlf(tmp_path):
    sentences = read_conll(write(tmp_path, "f.txt", "a b|O\r\nc|I-X\r\n"), sep="|")
    assert sentences[0].tokens == ["a b", "c"] and sentences[0].tags == ["O", "B-X"]


# --- reader errors name file:line ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content, kwargs, line, problem", [
    ("columns.txt", "EU NNP I-NP I-ORG\nrejects VBZ O\n", {}, 2, "3 columns, but the file's first token line has 4"),
    ("scheme.txt", "a O\nb O\n\nc U-PER\n", {}, 4, "unknown tag scheme: tag 'U-PER'"),
    ("iobes.txt", "a\tS-LOC\n", {"scheme": "iob2"}, 1, "unknown tag scheme"),
    ("iob2.txt", "a\tO\n\nb\tB-PER\nc\tI-LOC\n", {"scheme": "iob2"}, 4, "invalid IOB2: 'I-LOC' after 'B-PER'"),
    ("bytes.txt", b"a O\n\nb O\nc\xff\xfe O\n", {}, 4, "not UTF-8: byte 0xff"),
    ("col.txt", "a O\n", {"tag_col": 3}, 1, "tag_col=3 is outside the line's 2 columns"),
])
def test_errors_name_file_and_line(tmp_path, name, content, kwargs, line, problem):
    path = write(tmp_path, name, content)
    with pytest.raises(UserError) as caught:
        read_conll(path, **kwargs)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: ")
    assert problem in message


@pytest.mark.parametrize("content", ["", "\n\n", "-DOCSTART- -X- O O\n\n"])
def test_empty_file(tmp_path, content):
    path = write(tmp_path, "empty.txt", content)
    with pytest.raises(UserError, match=f"^{path}: no sentences"):
        read_conll(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_conll(tmp_path / "absent.conll")


def test_bad_scheme_name(tmp_path):
    with pytest.raises(UserError, match="scheme: 'bio'"):
        read_conll(write(tmp_path, "f", "a O\n"), scheme="bio")


# --- label vocabulary and ids ---------------------------------------------------------------------------------

def test_label_vocab_has_both_prefixes_of_every_type(tmp_path):
    sentences = read_conll(write(tmp_path, "t", "a\tB-PER\nb\tO\n\nc\tB-LOC\nd\tI-LOC\n"), scheme="iob2")
    assert label_vocab(sentences) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_tag_ids_and_unseen_tags(tmp_path):
    train = read_conll(write(tmp_path, "train", "a I-PER\nb I-PER\n\nc O\n"))
    labels = label_vocab(train)
    corpus = tag_corpus("train", train, labels)
    assert [ids.tolist() for ids in corpus.tag_ids] == [[1, 2], [0]]

    test_path = write(tmp_path, "test", "x I-PER\n\ny O\nz I-LOC\nw I-LOC\n\nv I-MISC\n")
    test = read_conll(test_path)
    with pytest.raises(UserError, match=f"^{test_path}:4: tag 'B-LOC' never occurs in the training data"):
        tag_corpus(test_path, test, labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapped = tag_corpus(test_path, test, labels, unknown_tag="O")
    assert [ids.tolist() for ids in mapped.tag_ids] == [[1], [0, 0, 0], [0]]
    assert len(caught) == 1 and "3 tags" in str(caught[0].message)
    assert "B-LOC x1, B-MISC x1, I-LOC x1" in str(caught[0].message)
    assert all(ids.dtype == np.int64 for ids in mapped.tag_ids)
    with pytest.raises(UserError, match="unknown_tag: 'drop'"):
        tag_corpus(test_path, test, labels, unknown_tag="drop")
