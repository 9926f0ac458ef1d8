import gzip

import pytest

from ensemble_distill.data.parallel import FilterCounts, filter_by_length, read_parallel
from ensemble_distill.errors import UserError


def write(path, data: bytes):
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)
    return path


def test_reads_plain_and_gzip_pairs_stripped(tmp_path):
    src = write(tmp_path / "train.de.gz", "Ein Hund läuft.\n  Zwei Männer \r\n".encode())
    tgt = write(tmp_path / "train.en", b"A dog runs.\nTwo men\n")
    assert read_parallel(src, tgt) == [("Ein Hund läuft.", "A dog runs."), ("Zwei Männer", "Two men")]


def test_line_count_mismatch_names_the_shorter_file_and_line(tmp_path):
    src = write(tmp_path / "a.de", b"eins\nzwei\ndrei\n")
    tgt = write(tmp_path / "a.en", b"one\ntwo\n")
    with pytest.raises(UserError, match=rf"^{tgt}:3: ends after 2 lines but {src} has 3$"):
        read_parallel(src, tgt)


@pytest.mark.parametrize("empty_side", ["src", "tgt"])
def test_empty_line_on_one_side_names_that_file_and_line(tmp_path, empty_side):
    src = write(tmp_path / "b.de", b"eins\nzwei\n" if empty_side == "tgt" else b"eins\n \n")
    tgt = write(tmp_path / "b.en", b"one\ntwo\n" if empty_side == "src" else b"one\n\n")
    bad = src if empty_side == "src" else tgt
    with pytest.raises(UserError, match=rf"^{bad}:2: empty line"):
        read_parallel(src, tgt)


def test_undecodable_bytes_name_file_line_and_byte(tmp_path):
    src = write(tmp_path / "c.de.gz", b"gut\nschlecht \xff\xfe\n")
    tgt = write(tmp_path / "c.en", b"good\nbad\n")
    with pytest.raises(UserError, match=rf"^{src}:2: not utf-8 text: byte 0xff at column 10 cannot be decoded$"):
        read_parallel(src, tgt)


def test_nul_characters_are_refused_as_binary_naming_file_and_line(tmp_path):
    tgt = write(tmp_path / "n.en", b"one\ntwo\n")
    src = write(tmp_path / "n.de", b"eins\nzw\x00ei\n")  # valid UTF-8, but no text holds U+0000
    with pytest.raises(UserError, match=rf"^{src}:2: holds a NUL character \(U\+0000\): a binary file, not text "
                                        r"\(or UTF-16/32 text read as utf-8\)$"):
        read_parallel(src, tgt)
    wide = write(tmp_path / "w.de", "eins\nzwei\n".encode("utf-16-le"))  # no byte-order mark
    with pytest.raises(UserError, match=rf"^{wide}:1: holds a NUL character"):
        read_parallel(wide, tgt)


def test_windows_text_read_as_latin1_is_refused_naming_cp1252(tmp_path):
    from ensemble_distill.data.text import read_text_lines

    path = write(tmp_path / "de.txt", "Ja.\nDer Zug fährt nach „Paris“.\n".encode("cp1252"))
    # latin-1 decodes every byte: „ (0x84) would be the control character U+0084 glued to the word
    with pytest.raises(UserError, match=rf"^{path}:2: column 20 reads as the control character U\+0084 in latin-1; "
                                        r"the file is probably Windows text \(cp1252\), where that byte is '„'; set "
                                        r'--encoding to "cp1252"$'):
        read_text_lines(path, "latin-1", setting="--encoding")
    assert read_text_lines(path, "cp1252")[1] == "Der Zug fährt nach „Paris“."
    with pytest.raises(UserError, match=r'not utf-8 text: .* \(e\.g\. "cp1252" for Windows files, "latin-1"\)$'):
        read_text_lines(path, "utf-8", setting="--encoding")


def test_missing_and_damaged_files_are_user_errors(tmp_path):
    tgt = write(tmp_path / "d.en", b"x\n")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'none.de'}: no such file"):
        read_parallel(tmp_path / "none.de", tgt)
    not_gzip = tmp_path / "d.de.gz"
    not_gzip.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(UserError, match=rf"^{not_gzip}: cannot read"):
        read_parallel(not_gzip, tgt)


