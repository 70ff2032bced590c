"""Every session-state key of the app, in one module, with its default.

Pages read and write ``st.session_state`` only through these names. Widget
values that must survive a page change are listed in `PERSISTENT`: Streamlit
forgets a widget's value when a page without that widget runs, unless the
value is re-assigned on every run (`init` does that).
"""

from __future__ import annotations

import streamlit as st

from hdap_engine.options import FinetuneOptions, default

# -- fleet (page 1) -------------------------------------------------------------------------
FLEET_CHOICE = "fleet_choice"  # widget: the fleet on screen (a sample name or the upload)
FLEET_UPLOAD = "fleet_upload"  # widget: the telemetry uploader
UPLOADED = "uploaded_fleet"  # {"name", "fleet", "fingerprint"} of the last accepted upload
UPLOAD_SEEN = "upload_seen"  # file id of the last upload handled (reruns do not re-read it)
UPLOAD_ERROR = "upload_error"  # the engine's message for the last rejected upload
K_MODE = "k_mode"  # widget: "automatic" or "fixed"
K_FIXED = "k_fixed"  # widget: k when fixed
REPRESENTATIVES = "representatives"  # widget: devices measured per cluster
CONTEXT_FEATURES = "context_features"  # widget: numeric context columns clustered on too
COLOR_BY = "color_by"  # widget: what colours the fleet map
WEIGHT_PREFIX = "weight_"  # widgets weight_<cluster>: the cluster weight sliders
WEIGHTS_FOR = "weights_for"  # the clustering the weight sliders belong to

# -- model and budget (page 2) --------------------------------------------------------------
MODEL = "model"  # the model's key (widget: the registered-model picker)
MODEL_SOURCE = "model_source"  # widget: "registered", "torchvision", "timm" or "file"
MODEL_PICK = "model_pick_"  # widgets model_pick_<library>: a library's catalogue picker
MODEL_FILE = "model_file"  # widget: the model file uploader (only where files are allowed)
MODEL_FUNCTION = "model_function"  # widget: the builder function of the uploaded file
MODEL_INPUT_SHAPE = "model_input_shape"  # widget: the uploaded model's input shape
MODEL_FILE_KEY = "model_file_key"  # {"key", "name"} of the accepted model file
MODEL_FILE_SEEN = "model_file_seen"
MODEL_FILE_ERROR = "model_file_error"
WEIGHTS_MODE = "weights_mode"  # widget: "random", "demo" (shipped trained weights) or "upload"
WEIGHTS_UPLOAD = "weights_upload"  # widget: the state-dict uploader
WEIGHTS_FILE = "weights_file"  # {"model", "path", "name"} of accepted user weights
WEIGHTS_SEEN = "weights_seen"
WEIGHTS_ERROR = "weights_error"
DATA_MODE = "data_mode"  # widget: "none" (accuracy unknown), "digits" (built in) or "upload"
DATA_UPLOAD = "data_upload"  # widget: the dataset zip uploader (an ImageFolder inside)
DATA_FILE = "data_file"  # {"path", "name"} of the last accepted dataset zip
DATA_SEEN = "data_seen"  # (file id, model, weights) of the last zip checked
DATA_ERROR = "data_error"  # the engine's message for the last refused zip
SHAPES_IMAGES = "shapes_images"  # images of the shapes demo data (None: the weights' record's)
FLOOR_MODE = "floor_mode"  # widget: accuracy floor "none", "fraction" or "uniform"
FLOOR_FRACTION = "floor_fraction"  # widget: the floor as a fraction of the unpruned model's
FINETUNE_EPOCHS = "finetune_epochs"  # widget: epochs the study fine-tunes its model (0: none)
BUDGET_UNIT = "budget_unit"  # widget: "G MACs", "% of the model" or LATENCY_UNIT
LATENCY_UNIT = "fleet latency (ms)"  # the budget unit that asks for a latency budget
LATENCY_BUDGET = "latency_budget"  # widget: the latency budget in ms (the fleet objective's)
BUDGET_FRACTION = "budget_fraction"  # the budget as a fraction of the model (source of truth)
BUDGET_G = "budget_g"  # widget: budget slider in G MACs
BUDGET_PCT = "budget_pct"  # widget: budget slider in % of the model
OBJECTIVE = "objective"
SLO_MS = "slo_ms"
BACKEND = "backend"
AGENT_TOKEN = "agent_token"
METHOD = "method"
ROUND_TO = "round_to"
SAMPLES = "samples"
SEED = "seed"
REPEATS = "repeats"
REFINE_ROUNDS = "refine_rounds"
SEARCH_EFFORT = "search_effort"  # widget: a name of hdap_engine.options.SEARCH_EFFORTS
PRECISION = "precision"  # widget: the precision the model ships in (fp32 / int8)
CALIBRATE_RANDOM = "calibrate_random"  # widget: INT8 without data, calibrated on random inputs

