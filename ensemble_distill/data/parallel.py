"""Line-aligned parallel text (one sentence a line, plain or .gz) and length filtering of sentence pairs.

    pairs = read_parallel("train.de.gz", "train.en.gz")              # [(source, target), ...]
    kept, counts = filter_by_length(encoded_pairs, max_len=100)     # lengths in subwords
    print(counts)                                                   # kept 28990 of 29000 (...)

Every defect in the files is a UserError naming the file and line: the two sides must have the same number of
lines, no line may be empty on either side, and the text must decode (UTF-8 unless the config's data.encoding
says otherwise). Line breaks may be LF, CRLF or CR (one
convention per file; a CR inside a line is refused, as it could shift the alignment); byte-order marks are
dropped (`text.py`).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from ensemble_distill.errors import UserError, located

from .text import read_text_lines


def read_parallel(src_path, tgt_path, encoding: str = "utf-8", setting: str | None = None) -> list[tuple[str, str]]:
    """The (source, target) sentence pairs of two line-aligned files, whitespace stripped at both ends.
    encoding: any Python codec name; setting: the config key that chose it (named in error messages)."""
    src_lines = read_lines(src_path, encoding, setting)
    tgt_lines = read_lines(tgt_path, encoding, setting)
    if not src_lines:
        raise located(src_path, None, "empty: no sentences")
    if len(src_lines) != len(tgt_lines):
        (short_path, n_short), (long_path, n_long) = sorted(
            [(src_path, len(src_lines)), (tgt_path, len(tgt_lines))], key=lambda side: side[1]
        )
        raise located(short_path, n_short + 1, f"ends after {n_short} lines but {long_path} has {n_long}")
    for number, (src, tgt) in enumerate(zip(src_lines, tgt_lines), start=1):
        for path, text, other_path in ((src_path, src, tgt_path), (tgt_path, tgt, src_path)):
            if not text:
                raise located(path, number, "empty line; each line must hold the sentence aligned with the same line "
                                            f"of {other_path}")
    return list(zip(src_lines, tgt_lines))


def read_lines(path, encoding: str = "utf-8", setting: str | None = None) -> list[str]:
    """The stripped lines of a text file (plain or .gz), under `text.read_text_lines`' rules: LF, CRLF or CR
    line breaks, a CR inside a line refused, byte-order marks dropped."""
    return [line.strip() for line in read_text_lines(path, encoding, setting)]


@dataclass(frozen=True)
class FilterCounts:
    """How many pairs a length filter kept and why it dropped the others (each drop counted under its first reason)."""

    kept: int
    too_short: int
    too_long: int
    bad_ratio: int

    @property
    def total(self) -> int:
        return self.kept + self.too_short + self.too_long + self.bad_ratio

    def __str__(self) -> str:
        return (
            f"kept {self.kept} of {self.total} pairs "
            f"(dropped: {self.too_short} too short, {self.too_long} too long, {self.bad_ratio} length ratio)"
        )


def filter_by_length(
    pairs: Sequence[tuple[Sequence, Sequence]], *, min_len: int = 1, max_len: int = 128, max_ratio: float = 9.0
) -> tuple[list[int], FilterCounts]:
    """Indices of the pairs whose sides both have min_len..max_len items (subword ids) and whose longer side is at
    most max_ratio times the shorter, with counts of what was dropped. The ratio 9 is the customary limit of
    Moses' clean-corpus-n; it only removes plainly misaligned pairs."""
    if min_len < 1 or max_len < min_len or max_ratio < 1:
        raise UserError("length filter needs 1 <= min_len <= max_len and max_ratio >= 1, got "
                        f"{min_len}, {max_len}, {max_ratio}")
    kept, too_short, too_long, bad_ratio = [], 0, 0, 0
    for index, (src, tgt) in enumerate(pairs):
        shorter, longer = sorted((len(src), len(tgt)))
        if shorter < min_len:
            too_short += 1
        elif longer > max_len:
            too_long += 1
        elif longer > max_ratio * shorter:
            bad_ratio += 1
        else:
            kept.append(index)
    return kept, FilterCounts(len(kept), too_short, too_long, bad_ratio)
