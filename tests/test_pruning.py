"""Pruning space and Torch-Pruning: exact widths, analytic MACs equal to the counter."""

from __future__ import annotations

import numpy as np
import pytest

from hdap_engine.errors import HdapError
from hdap_engine.models.zoo import build_model, get_spec, model_names
from hdap_engine.pruning.apply import count_macs_params, prune_to_widths, widths_of
from hdap_engine.pruning.space import PruningSpace


@pytest.mark.parametrize("name", model_names())
def test_analytic_macs_equal_the_counter_after_physical_pruning(name):
    space = PruningSpace.for_model(name)
    rng = np.random.default_rng(abs(hash(name)) % 1000)
    for widths in space.random_widths(2, rng):
        model = build_model(name)
        prune_to_widths(model, space, widths)
        assert np.array_equal(widths_of(model, space), widths)
        macs, params = count_macs_params(model, space)
        assert abs(space.macs(widths) / macs - 1) < 0.005
        assert abs(space.params(widths) / params - 1) < 0.005
        spec = get_spec(name)
        if spec.task == "detection":  # a list of detections; predictor layers untouched
            (out,) = model.eval()(list(spec.example_input()))
            assert out["boxes"].shape[-1] == 4
        else:
            out = model(spec.example_input())
            assert out.shape == (1, spec.num_classes)  # classifier untouched


def test_resnet50_space_has_the_papers_bottlenecks_and_more():
    space = PruningSpace.for_model("resnet50")
    inner = [g for g in space.groups if not g.residual and ("conv1" in g.name or "conv2" in g.name)
             and g.name.startswith("layer")]
    assert len(inner) == 32  # two inner widths in each of the 16 bottlenecks
    assert sum(g.residual for g in space.groups) == 4  # one width per residual stage
    assert space.n_groups == 37


def test_mobilenet_v1_space_has_its_13_separable_blocks():
    space = PruningSpace.for_model("mobilenet_v1")
    pointwise = [g for g in space.groups if g.name != "features.0.0"]
    assert len(pointwise) == 13


def test_candidates_are_rounded_multiples_within_bounds():
    space = PruningSpace.for_model("resnet18", round_to=16, min_ratio=0.25)
    w = space.round_widths(np.array([3.0] * space.n_groups))
    assert np.all(w % 16 == 0)
    assert np.all(w >= space.base_widths * 0.25)
    full = space.widths_from_ratios(np.ones(space.n_groups))
    assert np.array_equal(full, space.base_widths)


def test_analytic_macs_are_vectorised_and_match_one_by_one():
    space = PruningSpace.for_model("mobilenet_v1")
    widths = space.random_widths(50, np.random.default_rng(0))
    batch = space.macs(widths)
    assert batch.shape == (50,)
    assert all(np.isclose(batch[i], space.macs(widths[i])) for i in range(50))


def test_layer_table_follows_the_candidate():
    space = PruningSpace.for_model("resnet18")
    widths = space.random_widths(3, np.random.default_rng(1))
    table = space.layer_table(widths)
    assert table.cin.shape == (3, table.n_layers)
    conv = table.is_op("conv", "dwconv", "linear")
    # The arithmetic layers' MACs are the space's MACs without bn/act/pool terms.
    other = space.macs(widths) - table.macs()[:, conv].sum(axis=1)
    assert np.all(other > 0) and np.all(other < 0.05 * space.macs(widths))
    first = table.rows(0)[0]
    assert first["op"] == "conv" and first["kernel"] == (7, 7) and first["input_hw"] == (224, 224)


def test_a_depthwise_conv_reads_as_many_channels_as_it_writes_when_pruned():
    space = PruningSpace.for_model("mobilenet_v2")
    table = space.layer_table(space.widths_from_ratios(0.5))
    dw = table.is_op("dwconv")
    assert dw.sum() == 17 and np.array_equal(table.cin[:, dw], table.cout[:, dw])


def test_a_wrong_candidate_is_refused():
    space = PruningSpace.for_model("resnet56")
    with pytest.raises(HdapError, match="one per group"):
        space.check_widths([8, 8])
    bad = space.base_widths.copy()
    bad[0] = 10_000
    with pytest.raises(HdapError, match="outside"):
        space.check_widths(bad)


