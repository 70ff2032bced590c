"""Page 2, Model and budget: the network, its weights, labelled data, the budget, objective, backend.

The network is a registered one, any torchvision or timm classifier picked from its
catalogue (a select box: type to search), a detector (the shapes demo or torchvision's
edge detectors: accuracy is then mAP on COCO data), or, where the server's operator allows it
(HDAP_ALLOW_MODEL_FILES=1: it runs uploaded code) and never for a signed-out visitor, the
user's own Python file. A model that cannot be built or pruned is one message naming the
layer and the reason; the weights badge says where the weights come from.

The labelled data (none, the built-in digits or, for a detector, the synthetic
shapes; or an uploaded ImageFolder zip, for a detector a COCO zip) is checked here by the engine's own reader against the model's weights, so a job
is never queued with data it would refuse; with data, every run reports
accuracy next to latency.
"""

import math

import streamlit as st

from hdap_engine.errors import HdapError
from hdap_engine.options import PRECISIONS, SEARCH_EFFORTS
from studio import cached
from studio import state as S
from studio.fleet import current_fleet
from studio.options import (
    DETECTORS,
    accept_data_upload,
    backend_text,
    data_check,
    data_choice,
    data_name,
    is_detector,
    method_choices,
    method_text,
    model_files_allowed,
    objective_choices,
    objective_text,
    precision_changed,
    weights_badge,
    weights_choice,
)

DATA_TEXT = {"none": "none: accuracy unknown",
             "digits": "digits (built in: scikit-learn's 1,797 8x8 digits, 10 classes)",
             "upload": "my labelled images (a .zip of an ImageFolder)"}
# A detector's labelled data: COCO boxes, measured as mAP.
DETECTION_DATA_TEXT = {"none": "none: accuracy (mAP) unknown",
                       "shapes": "shapes (synthetic, generated here: the demo detector's data)",
                       "upload": "my COCO dataset (a .zip of annotations.json and its images)"}
FLOOR_TEXT = {"none": "none (latency only)",
              "fraction": "a fraction of the unpruned model's accuracy",
              "uniform": "at least the uniform architecture's (same budget)"}


def _data_texts() -> dict:
    """The labelled-data choices of the model on screen (a detector's, or a classifier's)."""
    return DETECTION_DATA_TEXT if is_detector() else DATA_TEXT


def _weights_changed() -> None:
    """Demo weights come with the data they were trained on: with them, the default demo
    shows accuracy (digits for resnet56, the synthetic shapes for the detector demo)."""
    from hdap_engine.models.demo import demo_data

    trained_on = demo_data(S.get(S.MODEL))
    if S.get(S.WEIGHTS_MODE) == "demo" and S.get(S.DATA_MODE) == "none" and trained_on:
        S.put(S.DATA_MODE, trained_on)


