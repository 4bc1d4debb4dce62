"""Drawing helpers shared by every package: fonts, wrapped labels and labelled image grids."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without sized default fonts
        return ImageFont.load_default()


def wrap(draw, text: str, text_font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=text_font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def image_grid(
    images: list[Image.Image], rows: int, cols: int, *, row_labels: list[str] | None = None,
    col_labels: list[str] | None = None, title: str | None = None, cell: int | None = None,
) -> Image.Image:
    """`images` in row-major order as a grid, with labels beside the rows and above the columns."""
    if len(images) != rows * cols:
        raise ValueError(f"{len(images)} images do not fill {rows}×{cols}")
    w = cell or max(img.width for img in images)
    h = cell or max(img.height for img in images)
    scale = max(1, w // 256)
    label_font = font(12 * scale)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 0
    wrapped = []
    if row_labels:
        label_w = min(3 * w // 2, 220 * scale)
        wrapped = [wrap(probe, t, label_font, label_w - 8) for t in row_labels]
    line_h = 15 * scale
    top = (line_h + 6 if col_labels else 0) + (line_h + 8 if title else 0)
    width = max(label_w + cols * w, int(probe.textlength(title, font=label_font)) + 8 if title else 0)
    grid = Image.new("RGB", (width, top + rows * h), "white")
    draw = ImageDraw.Draw(grid)
    y0 = 0
    if title:
        draw.text((4, 4), title, fill="black", font=label_font)
        y0 = line_h + 8
    if col_labels:
        for c, text in enumerate(col_labels):
            draw.text((label_w + c * w + 4, y0 + 2), text, fill="black", font=label_font)
    for r in range(rows):
        for line_no, text in enumerate(wrapped[r] if wrapped else []):
            draw.text((4, top + r * h + 4 + line_no * line_h), text, fill="black", font=label_font)
        for c in range(cols):
            img = images[r * cols + c]
            if img.size != (w, h):
                img = img.resize((w, h))
            grid.paste(img, (label_w + c * w, top + r * h))
    return grid
