"""Hostile text reaches no page, report or spreadsheet as markup.

A corpus of user-typed and uploaded strings (Markdown images and links, HTML, emphasis, bare URLs, Streamlit
directives, formula prefixes, control and bidirectional-override characters, 1,000-character names) is put where
users put text: the case id, file names (direct and in a ZIP), specimen details, a reviewer's note, a reopening
reason, display names. Every page is drawn (AppTest) and every string it hands Streamlit's Markdown renderer
(messages, captions, headings, labels, help, image captions) is rendered with markdown-it (GFM-like, with bare-URL
autolinks, as Streamlit renders): none makes a link, an image or markup. The CSV, HTML, PDF and FHIR exports carry the
text as text. One browser pass checks the DOM and that the browser asked the hostile host for nothing.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re

import pytest
from markdown_it import MarkdownIt

from bmcore.cases import CaseError, CaseStore, CellInput
from bmcore.text import clean, md, spreadsheet_cell
from tests.conftest import TEST_PASSWORD, as_read

HOST = "evil.example"
CORPUS = {
    "image": f"![](http://{HOST}/x.png)",
    "link": f"[click me](http://{HOST}/)",
    "html": f"<img src=http://{HOST}/y.png onerror=alert(1)>",
    "markup": "**bold** _it_ `code` ~~gone~~",
    "autolink": f"see http://{HOST}/raw or www.{HOST} or mail@{HOST}",
    "directive": ":red[red] :material/home: $x^2$",
    "formula": f'=HYPERLINK("http://{HOST}","x")',
}
CONTROL = "bell\x07tab\tnul\x00rlo\u202egpj.exe\u2066iso\u2069zw\u200bj"
CASE_ID = "=" + CORPUS["image"]  # a formula prefix and a Markdown image: the CSV's first column, every heading
PAGES = ["views/home.py", "views/classify.py", "views/hairy_cells.py", "views/differential.py", "views/review.py",
         "views/export.py", "views/model_comparison.py", "views/model_card.py", "views/users.py"]
RENDER = MarkdownIt("gfm-like", {"linkify": True}).enable("linkify")
HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
MARKUP = re.compile(r"<(a|img|strong|em|code|s|del|h\d|span|script)\b", re.I)


def _thumb() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (150, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _hostile_case(store: CaseStore) -> int:
    from tests.test_app import PASSWORDS

    store.add_user("ada", "admin", PASSWORDS["admin"], display_name=CORPUS["link"])
    store.add_user("tess", "technologist", TEST_PASSWORD, display_name=CORPUS["markup"])
    store.add_user("pat", "pathologist", TEST_PASSWORD, display_name=CORPUS["autolink"][:100])
    tess, pat = (store.authenticate(n, TEST_PASSWORD) for n in ("tess", "pat"))
    names = [CORPUS[k] + ".jpg" for k in CORPUS] + [CONTROL + ".jpg", "-1+1.jpg", "@cmd.jpg", "L" * 1000 + ".jpg"]
    cells = [CellInput(n, True, predicted="LYT", confidence=0.97, probabilities={"LYT": 0.97, "BLA": 0.03},
                       thumbnail=_thumb()) for n in names]
    cells.append(CellInput(CORPUS["image"] + ".png", True, predicted="LYT", confidence=0.5, thumbnail=_thumb(),
                           probabilities={"LYT": 0.5, "BLA": 0.5}, rejected=True, reject_reason="unlike"))
    cid = store.create_case(CASE_ID, cells, actor=tess, model_name="eight", model_classes=["LYT", "BLA"])
    store.set_case_details(cid, tess, specimen={"specimen_id": CORPUS["formula"], "site": CORPUS["image"],
                                                "stain": CORPUS["html"][:100]})
    case = store.get_case(cid)
    store.review_cell(case.cells[0].id, tess, "BLA", note=CORPUS["link"])
    store.review_cells(cid, tess, {c.id: c.version for c in store.get_case(cid).cells[1:-1]}, note=CORPUS["markup"])
    store.review_cell(case.cells[-1].id, pat, "DIS")
    store.sign_off(cid, pat, password=TEST_PASSWORD, under_target=True)
    store.reopen(cid, pat, CORPUS["link"] + " " + CORPUS["image"])
    return cid


def _markdown_strings(at) -> list[str]:
    """Every string of the drawn page that Streamlit renders as Markdown: element bodies (Markdown, captions,
    messages, headings), widget and expander labels, help texts, image captions."""
    out = []
    for node in at._tree:  # every block and element of the page, depth first
        proto = getattr(node, "proto", None)
        if proto is None:
            continue
        for holder in (proto, getattr(proto, "expandable", None)):
            for f in ("body", "label", "help", "caption"):
                v = getattr(holder, f, None) if holder is not None else None
                if isinstance(v, str) and v:
                    out.append(v)
        for img in getattr(proto, "imgs", None) or []:
            if img.caption:
                out.append(img.caption)
    return out


def _plain_strings(at) -> list[str]:
    """Option texts (selectboxes, dataframes are not Markdown, but must hold no control or bidi characters)."""
    return [o for s in at.selectbox for o in s.options]


@pytest.fixture
def hostile(env):
    store = CaseStore(env["db"])
    return store, _hostile_case(store)


def test_every_page_shows_hostile_text_as_text(env, hostile):
    from tests.test_app import app

    store, cid = hostile
    at = app(env, user=("ada", "admin"), case_id=cid)
    seen: dict[str, int] = {}
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        if page == "views/review.py":  # the gallery's Not-judged bin and the One cell view draw names too
            at.button_group(key=f"review_mode_{cid}").set_value("One cell").run()
            assert not at.exception, at.exception
        for src in _markdown_strings(at):
            rendered = RENDER.render(src)
            typed = [v for v in CORPUS.values() if v in as_read(src)]
            if typed:  # the text as typed is what the reader sees: no link, image or emphasis formed from it
                seen[page] = seen.get(page, 0) + 1
                assert not re.search(r"<(a|img)\b", rendered), (page, src, rendered)
                text = html.unescape(re.sub(r"<[^>]+>", "", rendered)).replace("\u2060", "")
                assert all(v in text for v in typed), (page, src, rendered)
            assert not re.search(rf"<(a|img)\b[^>]*{re.escape(HOST)}", rendered), (page, src)
            assert not HIDDEN.search(as_read(src)), (page, "hidden characters", src)
        for opt in _plain_strings(at):
            assert not HIDDEN.search(opt), (page, "hidden characters in an option", opt)
    # the pages that draw the case, its cells and its people drew the hostile strings (else this proves nothing)
    assert {p for p, n in seen.items() if n} >= {"views/classify.py", "views/hairy_cells.py", "views/differential.py",
                                                 "views/review.py", "views/export.py"}, seen
    # what a reader sees is the text typed, literally
    at.switch_page("views/review.py").run()
    assert f"Case {CASE_ID}: open" in [h.value for h in at.subheader]


def _page_shows_text_as_text(at, page: str) -> int:
    """Assert every Markdown string of the drawn page forms no link or image from the corpus and reads as typed;
    returns how many held corpus text."""
    n = 0
    for src in _markdown_strings(at):
        rendered = RENDER.render(src)
        typed = [v for v in CORPUS.values() if v in as_read(src)] or ([HOST] if HOST in as_read(src) else [])
        assert not re.search(rf"<(a|img)\b[^>]*{re.escape(HOST)}", rendered), (page, src)
        if typed:
            n += 1
            assert not re.search(r"<(a|img)\b", rendered), (page, src, rendered)
        assert not HIDDEN.search(as_read(src)), (page, "hidden characters", src)
    return n


def test_hostile_names_through_the_upload_and_a_zip(env, crops):
    """File names as the Classify page's uploader receives them (direct and inside a ZIP): stored cleaned, shown as
    text on the results page, the Review page and in the CSV."""
    import zipfile

    from bmcore.cellrows import rows_to_csv
    from bmcore.report import case_rows
    from tests.test_app import app, upload

    crop = crops["LYT"][0].read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("in/[zip](www.evil.example)\u202egpj.exe.jpg", crop)
        zf.writestr("@zipped.jpg", crop)
    extra = [("[up](www.evil.example).jpg", crop, "image/jpeg"), ("=cmd\u202e.jpg", crop, "image/jpeg"),
             ("batch.zip", buf.getvalue(), "application/zip")]
    at = upload(app(env, threshold=0.0), "UP-1", [crops["BLA"][0]], extra)
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    names = sorted(c.name for c in case.cells)
    assert names == sorted([crops["BLA"][0].name, "[up](www.evil.example).jpg", "=cmd_.jpg",
                            "batch.zip/in/[zip](www.evil.example)_gpj.exe.jpg", "batch.zip/@zipped.jpg"]), names
    shown = _page_shows_text_as_text(at, "classify")
    at.switch_page("views/review.py").run()
    at.button_group(key=f"review_mode_{case.id}").set_value("One cell").run()
    shown += _page_shows_text_as_text(at, "review")
    assert shown, "the pages drew the uploaded names"
    files = [r["file"] for r in csv.DictReader(io.StringIO(rows_to_csv(case_rows(case))))]
    assert "'=cmd_.jpg" in files and "batch.zip/@zipped.jpg" in files  # a formula prefix is neutralised, only there


def test_the_legend_chip_escapes_its_label():
    from bmcore.fielddraw import legend_chip

    chip = legend_chip("LYT", "<b>x</b>\u202e", ["LYT"])
    assert "&lt;b&gt;x&lt;/b&gt;" in chip and "<b>" not in chip and "\u202e" not in chip


def test_exports_carry_hostile_text_as_text(env, hostile, tmp_path):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from bmcore.fhirexport import fhir_json
    from bmcore.pdfreport import render_pdf_report
    from bmcore.cellrows import rows_to_csv
    from bmcore.report import case_rows, render_html_report
    from tests.test_reports import _need_poppler, _pdf_pages

    store, cid = hostile
    case = store.get_case(cid)
    audit, users = store.audit(cid), store.list_users()
    # CSV: no cell a spreadsheet would run (OWASP: a leading ' on = + - @ tab CR)
    rows = list(csv.reader(io.StringIO(rows_to_csv(case_rows(case)))))
    cells = [v for r in rows[1:] for v in r]
    assert rows[1][0] == "'" + CASE_ID
    assert not [v for v in cells if v.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert "'-1+1.jpg" in cells and "'@cmd.jpg" in cells
    assert spreadsheet_cell(-0.5) == -0.5 and spreadsheet_cell("plain") == "plain"  # numbers are left as numbers
    # HTML: every string escaped, no hidden characters
    page = render_html_report(case, {"name": "eight"}, audit, users=users)
    assert "<img src=http" not in page and f"<a href=\"http://{HOST}" not in page
    assert html.escape(CORPUS["html"][:100]) in page and "\u202e" not in page and "\x07" not in page
    # PDF, read back: the text as typed (less hidden characters)
    _need_poppler()
    text = " ".join("\n".join(_pdf_pages(render_pdf_report(case, {"name": "eight"}, audit, users), tmp_path)).split())
    assert CORPUS["formula"] in text and "\u202e" not in text
    # FHIR: valid, the accession number as typed, no hidden characters anywhere
    data = fhir_json(case, {"name": "eight"}, audit, users)
    DiagnosticReport.model_validate(json.loads(data))
    spec = next(r for r in json.loads(data)["contained"] if r["resourceType"] == "Specimen")
    assert spec["accessionIdentifier"]["value"] == CORPUS["formula"]


def test_hidden_characters_never_enter_a_case_id_or_a_zip_member_name(env, tmp_path):
    import zipfile

    from bmcore.inputs import from_upload
    from tests.conftest import actor

    store = CaseStore(env["db"])
    with pytest.raises(CaseError, match="direction-changing"):
        store.create_case("BM-\u202e1", [CellInput("a.jpg", True)], actor=actor(store))
    with pytest.raises(CaseError, match="direction-changing"):
        store.create_case("BM\t1", [CellInput("a.jpg", True)], actor=actor(store))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("dir/abc\u202egpj.exe.jpg", _thumb())
        zf.writestr("ctl\x07.jpg", _thumb())
    names = [it.name for it in from_upload("ev\u202eil.zip", buf.getvalue())]
    assert names == ["ev_il.zip/dir/abc_gpj.exe.jpg", "ev_il.zip/ctl_.jpg"]
    assert [it.name for it in from_upload("x\u202e.jpg", _thumb())] == ["x_.jpg"]


def test_md_leaves_no_markup_and_reads_back_as_typed():
    for s in [*CORPUS.values(), CONTROL, "a\\b", "plain text, (with) #5: it's fine."]:
        rendered = RENDER.render(md(s))
        assert not MARKUP.search(rendered), (s, rendered)
        assert as_read(md(s)) == clean(s)


def test_a_page_error_shows_an_id_and_no_traceback(env, monkeypatch, caplog):
    """With the users' setting (no BM_PAGE_ERRORS=raise): a page that fails says so with an error id; the browser gets
    no traceback, path or data; the server's log has the error under that id."""
    import logging

    import bmcore.report
    from tests.conftest import actor
    from tests.test_app import app

    store = CaseStore(env["db"])
    cid = store.create_case("ERR-1", [CellInput("a.jpg", True, predicted="LYT", confidence=0.9,
                                                probabilities={"LYT": 0.9})], actor=actor(store))
    monkeypatch.delenv("BM_PAGE_ERRORS")

    def boom(case):
        raise RuntimeError("a secret detail at /srv/lab/cases.db")

    monkeypatch.setattr(bmcore.report, "case_differential", boom)
    caplog.set_level(logging.ERROR, logger="bmcore.app")
    at = app(env, case_id=cid)
    at.switch_page("views/differential.py").run()
    assert not at.exception, at.exception
    said = " ".join(e.value for e in at.error)
    error_id = re.search(r"Error id \*\*(\w{8})\*\*", said)[1]
    page = " ".join(m.value for m in [*at.markdown, *at.error, *at.warning, *at.info, *at.caption])
    assert "secret detail" not in page and "Traceback" not in page and "/srv/lab" not in page
    assert f"page error {error_id}" in caplog.text and "a secret detail at /srv/lab/cases.db" in caplog.text