def _labelled_data() -> None:
    """Labelled images for accuracy: the choice, the upload and its check, floor, epochs."""
    st.subheader("Labelled data and accuracy")
    detector = is_detector()
    texts = _data_texts()
    if S.get(S.DATA_MODE) not in texts:  # digits for a detector, shapes for a classifier
        S.put(S.DATA_MODE, "none")
    left, right = st.columns([1, 1])
    with left:
        st.radio("Labelled data", list(texts), key=S.DATA_MODE,
                 format_func=texts.get,
                 help="Images with labels measure the pruned model's accuracy: right after "
                      "pruning, after batch-norm re-estimation, after fine-tuning (a "
                      "detector's as mAP@.5 and mAP@[.5:.95] on boxes). Without them, "
                      "latency is measured and accuracy stays unknown.")
        if S.get(S.DATA_MODE) == "upload" and detector:
            up = st.file_uploader(
                "COCO dataset zip (up to 1 GB): annotations.json (COCO's images, "
                "annotations with bbox [x, y, width, height] in pixels, categories) and the "
                "images it names", type=["zip"], key=S.DATA_UPLOAD,
                help="Categories become labels 1..K in the order of their ids (0 is the "
                     "background), so the detector's weights need K + 1 class outputs. A "
                     "box outside its image, an unknown category, an image without a file "
                     "or an empty annotation file is refused with one line; so are "
                     "members with '..' or absolute paths and links, before anything is "
                     "written.")
        elif S.get(S.DATA_MODE) == "upload":
            up = st.file_uploader(
                "Dataset zip (up to 1 GB): one folder per class holding that class's images "
                "(PNG, JPEG, BMP, WebP)", type=["zip"], key=S.DATA_UPLOAD,
                help="Class folders are read in alphabetical order, which must be the order "
                     "of the weights' outputs. Members with '..' or absolute paths and links "
                     "are refused before anything is written.")
        if S.get(S.DATA_MODE) == "upload":
            weights, _ = weights_choice()
            seen = None if up is None else (up.file_id, S.get(S.MODEL), weights)
            if up is not None and S.get(S.DATA_SEEN) != seen:
                S.put(S.DATA_SEEN, seen)
                with st.spinner(f"Reading {up.name} for {S.get(S.MODEL)}..."):
                    accept_data_upload(up.name, up.getvalue())
            if S.get(S.DATA_ERROR):
                st.error(S.get(S.DATA_ERROR), icon=":material/error:")
        data, label = data_choice()
        if data is None and S.get(S.DATA_MODE) == "upload":
            st.info("No dataset accepted yet: upload a zip, or choose "
                    f"{'shapes' if detector else 'digits'}.")
        elif data is not None:
            with st.spinner("Checking the labelled data against the model..."):
                summary, problem = data_check()
            if problem:
                st.error(problem, icon=":material/error:")
            else:
                what = ("categories (boxes; mAP@.5 and mAP@[.5:.95])"
                        if summary.get("task") == "detection" else "classes")
                st.caption(f":material/dataset: {label}: {summary['classes']} {what}, "
                           f"{summary['n_train']:,} images to calibrate and fine-tune on; "
                           "accuracy measured on "
                           f"{summary['heldout'].replace(data, data_name(data))}.")
                for note in summary["notes"]:
                    st.caption(f":material/info: {note}")
        if data is None:
            st.caption("Accuracy is unknown without labelled data: no page can tell whether "
                       "the pruned model is usable.")
    with right:
        if data is None:
            return
        st.radio("Accuracy floor of the search (after batch-norm re-estimation"
                 + ("; on mAP" if detector else "") + ")",
                 list(FLOOR_TEXT), key=S.FLOOR_MODE, format_func=FLOOR_TEXT.get,
                 help="Candidates predicted below the floor are penalised; the finalists and "
                      "the final choice are evaluated for real and must meet it. Each budget "
                      "evaluates about 26 candidates on the data (minutes, cached).")
        if S.get(S.FLOOR_MODE) == "fraction":
            st.number_input("Floor: fraction of the unpruned model's calibrated accuracy",
                            min_value=0.05, max_value=1.0, step=0.01, format="%.2f",
                            key=S.FLOOR_FRACTION,
                            help="The HDAP paper's code uses 0.9.")
        if weights_choice()[0] is None:
            st.caption("Fine-tuning distils from the unpruned model, which needs trained "
                       "weights: choose the demo weights or upload yours to fine-tune.")
        else:
            st.number_input("Fine-tune epochs in the study (0: none; the Fine-tune page "
                            "can do it afterwards)", min_value=0, max_value=200, step=1,
                            key=S.FINETUNE_EPOCHS,
                            help="Distillation from the unpruned model on the data, after "
                                 "the study exports its model (hdap_engine.finetune's "
                                 "recipe).")


SOURCE_TEXT = {"registered": "registered", "torchvision": "torchvision", "timm": "timm",
               "detector": "detector (boxes, mAP)", "file": "my Python file"}
