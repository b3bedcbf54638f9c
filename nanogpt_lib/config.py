"""The model's hyper-parameters: one dataclass, checked when it is built.

The defaults are GPT-2 small (124M parameters). Part 1 of the series trains a much
smaller model (`part1_config`) on a single paragraph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024  # longest context the model sees (positions 0..block_size-1)
    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64
    n_layer: int = 12  # number of Transformer blocks
    n_head: int = 12  # attention heads per block; each gets n_embd // n_head dims
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout probability during training
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"GPTConfig.{name}={value!r} is not allowed: it must be a positive integer"
                )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                f"each head gets n_embd // n_head dimensions, so n_head must divide n_embd "
                f"(allowed n_head for n_embd={self.n_embd}: {_divisors(self.n_embd)})"
            )
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"GPTConfig.dropout={dropout!r} is not allowed: it must be a number in [0, 1)"
            )
        if not isinstance(self.bias, bool):
            raise ValueError(f"GPTConfig.bias={self.bias!r} is not allowed: it must be True or False")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**values)


def part1_config(vocab_size: int) -> GPTConfig:
    """The seed post's minimal model: 4 layers, 4 heads, 128 dims, context 100."""
    return GPTConfig(
        block_size=100,
        vocab_size=vocab_size,
        n_layer=4,
        n_head=4,
        n_embd=128,
        dropout=0.2,
        bias=True,
    )


def _divisors(n: int) -> str:
    divs = [str(d) for d in range(1, n + 1) if n % d == 0]
    return ", ".join(divs if len(divs) <= 12 else divs[:6] + ["..."] + divs[-3:])
