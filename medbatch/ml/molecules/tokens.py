"""SMILES tokens and the vocabulary: ``Cl``, ``Br``, bracket atoms and ``%NN`` ring closures are one token each."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medbatch.errors import InvalidInput, ModelMisconfigured

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
#: SMILES tokens: bracket atoms, two-letter halogens, ring closures %NN, then single characters.
TOKEN_RE = re.compile(r"(\[[^\[\]]+\]|Br|Cl|%\d{2}|[BCNOPSFIbcnops]|[()=#\-+\\/:~@?>*$.]|\d)")


def tokenize(smiles: str) -> list[str]:
    """Split a SMILES string into tokens.

    Raises:
        InvalidInput: the string holds characters no token covers (so joining the tokens would not give
            the string back).
    """
    tokens = TOKEN_RE.findall(smiles)
    if "".join(tokens) != smiles:
        raise InvalidInput(f"cannot tokenize SMILES {smiles[:80]!r}")
    return tokens


@dataclass(frozen=True)
class Vocabulary:
    """Token <-> id. Ids 0, 1, 2 are padding, begin and end of sequence."""

    tokens: tuple[str, ...]

    @classmethod
    def build(cls, smiles: Sequence[str]) -> Vocabulary:
        """The sorted set of tokens of ``smiles``, after the three special tokens."""
        seen: set[str] = set()
        for s in smiles:
            seen.update(tokenize(s))
        return cls(SPECIALS + tuple(sorted(seen)))

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, smiles: str) -> list[int]:
        """``[BOS] + token ids + [EOS]``.

        Raises:
            InvalidInput: untokenizable SMILES or a token outside the vocabulary.
        """
        index = self.index
        try:
            return [1, *(index[t] for t in tokenize(smiles)), 2]
        except KeyError as exc:
            raise InvalidInput(f"token {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Sequence[int]) -> str:
        """The SMILES spelled by ``ids``, up to the first end token; padding and begin tokens are skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i == 2:
                break
            if i > 2:
                out.append(self.tokens[i])
        return "".join(out)

    def to_json(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        tokens = tuple(data["tokens"])
        if tokens[:3] != SPECIALS:
            raise ModelMisconfigured("vocabulary does not start with the special tokens")
        return cls(tokens)
