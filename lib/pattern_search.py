"""Is power-of-2 the best static pattern? A search under the paper's own objective (issue 13).

§3.1 of the paper poses the design of a sparse pattern as an optimisation problem on the
attention DAG (an edge q -> k when query block q reads key block k): with a fixed out-degree
(blocks per row), reach as many blocks as possible from the last block within l edges
(layers). It then proposes power-of-2 distances without searching. Here we search.

The search space: translation-invariant patterns, the family PowerAttention belongs to
(``lib.masks`` "distance_set"). Such a pattern is a set ``S`` of non-zero block distances a
row reads (its local window 1..w-1 and its far distances) plus ``sink`` blocks at the start;
with the diagonal, a row reads ``1 + |S| + sink`` blocks, the *budget* (PowerAttention at
128 blocks: window 5, sink 1, distances 8, 16, 32, 64: 10 blocks). Because the pattern is
translation invariant, breadth-first search from the last block is a 1-D problem: after k
layers the last block has read the blocks at offsets that are sums of at most k elements of
``S`` (and the sink, after one layer). We compute it on Python-int bitsets (a shift-or per
step and layer), ~10 µs per pattern at 2048 blocks, so greedy, beam and swap searches over
all distances are cheap; ``tests/test_pattern_search.py`` checks that the fast curve equals
``lib.receptive_field`` on the ``lib.masks`` layout, and every reported pattern is checked
again that way (``verify``).

Objective (``score``): the area under the alpha_hat_k curve up to depth L, kept as the
integer ``sum_{k=1..L} |B_k|`` (AUC = score / (n L)) so that ties are exact; ties are broken
by seeded random draws. Also reported: the depth at which every block is reached.

Budget (``budget_for``): by default PowerAttention's own budget at ``n`` blocks (its §4.1
configuration: 10 blocks per row at 128 blocks, 12 at 512, 14 at 2048: power-of-2 adds a
block per doubling of the context), so power-of-2 competes at the budget it uses; a fixed
integer budget can be asked for instead.

Upper bounds (``bounds``): any DAG whose rows read ``B`` blocks (``d = B - 1`` edges besides
the diagonal) reaches at most ``1 + d + ... + d^k`` blocks in k layers; a translation-invariant
pattern with ``m = B - 1 - sink`` distances at most ``sink + C(m + k, k)`` (the multisets of at
most k distances: the distinct sums can only be fewer). Both are capped at n.

Claims (``claims``): thresholds are module constants, written before any search was run.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time

import numpy as np
import torch

from . import masks
from . import receptive_field as rf
from .masks._common import check_int

#: The paper's design geometry and the lengths we also look at (blocks of 256 tokens: 32K, 128K, 512K).
SIZES = (128, 512, 2048)
#: Depths: Figure 1a's six layers and SmolLM2-135M's 30 layers.
DEPTHS = (6, 30)
#: Sink blocks (the paper's one sink block); the searches keep it fixed.
SINK = 1
#: The exhaustive search refuses spaces with more candidate sets than this.
MAX_EXHAUSTIVE = 5_000_000
#: Names of the baseline families (distances that grow geometrically; Fibonacci grows by ~1.618).
FAMILIES = ("power-2", "power-3", "power-4", "fibonacci")
#: Search methods, in the order they run.
METHODS = ("greedy", "beam", "swap_beam", "swap_power2", "swap_random")

# --- claim thresholds (fixed before looking at any number) -----------------------------------
#: power-of-2 is "near-optimal" when its AUC is within this fraction of the best found ...
NEAR_OPTIMAL_GAP = 0.05
#: ... and it reaches every block at most this many layers later than the quickest set found does.
NEAR_OPTIMAL_DEPTH = 1
#: The search control passes when greedy + beam + swap find the exhaustive optimum in at least
#: this fraction of the small cases; otherwise an "unbeaten" verdict for power-of-2 is inconclusive.
CONTROL_MIN_HIT_RATE = 1.0


# ============================================================================ patterns as step sets
def _check_steps(steps, n: int) -> tuple[int, ...]:
    out = []
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or int(s) < 1:
            raise ValueError(f"a step (block distance) must be a positive integer, got {s!r}")
        out.append(int(s))
    return tuple(sorted({s for s in out if s < n}))


def step_set(n: int, window: int = 1, distances=()) -> tuple[int, ...]:
    """The non-zero distances (< n) a row reads: the window's 1..window-1 and ``distances``."""
    n = check_int("n", n, 1, "step_set")
    window = check_int("window", window, 1, "step_set")
    return _check_steps(list(range(1, window)) + list(distances), n)


def to_config(steps, sink: int = SINK) -> dict:
    """The ``"distance_set"`` config of a step set: ``window`` = 1 + the longest run 1, 2, ..., m in
    ``steps``, ``distances`` = the rest. ``lib.masks.block_layout("distance_set", n, **cfg)``."""
    steps = sorted(set(int(s) for s in steps))
    m = 0
    while m < len(steps) and steps[m] == m + 1:
        m += 1
    return dict(distances=[s for s in steps[m:]], window=m + 1, sink=int(sink))


