"""Tag schemes for NER: IOB1 and IOB2 tags of the form `O`, `B-TYPE`, `I-TYPE`.

IOB1 (CoNLL-2003, Europarl): a span starts with I- unless it directly follows a span of the same type, where
B- marks the boundary. IOB2 (WNUT-17, and what this project trains on): every span starts with B-.
Reading as IOB1 is also the repair of an IOB2 file with stray I- tags (an I-X after O, after another type, or
opening a sentence): `iob1_to_iob2` leaves valid IOB2 unchanged and starts a span at each stray I-, as
conlleval and seqeval's default mode do.
Tags of any other scheme (IOBES `S-X`/`E-X`, BILOU `U-X`/`L-X`, bare types) are rejected, not guessed at.

Errors are `TagError`s that carry the position of the offending tag, so a reader can name the file line.
"""

OUTSIDE = "O"


class TagError(ValueError):
    """A tag that is not valid in its scheme; `index` is its position in the sentence."""

    def __init__(self, index: int, problem: str):
        super().__init__(problem)
        self.index = index


def split_tag(tag: str, index: int = 0) -> tuple[str, str]:
    """`B-PER` -> ("B", "PER"); `O` -> ("O", ""). Anything else is a TagError."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, dash, entity_type = tag.partition("-")
    if prefix not in ("B", "I") or not dash or not entity_type:
        raise TagError(index, f"unknown tag scheme: tag {tag!r} is not O, B-TYPE or I-TYPE (IOB1/IOB2)")
    return prefix, entity_type


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 -> IOB2: an I-X that does not continue a span of type X starts one, so it becomes B-X."""
    converted = []
    previous_type = ""
    for index, tag in enumerate(tags):
        prefix, entity_type = split_tag(tag, index)
        if prefix == "I" and entity_type != previous_type:
            tag = f"B-{entity_type}"
        converted.append(tag)
        previous_type = entity_type
    return converted


def validate_iob2(tags: list[str], iob1_reads: str = 'scheme = "iob1" reads it') -> None:
    """Raise a TagError at the first tag that breaks IOB2: an I-X must continue a B-X or I-X span. `iob1_reads`:
    how the message names the setting that reads such tags as IOB1."""
    previous_type = ""
    for index, tag in enumerate(tags):
        prefix, entity_type = split_tag(tag, index)
        if prefix == "I" and entity_type != previous_type:
            after = f"after {tags[index - 1]!r}" if index else "at the start of a sentence"
            raise TagError(index, f"invalid IOB2: {tag!r} {after} (an IOB2 span starts with B-); {iob1_reads}, "
                                  "starting a span at such an I- as conlleval does")
        previous_type = entity_type


def entity_types(label_names) -> list[str]:
    """The entity types named by a label vocabulary, sorted: ["O", "B-PER", "I-PER", "B-LOC"] -> ["LOC", "PER"]."""
    return sorted({split_tag(name, index)[1] for index, name in enumerate(label_names)} - {""})


def iob2_labels(types) -> list[str]:
    """The full IOB2 label vocabulary over entity types: "O" first, then B- and I- of each type in sorted order."""
    return [OUTSIDE] + [f"{prefix}-{entity_type}" for entity_type in sorted(types) for prefix in ("B", "I")]
