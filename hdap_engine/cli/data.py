"""Dataset commands: `hdap data shapes` writes the synthetic shapes detection dataset."""

from __future__ import annotations

import argparse

from hdap_engine.cli.flags import add_fields
from hdap_engine.options import ShapesOptions


def _cmd_shapes(args: argparse.Namespace) -> int:
    from hdap_engine.data.shapes import write_shapes

    options = ShapesOptions(**{k: getattr(args, k) for k in
                               ("images", "size", "seed", "min_objects", "max_objects")})
    out = write_shapes(args.out, options)
    print(f"wrote {options.images} images ({options.size}x{options.size}, seed "
          f"{options.seed}) and {out / 'annotations.json'} (COCO format)")
    return 0


def register_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make datasets (the synthetic shapes detection demo)")
    topics = p.add_subparsers(dest="data_command", metavar="WHAT", parser_class=type(p))
    topics.required = True
    s = topics.add_parser(
        "shapes", help="write the synthetic shapes detection dataset in COCO format",
        description="Images of circles, squares, triangles and crosses on textured, noisy "
                    "backgrounds, several per image, written as DIR/images/*.png and "
                    "DIR/annotations.json (COCO). The same seed gives the same files.")
    s.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    add_fields(s, ShapesOptions)
    s.set_defaults(func=_cmd_shapes)