# -- run, what-if, history (pages 3-6) ------------------------------------------------------
DEMO_PENDING = "demo_pending"  # the detection demo's button was pressed: start it this run
COMPARE_METHODS = "compare_methods"  # widget: other methods to compare against
SWEEP_ON = "sweep_on"  # widget: run a budget sweep for the Pareto chart
JOB = "job"  # the id of the job on the Run page (also the link's ?job=)
RUN = "run"  # the finished job on screen: see studio.results.run_view
RUN_ERROR = "run_error"
WHATIF_BUDGET = "whatif_budget"  # widget: what-if budget, fraction of the model
WHATIF_OBJECTIVE = "whatif_objective"
WHATIF_WEIGHT_PREFIX = "whatif_weight_"
WHATIF_FOR = "whatif_for"  # the run the what-if widgets were initialised from
HISTORY_OPEN = "history_open"
HISTORY_COMPARE = "history_compare"
HISTORY_MINE = "history_mine"  # widget: only my runs (when sign-in is on)
ROLLOUT_VARIANTS = "rollout_variants"  # widget: the most variants to plan (Rollout page)
ROLLOUT_JOB = "rollout_job"  # {"for": the run's key, "job": id of its planning job}
FINETUNE_RUN_EPOCHS = "finetune_run_epochs"  # widget: epochs on the Fine-tune page
FINETUNE_JOB = "finetune_job"  # {"for": the run's key, "job": id of its fine-tune job}
DRIFT_NEW_CHOICE = "drift_new_choice"  # widget: the later snapshot (a sample name or the upload)
DRIFT_UPLOAD = "drift_upload"  # widget: the later snapshot's uploader
DRIFT_UPLOADED = "drift_uploaded"  # {"name", "fleet", "fingerprint", "file", "select"} of that upload
DRIFT_UPLOAD_SEEN = "drift_upload_seen"
DRIFT_UPLOAD_ERROR = "drift_upload_error"
DRIFT_THRESHOLD = "drift_threshold"  # widget: re-optimise above this gap (percent)
DRIFT_JOB = "drift_job"  # {"for": (bundle, snapshot file), "job": id of the re-optimise check}

# Widgets that set one study setting each: widget key -> the setting's flat name in
# `hdap_engine.options`. Their defaults are the engine's, as the CLI's flags are, and
# `studio.options.study_options` reads them into `StudyOptions` from here.
STUDY_WIDGETS = {MODEL: "model", OBJECTIVE: "objective", BACKEND: "backend", METHOD: "method",
                 ROUND_TO: "round_to", SAMPLES: "samples", SEED: "seed", REPEATS: "repeats",
                 REFINE_ROUNDS: "refine_rounds", REPRESENTATIVES: "representatives",
                 PRECISION: "precision"}

# The other widgets that study settings come from start at the engine's defaults too; the
# rest are the app's own (layout, what is shown).
DEFAULTS = {
    **{key: default(name) for key, name in STUDY_WIDGETS.items()},
    K_MODE: "automatic",
    K_FIXED: 4,  # the fixed-k slider's starting point (the engine's default is automatic)
    CONTEXT_FEATURES: list(default("context_features")),
    COLOR_BY: "cluster",
    MODEL_SOURCE: "registered",
    MODEL_FUNCTION: "build",
    MODEL_INPUT_SHAPE: "3,224,224",
    WEIGHTS_MODE: "random",
    DATA_MODE: "none",
    FLOOR_MODE: "none",
    FLOOR_FRACTION: 0.9,  # the paper's rule: 0.9 of the unpruned model's accuracy
    FINETUNE_EPOCHS: default("finetune_epochs"),
    FINETUNE_RUN_EPOCHS: default("epochs", FinetuneOptions),
    BUDGET_UNIT: "G MACs",
    BUDGET_FRACTION: float(default("budget")),
    SLO_MS: 20.0,  # the SLO input's starting point (the engine has no default target)
    LATENCY_BUDGET: 10.0,  # the latency budget input's starting point (no engine default)
    AGENT_TOKEN: "",
    SEARCH_EFFORT: "standard",
    SHAPES_IMAGES: None,
    CALIBRATE_RANDOM: False,
    COMPARE_METHODS: ["uniform", "global"],
    SWEEP_ON: True,
}

