"""Pretraining, continued pretraining and passkey fine-tuning, cached by their parameters.

The accuracy pipeline of Section 4 at a small scale, one chain per pattern::

    base   (full attention, language modelling on long-form text)
      -> cpt      (continued pretraining with the pattern, same objective)
        -> ft@L1 -> ft@L2 -> ... (passkey fine-tuning, curriculum short -> long)
          -> ft@L_long ...       (optional extra stages, e.g. the 64K analogue)

Every stage is described by a JSON-able *spec* that nests its parent's spec,
so the SHA-256 of the spec names the whole history that produced a
checkpoint. ``train_stage(spec)`` returns ``<cache>/ckpt/<name>-<hash>/``,
training it (and, first, any missing ancestor) only when it is not there yet.
While a stage trains, its model and optimiser state are saved every
``save_every_s`` seconds to ``partial.pt`` in that folder, so an interrupted
run resumes where it stopped; batches are drawn from ``rng(seed, step)``, so a
resumed run sees the same data as an uninterrupted one.

What is *not* in the key: the attention backend (reference / Triton / flex
compute the same function up to rounding), the device, the micro-batch size
(gradient accumulation of the same batch), progress bars. CPU and GPU runs
therefore share keys but each machine has its own ``.cache``.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lib.data.corpus import TokenStream, cache_root, load_corpus
from lib.data.passkey import PasskeyTask, passkey_batch
from lib.masks import PATTERNS
from lib.model import build_model, load_model, model_config, save_model, set_pattern

#: Bump when a change to this file changes what a spec trains.
CODE_VERSION = 1

#: Default pipeline parameters = the GPU run of params/04_figure3_passkey/gpu.yaml (the notebooks'
#: ``pipeline`` dict overrides any of these).
PIPELINE_DEFAULTS = dict(
    seed=0,
    block_size=32,
    model=dict(num_layers=8, hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=384,
               max_position_embeddings=8192, rope_theta=100000.0),
    corpus=dict(name="shakespeare", max_docs=None),
    base=dict(seq_len=1024, steps=500, batch_tokens=32768, lr=2e-3, warmup=50),
    cpt=dict(seq_len=4096, steps=100, batch_tokens=32768, lr=1e-3, warmup=10),
    finetune=dict(lengths=[512, 1024, 2048, 4096], steps=[800, 300, 300, 300], batch_tokens=32768, lr=2e-3, warmup=40,
                  n_digits=5, filler="repeat"),
    long=dict(lengths=[8192], steps=200, patterns=["stride_slash", "power"]),
)


class TimeBudgetExceeded(RuntimeError):
    """Raised when a training deadline passes; the stage's progress is saved in partial.pt."""


