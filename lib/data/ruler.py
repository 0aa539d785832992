"""RULER-style long-context tasks at exact token lengths, their scoring, and training batches.

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?") has 13 tasks in four categories. This module
writes them from the paper's definitions (and the defaults of its reference
configuration) for one Hugging Face tokenizer, as plain completion prompts for
greedy continuation:

=================  ==================================================================================
task               what the prompt holds (RULER's setting)
=================  ==================================================================================
niah_single_1      noise haystack ("The grass is green. ..." lines), one needle, word key, 7-digit value
niah_single_2      essay haystack, one needle, word key, 7-digit value
niah_single_3      essay haystack, one needle, word key, UUID value
niah_multikey_1    essay haystack, 4 needles with different keys, 1 asked
niah_multikey_2    haystack made of needles (distractor keys), 1 asked
niah_multikey_3    haystack made of needles, UUID keys and UUID values, 1 asked
niah_multivalue    essay haystack, 1 key with 4 values, all 4 must be returned
niah_multiquery    essay haystack, 4 keys asked at once, all 4 values must be returned
vt                 variable tracking: 1 chain of 4 hops ("VAR ABCDE = 12345", "VAR FGHIJ = VAR ABCDE", ...)
                   in noise; return the 5 variables that hold the value (one-shot example first)
cwe                common words: numbered word list, 10 words repeat often (30x; 6x below 4K tokens),
                   the others rarely (3x; 1x below 4K); return the 10 common ones (one-shot example first)
fwe                frequent words: coded 6-letter "words" drawn from a Zipf(alpha=2) law; return the top 3
qa_1 / qa_2        a SQuAD / HotpotQA question with its document(s) among distractor documents
=================  ==================================================================================

Each sample's prompt has **exactly** ``seq_len - MAX_NEW_TOKENS[task]`` tokens
(``generate``), or prompt + reference answer exactly ``seq_len`` tokens
(``training_batch``): RULER fills "up to" the length by growing the haystack in
steps; we fill to the token.

How exactness is reached without re-tokenizing growing strings
---------------------------------------------------------------
A prompt is a concatenation of independently tokenized *pieces* (instruction,
needles, question, ...) and of *slices* of a long, once-tokenized haystack
stream. Every piece after the first starts with a whitespace character and
every piece ends with a non-whitespace one; slices of the stream are cut only
before a token that starts with whitespace and after one that ends with
non-whitespace. In a byte-level BPE whose pre-tokenizer is the GPT-2 regex
(SmolLM2, GPT-2; optionally after an individual-digits split) no pre-token can
span a "non-whitespace | whitespace" boundary, so the tokens of the
concatenated text are exactly the concatenated tokens: ``input`` (the decoded
prompt) re-tokenizes to ``input_ids``, and ``input + target`` to ``input_ids +
target_ids``. ``generate`` checks this on the first sample of every call
(``verify=True`` checks all) and raises if a tokenizer breaks it (e.g. Llama-3's
pre-tokenizer, which glues punctuation to a following newline).

The haystack stream is cut at a random window of exactly the needed length (both
ends on valid boundaries), and needles go in at valid boundaries nearest to their
depths: sentence ends for essays, line starts for the noise haystack. Tasks whose
haystack is made of units (needles, list items, coded words, documents) choose
the units so that their token counts add up exactly (see the differences below).

No special tokens (BOS/EOS) are added: SmolLM2 was trained without a BOS, and
``input_ids`` is exactly what the model reads.

Where we differ from RULER, and why
------------------------------------
* Exact lengths (above); RULER's prompts fall short of the length by up to one
  haystack step.
* Plain completion prompts with RULER's answer prefixes ("... The special magic
  number for X mentioned in the provided text is"), never a chat template; the
  reference answer (``target``) is the continuation, lists joined by ", " (also in
  the one-shot examples; RULER's CWE example numbers its answer list). Prompts
  end without a trailing space (the answer's first token carries the space), so
  RULER's VT prefix "..., they are: " loses its final space; its typo
  "assgined" is fixed.
* ``MAX_NEW_TOKENS`` is smaller than RULER's generation budget where the answers
  are short with this tokenizer (see its comment), so more of ``seq_len`` is context;
  VT's is larger (64, RULER 30): five variables take up to 26 tokens here.
* Needles in the essay haystack go in at sentence ends of a token window (RULER:
  at ``nltk`` sentence boundaries of the essay's beginning); in the noise haystack
  and the VT noise, needles and variable assignments are lines of their own
  (RULER glues VT assignments into the noise with spaces).
* VT's one-shot example is a short chain in 6 noise lines (about 200 tokens;
  RULER sizes it to 500 tokens, half of a 1K prompt) drawn per sample.
* Haystacks of needles (multikey_2/3): distractor needles are chosen by token
  length so that a whole number of them fits exactly; when none does (e.g. 90-token
  UUID needles in a 1K prompt) the last distractor is cut short at a word.
* CWE: to hit the exact length a few rare words appear once instead of 3 times
  (and, as RULER does once its list runs out, hyphenated pairs of words serve as
  extra rare words). FWE: a few extra occurrences of '...' (the noise word RULER
  ranks first), of the answers, or of words ranked 5th or lower (kept below the 3rd
  answer's count) absorb the last tokens.
* QA: HotpotQA's supporting paragraphs are the gold documents and the question's
  other eight paragraphs its first distractors (RULER includes all ten as gold,
  which does not fit in 1K tokens); one distractor is cut to an excerpt to hit the
  length. QA data (SQuAD, HotpotQA) comes through ``load_qa_source``, which needs
  the Hugging Face hub (``QAUnavailable`` otherwise), or any list of records.
* ``words``: RULER draws keys ("adjective-noun") and CWE words from the
  ``wonderwords`` lists; we use a built-in list of common English words
  (``ADJECTIVES``, ``NOUNS``, ``VERBS``), or the caller's ``words``.
* ``haystack=None``: the essay tasks fall back to generated English-like
  sentences (``fallback_essays``), so tests need no files; RULER uses Paul
  Graham's essays. The project passes its offline corpus instead.

Scoring follows RULER: ``string_match_all`` (fraction of the references found in
the prediction, case-insensitive) for NIAH, VT, CWE and FWE; ``string_match_part``
(1 if any reference is found) for QA.

Interface: ``TASKS``, ``CATEGORIES``, ``MAX_NEW_TOKENS``; ``generate`` (samples as
dicts), ``ruler_dataset`` (the same as a ``datasets.Dataset``), ``training_batch``
(prompt + answer rows of exactly ``seq_len`` tokens with a loss mask), ``score``,
``category_scores``, ``load_qa_source`` / ``normalize_qa_records`` / ``QAUnavailable``.
"""
from __future__ import annotations

import contextlib
import functools
import math
import re
import uuid
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------------------
# Tasks, categories, budgets
# --------------------------------------------------------------------------------------------------

TASKS: tuple[str, ...] = (
    "niah_single_1", "niah_single_2", "niah_single_3",
    "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "niah_multiquery",
    "vt", "cwe", "fwe", "qa_1", "qa_2",
)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "NIAH": TASKS[:8],
    "VT": ("vt",),
    "Aggregation": ("cwe", "fwe"),
    "QA": ("qa_1", "qa_2"),
}
_TASK_ID = {t: i for i, t in enumerate(TASKS)}

# RULER's generation budgets (tokens_to_generate in its task constants).
RULER_MAX_NEW_TOKENS: dict[str, int] = {
    **{t: 128 for t in CATEGORIES["NIAH"]}, "vt": 30, "cwe": 120, "fwe": 50, "qa_1": 32, "qa_2": 32,
}
# Ours, from the reference answers measured with SmolLM2's tokenizer (every digit is a token;
# 100 samples per task at each of 1K/2K/4K/8K): a 7-digit value is 8 tokens (" " + 7 digits), a
# UUID 28-37, four values joined by ", " 35, VT's five 5-letter variables 17-26, CWE's ten
# built-in words 19-23, FWE's three coded words 11-18; SQuAD/HotpotQA answers are short
# (RULER's 32 kept). Each budget is at least twice the longest measured answer, so a model that
# first repeats a few words of the question still fits, and the rest of ``seq_len`` is context.
MAX_NEW_TOKENS: dict[str, int] = {
    "niah_single_1": 32, "niah_single_2": 32, "niah_single_3": 80,
    "niah_multikey_1": 32, "niah_multikey_2": 32, "niah_multikey_3": 80,
    "niah_multivalue": 80, "niah_multiquery": 80,
    "vt": 64, "cwe": 64, "fwe": 40, "qa_1": 32, "qa_2": 32,
}

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)  # RULER's 40 needle depths (%)


@dataclass(frozen=True)
class _NiahConfig:
    haystack: str     # "noise", "essay" or "needle"
    key: str          # "words" or "uuids"
    value: str        # "numbers" or "uuids"
    num_k: int = 1
    num_v: int = 1
    num_q: int = 1


