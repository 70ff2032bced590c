"""Attention heads as a prunable width: whole heads go, the attention's head count follows,
MACs stay equal to Torch-Pruning's counter and the ONNX export matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdap_engine.errors import HdapError
from hdap_engine.models.zoo import build_model, get_spec, resolve_model
from hdap_engine.pruning.apply import count_macs_params, prune_to_widths
from hdap_engine.pruning.cache import build_now
from hdap_engine.pruning.space import PruningSpace

TIMM_VIT = '''
from timm.models.vision_transformer import VisionTransformer


def build(num_classes=10):
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4,
                             num_classes=num_classes)
'''

QKV = ("blocks.0.attn.qkv", "blocks.1.attn.qkv")


@pytest.fixture
def vit(tmp_path) -> tuple[str, PruningSpace]:
    """A tiny timm ViT (4 heads of 12 channels) and its space, built in this process."""
    pytest.importorskip("timm")
    path = tmp_path / "vit.py"
    path.write_text(TIMM_VIT)
    key = resolve_model(f"{path}:build", "3,32,32").key
    return key, PruningSpace.from_data(build_now(key)).with_options(round_to=4)


def _fewer_heads(space: PruningSpace) -> np.ndarray:
    """Block 0 keeps 2 heads, block 1 keeps 1, the MLPs keep half, the embedding whole."""
    widths = space.base_widths.copy()
    names = space.group_names
    widths[names.index(QKV[0])] = 2 * 36
    widths[names.index(QKV[1])] = 1 * 36
    for i, name in enumerate(names):
        if name.endswith("mlp.fc1"):
            widths[i] = space.base_widths[i] // 2
    return widths


def test_each_attentions_heads_are_a_group_moving_one_head_at_a_time(vit):
    _, space = vit
    heads = {g.name: g for g in space.groups if g.heads}
    assert set(heads) == set(QKV) and not space.kept
    for name in QKV:
        i = space.group_names.index(name)
        assert heads[name].heads == 4 and heads[name].base == 144
        assert space.steps[i] == 36  # one head: its 12 q, 12 k and 12 v channels
        assert space.min_widths[i] == 36  # at least one head remains
    w = space.round_widths(np.full(space.n_groups, 50))
    assert all(w[space.group_names.index(n)] % 36 == 0 for n in QKV)
    bad = space.base_widths.copy()
    bad[space.group_names.index(QKV[0])] = 48  # 48 qkv channels: one head and a third
    with pytest.raises(HdapError, match="whole heads"):
        space.check_widths(bad)


def test_fewer_heads_are_pruned_for_real_and_cost_what_the_counter_counts(vit, tmp_path):
    key, space = vit
    widths = _fewer_heads(space)
    model = build_model(key).eval()
    prune_to_widths(model, space, widths)
    attn = [b.attn for b in model.blocks]
    assert [a.num_heads for a in attn] == [2, 1]
    assert [a.qkv.out_features for a in attn] == [72, 36]
    assert [a.proj.in_features for a in attn] == [24, 12]
    assert [a.attn_dim for a in attn] == [24, 12] and attn[0].head_dim == 12
    example = get_spec(key).example_input()
    with torch.no_grad():
        out = model(example)
    assert out.shape == (1, 10) and out.abs().max() > 0.1
    macs, _ = count_macs_params(model, space)
    assert space.macs(widths) == macs < space.base_macs
    # The twin's attention products and softmax shrink with the heads (1 of 4 kept).
    table = space.layer_table(np.stack([space.base_widths, widths]))
    attention = [i for i, n in enumerate(table.names) if n.startswith("blocks.1.attn:")]
    products = [i for i in attention if table.op[i] == "matmul"]
    assert len(products) == 2 and all(table.macs()[1, i] * 4 == table.macs()[0, i]
                                      for i in products)
    assert all(table.output_elems()[1, i] * 4 == table.output_elems()[0, i]
               for i in attention if table.op[i] == "softmax")

    from hdap_engine.export.bundle import export_onnx

    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "heads.onnx"
    export_onnx(model, example, path)
    got = ort.InferenceSession(str(path)).run(None, {"input": example.numpy()})[0]
    assert np.abs(got - out.numpy()).max() <= 1e-4


def test_removing_a_head_removes_its_q_k_v_and_its_output_columns_together(vit):
    """The pruned attention computes what the unpruned one computes with the removed
    heads silenced (their columns of the output projection zeroed), so each head went
    whole, its q, k and v channels together."""
    key, space = vit
    widths = _fewer_heads(space)
    for name in space.group_names:  # only heads change: the rest stays at full width
        if not name.endswith("qkv"):
            widths[space.group_names.index(name)] = space.base_widths[
                space.group_names.index(name)]
    model = build_model(key).eval()
    silenced = build_model(key).eval()
    silenced.load_state_dict(model.state_dict())
    kept = prune_to_widths(model, space, widths)
    with torch.no_grad():
        for block, name in zip(silenced.blocks, QKV, strict=True):
            heads = sorted({c // 12 for c in kept[name] if c < 48})
            assert len(kept[name]) == 36 * len(heads)
            for h in set(range(4)) - set(heads):
                block.attn.proj.weight[:, 12 * h:12 * (h + 1)] = 0.0
        example = get_spec(key).example_input()
        assert torch.allclose(model(example), silenced(example), atol=1e-5)


TORCHVISION_VIT = '''
from torchvision.models.vision_transformer import VisionTransformer


def build(num_classes=10):
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                             hidden_dim=48, mlp_dim=96, num_classes=num_classes)
'''


def test_a_multihead_attention_loses_whole_heads_with_the_width_it_computes_in(tmp_path):
    """nn.MultiheadAttention computes in its input's width: torchvision's ViT's embedding
    moves one head (12 channels) at a time, every attention on it keeps that many heads
    of 12 channels, and the pruned model runs, costs what the counter counts and
    exports to ONNX."""
    path = tmp_path / "tv_vit.py"
    path.write_text(TORCHVISION_VIT)
    key = resolve_model(f"{path}:build", "3,32,32").key
    space = PruningSpace.from_data(build_now(key)).with_options(round_to=4)
    i = space.group_names.index("conv_proj")
    assert space.groups[i].heads == 4 and space.steps[i] == 12 and not space.kept
    widths = space.base_widths.copy()
    widths[i] = 24  # two heads of 12
    model = build_model(key).eval()
    with torch.no_grad():  # torchvision starts its classifier at zero: outputs to compare
        torch.nn.init.normal_(model.heads.head.weight, generator=torch.Generator().manual_seed(0))
    prune_to_widths(model, space, widths)
    for layer in model.encoder.layers:
        mha = layer.self_attention
        assert (mha.num_heads, mha.head_dim, mha.embed_dim) == (2, 12, 24)
        assert tuple(mha.in_proj_weight.shape) == (72, 24)
    assert model.hidden_dim == 24
    # One head is a quarter of every layer's width: the uniform candidate still meets a
    # 50 % budget, the coarse group one step up and the MLPs narrower (filling the MLPs
    # back along the uniform ray alone stops at 39 % of the MACs).
    from hdap_engine.pruning.budget import meets_budget, repair

    target = 0.5 * space.base_macs
    assert meets_budget(space.macs(repair(space, np.ones(space.n_groups), target, step_up=True)), target)
    example = get_spec(key).example_input()
    with torch.no_grad():
        out = model(example)
    assert out.shape == (1, 10) and out.abs().max() > 0.1
    assert space.macs(widths) == count_macs_params(model, space)[0] < space.base_macs

    from hdap_engine.export.bundle import export_onnx

    ort = pytest.importorskip("onnxruntime")
    export_onnx(model, example, tmp_path / "tv.onnx")
    got = ort.InferenceSession(str(tmp_path / "tv.onnx")).run(None,
                                                              {"input": example.numpy()})[0]
    assert np.abs(got - out.numpy()).max() <= 1e-4
