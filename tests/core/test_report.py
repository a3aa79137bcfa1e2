"""Drawing, charts and the static HTML report, checked on real pixels, PNGs and parsed HTML."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from al_assets.core.report.charts import (
    class_frequency_chart,
    confusion_heatmap,
    learning_curves_chart,
)
from al_assets.core import schemas
from al_assets.core.errors import ImageDecodeError
from al_assets.core.report.drawing import (
    GalleryItem,
    draw_detections,
    draw_margins,
    gallery,
    margin_text,
    thumbnail_jpeg,
    to_png,
)
from al_assets.core.report.html import (
    ReportImage,
    ReportSection,
    ThumbnailTable,
    render_html_report,
    write_html_report,
)
from al_assets.core.report.uncertainty_report import ReportInputs, report_sections

GRAY = (128, 128, 128)
YELLOW = (255, 255, 0)
BOX = (60.0, 70.0, 140.0, 130.0)
MALICIOUS = "<script>alert(1)</script>"


def _changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Boolean mask of pixels that differ (both compared as RGB)."""
    a = np.asarray(before.convert("RGB"), dtype=np.int16)
    b = np.asarray(after.convert("RGB"), dtype=np.int16)
    return np.any(a != b, axis=2)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


# --- drawing -------------------------------------------------------------------------------


def test_detection_changes_only_the_box_outline_and_the_text_above_it():
    image = Image.new("RGB", (200, 160), GRAY)
    original = image.tobytes()

    drawn = draw_detections(image, [BOX], ["cat"], [0.5], width=3)

    assert image.tobytes() == original and drawn is not image
    pixels, changed = _pixels(drawn), _changed(image, drawn)
    xmin, ymin, xmax, ymax = (int(v) for v in BOX)
    for x, y in [(100, ymin), (100, ymin + 2), (xmin, 100), (xmax, 100), (100, ymax)]:
        assert tuple(pixels[y, x]) == YELLOW, (x, y)
    assert not changed[ymin + 3 : ymax - 2, xmin + 3 : xmax - 2].any()  # inside the box
    assert not changed[ymax + 1 :, :].any() and not changed[:, :xmin].any()
    assert not changed[:, xmax + 1 :].any()  # short label: text stays within the box's width
    above = changed[:ymin, :]
    assert above.any() and not above[: ymin - 30].any()  # the label sits right above the box
    text_area = pixels[:ymin][above]
    assert (text_area.sum(axis=1) == 0).sum() > 20  # dark background behind the text
    assert (text_area.min(axis=1) > 200).sum() > 5  # light glyphs on it


def test_label_of_a_box_at_the_top_right_corner_stays_inside_the_image():
    image = Image.new("RGB", (120, 80), GRAY)

    drawn = draw_detections(image, [(90, 0, 119, 40)], ["a long label"], [0.123])

    changed = _changed(image, drawn)
    assert drawn.size == image.size
    columns = np.flatnonzero(changed[:5].any(axis=0))
    assert columns.min() < 90  # shifted left to fit, not cut at the right edge
    assert (_pixels(drawn)[:20, :][changed[:20, :]].sum(axis=1) == 0).any()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_any_image_mode_is_drawn_as_rgb_without_touching_the_input(mode: str):
    image = Image.new("RGB", (200, 160), GRAY).convert(mode)
    original = image.tobytes()

    drawn = draw_detections(image, [{"xmin": 60, "ymin": 70, "xmax": 140, "ymax": 130}],
                            ["dog"], [0.9])

    assert drawn.mode == "RGB" and image.mode == mode and image.tobytes() == original
    assert tuple(_pixels(drawn)[100, 60]) == YELLOW


def test_margin_variant_writes_both_labels_and_the_gap():
    image = Image.new("RGB", (300, 200), GRAY)

    plain = draw_detections(image, [BOX], ["remote"], [0.4])
    margin = draw_margins(image, [BOX], [("remote", "cell phone")], [0.0123])

    assert margin_text("remote", "cell phone", 0.0123) == "remote - cell phone  0.0123"
    assert margin_text("sheep", "cow", 1.5e-7) == "sheep - cow  1.5e-07"
    # The longer text needs a wider label: more changed pixels above the box than "remote".
    above = int(BOX[1])
    assert _changed(image, margin)[:above].sum() > _changed(image, plain)[:above].sum()