# ----------------------------------------------------------------------------- config and keys
def _merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if k not in out:
            raise ValueError(f"unknown pipeline parameter {k!r}; accepted: {sorted(out)}")
        out[k] = _merge(out[k], v) if isinstance(out[k], dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


def pipeline_config(overrides: dict | None = None) -> dict:
    """PIPELINE_DEFAULTS with ``overrides`` applied (nested dicts merge), validated."""
    cfg = _merge(PIPELINE_DEFAULTS, overrides)
    cfg["model"] = model_config(**cfg["model"])
    bs = cfg["block_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ValueError(f"block_size must be a positive integer, got {bs!r}")
    for name in ("base", "cpt", "finetune", "long"):
        steps = cfg[name]["steps"]
        steps = list(steps) if name == "finetune" and isinstance(steps, (list, tuple)) else [steps]
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
            raise ValueError(f"{name}.steps must be a non-negative integer (finetune: or one per length), "
                             f"got {cfg[name]['steps']!r}")
    ft_steps = cfg["finetune"]["steps"]
    if isinstance(ft_steps, (list, tuple)) and len(ft_steps) != len(cfg["finetune"]["lengths"]):
        raise ValueError(f"finetune.steps lists {len(ft_steps)} values for {len(cfg['finetune']['lengths'])} lengths")
    lengths = list(cfg["finetune"]["lengths"]) + list(cfg["long"]["lengths"])
    if any(not isinstance(L, int) or L < 1 for L in lengths):
        raise ValueError(f"curriculum lengths must be positive integers, got {lengths}")
    if lengths and max(lengths) > cfg["model"]["max_position_embeddings"]:
        raise ValueError(f"curriculum length {max(lengths)} exceeds max_position_embeddings "
                         f"{cfg['model']['max_position_embeddings']}")
    if list(cfg["finetune"]["lengths"]) != sorted(cfg["finetune"]["lengths"]):
        raise ValueError(f"finetune.lengths must increase (a curriculum), got {cfg['finetune']['lengths']}")
    bad = set(cfg["long"]["patterns"]) - set(PATTERNS)
    if bad:
        raise ValueError(f"long.patterns has unknown pattern(s) {sorted(bad)}")
    return cfg


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def stage_dir(spec: dict) -> Path:
    name = f"{spec['kind']}-{spec['pattern']}-{spec['seq_len']}"
    return cache_root() / "ckpt" / f"{name}-{spec_hash(spec)[:16]}"


def _stage_spec(kind, pattern, seq_len, st, cfg, parent, data):
    return dict(kind=kind, pattern=pattern, seq_len=int(seq_len), steps=int(st["steps"]),
                batch_tokens=int(st["batch_tokens"]), lr=float(st["lr"]), warmup=int(st["warmup"]),
                seed=int(cfg["seed"]), block_size=int(cfg["block_size"]), model=cfg["model"], data=data,
                parent=parent, version=CODE_VERSION)


def pipeline_specs(cfg: dict, pattern: str) -> list[dict]:
    """The chain of stage specs for ``pattern``: base, cpt, fine-tune stages (+ long stages)."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {list(PATTERNS)}")
    corpus = dict(cfg["corpus"])
    base = _stage_spec("lm", "full", cfg["base"]["seq_len"], cfg["base"], cfg, None, corpus)
    cpt = _stage_spec("lm", pattern, cfg["cpt"]["seq_len"], cfg["cpt"], cfg, base, corpus)
    chain = [base, cpt]
    ft = cfg["finetune"]
    task_cfg = dict(n_digits=int(ft["n_digits"]), filler=ft["filler"])
    lengths = list(ft["lengths"])
    if pattern in cfg["long"]["patterns"]:
        lengths += list(cfg["long"]["lengths"])
    for i, L in enumerate(lengths):
        if i < len(ft["lengths"]):
            steps = ft["steps"][i] if isinstance(ft["steps"], (list, tuple)) else ft["steps"]
        else:
            steps = cfg["long"]["steps"]
        st = {**ft, "steps": steps}
        chain.append(_stage_spec("passkey", pattern, L, st, cfg, chain[-1], task_cfg))
    return chain


def model_spec_for_length(cfg: dict, pattern: str, seq_len: int) -> dict:
    """The fine-tuned checkpoint that evaluates ``pattern`` at ``seq_len`` tokens:
    the first curriculum stage trained at a length >= seq_len (else the last)."""
    stages = [s for s in pipeline_specs(cfg, pattern) if s["kind"] == "passkey"]
    if not stages:
        return pipeline_specs(cfg, pattern)[1]
    main = [s for s in stages if s["seq_len"] <= max(cfg["finetune"]["lengths"])]
    if seq_len <= main[-1]["seq_len"]:
        return main[-1]
    for s in stages:
        if s["seq_len"] >= seq_len:
            return s
    return stages[-1]


# ----------------------------------------------------------------------------- helpers
def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _locked(directory: Path):
    """Exclusive lock on a stage folder (two notebooks may ask for the same stage at once)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_torch_save(obj, path: Path):
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


_STREAMS: dict = {}


def _token_stream(corpus: dict) -> TokenStream:
    key = json.dumps(corpus, sort_keys=True)
    if key not in _STREAMS:
        _STREAMS[key] = TokenStream(load_corpus(corpus["name"], max_docs=corpus.get("max_docs")))
    return _STREAMS[key]


def _batch(spec: dict, step: int) -> np.ndarray:
    """The whole batch of ``step`` (deterministic in seed and step)."""
    rng = np.random.default_rng([spec["seed"], step, spec["seq_len"], 7 if spec["kind"] == "lm" else 11])
    batch = max(1, spec["batch_tokens"] // spec["seq_len"])
    if spec["kind"] == "lm":
        return _token_stream(spec["data"]).batch(rng, batch, spec["seq_len"])
    task = PasskeyTask(spec["seq_len"], spec["data"]["n_digits"], spec["data"]["filler"])
    return passkey_batch(rng, batch, task)[0]


def _loss(model, ids: torch.Tensor, kind: str, n_digits: int) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1].float()
    lm = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    if kind == "lm":
        return lm
    # Passkey: next-token loss on the whole prompt (which also teaches the short-range copy
    # inside the needle, "12345 ... 12345 is the pass key") plus the loss on the answer digits,
    # which alone would be 5 tokens of thousands.
    answer = F.cross_entropy(logits[:, -n_digits:].flatten(0, 1), ids[:, -n_digits:].flatten())
    return lm + answer


def _autocast(device: torch.device):
    """Mixed precision context. We run in float32 everywhere: the model is tiny, and under
    bf16 autocast RoPE returns float32 q/k next to a bf16 v, which the kernels refuse.
    On CUDA, TF32 tensor cores keep the matrix products fast."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- training
def is_trained(spec: dict) -> bool:
    """The stage finished here (its weights may since have been pruned, see ``prune_weights``)."""
    return (stage_dir(spec) / "spec.json").exists()


def train_stage(spec: dict, *, device=None, backend: str = "reference", micro_batch_tokens: int | None = None,
                deadline: float | None = None, save_every_s: float = 60.0, progress: bool = True,
                need_weights: bool = True) -> Path:
    """Checkpoint folder of ``spec``, training it (and missing ancestors) if needed.

    ``need_weights=False``: a finished stage whose weights were pruned (only its
    spec and loss history kept) counts as done; with True it is retrained.

    ``deadline``: a ``time.monotonic()`` value; past it, progress is saved and
    ``TimeBudgetExceeded`` is raised (call again to resume).
    ``micro_batch_tokens``: split each batch into chunks of about this many
    tokens (gradient accumulation; bounds memory, e.g. for the reference backend).
    """
    out = stage_dir(spec)
    if (out / "model.safetensors").exists() or (not need_weights and is_trained(spec)):
        return out
    parent = None
    if spec["parent"] is not None:
        parent = train_stage(spec["parent"], device=device, backend=backend, micro_batch_tokens=micro_batch_tokens,
                             deadline=deadline, save_every_s=save_every_s, progress=progress)
    device = torch.device(device) if device is not None else default_device()
    with _locked(out):
        if (out / "model.safetensors").exists():  # finished by another process meanwhile
            return out
        _train(spec, out, parent, device, backend, micro_batch_tokens, deadline, save_every_s, progress)
    return out


def _train(spec, out, parent, device, backend, micro_batch_tokens, deadline, save_every_s, progress):
    torch.manual_seed(spec["seed"])
    if parent is None:
        model = build_model(seed=spec["seed"], **spec["model"])
    else:
        model = load_model(parent, spec["model"])
    model.to(device).train()
    set_pattern(model, spec["pattern"], spec["seq_len"], spec["block_size"], backend)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec["lr"], betas=(0.9, 0.95), eps=1e-8)
    history: list[dict] = []
    start = 0
    partial = out / "partial.pt"
    if partial.exists():
        state = torch.load(partial, map_location=device, weights_only=False)
        if state.get("spec_hash") == spec_hash(spec):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            start, history = state["step"], state["history"]

    def save_partial(step):
        _atomic_torch_save({"spec_hash": spec_hash(spec), "model": model.state_dict(), "opt": opt.state_dict(),
                            "step": step, "history": history}, partial)

    n_digits = spec["data"].get("n_digits", 0) if spec["kind"] == "passkey" else 0
    label = f"{spec['kind']} {spec['pattern']} @{spec['seq_len']}"
    last_save = time.monotonic()
    t0 = time.monotonic()
    bar = tqdm(range(start, spec["steps"]), initial=start, total=spec["steps"], desc=label, disable=not progress,
               mininterval=2.0)
    for step in bar:
        if deadline is not None and time.monotonic() > deadline:
            save_partial(step)
            bar.close()
            raise TimeBudgetExceeded(f"{label}: stopped at step {step}/{spec['steps']} (progress saved)")
        ids = torch.from_numpy(_batch(spec, step)).to(device)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, spec["steps"], spec["lr"], spec["warmup"])
        per_micro = len(ids) if not micro_batch_tokens else max(1, micro_batch_tokens // spec["seq_len"])
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in ids.split(per_micro):
            with _autocast(device):
                loss = _loss(model, chunk, spec["kind"], n_digits)
            (loss * len(chunk) / len(ids)).backward()
            total += loss.item() * len(chunk) / len(ids)
        if not math.isfinite(total):
            raise FloatingPointError(f"{label}: loss is {total} at step {step}")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append({"step": step, "loss": total})
        bar.set_postfix(loss=f"{total:.3f}", refresh=False)
        if time.monotonic() - last_save > save_every_s:
            save_partial(step + 1)
            last_save = time.monotonic()
    bar.close()
    save_model(model, out, extra={"spec": spec, "hash": spec_hash(spec)})
    (out / "history.json").write_text(json.dumps({"history": history, "seconds": time.monotonic() - t0,
                                                  "device": str(device), "backend": backend}) + "\n")
    (out / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")  # written last: "done"
    partial.unlink(missing_ok=True)


def stage_history(spec: dict) -> list[dict]:
    """Loss history of a finished stage ([] if not trained here)."""
    path = stage_dir(spec) / "history.json"
    return json.loads(path.read_text())["history"] if path.exists() else []


def train_pipeline(cfg: dict, pattern: str, need_weights: bool = True, **kwargs) -> list[Path]:
    """Train every stage of ``pattern``'s chain (cached); returns the checkpoint folders.

    With ``need_weights=False`` only the last stage is asked for, and stages
    whose weights were pruned after they finished are not retrained.
    """
    specs = pipeline_specs(cfg, pattern)
    if not need_weights:
        return [train_stage(specs[-1], need_weights=False, **kwargs)]
    return [train_stage(s, **kwargs) for s in specs]


def prune_weights(keep_specs: list[dict]) -> list[Path]:
    """Delete the weights (and unfinished state) of every checkpoint folder not named by
    ``keep_specs``; spec.json and history.json stay, so finished stages still count as
    done for ``need_weights=False``. Used to shrink a cache that must travel."""
    keep = {stage_dir(s).name for s in keep_specs}
    removed = []
    root = cache_root() / "ckpt"
    for d in sorted(root.glob("*")) if root.exists() else []:
        weights = d / "model.safetensors"
        if d.is_dir() and d.name not in keep and weights.exists():
            weights.unlink()
            removed.append(weights)
    return removed


def check_backend(backend: str, device=None, block_size: int = 32, head_dim: int = 32, num_heads: int = 4,
                  num_kv_heads: int = 2, patterns=("power", "stride_slash")) -> tuple[str, str]:
    """Return ``(backend to use, note)``: ``backend`` if its forward and gradients match the
    reference on a small random problem, else "reference" with the reason.

    This is how the notebooks honour ``backend="triton"``/``"flex"``/``"auto"`` and
    still run where the fast kernels are missing or wrong.
    """
    from lib.hf_attention import sparse_attention_at
    from lib.model import pattern_config

    if backend == "reference":
        return backend, "reference backend requested"
    device = torch.device(device) if device is not None else default_device()
    dtype = torch.float32  # what training uses (see _autocast)
    seq_len = 8 * block_size
    gen = torch.Generator().manual_seed(0)
    try:
        for pattern in patterns:
            cfg = pattern_config(pattern, seq_len, block_size)
            q, k, v = (torch.randn(2, h, seq_len, head_dim, generator=gen) for h in (num_heads, num_kv_heads, num_kv_heads))
            w = torch.randn(2, num_heads, seq_len, head_dim, generator=gen)
            results = []
            for b in (backend, "reference"):
                qq, kk, vv = (t.to(device, dtype if b != "reference" else torch.float32).requires_grad_() for t in (q, k, v))
                out = sparse_attention_at(qq, kk, vv, pattern, block_size, b, cfg)
                (out.float() * w.to(device)).sum().backward()
                results.append([out.float(), qq.grad.float(), kk.grad.float(), vv.grad.float()])
            for name, a, r in zip(("out", "dq", "dk", "dv"), *results):
                err = ((a - r).norm() / r.norm()).item()
                if not err < 3e-2:
                    return "reference", f"{backend}: {pattern} {name} relative error {err:.2e} vs reference; using reference"
    except Exception as e:  # missing kernels, compile failure, unsupported shape...
        return "reference", f"{backend} failed ({type(e).__name__}: {str(e)[:200]}); using reference"
    return backend, f"{backend} matches the reference (forward and gradients) on {list(patterns)}"


def run_plan(params: dict, budget_minutes: float | None = None, order=None, prune: bool = False,
             progress: bool = True) -> dict:
    """Train and score everything notebook 04 needs (its parameter dict), pattern by pattern,
    within an optional time budget; the notebooks then find it all in the cache.

    Used for GPU runs longer than one call: run, bring ``.cache`` along, run again.
    ``prune``: afterwards keep weights only where later work still needs them.
    """
    from lib.evaluation import evaluate_passkey, passkey_cache_path

    cfg = pipeline_config(params.get("pipeline"))
    device = default_device()
    m = cfg["model"]
    requested = params.get("backend", "auto")
    backend, note = check_backend(requested, device, cfg["block_size"], m["hidden_size"] // m["num_heads"],
                                  m["num_heads"], m["num_kv_heads"])
    if backend == "reference" and requested in ("auto", "triton") and device.type == "cuda":
        alt, alt_note = check_backend("flex", device, cfg["block_size"], m["hidden_size"] // m["num_heads"],
                                      m["num_heads"], m["num_kv_heads"])
        note += f"; {alt_note}"
        backend = alt
    print(f"attention backend: {note}", flush=True)
    micro = params.get("micro_batch_tokens")
    if micro is None and backend == "reference" and device.type == "cuda":
        micro = 8192  # the reference materialises [B, H, S, S] scores: bound the batch per pass
    eval_kw = dict(samples_per_block=params.get("samples_per_block", 5), min_samples=params.get("min_samples", 0))
    train_kw = dict(device=device, backend=backend, micro_batch_tokens=micro,
                    deadline=None if budget_minutes is None else time.monotonic() + 60 * budget_minutes,
                    progress=progress)
    order = list(order or ("power", "stride_slash", "sliding_window", "full", "dilated", "longnet"))

    def evals(p):
        lengths = list(params["eval_lengths"]) + (list(params["long_lengths"]) if p in cfg["long"]["patterns"] else [])
        return [(model_spec_for_length(cfg, p, L), L) for L in dict.fromkeys(lengths)]

    status = {}
    try:
        for p in order:
            t0 = time.monotonic()
            train_pipeline(cfg, p, need_weights=False, **train_kw)
            for spec, L in evals(p):
                evaluate_passkey(spec, L, batch_size=params.get("eval_batch_size", 16), device=device,
                                 backend=backend, train_kwargs=train_kw, progress=progress, **eval_kw)
            status[p] = f"done in {time.monotonic() - t0:.0f} s"
            print(f"{p}: {status[p]}", flush=True)
    except TimeBudgetExceeded as e:
        print(f"time budget reached: {e}", flush=True)
    if prune:
        keep = []
        for p in order:
            if all(passkey_cache_path(s, L, **eval_kw).exists() for s, L in evals(p)):
                continue
            chain = pipeline_specs(cfg, p)
            with_weights = [s for s in chain if (stage_dir(s) / "model.safetensors").exists()]
            keep += with_weights[-1:]
        removed = prune_weights(keep)
        print(f"pruned {len(removed)} weight files; kept {[stage_dir(s).name for s in keep]}", flush=True)
    for d in sorted((cache_root() / "ckpt").glob("*")):
        h = d / "history.json"
        if h.exists():
            info = json.loads(h.read_text())
            n = len(info["history"])
            print(f"  {d.name}: {n} steps, {info['seconds']:.1f} s ({n / max(info['seconds'], 1e-9):.1f} steps/s), "
                  f"final loss {info['history'][-1]['loss'] if n else float('nan'):.3f}")
    return dict(backend=backend, note=note, status=status)


def main(argv=None):
    import argparse

    import yaml

    ap = argparse.ArgumentParser(description="Train and score the passkey pipeline of notebook 04 (cached).")
    ap.add_argument("--params", required=True, help="params/04_figure3_passkey/<profile>.yaml")
    ap.add_argument("--budget-minutes", type=float, default=None)
    ap.add_argument("--order", nargs="*", default=None, help="patterns, in training order")
    ap.add_argument("--prune", action="store_true", help="keep only the weights later work needs")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    with open(args.params) as fh:
        params = yaml.safe_load(fh)
    run_plan(params, args.budget_minutes, args.order, args.prune, progress=not args.no_progress)


if __name__ == "__main__":
    main()