_NIAH = {
    "niah_single_1": _NiahConfig("noise", "words", "numbers"),
    "niah_single_2": _NiahConfig("essay", "words", "numbers"),
    "niah_single_3": _NiahConfig("essay", "words", "uuids"),
    "niah_multikey_1": _NiahConfig("essay", "words", "numbers", num_k=4),
    "niah_multikey_2": _NiahConfig("needle", "words", "numbers"),
    "niah_multikey_3": _NiahConfig("needle", "uuids", "uuids"),
    "niah_multivalue": _NiahConfig("essay", "words", "numbers", num_v=4),
    "niah_multiquery": _NiahConfig("essay", "words", "numbers", num_k=4, num_q=4),
}
VT_HOPS = 4  # one chain (RULER's default num_chains=1) of 4 hops: 5 variables
CWE_NUM = 10
FWE_ALPHA, FWE_WORD_LEN = 2.0, 6
QA_DATASETS = {"qa_1": "squad", "qa_2": "hotpotqa"}


class QAUnavailable(RuntimeError):
    """The QA data (SQuAD / HotpotQA) cannot be loaded here (no Hugging Face hub)."""


# --------------------------------------------------------------------------------------------------
# Built-in words (keys and CWE words when ``words`` is None)
# --------------------------------------------------------------------------------------------------

ADJECTIVES: tuple[str, ...] = tuple("""
able active afraid agile amber ancient angry anxious artful ashen awake bare bashful bitter blank bleak
blissful blunt bold brave breezy brief bright brisk broad broken bumpy busy calm careful cheap cheerful
chilly civic clean clever close cloudy clumsy coarse cold common cool cozy crisp crooked cruel curious
cute damp daring dark dear deep dense dizzy dry dull dusty eager early earnest easy elegant empty exact
faint fair false famous fancy fast fierce fine firm flat fluffy fond fragile free fresh frosty frozen
full funny gentle giant glad gloomy golden grand gray greedy green grim gritty happy hard harsh hasty
heavy hidden high hollow honest humble hungry icy idle jolly keen kind large late lazy lean light lively
lonely long loose loud lovely lucky mellow merry mild misty modern moist narrow neat nervous new nimble
noble noisy odd old open orange pale patient plain pleasant plump polite poor proud purple quaint quick
quiet rapid rare raw ready real rich rigid ripe rough round royal rude rusty sacred sad safe salty sandy
scarce secret sharp shiny short shy silent silky silly simple sleepy slim slow small smart smooth soft
solid sour spare spicy stale steady steep sticky stiff still stormy strange strict strong sturdy sudden
sunny super sweet swift tall tame tender thick thin tidy tiny tired tough tricky true ugly upper urgent
vague vast vivid warm wary weak weary wet white whole wide wild windy wise witty wooden young zealous
""".split())
NOUNS: tuple[str, ...] = tuple("""
acorn actor adult airport album alley anchor angle ankle apple apron arch arena army arrow attic autumn
badge bakery ball banana band bank barn basket bath beach bean bear bed bee bell belt bench berry bicycle
bird blanket blossom boat bone book boot bottle bowl box branch bread breeze brick bridge brook broom
brush bucket budget bulb bundle butter button cabin cable cactus cake camel camera camp canal candle
canoe canyon cap captain car card carpet carrot castle cat cave cellar chair chalk channel chapter cheese
cherry chest chicken chimney church circle city clam cliff clock closet cloud coast coat coffee coin
collar comet compass cookie copper corn corner cottage cotton couch country court cousin cow crab crane
crater crayon creek crow crown cup curtain cushion daisy dance dawn deer desert desk diamond dinner
doctor dog dolphin donkey door dragon drawer dream dress drum duck eagle earth easel egg elbow elephant
engine envelope eraser falcon farm feather fence ferry field finger fire fish flag flame flute fog
forest fork fountain fox frog garden garlic gate ghost giraffe glacier glass glove goat gold goose grape
grass guitar hammer harbor harp hat hawk heart hedge helmet hill hive honey horse hotel house island
jacket jar jelly jewel journal jungle kettle key kitchen kite kitten knee knife ladder lake lamp lantern
lawn leaf lemon letter library lily lion lizard lobster locket lodge magnet mango map maple marble
market meadow medal melon mirror monkey moon moose mountain mouse museum nest needle net notebook oak
ocean office olive onion orchard otter owl oyster paddle page palace panda paper parrot path peach pearl
pebble pencil pepper piano pickle pigeon pillow pilot pine pirate planet plate pocket pond poppy potato
puddle pumpkin puppet puzzle quilt rabbit radio rain raven ribbon ring river road robin rocket roof room
rope rose saddle sail salad sand scarf school scissors sea seal shadow shark sheep shelf shell ship shoe
shovel silver sister skate sky sled snail snake snow soap sock sofa spider spoon squirrel stable stage
star station statue stone storm stove straw stream street sugar suitcase sun swan sweater table tail
teacher temple tent thread thunder ticket tiger timber toast tomato tower town toy tractor train tree
trophy truck trumpet tulip tunnel turtle umbrella valley vase village violin wagon wallet walnut wand
water whale wheat wheel whistle window wing winter wolf wool yard zebra
""".split())
VERBS: tuple[str, ...] = tuple("""
accept admire answer argue arrive bake balance bathe beg behave bless blink boil borrow bounce breathe
build calculate carry chase cheer chew clap climb collect count crawl cross cry dance decide deliver
describe dig discover dream drift earn enjoy escape explain fetch fix float fold gather giggle glow
grab greet grin guard guess hang happen hop hover hunt hurry imagine invent jog juggle jump kneel knit
knock laugh launch lift listen march melt mend mix nod obey offer open paint paddle pause peel plant
play pour pray print pull push race reach read relax repair rescue rest ride roar roll rush sail scrub
search shiver shout sing skip sleep slide smile sneeze sniff spin splash sprint squeeze stir stretch
swim swing talk taste teach throw tickle travel tumble twist unfold vanish visit wander wash wave
whisper wiggle wink wonder wrap write yawn yell zoom
""".split())


def default_words() -> list[str]:
    """The built-in word list (adjectives, nouns, verbs; no duplicates) used when ``words`` is None."""
    return list(dict.fromkeys(ADJECTIVES + NOUNS + VERBS))


def fallback_essays(n_docs: int = 4, sentences_per_doc: int = 600, seed: int = 0) -> list[str]:
    """Generated English-like paragraphs: the essay haystack when ``haystack`` is None.

    Sentences combine the built-in words in a few fixed frames; deterministic in ``seed``.
    Only for tests and smoke runs: real runs pass long English text.
    """
    return list(_fallback_essays(n_docs, sentences_per_doc, seed))


@functools.lru_cache(maxsize=4)
def _fallback_essays(n_docs: int, sentences_per_doc: int, seed: int) -> tuple[str, ...]:
    rng = np.random.default_rng([7, seed])
    frames = [
        "The {a} {n} {v}s near the {n2}.",
        "A {a} {n} was found beside the {a2} {n2}.",
        "Every morning the {n} would {v} toward the {n2}.",
        "Nobody expected the {n} to be so {a}.",
        "Later that year, the {a} {n} and the {n2} began to {v} together.",
        "It is said that a {n} cannot {v} without a {n2}.",
        "She kept the {a} {n} in a {n2} for many years.",
        "When the {n2} grew {a}, the {n} decided to {v}.",
    ]
    docs = []
    for _ in range(n_docs):
        sents = []
        for _ in range(sentences_per_doc):
            f = frames[rng.integers(len(frames))]
            sents.append(f.format(a=ADJECTIVES[rng.integers(len(ADJECTIVES))],
                                  a2=ADJECTIVES[rng.integers(len(ADJECTIVES))],
                                  n=NOUNS[rng.integers(len(NOUNS))], n2=NOUNS[rng.integers(len(NOUNS))],
                                  v=VERBS[rng.integers(len(VERBS))]))
        paras = [" ".join(sents[i:i + 8]) for i in range(0, len(sents), 8)]
        docs.append("\n\n".join(paras))
    return tuple(docs)


# --------------------------------------------------------------------------------------------------
# Tokenizer wrapper and caches
# --------------------------------------------------------------------------------------------------

