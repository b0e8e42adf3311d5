"""The case report as a PDF (fpdf2): the same content as the HTML report (``bmcore.report.build_report``), laid out
for filing. Every page carries the research-use statement and, until the case is signed off, "PRELIMINARY - not
signed off"."""

from __future__ import annotations

import io
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace

from . import RUO_STATEMENT
from .casetext import signature_text
from .schema import VIA_GALLERY
from .text import clean
from .report import PRELIMINARY, CaseReport, build_report, cell_caption, classes_text, model_text

# a Unicode font where the system has one (names such as "Dr Ødegård", "≥"); else the PDF core font, whose text is
# limited to Latin-1 (other characters are written as "?")
_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu")
_RED = (176, 0, 0)


def _unicode_font() -> dict[str, Path] | None:
    for d in _FONT_DIRS:
        reg, bold = Path(d) / "DejaVuSans.ttf", Path(d) / "DejaVuSans-Bold.ttf"
        if reg.is_file() and bold.is_file():
            return {"": reg, "B": bold}
    return None


class _PDF(FPDF):
    """A4, a Unicode font where there is one, and text cleaned of control characters (``t``)."""

    def __init__(self):
        super().__init__(format="A4")
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(True, margin=18)
        font = _unicode_font()
        if font:
            for style, path in font.items():
                self.add_font("report", style, str(path))
            self.family, self.unicode = "report", True
        else:
            self.family, self.unicode = "helvetica", False
        self.set_creator("bmcore")

    def t(self, s) -> str:
        s = "\n".join(clean(line) for line in str(s).split("\n"))  # no control or bidi characters; lines kept
        if self.unicode:
            return s
        s = s.replace("≥", ">=").replace("≤", "<=").replace("…", "...").replace("–", "-").replace("—", "-") \
             .replace("×", "x").replace("·", "-")
        return s.encode("latin-1", "replace").decode("latin-1")


