"""Torch-Pruning 1.6.1 under torch 2: what it reads from autograd under torch 1's names.

Installed once, when `groups.torch_pruning` first imports Torch-Pruning; see `install`.
"""

from __future__ import annotations


def install() -> None:
    """Give Torch-Pruning 1.6.1 back what it reads from autograd under torch 1's names.

    It reads a reshape's input size from the autograd node's ``_saved_self_sizes``
    and a chunk's sizes from ``_saved_self_sizes`` too; torch 2 saves
    ``_saved_self_sym_sizes``. Two things break, and are mended here:

    - its reshape mapping applies only to a 1-D or 4-D input, and for a 4-D one
      only when C*H*W equals the next layer's input width (a flatten before a
      classifier). Without the size both guards are skipped: every reshape gets
      a flatten mapping, and where a reshape of attention maps or windows feeds
      back into the same channels (Swin's shifted-window masks and relative
      position bias) the index sets multiply on each pass until memory runs out
      (Swin-T: past 12 GB). The same rule is applied, reading either name;
    - a chunk's sizes are guessed from the layers around it instead of read, and
      a chunk whose outputs reach no layer directly (ShuffleNet's half that
      bypasses its branch) gets sizes that do not add up. They are read from
      the node's ``_saved_split_size`` and the input's size.

    A third, not about names: a concatenation whose inputs' widths cannot be
    inferred gets no mapping (as Torch-Pruning means to do, instead of its
    ``TypeError`` on Swin-S). Groups that a mapping still gets wrong are caught by
    the space's check of forms.
    """
    from torch_pruning import ops
    from torch_pruning.dependency import index_mapping, shape_infer

    original = index_mapping.update_reshape_index_mapping
    if getattr(original, "_hdap_guarded", False):
        return

    def guarded(graph, node):
        grad_fn = node.grad_fn
        size = getattr(grad_fn, "_saved_self_sizes", None)
        if size is None:
            size = getattr(grad_fn, "_saved_self_sym_sizes", None)
        if size is not None:
            if len(size) not in (1, 4):
                return None
            if len(size) == 4:
                width = None
                for n in node.outputs:
                    width = shape_infer.infer_in_channels_recursively(graph, n, [0])
                    if width is not None:
                        break
                if width is not None and int(size[1]) * int(size[2]) * int(size[3]) != width:
                    return None
        return original(graph, node)

    init_shapes = shape_infer.init_shape_information

    def with_chunk_sizes(graph):
        init_shapes(graph)
        for node in graph.module2node.values():
            grad_fn = node.grad_fn
            if (node.type != ops.OPTYPE.SPLIT or hasattr(grad_fn, "_saved_self_sizes")
                    or hasattr(grad_fn, "_saved_split_sizes")):
                continue  # a split_with_sizes, or torch 1: Torch-Pruning read it
            step = getattr(grad_fn, "_saved_split_size", None)
            dim = getattr(grad_fn, "_saved_dim", None)
            whole = getattr(grad_fn, "_saved_self_sym_sizes", None)
            if step is None or dim is None or whole is None or int(dim) % len(whole) != 1:
                continue
            total, step = int(whole[1]), int(step)
            sizes = [min(step, total - k) for k in range(0, total, step)]
            if len(sizes) != len(node.outputs):
                continue  # an output no layer reads: the order is not known
            node.module.split_sizes = sizes
            node.module.offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]

    concat_mapping = index_mapping.update_concat_index_mapping

    def concat_or_none(graph, node):
        try:
            return concat_mapping(graph, node)
        except TypeError:
            # an input's width not inferred (None) before its own "if ch is None: return";
            # Swin-S's channels-last concatenation, past the recursion limit
            return None

    guarded._hdap_guarded = True
    index_mapping.update_reshape_index_mapping = guarded
    index_mapping.update_concat_index_mapping = concat_or_none
    shape_infer.init_shape_information = with_chunk_sizes
