"""A joint source-target subword vocabulary: sentencepiece BPE trained on both sides of the parallel corpus.

    vocab = train_vocab(joint_sentences(pairs), "vocab.model")   # or SubwordVocab("vocab.model") later
    ids = vocab.encode(["Ein Hund rennt."])                       # [[...]], no BOS/EOS
    vocab.decode(ids)                                             # ["Ein Hund rennt."], detokenised for BLEU

One vocabulary serves both languages, as in the paper (32K joint BPE on WMT), so the Transformer can tie its
source embeddings, target embeddings and output projection into one matrix.

Size: 8000 pieces by default. Multi30k's 29K training pairs have short captions (~11-12 words) with about 4K
word types per side seen 5 or more times (25K German / 15K English types in all, whitespace-split). 8000 joint
pieces keep those frequent words whole on both sides while splitting the rare tail into pieces that are each seen
often enough to be learned; 32K would leave most pieces with a handful of occurrences. A small vocabulary also
keeps the output softmax (the largest single cost of a small model on a CPU) and the teacher store's
top-V' truncation cheap.

Special ids are fixed, not left to sentencepiece's defaults: pad=0, unk=1, bos=2, eos=3.
Text is normalised with sentencepiece's default NFKC rule (also collapsing repeated spaces) before encoding, so
decode(encode(text)) is the normalised text; references for BLEU are read from the raw files, not decoded.
"""

import io
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from ensemble_distill.errors import UserError, located
from ensemble_distill.io_utils import atomic_path

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
DEFAULT_VOCAB_SIZE = 8000


def joint_sentences(pairs: Iterable[tuple[str, str]]) -> Iterator[str]:
    """Both sides of every pair, one after the other: the training text of a joint vocabulary."""
    for src, tgt in pairs:
        yield src
        yield tgt


def train_vocab(sentences: Iterable[str], model_path, vocab_size: int = DEFAULT_VOCAB_SIZE,
                setting: str = "vocab_size") -> "SubwordVocab":
    """Train a BPE model on sentences (read from memory, all of them, in order) and write it atomically.
    Raises UserError naming `setting` (the config key of vocab_size) and, when sentencepiece says it, the largest
    size the text allows."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            # German and English letters are few; keep every one rather than map rare ones to unk
            character_coverage=1.0,
            input_sentence_size=0,  # use every sentence: no sampling, so training is deterministic
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as error:  # e.g. a vocab_size larger than the text supports
        largest = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", str(error))
        if largest:
            raise UserError(f"{setting} = {vocab_size}: more pieces than the training text allows; set {setting} "
                            f"to at most {largest.group(1)}") from None
        raise UserError(f"{setting} = {vocab_size}: sentencepiece could not train the vocabulary: {error}") from None
    with atomic_path(model_path) as temporary:
        temporary.write_bytes(model.getvalue())
    return SubwordVocab(model_path)


class SubwordVocab:
    """A trained sentencepiece model with the project's special ids."""

    def __init__(self, model_path):
        self.path = Path(model_path)
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.load(str(self.path))
        except (OSError, RuntimeError) as error:
            raise located(self.path, None, f"not a sentencepiece model: {error}") from None
        p = self.processor
        special_ids = (p.pad_id(), p.unk_id(), p.bos_id(), p.eos_id())
        if special_ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise located(self.path, None, f"special ids (pad, unk, bos, eos) are {special_ids}, expected 0, 1, 2, 3")

    def __len__(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Subword ids of each text, without BOS or EOS."""
        return self.processor.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Detokenised text of each id sequence; pad, bos and eos ids are dropped."""
        return self.processor.decode([[int(i) for i in seq] for seq in ids])

    def piece_names(self) -> list[str]:
        """Every piece of the vocabulary, by id: the label names of a translation model's outputs."""
        return [self.processor.id_to_piece(i) for i in range(len(self))]

    def pieces(self, text: str) -> list[str]:
        """The subword pieces of one text, for inspection."""
        return self.processor.encode(text, out_type=str)