def budget_of(steps, sink: int = SINK) -> int:
    """Blocks a (long enough) row reads: the diagonal, one per step, the sink."""
    return 1 + len(set(steps)) + int(sink)


def budget_for(n: int, rule="power") -> int:
    """The per-row budget at ``n`` blocks: ``"power"`` = the longest row of PowerAttention's §4.1
    configuration at ``n`` blocks (10 at 128), or a fixed integer (>= 2)."""
    n = check_int("n", n, 1, "budget_for")
    if rule == "power":
        return int(masks.block_layout("power", n, **masks.section41_config("power", n)).sum(-1).max())
    return check_int("budget", rule, 2, "budget_for")


def ti_layout(steps, n: int, sink: int = SINK) -> np.ndarray:
    """Dense bool ``[n, n]`` causal layout of a translation-invariant pattern (numpy, independent of lib.masks)."""
    steps = _check_steps(steps, n)
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    dist = i - j
    return (dist >= 0) & ((dist == 0) | np.isin(dist, steps) | (j < sink))


def steps_from_pattern(name: str, n: int, **config) -> tuple[tuple[int, ...], int]:
    """``(steps, sink)`` of a ``lib.masks`` pattern, read off its predicate; ValueError unless the
    pattern is translation invariant (its layout equals ``ti_layout(steps, n, sink)``)."""
    module, cfg = masks.resolve(name, **config)
    sink = int(cfg.get("sink", 0))
    no_sink = {**cfg, "sink": 0} if "sink" in cfg else cfg
    pred = masks.block_predicate(name, **no_sink)
    x = torch.arange(1, n)
    keep = pred(torch.full_like(x, n - 1), n - 1 - x)
    steps = tuple(int(s) for s in x[keep].tolist())
    actual = masks.block_layout(name, n, **cfg).numpy()
    if not np.array_equal(actual, ti_layout(steps, n, sink)):
        raise ValueError(f"{name} {cfg} is not translation invariant at {n} blocks; only such patterns are searched")
    return steps, sink


# ============================================================================ fast reachability
def _masks(n: int, sink: int) -> tuple[int, int]:
    full = (1 << n) - 1
    first_sink_offset = max(n - sink, 0)  # block j < sink sits at offset n - 1 - j >= n - sink
    return full, full & ~((1 << first_sink_offset) - 1)


def _score(steps, L: int, full: int, sink_bits: int, n: int) -> int:
    """sum_{k=1..L} |B_k| by bitset BFS over offsets from the last block (bit x = block n-1-x)."""
    reached, total = 1, 0
    for k in range(1, L + 1):
        new = reached
        for s in steps:
            new |= reached << s
        new &= full
        if k == 1:
            new |= sink_bits
        if new == reached or new == full:  # nothing more can come: the rest of the curve is constant
            return total + new.bit_count() * (L - k + 1)
        reached = new
        total += reached.bit_count()
    return total


def score(steps, n: int, depth: int, sink: int = SINK) -> int:
    """The search objective: ``sum_{k=1..depth} |B_k|`` (AUC of alpha_hat up to ``depth`` = score / (n depth))."""
    n = check_int("n", n, 1, "score")
    depth = check_int("depth", depth, 1, "score")
    full, sink_bits = _masks(n, sink)
    return _score(_check_steps(steps, n), depth, full, sink_bits, n)


def reach_counts(steps, n: int, depth: int, sink: int = SINK) -> np.ndarray:
    """``|B_k|`` for k = 0..depth (blocks within k layers of the last block; B_0 = the last block)."""
    n = check_int("n", n, 1, "reach_counts")
    depth = check_int("depth", depth, 0, "reach_counts")
    steps = _check_steps(steps, n)
    full, sink_bits = _masks(n, sink)
    reached, out = 1, [1]
    for k in range(1, depth + 1):
        new = reached
        for s in steps:
            new |= reached << s
        reached = (new & full) | (sink_bits if k == 1 else 0)
        out.append(reached.bit_count())
    return np.array(out, dtype=np.int64)


def alpha_curve(steps, n: int, depth: int, sink: int = SINK) -> np.ndarray:
    """alpha_hat_k = |B_k| / n for k = 1..depth (Appendix A), by the fast BFS."""
    return reach_counts(steps, n, depth, sink)[1:] / n