def test_drawing_rejects_mismatched_or_invalid_input():
    image = Image.new("RGB", (50, 50))
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw_detections(image, [BOX, BOX], ["a"], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"box #1 .* xmin > xmax"):
        draw_detections(image, [BOX, (10, 0, 5, 5)], ["a", "b"], [0.1, 0.2])
    with pytest.raises(ValueError, match="box #0 .* finite"):
        draw_detections(image, [(0, 0, float("nan"), 5)], ["a"], [0.1])


# --- gallery -------------------------------------------------------------------------------


def _photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_gallery_lays_out_columns_and_rows_with_captions():
    items = [
        GalleryItem(_photo(i), [(100, 100, 300, 300)], ["person"], [0.3], caption=f"image {i}")
        for i in range(5)
    ]

    grid = gallery(items, columns=2, thumb_size=128)

    tile_height = grid.height // 3
    assert grid.width == 2 * 128 and grid.height == 3 * tile_height and tile_height > 128
    pixels = _pixels(grid)
    caption_strip = pixels[128 : tile_height - 1, : 128]
    assert (caption_strip.sum(axis=2) < 200).any()  # dark caption text on a light strip
    assert (np.all(pixels == YELLOW, axis=2)).sum() > 100  # boxes drawn on the thumbnails
    assert pixels[2 * tile_height + 5 : 3 * tile_height - 5, 128 + 5 :].std() == 0  # empty cell


def test_gallery_loads_lazily_and_survives_a_broken_image(tmp_path: Path):
    good = tmp_path / "good.png"
    _photo(1, (200, 100)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    items = [
        GalleryItem(lambda: Image.open(good), [(10, 10, 50, 50)], caption="ok",
                    texts=[margin_text("cow", "sheep", 0.01)]),
        GalleryItem(lambda: Image.open(broken), caption="broken"),
    ]

    grid = gallery(items, columns=4, thumb_size=96)

    assert grid.width == 2 * 96
    second = _pixels(grid)[:96, 96:]
    assert (second.max(axis=2) > 200).any() and (second.sum(axis=2) < 150).any()


def test_empty_gallery_is_a_small_message_image():
    image = gallery([], thumb_size=128)

    assert image.size == (128, 64)
    assert len(set(image.getdata())) > 2  # text was written on the background


# --- charts --------------------------------------------------------------------------------


def _assert_rich_png(data: bytes, min_kb: float = 5) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > min_kb * 1024
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and len(image.convert("RGB").getcolors(1 << 24)) > 16
    return image


def test_confusion_heatmap_counts_and_row_normalized():
    matrix = np.array([[50, 3, 0], [10, 20, 1], [0, 0, 0]])
    names = ["cow", "sheep", "$not math$"]

    raw = confusion_heatmap(matrix, names, title="confused pairs")
    normalized = confusion_heatmap(matrix, names, title="confused pairs", normalize=True)

    assert _assert_rich_png(raw).size == _assert_rich_png(normalized).size
    assert raw != normalized
    with pytest.raises(ValueError, match="must be square"):
        confusion_heatmap(np.ones((2, 3)), ["a", "b"], title="t")
    with pytest.raises(ValueError, match="3 rows but 2 class names"):
        confusion_heatmap(matrix, ["a", "b"], title="t")


def test_class_frequency_chart_with_log_scale_and_zero_counts():
    names = ["person", "car", "toaster"]

    linear = class_frequency_chart(names, [1000, 40, 0], [1100, 35, 2], title="frequency")
    log = class_frequency_chart(names, [1000, 40, 0], [1100, 35, 2], title="frequency",
                                log_scale=True)
    predicted_only = class_frequency_chart(names, [1, 2, 3], None, title="frequency")

    for data in (linear, log, predicted_only):
        _assert_rich_png(data)
    assert linear != log
    with pytest.raises(ValueError, match="ground truth counts have shape"):
        class_frequency_chart(names, [1, 2, 3], [1, 2], title="t")


def test_learning_curves_chart_and_no_pyplot_figures_left():
    import matplotlib.pyplot as plt

    x = [100, 200, 300, 400]
    curves = {
        "random": (x, [0.20, 0.28, 0.33, 0.36], [0.02, 0.02, 0.015, 0.01]),
        "entropy": (x, [0.22, 0.32, 0.38, 0.41], [0.03, 0.02, 0.02, 0.01]),
    }

    data = learning_curves_chart(curves, xlabel="labeled images", ylabel="mAP", title="AL")

    _assert_rich_png(data)
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="curve 'bad' needs x, mean and std of equal length"):
        learning_curves_chart({"bad": ([1, 2], [0.1], [0.0])}, xlabel="x", ylabel="y", title="t")