class _Tok:
    """A Hugging Face tokenizer with the few operations we need, and per-token boundary flags."""

    def __init__(self, tokenizer):
        self.hf = tokenizer
        self._memo: dict[str, np.ndarray] = {}
        self._flags = None

    def encode(self, text: str) -> np.ndarray:
        ids = self._memo.get(text)
        if ids is None:
            ids = np.asarray(self.hf(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            if len(text) <= 64:  # short, recurring pieces (numbers, words, headers)
                if len(self._memo) > 100_000:
                    self._memo.clear()
                self._memo[text] = ids
        return ids

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        out = self.hf(list(texts), add_special_tokens=False)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in out]

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False,
                              clean_up_tokenization_spaces=False)

    @property
    def flags(self):
        """Per vocabulary id: starts with whitespace, ends with non-whitespace, starts with a
        newline, ends a sentence (., ! or ?, possibly followed by closing quotes/brackets)."""
        if self._flags is None:
            n = len(self.hf)
            texts = self.hf.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)
            starts_ws = np.array([bool(t) and t[0].isspace() for t in texts])
            ends_nonws = np.array([bool(t) and not t[-1].isspace() for t in texts])
            starts_nl = np.array([bool(t) and t[0] in "\n\r" for t in texts])
            ends_sent = np.array([bool(re.search(r"[.!?][\"'”’)\]]*$", t)) for t in texts])
            self._flags = (starts_ws, ends_nonws, starts_nl, ends_sent)
        return self._flags


_TOK_CACHE: dict[int, tuple[object, _Tok]] = {}


def _tok(tokenizer) -> _Tok:
    if isinstance(tokenizer, _Tok):
        return tokenizer
    hit = _TOK_CACHE.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    if len(_TOK_CACHE) >= 4:
        _TOK_CACHE.pop(next(iter(_TOK_CACHE)))
    wrapped = _Tok(tokenizer)
    _TOK_CACHE[id(tokenizer)] = (tokenizer, wrapped)
    return wrapped


class _Stream:
    """A long text tokenized once, with the positions where it may be cut.

    ``cut[i]`` (i in 0..len) is True when a slice may begin at token i / end before it:
    token i starts with whitespace and token i-1 ends with non-whitespace (at 0: token 0
    starts with whitespace; at len: the last token ends with non-whitespace).
    ``sentence[i]``: a cut right after a sentence end; ``line[i]``: a cut at a line start.
    """

    def __init__(self, tok: _Tok, pieces: list[np.ndarray]):
        self.ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        starts_ws, ends_nonws, starts_nl, ends_sent = tok.flags
        ids = self.ids
        n = len(ids)
        cut = np.zeros(n + 1, dtype=bool)
        if n:
            cut[:n] = starts_ws[ids]
            cut[1:n] &= ends_nonws[ids[:-1]]
            cut[n] = ends_nonws[ids[-1]]
        self.cut = cut
        self.sentence = cut.copy()
        self.sentence[1:n] &= ends_sent[ids[:-1]]
        self.sentence[0] = False
        self.line = cut.copy()
        self.line[:n] &= starts_nl[ids]
        self.line[n] = False

    def __len__(self):
        return len(self.ids)

    def window(self, rng: np.random.Generator, length: int, prefer: tuple[np.ndarray, ...] = ()) -> int:
        """Start ``s`` of a random window ``[s, s + length)`` with valid cuts at both ends,
        preferring starts where the first of the masks in ``prefer`` that allows one is True."""
        n = len(self.ids)
        if length > n:
            raise ValueError(f"haystack has {n} tokens, fewer than the {length} needed; pass longer documents")
        last = n - length  # s in [0, last]
        for _ in range(16):  # look near random spots first (cheap), then everywhere
            lo = int(rng.integers(0, last + 1))
            hi = min(last, lo + 4096)
            ok = self.cut[lo:hi + 1] & self.cut[lo + length:hi + length + 1]
            for mask in prefer:
                if (ok & mask[lo:hi + 1]).any():
                    ok = ok & mask[lo:hi + 1]
                    break
            idx = np.flatnonzero(ok)
            if len(idx):
                return lo + int(idx[rng.integers(len(idx))])
        ok = self.cut[:last + 1] & self.cut[length:]
        idx = np.flatnonzero(ok)
        if not len(idx):
            raise RuntimeError(f"no window of exactly {length} tokens starts and ends on a word boundary "
                               "in this haystack (is it English text with spaces?)")
        return int(idx[rng.integers(len(idx))])

    def points(self, start: int, end: int, kind: str) -> np.ndarray:
        """Insertion points in ``[start, end]`` of the given kind ("sentence", "line" or "cut"),
        always including both ends."""
        mask = {"sentence": self.sentence, "line": self.line, "cut": self.cut}[kind]
        inner = np.flatnonzero(mask[start:end + 1]) + start
        return np.unique(np.concatenate([[start, end], inner]))


_STREAM_CACHE: dict[tuple, tuple[_Tok, object, object]] = {}


def _cached_stream(key: tuple, tok: _Tok, build, keep):
    """``build()`` once per (tokenizer, key); ``keep`` (the documents) stays referenced."""
    full_key = (id(tok),) + key
    hit = _STREAM_CACHE.get(full_key)
    if hit is not None and hit[0] is tok:
        return hit[2]
    if len(_STREAM_CACHE) >= 8:
        _STREAM_CACHE.pop(next(iter(_STREAM_CACHE)))
    value = build()
    _STREAM_CACHE[full_key] = (tok, keep, value)
    return value


def _essay_stream(tok: _Tok, docs: list[str], min_tokens: int) -> _Stream:
    """The haystack documents as one stream (joined by blank lines), repeated whole if it is
    shorter than ``min_tokens``. Each document is tokenized once per tokenizer and process."""
    docs_key = tuple((len(d), hash(d)) for d in docs)
    pieces = _cached_stream(("docs", docs_key), tok, lambda: _DocPieces(tok, docs), docs)
    reps = max(1, math.ceil(min_tokens / max(1, pieces.total)))
    return _cached_stream(("essay", docs_key, reps), tok, lambda: _Stream(tok, pieces.tiled(reps)), docs)


class _DocPieces:
    """Token ids of the first document and of every document after a blank line."""

    def __init__(self, tok: _Tok, docs: list[str]):
        self.lead = tok.encode(docs[0])
        self.sep = tok.encode_many(["\n\n" + d for d in docs])
        self.total = len(self.lead) + sum(len(p) for p in self.sep[1:])

    def tiled(self, reps: int) -> list[np.ndarray]:
        return [self.lead] + self.sep[1:] + self.sep * (reps - 1)


def _noise_stream(tok: _Tok, min_tokens: int) -> _Stream:
    """RULER's noise paragraph, one per line, at least ``min_tokens`` long."""
    first, rest = tok.encode(NOISE), tok.encode("\n" + NOISE)
    reps = max(1, math.ceil(max(0, min_tokens - len(first)) / len(rest)) + 2)
    reps = 1 << max(0, (reps - 1).bit_length())  # cache a few sizes only
    return _cached_stream(("noise", reps), tok, lambda: _Stream(tok, [first] + [rest] * reps), None)


def _clean_docs(docs, what: str) -> list[str]:
    """Stripped non-empty documents (empty ones are dropped)."""
    if isinstance(docs, str) or not isinstance(docs, (list, tuple)):
        raise ValueError(f"{what} must be a list of strings, got {type(docs).__name__}")
    if any(not isinstance(d, str) for d in docs):
        raise ValueError(f"{what} must hold only strings")
    out = [d.strip() for d in docs if d.strip()]
    if not out:
        raise ValueError(f"{what} holds no non-empty text")
    return out


def _clean_words(words) -> list[str]:
    if words is None:
        return default_words()
    if isinstance(words, str) or not isinstance(words, (list, tuple)):
        raise ValueError(f"words must be a list of strings, got {type(words).__name__}")
    out = list(dict.fromkeys(w.strip() for w in words if isinstance(w, str) and w.strip()))
    if len(out) < 20:
        raise ValueError(f"words needs at least 20 distinct non-empty words, got {len(out)}")
    return out


# --------------------------------------------------------------------------------------------------
# Random values
# --------------------------------------------------------------------------------------------------

def _number(rng) -> str:
    return str(int(rng.integers(10 ** 6, 10 ** 7)))  # 7 digits, as RULER


def _uuid(rng) -> str:
    return str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))


class _Keys:
    """Distinct random keys: "word-word" pairs (RULER: adjective-noun) or UUIDs."""

    def __init__(self, rng, kind: str, words: list[str] | None, adjective_noun: bool):
        self.rng, self.kind, self.words, self.adj_noun = rng, kind, words, adjective_noun
        self.used: set[str] = set()

    def __call__(self) -> str:
        for _ in range(1000):
            if self.kind == "uuids":
                k = _uuid(self.rng)
            elif self.adj_noun:
                k = f"{ADJECTIVES[self.rng.integers(len(ADJECTIVES))]}-{NOUNS[self.rng.integers(len(NOUNS))]}"
            else:
                i, j = self.rng.integers(len(self.words), size=2)
                if i == j:
                    continue
                k = f"{self.words[i]}-{self.words[j]}"
            if k not in self.used:
                self.used.add(k)
                return k
        raise ValueError("ran out of distinct keys: pass a longer word list")


def _value(rng, kind: str) -> str:
    return _uuid(rng) if kind == "uuids" else _number(rng)