def _bits(x: int, n: int) -> np.ndarray:
    raw = np.frombuffer(x.to_bytes((n + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


def block_distances(steps, n: int, sink: int = SINK) -> np.ndarray:
    """Shortest path (layers) from the last block to every block, indexed by block; -1 = unreachable.
    The fast counterpart of ``lib.receptive_field.distances``."""
    n = check_int("n", n, 1, "block_distances")
    steps = _check_steps(steps, n)
    full, sink_bits = _masks(n, sink)
    by_offset = np.full(n, -1, dtype=np.int64)
    by_offset[0] = 0
    reached, k = 1, 0
    while True:
        k += 1
        new = reached
        for s in steps:
            new |= reached << s
        new = (new & full) | (sink_bits if k == 1 else 0)
        if new == reached:
            break
        by_offset[_bits(new & ~reached, n)] = k
        reached = new
    return by_offset[::-1].copy()


def full_coverage_depth(steps, n: int, sink: int = SINK) -> int | None:
    """Smallest number of layers after which the last block has reached every block (None: never)."""
    d = block_distances(steps, n, sink)
    return None if (d < 0).any() else int(d.max())


def metrics(steps, n: int, depth: int, sink: int = SINK) -> dict:
    """Everything reported for one pattern at ``n`` blocks and depth ``depth`` (JSON-able)."""
    steps = _check_steps(steps, n)
    counts = reach_counts(steps, n, depth, sink)
    d = block_distances(steps, n, sink)
    return dict(steps=list(steps), sink=int(sink), config=to_config(steps, sink), budget=budget_of(steps, sink),
                score=int(counts[1:].sum()), auc=float(counts[1:].sum() / (n * depth)),
                alpha_hat=(counts[1:] / n).tolist(), coverage=float((d >= 0).mean()),
                full_depth=None if (d < 0).any() else int(d.max()))


# ============================================================================ baselines
def powers(base: int, n: int) -> list[int]:
    """1, base, base^2, ... below n."""
    base = check_int("base", base, 2, "powers")
    out, x = [], 1
    while x < n:
        out.append(x)
        x *= base
    return out


def fibonacci(n: int) -> list[int]:
    """The distinct Fibonacci numbers 1, 2, 3, 5, 8, ... below n."""
    out, a, b = [], 1, 2
    while a < n:
        out.append(a)
        a, b = b, a + b
    return out


def family_values(family: str, n: int) -> list[int]:
    if family == "fibonacci":
        return fibonacci(n)
    if family.startswith("power-") and family[6:].isdigit():
        return powers(int(family[6:]), n)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def fit_family(values, n: int, budget: int, sink: int = SINK) -> dict:
    """Window and distances of a family at a budget: the largest window ``w`` such that the
    window, the sink and the family's values in ``[w, n)`` fit in ``budget`` blocks (how the
    paper's window 5 arises for power-of-2 at 128 blocks). When no window fits, the window
    that overflows least (the largest of those) keeps the family's *largest* values that fit,
    so the pattern still spans the context; ``dropped`` lists what was left out."""
    values = sorted({int(v) for v in values if 1 <= v < n})
    fits, fallback = None, None
    for w in range(1, max(budget - sink, 1) + 1):
        far = [v for v in values if v >= w]
        over = w + sink + len(far) - budget
        if over <= 0:
            fits = (w, far, [])
        elif fallback is None or over <= fallback[0]:
            fallback = (over, w, far)
    if fits is None:
        over, w, far = fallback
        fits = (w, far[over:], far[:over])
    w, far, dropped = fits
    return dict(window=w, distances=far, sink=sink, dropped=dropped)


def baselines(n: int, budget: int, sink: int = SINK) -> dict[str, dict]:
    """The compared patterns: power-of-b (b = 2, 3, 4) and Fibonacci distances, each with the
    window that fills ``budget``; stride slash and sliding window at their §4.1 configurations
    (``lib.masks.section41_config``: 10 blocks per row at every n). Each entry has ``steps``,
    ``sink``, ``label`` and the ``lib.masks`` name/config that builds it."""
    out = {}
    for fam in FAMILIES:
        fit = fit_family(family_values(fam, n), n, budget, sink)
        cfg = dict(distances=fit["distances"], window=fit["window"], sink=sink)
        out[fam] = dict(label=f"{fam} (window {fit['window']})", pattern="distance_set", config=cfg,
                        steps=step_set(n, fit["window"], fit["distances"]), sink=sink, dropped=fit["dropped"])
    for name in ("stride_slash", "sliding_window"):
        cfg = masks.section41_config(name, n)
        steps, s = steps_from_pattern(name, n, **cfg)
        out[name] = dict(label=f"{masks.LABELS[name]} (§4.1)", pattern=name, config=cfg, steps=steps, sink=s, dropped=[])
    return out


# ============================================================================ bounds
def bounds(n: int, budget: int, depth: int, sink: int = SINK) -> dict:
    """Upper bounds on ``|B_k|``, k = 1..depth, at ``budget`` blocks per row (lists), and their AUCs.

    ``degree``: any DAG with ``d = budget - 1`` edges per row besides the diagonal: 1 + d + ... + d^k.
    ``translation_invariant``: ``m = budget - 1 - sink`` distances: sink + C(m + k, k) (multisets of
    at most k distances; their distinct sums are at most as many). Both capped at n.
    """
    d = budget - 1
    m = max(budget - 1 - sink, 0)
    deg = [min(n, sum(d ** i for i in range(k + 1))) for k in range(1, depth + 1)]
    ti = [min(n, sink + math.comb(m + k, k)) for k in range(1, depth + 1)]
    first_full = lambda c: next((k for k, v in enumerate(c, 1) if v >= n), None)  # noqa: E731
    return dict(degree=deg, translation_invariant=ti,
                auc_degree=sum(deg) / (n * depth), auc_translation_invariant=sum(ti) / (n * depth),
                min_full_depth_degree=first_full(deg), min_full_depth_translation_invariant=first_full(ti))


# ============================================================================ searches
def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(k) for k in keys]])


