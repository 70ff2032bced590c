"""Channel shuffles written out as reshapes, found while a forward pass is recorded."""

from __future__ import annotations

import torch


class ShuffleTracker:
    """Finds channel shuffles written out as reshapes, as ShuffleNet writes them:
    ``x.view(b, g, c // g, h, w)``, ``.transpose(1, 2)`` and a reshape back to
    ``x``'s shape. Its channel order is permuted across ``g`` parts, which neither
    Torch-Pruning's index mappings nor the recording's forms can follow."""

    def __init__(self):
        self.state: dict[int, tuple[torch.Tensor, str]] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while tracking

    def _mark(self, out: torch.Tensor, src: torch.Tensor, stage: str) -> None:
        self.keep.append(out)
        self.state[id(out)] = (src, stage)

    def step(self, fname: str, args, out) -> torch.Tensor | None:
        """The tensor that was shuffled when ``out`` completes a shuffle, else None."""
        if (not isinstance(out, torch.Tensor) or not args
                or not isinstance(args[0], torch.Tensor)):
            return None
        x = args[0]
        src = self.state.get(id(x))
        if fname in ("view", "reshape"):
            if src is None:
                if (x.dim() == 4 and out.dim() == 5 and out.shape[0] == x.shape[0]
                        and out.shape[1] > 1 and out.shape[1] * out.shape[2] == x.shape[1]
                        and tuple(out.shape[3:]) == tuple(x.shape[2:])):
                    self._mark(out, x, "split")
            elif src[1] == "swapped" and tuple(out.shape) == tuple(src[0].shape):
                return src[0]
        elif src is not None and src[1] == "split" and fname in ("transpose", "swapaxes"):
            if sorted(int(d) % 5 for d in args[1:3]) == [1, 2]:
                self._mark(out, src[0], "swapped")
        elif src is not None and src[1] == "split" and fname == "permute":
            dims = args[1:] if len(args) > 2 else args[1:2]
            dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) \
                else list(dims)
            if [int(d) % 5 for d in dims] == [0, 2, 1, 3, 4]:
                self._mark(out, src[0], "swapped")
        elif src is not None and fname in ("contiguous", "clone"):
            self._mark(out, *src)
        return None


SHUFFLE_FN = {"channel_shuffle", "native_channel_shuffle"}
