"""Command-line options of the runners."""


def add_options(parser, **defaults) -> None:
    """One ``--name`` option per keyword (underscores become dashes), typed by its default:
    ``add_options(parser, seq_len=1024, lr=1e-3)`` adds ``--seq-len`` (int) and ``--lr`` (float).
    A list default takes one or more values of its first element's type."""
    for name, default in defaults.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, list):
            parser.add_argument(flag, type=type(default[0]), nargs="+", default=default, help=f"default {default}")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"default {default}")


__all__ = ["add_options"]
