"""The colour bar under an overlay: which colour means which score, with the threshold marked.

An overlay (:func:`padim.report.overlays.overlay`) colours the anomaly map from ``vmin`` to ``vmax``
and fades it out where the map is low, so the bar is drawn the way the colours appear: blended
over a light grey with the same fade, so the transparent low end shows as plain grey. Its
labels are the score at each end and the threshold, where a black mark crosses the bar. Pillow
only; the font is Pillow's built-in one, scaled with the picture.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from padim.report.colors import colormap, fade_weights

#: The background the bar's colours are blended over (the overlay's image, in the bar).
BAR_BACKGROUND = (200, 200, 200)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def colorbar(
    width: int, vmin: float, vmax: float, threshold: float | None, *, fade: tuple[float, float] | None = (0.25, 0.5)
) -> np.ndarray:
    """A strip ``width`` pixels wide: the colour scale from ``vmin`` to ``vmax``, labelled, threshold marked.

    Args:
        width: the picture's width; the strip's height and font scale with it.
        vmin, vmax: the scores at the two ends (as given to :func:`padim.report.overlays.overlay`).
        threshold: the score to mark, or None.
        fade: as for :func:`padim.report.overlays.overlay`.

    Returns:
        (h, width, 3) uint8 RGB on white, h 27 px up to 300 px wide, then a fourteenth of the
        width up to 80 px. Below 160 px wide the labels are left out (they would not fit).

    >>> colorbar(300, 0.0, 2.0, 1.0).shape
    (27, 300, 3)
    """
    font_size = max(9, min(28, width // 40))
    bar_height = max(8, font_size)
    margin = max(2, font_size // 3)
    height = bar_height + font_size + 3 * margin
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    inner = max(width - 2 * margin, 1)
    positions = np.linspace(0.0, 1.0, inner)
    colours = colormap(positions).astype(np.float32)
    weights = fade_weights(positions, 0.6, fade)[:, None]
    row = (1.0 - weights) * np.asarray(BAR_BACKGROUND, np.float32) + weights * colours
    bar = np.repeat(np.round(row).astype(np.uint8)[None], bar_height, axis=0)
    strip.paste(Image.fromarray(bar), (margin, margin))
    draw = ImageDraw.Draw(strip)
    font = _font(font_size)
    text_y = margin * 2 + bar_height
    labels = width >= 160
    if labels:
        draw.text((margin, text_y), f"{vmin:.3g}", fill=(0, 0, 0), font=font)
        draw.text((width - margin, text_y), f"{vmax:.3g}", fill=(0, 0, 0), font=font, anchor="ra")
    if threshold is not None and vmax > vmin:
        x = margin + round((threshold - vmin) / (vmax - vmin) * (inner - 1))
        if margin <= x < width - margin:
            line = max(1, font_size // 8)
            draw.rectangle((x - line // 2, margin // 2, x + (line - 1) // 2, margin + bar_height), fill=(0, 0, 0))
            if labels:
                draw.text((x, text_y), f"threshold {threshold:.4g}", fill=(0, 0, 0), font=font, anchor="ma")
    return np.asarray(strip)