def _top(scored: dict, width: int, rng: np.random.Generator) -> list[tuple[int, tuple]]:
    """The ``width`` best (score, steps) pairs; ties broken by seeded random keys."""
    items = list(scored.items())
    keys = rng.random(len(items))
    best = heapq.nlargest(width, range(len(items)), key=lambda i: (items[i][1], keys[i]))
    return [(items[i][1], items[i][0]) for i in best]


def beam_search(n: int, depth: int, budget: int, window: int, sink: int = SINK, width: int = 8,
                seed: int = 0, candidates=None) -> dict:
    """Fix the window ``1..window-1`` and add far distances one at a time (from ``candidates``,
    default every distance in ``[window, n)``), keeping the ``width`` best partial sets by score.
    ``width=1`` is the greedy search. Returns the best set, its score and the number of evaluations."""
    n, depth = check_int("n", n, 2, "beam_search"), check_int("depth", depth, 1, "beam_search")
    window = check_int("window", window, 1, "beam_search")
    width = check_int("width", width, 1, "beam_search")
    slots = budget - sink - window
    if slots < 0:
        raise ValueError(f"beam_search: window {window} + sink {sink} exceed the budget {budget}")
    cands = list(range(window, n)) if candidates is None else sorted({int(c) for c in candidates if window <= c < n})
    full, sink_bits = _masks(n, sink)
    rng = _rng(seed, n, depth, budget, window, width)
    base = tuple(range(1, window))
    beam = [(_score(base, depth, full, sink_bits, n), base)]
    evals = 0
    for _ in range(min(slots, len(cands))):
        scored = {}
        for _, steps in beam:
            have = set(steps)
            for c in cands:
                if c not in have:
                    t = tuple(sorted(steps + (c,)))
                    if t not in scored:
                        scored[t] = _score(t, depth, full, sink_bits, n)
        evals += len(scored)
        if not scored:
            break
        beam = _top(scored, width, rng)
    best_score, best = beam[0]
    return dict(steps=list(best), score=int(best_score), evaluations=evals)


def swap_search(start, n: int, depth: int, sink: int = SINK, seed: int = 0, max_passes: int = 50,
                candidates=None) -> dict:
    """Local search: replace one step by one other distance while that raises the score (best
    improvement per pass, ties broken at random, seeded). Tells whether ``start`` is a local optimum."""
    n, depth = check_int("n", n, 2, "swap_search"), check_int("depth", depth, 1, "swap_search")
    cands = list(range(1, n)) if candidates is None else sorted({int(c) for c in candidates if 1 <= c < n})
    full, sink_bits = _masks(n, sink)
    rng = _rng(seed, n, depth, len(start), 7)
    cur = _check_steps(start, n)
    cur_score = _score(cur, depth, full, sink_bits, n)
    evals, passes = 0, 0
    for passes in range(1, max_passes + 1):
        scored = {}
        have = set(cur)
        for out in cur:
            rest = [s for s in cur if s != out]
            for c in cands:
                if c not in have:
                    t = tuple(sorted(rest + [c]))
                    if t not in scored:
                        scored[t] = _score(t, depth, full, sink_bits, n)
        evals += len(scored)
        if not scored:
            break
        (best_score, best), = _top(scored, 1, rng)
        if best_score <= cur_score:
            break
        cur, cur_score = best, best_score
    return dict(steps=list(cur), score=int(cur_score), evaluations=evals, passes=passes)


def exhaustive_size(n: int, budget: int, sink: int = SINK) -> int:
    """Number of step sets with ``budget - 1 - sink`` distances in ``[1, n)``."""
    return math.comb(n - 1, max(budget - 1 - sink, 0))