class _ReportPDF(_PDF):
    def __init__(self, r: CaseReport):
        super().__init__()
        self.r = r
        self.set_title(f"Case {r.case.case_code}")

    def header(self):
        self.set_font(self.family, "B", 8)
        self.set_text_color(*_RED)
        self.cell(0, 4, self.t(RUO_STATEMENT), new_x="LMARGIN", new_y="NEXT")
        if not self.r.signed:
            self.set_font(self.family, "B", 11)
            self.set_fill_color(*_RED)
            self.set_text_color(255, 255, 255)
            self.cell(0, 7, self.t(PRELIMINARY), fill=True, align="C", new_x="LMARGIN", new_y="NEXT")
        if self.r.demo_text:
            self.set_font(self.family, "B", 8)
            self.set_fill_color(*_RED)
            self.set_text_color(255, 255, 255)
            self.multi_cell(0, 4, self.t(self.r.demo_text), fill=True, align="C", new_x="LMARGIN", new_y="NEXT")
        self.set_text_color(0, 0, 0)
        self.set_font(self.family, "", 8)
        self.cell(0, 5, self.t(f"Bone marrow differential - case {self.r.case.case_code}"), align="R",
                  new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def footer(self):
        self.set_y(-13)
        self.set_font(self.family, "", 7)
        self.set_text_color(*_RED)
        self.cell(0, 4, self.t(RUO_STATEMENT), align="L")
        self.set_text_color(0, 0, 0)
        self.cell(0, 4, self.t(f"Case {self.r.case.case_code} - page {self.page_no()} of {{nb}}"), align="R")

    # -- building blocks -----------------------------------------------------------------------------------
    def h1(self, text):
        self.set_font(self.family, "B", 15)
        self.multi_cell(0, 7, self.t(text), align="L", new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def h2(self, text, need: float = 20):
        """A section heading; starts a new page when less than ``need`` mm (heading + what must follow it) is left."""
        if self.will_page_break(need):
            self.add_page()
        self.ln(2)
        self.set_font(self.family, "B", 11.5)
        self.cell(0, 6, self.t(text), new_x="LMARGIN", new_y="NEXT")
        self.set_draw_color(150, 150, 150)
        self.line(self.l_margin, self.get_y(), self.w - self.r_margin, self.get_y())
        self.ln(1.5)

    def para(self, text, size=9, style=""):
        self.set_font(self.family, style, size)
        self.multi_cell(0, 4.4, self.t(text), align="L", new_x="LMARGIN", new_y="NEXT")
        self.ln(0.8)

    def grid(self, header: list[str], rows: list[list], widths: tuple | None = None, size=8.5):
        self.set_font(self.family, "", size)
        with self.table(col_widths=widths, text_align="LEFT", line_height=4.6, padding=0.8,
                        headings_style=FontFace(emphasis="BOLD", fill_color=(230, 230, 230))) as tb:
            row = tb.row()
            for h in header:
                row.cell(self.t(h))
            for r in rows:
                row = tb.row()
                for v in r:
                    row.cell(self.t(v))
        self.ln(1)

    def thumbs(self, items: list[tuple[object, str]], size=24.0):
        """A grid of thumbnails with their captions."""
        per_row = int((self.w - self.l_margin - self.r_margin) // (size + 4))
        for i in range(0, len(items), per_row):
            chunk = items[i:i + per_row]
            if self.will_page_break(size + 16):
                self.add_page()
            y = self.get_y()
            for j, (c, why) in enumerate(chunk):
                x = self.l_margin + j * (size + 4)
                if c.thumbnail:
                    try:
                        self.image(io.BytesIO(c.thumbnail), x=x, y=y, w=size, h=size, keep_aspect_ratio=True)
                    except Exception:  # a thumbnail that cannot be decoded is named, not drawn
                        self.set_xy(x, y + size / 2)
                        self.set_font(self.family, "", 6)
                        self.cell(size, 3, "(no image)")
                self.set_xy(x, y + size + 0.5)
                self.set_font(self.family, "", 6)
                self.multi_cell(size + 2, 2.6, self.t(f"{cell_caption(c)}\n{why}"),
                                max_line_height=2.6, align="L", new_x="RIGHT", new_y="TOP")
            self.set_xy(self.l_margin, y + size + 13)


def render_pdf_report(case, model_meta: dict | None = None, audit: list[dict] | None = None,
                      users: list[dict] | None = None, *, max_thumbs: int = 60) -> bytes:
    """The case report as PDF bytes."""
    r = build_report(case, model_meta, audit, users)
    d = r.d
    pdf = _ReportPDF(r)
    pdf.add_page()
    pdf.h1(f"Bone marrow differential: case {case.case_code}")
    pdf.para(f"Created {case.created_at:%Y-%m-%d %H:%M} UTC by {r.creator}. Status: {r.status_line}.", style="B")
    pdf.para("Reviewers: " + (", ".join(r.reviewers) or "none yet"))

    pdf.h2("Specimen")
    pdf.grid(["Field", "Value"], [[k, v or "not entered"] for k, v in r.specimen], (45, 135))

    pdf.h2("Model")
    pdf.para(model_text(r), size=8.5)
    pdf.para(classes_text(case), size=8.5)

    pdf.h2("Differential")
    pdf.para(f"{d.denominator} cells counted. Progress: {r.progress_text}.")
    if d.denominator:
        pdf.grid(["Code", "Cell type", "Count", "% of counted cells"],
                 [[t["class"], t["name"], t["count"], t["percent_text"]] for t in d.table()], (20, 70, 25, 65))
    if r.pending_text:
        pdf.para(r.pending_text + ".", style="B")
    else:
        pdf.para("No cells count towards the differential yet.")
    pdf.para("Left out of the denominator: " + (", ".join(f"{k}: {v}" for k, v in d.excluded.items()) or "none")
             + ". Artefacts, smudge and not-identifiable cells are not part of a differential; cells awaiting review "
               "count once a reviewer resolves them; images the gate would not judge count only once a reviewer gives "
               "them a class.", size=8.5)
    pdf.para(f"M:E ratio: {r.me_text}. Myeloid: promyelocytes to segmented neutrophils, eosinophils, basophils; "
             "erythroid: proerythroblasts and erythroblasts; blasts and monocytes are in neither.", size=8.5)
    pdf.para(f"Blasts: {r.blast_text}.", size=8.5)
    pdf.para(f"Hairy cells: {r.hairy.text}", size=8.5)
    for n in r.notes:
        pdf.para(n, size=8.5)

    pdf.h2(f"Flagged and critical cells ({len(r.flagged)})", need=60 if r.flagged else 20)  # with a row of thumbnails
    if r.flagged:
        pdf.thumbs(r.flagged[:max_thumbs])
        if len(r.flagged) > max_thumbs:
            pdf.para(f"... and {len(r.flagged) - max_thumbs} more; the cell table lists every cell.")
    else:
        pdf.para("None.")
    pdf.h2(f"Not judged by the gate ({len(r.rejected)})")
    pdf.para(r.rejected_text + " The model would not judge these images: they look unlike its training crops. Each "
             "counts only once a reviewer gives it a class"
             + (": " + "; ".join(f"{cell_caption(c)} ({c.name})" for c in r.rejected) if r.rejected else "."),
             size=8.5)

    pdf.h2("Sign-off")
    if r.signed:
        pdf.para(r.status_line, style="B")
        pdf.para("Signature: " + signature_text(case.signature), size=8.5)
    else:
        pdf.para("Not signed off. This report is preliminary: counts may change while cells are reviewed.",
                 style="B")
        pdf.para("Signed off by: ______________________________   Date: ______________", size=9)

    pdf.h2("Who did what")
    pdf.grid(["Who", "Confirmed one by one", "Relabelled one by one", "Confirmed in gallery", "Moved in gallery",
              "Gallery actions", "Undone", "Other"],
             [[p["who"], p["confirmed one by one"], p["relabelled one by one"], p["confirmed in gallery"],
               p["moved in gallery"], p["gallery actions"], p["undone"], p["other"]] for p in r.people],
             (34, 20, 20, 20, 20, 18, 14, 34), size=7.5)
    pdf.para("One by one: a reviewer opened the cell and confirmed or relabelled it. Gallery: a reviewer confirmed or "
             "moved the cells of a gallery page in one action (each cell was shown on that page). The full trail "
             "is in the appendix.", size=7.5)

    pdf.add_page()
    pdf.h2(f"Appendix: audit trail ({len(r.audit)} events)")
    pdf.grid(["When (UTC)", "Who", "Action", "Cell", "From", "To", "Note"],
             [[f"{a['at']:%Y-%m-%d %H:%M:%S}", a["who"],
               a["action"] + (" (gallery)" if a.get("via") == VIA_GALLERY else ""), a["cell"], a["from"], a["to"],
               a["note"][:300]] for a in r.audit],
             (28, 24, 22, 32, 14, 14, 46), size=6.5)
    return bytes(pdf.output())


def render_certificate(result: dict, quiz: dict) -> bytes:
    """A certificate of a completed quiz (``bmcore.quiz.QuizMixin.quiz_result``): who, which quiz, when, the strict
    and tolerant scores, Cohen's kappa and the sensitivity per class, with the research-use statement."""
    from .quiz import adjacent_text
    from .tasks import cell_name

    g = result["grade"]
    pdf = _PDF()
    pdf.set_title(f"Quiz certificate - {result['title']}")
    pdf.add_page()
    pdf.set_font(pdf.family, "B", 8)
    pdf.set_text_color(*_RED)
    pdf.multi_cell(0, 4, pdf.t(RUO_STATEMENT), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(8)
    pdf.set_font(pdf.family, "B", 18)
    pdf.cell(0, 10, pdf.t("Certificate of a completed morphology quiz"), align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font(pdf.family, "", 11)
    kappa = "not defined for these cells" if g["kappa"] is None else f"{g['kappa']:.2f}"
    lines = [f"{result['name']} ({result['username']})",
             f"completed the quiz \"{result['title']}\"",
             f"submitted {result['submitted_at']:%Y-%m-%d %H:%M} UTC",
             "",
             f"{g['n']} cells, {g['answered']} answered",
             f"Strict score (the signed label exactly): {g['strict']} of {g['n']} ({g['strict_score']:.0%})",
             f"Tolerant score (a neighbouring maturation stage accepted): {g['tolerant']} of {g['n']} "
             f"({g['tolerant_score']:.0%})",
             f"Cohen's kappa against the signed labels: {kappa}"]
    for line in lines:
        pdf.cell(0, 7, pdf.t(line), align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font(pdf.family, "B", 10)
    pdf.cell(0, 6, pdf.t("Sensitivity per class (the cells of each signed class answered as that class)"),
             new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(pdf.family, "", 9)
    with pdf.table(col_widths=(60, 20, 30, 30), text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT")) as table:
        row = table.row()
        for h in ("Class", "Cells", "Strict", "Tolerant"):
            row.cell(pdf.t(h))
        for c in g["per_class"]:
            row = table.row()
            for v in (f"{c['class']} {cell_name(c['class'])}", str(c["cells"]), f"{c['sensitivity']:.0%}",
                      f"{c['tolerant_sensitivity']:.0%}"):
                row.cell(pdf.t(v))
    pdf.ln(4)
    pdf.set_font(pdf.family, "", 8)
    pdf.multi_cell(0, 4, pdf.t(
        "The cells are from signed-off cases of this laboratory; the key is the label the signing pathologist "
        f"signed. Quiz made by {quiz.get('created_by', '?')} on {quiz['created_at']:%Y-%m-%d}. Neighbouring stages "
        f"accepted by the tolerant score: {adjacent_text()}. " + RUO_STATEMENT), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