# -- models beyond the zoo: kept groups, the cache, the time limit -------------------------

CONSTANT_RESHAPE = '''
import torch
from torch import nn


class Fixed(nn.Module):
    """conv1's width is spelled as a constant in forward: pruning it breaks the model."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = x.reshape(x.shape[0], 16, -1).reshape(x.shape[0], 16, x.shape[2], x.shape[3])
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.fc(x.mean((2, 3)))


def build(num_classes=4):
    return Fixed(num_classes)
'''


@pytest.fixture
def constant_reshape_model(tmp_path):
    from hdap_engine.models.zoo import resolve_model

    path = tmp_path / "fixed.py"
    path.write_text(CONSTANT_RESHAPE)
    return resolve_model(f"{path}:build", "3,16,16").key


def test_a_group_that_breaks_the_model_is_kept_at_full_width_and_named(
        constant_reshape_model):
    key = constant_reshape_model
    space = PruningSpace.for_model(key, round_to=4)
    kept = dict(space.kept)
    assert "conv1" in kept and kept["conv1"]  # with the error pruning it gives
    assert "conv1" not in space.group_names and "conv3" in space.group_names
    assert space.summary()["kept_at_full_width"][0]["layer"] == "conv1"
    model = build_model(key)
    widths = space.widths_from_ratios(0.5)
    prune_to_widths(model, space, widths)
    assert model.conv1.out_channels == 16 and model.conv3.out_channels == widths[-1]
    assert space.macs(widths) == count_macs_params(model, space)[0]


def test_a_space_is_read_back_from_the_workspace_without_tracing(constant_reshape_model,
                                                                  monkeypatch):
    from hdap_engine.pruning import build, cache

    key = constant_reshape_model
    first = PruningSpace.for_model(key)
    cache.clear_memory()

    def no_build(*args, **kwargs):
        raise AssertionError("the space was built again")

    monkeypatch.setattr(build, "build_space", no_build)
    again = PruningSpace.for_model(key)
    assert again.group_names == first.group_names and again.kept == first.kept
    w = first.widths_from_ratios(0.5)
    assert again.macs(w) == first.macs(w)
    assert again.layer_table(w).names == first.layer_table(w).names


def test_a_space_builds_while_main_is_a_page_script_the_child_could_not_run(tmp_path,
                                                                         monkeypatch):
    # Under Streamlit `__main__` is the page script the server last ran (left in place by
    # Streamlit's `AppTest` too); the child building the space must not re-run it.
    import sys
    import types

    from hdap_engine.models.zoo import resolve_model
    from hdap_engine.pruning import cache

    page = tmp_path / "Page.py"
    page.write_text("raise SystemExit('the page script ran in the child')\n")
    page_main = types.ModuleType("__main__")
    page_main.__file__ = str(page)
    monkeypatch.setitem(sys.modules, "__main__", page_main)
    path = tmp_path / "fixed.py"
    path.write_text(CONSTANT_RESHAPE + f"\n# {tmp_path.name}: a model no other test built\n")
    key = resolve_model(f"{path}:build", "3,16,16").key
    cache.clear_memory()
    space = PruningSpace.for_model(key, round_to=4)
    assert "conv3" in space.group_names
    assert sys.modules["__main__"] is page_main  # put back once the child has started


def test_a_space_that_takes_too_long_to_build_is_one_clear_error(constant_reshape_model):
    from hdap_engine.pruning import cache

    cache.clear_memory()  # what a fresh process knows
    with pytest.raises(HdapError, match="took longer than 0 s.*HDAP_SPACE_TIMEOUT"):
        cache.cached_space(constant_reshape_model, timeout_s=0.01)


CLASS_TOKEN = '''
import torch
from torch import nn


class TinyViT(nn.Module):
    """A class token and a position embedding: parameters used outside any layer, which
    Torch-Pruning prunes with the embedding width."""

    def __init__(self, num_classes=4, dim=32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim))
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 64)
        self.fc2 = nn.Linear(64, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))
        return self.head(x[:, 0])


def build(num_classes=4):
    return TinyViT(num_classes)
'''