DETECTOR_MARK = "[detector] "  # how a picker marks a detector among classifiers


def _model_text(name: str) -> str:
    """A model in a picker: a detector marked as one, with the engine's description."""
    return (DETECTOR_MARK if is_detector(name) else "") + \
        f"{name}: {cached.model_description(name)}"


def _model_picker() -> bool:
    """The model: a registered one, a library's catalogue with its search box, or (where
    the operator allows) the user's own file. False when no model is ready yet."""
    sources = ["registered", "torchvision", "timm", "detector"]
    if model_files_allowed():
        sources.append("file")
    if S.get(S.MODEL_SOURCE) not in sources:
        S.put(S.MODEL_SOURCE, "registered")
    st.radio("Model from", sources, key=S.MODEL_SOURCE, horizontal=True,
             format_func=SOURCE_TEXT.get,
             help="A registered model, any classifier of torchvision or timm by name (random "
                  "initialisation unless you give weights), an object detector (the shapes "
                  "demo with trained weights, or torchvision's edge detectors), or your own "
                  "network from a file.")
    source = S.get(S.MODEL_SOURCE)
    if source == "registered":
        names = cached.model_names()
        if S.get(S.MODEL) not in names:
            S.put(S.MODEL, names[0])
        st.selectbox("Model", names, key=S.MODEL, format_func=_model_text)
    elif source == "detector":
        # A key of its own: the registered picker's widget must not see torchvision names.
        pick_key = S.MODEL_PICK + "detector"
        if S.get(pick_key) not in DETECTORS:
            S.put(pick_key, S.get(S.MODEL) if S.get(S.MODEL) in DETECTORS else DETECTORS[0])
        st.selectbox("Detector (torchvision's interface: boxes, labels, scores)", DETECTORS,
                     key=pick_key, format_func=_model_text)
        S.put(S.MODEL, S.get(pick_key))
    elif source in ("torchvision", "timm"):
        names = cached.catalogue(source)
        current = str(S.get(S.MODEL) or "")
        own = current.split(":", 1)[1] if current.startswith(source + ":") else None
        pick_key = S.MODEL_PICK + source
        if S.get(pick_key) not in names:
            S.put(pick_key, own if own in names else names[0])
        st.selectbox(f"{source} classifier ({len(names):,}; type to search)", names,
                     key=pick_key)
        S.put(S.MODEL, f"{source}:{S.get(pick_key)}")
    else:
        return _model_file()
    try:
        st.caption(cached.model_description(S.get(S.MODEL)))
    except HdapError as exc:
        st.error(str(exc), icon=":material/error:")
        return False
    if is_detector():
        st.caption(":material/center_focus_strong: **A detector**: pruned in its backbone, "
                   "neck and heads (never its box and class predictors); its accuracy is "
                   "mAP@.5 and mAP@[.5:.95] on COCO-format data; its ONNX export includes "
                   "post-processing (NMS).")
    return True


def _model_file() -> bool:
    """The user's own network: a .py file, the function that builds it, its input shape."""
    st.caption(":material/warning: A model file is Python code and runs on this server "
               "(enabled by its operator with HDAP_ALLOW_MODEL_FILES=1).")
    up = st.file_uploader("Model file (.py): a function that returns an nn.Module, optionally "
                          "taking num_classes", type=["py"], key=S.MODEL_FILE)
    c = st.columns([1, 1])
    c[0].text_input("Function that builds it", key=S.MODEL_FUNCTION)
    c[1].text_input("Input shape C,H,W", key=S.MODEL_INPUT_SHAPE)
    if up is None:
        st.info("Upload the file that defines your network.")
        return False
    seen = (up.file_id, S.get(S.MODEL_FUNCTION), S.get(S.MODEL_INPUT_SHAPE))
    if S.get(S.MODEL_FILE_SEEN) != seen:
        S.put(S.MODEL_FILE_SEEN, seen)
        from hdap_engine.models.userfile import resolve_source

        try:
            with st.spinner(f"Building {S.get(S.MODEL_FUNCTION)} from {up.name}..."):
                key = resolve_source(up.getvalue(), up.name, S.get(S.MODEL_FUNCTION),
                                     S.get(S.MODEL_INPUT_SHAPE))
            S.put(S.MODEL_FILE_KEY, {"key": key, "name": up.name})
            S.put(S.MODEL_FILE_ERROR, None)
        except HdapError as exc:
            S.put(S.MODEL_FILE_KEY, None)
            S.put(S.MODEL_FILE_ERROR, str(exc))
    if S.get(S.MODEL_FILE_ERROR):
        st.error(S.get(S.MODEL_FILE_ERROR), icon=":material/error:")
        return False
    S.put(S.MODEL, S.get(S.MODEL_FILE_KEY)["key"])
    st.caption(cached.model_description(S.get(S.MODEL)))
    return True


