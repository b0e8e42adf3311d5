"""A smear field drawn with its cells: numbered boxes coloured by class, a red-cell gauge at the finder's scale, and
the colour legend (the Classify page's field section). The finder itself is ``bmcore.fields``."""

from __future__ import annotations

import cv2
import numpy as np

from .fields import RBC_DIAMETER_UM, iou

# box colours by class (RGB), cycled over a task's classes in order; grey for a cell with no class (refused, cut)
BOX_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
               (240, 50, 230), (128, 128, 0), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128),
               (255, 225, 25), (170, 255, 195), (220, 190, 255), (255, 215, 180)]
NO_CLASS_COLOUR = (128, 128, 128)


def class_colour(code: str | None, classes: list[str]) -> tuple[int, int, int]:
    """The box colour of a class (``NO_CLASS_COLOUR`` for none or an unknown code)."""
    if not code or code not in classes:
        return NO_CLASS_COLOUR
    return BOX_COLOURS[classes.index(code) % len(BOX_COLOURS)]


def ink_on(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads on a ``colour`` background (its luma, ITU-R BT.601)."""
    return (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150 else (255, 255, 255)


def legend_chip(code: str | None, text: str, classes: list[str]) -> str:
    """One entry of a drawn field's colour legend as HTML (the page draws it with ``unsafe_allow_html``): the class's
    colour behind its text, the text HTML-escaped and cleaned (a stored label is a class code, never trusted)."""
    import html

    from .text import clean

    bg = class_colour(code, classes)
    ink = ink_on(bg)
    return (f"<span style='background:rgb{bg};color:rgb{ink};padding:0 6px;border-radius:3px'>"
            f"{html.escape(clean(text))}</span>")


def draw_field(image: bytes, width: int, height: int, boxes: list[tuple[int, tuple, tuple]],
               um_per_px: float | None = None) -> np.ndarray:
    """The stored field image (JPEG bytes of a field ``width`` x ``height`` px) as RGB with numbered boxes drawn:
    ``boxes`` are (number, (x0, y0, x1, y1) in the original field's px, RGB colour). With ``um_per_px`` (the scale
    the finder used), a red cell's size at that scale is drawn too (``red_cell_gauge``)."""
    bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("the stored field image cannot be decoded")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    f = rgb.shape[1] / max(1, width)
    thick = max(2, round(max(rgb.shape[:2]) / 400))
    if um_per_px:
        (cx, cy), r = red_cell_gauge(width, height, um_per_px, [b for _, b, _ in boxes])
        for colour, t in (((255, 255, 255), thick + 2), ((0, 0, 0), max(1, thick - 1))):  # reads on any background
            cv2.circle(rgb, (round(cx * f), round(cy * f)), max(1, round(r * f)), colour, t, cv2.LINE_AA)
    for number, box, colour in boxes:
        x0, y0, x1, y1 = (round(v * f) for v in box)
        cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
        text, scale = str(number), max(0.5, max(rgb.shape[:2]) / 1000)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y0 - 2 if y0 - th - base - 2 >= 0 else min(rgb.shape[0] - 1, y0 + th + base + 2)
        cv2.rectangle(rgb, (x0, ty - th - base), (x0 + tw + 4, ty + 1), colour, -1)
        cv2.putText(rgb, text, (x0 + 2, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, ink_on(colour), thick,
                    cv2.LINE_AA)
    return rgb


def red_cell_gauge(width: int, height: int, um_per_px: float, boxes: list) -> tuple[tuple[float, float], float]:
    """Where to draw a ``RBC_DIAMETER_UM`` red cell at the scale the finder used, and its radius, in the field's px:
    beside the field's own red cells a reader sees at once whether the scale (typed, or estimated from the red
    cells) is right; every length the finder measured follows from it. In the first corner (lower left, lower
    right, upper left, upper right) whose square holds no cell box, else the lower left."""
    r = RBC_DIAMETER_UM / um_per_px / 2
    m = r + max(4.0, 0.02 * max(width, height))
    corners = [(m, height - m), (width - m, height - m), (m, m), (width - m, m)]

    clear = [c for c in corners if not any(iou((c[0] - m, c[1] - m, c[0] + m, c[1] + m), b) > 0 for b in boxes)]
    return (clear or corners)[0], r