def test_a_class_token_is_pruned_with_the_embedding_and_its_macs_are_exact(tmp_path):
    from hdap_engine.models.zoo import resolve_model

    path = tmp_path / "vit.py"
    path.write_text(CLASS_TOKEN)
    key = resolve_model(f"{path}:build", "3,16,16").key
    space = PruningSpace.for_model(key, round_to=4)
    assert "patch" in space.group_names and not space.kept  # the embedding width is pruned
    for ratio in (0.5, 0.75):
        widths = space.widths_from_ratios(ratio)
        model = build_model(key)
        prune_to_widths(model, space, widths)
        assert model.cls_token.shape[-1] == model.patch.out_channels < 32
        assert space.macs(widths) == count_macs_params(model, space)[0]


TIMM_VIT = '''
from timm.models.vision_transformer import VisionTransformer


def build(num_classes=10):
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                             num_classes=num_classes)
'''

COMPARE = '''
import sys
import timm  # first: Torch-Pruning's counter then counts timm's attention blocks whole
from hdap_engine.models.zoo import build_model
from hdap_engine.pruning.apply import count_macs_params, prune_to_widths
from hdap_engine.pruning.space import PruningSpace

if __name__ == "__main__":  # the space is built in a spawned child process
    key = sys.argv[1]
    space = PruningSpace.for_model(key, round_to=3)
    for ratio in (1.0, 0.5):
        widths = space.widths_from_ratios(ratio)
        model = build_model(key)
        prune_to_widths(model, space, widths)
        print(ratio, space.macs(widths), count_macs_params(model, space)[0], space.group_names)
    # The latency surrogate's features of a space with rows that are only counted (the
    # attention formula) besides the rows the twin prices.
    from hdap_engine.latency.surrogate import candidate_features, physical_features

    assert len(candidate_features(space, widths)[0]) == len(physical_features(space, widths))
'''


@pytest.mark.slow  # a child process that builds a timm ViT's space (~30 s on 2 cores)
def test_a_timm_vits_macs_equal_the_counter_which_counts_its_attention_whole(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hdap_engine.models.zoo import resolve_model

    path = tmp_path / "vit.py"
    path.write_text(TIMM_VIT)
    key = resolve_model(f"{path}:build", "3,32,32").key
    script = tmp_path / "compare.py"
    script.write_text(COMPARE)
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, str(script), key], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": root}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line.split(" ", 3) for line in out.stdout.strip().splitlines()]
    assert len(lines) == 2
    for ratio, space_macs, counter_macs, _groups in lines:
        assert float(space_macs) == float(counter_macs), (ratio, space_macs, counter_macs)
    assert "patch_embed.proj" in lines[1][3]  # the embedding width, class token included


def test_groups_the_recording_cannot_follow_are_kept_and_the_rest_still_pruned(monkeypatch):
    """`build._followed_groups`: one check when every group is fine; a group whose forms
    break is kept at full width with the check's error, and so is a group that breaks
    only together with one accepted before it (plain halving would accept both)."""
    from hdap_engine.pruning import build

    calls = []

    def check(model, example, classifier, found, keep, widths, expected, counted):
        calls.append(tuple(keep))
        if 2 in keep:
            return None, "operation x gives (1, 3) where the pruning space expects (1, 5)"
        if 4 in keep and 5 in keep:
            return None, "operation y gives (1, 2) where the pruning space expects (1, 4)"
        return ("ops", "forms"), None

    monkeypatch.setattr(build, "_checked_recording", check)
    widths = np.arange(8) + 1
    keep, bad, done = build._followed_groups(None, None, "", None, list(range(8)), widths,
                                             (1, 4), ())
    assert keep == [0, 1, 3, 4, 6, 7] and set(bad) == {2, 5}
    assert "operation x" in bad[2] and "operation y" in bad[5]
    assert done == ("ops", "forms")

    calls.clear()
    monkeypatch.setattr(build, "_checked_recording",
                        lambda *a: (calls.append(a[4]) or ("ops", "forms"), None))
    keep, bad, _ = build._followed_groups(None, None, "", None, list(range(8)), widths,
                                          (1, 4), ())
    assert keep == list(range(8)) and not bad and len(calls) == 1


def test_a_space_builder_that_dies_says_memory_only_when_it_was_killed():
    from hdap_engine.pruning.cache import _died

    assert "memory" in _died(-9) and "__main__" not in _died(-9)
    assert "__main__" in _died(1) and "memory" not in _died(1)


