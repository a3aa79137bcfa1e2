"""The uncertainty report: PNG galleries and charts plus one static HTML page on storage."""

import dagster as dg
from PIL import Image

from al_assets.core.images import decode_rgb
from al_assets.core.report.html import render_html_report
from al_assets.core.report.uncertainty_report import ReportInputs, report_sections, thumbnail_markdown
from al_assets.orchestration.assets.analysis import ANALYSIS
from al_assets.core.pool import pool_categories
from al_assets.orchestration.automation import VIEW_REFRESH
from al_assets.orchestration.champion import ChampionConfig, champion_key
from al_assets.orchestration.resources import CocoSourceResource, MlflowResource, StorageResource

REPORT_TABLES = ("least_confidence", "least_margin", "entropy", "confused_pairs",
                 "class_frequency", "model_evaluation", "confusion_matrix", "labeling_queue")


@dg.asset(
    group_name=ANALYSIS, kinds={"html", "png"}, deps=[*REPORT_TABLES, "evaluation_gate"],
    automation_condition=VIEW_REFRESH,
    description="Galleries of the most uncertain detections, confusion heatmap, class "
    "frequency chart and tables, as PNG files and one static HTML page.",
)
def uncertainty_report(
    config: ChampionConfig, storage: StorageResource, mlflow: MlflowResource,
    coco_source: CocoSourceResource,
) -> dg.MaterializeResult:
    store = storage.tables()
    objects = coco_source.objects()
    tables = {name: store.read(name) for name in REPORT_TABLES}
    inputs = ReportInputs(
        model_version=champion_key(config, mlflow),
        least_confidence=tables["least_confidence"], least_margin=tables["least_margin"],
        entropy=tables["entropy"], confused_pairs=tables["confused_pairs"],
        class_frequency=tables["class_frequency"], evaluation=tables["model_evaluation"],
        confusion=tables["confusion_matrix"], queue=tables["labeling_queue"],
        categories=pool_categories(store),
        loop_history=_optional(store, "model_versions"),
        class_deltas=_optional(store, "gate_class_deltas"),
        image_root=coco_source.image_root(),
    )

    def load(uri: str) -> Image.Image:
        return Image.fromarray(decode_rgb(objects.read_bytes(uri), uri).permute(1, 2, 0).numpy())

    sections = report_sections(inputs, load)
    for section in sections:  # figures and queue thumbnails, before the page that shows them
        for file in section.files():
            store.write_file(file.data, "report", file.name)
    images = [image for section in sections for image in section.images]
    html = render_html_report(f"al_assets uncertainty report: {inputs.model_version}", sections)
    page = store.write_file(html.encode("utf-8"), "report", "index.html")
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.path(page),
        "model_version": inputs.model_version,
        "pictures": dg.MetadataValue.md("\n\n".join(
            f"**{image.caption}**\n\n{thumbnail_markdown(image.data, image.caption)}"
            for image in images)),
        **{f"png/{image.name}": dg.MetadataValue.path(store.file_uri("report", image.name))
           for image in images},
    })


def _optional(store, name: str):
    """A table the loop writes once labels came back; None before the first gate."""
    try:
        return store.read(name)
    except FileNotFoundError:
        return None
