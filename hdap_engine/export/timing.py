"""Candidates as model files for timing on devices, fast: one ONNX template per pruning space.

Through device agents, the wall time of a study follows the candidates it
exports: building a pruned candidate with Torch-Pruning and tracing it into
ONNX took 2-5 s for a ResNet-18 on this 2-core machine, against about 0.1 s
of device time per measurement. Structured pruning changes tensor shapes, not
the graph, so the ONNX graph of every candidate of a space is the same graph
with other initializers:

- the **template** is the unpruned model traced once, with every parameter and
  buffer filled with distinct values (the exporter would otherwise merge equal
  tensors, such as freshly initialised batch-norm statistics, into one) and
  without constant folding (so that every initializer keeps its parameter's
  name and batch norm stays a node; ONNX Runtime folds it into the convolution
  when the session is made, as it does for the folded export);
- a **candidate** is the model pruned with Torch-Pruning (the first channels
  kept: which channels survive does not change the time), whose state dict
  replaces the template's initializers by name, whose grouped convolutions
  (depthwise) get their new ``group``, and whose stale intermediate shapes are
  dropped.

A template is trusted only after two candidates derived from it give the same
outputs in ONNX Runtime as the pruned PyTorch models themselves; a space whose
graph holds a width-dependent constant (a reshape to a channel count, say)
fails that check and is exported the slow way, candidate by candidate.
"""

from __future__ import annotations

import io
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from hdap_engine.errors import HdapError
from hdap_engine.pruning.space import PruningSpace

# Outputs of a derived ONNX model and of the pruned PyTorch model, compared relative to the
# largest output, when a template is checked.
TEMPLATE_TOLERANCE = 1e-4

_templates: dict[tuple, _Template | None] = {}  # (model key, input shape) -> template or None
_lock = threading.RLock()


def pruned_for_timing(space: PruningSpace, widths, *, small: bool | None = None
                      ) -> torch.nn.Module:
    """The candidate as a PyTorch model in eval mode (the first channels of each group kept).

    ``small`` traces Torch-Pruning's dependency graph on a smaller image (`SMALL_SIDE`):
    the graph of a convolutional classifier does not depend on the image size, and the
    traced forward pass at full size was half the export's time. None: as the space's
    check decided (`_small_ok`).
    """
    from hdap_engine.models.zoo import get_spec
    from hdap_engine.pruning.apply import prune_to_widths
    from hdap_engine.pruning.groups import prune_groups

    model = _unpruned(space.model)
    spec = get_spec(space.model)
    if small is None:
        small = _small_ok(space)
    if small:
        example = _small_example(spec)
        prune_groups(model, example, spec.classifier, space.groups,
                     space.check_widths(widths), importance="first")
    else:
        # Which channels survive does not change the time; the shape does.
        prune_to_widths(model, space, widths, importance="first")
    return model.eval()


SMALL_SIDE = 32  # image side of the dependency graph's trace when the space allows it
_models: dict[str, torch.nn.Module] = {}


def _unpruned(key: str) -> torch.nn.Module:
    """A fresh copy of the unpruned model: copying is cheaper than initialising its weights
    again (a third of an export's time for a ResNet-18)."""
    import copy

    from hdap_engine.models.zoo import build_model

    with _lock:
        if key not in _models:
            _models[key] = build_model(key)
        return copy.deepcopy(_models[key])


def _small_example(spec) -> torch.Tensor:
    c, h, w = spec.input_shape
    gen = torch.Generator().manual_seed(0)
    return torch.randn((1, c, min(h, SMALL_SIDE), min(w, SMALL_SIDE)), generator=gen)


_small: dict[tuple, bool] = {}


def _small_ok(space: PruningSpace) -> bool:
    """Whether pruning on a small image gives every tensor the shape the full image gives.

    Checked once per space on two candidates; a detector, or a model whose shapes
    depend on the image (a flatten into a fixed linear layer), is pruned at full size.
    """
    key = (space.model, tuple(space.input_shape))
    with _lock:
        if key not in _small:
            _small[key] = _check_small(space)
        return _small[key]


def _check_small(space: PruningSpace) -> bool:
    from hdap_engine.latency.sampling import sample_candidates
    from hdap_engine.models.zoo import get_spec

    spec = get_spec(space.model)
    ok = spec.task != "detection" and tuple(spec.input_shape[1:]) != tuple(
        _small_example(spec).shape[2:])
    if ok:
        try:
            for widths in sample_candidates(space, 2, seed=54321):
                a = pruned_for_timing(space, widths, small=True).state_dict()
                b = pruned_for_timing(space, widths, small=False).state_dict()
                if {k: tuple(v.shape) for k, v in a.items()} != \
                        {k: tuple(v.shape) for k, v in b.items()}:
                    ok = False
                    break
        except Exception:  # noqa: BLE001 - any failure means: prune at full size
            ok = False
    return ok