# --------------------------------------------------------------------------------------------------
# Prompt assembly
# --------------------------------------------------------------------------------------------------

class _Prompt:
    """Token pieces in order; remembers where marked pieces start."""

    def __init__(self):
        self.parts: list[np.ndarray] = []
        self.length = 0
        self.marks: dict[object, int] = {}

    def add(self, ids, mark=None):
        ids = np.asarray(ids, dtype=np.int64)
        if mark is not None:
            self.marks[mark] = self.length
        self.parts.append(ids)
        self.length += len(ids)

    def ids(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.int64)


class _TooShort(ValueError):
    pass


def _need(budget: int, minimum: int, task: str, what: str):
    if budget < minimum:
        raise _TooShort(f"seq_len is too short for task {task!r}: {what} leaves {budget} tokens "
                        f"for the context, which needs at least {minimum}")


def _stream_context(p: _Prompt, stream: _Stream, rng, length: int, inserts: list[tuple[float, np.ndarray, object]],
                    kind: str):
    """Append a window of ``length`` stream tokens with ``inserts`` (depth in [0, 1], ids, mark)
    placed at the insertion points of ``kind`` ("sentence" or "line") nearest to their depths.
    The window starts, where it can, at a point of the same kind (else of the other)."""
    prefer = (stream.sentence, stream.line) if kind == "sentence" else (stream.line, stream.sentence)
    s = stream.window(rng, length, prefer)
    pts = stream.points(s, s + length, kind)
    placed = []
    for depth, ids, mark in inserts:
        target = s + depth * length
        placed.append((int(pts[np.argmin(np.abs(pts - target))]), ids, mark))
    placed.sort(key=lambda x: x[0])
    pos = s
    for at, ids, mark in placed:
        if at > pos:
            p.add(stream.ids[pos:at])
            pos = at
        p.add(ids, mark)
    p.add(stream.ids[pos:s + length])


def _subset_sums(lengths: list[int], limit: int) -> list[np.ndarray]:
    """Bitsets of the sums (up to ``limit``) reachable with the first i items, for i = 0..n."""
    reach = np.zeros(limit + 1, dtype=bool)
    reach[0] = True
    steps = [reach]
    for ln in lengths:
        if 0 < ln <= limit:
            reach = reach.copy()
            reach[ln:] |= steps[-1][:limit + 1 - ln]
        steps.append(reach)
    return steps


def _subset_pick(steps: list[np.ndarray], lengths: list[int], target: int) -> list[int]:
    """Indices of items summing to ``target`` (which ``steps[-1]`` must reach)."""
    picks, t = [], target
    for i in range(len(lengths) - 1, -1, -1):
        if not steps[i][t]:  # t needs item i
            picks.append(i)
            t -= lengths[i]
    return picks[::-1]


def _fill_units(budget: int, draw, task: str, flags=None, tail_units: int = 24) -> tuple[list[np.ndarray], bool]:
    """Units (token arrays from ``draw(k) -> list`` of k fresh units) whose lengths add up to
    exactly ``budget``: random units until about ``tail_units`` units' worth of tokens is left,
    then an exact subset of a pool of about twice that many spare units. (Units of similar
    lengths, e.g. UUID needles of 89-95 tokens, need a few dozen in the subset to reach every
    remainder.) If no subset fits (few, long units) and ``flags`` (the tokenizer's boundary
    flags) is given, the last unit is cut short at a valid boundary. Returns the units and
    whether the last one is cut. Tokenizing units is the cost, so the pool is kept small."""
    if budget == 0:
        return [], False
    spare = list(draw(16))
    lengths = [len(u) for u in spare]
    mean = sum(lengths) / len(lengths)
    reserve = max(int(tail_units * mean), max(lengths))
    units: list[np.ndarray] = []
    total = 0
    while budget - total > reserve:
        if not spare:
            spare = list(draw(max(8, math.ceil((budget - total - reserve) / mean))))
        u = spare.pop()
        units.append(u)
        total += len(u)
    r = budget - total
    want = 2 * math.ceil(r / mean) + 8
    for attempt in range(4):
        if len(spare) < want:
            spare += draw(want - len(spare))
        lens = [len(u) for u in spare]
        steps = _subset_sums(lens, r)
        if steps[-1][r]:
            return units + [spare[i] for i in _subset_pick(steps, lens, r)], False
        if flags is not None:  # whole units plus the beginning of one more
            starts_ws, ends_nonws = flags[0], flags[1]
            for extra in draw(4):
                ok = starts_ws[extra[1:]] & ends_nonws[extra[:-1]]  # valid cut before token k
                for k in np.flatnonzero(ok)[::-1] + 1:
                    if k <= r and steps[-1][r - k]:
                        return units + [spare[i] for i in _subset_pick(steps, lens, r - k)] + [extra[:k]], True
        want += 16
    raise _TooShort(f"could not fill exactly {budget} tokens for task {task!r} with its units "
                    f"(lengths {sorted(set(lengths))}); the length may be too short")


# --------------------------------------------------------------------------------------------------
# NIAH
# --------------------------------------------------------------------------------------------------

def _niah(task, ctx, rng, prompt_len):
    cfg = _NIAH[task]
    tok = ctx.tok
    keys = _Keys(rng, cfg.key, ctx.words, ctx.adjective_noun)
    num_k = max(cfg.num_k, cfg.num_q)
    plural = cfg.value                      # "numbers" / "uuids"
    needle_fmt = "One of the special magic {v} for {k} is: {val}."
    key_list = [keys() for _ in range(num_k)]
    values = [[_value(rng, cfg.value) for _ in range(cfg.num_v)] for _ in range(num_k)]
    needles = [(ki, vi) for ki in range(num_k) for vi in range(cfg.num_v)]
    order = rng.permutation(len(needles))
    needles = [needles[i] for i in order]
    asked = [int(i) for i in rng.choice(num_k, size=cfg.num_q, replace=False)]
    answers = [values[k][v] for k in asked for v in range(cfg.num_v)]
    queries = [key_list[k] for k in asked]
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]

    single = cfg.num_q * cfg.num_v == 1
    noun = plural[:-1] if single else plural
    if single:
        head = f"A special magic {noun} is hidden within the following text. "
        question = f"\nWhat is the special magic {noun} for {query} mentioned in the provided text? "
        lead = f"The special magic {noun} for {query} mentioned in the provided text is"
    else:
        head = f"Some special magic {noun} are hidden within the following text. "
        question = f"\nWhat are all the special magic {noun} for {query} mentioned in the provided text? "
        lead = f"The special magic {noun} for {query} mentioned in the provided text are"
    prefix = head + f"Make sure to memorize it. I will quiz you about the {noun} afterwards."
    target = " " + ", ".join(answers)
    target_ids = tok.encode(target)
    L = prompt_len(len(target_ids))

    sep = " " if cfg.haystack == "essay" else "\n"
    needle_ids = tok.encode_many([sep + needle_fmt.format(v=plural, k=key_list[k], val=values[k][v])
                                  for k, v in needles])
    prefix_ids, suffix_ids = tok.encode(prefix), tok.encode(question + lead)
    budget = L - len(prefix_ids) - len(suffix_ids) - sum(len(x) for x in needle_ids)
    depths = rng.choice(DEPTHS, size=len(needles), replace=False) / 100.0
    p = _Prompt()
    p.add(prefix_ids)
    marks = [("needle", k, v) for k, v in needles]
    if cfg.haystack == "needle":
        _need(budget, 0, task, "the instruction, question and needles")

        def draw(m):
            texts = [sep + needle_fmt.format(v=plural, k=keys(), val=_value(rng, cfg.value)) for _ in range(m)]
            return tok.encode_many(texts)

        # Whole distractor needles; if no whole number of them fits (e.g. 700 tokens of 90-token
        # UUID needles), the last distractor is cut short at a word boundary.
        units, cut_last = _fill_units(budget, draw, task, flags=tok.flags)
        whole = len(units) - cut_last
        slots = np.minimum((depths * (whole + 1)).astype(int), whole)
        events = sorted([(int(slots[i]), 1, i) for i in range(len(needles))]
                        + [(j, 0, j) for j in range(len(units))], key=lambda x: (x[0], -x[1]))
        for _, is_needle, i in events:  # the cut distractor, if any, comes last
            if is_needle:
                p.add(needle_ids[i], marks[i])
            else:
                p.add(units[i])
    else:
        _need(budget, 8, task, "the instruction, question and needles")
        if cfg.haystack == "noise":
            stream = _noise_stream(tok, budget + 64)
            kind = "line"
        else:
            stream = ctx.essay(budget)
            kind = "sentence"
        _stream_context(p, stream, rng, budget, [(depths[i], needle_ids[i], marks[i]) for i in range(len(needles))],
                        kind)
    p.add(suffix_ids)
    answer_pos = [p.marks[("needle", k, v)] for k in asked for v in range(cfg.num_v)]
    return p.ids(), answers, target, target_ids, answer_pos


