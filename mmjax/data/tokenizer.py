"""Text -> token ids. config.data.tokenizer: 'bytes' (default, no files) or a SentencePiece
model file ('path/to/spm.model').

Every tokenizer uses the batch contract's id layout: 0 is padding, 1 is reserved
(unknown / dropped token), and the tokenizer's own ids start at 2. `vocab_size` counts
those two, so the text encoder needs config.model.text.vocab_size >= vocab_size.
"""

from __future__ import annotations

import os

import numpy as np

PAD_ID = 0
RESERVED_ID = 1
OFFSET = 2


class ByteTokenizer:
    """UTF-8 bytes + 2: any text, no vocabulary file."""

    name = "bytes"
    vocab_size = 256 + OFFSET

    def ids(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + OFFSET


class SentencePieceTokenizer:
    """SentencePiece pieces + 2. The model is loaded lazily in each process that uses it,
    so the tokenizer object itself is just a path (cheap to send to grain workers)."""

    def __init__(self, path: str):
        self.name = path
        self._processor = None
        self.vocab_size = self._load().get_piece_size() + OFFSET

    def _load(self):
        if self._processor is None:
            import sentencepiece

            try:
                self._processor = sentencepiece.SentencePieceProcessor(model_file=self.name)
            except (OSError, RuntimeError) as e:
                raise ValueError(
                    f"config.data.tokenizer={self.name!r}: cannot load the SentencePiece model "
                    f"({e}); use 'bytes' or a .model file written by sentencepiece") from None
        return self._processor

    def __getstate__(self):
        return {"name": self.name, "vocab_size": self.vocab_size}

    def __setstate__(self, state):
        self.name, self.vocab_size, self._processor = state["name"], state["vocab_size"], None

    def ids(self, text: str) -> np.ndarray:
        return np.asarray(self._load().encode(text), np.int32) + OFFSET


def make_tokenizer(name: str = "bytes"):
    """'bytes' or a path to a SentencePiece model file -> a tokenizer."""
    if name in ("", "bytes"):
        return ByteTokenizer()
    if not os.path.isfile(name):
        raise ValueError(f"config.data.tokenizer={name!r} is neither 'bytes' nor an existing "
                         "SentencePiece model file")
    return SentencePieceTokenizer(name)


def tokenize(text: str, length: int, tokenizer=None) -> np.ndarray:
    """Token ids as int32 [length], truncated or zero-padded."""
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a str, got {type(text).__name__}")
    ids = (tokenizer or ByteTokenizer()).ids(text)[:length]
    tokens = np.zeros(length, np.int32)
    tokens[: len(ids)] = ids
    return tokens
