"""The seed post's 25 % check-up: eval loss and perplexity, reconstruction, continuation.

One function measures, one method prints; the command line and the notebooks share both, so
what a reader sees in a notebook is what `python -m nanogpt_lib.train` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .evaluation import Continuation, LossReport, Reconstruction, continue_text, evaluate, reconstruct
from .training import TrainConfig


@dataclass(frozen=True)
class Checkup:
    loss: LossReport  # eval mode (dropout off)
    reconstruction: Reconstruction
    continuation: Continuation

    def record(self) -> dict:
        """The numbers and texts, as stored in `History.quarters` and in checkpoints."""
        return {
            "eval_loss": self.loss.loss,
            "eval_perplexity": self.loss.perplexity,
            "reconstruction_accuracy": self.reconstruction.accuracy,
            "reconstruction": self.reconstruction.text,
            "continuation": self.continuation.generated,
        }

    def describe(self, epoch: int, total: int, percent: int, train_loss: float) -> str:
        c = self.continuation
        return (
            f"[{percent:3d}%] epoch {epoch}/{total}: train loss {train_loss:.4f} | "
            f"eval loss {self.loss.loss:.4f}, perplexity {self.loss.perplexity:.3f} | "
            f"reconstruction {self.reconstruction.accuracy:.1%}\n"
            f"  reconstruction: {self.reconstruction.text!r}\n"
            f"  continuation:   {c.prefix!r} + {c.generated!r}"
        )


def checkup(
    model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor, tokenizer, config: TrainConfig
) -> Checkup:
    """Measure the model on its training text ids (1, T) with the continuation settings of `config`."""
    return Checkup(
        loss=evaluate(model, ids, targets),
        reconstruction=reconstruct(model, ids, targets, tokenizer),
        continuation=continue_text(
            model, ids, tokenizer, config.cont_prefix_tokens, config.cont_new_tokens,
            temperature=config.cont_temperature, top_k=config.cont_top_k,
        ),
    )


def checkup_callback(model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor, tokenizer,
                     config: TrainConfig, write=print):
    """An `on_quarter` callback for `fit`: runs the check-up, writes its description, and returns
    its record (stored in `history.quarters`). Pass `write=tqdm.write` under a text progress bar."""

    def on_quarter(epoch: int, percent: int, history) -> dict:
        result = checkup(model, ids, targets, tokenizer, config)
        write(result.describe(epoch, config.epochs, percent, history.loss[-1]))
        return result.record()

    return on_quarter