def export_for_timing(space: PruningSpace, widths, fmt: str) -> bytes:
    """The candidate as an ONNX or TorchScript file in memory, traced afresh (the slow way)."""
    from hdap_engine.export.bundle import export_onnx, export_torchscript
    from hdap_engine.models.zoo import get_spec

    spec = get_spec(space.model)
    model = pruned_for_timing(space, widths)
    example = spec.example_input()
    with tempfile.TemporaryDirectory(prefix="hdap-timing-") as tmp:
        path = Path(tmp) / ("model.onnx" if fmt == "onnx" else "model.ts")
        if fmt == "onnx" and spec.task == "detection":
            from hdap_engine.export.detection import export_detector_onnx

            # The whole detector as it ships (one image in; decoding and NMS inside), as
            # the bundle exports it: the agent times what the device will run.
            export_detector_onnx(model, spec.input_shape, path)
        else:
            (export_onnx if fmt == "onnx" else export_torchscript)(model, example, path)
        return path.read_bytes()


def onnx_for_timing(space: PruningSpace, widths) -> bytes:
    """The candidate as ONNX, from the space's template when it has a trusted one.

    Not thread-safe with other exports (neither are torch's exporters): callers
    export one candidate at a time.
    """
    template = _template(space)
    if template is None:
        return export_for_timing(space, widths, "onnx")
    return template.derive(pruned_for_timing(space, widths))


def template_status(space: PruningSpace) -> bool:
    """Whether candidates of ``space`` are derived from a checked template (else traced)."""
    return _template(space) is not None


def _template(space: PruningSpace) -> _Template | None:
    key = (space.model, tuple(space.input_shape))
    with _lock:
        if key not in _templates:
            _templates[key] = _Template.checked(space)
        return _templates[key]


class _Template:
    """The unpruned model's ONNX graph, whose initializers a pruned model's replace."""

    def __init__(self, proto, input_name: str, shape: tuple[int, ...]):
        self.proto = proto
        self.input_name = input_name
        self.shape = shape
        self._strip()
        # Conv nodes by the module whose weight they read: depthwise and grouped
        # convolutions change their group count with the width.
        self.conv_modules = {}
        for node in proto.graph.node:
            if node.op_type == "Conv" and len(node.input) > 1 and \
                    node.input[1].endswith(".weight"):
                self.conv_modules[node.name] = node.input[1][:-len(".weight")]

    @classmethod
    def build(cls, space: PruningSpace) -> _Template:
        import onnx

        from hdap_engine.export.bundle import _quiet
        from hdap_engine.models.zoo import build_model, get_spec

        model = build_model(space.model).eval()
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for value in model.state_dict().values():
                if value.is_floating_point():
                    value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
        buffer = io.BytesIO()
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(model, (get_spec(space.model).example_input(),), buffer,
                                  dynamo=False, opset_version=17, input_names=["input"],
                                  output_names=["logits"], do_constant_folding=False,
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        proto = onnx.load_from_string(buffer.getvalue())
        names = set(model.state_dict())
        strange = [i.name for i in proto.graph.initializer if i.name not in names]
        if strange:
            raise HdapError(f"template initializers without a parameter: {strange[:3]}")
        return cls(proto, "input", (1, *space.input_shape))

    def _strip(self) -> None:
        """Keep the initializers' names only: each candidate brings its own tensors, and
        copying the unpruned weights for every candidate cost more than deriving it."""
        self.initializers = [i.name for i in self.proto.graph.initializer]
        del self.proto.graph.initializer[:]
        # Intermediate shapes of the unpruned model: ONNX Runtime infers the new ones.
        del self.proto.graph.value_info[:]

    @classmethod
    def checked(cls, space: PruningSpace) -> _Template | None:
        """The template, if two candidates derived from it compute what PyTorch computes."""
        from hdap_engine.latency.sampling import sample_candidates

        try:
            template = cls.build(space)
            probes = sample_candidates(space, 2, seed=12345)
            for widths in probes:
                model = pruned_for_timing(space, widths)
                if not template.agrees(model, template.derive(model)):
                    return None
            return template
        except Exception:  # noqa: BLE001 - any failure means: export the slow way
            return None

    def derive(self, model: torch.nn.Module) -> bytes:
        """The ONNX file of ``model``, a pruned copy of the template's model."""
        import onnx
        from onnx import helper, numpy_helper

        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        graph = proto.graph
        for name in self.initializers:
            value = state.get(name)
            if value is None:
                raise HdapError(f"pruned model has no parameter {name}")
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        for node in graph.node:
            module = self.conv_modules.get(node.name)
            if module is None:
                continue
            groups = int(model.get_submodule(module).groups)
            for i, attr in enumerate(node.attribute):
                if attr.name == "group":
                    del node.attribute[i]
                    break
            node.attribute.append(helper.make_attribute("group", groups))
        return proto.SerializeToString()

    def agrees(self, model: torch.nn.Module, body: bytes) -> bool:
        """Whether ONNX Runtime on ``body`` gives ``model``'s outputs."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(body, sess_options=options,
                                       providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(self.shape).astype(np.float32)
        got = session.run(None, {self.input_name: x})
        with torch.no_grad():
            want = model(torch.from_numpy(x))
        want = [want] if isinstance(want, torch.Tensor) else list(want)
        if len(got) != len(want):
            return False
        for g, w in zip(got, want, strict=True):
            w = w.numpy()
            if g.shape != w.shape:
                return False
            scale = max(1e-6, float(np.abs(w).max()))
            if float(np.abs(g - w).max()) > TEMPLATE_TOLERANCE * scale:
                return False
        return True
