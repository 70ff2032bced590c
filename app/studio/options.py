"""The study chosen on the widgets: model weights, labelled data, budget, method, options.

The widgets that set one study setting each are listed once, in
`studio.state.STUDY_WIDGETS` (widget key -> the setting's flat name): their
defaults come from `hdap_engine.options`, and `study_options` builds the
engine's `StudyOptions` from them, which validates the whole. Descriptions of
methods, objectives and backends are the engine's registries'.
"""

from __future__ import annotations

import streamlit as st

from studio import cached
from studio import state as S
from studio.fleet import ClusterView, FleetView, clustering_request, context_features, user_weights


def method_text(name: str) -> str:
    """A method's one-line description from the engine's registry."""
    from hdap_engine.search.methods import get_method

    return get_method(name).description


def method_choices(*, searches: bool | None = None) -> list[str]:
    """Registered method names (only searching or baseline ones)."""
    from hdap_engine.search.methods import method_names

    return list(method_names(searches=searches))


def objective_choices() -> list[str]:
    """The engine's objectives."""
    from hdap_engine.search.objectives import OBJECTIVES

    return list(OBJECTIVES)


def objective_text(name: str) -> str:
    """An objective as its pickers show it: name and the engine's description."""
    from hdap_engine.search.objectives import OBJECTIVE_DESCRIPTIONS

    return f"{name}: {OBJECTIVE_DESCRIPTIONS[name]}"


def backend_text(name: str) -> str:
    """A latency backend as its picker shows it: name and the engine's description."""
    from hdap_engine.options import BACKEND_DESCRIPTIONS

    return f"{name}: {BACKEND_DESCRIPTIONS[name]}"


# The detectors the Model page offers by name: the demo (trained weights shipped) and
# torchvision's that fit an edge device (issue 20; docs/detection.md has their table).
DETECTORS = ("detector_demo", "torchvision:ssdlite320_mobilenet_v3_large",
             "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn",
             "torchvision:fasterrcnn_mobilenet_v3_large_fpn", "torchvision:fcos_resnet50_fpn",
             "torchvision:retinanet_resnet50_fpn_v2", "torchvision:ssd300_vgg16")


def is_detector(model: str | None = None) -> bool:
    """Whether ``model`` (default: the one on screen) is a detector: its accuracy is mAP on
    COCO data, not top-1 on an ImageFolder."""
    return cached.model_task(str(model or S.get(S.MODEL))) == "detection"


# The operator's switch for model files: a Python file is code, and importing it runs it.
ALLOW_MODEL_FILES = "HDAP_ALLOW_MODEL_FILES"


def model_files_allowed() -> bool:
    """Whether this server offers a model from a Python file: only when its operator set
    HDAP_ALLOW_MODEL_FILES=1 ("runs uploaded code"), and never for a signed-out visitor of
    a server with sign-in."""
    import os

    from studio import auth

    if os.environ.get(ALLOW_MODEL_FILES, "").strip() != "1":
        return False
    return not auth.enabled() or auth.user_name() is not None


def weights_choice() -> tuple[str | None, str]:
    """(model_weights for the engine, label for people) of the model on screen."""
    wf = S.get(S.WEIGHTS_FILE)
    if S.get(S.WEIGHTS_MODE) == "upload" and wf and wf["model"] == S.get(S.MODEL):
        return wf["path"], f"user-supplied state dict ({wf['name']})"
    if S.get(S.WEIGHTS_MODE) == "pretrained":
        from hdap_engine.models.zoo import PRETRAINED, weights_label

        label = weights_label(PRETRAINED, S.get(S.MODEL))
        return (None, label) if label.startswith("random") else (PRETRAINED, label)
    if S.get(S.WEIGHTS_MODE) == "demo":
        from hdap_engine.models.demo import demo_label, demo_weights

        path = demo_weights(S.get(S.MODEL))
        if path is not None:
            return str(path), demo_label(S.get(S.MODEL)) or "trained demo weights"
    return None, "random initialisation (seeded)"


