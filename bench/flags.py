"""The benchmarks' own --name=value flags, next to --config and --config.KEY overrides."""

from __future__ import annotations


def parse_flags(rest: list[str], defaults: dict[str, str]) -> dict[str, str]:
    """`defaults` updated from `rest`; an unknown flag stops with the list of known ones."""
    opts = dict(defaults)
    for arg in rest:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in opts:
            raise SystemExit(f"unknown flag {arg}; flags: --config=..., --config.KEY=..., "
                             f"{', '.join('--' + k for k in opts)}")
        opts[key] = value
    return opts