def exhaustive_search(n: int, depth: int, budget: int, sink: int = SINK) -> dict:
    """The optimum over every set of ``budget - 1 - sink`` distances in ``[1, n)`` (small spaces only:
    at most ``MAX_EXHAUSTIVE`` sets). Returns the best score, the lexicographically first optimal set
    and how many sets reach it."""
    n, depth = check_int("n", n, 2, "exhaustive_search"), check_int("depth", depth, 1, "exhaustive_search")
    m = budget - 1 - sink
    if m < 0:
        raise ValueError(f"exhaustive_search: budget {budget} leaves no room for the diagonal and {sink} sink block(s)")
    size = exhaustive_size(n, budget, sink)
    if size > MAX_EXHAUSTIVE:
        raise ValueError(f"exhaustive_search: C({n - 1}, {m}) = {size} sets exceeds MAX_EXHAUSTIVE = {MAX_EXHAUSTIVE}; "
                         "use beam_search/swap_search")
    full, sink_bits = _masks(n, sink)
    best, best_set, count = -1, None, 0
    for steps in itertools.combinations(range(1, n), m):
        s = _score(steps, depth, full, sink_bits, n)
        if s > best:
            best, best_set, count = s, steps, 1
        elif s == best:
            count += 1
    return dict(steps=list(best_set), score=int(best), optimal_sets=count, evaluated=size)


def search(n: int, depth: int, budget: int, sink: int = SINK, beam_width: int = 8, seed: int = 0,
           swap_passes: int = 50, power2_steps=None, random_starts: int = 4, progress: bool = False) -> dict:
    """Greedy and beam search for every window ``1..budget-sink``, then swap (local) search from the
    best beam set, from power-of-2 (``power2_steps``) and from ``random_starts`` random sets (seeded;
    the best of them is reported). Returns ``{method: {steps, score, evaluations, seconds}}`` for the
    methods of ``METHODS``."""
    from tqdm.auto import tqdm

    out = {}
    windows = range(1, budget - sink + 1)
    for method, width in (("greedy", 1), ("beam", beam_width)):
        t0, best, evals = time.perf_counter(), None, 0
        for w in tqdm(windows, desc=f"{method} n={n} L={depth}", disable=not progress, leave=False):
            r = beam_search(n, depth, budget, w, sink, width, seed)
            evals += r["evaluations"]
            if best is None or r["score"] > best["score"]:
                best = r
        out[method] = dict(steps=best["steps"], score=best["score"], evaluations=evals,
                           seconds=time.perf_counter() - t0)
    starts = {"swap_beam": [out["beam"]["steps"]]}
    if power2_steps is not None:
        starts["swap_power2"] = [list(power2_steps)]
    rng = _rng(seed, n, depth, budget, 11)
    m = budget - 1 - sink
    starts["swap_random"] = [sorted(rng.choice(np.arange(1, n), size=min(m, n - 1), replace=False).tolist())
                             for _ in range(random_starts)]
    for method, group in starts.items():
        t0, best, evals, passes = time.perf_counter(), None, 0, 0
        for start in group:
            r = swap_search(start, n, depth, sink, seed, swap_passes)
            evals, passes = evals + r["evaluations"], passes + r["passes"]
            if best is None or r["score"] > best["score"]:
                best = r
        if best is not None:
            out[method] = dict(steps=best["steps"], score=best["score"], evaluations=evals, passes=passes,
                               starts=len(group), seconds=time.perf_counter() - t0)
    return out


# ============================================================================ the study
def study_case(n: int, depth: int, budget: int, sink: int = SINK, beam_width: int = 8, seed: int = 0,
               swap_passes: int = 50, random_starts: int = 4, progress: bool = False) -> dict:
    """Baselines, searches and bounds at ``n`` blocks and depth ``depth`` (JSON-able).

    ``patterns`` maps an id (a family, a §4.1 pattern or a search method) to its ``metrics`` plus
    a label; ``best`` is the id with the highest score (power-of-2 itself when nothing beats it;
    ties go to the baseline listed first, then to the first method); ``quickest`` the id that
    reaches every block in the fewest layers (the search optimises the AUC, not this)."""
    base = baselines(n, budget, sink)
    found = search(n, depth, budget, sink, beam_width, seed, swap_passes, base["power-2"]["steps"], random_starts,
                   progress)
    patterns = {}
    for key, b in base.items():
        patterns[key] = dict(metrics(b["steps"], n, depth, b["sink"]), label=b["label"], source="baseline",
                             pattern=b["pattern"], lib_config=b["config"], dropped=b["dropped"])
    for key, r in found.items():
        m = metrics(r["steps"], n, depth, sink)
        if m["score"] != r["score"]:  # the search's own score must be the one reported
            raise RuntimeError(f"{key}: search score {r['score']} but metrics give {m['score']} for {r['steps']}")
        patterns[key] = dict(m, label=f"{key.replace('_', ' ')} (window {m['config']['window']})", source="search",
                             pattern="distance_set", lib_config=m["config"], dropped=[],
                             search={k: v for k, v in r.items() if k not in ("steps", "score")})
    eligible = [k for k in patterns if patterns[k]["budget"] <= budget]
    best = max(eligible, key=lambda k: patterns[k]["score"])  # first maximum in insertion order
    depths = [(patterns[k]["full_depth"], k) for k in eligible if patterns[k]["full_depth"] is not None]
    quickest = min(depths)[1] if depths else None
    return dict(n=n, depth=depth, budget=budget, sink=sink, patterns=patterns, best=best, quickest=quickest,
                bounds=bounds(n, budget, depth, sink), beam_width=beam_width, seed=seed)


