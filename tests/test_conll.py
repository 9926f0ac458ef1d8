"""Tag schemes and the CoNLL column reader, on hand-worked examples and tiny fixture files."""

import warnings

import numpy as np
import pytest

from ensemble_distill.data.conll import FLAGS, label_vocab, read_conll, tag_corpus
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
    text = ("@paulwalk\tO\nIt\tO\n\t\nEmpire\tB-location\nState\tI-location\nwatched\u200bwas\tO\n\n"
            "new york\tB-location\n")
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
    ("columns.txt", "EU NNP I-NP I-ORG\nrejects VBZ O\n", {}, 2,
     "3 columns, but the file's first token line (line 1) has 4"),
    ("scheme.txt", "a O\nb O\n\nc U-PER\n", {}, 4, "unknown tag scheme: tag 'U-PER'"),
    ("iobes.txt", "a\tS-LOC\n", {"scheme": "iob2"}, 1, "unknown tag scheme"),
    ("words.txt", "EU\tB-ORG\tNNP\n", {"tag_col": 2}, 1,  # a word where the tag is: the column, most likely
     "tag 'NNP' is not O, B-TYPE or I-TYPE (IOB1/IOB2); if the tags are in another column, set data.tag_col"),
    ("words.txt", "EU\tB-ORG\tNNP\n", {"tag_col": 2, "names": FLAGS}, 1, "set --tag-col"),
    ("iob2.txt", "a\tO\n\nb\tB-PER\nc\tI-LOC\n", {"scheme": "iob2"}, 4, "invalid IOB2: 'I-LOC' after 'B-PER'"),
    ("bytes.txt", b"a O\n\nb O\nc\xff\xfe O\n", {}, 4, "not utf-8 text: byte 0xff at column 2"),
    ("col.txt", "a O\n", {"tag_col": 3}, 1, "data.tag_col = 3 is outside the line's 2 columns"),
    ("col.txt", "a O\n", {"tag_col": 3, "names": FLAGS}, 1, ": --tag-col 3 is outside the line's 2 columns"),
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

    # IOB1 (the default): the tags are named as the file writes them, I-LOC (B-LOC once converted to IOB2)
    test_path = write(tmp_path, "test", "x I-PER\n\ny O\nz I-LOC\nw I-LOC\n\nv I-MISC\n")
    test = read_conll(test_path)
    with pytest.raises(UserError, match=f"^{test_path}:4: tag 'I-LOC' never occurs in the training data"):
        tag_corpus(test_path, test, labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapped = tag_corpus(test_path, test, labels, unknown_tag="O")
    assert [ids.tolist() for ids in mapped.tag_ids] == [[1], [0, 0, 0], [0]]
    assert len(caught) == 1 and "3 tags" in str(caught[0].message)
    assert "3 tags never seen in training were mapped to O: I-LOC x2, I-MISC x1" in str(caught[0].message)
    assert all(ids.dtype == np.int64 for ids in mapped.tag_ids)
    with pytest.raises(UserError, match="^data.unknown_tag: 'drop'"):
        tag_corpus(test_path, test, labels, unknown_tag="drop")


# --- line breaks, byte-order marks, encodings ------------------------------------------------------------------

CONLL2003_SENTENCES = [(["EU", "rejects", "German", "call", "."], ["B-ORG", "O", "B-MISC", "O", "O"], 3),
                       (["Peter", "Blackburn", "Smith"], ["B-PER", "I-PER", "B-PER"], 9),
                       (["BRUSSELS"], ["B-LOC"], 15)]  # by hand, as in test_conll2003_layout


def as_tuples(sentences):
    return [(s.tokens, s.tags, s.line) for s in sentences]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", ["", "\ufeff"])
@pytest.mark.parametrize("final_newline", [True, False])
def test_every_line_break_convention_reads_the_same(tmp_path, newline, bom, final_newline):
    text = CONLL2003 if final_newline else CONLL2003.rstrip("\n")
    path = write(tmp_path, "f.txt", (bom + text.replace("\n", newline)).encode())
    assert as_tuples(read_conll(path)) == CONLL2003_SENTENCES


def test_cr_only_file_of_the_issue(tmp_path):
    sentences = read_conll(write(tmp_path, "cr.txt", b"EU I-ORG\rrejects O\r\rPeter I-PER\r"), scheme="iob1")
    assert as_tuples(sentences) == [(["EU", "rejects"], ["B-ORG", "O"], 1), (["Peter"], ["B-PER"], 4)]


@pytest.mark.parametrize("content, line", [
    (b"EU I-ORG\rrejects O\n\nPeter I-PER\n", 1),  # CR and LF breaks mixed
    (b"a O\r\nb O\r\n\r\nc\rd O\r\n", 4),  # a CR inside a token of a CRLF file
    (b"a O\nb O\r", 2),  # a CR-terminated last line after LF lines
    (b"a O\r\r\n", 1),  # CR CR LF: a CR that is not part of the break
])
def test_cr_inside_a_line_is_refused_naming_file_and_line(tmp_path, content, line):
    path = write(tmp_path, "mixed.txt", content)
    with pytest.raises(UserError, match=rf"^{path}:{line}: carriage return \(CR\) inside a line"):
        read_conll(path)


def test_unicode_separators_are_text_not_line_breaks(tmp_path):
    # U+2028, U+0085 and form feed would each split a line under str.splitlines
    text = "a\u2028b O\nc\x85 O\nd\x0ce O\n"
    assert read_conll(write(tmp_path, "u.txt", text))[0].tokens == ["a\u2028b", "c\x85", "d\x0ce"]


def test_byte_order_marks_of_concatenated_files_are_dropped(tmp_path):
    text = "\ufeffa O\n\n\ufeff-DOCSTART- -X- O O\n\n\ufeffb I-PER\n"  # `cat` of three files with marks
    assert as_tuples(read_conll(write(tmp_path, "cat.txt", text))) == [(["a"], ["O"], 1), (["b"], ["B-PER"], 5)]


def test_latin1_needs_the_encoding_setting(tmp_path):
    path = write(tmp_path, "deu.train", "Frau O\n\nMüller I-PER\n".encode("latin-1"))
    with pytest.raises(UserError, match=rf"^{path}:3: not utf-8 text: byte 0xfc at column 2 .*set data.encoding"):
        read_conll(path)
    assert as_tuples(read_conll(path, encoding="latin-1")) == [(["Frau"], ["O"], 1), (["Müller"], ["B-PER"], 3)]
    assert read_conll(path, encoding="cp1252")[1].tokens == ["Müller"]
    cr = write(tmp_path, "deu.cr", "a O\r\rMü O\r".encode("latin-1"))  # the line of a bad byte in a CR file
    with pytest.raises(UserError, match=rf"^{cr}:3: not utf-8 text: byte 0xfc at column 2"):
        read_conll(cr)


def test_utf8_read_as_latin1_warns_and_marks_disagree(tmp_path):
    utf8 = write(tmp_path, "utf8.txt", "Müller B-PER\n".encode())
    with pytest.warns(UserWarning, match="valid UTF-8 with non-ASCII characters.*check data.encoding"):
        assert read_conll(utf8, encoding="latin-1")[0].tokens == ["MÃ¼ller"]
    bom = write(tmp_path, "bom.txt", b"\xef\xbb\xbfa O\n")
    with pytest.raises(UserError, match=rf'^{bom}:1: starts with a UTF-8 byte-order mark.*data.encoding = "utf-8"'):
        read_conll(bom, encoding="latin-1")
    utf16 = write(tmp_path, "utf16.txt", "a O\r\n\r\nb I-LOC\r\n".encode("utf-16"))
    with pytest.raises(UserError, match=rf"^{utf16}:1: not utf-8 text: .*UTF-16 or UTF-32 byte-order mark"):
        read_conll(utf16)
    assert as_tuples(read_conll(utf16, encoding="utf-16")) == [(["a"], ["O"], 1), (["b"], ["B-LOC"], 3)]
    with pytest.raises(UserError, match="^data.encoding: 'utf-9' is not a text encoding"):
        read_conll(utf8, encoding="utf-9")


# --- comments -------------------------------------------------------------------------------------------------

GERMEVAL = "#\thttp://example.org/a\t[2009-10-17]\n1\tAnna\tB-PER\tO\n2\tlebt\tO\tO\n"


def test_germeval_comment_lines_are_skipped(tmp_path):
    text = GERMEVAL + "\n#\thttp://example.org/b\t[2009-10-18]\n1\tin\tO\tO\n2\tBerlin\tB-LOC\tO\n"
    sentences = read_conll(write(tmp_path, "germeval.tsv", text), token_col=1, tag_col=2, scheme="iob2")
    assert as_tuples(sentences) == [(["Anna", "lebt"], ["B-PER", "O"], 2), (["in", "Berlin"], ["O", "B-LOC"], 6)]


def test_comments_off_name_line_1_and_the_setting(tmp_path):
    path = write(tmp_path, "germeval.tsv", GERMEVAL)
    with pytest.raises(UserError) as caught:
        read_conll(path, token_col=1, tag_col=2, scheme="iob2", comment_prefix="")
    assert str(caught.value) == (f"{path}:2: 4 columns, but the file's first token line (line 1) has 3; line 1 "
                                 "starts with '#': if it is a comment line, data.comment_prefix = \"#\" skips "
                                 "comments")


def test_conllu_comments_and_hash_tokens(tmp_path):
    # a `#` token line (the file's columns, a tag in the tag column) stays a token, first in a sentence or not
    text = "# sent_id = 1\n# text = # wins\n# O\nwins O\n\n#\nPeter B-PER\n# O\n"
    path = write(tmp_path, "u.conll", text)
    assert as_tuples(read_conll(path)) == [(["#", "wins"], ["O", "O"], 3), (["Peter", "#"], ["B-PER", "O"], 7)]
    tabs = write(tmp_path, "t.tsv", "#\tO\nx\tB-PER\n\n#\tB-LOC\n")
    assert as_tuples(read_conll(tabs)) == [(["#", "x"], ["O", "B-PER"], 1), (["#"], ["B-LOC"], 4)]
    other = write(tmp_path, "o.txt", "// doc 1\na O\n\n# O\n")
    assert as_tuples(read_conll(other, comment_prefix="//")) == [(["a"], ["O"], 2), (["#"], ["O"], 4)]


def test_a_comment_like_line_inside_a_sentence_is_a_token_line(tmp_path):
    path = write(tmp_path, "inside.txt", "Anna B-PER\n# x y\nlebt O\n")
    with pytest.raises(UserError, match=rf"^{path}:2: 3 columns, .* has 2 \(a line starting with '#' is a comment "
                                        "only before a sentence's first token"):
        read_conll(path)


@pytest.mark.parametrize("content", ["# only\n# comments here\n", "#\n\n# a b c\n", "\ufeff# x y\r\n"])
def test_a_file_of_comments_has_no_sentences(tmp_path, content):
    path = write(tmp_path, "c.txt", content)
    with pytest.raises(UserError, match=f"^{path}: no sentences .*comment"):
        read_conll(path)


# --- dialects: language prefixes, stray I-, trailing TABs, blank lines ---------------------------------------

WIKIANN = "en:John\tB-PER\nen:Smith\tI-PER\nen:lives\tO\n\nen:12:30\tO\nen::\tO\n"


def test_language_prefix_is_removed_by_the_setting(tmp_path):
    path = write(tmp_path, "wikiann.tsv", WIKIANN)
    sentences = read_conll(path, scheme="iob2", token_prefix="[a-z]+:")
    assert [s.tokens for s in sentences] == [["John", "Smith", "lives"], ["12:30", ":"]]
    assert [s.tags for s in sentences] == [["B-PER", "I-PER", "O"], ["O", "O"]]


def test_language_prefix_without_the_setting_warns_and_a_wrong_setting_is_refused(tmp_path):
    path = write(tmp_path, "wikiann.tsv", WIKIANN)
    with pytest.warns(UserWarning, match="every token starts with 'en:' .*: data.token_prefix = \"en:\" removes it"):
        assert read_conll(path, scheme="iob2")[0].tokens == ["en:John", "en:Smith", "en:lives"]
    with pytest.raises(UserError, match=rf"^{path}:1: token 'en:John' does not start with data.token_prefix 'de:'"):
        read_conll(path, scheme="iob2", token_prefix="de:")
    with pytest.raises(UserError, match="^data.token_prefix: '\\[' is not a regular expression"):
        read_conll(path, token_prefix="[")
    with warnings.catch_warnings():  # tokens that merely start with letters and a colon in places: no warning
        warnings.simplefilter("error")
        read_conll(write(tmp_path, "mixed.tsv", "en:John\tB-PER\nsaid\tO\n"), scheme="iob2")


def test_stray_i_in_iob2_names_the_scheme_that_reads_it(tmp_path):
    from seqeval.metrics.sequence_labeling import get_entities

    text = "Madrid\tI-LOC\nes\tO\nbonita\tO\n\nla\tO\nReal\tI-ORG\nSociedad\tI-ORG\nde\tB-ORG\n"
    path = write(tmp_path, "esp.train", text)
    with pytest.raises(UserError, match=rf'^{path}:1: invalid IOB2: \'I-LOC\' at the start of a sentence .*'
                                        r'scheme = "iob1" reads it'):
        read_conll(path, scheme="iob2")
    sentences = read_conll(path, scheme="iob1")
    assert [s.tags for s in sentences] == [["B-LOC", "O", "O"], ["O", "B-ORG", "I-ORG", "B-ORG"]]
    # the spans are those seqeval's default (lenient) mode reads from the raw tags
    raw = [line.split("\t")[1] for line in text.split("\n") if line]
    assert get_entities(sum((s.tags for s in sentences), [])) == get_entities(raw[:3]) + [
        (kind, start + 3, end + 3) for kind, start, end in get_entities(raw[3:])]


@pytest.mark.parametrize("text", [
    "John\tB-PER\t\nlives\tO\t\n",  # every line with an empty last column
    "John\tB-PER\t\nlives\tO\n",  # some lines
    "John\tB-PER\t \t\nlives\tO \n",  # TABs and spaces at the end
    "John B-PER\t\nlives O\n",  # a space-separated file with a trailing TAB on its first line
])
def test_trailing_tabs_are_not_a_column(tmp_path, text):
    sentences = read_conll(write(tmp_path, "t.tsv", text), scheme="iob2")
    assert as_tuples(sentences) == [(["John", "lives"], ["B-PER", "O"], 1)]


def test_blank_lines_of_spaces_and_tabs_end_sentences(tmp_path):
    text = "a O\n \t \nb O\n\t\n  \nc O"
    sentences = read_conll(write(tmp_path, "b.txt", text))
    assert as_tuples(sentences) == [(["a"], ["O"], 1), (["b"], ["O"], 3), (["c"], ["O"], 6)]


# --- entity types of evaluation data against the training labels ----------------------------------------------

def test_entity_types_missing_from_evaluation_data_are_reported_once_with_counts(tmp_path):
    labels = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    test_path = write(tmp_path, "test", "a I-PER\nb I-PER\nc O\nd I-LOC\n\ne I-PER\nf B-PER\n")
    test = read_conll(test_path)  # entities by hand: PER 3 (a b, e, f), LOC 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tag_corpus(test_path, test, labels)
    assert [str(w.message) for w in caught] == [
        f"{test_path}: entity types differ from the training data's (LOC, MISC, ORG, PER): no MISC, ORG entities "
        "here. Entities per type here: LOC 1, MISC 0, ORG 0, PER 3"]
    with warnings.catch_warnings():  # the same types: silent
        warnings.simplefilter("error")
        tag_corpus(test_path, test, ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])


def test_settings_reach_the_reader_from_the_config(tmp_path):
    from ensemble_distill.config import TaggingConfig, load_config
    from ensemble_distill.tasks.ner import _read

    config = write(tmp_path, "c.toml", '\ufeff[data]\r\nencoding = "latin-1"\r\ntoken_prefix = "de:"\r\n'
                                       'comment_prefix = "%"\r\n')  # a config with a byte-order mark and CRLF
    data = load_config(config, TaggingConfig).data
    path = write(tmp_path, "de.tsv", "% Kommentar x\nde:Müller\tI-PER\n".encode("latin-1"))
    assert as_tuples(_read(data, path)) == [(["Müller"], ["B-PER"], 2)]
    for key, value in (("encoding", '"utf-9"'), ("token_prefix", '"("')):
        with pytest.raises(UserError, match=f"^{tmp_path / 'bad.toml'}: 'data.{key}' is not"):
            load_config(write(tmp_path, "bad.toml", f"[data]\n{key} = {value}\n"), TaggingConfig)
