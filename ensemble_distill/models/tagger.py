"""NER taggers over an encoder's fine-tuned top: an IID softmax head or a BiLSTM-CRF head.

Both work at word level: the encoder states of each word's first subword are gathered, so emissions,
losses and distributions are [batch, words, labels]. Whatever the head, `distributions` gives per-word
probabilities (IID: softmax; CRF: forward-backward marginals), the currency ensembles average.
"""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..encoders import EncoderTop
from .crf import LinearChainCRF

HEADS = ("iid", "crf")


class Tagger(nn.Module):
    def __init__(self, top: EncoderTop, num_labels: int, head: str = "iid", lstm_hidden: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head = head
        self.top = top
        self.dropout = nn.Dropout(dropout)
        width = top.hidden_size
        if head == "crf":
            self.lstm = nn.LSTM(width, lstm_hidden, batch_first=True, bidirectional=True)
            width = 2 * lstm_hidden
            self.crf = LinearChainCRF(num_labels)
        self.classifier = nn.Linear(width, num_labels)

    def emissions(self, states, attention_mask, word_starts, word_mask) -> torch.Tensor:
        """states [B, T, H] from the frozen bottom; word_starts [B, W] first-subword indices → [B, W, L] scores."""
        hidden = self.top(states, attention_mask)
        index = word_starts.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        words = self.dropout(torch.gather(hidden, 1, index))
        if self.head == "crf":
            # Packing keeps padding out of the backward direction of the LSTM.
            lengths = word_mask.sum(1).clamp(min=1).cpu()
            packed = pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
            words, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=words.shape[1])
            words = self.dropout(words)
        return self.classifier(words)

    def loss(self, emissions, labels, word_mask, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean negative log-likelihood per word (IID) or per sentence (CRF, the sequence NLL). label_smoothing α:
        IID (1 - α) NLL + α (1/L) Σ_j -log p_j per word (torch's cross_entropy); CRF: LinearChainCRF.nll."""
        if self.head == "crf":
            return self.crf.nll(emissions, labels.clamp(min=0), word_mask, reduction="mean",
                                label_smoothing=label_smoothing)
        return nn.functional.cross_entropy(emissions[word_mask], labels[word_mask], label_smoothing=label_smoothing)

    def distributions(self, emissions, word_mask) -> torch.Tensor:
        """Per-word label distributions [B, W, L]; rows at padding are meaningless."""
        if self.head == "crf":
            return self.crf.marginals(emissions, word_mask)
        return emissions.softmax(-1)