# Widget values kept across pages (see the module docstring); weight sliders are
# added by prefix.
PERSISTENT = (FLEET_CHOICE, K_MODE, K_FIXED, REPRESENTATIVES, CONTEXT_FEATURES, COLOR_BY, MODEL,
              MODEL_SOURCE, MODEL_FUNCTION, MODEL_INPUT_SHAPE,
              WEIGHTS_MODE, DATA_MODE, FLOOR_MODE, FLOOR_FRACTION, FINETUNE_EPOCHS,
              FINETUNE_RUN_EPOCHS, BUDGET_UNIT, BUDGET_G, BUDGET_PCT, LATENCY_BUDGET, OBJECTIVE, SLO_MS, BACKEND,
              AGENT_TOKEN, METHOD, ROUND_TO, SAMPLES, SEED, REPEATS, REFINE_ROUNDS,
              SEARCH_EFFORT, PRECISION, CALIBRATE_RANDOM, SHAPES_IMAGES,
              COMPARE_METHODS, SWEEP_ON,
              WHATIF_BUDGET, WHATIF_OBJECTIVE, HISTORY_OPEN, HISTORY_COMPARE, HISTORY_MINE,
              DRIFT_NEW_CHOICE, DRIFT_THRESHOLD)
_PREFIXES = (WEIGHT_PREFIX, WHATIF_WEIGHT_PREFIX)


# A test or demo server can start from other defaults, e.g. a quick study:
# HDAP_APP_DEFAULTS='{"model": "resnet56", "samples": 40, "refine_rounds": 1,
#                     "search_effort": "quick"}'
ENV_DEFAULTS = "HDAP_APP_DEFAULTS"


def _defaults() -> dict:
    import json
    import os

    raw = os.environ.get(ENV_DEFAULTS, "").strip()
    try:
        extra = json.loads(raw) if raw else {}
    except ValueError:
        extra = {}  # a mistyped variable must not stop the app; the defaults stand
    return {**DEFAULTS, **{k: v for k, v in extra.items() if k in PERSISTENT}}


# A copy of every persistent value under a key no widget has. Re-assigning a widget's
# value on every run is not enough with Streamlit 1.67: after a fragment's reruns and its
# st.rerun(scope="app") (the Run page following a job), a page change still dropped the
# Model page's values (weights, data and budget came back as defaults). Keys that belong
# to no widget are never dropped, so the copy brings them back.
_KEPT = "_kept_"


def init() -> None:
    """Set defaults once per session and keep widget values across page changes."""
    ss = st.session_state
    for kept in [k for k in ss.keys() if k.startswith(_KEPT)]:
        if kept[len(_KEPT):] not in ss:
            ss[kept[len(_KEPT):]] = ss[kept]
    for key, value in _defaults().items():
        if key not in ss:
            ss[key] = list(value) if isinstance(value, list) else value
    for key in list(ss.keys()):
        if key in PERSISTENT or key.startswith(_PREFIXES):
            ss[key] = ss[key]
            ss[_KEPT + key] = ss[key]


def get(key: str, default=None):
    """The value under ``key`` (or ``default``)."""
    return st.session_state.get(key, default)


def put(key: str, value) -> None:
    """Store ``value`` under ``key``."""
    st.session_state[key] = value


def weight_key(cluster: int) -> str:
    return f"{WEIGHT_PREFIX}{int(cluster)}"


def whatif_weight_key(cluster: int) -> str:
    return f"{WHATIF_WEIGHT_PREFIX}{int(cluster)}"
