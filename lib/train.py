"""Training loop for causal LMs under a sparse attention pattern: resumable, budgeted, memory-bounded.

    history = train_loop(model, batch_fn, TrainSchedule(steps=200, lr=1e-4, warmup=20), device="cuda",
                         checkpoint="/var/tmp/run/cpt-power.pt", deadline=time.monotonic() + 500)

* ``batch_fn(step) -> (input_ids int64 [B, L], loss_weights float [B, L] or None)``: deterministic in
  ``step``, so a resumed run sees the same data as an uninterrupted one. ``loss_weights[b, t]``
  weighs the loss of predicting token ``t`` (from the tokens before it); None = mean over all tokens.
* Mixed precision: on CUDA, float32 master weights with bf16 autocast; on CPU, float32.
* Memory: the batch is split into micro-batches of at most ``micro_batch_tokens`` (gradient
  accumulation of the same batch: the step is unchanged) and the vocabulary projection and
  cross-entropy run in checkpointed chunks, so the [tokens, vocab] logits never exist at once.
* Resumable: every ``save_every_s`` seconds, and when ``deadline`` passes (``TimeBudgetExceeded``),
  the model, optimizer, step and history go to ``checkpoint``; the next call with the same
  ``run_key`` continues from there.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint
from tqdm.auto import tqdm

from lib.paths import atomic_file

LOSS_CHUNK_TOKENS = 8192


class TimeBudgetExceeded(RuntimeError):
    """The deadline passed; progress was saved to the checkpoint (call again to resume)."""


@dataclass(frozen=True)
class TrainSchedule:
    """Steps and learning rate: linear warm-up to ``lr``, then ``decay`` ("cosine" to
    ``final_lr_ratio`` x lr, or "constant")."""

    steps: int
    lr: float
    warmup: int = 0
    decay: str = "cosine"
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer, got {self.warmup!r}")
        if self.decay not in ("cosine", "constant"):
            raise ValueError(f"decay must be 'cosine' or 'constant', got {self.decay!r}")

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.decay == "constant":
            return self.lr
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        r = self.final_lr_ratio
        return self.lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _chunk_ce(head, h, targets, weights):
    logits = head(h).float()
    ce = F.cross_entropy(logits, targets, reduction="none")
    return (ce * weights).sum()


def causal_lm_loss(model, input_ids: torch.Tensor, loss_weights: torch.Tensor | None = None,
                   chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Weighted next-token cross-entropy without materialising all logits.

    ``loss_weights`` [B, L] (weight of predicting token t); default: mean over the B * (L - 1)
    predictions. Returns ``sum(ce * w)`` over predicted positions.
    """
    B, L = input_ids.shape
    backbone = getattr(model, model.base_model_prefix)  # the decoder without the vocabulary head
    hidden = backbone(input_ids=input_ids).last_hidden_state  # [B, L, H]
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = input_ids[:, 1:].reshape(-1)
    if loss_weights is None:
        w = torch.full((B * (L - 1),), 1.0 / (B * (L - 1)), device=h.device)
    else:
        w = loss_weights[:, 1:].reshape(-1).to(h.device, torch.float32)
    keep = w != 0
    if not bool(keep.all()):  # skip positions that do not count (e.g. answer-only losses)
        h, targets, w = h[keep], targets[keep], w[keep]
    head = model.get_output_embeddings()
    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, h.shape[0], chunk_tokens):
        sl = slice(s, s + chunk_tokens)
        if torch.is_grad_enabled():
            total = total + _checkpoint(_chunk_ce, head, h[sl], targets[sl], w[sl], use_reentrant=False)
        else:
            total = total + _chunk_ce(head, h[sl], targets[sl], w[sl])
    return total


@torch.no_grad()
def sequence_nll(model, input_ids: torch.Tensor, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Mean next-token loss of each row (float32 ``[B]``), one forward pass, logits in chunks."""
    B, L = input_ids.shape
    backbone = getattr(model, model.base_model_prefix)
    h = backbone(input_ids=input_ids).last_hidden_state[:, :-1].reshape(-1, model.config.hidden_size)
    targets = input_ids[:, 1:].reshape(-1)
    head = model.get_output_embeddings()
    ce = torch.cat([F.cross_entropy(head(h[s:s + chunk_tokens]).float(), targets[s:s + chunk_tokens], reduction="none")
                    for s in range(0, h.shape[0], chunk_tokens)])
    return ce.view(B, L - 1).mean(1)


def make_optimizer(model, schedule: TrainSchedule):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in decay)
    return torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused or None)


def train_loop(model, batch_fn, schedule: TrainSchedule, *, device, run_key: str = "", checkpoint=None,
               save_every_s: float = 120.0, deadline: float | None = None, micro_batch_tokens: int = 65536,
               progress: bool = True, desc: str = "train", optimizer=None, start_step: int = 0,
               history: list | None = None) -> list[dict]:
    """Train ``model`` in place for ``schedule.steps`` steps; returns the loss history.

    ``checkpoint``: path of the resumable state (None: no saving); ``run_key`` must match for a
    saved state to be resumed (a changed config starts over). ``optimizer``/``start_step``/
    ``history`` let a caller continue its own schedule (a curriculum of stages).
    """
    device = torch.device(device)
    model.to(device).train()
    opt = optimizer if optimizer is not None else make_optimizer(model, schedule)
    history = list(history or [])
    step = start_step
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.exists():
        state = torch.load(path, map_location=device, weights_only=False)
        if state.get("run_key") == run_key:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            step, history = state["step"], state["history"]

    def save():
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save({"run_key": run_key, "model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "history": history, "schedule": asdict(schedule)}, tmp)

    last_save = time.monotonic()
    t_start = time.monotonic()
    bar = tqdm(total=schedule.steps, initial=step, desc=desc, disable=not progress, mininterval=5.0)
    while step < schedule.steps:
        if deadline is not None and time.monotonic() > deadline:
            save()
            bar.close()
            raise TimeBudgetExceeded(f"{desc}: stopped at step {step}/{schedule.steps} (progress saved)")
        ids, weights = batch_fn(step)
        ids = torch.as_tensor(ids, device=device)
        weights = None if weights is None else torch.as_tensor(weights, device=device, dtype=torch.float32)
        if weights is None:  # mean over the whole batch, split exactly across micro-batches
            weights = torch.full(ids.shape, 1.0 / (ids.shape[0] * (ids.shape[1] - 1)), device=device)
        for g in opt.param_groups:
            g["lr"] = schedule.lr_at(step)
        opt.zero_grad(set_to_none=True)
        per = max(1, micro_batch_tokens // ids.shape[1])
        total = 0.0
        for sl in range(0, ids.shape[0], per):
            with autocast(device):
                loss = causal_lm_loss(model, ids[sl:sl + per], weights[sl:sl + per])
            loss.backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            raise FloatingPointError(f"{desc}: loss became {total} at step {step}")
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        opt.step()
        step += 1
        history.append(dict(step=step, loss=total, lr=schedule.lr_at(step - 1), grad_norm=float(norm),
                            seq_len=int(ids.shape[1]), batch=int(ids.shape[0]),
                            seconds=round(time.monotonic() - t_start, 3)))
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{total:.3f}")
        if path is not None and time.monotonic() - last_save > save_every_s and step < schedule.steps:
            save()
            last_save = time.monotonic()
    bar.close()
    model.eval()
    return history


__all__ = ["LOSS_CHUNK_TOKENS", "TimeBudgetExceeded", "TrainSchedule", "autocast", "causal_lm_loss",
           "make_optimizer", "sequence_nll", "train_loop"]