# --------------------------------------------------------------------------------------------------
# Variable tracking
# --------------------------------------------------------------------------------------------------

_VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text."
_VT_QUESTION = "\nQuestion: Find all variables that are assigned the value {value} in the text above."
_VT_LEAD = (" Answer: According to the chain(s) of variable assignment in the text above, {n} variables are "
            "assigned the value {value}, they are:")


def _vt_chain(rng, n_letters: int, hops: int):
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, size=n_letters))
        if name not in names:
            names.append(name)
    value = str(int(rng.integers(10000, 100000)))
    lines = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(hops)]
    return names, value, lines


def _vt_example(rng) -> str:
    """The one-shot example: a 3-letter-variable chain in 6 noise lines, with its answer."""
    names, value, lines = _vt_chain(rng, 3, VT_HOPS)
    body = [NOISE] * 6
    slots = np.sort(rng.choice(len(body) + 1, size=len(lines), replace=True))
    out, j = [], 0
    for i in range(len(body) + 1):
        while j < len(lines) and slots[j] == i:
            out.append(lines[j])
            j += 1
        if i < len(body):
            out.append(body[i])
    return (_VT_HEAD + "\n" + "\n".join(out) + _VT_QUESTION.format(value=value)
            + _VT_LEAD.format(n=len(names), value=value) + " " + ", ".join(names))


def _vt(task, ctx, rng, prompt_len):
    tok = ctx.tok
    example = _vt_example(rng)
    names, value, lines = _vt_chain(rng, 5, VT_HOPS)
    target = " " + ", ".join(names)
    target_ids = tok.encode(target)
    L = prompt_len(len(target_ids))
    prefix_ids = tok.encode(example + "\n\n" + _VT_HEAD)
    suffix_ids = tok.encode(_VT_QUESTION.format(value=value) + _VT_LEAD.format(n=len(names), value=value))
    line_ids = tok.encode_many(["\n" + s for s in lines])
    budget = L - len(prefix_ids) - len(suffix_ids) - sum(len(x) for x in line_ids)
    _need(budget, 8, task, "the one-shot example, instruction, question and chain")
    stream = _noise_stream(tok, budget + 64)
    # Positions uniform at random (as RULER), in chain order.
    depths = np.sort(rng.random(len(lines)))
    p = _Prompt()
    p.add(prefix_ids)
    _stream_context(p, stream, rng, budget, [(depths[i], line_ids[i], ("var", i)) for i in range(len(lines))],
                    "line")
    p.add(suffix_ids)
    return p.ids(), names, target, target_ids, [p.marks[("var", i)] for i in range(len(lines))]


# --------------------------------------------------------------------------------------------------
# Common words extraction
# --------------------------------------------------------------------------------------------------

_CWE_HEAD = ("Below is a numbered list of words. In these words, some appear more often than others. "
             "Memorize the ones that appear most often.")
_CWE_QUESTION = ("\nQuestion: What are the 10 most common words in the above list? "
                 "Answer: The top 10 words that appear most often in the list are:")


def _cwe_frequencies(seq_len: int):
    """RULER: (example words, example common reps, example rare reps, common reps, rare reps)."""
    return (20, 3, 1, 6, 1) if seq_len < 4096 else (40, 10, 3, 30, 3)


def _cwe_list(words: list[str], counts: list[int], rng) -> str:
    items = [w for w, c in zip(words, counts) for _ in range(c)]
    items = [items[i] for i in rng.permutation(len(items))]
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))


def _cwe(task, ctx, rng, prompt_len):
    tok = ctx.tok
    n_ex, ex_cw, ex_ucw, freq_cw, freq_ucw = _cwe_frequencies(ctx.seq_len)
    vocab = ctx.words
    perm = [vocab[i] for i in rng.permutation(len(vocab))]
    if len(perm) >= CWE_NUM + n_ex + 20:  # the example's words are not in the list asked about
        ex_words, perm = perm[-n_ex:], perm[:-n_ex]
    else:  # short word lists: drawn independently, as RULER always does
        ex_words = [vocab[i] for i in rng.choice(len(vocab), size=min(n_ex, len(vocab)), replace=False)]
    example = (_CWE_HEAD + "\n" + _cwe_list(ex_words, [ex_cw] * CWE_NUM + [ex_ucw] * (len(ex_words) - CWE_NUM), rng)
               + _CWE_QUESTION + " " + ", ".join(ex_words[:CWE_NUM]))
    common, pool = perm[:CWE_NUM], list(perm[CWE_NUM:])
    target = " " + ", ".join(common)
    target_ids = tok.encode(target)
    L = prompt_len(len(target_ids))
    prefix_ids = tok.encode(example + "\n\n" + _CWE_HEAD)
    suffix_ids = tok.encode(_CWE_QUESTION)
    budget = L - len(prefix_ids) - len(suffix_ids)

    def num_ids(j):  # the list starts on a new line; later items follow a space
        return tok.encode(("\n" if j == 1 else " ") + f"{j}.")

    def word_ids(w):
        return tok.encode(" " + w)

    n_items = 0
    total = 0

    def add_cost(count):
        return sum(len(num_ids(n_items + i + 1)) for i in range(count))

    entries: list[tuple[str, int]] = []  # (word, occurrences)
    for w in common:
        c = add_cost(freq_cw) + freq_cw * len(word_ids(w))
        total += c
        n_items += freq_cw
        entries.append((w, freq_cw))
    min_common = total
    _need(budget, min_common, task, "the one-shot example, instruction and question")

    # Enough distinct rare words? (RULER too composes words once its list runs out.)
    item_cost = min_common / (CWE_NUM * freq_cw)
    needed = int(1.2 * (budget - min_common) / (item_cost * freq_ucw)) + 64
    taken = set(perm)
    while len(pool) < needed:
        i, j = rng.choice(len(vocab), size=2, replace=False)
        w = f"{vocab[i]}-{vocab[j]}"
        if w not in taken:
            taken.add(w)
            pool.append(w)
    longest_item = len(num_ids(10 ** 6)) + max(len(word_ids(w)) for w in pool[:200])
    reserve = 8 * longest_item
    k = 0
    history = []  # (total, n_items) before each rare word, to back off
    while k < len(pool):
        w = pool[k]
        c = add_cost(freq_ucw) + freq_ucw * len(word_ids(w))
        if total + c + reserve > budget:
            break
        history.append((total, n_items))
        total += c
        n_items += freq_ucw
        entries.append((w, freq_ucw))
        k += 1
    # Tail: rare words appearing once, chosen by token length to land exactly on the budget.
    by_len: dict[int, list[str]] = {}
    for w in pool[k:]:
        by_len.setdefault(len(word_ids(w)), []).append(w)
    if len(by_len) < 3:  # too little variety in word lengths: add hyphenated pairs
        rest = pool[k:]
        for i in range(0, min(len(rest) - 1, 400), 2):
            w = f"{rest[i]}-{rest[i + 1]}"
            by_len.setdefault(len(word_ids(w)), []).append(w)
    tail = None
    for _ in range(40):
        tail = _cwe_tail(budget - total, n_items, num_ids, by_len)
        if tail is not None or not history:
            break
        total, n_items = history.pop()  # give back the last rare word
        w, _ = entries.pop()
        by_len.setdefault(len(word_ids(w)), []).append(w)
    if tail is None:
        raise _TooShort(f"could not fill exactly {budget} tokens for task {task!r}")
    entries += [(w, 1) for w in tail]
    items = [w for w, c in entries for _ in range(c)]
    items = [items[i] for i in rng.permutation(len(items))]
    p = _Prompt()
    p.add(prefix_ids)
    for j, w in enumerate(items, start=1):
        p.add(num_ids(j))
        p.add(word_ids(w))
    p.add(suffix_ids)
    return p.ids(), common, target, target_ids, []


def _cwe_tail(remaining: int, n_items: int, num_ids, by_len: dict[int, list[str]]) -> list[str] | None:
    """Words (each once) whose items (number + word) take exactly ``remaining`` tokens."""
    if remaining == 0:
        return []
    lengths = sorted(ln for ln, ws in by_len.items() if ws)
    if not lengths:
        return None
    for count in range(1, 64):
        num_cost = sum(len(num_ids(n_items + i + 1)) for i in range(count))
        need = remaining - num_cost
        if need < count * lengths[0]:
            return None
        if need > count * lengths[-1]:
            continue
        # Reachable sums of `count` word lengths (bounded by how many words each length has).
        choice = _compose(need, count, {ln: len(by_len[ln]) for ln in lengths})
        if choice is not None:
            out, used = [], {}
            for ln in choice:
                out.append(by_len[ln][used.get(ln, 0)])
                used[ln] = used.get(ln, 0) + 1
            for ln, c in used.items():
                del by_len[ln][:c]
            return out
    return None


