"""The accuracy pipeline on a pretrained model: one chain per attention pattern, resumable, budgeted.

Section 4 of the paper at the paper's geometry scaled by 4 (64-token blocks: 8K tokens = 128 blocks =
the paper's 32K), on SmolLM2-135M (30 layers) instead of Qwen2-7B (28 layers)::

    base model (pretrained, full attention)
      -> zero-shot: perplexity at 1K-8K (Table 1 "before"), passkey (no training)
      -> continued pretraining at 8K with the pattern (same tokens, schedule, data order for every pattern)
         -> perplexity at 1K-8K (Table 1)
         -> passkey fine-tuning, curriculum 1K -> 2K -> 4K -> 8K, one run per training seed
            -> passkey accuracy per length x depth (Figure 3a), alpha_k at 8K (Figure 1b),
               16K with extended positions for PowerAttention and stride slash (Figure 3b),
               probing features (Figures 5 and 7) for the patterns that need them

Every pattern's mask is ``lib.masks.section41_config(pattern, design_blocks)``, fixed for all stages
and evaluations (stride slash's stride included), and recorded with the results.

Work is cut into *units* (``unit_ids(params)``); each writes one JSON file under ``artifacts/`` when
it completes, so a run that stops (budget, error, lost machine) resumes at the first missing unit.
Weights live only in ``work/`` (continued-pretraining and fine-tuned checkpoints, partial training
states): they never need to leave the machine. ``python -m lib.pipeline --params P --work W
--budget-s S --out O`` runs until the budget and packs the artifacts into ``O/artifacts.tgz``.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from lib import hf_attention, masks
from lib.data.passkey import PasskeyBuilder, PasskeyPieces, PasskeyTask
from lib.data.text import TokenStream, eval_windows
from lib.evaluation import passkey_records, perplexity
from lib.paths import atomic_file
from lib.train import TimeBudgetExceeded, TrainSchedule, train_loop

PIPELINE_VERSION = 1

DEFAULTS = dict(
    model="smollm2-135m",
    block_size=64,
    design_blocks=128,
    patterns=["power", "stride_slash", "sliding_window", "full", "dilated", "longnet"],
    seeds={"default": [0]},
    corpus=dict(name="books", path=".cache/corpora/books/books.jsonl.gz", max_train_works=None, max_heldout_works=None),
    ppl=dict(lengths=[1024, 2048, 4096, 8192], tokens=131072, batch_tokens=65536),
    cpt=dict(seq_len=8192, steps=100, batch_tokens=65536, lr=5e-5, warmup=10, decay="cosine", seed=0),
    finetune=dict(lengths=[1024, 2048, 4096, 8192], steps=[30, 30, 30, 30], batch=[16, 16, 8, 8], lr=3e-5,
                  warmup=5, n_digits=5),
    passkey=dict(lengths=[1024, 2048, 4096, 8192], samples=100, zero_shot_samples=40, alpha_samples_per_block=5,
                 alpha_seeds=[0], eval_seed=1234),
    long=dict(seq_len=16384, patterns=["power", "stride_slash"], samples=128, rope_factor=2.0),
    probing=dict(enabled=False, seq_len=4096, n=1200, untrained=["full", "sliding_window", "power"],
                 trained=["sliding_window", "power"], folds=5, jobs=-1, batch_size=8),
    ruler=dict(enabled=False, lengths=[1024, 2048, 4096, 8192], n=100, tasks=None, seeds=[0], eval_seed=4321,
               ft=dict(seq_len=4096, steps=60, batch=8, lr=3e-5, warmup=5), hybrid_every=7, hybrid_full=2,
               haystack_works=8, batch_size=8, batch_tokens=None),
    train=True,
    micro_batch_tokens=65536,
    eval_batch_tokens=65536,
    backend="auto",
    save_every_s=120,
)


# ----------------------------------------------------------------------------- parameters
def _merge(base: dict, override: dict | None, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if k not in out:
            raise ValueError(f"unknown pipeline parameter '{where}{k}'; accepted: {sorted(out)}")
        out[k] = _merge(out[k], v, f"{where}{k}.") if isinstance(out[k], dict) and isinstance(v, dict) and k != "seeds" \
            else copy.deepcopy(v)
    return out


def config(params: dict | None = None) -> dict:
    """DEFAULTS with ``params`` applied (nested dicts merge), validated before any work."""
    cfg = _merge(DEFAULTS, params)
    bs = cfg["block_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 16 or bs & (bs - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {bs!r}")
    bad = [p for p in cfg["patterns"] if p not in masks.PATTERNS]
    if bad:
        raise ValueError(f"unknown pattern(s) {bad}; expected names from {list(masks.PATTERNS)}")
    cfg["masks"] = {p: masks.section41_config(p, cfg["design_blocks"]) for p in masks.PATTERNS}
    for p in cfg["patterns"]:  # a sparse pattern must stay sparse at the block count it is designed for
        row = int(masks.block_layout(p, cfg["design_blocks"], **cfg["masks"][p])[-1].sum())
        if p != "full" and row >= cfg["design_blocks"]:
            raise ValueError(f"{p}'s configuration {cfg['masks'][p]} reads all {row} blocks of the last row at "
                             f"design_blocks={cfg['design_blocks']}: not a sparse pattern at that block count")
    ft = cfg["finetune"]
    for key in ("steps", "batch"):
        if not isinstance(ft[key], list) or len(ft[key]) != len(ft["lengths"]):
            raise ValueError(f"finetune.{key} needs one value per curriculum length {ft['lengths']}, got {ft[key]!r}")
    if ft["lengths"] != sorted(ft["lengths"]):
        raise ValueError(f"finetune.lengths must increase (a curriculum), got {ft['lengths']}")
    for p in cfg["patterns"]:
        if not seeds_for(cfg, p):
            raise ValueError(f"no training seeds for {p}: give seeds[{p!r}] or seeds['default']")
    lengths = cfg["ppl"]["lengths"] + cfg["passkey"]["lengths"] + ft["lengths"] + [cfg["cpt"]["seq_len"]]
    for L in lengths:
        if L % bs:
            raise ValueError(f"length {L} is not a multiple of block_size {bs}")
    return cfg


def seeds_for(cfg: dict, pattern: str) -> list[int]:
    s = cfg["seeds"]
    return list(s.get(pattern, s.get("default", [])))


def params_digest(cfg: dict) -> str:
    blob = json.dumps({"cfg": cfg, "version": PIPELINE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_positions(model, seq_len: int, extended: bool = False):
    """Clear error when ``seq_len`` is beyond what the model's positions support (before any work)."""
    from lib.models import max_positions

    limit = max_positions(model)
    if seq_len > limit:
        hint = "" if extended else " (use lib.models.extend_positions(model, factor) to evaluate longer inputs)"
        raise ValueError(f"seq_len {seq_len} exceeds the model's {limit} positions{hint}")