def control_case(n: int, depth: int, budget: int, sink: int = SINK, beam_width: int = 8, seed: int = 0,
                 swap_passes: int = 50, random_starts: int = 4) -> dict:
    """Search control on a small space: do the searches find the exhaustive optimum?"""
    t0 = time.perf_counter()
    ex = exhaustive_search(n, depth, budget, sink)
    t_ex = time.perf_counter() - t0
    p2 = baselines(n, budget, sink)["power-2"]["steps"]
    found = search(n, depth, budget, sink, beam_width, seed, swap_passes, p2, random_starts)
    best = max(r["score"] for r in found.values())
    return dict(n=n, depth=depth, budget=budget, sink=sink, exhaustive=ex, exhaustive_seconds=t_ex,
                search_best=int(best), search_by_method={k: int(v["score"]) for k, v in found.items()},
                power2=int(score(p2, n, depth, sink)), hit=bool(best == ex["score"]))


def verify(case: dict) -> dict:
    """Recompute every pattern of a case with the project's own code (``lib.masks`` layout,
    ``lib.receptive_field``) and compare with the fast BFS: alpha_hat curve, distances, budget."""
    n, depth = case["n"], case["depth"]
    ks = list(range(1, depth + 1))
    bad = []
    for key, p in case["patterns"].items():
        layout = masks.block_layout(p["pattern"], n, **p["lib_config"])
        curve = rf.theoretical_accuracy_curve(layout, ks)
        dist = rf.distances(layout)
        fast = block_distances(p["steps"], n, case["sink"])
        max_row = int(layout.sum(-1).max())
        if not (np.array_equal(curve, np.array(p["alpha_hat"])) and np.array_equal(dist, fast)
                and max_row <= p["budget"]):
            bad.append(key)
    return dict(n=n, depth=depth, patterns=len(case["patterns"]), mismatches=bad)


