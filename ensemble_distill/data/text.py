"""Text files into lines, the same way for every reader (CoNLL columns, parallel text, hence vocabulary input).

    lines = read_text_lines("train.de.gz")                                  # gzip by the name's .gz
    lines = read_text_lines("deu.train", "latin-1", setting="data.encoding")

- Line breaks: LF, CRLF or CR, one convention for the whole file. A file holding any LF breaks at LF (a CR
  directly before an LF belongs to the break); a file with no LF breaks at CR (old Mac files). Any other CR in a
  file that breaks at LF (mixed endings, or a CR inside a sentence) is refused with file:line: it could be a break
  or text, and a wrong guess splits a sentence or shifts a parallel alignment.
- Other Unicode separators (U+2028, U+0085, form feed, ...) are text, not breaks, as in the tools that wrote
  these files; only str.splitlines treats them as breaks.
- A NUL character (U+0000), which every encoding decodes and no text holds, is refused naming file:line: the
  file is binary (or UTF-16/32 text read as another encoding).
- A C1 control character (U+0080-U+009F) in a file read as latin-1 or another 8-bit encoding is refused naming
  file:line: it is Windows text (cp1252: „ “ – € are those bytes) read as latin-1, and the words around it would be
  tagged wrong.
- A byte-order mark (U+FEFF) is dropped at the start of the file and at the start of any line (files joined
  with `cat`); a UTF-8 mark in a file declared as another encoding, or an undecodable byte, is an error naming
  file:line and the setting that picks the encoding.
"""

import codecs
import gzip
import re
import sys
import warnings
from pathlib import Path

from ..errors import UserError, located

BOM = "\ufeff"
_UNICODE_CODECS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")
_LONE_CR = re.compile(r"\r(?!\n)")
_C1 = re.compile("[\x80-\x9f]")  # C1 control characters: text in another encoding, never text itself


def read_text_lines(path, encoding: str = "utf-8", setting: str | None = None) -> list[str]:
    """The lines of a text file, without their line breaks; a name ending in .gz is read through gzip.

    path "-" reads standard input. encoding: any Python codec name. setting: the config key that chose it (named
    in error messages).
    A final line break does not start an empty last line. Raises UserError naming the file (and line).
    """
    if str(path) == "-":  # standard input, as command-line tools read it
        return _split_lines(Path("-"), _decode(Path("-"), sys.stdin.buffer.read(), encoding,
                                               _codec(encoding, setting), setting))
    path = Path(path)
    codec = _codec(encoding, setting)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise located(path, None, "no such file") from None
    except IsADirectoryError:
        raise located(path, None, "is a directory, not a text file") from None
    except (OSError, EOFError) as error:  # gzip raises BadGzipFile (an OSError) or EOFError on damaged files
        raise located(path, None, f"cannot read: {error}") from None
    return _split_lines(path, _decode(path, data, encoding, codec, setting))


def _decode(path, data: bytes, encoding: str, codec: str, setting: str | None) -> str:
    """`data` decoded with `codec` (the normalised name of `encoding`), a leading byte-order mark removed."""
    hint = f"; set {setting} to the file's encoding (e.g. \"cp1252\" for Windows files, \"latin-1\")" if setting else ""
    if data.startswith(codecs.BOM_UTF8) and codec not in _UNICODE_CODECS:
        raise located(path, 1, f"starts with a UTF-8 byte-order mark, but is read as {encoding}"
                               + (f'; set {setting} = "utf-8"' if setting else ""))
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as error:
        line, column = _byte_position(data, error.start)
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            hint += " (the file starts with a UTF-16 or UTF-32 byte-order mark)"
        raise located(path, line, f"not {encoding} text: byte {data[error.start]:#04x} at column {column} cannot "
                                  f"be decoded{hint}") from None
    nul = text.find("\x00")
    if nul >= 0:  # valid in every encoding, in no text: a binary file, or UTF-16/32 text read as another encoding
        wide = f" (or UTF-16/32 text read as {encoding}" + (f": set {setting})" if setting else ")")
        raise located(path, text.count("\n", 0, nul) + 1, "holds a NUL character (U+0000): a binary file, not "
                      "text" + (wide if codec not in _UNICODE_CODECS[2:] else ""))
    control = _C1.search(text) if codec not in _UNICODE_CODECS else None
    if control:  # latin-1 decodes every byte; Windows' „ “ – € are C1 controls there, which no text holds
        at = control.start()
        line, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
        windows = bytes([ord(control[0])]).decode("cp1252", errors="replace")
        raise located(path, line, f"column {column} reads as the control character U+{ord(control[0]):04X} in "
                                  f"{encoding}; the file is probably Windows text (cp1252), where that byte is "
                                  f"{windows!r}" + (f'; set {setting} to "cp1252"' if setting else ""))
    if codec not in _UNICODE_CODECS and not data.isascii() and _is_utf8(data):
        warnings.warn(f"{path}: read as {encoding}, but it is valid UTF-8 with non-ASCII characters, which {encoding} "
                      f"reads as other characters (e.g. 'Ã¤' for 'ä')" + (f"; check {setting}" if setting else ""))
    return text.removeprefix(BOM)


def _split_lines(path, text: str) -> list[str]:
    """Lines of decoded text under its one line-break convention (see the module docstring)."""
    if "\n" in text:
        stray = _LONE_CR.search(text)
        if stray:
            raise located(path, text.count("\n", 0, stray.start()) + 1,
                          "carriage return (CR) inside a line of a file whose lines end in LF or CRLF (mixed line "
                          "endings?): it could be a line break or text, so it is refused; use one convention")
        text, br = text.replace("\r\n", "\n"), "\n"
    else:
        br = "\r"
    lines = text.replace(br + BOM, br).split(br)
    return lines[:-1] if lines[-1] == "" else lines


def encoding_problem(encoding: str) -> str | None:
    """Why `encoding` cannot read a text file, as a phrase ("is not a text encoding ..."), or None: a name Python
    does not know, or one of its codecs that are not text encodings (hex, base64, rot13, zlib: codecs.lookup knows
    them, but they map bytes to bytes or text to text, which str.encode and bytes.decode refuse)."""
    examples = "(e.g. utf-8, latin-1, cp1252)"
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        return f"is not a text encoding Python knows {examples}"
    return None if codec._is_text_encoding else f"is a {codec.name} codec, not a text encoding {examples}"


def _codec(encoding: str, setting: str | None) -> str:
    if problem := encoding_problem(encoding):
        raise UserError(f"{setting or 'encoding'}: {encoding!r} {problem}")
    return codecs.lookup(encoding).name


def _byte_position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column in bytes) of a byte offset, under the file's line-break convention."""
    br = b"\n" if b"\n" in data else b"\r"
    return data.count(br, 0, offset) + 1, offset - (data.rfind(br, 0, offset) + 1) + 1


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