def main() -> None:
    st.title("Model and budget")

    # -- model --------------------------------------------------------------------------------
    left, right = st.columns([1, 1])
    with left:
        if not _model_picker():
            return
        try:
            with st.spinner("Tracing the model's prunable groups..."):
                space = cached.space(S.get(S.MODEL), int(S.get(S.ROUND_TO)))
        except Exception as exc:  # noqa: BLE001  (Torch-Pruning's own errors too: one line)
            from hdap_engine.models.check import cannot_prune

            st.error(str(exc) if isinstance(exc, HdapError)
                     else cannot_prune(S.get(S.MODEL), exc, "space"), icon=":material/error:")
            return
        base_g = space.base_macs / 1e9
        st.caption(f"{base_g:.3f} G MACs, {space.base_params / 1e6:.2f} M parameters, "
                   f"{space.n_groups} prunable groups, input "
                   f"{'x'.join(map(str, space.input_shape))}")

    with right:
        modes = ["random", "demo", "upload"]
        if cached.has_published_weights(S.get(S.MODEL)):
            modes.insert(2, "pretrained")
        if S.get(S.WEIGHTS_MODE) not in modes:
            S.put(S.WEIGHTS_MODE, "random")
        from hdap_engine.models.demo import DEMO_WEIGHTS, demo_data, demo_weights

        # The demo option names the data of this model's demo weights (or whose there are).
        shipped = demo_data(S.get(S.MODEL))
        demo = (f"trained demo weights ({shipped})" if shipped else
                "trained demo weights (" + "; ".join(f"{m}: {d}" for m, (_, d)
                                                     in DEMO_WEIGHTS.items()) + ")")
        st.radio("Model weights", modes, key=S.WEIGHTS_MODE,
                 horizontal=True, on_change=_weights_changed,
                 format_func={"random": "random initialisation (seeded)",
                              "demo": demo,
                              "pretrained": "published weights (local cache only)",
                              "upload": "my trained weights (state dict)"}.get)

        if S.get(S.WEIGHTS_MODE) == "demo" and demo_weights(S.get(S.MODEL)) is None:
            st.info(f"Demo weights are shipped for resnet56 (trained on digits) and "
                    f"detector_demo (trained on the synthetic shapes) only; "
                    f"{S.get(S.MODEL)} stays randomly initialised.")
        if S.get(S.WEIGHTS_MODE) == "upload":
            up = st.file_uploader("State dict (.pt / .pth), loaded with "
                                  "torch.load(weights_only=True)",
                                  type=["pt", "pth", "bin"], key=S.WEIGHTS_UPLOAD,
                                  help="Save one with torch.save(model.state_dict(), path). "
                                       "No pickled code from a file is ever run.")
            if up is not None and S.get(S.WEIGHTS_SEEN) != (up.file_id, S.get(S.MODEL)):
                S.put(S.WEIGHTS_SEEN, (up.file_id, S.get(S.MODEL)))
                from hdap_engine.infra.workspace import save_upload

                try:
                    with st.spinner(f"Loading {up.name} into {S.get(S.MODEL)}..."):
                        path = save_upload(up.getvalue(), up.name, "weights")
                        cached.checked_weights(S.get(S.MODEL), str(path))
                    S.put(S.WEIGHTS_FILE, {"model": S.get(S.MODEL), "path": str(path),
                                           "name": up.name})
                    S.put(S.WEIGHTS_ERROR, None)
                except HdapError as exc:
                    S.put(S.WEIGHTS_ERROR, str(exc))
            if S.get(S.WEIGHTS_ERROR):
                st.error(S.get(S.WEIGHTS_ERROR), icon=":material/error:")
            wf = S.get(S.WEIGHTS_FILE)
            if wf and wf["model"] != S.get(S.MODEL):
                st.info(f"{wf['name']} holds weights for {wf['model']}; upload weights for "
                        f"{S.get(S.MODEL)} or switch back.")
        weights_badge()

    _labelled_data()

    # -- budget -------------------------------------------------------------------------------
    st.subheader("Budget")
    st.caption("The pruned model's multiply-accumulates (MACs). Pruning papers, the HDAP paper "
               "included, call these FLOPs; the numbers are the same.")
    min_frac = space.min_macs / space.base_macs
    frac = min(max(float(S.get(S.BUDGET_FRACTION)), min_frac), 1.0)
    S.put(S.BUDGET_FRACTION, frac)
    step_g = 10 ** math.floor(math.log10(base_g / 400))
    decimals = max(0, -int(math.floor(math.log10(step_g))))
    min_g = math.ceil(space.min_macs / 1e9 / step_g) * step_g
    min_pct = math.ceil(min_frac * 1000) / 10


    def _from_g():
        S.put(S.BUDGET_FRACTION, float(S.get(S.BUDGET_G)) * 1e9 / space.base_macs)


    def _from_pct():
        S.put(S.BUDGET_FRACTION, float(S.get(S.BUDGET_PCT)) / 100)


    S.put(S.BUDGET_G, min(max(round(frac * base_g, decimals), round(min_g, decimals)),
                          round(base_g, decimals)))
    S.put(S.BUDGET_PCT, min(max(round(frac * 100, 1), min_pct), 100.0))
    b = st.columns([1, 3])
    b[0].radio("Budget in", ["G MACs", "% of the model", S.LATENCY_UNIT], key=S.BUDGET_UNIT)
    if S.get(S.BUDGET_UNIT) == S.LATENCY_UNIT:
        b[1].number_input("Fleet latency budget (ms)", min_value=0.01, step=0.5,
                          key=S.LATENCY_BUDGET)
        b[1].caption("The least-pruned model whose fleet objective (below: mean, p95 or worst "
                     "cluster) is at most this many ms. The MACs are found on the surrogate, "
                     "searched in full there, and the Run page shows the measured latency "
                     "against this budget. Not for the slo objective, comparisons or rollouts.")
    elif S.get(S.BUDGET_UNIT) == "G MACs":
        b[1].slider("Budget: G MACs (\"GFLOPs\" in pruning papers)", round(min_g, decimals),
                    round(base_g, decimals), step=step_g, format=f"%.{decimals}f", key=S.BUDGET_G,
                    on_change=_from_g)
    else:
        b[1].slider("Budget: % of the unpruned model's MACs", min_pct, 100.0, step=0.5,
                    format="%.1f%%", key=S.BUDGET_PCT, on_change=_from_pct)
    frac = float(S.get(S.BUDGET_FRACTION))
    if S.get(S.BUDGET_UNIT) != S.LATENCY_UNIT:
        b[1].caption(f"= **{frac * base_g:.{decimals}f} G MACs**, {frac:.1%} of "
                     f"{S.get(S.MODEL)} ({base_g:.{decimals}f} G); the smallest candidate this "
                     f"space allows is {space.min_macs / 1e9:.{decimals}f} G.")

    # -- objective and backend ----------------------------------------------------------------
    o = st.columns([1, 1])
    with o[0]:
        st.selectbox("Objective (minimised over the fleet)", objective_choices(),
                     key=S.OBJECTIVE, format_func=objective_text)
        if S.get(S.OBJECTIVE) == "slo":
            st.number_input("Latency target (ms)", min_value=0.01, step=1.0, key=S.SLO_MS)
    with o[1]:
        fv = current_fleet()
        backends = ["twin", "host"]
        has_urls = fv is not None and "agent_url" in fv.fleet.context_columns
        if has_urls:
            backends.append("agent")
        if S.get(S.BACKEND) not in backends:
            S.put(S.BACKEND, "twin")
        st.radio("Latency backend (where 'measured' comes from)", backends, key=S.BACKEND,
                 format_func=backend_text)
        if S.get(S.BACKEND) == "agent":
            st.text_input("Agent token", type="password", key=S.AGENT_TOKEN,
                          help="The token the agents were started with (HDAP_AGENT_TOKEN).")
        elif not has_urls:
            st.caption("The agent backend appears when the fleet has an agent_url column.")
        st.radio("Precision the model ships in", list(PRECISIONS), key=S.PRECISION,
                 horizontal=True, on_change=precision_changed,
                 help="INT8: every candidate is quantised by ONNX Runtime (QDQ, per-channel "
                      "weights) before it is measured, and the bundle gains model.int8.onnx "
                      "with its held-out accuracy. Widths round to 16 by default in INT8.")
        if S.get(S.PRECISION) == "int8":
            if data_choice()[0] is None:
                st.checkbox("Calibrate INT8 on random inputs (no labelled data: the INT8 "
                            "model's accuracy stays unknown)", key=S.CALIBRATE_RANDOM)
                if not S.get(S.CALIBRATE_RANDOM):
                    st.warning("INT8 calibrates on the labelled data's images, and none is "
                               "chosen: choose labelled data above, or tick the box to "
                               "calibrate on random inputs.", icon=":material/warning:")
            else:
                st.caption("INT8 is calibrated on 256 images of the labelled data, "
                           "preprocessed as for evaluation; the host times it in ONNX Runtime.")

    with st.expander("Advanced options"):
        a = st.columns(7)
        a[0].selectbox("Method", method_choices(), key=S.METHOD,
                       format_func=method_text)
        a[1].selectbox("Round widths to", [1, 2, 4, 8, 16, 32], key=S.ROUND_TO,
                       help="Every kept width is a multiple of this (hardware likes "
                            "multiples of 8).")
        a[2].number_input("Candidates measured (samples)", min_value=20, max_value=5000, step=20,
                          key=S.SAMPLES,
                          help="Per representative device; they train the surrogate.")
        a[3].number_input("Refinement rounds", min_value=0, max_value=10, step=1,
                          key=S.REFINE_ROUNDS,
                          help="HDAP: search, measure the search's favourites, refit the "
                               "surrogate; this many times before the final search.")
        a[4].number_input("Timed repeats", min_value=1, max_value=100, step=1, key=S.REPEATS)
        a[5].number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=S.SEED,
                          help="Clustering, sampling, search: same seed, same result.")
        if S.get(S.SEARCH_EFFORT) not in SEARCH_EFFORTS:  # a mistyped HDAP_APP_DEFAULTS
            S.put(S.SEARCH_EFFORT, "standard")
        a[6].selectbox("Search effort", list(SEARCH_EFFORTS), key=S.SEARCH_EFFORT,
                       help="How long the search looks (population, generations, restarts, "
                            "finalists, polish). Quick: a demo's answer in seconds; "
                            "thorough: for the model that ships.")

    st.page_link("views/run.py", label="Next: run", icon=":material/arrow_forward:")


main()