# ----------------------------------------------------------------------------- units
def unit_ids(cfg: dict) -> list[str]:
    """Every unit of work, in the order the run does them (most important patterns first)."""
    ids = []
    for p in cfg["patterns"]:
        ids += [f"ppl-base/{p}", f"zeroshot/{p}"]
        if not cfg["train"]:
            continue
        ids += [f"cpt/{p}", f"ppl-cpt/{p}"]
        for s in seeds_for(cfg, p):
            ids += [f"ft/{p}/s{s}", f"passkey/{p}/s{s}"]
            if s in cfg["passkey"]["alpha_seeds"]:
                ids.append(f"alpha/{p}/s{s}")
            if p in cfg["long"]["patterns"] and s == seeds_for(cfg, p)[0]:
                ids.append(f"long/{p}/s{s}")
            if cfg["probing"]["enabled"] and p in cfg["probing"]["trained"] and s == seeds_for(cfg, p)[0]:
                ids.append(f"probe/{p}/trained")
    if cfg["probing"]["enabled"]:
        ids += [f"probe/{p}/untrained" for p in cfg["probing"]["untrained"]]
        ids += [u.replace("probe/", "probefit/") for u in ids if u.startswith("probe/")]
    if cfg["ruler"]["enabled"] and cfg["train"]:
        for s in cfg["ruler"]["seeds"]:
            for p in cfg["patterns"]:
                ids += [f"ruler-ft/{p}/s{s}", f"ruler/{p}/s{s}"]
    return ids


def _unit_file(artifacts: Path, uid: str) -> Path:
    return artifacts / (uid.replace("/", "__") + ".json")


def done(artifacts, uid: str) -> bool:
    return _unit_file(Path(artifacts), uid).exists()


def _write_unit(artifacts: Path, uid: str, data: dict):
    with atomic_file(_unit_file(artifacts, uid)) as tmp:
        tmp.write_text(json.dumps(data, default=_plain))


