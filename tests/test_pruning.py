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
        out = model(get_spec(name).example_input())
        assert out.shape == (1, get_spec(name).num_classes)  # classifier untouched


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


def test_a_wrong_candidate_is_refused():
    space = PruningSpace.for_model("resnet56")
    with pytest.raises(HdapError, match="one per group"):
        space.check_widths([8, 8])
    bad = space.base_widths.copy()
    bad[0] = 10_000
    with pytest.raises(HdapError, match="outside"):
        space.check_widths(bad)