def weights_badge() -> None:
    """Say plainly whether the model's weights are random or the user's."""
    path, label = weights_choice()
    if path is None:
        st.warning(f"Model weights: **{label}**. Latency does not depend on the weight values, "
                   "so the study is valid, but the exported model is untrained: upload your "
                   "trained state dict on the Model page to export a usable model. (Pretrained "
                   "weights are read from the local torchvision / Hugging Face cache only, "
                   "never downloaded.)", icon=":material/casino:")
    else:
        st.success(f"Model weights: **{label}**", icon=":material/upload_file:")
        if S.get(S.WEIGHTS_MODE) == "demo":
            st.caption(f":material/info: {demo_origin(S.get(S.MODEL))}")


def demo_origin(model: str) -> str:
    """Where the shipped demo weights of ``model`` came from: the file and how it was made."""
    from pathlib import Path

    from hdap_engine.models.demo import demo_record, demo_weights

    path, rec = demo_weights(model), demo_record(model) or {}
    if path is None:
        return f"{model} has no shipped demo weights"
    made = rec.get("command") or "hdap train"
    recipe = rec.get("recipe") or {}
    epochs = f", {recipe['epochs']} epochs" if recipe.get("epochs") else ""
    return (f"Shipped with HDAP Studio in sample_data/{Path(path).name}, trained on this "
            f"project's machine by `{made}`{epochs}; how, on what and how accurate: "
            f"sample_data/{Path(path).name}.json.")


def shapes_options() -> tuple[int, int, int]:
    """(images, size, seed) of the synthetic shapes the demo detector was trained on, from
    its weights' record, so the held-out split is the one its mAP was measured on. A demo
    server may ask for fewer images (HDAP_APP_DEFAULTS={"shapes_images": 100}) to run
    faster; `shapes_label` then says the split is not the weights'."""
    from hdap_engine.models.demo import demo_record

    data = (demo_record("detector_demo") or {}).get("data") or {}
    images = int(S.get(S.SHAPES_IMAGES) or data.get("images", 1000))
    return images, int(data.get("size", 160)), int(data.get("seed", 0))


def shapes_label() -> str:
    from hdap_engine.models.demo import demo_record

    images, size, seed = shapes_options()
    trained = int(((demo_record("detector_demo") or {}).get("data") or {}).get("images", 0))
    text = (f"shapes (synthetic, generated here: {images:,} images of {size}x{size} pixels, "
            f"seed {seed}, 4 classes; the demo detector's training data")
    if images != trained:
        # The same seed draws the same first images: some held-out ones were trained on.
        text += (f"; fewer than the {trained:,} its weights were trained and measured on, so "
                 "the held-out split is not theirs and mAP reads high")
    return text + ")"


def data_choice() -> tuple[str | None, str]:
    """(data for the engine, label for people) of the Model page's labelled-data choice."""
    mode = S.get(S.DATA_MODE)
    if mode == "digits":
        from hdap_engine.data import DIGITS

        return DIGITS, "digits (built in: scikit-learn's 8x8 digits, 10 classes)"
    if mode == "shapes":
        # Generated on first use (about 15 s), then read from the workspace.
        return cached.shapes_data(cached.workspace(), *shapes_options()), shapes_label()
    df = S.get(S.DATA_FILE)
    if mode == "upload" and df:
        return df["path"], f"uploaded {df['name']}"
    return None, "none: accuracy unknown"


def data_name(data: str | None) -> str:
    """Labelled data as people know it (an upload by its own name: the workspace's
    `upload_label`; the generated shapes demo data by its folder's name)."""
    from pathlib import Path

    from hdap_engine.infra.workspace import upload_label

    if data and Path(str(data)).parent.name == cached.SHAPES_FOLDER:
        return f"the synthetic {Path(str(data)).name}"
    return upload_label(data)


def data_check(data: str | None = None) -> tuple[dict | None, str | None]:
    """(summary, None) when the data fits the model and weights on screen, else (None, why).

    The engine's own reader checks it (`hdap_engine.accuracy.study.check_data`), cached.
    """
    data = data_choice()[0] if data is None else data
    if data is None:
        return None, None
    weights, _ = weights_choice()
    return cached.checked_data(S.get(S.MODEL), weights, data)