@contextlib.contextmanager
def run_lock(work, log=print):
    """Hold ``work/.run.lock`` exclusively: a second process that runs the same pipeline in the same folder (two
    notebooks, two terminals) waits here, then resumes at the first unit the first one did not finish."""
    import fcntl

    Path(work).mkdir(parents=True, exist_ok=True)
    with open(Path(work) / ".run.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is running this pipeline in {work}: waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _plain(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def load_artifacts(artifacts) -> dict:
    """Every finished unit of a run: ``{unit_id: data}`` plus ``_run`` (the run record), if present."""
    artifacts = Path(artifacts)
    out = {}
    for f in sorted(artifacts.glob("*.json")):
        key = f.stem.replace("__", "/")
        out[key] = json.loads(f.read_text())
    return out


# ----------------------------------------------------------------------------- the run
class Runner:
    """Holds the base model, the data and the device for one run (see the module docstring)."""

    def __init__(self, cfg: dict, work: Path, artifacts: Path, deadline: float | None, progress: bool = True,
                 device=None, log=print):
        from lib.models import load_pretrained

        self.cfg, self.work, self.artifacts = cfg, Path(work), Path(artifacts)
        self.deadline, self.progress, self.log = deadline, progress, log
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.work.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self.model, self.tokenizer = load_pretrained(cfg["model"], device="cpu", dtype=torch.float32)
        self.base_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.to(self.device)
        self.log(f"model {cfg['model']}: {self.model.config.num_hidden_layers} layers, loaded in "
                 f"{time.monotonic() - t0:.1f} s; device {self.device}")
        check_positions(self.model, max(cfg["ppl"]["lengths"] + cfg["passkey"]["lengths"] + [cfg["cpt"]["seq_len"]]))
        self.pieces = PasskeyPieces(self.tokenizer)
        self._train_docs = self._heldout_docs = None
        self._stream = None
        self.digest = params_digest(cfg)
        self.fitter = None

    # -- data
    def _corpus(self):
        if self._train_docs is None:
            self._train_docs, self._heldout_docs = corpus_split(self.cfg["corpus"])
        return self._train_docs, self._heldout_docs

    def stream(self) -> TokenStream:
        if self._stream is None:
            self._stream = TokenStream(self._corpus()[0], self.tokenizer)
        return self._stream

    # -- model state
    def set_pattern(self, pattern: str, full_layers=()):
        from lib.models import max_positions

        hf_attention.use_sparse_attention(self.model, pattern, block_size=self.cfg["block_size"],
                                          backend=self.cfg["backend"], full_layers=full_layers,
                                          max_context=max_positions(self.model), **self.cfg["masks"][pattern])

    def load_state(self, state_or_path):
        state = torch.load(state_or_path, map_location="cpu", weights_only=True) \
            if isinstance(state_or_path, (str, Path)) else state_or_path
        self.model.load_state_dict(state)
        self.model.to(self.device)

    def save_state(self, path: Path):
        with atomic_file(path) as tmp:
            torch.save({k: v.detach().to("cpu") for k, v in self.model.state_dict().items()}, tmp)

    def _eval_batch(self, seq_len: int) -> int:
        return max(1, self.cfg["eval_batch_tokens"] // seq_len)

    # -- units
    def ppl(self) -> dict:
        _, heldout = self._corpus()
        out = {}
        for L in self.cfg["ppl"]["lengths"]:
            w = eval_windows(heldout, self.tokenizer, L, self.cfg["ppl"]["tokens"])
            out[str(L)] = perplexity(self.model, w, batch_size=self._eval_batch(L), device=self.device,
                                     progress=self.progress, desc=f"ppl @{L}")
        return out

    def passkey(self, lengths, samples: int, seed: int) -> dict:
        out = {}
        for L in lengths:
            b = PasskeyBuilder(PasskeyTask(L, self.cfg["block_size"], self.cfg["finetune"]["n_digits"]),
                               self.tokenizer, self.pieces)
            per_block = max(1, math.ceil(samples / len(b.eligible_blocks)))
            cols = _subsample(b.eval_set(per_block, seed), samples, seed)
            out[str(L)] = passkey_records(self.model, cols, b.task.answer_len, batch_size=self._eval_batch(L),
                                          device=self.device, progress=self.progress, desc=f"passkey @{L}")
        return out

    def alpha(self, seed: int) -> dict:
        L = max(self.cfg["finetune"]["lengths"])
        b = PasskeyBuilder(PasskeyTask(L, self.cfg["block_size"], self.cfg["finetune"]["n_digits"]),
                           self.tokenizer, self.pieces)
        cols = b.eval_set(self.cfg["passkey"]["alpha_samples_per_block"], seed + 7)
        return {str(L): passkey_records(self.model, cols, b.task.answer_len, batch_size=self._eval_batch(L),
                                        device=self.device, progress=self.progress, desc=f"alpha @{L}")}

    def cpt(self, pattern: str) -> dict:
        c = self.cfg["cpt"]
        sched = TrainSchedule(steps=c["steps"], lr=c["lr"], warmup=c["warmup"], decay=c["decay"])
        batch = max(1, c["batch_tokens"] // c["seq_len"])
        stream = self.stream()

        def batch_fn(step):  # the same windows, in the same order, for every pattern
            return stream.batch(np.random.default_rng([c["seed"], step, 17]), batch, c["seq_len"]), None

        hist = train_loop(self.model, batch_fn, sched, device=self.device, run_key=f"cpt/{pattern}/{self.digest}",
                          checkpoint=self.work / f"partial-cpt-{pattern}.pt", save_every_s=self.cfg["save_every_s"],
                          deadline=self.deadline, micro_batch_tokens=self.cfg["micro_batch_tokens"],
                          progress=self.progress, desc=f"cpt {pattern}")
        return dict(history=hist, seq_len=c["seq_len"], batch=batch, schedule=sched.__dict__)

    def finetune(self, pattern: str, seed: int) -> dict:
        """Passkey curriculum: one optimizer and one learning-rate schedule across the stages
        (warm-up once, then constant: no restarted warm-up at each stage)."""
        ft = self.cfg["finetune"]
        builders = [PasskeyBuilder(PasskeyTask(L, self.cfg["block_size"], ft["n_digits"]), self.tokenizer, self.pieces)
                    for L in ft["lengths"]]
        bounds = np.cumsum([0] + ft["steps"])
        total = int(bounds[-1])
        sched = TrainSchedule(steps=total, lr=ft["lr"], warmup=ft["warmup"], decay="constant")
        ans = builders[0].task.answer_len

        def batch_fn(step):
            i = int(np.searchsorted(bounds, step, side="right") - 1)
            ids = builders[i].batch(np.random.default_rng([seed, i, step, 23]), ft["batch"][i])
            w = np.zeros(ids.shape, dtype=np.float32)
            w[:, 1:] = 1.0 / (ids.shape[0] * (ids.shape[1] - 1))  # language modelling on the whole prompt
            w[:, -ans:] += 1.0 / (ids.shape[0] * ans)              # plus the answer
            return ids, w

        hist = train_loop(self.model, batch_fn, sched, device=self.device,
                          run_key=f"ft/{pattern}/s{seed}/{self.digest}",
                          checkpoint=self.work / f"partial-ft-{pattern}-s{seed}.pt",
                          save_every_s=self.cfg["save_every_s"], deadline=self.deadline,
                          micro_batch_tokens=self.cfg["micro_batch_tokens"], progress=self.progress,
                          desc=f"ft {pattern} s{seed}")
        for h in hist:
            h["stage"] = int(np.searchsorted(bounds, h["step"] - 1, side="right") - 1)
        return dict(history=hist, lengths=ft["lengths"], steps=ft["steps"], batch=ft["batch"], seed=seed)

    def long(self, pattern: str, seed: int) -> dict:
        """Figure 3b: beyond the trained positions, with RoPE extended (dynamic NTK) for the evaluation only."""
        from lib.models import extend_positions

        lg = self.cfg["long"]
        extend_positions(self.model, lg["rope_factor"])
        self.set_pattern(pattern)
        check_positions(self.model, lg["seq_len"], extended=True)
        try:
            out = self.passkey([lg["seq_len"]], lg["samples"], self.cfg["passkey"]["eval_seed"] + seed)
        finally:
            extend_positions(self.model, 1)
            self.set_pattern(pattern)
        return dict(records=out, rope=dict(type="dynamic", factor=lg["rope_factor"]))

    def probe_features(self, pattern: str, tag: str, background_fit: bool = True) -> dict:
        """Pooled hidden states of the probing task, saved in ``work/``; the probes are fitted on the
        CPU cores by a background process (``python -m lib.pipeline --fit-probes``) while the GPU goes on
        (``background_fit=False``: the caller fits them, with ``fit_probes``)."""
        from lib.data.probing import probing_task
        from lib.probing import pooled_hidden_states

        pc = self.cfg["probing"]
        task = probing_task(self.tokenizer, seq_len=pc["seq_len"], block_size=self.cfg["block_size"], n=pc["n"],
                            seed=0)
        feats = pooled_hidden_states(self.model, task["input_ids"], self.cfg["block_size"],
                                     batch_size=pc["batch_size"], progress=self.progress)
        stem = self.work / f"probe-{pattern}-{tag}"
        np.save(stem.with_suffix(".labels.npy"), np.asarray(task["labels"]))
        with atomic_file(stem.with_suffix(".features.npy")) as tmp, open(tmp, "wb") as f:  # complete files only
            np.save(f, feats)
        if background_fit and (self.fitter is None or self.fitter.poll() is not None):
            self.fitter = start_probe_fitter(self.work, self.artifacts, self.cfg)
        return dict(needle_block=int(task["needle_block"]), words=list(task["words"]), n=int(len(task["labels"])),
                    seq_len=pc["seq_len"], features=str(stem.with_suffix(".features.npy")), shape=list(feats.shape))

    # -- orchestration
    def run(self, status: dict | None = None) -> dict:
        """Round r trains and scores every pattern's r-th seed (round 0 also does the zero-shot, continued
        pretraining and probing units), so an interrupted run has the most seeds for the most patterns."""
        cfg = self.cfg
        status = {} if status is None else status
        base_units = ("ppl-base", "zeroshot", "cpt", "ppl-cpt")
        rounds = max(len(seeds_for(cfg, p)) for p in cfg["patterns"])
        for r in range(rounds):
            for p in cfg["patterns"]:
                seeds = seeds_for(cfg, p)
                if r >= len(seeds):
                    continue
                mine = [u for u in unit_ids(cfg) if u.split("/")[1] == p and not done(self.artifacts, u)
                        and not u.startswith(("ruler/", "ruler-ft/"))]  # RULER runs last, from its own loop
                pending = [u for u in mine if u.split("/")[0] in base_units or u.endswith(f"/s{seeds[r]}")
                           or (u == f"probe/{p}/trained" and r == 0)]
                if pending:
                    self._pattern(p, pending, status, [seeds[r]])
        for uid in unit_ids(cfg):  # after every seed: the seeds carry Figure 3, these only Figure 5's baselines
            if uid.startswith("probe/") and uid.endswith("/untrained"):
                p = uid.split("/")[1]
                first = not done(self.artifacts, uid)
                # features extracted on a machine that went back before their fit: extract them again
                lost = (not done(self.artifacts, uid.replace("probe/", "probefit/", 1))
                        and not (self.work / f"probe-{p}-untrained.features.npy").exists())
                if first or lost:
                    self._timed(uid if first else f"probe-again/{p}/untrained", status,
                                lambda: self._untrained_probe(p))
        if cfg["ruler"]["enabled"] and cfg["train"]:
            for s in cfg["ruler"]["seeds"]:
                for p in cfg["patterns"]:
                    if not done(self.artifacts, f"ruler/{p}/s{s}"):
                        self._ruler(p, s, status)
        if cfg["probing"]["enabled"]:  # fit what the background fitter has not (waiting for its running fits)
            wait = 3600.0 if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            fitted = fit_probes(self.work, self.artifacts, cfg["probing"]["folds"], cfg["probing"]["jobs"], wait)
            status.update({u: "fitted" for u in fitted})
        return status

    def _ruler(self, p, seed, status):
        """Section 4.4: fine-tune the continued-pretrained model with the hybrid layout on RULER-style training
        rows (training works as haystacks), then score held-out prompts (held-out works as haystacks)."""
        from lib import ruler_eval
        from lib.data import ruler as R

        rc = self.cfg["ruler"]
        full_layers = hf_attention.hybrid_full_layers(self.model.config.num_hidden_layers, rc["hybrid_every"],
                                                      rc["hybrid_full"])
        train_docs, heldout = self._corpus()
        tasks = list(rc["tasks"] or R.TASKS)
        train_tasks = [t for t in tasks if not t.startswith("qa_")]  # QA data needs the hub
        path = self.work / f"ruler-{p}-s{seed}.pt"
        if not done(self.artifacts, f"ruler-ft/{p}/s{seed}") or not path.exists():
            self.load_state(self._cpt_weights(p, status))
            self.set_pattern(p, full_layers)
            ft = rc["ft"]
            sched = TrainSchedule(steps=ft["steps"], lr=ft["lr"], warmup=ft["warmup"], decay="cosine")
            batches = ruler_eval.finetune_batches(self.tokenizer, train_tasks, ft["seq_len"], ft["batch"], seed,
                                                  haystack=train_docs[: rc["haystack_works"]])
            self._timed(f"ruler-ft/{p}/s{seed}", status, lambda: dict(full_layers=list(full_layers), history=train_loop(
                self.model, batches, sched, device=self.device, run_key=f"ruler-ft/{p}/s{seed}/{self.digest}",
                checkpoint=self.work / f"partial-ruler-{p}-s{seed}.pt", save_every_s=self.cfg["save_every_s"],
                deadline=self.deadline, micro_batch_tokens=self.cfg["micro_batch_tokens"], progress=self.progress,
                desc=f"ruler-ft {p} s{seed}")))
            self.save_state(path)
        else:
            self.load_state(path)
        self.set_pattern(p, full_layers)
        self._timed(f"ruler/{p}/s{seed}", status, lambda: dict(full_layers=list(full_layers), records=ruler_eval.evaluate(
            self.model, self.tokenizer, tasks=tasks, lengths=rc["lengths"], n=rc["n"], seed=rc["eval_seed"] + seed,
            haystack=heldout, batch_size=rc["batch_size"], batch_tokens=rc["batch_tokens"], progress=self.progress)))
        self.set_pattern(p)

    def _cpt_weights(self, p, status) -> Path:
        """The continued-pretrained weights of ``p`` in ``work/``, trained here if missing. Weights do not
        outlive a machine: when ``cpt/{p}`` is done but its weights are gone, the same recipe (same windows, same
        order, same schedule) runs again as unit ``cpt-again/{p}``, so the first run's record stays as it was and
        the two loss curves can be compared (equal up to GPU nondeterminism)."""
        path = self.work / f"cpt-{p}.pt"
        if path.exists():
            return path
        uid = f"cpt/{p}"
        if done(self.artifacts, uid):
            uid = f"cpt-again/{p}"
            self.log(f"cpt/{p}: weights missing on this machine, retraining as {uid}")
        self.load_state(self.base_state)
        self.set_pattern(p)
        self._timed(uid, status, lambda: self.cpt(p))
        self.save_state(path)
        return path

    def _untrained_probe(self, p):
        self.load_state(self.base_state)
        self.set_pattern(p)
        return self.probe_features(p, "untrained")

    def _timed(self, uid, status, fn):
        """Run one unit, record its seconds and peak GPU memory, write its artifact."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeBudgetExceeded(f"budget reached before {uid}")
        t0 = time.monotonic()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        data = fn()
        secs = time.monotonic() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None
        _write_unit(self.artifacts, uid, dict(unit=uid, seconds=round(secs, 2), peak_gib=peak, data=data))
        status[uid] = round(secs, 1)
        self.log(f"{uid}: {secs:.1f} s" + (f", peak {peak:.1f} GiB" if peak else ""))
        return data

    def _pattern(self, p, pending, status, seeds):
        cfg = self.cfg
        cpt_path = self.work / f"cpt-{p}.pt"
        self.set_pattern(p)
        if f"ppl-base/{p}" in pending or f"zeroshot/{p}" in pending or f"cpt/{p}" in pending:
            self.load_state(self.base_state)
        if f"ppl-base/{p}" in pending:
            self._timed(f"ppl-base/{p}", status, self.ppl)
        if f"zeroshot/{p}" in pending:
            self._timed(f"zeroshot/{p}", status, lambda: self.passkey(
                cfg["passkey"]["lengths"], cfg["passkey"]["zero_shot_samples"], cfg["passkey"]["eval_seed"]))
        if not cfg["train"]:
            return
        if f"cpt/{p}" in pending or not cpt_path.exists():
            self._cpt_weights(p, status)
        if f"ppl-cpt/{p}" in pending:
            self.load_state(cpt_path)
            self._timed(f"ppl-cpt/{p}", status, self.ppl)
        for s in seeds:
            units = [u for u in pending if u.split("/")[-1] in (f"s{s}",) or (u == f"probe/{p}/trained"
                                                                            and s == seeds_for(cfg, p)[0])]
            if not units:
                continue
            ft_path = self.work / f"ft-{p}-s{s}.pt"
            if f"ft/{p}/s{s}" in units or not ft_path.exists():
                self.load_state(cpt_path)
                self.set_pattern(p)
                self._timed(f"ft/{p}/s{s}", status, lambda: self.finetune(p, s))
                self.save_state(ft_path)
            else:
                self.load_state(ft_path)
            self.set_pattern(p)
            if f"passkey/{p}/s{s}" in units:
                self._timed(f"passkey/{p}/s{s}", status, lambda: self.passkey(
                    cfg["passkey"]["lengths"], cfg["passkey"]["samples"], cfg["passkey"]["eval_seed"] + 100 * s))
            if f"alpha/{p}/s{s}" in units:
                self._timed(f"alpha/{p}/s{s}", status, lambda: self.alpha(s))
            if f"long/{p}/s{s}" in units:
                self._timed(f"long/{p}/s{s}", status, lambda: self.long(p, s))
            if f"probe/{p}/trained" in units:
                self._timed(f"probe/{p}/trained", status, lambda: self.probe_features(p, "trained"))


def _subsample(cols: dict, n: int, seed: int) -> dict:
    """At most ``n`` rows of an eval set, spread evenly over its blocks (seeded)."""
    m = len(cols["block"])
    if m <= n:
        return cols
    idx = np.sort(np.random.default_rng(seed).choice(m, size=n, replace=False))
    return {k: [v[i] for i in idx] for k, v in cols.items()}


def corpus_split(corpus: dict):
    """(train documents, held-out documents) of the configured corpus."""
    name = corpus["name"]
    if name == "books":
        from lib.data.books import load_books, split_works

        path = Path(corpus["path"])
        if not path.is_absolute():
            path = Path(__file__).resolve().parents[1] / path
        if not path.exists():
            raise FileNotFoundError(f"the book corpus {path} is missing: build it with "
                                    f"`python -c 'from lib.data.books import assemble; assemble(\"{path.parent}\")'`")
        train, heldout = split_works(load_books(path))
        train_docs = [b["text"] for b in train][: corpus.get("max_train_works") or None]
        return train_docs, [b["text"] for b in heldout]
    if name == "pg19":  # machines that reach the Hugging Face hub (or local files with a `text` column)
        from lib.data.corpus import load_pg19

        files = corpus.get("path") if str(corpus.get("path", "")).endswith((".json", ".jsonl", ".parquet")) else None
        train = load_pg19("train", max_books=corpus.get("max_train_works"), data_files=files)
        return train, load_pg19("test", max_books=corpus.get("max_heldout_works") or 20, data_files=files)
    if name == "synthetic":
        from lib.data.corpus import synthetic_corpus

        docs = synthetic_corpus(n_docs=corpus.get("max_train_works") or 6, sentences_per_doc=600)
        return docs[:-2], docs[-2:]
    raise ValueError(f"unknown corpus {name!r}; expected 'books', 'pg19' or 'synthetic'")


# ----------------------------------------------------------------------------- probes (CPU, background)
def fit_probes(work, artifacts, folds: int = 5, n_jobs: int = -1, wait_s: float = 0.0) -> list[str]:
    """Fit the probes of every features file in ``work`` without a result in ``artifacts`` yet.

    A lock file per features file keeps two fitters (a background one and a foreground one) from
    doing the same work; with ``wait_s`` a fitter waits that long for locked ones to finish.
    """
    from lib.probing import probe_accuracy

    fitted = []
    stop = time.monotonic() + wait_s
    while True:
        pending, fitted_before = [], len(fitted)
        for feat in sorted(Path(work).glob("probe-*.features.npy")):
            pattern, tag = feat.name[len("probe-"):-len(".features.npy")].rsplit("-", 1)
            uid = f"probefit/{pattern}/{tag}"
            if done(artifacts, uid):
                continue
            lock = feat.with_name(feat.name + ".lock")
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pending.append(uid)
                continue
            try:
                os.write(fd, str(os.getpid()).encode())
                t0 = time.monotonic()
                x = np.load(feat, mmap_mode="r")
                y = np.load(feat.with_name(feat.name.replace(".features.npy", ".labels.npy")))
                acc = probe_accuracy(x, y, folds=folds, n_jobs=n_jobs, progress=False)
                _write_unit(Path(artifacts), uid, dict(unit=uid, seconds=round(time.monotonic() - t0, 1),
                                                       data=dict(accuracy=np.asarray(acc).tolist(), folds=folds)))
                fitted.append(uid)
            finally:
                os.close(fd)
                lock.unlink(missing_ok=True)
        if len(fitted) > fitted_before:
            continue  # features saved while this pass was fitting (a running pipeline) get their turn too
        if not pending or time.monotonic() > stop:
            return fitted
        time.sleep(5)


def start_probe_fitter(work, artifacts, cfg) -> subprocess.Popen:
    """Fit probes in a separate process session (it outlives this call while the machine stays warm)."""
    cmd = [sys.executable, "-m", "lib.pipeline", "--fit-probes", "--work", str(work), "--artifacts", str(artifacts),
           "--folds", str(cfg["probing"]["folds"]), "--jobs", str(cfg["probing"]["jobs"])]
    log = open(Path(work) / "probe-fit.log", "a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


# ----------------------------------------------------------------------------- throughput (plan the budget)
def throughput(params: dict, patterns=("full", "power"), steps: int = 3, log=print,
               parts=("train", "generate")) -> list[dict]:
    """Seconds per training step and per evaluated token on a random-weight model of the configured
    architecture (no weights needed), to choose step counts before the real run. Same code path.
    ``parts``: "train" (training steps and evaluation at each length), "generate" (RULER's generation,
    when the ``ruler`` section is enabled)."""
    unknown = set(parts) - {"train", "generate"}
    if unknown:
        raise ValueError(f"unknown throughput parts {sorted(unknown)}; accepted: train, generate")
    from lib.models import load_pretrained

    cfg = config(params)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg["model"] == "smollm2-135m":
        from transformers import LlamaConfig, LlamaForCausalLM

        hf = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
                         rms_norm_eps=1e-5)
        torch.manual_seed(0)
        model = LlamaForCausalLM(hf).to(device)
    else:
        model = load_pretrained(cfg["model"], device=device)[0]
    rows = []
    vocab = model.config.vocab_size
    for p in patterns if "train" in parts else ():
        hf_attention.use_sparse_attention(model, p, block_size=cfg["block_size"], backend=cfg["backend"],
                                          **cfg["masks"][p])
        for L, B in [(cfg["cpt"]["seq_len"], max(1, cfg["cpt"]["batch_tokens"] // cfg["cpt"]["seq_len"]))] + \
                list(zip(cfg["finetune"]["lengths"], cfg["finetune"]["batch"])):
            g = np.random.default_rng(0)
            ids = g.integers(0, vocab, size=(B, L))
            sched = TrainSchedule(steps=steps + 1, lr=1e-5)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = []

            def batch_fn(step):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t.append(time.monotonic())
                return ids, None

            train_loop(model, batch_fn, sched, device=device, micro_batch_tokens=cfg["micro_batch_tokens"],
                       progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t.append(time.monotonic())
            step_s = float(np.median(np.diff(t)[1:]))  # the first step compiles kernels
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            n_eval = max(1, cfg["eval_batch_tokens"] // L)
            w = ids[:1].repeat(n_eval, 0)
            perplexity(model, w, batch_size=n_eval, device=device, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.monotonic()
            perplexity(model, w, batch_size=n_eval, device=device, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ev = time.monotonic() - t0
            rows.append(dict(pattern=p, seq_len=L, batch=B, step_s=step_s, train_tok_s=B * L / step_s,
                             eval_tok_s=n_eval * L / ev, peak_gib=peak))
            log(json.dumps(rows[-1]))
    if cfg["ruler"]["enabled"] and "generate" in parts:
        rows += generation_throughput(model, cfg, patterns, vocab, device, log)
    return rows


def generation_throughput(model, cfg, patterns, vocab, device, log=print, new_tokens=(8, 40)) -> list[dict]:
    """RULER's cost: greedy generation with the hybrid layout at each length, the batch that
    ``ruler.batch_tokens`` gives; two generation lengths separate the prefill from the per-token step."""
    from lib import ruler_eval
    from lib.train import autocast

    rc = cfg["ruler"]
    full_layers = hf_attention.hybrid_full_layers(model.config.num_hidden_layers, rc["hybrid_every"], rc["hybrid_full"])
    rows = []
    model.eval()
    for p in patterns:
        hf_attention.use_sparse_attention(model, p, block_size=cfg["block_size"], backend=cfg["backend"],
                                          full_layers=full_layers, **cfg["masks"][p])
        for L in rc["lengths"]:
            B = ruler_eval.batch_for(L, rc["n"], rc["batch_size"], rc["batch_tokens"])
            ids = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, size=(B, L - max(new_tokens)))).to(device)
            secs = []
            for k in (new_tokens[0],) + tuple(new_tokens):  # the first call compiles
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.monotonic()
                with torch.no_grad(), autocast(device):
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=k, min_new_tokens=k, pad_token_id=0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                secs.append(time.monotonic() - t0)
            step = (secs[2] - secs[1]) / (new_tokens[1] - new_tokens[0])
            rows.append(dict(kind="generate", pattern=p, seq_len=L, batch=B, step_s=step,
                             prefill_s=secs[1] - new_tokens[0] * step,
                             peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None))
            log(json.dumps(rows[-1]))
    return rows


# ----------------------------------------------------------------------------- entry points
def run(params: dict, work, artifacts, budget_s: float | None = None, progress: bool = True, device=None,
        log=print) -> dict:
    """Run (or resume) the pipeline for ``params`` until done or ``budget_s`` seconds; returns per-unit seconds."""
    cfg = config(params)
    with run_lock(work, log):
        return _run_locked(cfg, work, artifacts, budget_s, progress, device, log)


def _run_locked(cfg, work, artifacts, budget_s, progress, device, log) -> dict:
    deadline = None if budget_s is None else time.monotonic() + budget_s
    t0 = time.monotonic()
    runner = Runner(cfg, work, artifacts, deadline, progress, device, log)
    _write_unit(Path(artifacts), "_run/config", dict(cfg=cfg, digest=params_digest(cfg), unit_ids=unit_ids(cfg)))
    status, complete, error = {}, False, None
    try:
        status = runner.run(status)
        complete = True
    except TimeBudgetExceeded as e:
        log(f"budget reached: {e}")
    except Exception as e:  # keep the record of what finished, then fail loudly
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        _record_call(Path(artifacts), runner, status, time.monotonic() - t0, budget_s, error)
    return dict(status=status, complete=complete and all(done(artifacts, u) for u in unit_ids(cfg)))


def _record_call(artifacts: Path, runner, status, seconds, budget_s, error):
    """``_run/provenance``: the model, the code (source digest), the machine of every call, GPU seconds."""
    from lib.provenance import device_info, source_digest, versions

    path = _unit_file(artifacts, "_run/provenance")
    prev = json.loads(path.read_text())["data"] if path.exists() else {"calls": []}
    m = runner.model.config
    prev.update(model=runner.cfg["model"], num_layers=m.num_hidden_layers, hidden_size=m.hidden_size,
                heads=[m.num_attention_heads, m.num_key_value_heads], source_digest=source_digest(),
                commit=os.environ.get("POWERATTN_COMMIT", "unknown"))
    prev["calls"].append(dict(utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seconds=round(seconds, 1),
                              budget_s=budget_s, device=device_info(), versions=versions(),
                              units=status, error=error, source_digest=source_digest()))
    _write_unit(artifacts, "_run/provenance", dict(unit="_run/provenance", data=prev))


def main(argv=None):
    import argparse

    import yaml

    ap = argparse.ArgumentParser(description="Run the accuracy pipeline (resumable) or fit probes.")
    ap.add_argument("--params", help="YAML with a `pipeline:` mapping (e.g. params/accuracy/gpu.yaml)")
    ap.add_argument("--work", required=True, help="folder for weights and partial states (stays on the machine)")
    ap.add_argument("--artifacts", default=None, help="folder of unit results (default: WORK/artifacts)")
    ap.add_argument("--budget-s", type=float, default=None)
    ap.add_argument("--out", default=None, help="pack the artifacts into OUT/artifacts.tgz at the end")
    ap.add_argument("--fit-probes", action="store_true")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--wait-s", type=float, default=0.0, help="with --fit-probes: wait for locked (running) fits")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--throughput", action="store_true", help="time training/eval steps on random weights and exit")
    ap.add_argument("--throughput-parts", default="train,generate",
                    help="with --throughput: comma-separated parts (train, generate)")
    a = ap.parse_args(argv)
    artifacts = Path(a.artifacts or Path(a.work) / "artifacts")
    if a.fit_probes:
        try:
            print(fit_probes(a.work, artifacts, a.folds, a.jobs, a.wait_s), flush=True)
        finally:
            if a.out:
                pack(artifacts, Path(a.out) / "artifacts.tgz")
        return
    params = yaml.safe_load(Path(a.params).read_text())
    params = params.get("pipeline", params)
    if a.throughput:
        rows = throughput(params, parts=tuple(x for x in a.throughput_parts.split(",") if x))
        if a.out:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            (Path(a.out) / "throughput.json").write_text(json.dumps(rows, indent=1))
        return
    t0 = time.monotonic()
    try:
        res = run(params, a.work, artifacts, a.budget_s, progress=not a.no_progress)
        print(json.dumps(res), flush=True)
    finally:
        if a.out:
            pack(artifacts, Path(a.out) / "artifacts.tgz")
        print(f"call took {time.monotonic() - t0:.0f} s", flush=True)


def pack(artifacts, dest: Path):
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(str(artifacts), arcname="artifacts")


if __name__ == "__main__":
    main()