def test_length_filter_counts_each_drop_under_its_first_reason():
    pairs = [
        ([1, 2], [1, 2, 3]),  # kept
        ([], [1]),  # too short (also a bad ratio: counted once, as too short)
        ([1] * 6, [1]),  # too long (6 > 5) and a ratio of 6
        ([1], [1] * 4),  # ratio 4 > 3
        ([1] * 5, [1] * 5),  # kept: the limits are inclusive
        ([1], [1] * 3),  # kept: ratio exactly 3
    ]
    kept, counts = filter_by_length(pairs, min_len=1, max_len=5, max_ratio=3)
    assert kept == [0, 4, 5]
    assert counts == FilterCounts(kept=3, too_short=1, too_long=1, bad_ratio=1)
    assert counts.total == 6
    assert str(counts) == "kept 3 of 6 pairs (dropped: 1 too short, 1 too long, 1 length ratio)"


def test_length_filter_rejects_impossible_limits():
    with pytest.raises(UserError, match="min_len <= max_len"):
        filter_by_length([], min_len=5, max_len=2)


# --- line breaks and byte-order marks --------------------------------------------------------------------------

PAIRS = [("Ein Hund läuft.", "A dog runs."), ("Zwei Männer\u2028lachen.", "Two men laugh."), ("Ja", "Yes")]


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", ["", "\ufeff"])
@pytest.mark.parametrize("final_newline", [True, False])
def test_every_line_break_convention_reads_the_same_pairs(tmp_path, suffix, newline, bom, final_newline):
    # U+2028 inside a sentence is text: a str.splitlines reader would shift every later pair
    def side(name, texts):
        text = bom + newline.join(texts) + (newline if final_newline else "")
        return write(tmp_path / f"{name}{suffix}", text.encode())

    src = side("s.de", [de for de, _ in PAIRS])
    tgt = side("t.en", [en for _, en in PAIRS])
    assert read_parallel(src, tgt) == PAIRS


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("content, line", [
    (b"eins\rzwei\ndrei\n", 1),  # CR and LF breaks mixed: a CR-only reading would give 3 lines, LF 2
    (b"eins\r\nzwei \r drei\r\n", 2),  # a CR inside a sentence of a CRLF file
    (b"eins\nzwei\r", 2),
])
def test_cr_inside_a_line_is_refused_naming_file_and_line(tmp_path, suffix, content, line):
    src = write(tmp_path / f"m.de{suffix}", content)
    tgt = write(tmp_path / "m.en", b"one\ntwo\n")
    with pytest.raises(UserError, match=rf"^{src}:{line}: carriage return \(CR\) inside a line"):
        read_parallel(src, tgt)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n"])
def test_an_empty_pair_of_files_is_refused(tmp_path, content):
    src, tgt = write(tmp_path / "e.de", content), write(tmp_path / "e.en", content)
    with pytest.raises(UserError, match=rf"^{src}(: empty: no sentences|:1: empty line)"):
        read_parallel(src, tgt)


def test_byte_order_marks_do_not_reach_bleu(tmp_path):
    import sacrebleu

    references = ["A dog runs across the grass.", "Two men laugh at a joke.", "A girl in a red coat sings."]
    # the source joined with `cat` from files with marks
    src = write(tmp_path / "bom.de.gz", "\ufeffEin Hund.\nZwei Männer.\n\ufeffEin Mädchen.\n".encode())
    tgt = write(tmp_path / "bom.en", ("\ufeff" + "\n".join(references) + "\n").encode())
    pairs = read_parallel(src, tgt)
    assert [de for de, _ in pairs] == ["Ein Hund.", "Zwei Männer.", "Ein Mädchen."]
    read_references = [en for _, en in pairs]
    assert sacrebleu.corpus_bleu(references, [read_references]).score == pytest.approx(100)
    # what a mark left in the first reference costs: the check above can fail
    assert sacrebleu.corpus_bleu(references, [["\ufeff" + references[0]] + references[1:]]).score < 99