def _compose(total: int, count: int, avail: dict[int, int]) -> list[int] | None:
    """``count`` values from ``avail`` (value -> how many) summing to ``total``."""
    states = {(0, 0): []}  # (sum, n) -> chosen values
    for value, have in avail.items():
        new = dict(states)
        for (s, n), chosen in states.items():
            for m in range(1, min(have, count - n) + 1):
                key = (s + m * value, n + m)
                if key[0] <= total and key not in new:
                    new[key] = chosen + [value] * m
        states = new
    return states.get((total, count))


# --------------------------------------------------------------------------------------------------
# Frequent words extraction
# --------------------------------------------------------------------------------------------------

_FWE_HEAD = ("Read the following coded text and track the frequency of each coded word. "
             "Find the three most frequently appeared coded words.")
_FWE_QUESTION = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three "
                 "most frequently appeared words in the above coded text? Answer: According to the coded text "
                 "above, the three most frequently appeared words are:")


def _zeta(alpha: float) -> float:
    k = np.arange(1, 100001, dtype=np.float64)
    return float(np.sum(k ** -alpha) + 100000.0 ** (1 - alpha) / (alpha - 1))


def _fwe(task, ctx, rng, prompt_len):
    tok = ctx.tok
    vocab_size = max(ctx.seq_len // 50, 8)  # RULER: max_seq_length // 50
    vocab: list[str] = []
    seen = set()
    while len(vocab) < vocab_size:
        w = "".join(chr(97 + int(c)) for c in rng.integers(0, 26, size=FWE_WORD_LEN))
        if w not in seen:
            seen.add(w)
            vocab.append(w)
    vocab[0] = "..."  # RULER: the top-ranked "word" is noise
    answers = vocab[1:4]
    target = " " + ", ".join(answers)
    target_ids = tok.encode(target)
    L = prompt_len(len(target_ids))
    prefix_ids, suffix_ids = tok.encode(_FWE_HEAD), tok.encode(_FWE_QUESTION)
    budget = L - len(prefix_ids) - len(suffix_ids)
    _need(budget, 32, task, "the instruction and question")
    word_ids = [tok.encode(" " + w) for w in vocab]
    wl = np.array([len(x) for x in word_ids])
    weights = np.arange(1, vocab_size + 1, dtype=np.float64) ** -FWE_ALPHA / _zeta(FWE_ALPHA)

    def counts(n):
        return np.floor(n * weights).astype(np.int64)

    lo, hi = 0, max(1, budget)  # every word is >= 1 token, so n <= budget
    while lo < hi:  # largest n whose text fits
        mid = (lo + hi + 1) // 2
        if int(counts(mid) @ wl) <= budget:
            lo = mid
        else:
            hi = mid - 1
    # Absorb the last tokens with extra occurrences of '...' (RULER's top-ranked noise), of the
    # three answers (they stay the top three), or of words ranked 5th or lower (never reaching
    # the count of the 3rd answer); if no such mix adds up, try a slightly smaller text.
    for n_words in range(lo, max(lo - 64, 0), -1):
        c = counts(n_words)
        if c[3] <= c[4:].max(initial=0):
            raise _TooShort(f"seq_len is too short for task {task!r}: with {n_words} coded words the third "
                            "most frequent word is not more frequent than the fourth")
        coins = [(i, int(wl[i]), 10 ** 9) for i in range(4)]
        coins += [(i, int(wl[i]), int(c[3] - 1 - c[i])) for i in range(4, vocab_size) if c[3] - 1 - c[i] > 0]
        extra = _coin_fill(budget - int(c @ wl), coins)
        if extra is not None:
            break
    else:
        raise _TooShort(f"could not fill exactly {budget} tokens for task {task!r}")
    for i in extra:
        c[i] += 1
    items = np.repeat(np.arange(vocab_size), c)
    items = items[rng.permutation(len(items))]
    p = _Prompt()
    p.add(prefix_ids)
    p.add(np.concatenate([word_ids[i] for i in items]))
    p.add(suffix_ids)
    return p.ids(), answers, target, target_ids, []


def _coin_fill(amount: int, coins: list[tuple[int, int, int]]) -> list[int] | None:
    """Coin ids (id, value, cap) summing to ``amount``, fewest coins, respecting caps (small amounts)."""
    best: dict[int, list[int]] = {0: []}
    frontier = [0]
    while frontier and amount not in best:
        nxt = []
        for s in frontier:
            used = best[s]
            for cid, value, cap in coins:
                t = s + value
                if t <= amount and t not in best and used.count(cid) < cap:
                    best[t] = used + [cid]
                    nxt.append(t)
        frontier = nxt
    return best.get(amount)


# --------------------------------------------------------------------------------------------------
# QA
# --------------------------------------------------------------------------------------------------

_QA_INSTRUCTION = ("Answer the question based on the given documents. "
                   "Only give me the answer and do not output any other words.")
_QA_HUB = {"squad": ("rajpurkar/squad", None), "hotpotqa": ("hotpotqa/hotpot_qa", "distractor")}


def normalize_qa_records(records) -> list[dict]:
    """QA records as dicts ``question, answers (list), contexts (gold documents), distractors``.

    Accepts records already in that form, SQuAD rows (``context`` str, ``question``,
    ``answers`` {"text": [...]} or list; paragraphs of the same ``title`` become the
    first distractors, as RULER's ``more_context``), and HotpotQA rows (Hugging Face form
    ``context`` {"title", "sentences"} or the original [[title, sentences], ...];
    documents are "title\\ntext" as in RULER; paragraphs named in ``supporting_facts``
    are the gold documents, the others the first distractors).
    """
    if isinstance(records, (str, bytes)) or not hasattr(records, "__iter__"):
        raise ValueError("QA records must be a list of dicts")
    rows = list(records)
    by_title: dict[str, list[str]] = {}
    for r in rows:
        if isinstance(r, dict) and isinstance(r.get("context"), str) and r.get("title") is not None:
            by_title.setdefault(r["title"], [])
            if r["context"].strip() not in by_title[r["title"]]:
                by_title[r["title"]].append(r["context"].strip())
    out = []
    for r in rows:
        if not isinstance(r, dict) or "question" not in r:
            raise ValueError(f"QA record needs a 'question': {str(r)[:120]}")
        question = str(r["question"]).strip()
        if "contexts" in r:
            gold = [str(d).strip() for d in r["contexts"]]
            distract = [str(d).strip() for d in r.get("distractors", [])]
            answers = r["answers"]
        elif isinstance(r.get("context"), str):
            gold = [r["context"].strip()]
            distract = [d for d in by_title.get(r.get("title"), []) if d != gold[0]]
            answers = r["answers"]
        elif "context" in r:
            ctx = r["context"]
            if isinstance(ctx, dict):
                paras = [(t, "".join(s)) for t, s in zip(ctx["title"], ctx["sentences"])]
            else:
                paras = [(t, "".join(s)) for t, s in ctx]
            sf = r.get("supporting_facts")
            titles = set(sf["title"] if isinstance(sf, dict) else [x[0] for x in sf]) if sf else {t for t, _ in paras}
            docs = [(t, f"{t}\n{text}".strip()) for t, text in paras]
            gold = [d for t, d in docs if t in titles]
            distract = [d for t, d in docs if t not in titles]
            answers = r.get("answers", r.get("answer"))
        else:
            raise ValueError(f"QA record has no 'contexts' or 'context': {str(r)[:120]}")
        if isinstance(answers, dict):
            answers = answers.get("text", [])
        if isinstance(answers, str):
            answers = [answers]
        answers = list(dict.fromkeys(str(a).strip() for a in answers if str(a).strip()))
        gold = [d for d in gold if d]
        if not answers or not gold or not question:
            continue  # unanswerable / empty rows (RULER skips SQuAD's impossible questions)
        out.append({"question": question, "answers": answers, "contexts": gold,
                    "distractors": [d for d in distract if d and d not in gold]})
    if not out:
        raise ValueError("no usable QA records (each needs a question, answers and a context)")
    return out


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached at all (a TCP connection within ``timeout`` seconds), unless
    ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` already say it cannot."""
    import os
    import socket

    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _datasets_offline(datasets):
    """``datasets`` in offline mode (cached copies only) for the duration, whatever its version calls the switch."""
    cfg = datasets.config
    names = [n for n in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(cfg, n)]
    old = {n: getattr(cfg, n) for n in names}
    try:
        for n in names:
            setattr(cfg, n, True)
        yield
    finally:
        for n, v in old.items():
            setattr(cfg, n, v)


def load_qa_source(name: str, split: str = "validation", *, max_records: int | None = None,
                   data_files=None) -> list[dict]:
    """SQuAD ("squad" / "qa_1") or HotpotQA ("hotpotqa" / "qa_2", distractor setting) records,
    normalized by ``normalize_qa_records``.

    Uses ``datasets.load_dataset`` on the hub names rajpurkar/squad and hotpotqa/hotpot_qa, or
    on local json/parquet ``data_files`` in the same schema. Without a reachable hub (and no
    ``data_files``) it raises ``QAUnavailable``.
    """
    dataset = QA_DATASETS.get(name, name)
    if dataset not in _QA_HUB:
        raise ValueError(f"unknown QA source {name!r}; expected 'squad', 'hotpotqa', 'qa_1' or 'qa_2'")
    try:
        import datasets
    except ImportError as e:  # a machine without the `datasets` package cannot load QA data either
        raise QAUnavailable(f"{dataset}: the `datasets` package is not installed ({e})") from e

    if data_files is not None:
        files = [str(f) for f in (data_files if isinstance(data_files, (list, tuple)) else [data_files])]
        fmt = "parquet" if files[0].endswith(".parquet") else "json"
        ds = datasets.load_dataset(fmt, data_files=files, split="train")
    else:
        hub_name, config = _QA_HUB[dataset]
        try:
            if _hub_reachable():
                ds = datasets.load_dataset(hub_name, config, split=split)
            else:  # no route to the hub: only a cached copy can serve, and datasets would retry for ~25 s first
                with _datasets_offline(datasets):
                    ds = datasets.load_dataset(hub_name, config, split=split)
        except Exception as e:  # no hub, no cache: every failure here means "not available"
            raise QAUnavailable(
                f"{dataset} ({hub_name}) is unavailable offline: the Hugging Face hub could not be reached "
                f"and no cached copy exists ({type(e).__name__}: {str(e)[:200]}). Pass qa_source=<records> "
                "or data_files= with a local copy."
            ) from e
    rows = []
    for row in ds:
        rows.append(row)
        if max_records is not None and len(rows) >= max_records:
            break
    return normalize_qa_records(rows)


class _QAPool:
    """Normalized records and every distinct document, tokenized once (header-less bodies)."""

    def __init__(self, tok: _Tok, records: list[dict]):
        self.records = records
        docs: dict[str, int] = {}
        for r in records:
            for d in r["contexts"] + r["distractors"]:
                docs.setdefault(d, len(docs))
        self.docs = list(docs)
        self.index = docs
        self.bodies = tok.encode_many(["\n" + d for d in self.docs])


_QA_CACHE: dict[tuple, tuple[_Tok, object, _QAPool]] = {}


def _qa_pool(tok: _Tok, source) -> _QAPool:
    """The records of ``source`` normalized and tokenized, once per (tokenizer, source object)."""
    key = (id(tok), id(source), len(source))
    hit = _QA_CACHE.get(key)
    if hit is not None and hit[0] is tok and hit[1] is source:
        return hit[2]
    if len(_QA_CACHE) >= 4:
        _QA_CACHE.pop(next(iter(_QA_CACHE)))
    pool = _QAPool(tok, normalize_qa_records(source))
    _QA_CACHE[key] = (tok, source, pool)
    return pool


def _excerpt(body: np.ndarray, keep: int, starts_ws, ends_nonws) -> int | None:
    """Start of a ``keep``-token slice of a document body that can stand alone: its beginning
    (with the body's leading newline) if the cut after ``keep`` tokens is valid, else the first
    window that starts and ends on valid cuts (None if there is none)."""
    n = len(body)
    if keep < 2 or keep >= n:
        return None
    if starts_ws[body[keep]] and ends_nonws[body[keep - 1]]:
        return 0
    cut = np.zeros(n + 1, dtype=bool)
    cut[1:n] = starts_ws[body[1:]] & ends_nonws[body[:-1]]
    cut[n] = ends_nonws[body[-1]]
    ok = np.flatnonzero(cut[1:n - keep + 1] & cut[1 + keep:]) + 1
    return int(ok[0]) if len(ok) else None


def _qa(task, ctx, rng, prompt_len, record_order=None):
    tok = ctx.tok
    pool = ctx.qa(task)
    n_rec = len(pool.records)
    order = record_order if record_order is not None else rng.permutation(n_rec)
    errors = []
    for r_idx in list(order)[:64]:
        rec = pool.records[int(r_idx)]
        try:
            return _qa_one(task, tok, pool, rec, rng, prompt_len)
        except _TooShort as e:
            errors.append(str(e))
    raise _TooShort(errors[0] if errors else f"no QA record fits for task {task!r}")


def _qa_one(task, tok, pool: _QAPool, rec, rng, prompt_len):
    answers = rec["answers"]
    target = " " + answers[0]
    target_ids = tok.encode(target)
    L = prompt_len(len(target_ids))
    prefix_ids = tok.encode(_QA_INSTRUCTION + "\n\nThe following are given documents.")
    suffix_ids = tok.encode(f"\n\n{_QA_INSTRUCTION}\n\nQuestion: {rec['question']} Answer:")
    budget = L - len(prefix_ids) - len(suffix_ids)

    def header(i):
        return tok.encode(f"\n\nDocument {i}:")

    gold = [pool.index[d] for d in rec["contexts"]]
    related = [pool.index[d] for d in rec["distractors"]]
    related = [related[i] for i in rng.permutation(len(related))]
    taken = set(gold) | set(related)
    others = (i for i in rng.permutation(len(pool.docs)) if int(i) not in taken)
    candidates = related + [int(i) for i in others]  # related paragraphs first, as RULER
    n = len(gold)
    total = sum(len(header(i + 1)) for i in range(n)) + sum(len(pool.bodies[g]) for g in gold)
    _need(budget - total, 0, task, f"the instruction, question and gold document(s) ({total} tokens)")
    chosen: list[int] = []
    ci = 0
    while ci < len(candidates):  # whole distractors while they fit
        d = candidates[ci]
        c = len(header(n + 1)) + len(pool.bodies[d])
        if total + c > budget:
            break
        chosen.append(d)
        total += c
        n += 1
        ci += 1
    rest = candidates[ci:ci + 500]
    cut = None  # (doc, first body token kept, number of body tokens kept)
    starts_ws, ends_nonws, _, _ = tok.flags
    for _ in range(16):  # one more distractor, cut to the tokens left
        r = budget - total
        if r == 0:
            break
        keep = r - len(header(n + 1))
        for d in rest:
            start = _excerpt(pool.bodies[d], keep, starts_ws, ends_nonws) if keep < len(pool.bodies[d]) else None
            if start is not None:
                cut = (d, start, keep)
                break
        if cut is not None or not chosen:
            break
        # Too few tokens left for a header and a few words, or no cut fits: give back the
        # shortest whole distractor (a longer one can then be cut to its length plus the rest).
        j = min(range(len(chosen)), key=lambda k: len(pool.bodies[chosen[k]]))
        d = chosen.pop(j)
        total -= len(header(n)) + len(pool.bodies[d])
        n -= 1
        rest.append(d)
    if budget - total != 0 and cut is None:
        raise _TooShort(f"could not fill exactly {budget} tokens with documents for task {task!r} "
                        f"(only {len(pool.docs)} documents; pass more QA records)")
    docs = [(g, None, True) for g in gold] + [(d, None, False) for d in chosen]
    if cut is not None:
        docs.append((cut[0], cut[1:], False))
    docs = [docs[i] for i in rng.permutation(len(docs))]
    p = _Prompt()
    p.add(prefix_ids)
    for i, (d, part, is_gold) in enumerate(docs, start=1):
        p.add(header(i), ("gold", d) if is_gold else None)
        p.add(pool.bodies[d] if part is None else pool.bodies[d][part[0]:part[0] + part[1]])
    p.add(suffix_ids)
    return p.ids(), list(answers), target, target_ids, [p.marks[("gold", g)] for g in gold]


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

_BUILDERS = {**{t: _niah for t in _NIAH}, "vt": _vt, "cwe": _cwe, "fwe": _fwe, "qa_1": _qa, "qa_2": _qa}


class _Context:
    """What one call shares across its samples: tokenizer, haystack, words, QA data."""

    def __init__(self, tokenizer, seq_len, haystack, qa_source, words):
        self.tok = _tok(tokenizer)
        self.seq_len = seq_len
        self.docs = _clean_docs(haystack, "haystack") if haystack is not None else None
        self.adjective_noun = words is None
        self.words = _clean_words(words)
        self.qa_source = qa_source
        self._qa: dict[str, _QAPool] = {}

    def essay(self, budget: int) -> _Stream:
        docs = self.docs if self.docs is not None else fallback_essays()
        return _essay_stream(self.tok, docs, budget + 1)

    def qa(self, task: str) -> _QAPool:
        if task not in self._qa:
            src = self.qa_source
            if isinstance(src, dict) and not ("question" in src):
                src = src.get(task, src.get(QA_DATASETS[task]))
            if src is None:
                src = load_qa_source(QA_DATASETS[task])  # raises QAUnavailable offline
            self._qa[task] = _qa_pool(self.tok, src)
        return self._qa[task]


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_task(task):
    if task not in _TASK_ID:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def _build(task, ctx: _Context, rng, prompt_len, **kw):
    try:
        return _BUILDERS[task](task, ctx, rng, prompt_len, **kw)
    except _TooShort as e:
        raise ValueError(f"{e} (seq_len={ctx.seq_len})") from None


def _verify(tok: _Tok, ids: np.ndarray, text: str, task: str):
    again = tok.encode(text)
    if len(again) != len(ids) or not np.array_equal(again, ids):
        raise RuntimeError(
            f"task {task!r}: the decoded prompt re-tokenizes to {len(again)} tokens, not the {len(ids)} it was "
            "built from. This tokenizer does not tokenize a concatenation of whitespace-led pieces piece by "
            "piece (lib.data.ruler needs a byte-level BPE with the GPT-2 pre-tokenizer, like SmolLM2's)."
        )


def generate(task: str, tokenizer, seq_len: int, n: int, *, seed: int, haystack=None, qa_source=None,
             words=None, verify: bool | None = None) -> list[dict]:
    """``n`` samples of ``task`` whose prompts have exactly ``seq_len - MAX_NEW_TOKENS[task]`` tokens.

    Each sample: ``task, seq_len, index, input`` (the prompt text, decoded from ``input_ids``),
    ``input_ids``, ``answers`` (what ``score`` looks for), ``target`` (the reference
    continuation, e.g. " 1234567"), ``target_ids``, ``answer_pos`` (token offsets where the
    answer-bearing needles / variable assignments / gold documents start; empty for CWE/FWE)
    and ``max_new_tokens``.

    ``haystack``: long English documents for the essay tasks (built-in generated text when
    None). ``qa_source``: QA records for qa_1/qa_2 (a list, or a dict task -> list); when None
    they are loaded with ``load_qa_source`` (``QAUnavailable`` without the hub). ``words``: the
    word list for keys and CWE (built-in when None). Sample ``i`` depends only on
    ``(task, seq_len, seed, i)`` and the data passed, so a smaller ``n`` gives a prefix.
    QA samples take the records in a seeded order (cycled when ``n`` exceeds them; a record
    whose gold documents do not fit is skipped for the next). ``verify``: re-tokenize the
    decoded prompt and check it gives ``input_ids`` back (None: the first sample only; True: all).

    Cost: the haystack is tokenized once per process and tokenizer (SmolLM2's tokenizer, 2
    cores: ~4 s for 1.8M characters of Shakespeare, ~15 s for all 6.7M); then ~10 ms a sample
    at 8K tokens (~50 ms for the needle haystacks of niah_multikey_2/3, tokenized per sample).
    """
    _check_task(task)
    seq_len = _check_int("seq_len", seq_len, 1)
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    ctx = _Context(tokenizer, seq_len, haystack, qa_source, words)
    prompt_len = seq_len - MAX_NEW_TOKENS[task]
    if prompt_len < 16:
        raise ValueError(f"seq_len={seq_len} is too short for task {task!r} "
                         f"(MAX_NEW_TOKENS[{task!r}] = {MAX_NEW_TOKENS[task]})")
    kw = {}
    if task in QA_DATASETS:
        n_rec = len(ctx.qa(task).records)
        order = np.random.default_rng([0, seed, _TASK_ID[task], seq_len, 1 << 20]).permutation(n_rec)
    out = []
    for i in range(n):
        rng = np.random.default_rng([0, seed, _TASK_ID[task], seq_len, i])
        if task in QA_DATASETS:
            kw = {"record_order": np.roll(order, -(i % n_rec))}
        ids, answers, target, target_ids, answer_pos = _build(task, ctx, rng, lambda t: prompt_len, **kw)
        if len(ids) != prompt_len:  # cannot happen: every builder fills to the token
            raise RuntimeError(f"internal error: {task} prompt has {len(ids)} tokens, not {prompt_len}")
        text = ctx.tok.decode(ids)
        if verify or (verify is None and i == 0):
            _verify(ctx.tok, ids, text, task)
        out.append({
            "task": task, "seq_len": seq_len, "index": i, "input": text, "input_ids": ids.tolist(),
            "answers": list(answers), "target": target, "target_ids": target_ids.tolist(),
            "answer_pos": [int(x) for x in answer_pos], "max_new_tokens": MAX_NEW_TOKENS[task],
        })
    return out


def ruler_dataset(task: str, tokenizer, seq_len: int, n: int, *, seed: int, **kw):
    """``generate``'s samples as a ``datasets.Dataset`` (same columns, fixed feature types)."""
    import datasets

    features = datasets.Features({
        "task": datasets.Value("string"), "seq_len": datasets.Value("int32"), "index": datasets.Value("int32"),
        "input": datasets.Value("string"), "input_ids": datasets.Sequence(datasets.Value("int32")),
        "answers": datasets.Sequence(datasets.Value("string")), "target": datasets.Value("string"),
        "target_ids": datasets.Sequence(datasets.Value("int32")),
        "answer_pos": datasets.Sequence(datasets.Value("int32")), "max_new_tokens": datasets.Value("int32"),
    })
    return datasets.Dataset.from_list(generate(task, tokenizer, seq_len, n, seed=seed, **kw), features=features)


def training_batch(tasks, tokenizer, seq_len: int, batch_size: int, *, seed: int, step: int, haystack=None,
                   qa_source=None, words=None):
    """A fine-tuning batch: each row is one task's prompt followed by its reference answer,
    exactly ``seq_len`` tokens (the haystack is filled to fit; no padding).

    Returns ``(input_ids LongTensor [B, seq_len], loss_mask BoolTensor [B, seq_len])``;
    ``loss_mask[b, t]`` is True where token t belongs to the answer (predict it from t-1).
    Each row's task is drawn uniformly from ``tasks``; deterministic in ``(seed, step)``, and
    disjoint from ``generate``'s samples (a separate random stream), whatever the seed.
    """
    import torch

    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks is empty")
    for t in tasks:
        _check_task(t)
    seq_len = _check_int("seq_len", seq_len, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    step = _check_int("step", step, 0)
    ctx = _Context(tokenizer, seq_len, haystack, qa_source, words)
    ids = torch.empty((batch_size, seq_len), dtype=torch.long)
    mask = torch.zeros((batch_size, seq_len), dtype=torch.bool)
    for b in range(batch_size):
        rng = np.random.default_rng([1, seed, seq_len, step, b])
        task = tasks[int(rng.integers(len(tasks)))]
        prompt, _, _, target_ids, _ = _build(task, ctx, rng, lambda t: seq_len - t)
        row = np.concatenate([prompt, target_ids])
        if len(row) != seq_len:  # cannot happen: every builder fills to the token
            raise RuntimeError(f"internal error: {task} row has {len(row)} tokens, not {seq_len}")
        ids[b] = torch.from_numpy(row)
        mask[b, len(prompt):] = True
    return ids, mask


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------

def _postprocess(text: str) -> str:
    """RULER's prediction clean-up: drop control characters (keeps newlines and tabs)."""
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "\n", text).strip()


def score(prediction: str, answers: list[str], task: str) -> float:
    """RULER's metric for one prediction, in [0, 1].

    ``string_match_all`` (NIAH, VT, CWE, FWE): the fraction of ``answers`` that occur in the
    prediction, case-insensitive. ``string_match_part`` (QA): 1.0 if any answer occurs.
    Substring semantics as in RULER: "123" is found in "0123456".
    """
    _check_task(task)
    if not isinstance(prediction, str):
        raise ValueError(f"prediction must be a string, got {type(prediction).__name__}")
    if isinstance(answers, str) or not answers:
        raise ValueError("answers must be a non-empty list of strings")
    pred = _postprocess(prediction).lower()
    hits = [1.0 if str(a).lower() in pred else 0.0 for a in answers]
    if task in QA_DATASETS:
        return max(hits)
    return sum(hits) / len(hits)


def category_scores(per_task: dict[str, float]) -> dict[str, float]:
    """Mean score per RULER category (over the tasks present) and "Avg." over all tasks present."""
    if not per_task:
        raise ValueError("per_task is empty")
    for t in per_task:
        _check_task(t)
    out = {}
    for cat, members in CATEGORIES.items():
        vals = [float(per_task[t]) for t in members if t in per_task]
        if vals:
            out[cat] = sum(vals) / len(vals)
    out["Avg."] = sum(float(v) for v in per_task.values()) / len(per_task)
    return out


__all__ = [
    "ADJECTIVES", "CATEGORIES", "DEPTHS", "MAX_NEW_TOKENS", "NOISE", "NOUNS", "QAUnavailable",
    "RULER_MAX_NEW_TOKENS", "TASKS", "VERBS", "category_scores", "default_words", "fallback_essays",
    "generate", "load_qa_source", "normalize_qa_records", "ruler_dataset", "score", "training_batch",
]
