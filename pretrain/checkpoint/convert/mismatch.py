"""Is a checkpoint's set of tensors the one a model expects? Errors list the first mismatches."""

from __future__ import annotations

SHOW = 5


class CheckpointMismatchError(ValueError):
    """Keys or shapes of a checkpoint differ from the model it is loaded into."""


def check_compatible(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], what: str
) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or shapes):
        return
    lines = [
        f"{what} does not match the model ({len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(shapes)} with another shape):"
    ]
    lines += [
        f"  shape {k}: checkpoint {tuple(found[k])}, model {tuple(expected[k])}"
        for k in shapes[:SHOW]
    ]
    lines += [
        f"  missing {k}: model {tuple(expected[k])}, not in the checkpoint" for k in missing[:SHOW]
    ]
    lines += [
        f"  unexpected {k}: checkpoint {tuple(found[k])}, not in the model"
        for k in unexpected[:SHOW]
    ]
    raise CheckpointMismatchError("\n".join(lines))
