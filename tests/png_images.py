"""8-bit grayscale PNG images for the 2-D cohort tests (CLI and HTTP), and the checks that an
image, or a panel of a report montage, is shown upright: the bright block stays top-left."""

from __future__ import annotations

import io

import numpy as np

BLOCK = (8, 11)  # rows, columns of the bright block in the top-left corner


def garment(rng: np.random.Generator, size=(28, 28)) -> np.ndarray:
    """An 8-bit image (rows, columns) that is not symmetric: a bright block in the top-left
    corner on a dim, noisy background, with every grey level from 0 to 255 used somewhere."""
    image = rng.integers(0, 40, size=size).astype(np.uint8)
    image[:BLOCK[0], :BLOCK[1]] = rng.integers(200, 256, size=BLOCK)
    image[-1, -1], image[-1, 0] = 0, 255
    return image


def assert_block_top_left(image: np.ndarray, shape=(28, 28)) -> None:
    """``image`` (rows, columns; any resolution showing a ``shape`` image) has the bright block
    top-left: not flipped, not transposed, not turned."""
    image = np.asarray(image, dtype=np.float64)
    rows, cols = (round(image.shape[0] * BLOCK[0] / shape[0]), round(image.shape[1] * BLOCK[1] / shape[1]))
    block, rest = image[:rows, :cols].mean(), image[rows:, cols:].mean()
    assert block > 4 * rest, f"the bright block is not top-left: {block:.1f} there, {rest:.1f} elsewhere"
    three_rows, three_cols = round(image.shape[0] * 3 / shape[0]), round(image.shape[1] * 3 / shape[1])
    for name, region in (("top-right corner", image[:rows, -cols:]), ("bottom-left corner", image[-rows:, :cols]),
                         ("bottom-right corner", image[-rows:, -cols:]),
                         # the block is wider than tall: a transposed image is bright just below it
                         ("strip below the block", image[rows:rows + three_rows, :cols]),
                         ("strip right of the block", image[:rows, cols:cols + three_cols])):
        assert block > 4 * region.mean(), f"the {name} is as bright as the block"


def montage_rows(png: bytes, dark: int = 128, min_side: int = 40) -> list[list[tuple[int, int, int, int]]]:
    """The image panels of a rendered report montage (PNG bytes) by row, top row (the real
    images) first, each as a (top, left, bottom, right) pixel box, left to right. A panel of a ``garment`` is a dark
    region on the figure's white ground (its bright block touches the ground at one corner, the
    dim background still spans the panel's full height and width)."""
    from PIL import Image
    from scipy import ndimage

    with Image.open(io.BytesIO(png)) as figure:
        gray = np.asarray(figure.convert("L"))
    labels, _ = ndimage.label(gray < dark)
    boxes = []
    for where in ndimage.find_objects(labels):
        top, bottom, left, right = where[0].start, where[0].stop, where[1].start, where[1].stop
        if bottom - top >= min_side and right - left >= min_side:
            boxes.append((top, left, bottom, right))
    rows: dict[int, list] = {}
    for box in sorted(boxes):  # one row of panels shares (about) its top edge
        key = next((k for k in rows if abs(k - box[0]) <= 3), box[0])
        rows.setdefault(key, []).append(box)
    return [sorted(rows[key], key=lambda b: b[1]) for key in sorted(rows)]


def assert_montage_upright(png: bytes, n_real: int) -> None:
    """The first ``n_real`` panels of the montage's top row (its real images, each a ``garment``)
    show the bright block top-left."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as figure:
        assert figure.format == "PNG"
        gray = np.asarray(figure.convert("L"))
    rows = montage_rows(png)
    assert rows and len(rows[0]) >= n_real, f"found panels {rows}"
    for top, left, bottom, right in rows[0][:n_real]:
        assert abs((bottom - top) - (right - left)) <= 2, "a 28 x 28 image is shown square"
        assert_block_top_left(gray[top:bottom, left:right])