def accept_data_upload(name: str, raw: bytes) -> str | None:
    """Check an uploaded dataset zip; on success it becomes the labelled data.

    Returns the engine's message when the zip is refused; the data chosen
    before stays as it was.
    """
    from pathlib import Path

    from hdap_engine.infra.workspace import save_upload

    # Kept in the workspace: jobs run in worker processes, which read the zip.
    path = save_upload(bytes(raw), name, "data")
    _, error = data_check(str(path))
    if error is not None:
        # The engine names the stored copy; the user knows the file by its own name.
        error = error.replace(str(path), name).replace(path.name, name)
        if (S.get(S.DATA_FILE) or {}).get("path") != str(path):
            Path(path).unlink(missing_ok=True)
        S.put(S.DATA_ERROR, error)
        return error
    S.put(S.DATA_FILE, {"path": str(path), "name": name})
    S.put(S.DATA_ERROR, None)
    return None


def min_accuracy() -> str | None:
    """The accuracy floor for the engine (``min_accuracy``), None without data or floor."""
    if data_choice()[0] is None or S.get(S.FLOOR_MODE) == "none":
        return None
    if S.get(S.FLOOR_MODE) == "uniform":
        return "uniform"
    return f"{float(S.get(S.FLOOR_FRACTION)):g}"


def finetune_epochs() -> int:
    """Epochs the study fine-tunes its model: 0 without data or without trained weights
    (distillation needs a trained teacher)."""
    if data_choice()[0] is None or weights_choice()[0] is None:
        return 0
    return int(S.get(S.FINETUNE_EPOCHS) or 0)


def calibrate_on() -> str:
    """Where an INT8 model's calibration images come from: the data, or random inputs when
    there is none and the Model page's box asks for them."""
    if data_choice()[0] is None and S.get(S.CALIBRATE_RANDOM):
        return "random"
    return "data"


def precision_changed() -> None:
    """The widths' rounding follows the precision, as `--round-to`'s default does."""
    from hdap_engine.options import ROUND_TO_BY_PRECISION

    S.put(S.ROUND_TO, ROUND_TO_BY_PRECISION[S.get(S.PRECISION)])


def budget_text() -> str:
    """The budget as the engine reads it: a fraction of the model."""
    return f"{float(S.get(S.BUDGET_FRACTION)):.6f}"


def latency_budget() -> float | None:
    """The latency budget in ms when the budget is asked in latency, else None (MACs)."""
    return float(S.get(S.LATENCY_BUDGET)) if S.get(S.BUDGET_UNIT) == S.LATENCY_UNIT else None


def budget_summary() -> str:
    """The budget the widgets ask for, in words (Markdown)."""
    if latency_budget() is not None:
        return f"a fleet latency of **{latency_budget():g} ms**"
    return f"**{float(S.get(S.BUDGET_FRACTION)):.1%}** of its MACs"


def study_options(fv: FleetView, cv: ClusterView):
    """The `StudyOptions` of the widgets (raises HdapError for an impossible combination).

    The widgets of `studio.state.STUDY_WIDGETS` give their settings as they are (read
    as the engine's default's type); the others are derived from several widgets.
    """
    from hdap_engine.options import StudyOptions, default, search_effort

    flat = {name: type(default(name))(S.get(key)) for key, name in S.STUDY_WIDGETS.items()}
    k, _, _, _ = clustering_request()
    flat.update(
        budget=budget_text(),
        latency_ms=latency_budget(),
        slo_ms=float(S.get(S.SLO_MS)) if flat["objective"] == "slo" else None,
        cluster_weights=user_weights(cv), k=k, context_features=tuple(context_features(fv)),
        sku=fv.fleet.sku,
        model_weights=weights_choice()[0], agent_token=S.get(S.AGENT_TOKEN) or None,
        data=data_choice()[0], min_accuracy=min_accuracy(), finetune_epochs=finetune_epochs(),
        calibrate_on=calibrate_on(),
        host_runtime="onnxruntime" if flat["precision"] == "int8" else "torch",
        **search_effort(S.get(S.SEARCH_EFFORT)))
    return StudyOptions.of(**flat)