GROUPED = '''
from torch import nn


def build(num_classes=4):
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=3), nn.ReLU(),     # 3 groups of 8 channels
        nn.Conv2d(24, 96, 1), nn.ReLU(),
        nn.Conv2d(96, 96, 3, padding=1, groups=4), nn.ReLU(),     # 4 groups of 24
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, num_classes))
'''


def test_a_grouped_convolution_too_coarse_for_round_to_moves_one_channel_per_group(tmp_path):
    """round_to 8 with 3 groups of 8 would allow only the whole width (a step of 24):
    RegNet's grouped convolutions stayed whole for every method. Such a group moves one
    channel per group instead; a group with room keeps round_to's multiples."""
    from hdap_engine.models.zoo import resolve_model

    path = tmp_path / "grouped.py"
    path.write_text(GROUPED)
    space = PruningSpace.for_model(resolve_model(f"{path}:build", "3,16,16").key, round_to=8)
    steps = dict(zip(space.group_names, space.steps.tolist(), strict=True))
    parts = {g.name: g.channel_groups for g in space.groups}
    coarse = [n for n in steps if parts[n] == 3]
    roomy = [n for n in steps if parts[n] == 4]
    assert coarse and roomy
    assert all(steps[n] == 3 for n in coarse)      # lcm(8, 3) = 24 = the whole width
    assert all(steps[n] == 8 for n in roomy)       # lcm(8, 4) = 8, 12 widths of 96
    w = space.widths_from_ratios(0.5)
    model = build_model(space.model)
    prune_to_widths(model, space, w)
    assert space.macs(w) == count_macs_params(model, space)[0]


SHUFFLED = '''
import torch
from torch import nn


class Shuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.view(b, self.groups, c // self.groups, h, w)
        return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class Net(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 32, 1)
        self.shuffle = Shuffle(4)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.project = nn.Conv2d(32, 48, 1)
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.shuffle(torch.relu(self.expand(torch.relu(self.stem(x)))))
        x = torch.relu(self.project(self.dw(x)))
        return self.head(x.mean((2, 3)))


def build(num_classes=4):
    return Net(num_classes)
'''


def test_a_channel_shuffle_keeps_its_width_whole_and_the_rest_is_pruned(tmp_path):
    """A shuffle (ShuffleNet's view, transpose, view) permutes the channels across its
    groups; pruned as if it did not, the model would run with the wrong channels mixed.
    The width through it is kept and named; the widths around it are still pruned."""
    from hdap_engine.models.zoo import resolve_model

    path = tmp_path / "shuffled.py"
    path.write_text(SHUFFLED)
    space = PruningSpace.for_model(resolve_model(f"{path}:build", "3,16,16").key)
    assert dict(space.kept).keys() == {"expand"}
    assert "channel shuffle" in dict(space.kept)["expand"]
    assert set(space.group_names) == {"stem", "project"}
    w = space.widths_from_ratios(0.5)
    model = build_model(space.model)
    prune_to_widths(model, space, w)
    assert space.macs(w) == count_macs_params(model, space)[0]
    assert model.expand.out_channels == 32 and model.project.out_channels == w[1]


WINDOWED = '''
import torch
from torch import nn


class Block(nn.Module):
    """Attention inside 4x4 windows of a channels-last map, with a learned bias per
    head and position pair gathered by an index (Swin's relative position bias)."""

    def __init__(self, dim=16, heads=2, window=4):
        super().__init__()
        self.heads, self.window = heads, window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten())
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                 nn.Linear(4 * dim, dim))

    def forward(self, x):  # x: (B, H, W, C)
        b, h, w, c = x.shape
        s = self.window
        win = self.norm(x).view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        win = win.reshape(-1, s * s, c)
        q, k, v = self.qkv(win).reshape(win.shape[0], s * s, 3, self.heads,
                                        c // self.heads).permute(2, 0, 3, 1, 4)
        attn = q @ k.transpose(-2, -1)
        bias = self.bias_table[self.index].view(s * s, s * s, -1).permute(2, 0, 1)
        attn = (attn + bias.unsqueeze(0)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(win.shape[0], s * s, c)
        out = self.proj(out).view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5)
        x = x + out.reshape(b, h, w, c)
        return x + self.mlp(x)


class Net(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 2, stride=2)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.blocks(self.embed(x).permute(0, 2, 3, 1))
        return self.head(x.mean((1, 2)))


def build(num_classes=4):
    return Net(num_classes)
'''