def run_study(sizes=SIZES, depths=DEPTHS, budget_rule="power", sink: int = SINK, beam_width: int = 8,
              seed: int = 0, swap_passes: int = 50, random_starts: int = 4, control_cases=(),
              progress: bool = True) -> dict:
    """The whole study: a case per (n, depth), the exhaustive controls, the verification and the
    best pattern at the paper's geometry. ``control_cases``: (n, depth, budget) triples."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    cases, checks = [], []
    grid = [(n, L) for n in sizes for L in depths]
    for n, L in tqdm(grid, desc="pattern search", disable=not progress):
        t = time.perf_counter()
        case = study_case(n, L, budget_for(n, budget_rule), sink, beam_width, seed, swap_passes, random_starts,
                          progress)
        case["seconds"] = time.perf_counter() - t
        cases.append(case)
        checks.append(verify(case))
    controls = [control_case(n, L, b, sink, beam_width, seed, swap_passes, random_starts)
                for n, L, b in tqdm(list(control_cases), desc="exhaustive controls", disable=not progress)]
    results = dict(params=dict(sizes=list(sizes), depths=list(depths), budget_rule=budget_rule, sink=sink,
                               beam_width=beam_width, seed=seed, swap_passes=swap_passes, random_starts=random_starts,
                               control_cases=[list(c) for c in control_cases]),
                   cases=cases, controls=controls, verification=checks)
    results["best_pattern"] = best_pattern(results)
    results["best_pattern_config"] = results["best_pattern"]["config"] if results["best_pattern"] else None
    results["seconds"] = time.perf_counter() - t0
    return results


def find_case(results: dict, n: int, depth: int) -> dict | None:
    return next((c for c in results["cases"] if c["n"] == n and c["depth"] == depth), None)


def best_pattern(results: dict, n: int = masks.DESIGN_BLOCKS, depth: int = DEPTHS[0]) -> dict | None:
    """The best set found at ``n`` blocks and depth ``depth`` (default: the paper's 128 blocks,
    Figure 1a's 6 layers), with ``config`` a ``"distance_set"`` config (window, distances, sink) that
    ``lib.masks``/``kernels`` accept as is. Falls back to the largest n searched at that depth."""
    case = find_case(results, n, depth)
    if case is None:
        at_depth = [c for c in results["cases"] if c["depth"] == depth] or results["cases"]
        if not at_depth:
            return None
        case = max(at_depth, key=lambda c: c["n"])
    p = case["patterns"][case["best"]]
    return dict(config=dict(p["config"]), found_by=case["best"], n=case["n"], depth=case["depth"],
                budget=case["budget"], auc=p["auc"], full_depth=p["full_depth"],
                usage="lib.masks.layout('distance_set', seq_len, block_size, **best_pattern_config)")


# ============================================================================ claims
def standing(case: dict) -> dict:
    """power-of-2 against the best found at one (n, depth): AUC gap, full-coverage depth against the
    quickest set found, share of the bounds, and a category (optimal / near-optimal / beaten)."""
    p2, best = case["patterns"]["power-2"], case["patterns"][case["best"]]
    gap = (best["score"] - p2["score"]) / best["score"]
    inf = float("inf")
    quick = case["patterns"][case["quickest"]]["full_depth"] if case.get("quickest") else None
    d_p2 = p2["full_depth"] if p2["full_depth"] is not None else inf
    d_best = quick if quick is not None else inf
    if p2["score"] >= best["score"] and d_p2 <= d_best:
        category = "optimal"
    elif gap <= NEAR_OPTIMAL_GAP and d_p2 - d_best <= NEAR_OPTIMAL_DEPTH:
        category = "near-optimal"
    else:
        category = "beaten"
    b = case["bounds"]
    return dict(n=case["n"], depth=case["depth"], budget=case["budget"], power2_auc=p2["auc"], best_auc=best["auc"],
                best_id=case["best"], best_config=best["config"], gap=gap, power2_full_depth=p2["full_depth"],
                best_full_depth=best["full_depth"], quickest_full_depth=quick,
                quickest_id=case.get("quickest"),
                full_depth_lower_bound=b["min_full_depth_translation_invariant"], power2_of_ti_bound=p2["auc"] / b["auc_translation_invariant"],
                best_of_ti_bound=best["auc"] / b["auc_translation_invariant"],
                power2_of_degree_bound=p2["auc"] / b["auc_degree"], category=category)


def _fmt_depth(d):
    return "never" if d is None else f"k={d}"


def claims(results: dict) -> list[dict]:
    """The issue's questions as claims with verdicts (``lib.claims``), from ``run_study``'s results.

    Per (n, depth): is power-of-2 unbeaten (kind "finding": a better set is a finding against the
    paper's choice), is it near-optimal (``NEAR_OPTIMAL_GAP``, ``NEAR_OPTIMAL_DEPTH``); then whether
    the answer changes with n and with depth; the exhaustive control (when it misses, an
    "unbeaten" verdict is inconclusive); the fast BFS against lib.receptive_field (sanity)."""
    from .claims import check

    out = []
    controls = results.get("controls", [])
    hits = sum(c["hit"] for c in controls)
    control_ok = bool(controls) and hits / len(controls) >= CONTROL_MIN_HIT_RATE
    weak = None if control_ok else (
        "no exhaustive control was run" if not controls else
        f"the search found the exhaustive optimum in only {hits}/{len(controls)} small cases, so 'unbeaten' may "
        "mean 'not found'")
    rows = [standing(c) for c in results["cases"]]
    for s in rows:
        tag = f"n{s['n']}_L{s['depth']}"
        where = f"{s['n']} blocks, {s['budget']} blocks/row, depth {s['depth']}"
        cfg = s["best_config"]
        out.append(check(
            f"power2_unbeaten_{tag}",
            f"Power-of-2 solves §3.1's problem: no distance set at its budget has a larger alpha_hat AUC up to "
            f"depth L ({where})",
            paper="power-of-2 (proposed, not searched)",
            ours=(f"power-of-2 AUC {s['power2_auc']:.4f}; best found {s['best_auc']:.4f} ({s['best_id']}: window "
                  f"{cfg['window']}, distances {cfg['distances']}); power-of-2 {100 * s['gap']:.2f}% lower"),
            holds=s["gap"] <= 0, rule="no searched set has a strictly higher integer score sum_k |B_k|",
            kind="finding", inconclusive=weak if s["gap"] <= 0 else None))
        out.append(check(
            f"power2_near_optimal_{tag}",
            f"power-of-2 is near-optimal ({where})",
            paper="power-of-2 (proposed, not searched)",
            ours=(f"{100 * (1 - s['gap']):.1f}% of the best found AUC; {100 * s['power2_of_ti_bound']:.1f}% of the "
                  f"translation-invariant bound (best found: {100 * s['best_of_ti_bound']:.1f}%), "
                  f"{100 * s['power2_of_degree_bound']:.1f}% of the degree bound; every block reached at "
                  f"{_fmt_depth(s['power2_full_depth'])} vs {_fmt_depth(s['quickest_full_depth'])} for the quickest "
                  f"set found (bound: k>={s['full_depth_lower_bound']})"),
            holds=s["category"] in ("optimal", "near-optimal"),
            rule=(f"AUC within {100 * NEAR_OPTIMAL_GAP:g}% of the best found and every block reached at most "
                  f"{NEAR_OPTIMAL_DEPTH} layer(s) later than by the quickest set found")))
    by_depth = {L: [s for s in rows if s["depth"] == L] for L in sorted({s["depth"] for s in rows})}
    for L, at in by_depth.items():
        if len(at) > 1:
            out.append(check(
                f"answer_same_across_n_L{L}",
                f"The answer (optimal / near-optimal / beaten) is the same at every length (depth {L})",
                paper="— (one pattern proposed for every length)",
                ours="; ".join(f"n={s['n']}: {s['category']} ({100 * s['gap']:.2f}% lower)" for s in at),
                holds=len({s["category"] for s in at}) == 1, rule="same category at every n searched", kind="finding"))
    by_n = {n: [s for s in rows if s["n"] == n] for n in sorted({s["n"] for s in rows})}
    if any(len(at) > 1 for at in by_n.values()):
        out.append(check(
            "answer_same_across_depth",
            "The answer (optimal / near-optimal / beaten) is the same at every depth, at every length",
            paper="— (one pattern proposed for every depth)",
            ours="; ".join(f"n={n}: " + ", ".join(f"L={s['depth']} {s['category']} ({100 * s['gap']:.2f}% lower)"
                                                  for s in at) for n, at in by_n.items()),
            holds=all(len({s["category"] for s in at}) == 1 for at in by_n.values()),
            rule="same category at every depth searched, for each n", kind="finding"))
    if controls:
        out.append(check(
            "search_control_exhaustive",
            "The searches (greedy, beam, swap) find the exhaustive optimum on small spaces",
            paper="— (our control)",
            ours="; ".join(f"n={c['n']}, B={c['budget']}, L={c['depth']}: {c['search_best']} of optimum "
                           f"{c['exhaustive']['score']}" for c in controls),
            holds=control_ok, rule=f"found in >= {CONTROL_MIN_HIT_RATE:.0%} of the small cases"))
    checks = results.get("verification", [])
    if checks:
        bad = [f"n={c['n']} L={c['depth']}: {c['mismatches']}" for c in checks if c["mismatches"]]
        total = sum(c["patterns"] for c in checks)
        out.append(check(
            "fast_bfs_equals_receptive_field",
            "The fast bitset BFS equals lib.receptive_field on the lib.masks layout of every reported pattern",
            paper="—", ours=f"{total - sum(len(c['mismatches']) for c in checks)}/{total} patterns agree"
                            + (f"; mismatches: {bad}" if bad else ""),
            holds=not bad, rule="identical alpha_hat curves and shortest paths; longest row within the budget",
            kind="sanity"))
    return out


def summary_paragraph(results: dict) -> str:
    """One paragraph answering the issue's question from the numbers (for ``write_results`` notes)."""
    rows = [standing(c) for c in results["cases"]]
    if not rows:
        return "No case was searched."
    beaten = [s for s in rows if s["gap"] > 0]
    lead = (f"Power-of-2 is not the best static pattern under the paper's own objective: at PowerAttention's own "
            f"budget, a searched distance set has a larger alpha_hat AUC in {len(beaten)} of {len(rows)} "
            "(n, depth) cases" if beaten else
            "No searched distance set has a larger alpha_hat AUC than power-of-2 at PowerAttention's own budget")
    parts = [f"n={s['n']}, L={s['depth']}: {s['category']}, AUC {s['power2_auc']:.3f} vs {s['best_auc']:.3f} "
             f"({100 * s['gap']:.1f}% lower), every block at {_fmt_depth(s['power2_full_depth'])} vs "
             f"{_fmt_depth(s['quickest_full_depth'])}" for s in rows]
    best = results.get("best_pattern") or {}
    cfg = best.get("config")
    tail = (f" The best set at {best['n']} blocks and depth {best['depth']}: window {cfg['window']}, distances "
            f"{cfg['distances']}, sink {cfg['sink']} (results.json: best_pattern_config)." if cfg else "")
    return lead + " (" + "; ".join(parts) + ")." + tail


__all__ = [
    "CONTROL_MIN_HIT_RATE", "DEPTHS", "FAMILIES", "MAX_EXHAUSTIVE", "METHODS", "NEAR_OPTIMAL_DEPTH",
    "NEAR_OPTIMAL_GAP", "SINK", "SIZES", "alpha_curve", "baselines", "beam_search", "best_pattern", "block_distances",
    "bounds", "budget_for", "budget_of", "claims", "control_case", "exhaustive_search", "exhaustive_size",
    "family_values", "fibonacci", "find_case", "fit_family", "full_coverage_depth", "metrics", "powers",
    "reach_counts", "run_study", "score", "search", "standing", "step_set", "steps_from_pattern", "study_case",
    "summary_paragraph", "swap_search", "ti_layout", "to_config", "verify",
]