# --- HTML report ---------------------------------------------------------------------------


class _Collector(HTMLParser):
    """Collects tags, image sources and text, and checks that tags nest properly."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sources: list[str] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (self.stack, tag)
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Collector:
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    return parser


def _sections() -> list[ReportSection]:
    chart = class_frequency_chart(["a", "b"], [3, 1], [2, 2], title="freq")
    thumb = to_png(draw_detections(Image.new("L", (64, 48), 90), [(5, 20, 40, 40)],
                                   [MALICIOUS], [0.5]))
    queue = pa.table({
        "image_id": pa.array([1, 2, 3], pa.int64()),
        "label": [MALICIOUS, "cow & sheep", None],
        "score": [0.123456, float("nan"), 1.0],
        "box": [{"xmin": 1.0, "ymin": 2.0, "xmax": 3.0, "ymax": 4.0}] * 3,
    })
    return [
        ReportSection("Class frequency", "Counts per class.\n\nRare classes need labels.",
                      images=[ReportImage("frequency.png", chart, caption="predicted vs truth")]),
        ReportSection(f"Queue {MALICIOUS}", f"Labels such as {MALICIOUS} stay text.",
                      images=[ReportImage('thumb "1".png', thumb, caption=MALICIOUS)],
                      tables=[queue]),
    ]


@pytest.mark.parametrize("embed", [False, True])
def test_html_escapes_user_text_and_references_every_image(embed: bool):
    sections = _sections()

    page = render_html_report(f"Report {MALICIOUS}", sections, embed_images=embed)

    parsed = _parse(page)
    assert "script" not in parsed.tags and MALICIOUS not in page
    text = "".join(parsed.text)
    assert text.count(MALICIOUS) >= 5  # title, heading, paragraph, caption, table cell
    assert "cow & sheep" in text and "xmin=1, ymin=2" in text and "0.123" in text
    assert "0.1235" not in text  # figures are rounded to 3 decimals (core.display)
    images = [image for section in sections for image in section.images]
    assert len(parsed.sources) == len(images)
    for source, image in zip(parsed.sources, images):
        if embed:
            assert source.startswith("data:image/png;base64,")
            assert base64.b64decode(source.split(",", 1)[1]) == image.data
        else:
            assert source == image.name.replace(" ", "%20").replace('"', "%22")
    assert "<link" not in page and "http" not in page  # nothing external


def test_long_tables_are_cut_with_a_note():
    table = pa.table({"n": list(range(250))})

    page = render_html_report("r", [ReportSection("t", tables=[table])], max_table_rows=20)

    assert page.count("<tr>") == 21 and "First 20 of 250 rows." in page


def test_write_html_report_puts_images_next_to_the_page(tmp_path: Path):
    sections = _sections()

    page_path = write_html_report(tmp_path / "report" / "index.html", "Report", sections)

    parsed = _parse(page_path.read_text(encoding="utf-8"))
    for source in parsed.sources:
        with Image.open(page_path.parent / unquote(source)) as image:
            assert image.format == "PNG"
    assert sorted(p.name for p in page_path.parent.iterdir()) == sorted(
        ["index.html", "frequency.png", 'thumb "1".png']
    )


def test_bad_image_names_and_data_are_rejected():
    png = to_png(Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError, match="must be a plain file name"):
        render_html_report("r", [ReportSection("s", images=[ReportImage("../x.png", png)])])
    with pytest.raises(ValueError, match="used twice"):
        render_html_report("r", [ReportSection("s", images=[ReportImage("a.png", png)] * 2)])
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        render_html_report("r", [ReportSection("s", images=[ReportImage("a.png", b"GIF89a")])])


# --- the report's sections: queue thumbnails, versions side by side ---------------------------
ROOT = "file:///pool/images"


def _queue_rows() -> pa.Table:
    rows = [
        {"queue_rank": rank, "image_id": image_id, "uri": f"{ROOT}/{name}",
         "strategy": "entropy", "agg": "max", "uncertainty": 0.91234567, "n_detections": 2,
         "top_label_id": 1, "labels": [1, 3], "score_rank": rank, "reason": "entropy max"}
        for rank, image_id, name in ((1, 10, "a/good.jpg"), (2, 20, "a/broken.jpg"),
                                     (3, 30, "missing.jpg"))
    ]
    return pa.Table.from_pylist(rows, schema=schemas.LABELING_QUEUE)


def _evaluation() -> pa.Table:
    rows = [
        {"category_id": cid, "name": name, "ap": ap, "ap50": ap50, "ap75": None, "num_gt": 3,
         "model_version": version}
        for version, rows in (("m-v1", [(None, "all", 0.2, 0.5), (1, "cow", 0.2, 0.5)]),
                              ("m-v2", [(None, "all", 0.35, 0.6), (1, "cow", 0.35, 0.6)]))
        for cid, name, ap, ap50 in rows
    ]
    return pa.Table.from_pylist(rows, schema=schemas.MODEL_EVALUATION)


def _inputs() -> ReportInputs:
    views = schemas.BOX_SCORES.empty_table()
    categories = pa.Table.from_pylist(
        [{"category_id": i, "name": n, "supercategory": None, "batch": "b"}
         for i, n in ((1, "cow"), (3, "sheep"))], schema=schemas.CATEGORIES)
    frequency = pa.Table.from_pylist(
        [{"category_id": 1, "name": "cow", "predicted_count": 2, "predicted_share": 1.0,
          "predicted_imbalance": 1.0, "gt_count": None, "gt_share": None, "gt_imbalance": None}],
        schema=schemas.CLASS_FREQUENCY)
    return ReportInputs(
        model_version="m-v2", least_confidence=views, least_margin=views, entropy=views,
        confused_pairs=schemas.CONFUSED_PAIRS.empty_table(), class_frequency=frequency,
        evaluation=_evaluation(), confusion=schemas.CONFUSION_MATRIX.empty_table(),
        queue=_queue_rows(), categories=categories, image_root=ROOT,
    )


def _loader(tmp_path: Path):
    """good.jpg loads; broken.jpg fails like decode_rgb does; anything else is missing."""
    _photo(3, (300, 200)).save(tmp_path / "good.jpg")

    def load(uri: str) -> Image.Image:
        if uri.endswith("good.jpg"):
            return Image.open(tmp_path / "good.jpg")
        if uri.endswith("broken.jpg"):
            raise ImageDecodeError(f"{uri}: not a readable image (<object at 0x7f00dead>)")
        raise FileNotFoundError(uri)

    return load


def test_queue_table_has_thumbnails_names_and_short_paths(tmp_path: Path):
    sections = report_sections(_inputs(), _loader(tmp_path))
    queue = next(s for s in sections if s.title == "Labeling queue")
    (table,) = queue.tables

    assert isinstance(table, ThumbnailTable)
    assert [t is None for t in table.thumbnails] == [False, True, True]
    assert table.table["file"].to_pylist() == ["a/good.jpg", "a/broken.jpg", "missing.jpg"]
    assert table.table["top_label"].to_pylist() == ["cow"] * 3
    assert table.table["labels"].to_pylist() == [["cow", "sheep"]] * 3
    with Image.open(io.BytesIO(table.thumbnails[0].data)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 96

    page_path = write_html_report(tmp_path / "report" / "index.html", "r", sections)

    page = page_path.read_text(encoding="utf-8")
    assert "queue_1.jpg" in _parse(page).sources and (page_path.parent / "queue_1.jpg").is_file()
    assert page.count('class="thumb missing"') == 2 and "file://" not in page
    assert "0.912" in page and "0.9123" not in page


def test_model_versions_section_is_side_by_side_with_delta(tmp_path: Path):
    sections = report_sections(_inputs(), _loader(tmp_path))
    (table,) = next(s for s in sections if s.title == "Model versions").tables

    assert table.column_names == ["category_id", "name", "metric", "m-v1", "m-v2", "delta"]
    assert table["metric"].to_pylist() == ["mAP", "AP50", "AP"]
    assert table["delta"].to_pylist() == pytest.approx([0.15, 0.1, 0.15])


def test_unloadable_images_become_placeholders_with_stable_text():
    addresses = iter(range(0x7F00, 0x7FFF))

    def broken() -> Image.Image:  # like Pillow's errors: each names an object's address
        raise ImageDecodeError(f"<x at 0x{next(addresses):x}>")

    assert thumbnail_jpeg(broken) is None
    first, second = (gallery([GalleryItem(broken, caption="x")], thumb_size=256)
                     for _ in range(2))
    assert first.tobytes() == second.tobytes()  # no memory address drawn into the tile
    with pytest.raises(ValueError, match="one per row"):
        ThumbnailTable(pa.table({"a": [1, 2]}), [None])