def test_windowed_attention_with_a_gathered_bias_gets_a_space(tmp_path):
    """Swin's pattern: Torch-Pruning 1.6.1 skips its own reshape guards on torch 2 and
    gave such models a flatten mapping whose index sets grew until memory ran out
    (`tp_fixes.install`). The space builds, MACs equal the counter's and the
    pruned model runs."""
    from hdap_engine.models.zoo import resolve_model

    path = tmp_path / "windowed.py"
    path.write_text(WINDOWED)
    space = PruningSpace.for_model(resolve_model(f"{path}:build", "3,16,16").key)
    assert space.n_groups >= 2  # at least the two MLP widths
    w = space.widths_from_ratios(0.5)
    model = build_model(space.model)
    prune_to_widths(model, space, w)
    assert space.macs(w) < 0.75 * space.base_macs
    # within the coverage table's 1 % (16 MACs of 288,036 differ here, pruned or not)
    assert abs(space.macs(w) / count_macs_params(model, space)[0] - 1) < 1e-3
    assert model(get_spec(space.model).example_input()).shape == (1, 4)


MULTIPLIER = '''
from torch import nn


def build(num_classes=4):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.BatchNorm2d(16), nn.ReLU(),  # 2 per input
        nn.Conv2d(16, 24, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes))
'''


def test_a_depthwise_convolution_with_a_channel_multiplier_is_pruned_per_input(tmp_path):
    """Torch-Pruning's importance indexes such a convolution (FastViT has them) past its
    weight and raised IndexError; the root layer's own magnitudes rank it instead, and
    the same position is kept in every one of its groups, so each input keeps its
    share of the outputs and the MACs equal the counter's."""
    import torch

    from hdap_engine.models.zoo import resolve_model

    path = tmp_path / "multiplier.py"
    path.write_text(MULTIPLIER)
    space = PruningSpace.for_model(resolve_model(f"{path}:build", "3,16,16").key)
    names = space.group_names
    w = np.array([g.base for g in space.groups])
    w[names.index("3")] = 8  # one output per input instead of two
    model = build_model(space.model)
    before = model[3].weight.detach().clone()
    prune_to_widths(model, space, w)
    assert model[3].out_channels == 8 and model[3].groups == 8
    after = model[3].weight.detach()
    # output j of the pruned conv is one of the two outputs input j had
    assert all(any(torch.equal(after[j], before[2 * j + k]) for k in (0, 1)) for j in range(8))
    assert space.macs(w) == count_macs_params(model, space)[0]


TINY_SHUFFLENET = '''
from torchvision.models.shufflenetv2 import ShuffleNetV2


def build(num_classes=4):
    return ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=num_classes)
'''


def test_shufflenet_v2_prunes_its_branches_and_keeps_the_shuffled_widths(tmp_path):
    """torchvision's ShuffleNetV2 (chunk, branch, concatenate, shuffle): Torch-Pruning
    guessed the chunks' sizes wrong on torch 2 and failed while building its graph. Now
    each branch's inner width, the stem and the last convolution are pruned, and every
    width that goes through a shuffle is kept and named."""
    from hdap_engine.models.zoo import resolve_model

    path = tmp_path / "shufflenet.py"
    path.write_text(TINY_SHUFFLENET)
    space = PruningSpace.for_model(resolve_model(f"{path}:build", "3,32,32").key)
    names = set(space.group_names)
    assert {"conv1.0", "conv5.0"} <= names
    assert any(n.endswith("branch2.0") for n in names)  # a branch's inner width
    kept = dict(space.kept)
    assert any("channel shuffle" in why for why in kept.values())
    w = space.widths_from_ratios(0.5)
    model = build_model(space.model)
    prune_to_widths(model, space, w)
    assert space.macs(w) == count_macs_params(model, space)[0]
    assert model(get_spec(space.model).example_input()).shape == (1, 4)
