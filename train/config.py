"""Model configuration as a plain dataclass, and the named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

WIDTH_RULES = ("compound", "base")


@dataclass(frozen=True)
class UNetConfig:
    """Everything that decides the U-Net's architecture (and so its state-dict layout).

    ``width_rule`` "compound" multiplies the previous level's width (labml: 64·[1,2,2,4] →
    64/128/256/1024); "base" multiplies the base width (64/128/128/256).
    """

    image_channels: int = 1
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    attention: tuple[bool, ...] = (False, False, True, True)
    blocks_per_resolution: int = 2
    norm_groups: int = 32
    final_norm_groups: int = 8
    dropout: float = 0.1
    width_rule: str = "compound"
    num_classes: int = 0  # > 0: class-conditional, with one more "no class" index for guidance

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention", tuple(bool(a) for a in self.attention))

    @property
    def time_channels(self) -> int:
        return self.base_channels * 4

    def widths(self) -> list[int]:
        """Output channels of each resolution level, highest resolution first."""
        widths, width = [], self.base_channels
        for mult in self.channel_mults:
            width = width * mult if self.width_rule == "compound" else self.base_channels * mult
            widths.append(width)
        return widths

    def problems(self) -> list[str]:
        """Reasons this configuration cannot be built (empty when it can)."""
        found = []
        if self.image_channels < 1:
            found.append("image_channels must be >= 1")
        if self.base_channels < 1:
            found.append("base_channels must be >= 1")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            found.append("channel_mults must be a non-empty list of integers >= 1")
        if len(self.attention) != len(self.channel_mults):
            found.append(
                f"attention has {len(self.attention)} entries but there are "
                f"{len(self.channel_mults)} resolution levels (one per channel multiplier)"
            )
        if self.blocks_per_resolution < 1:
            found.append("blocks_per_resolution must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            found.append("dropout must be in [0, 1)")
        if self.width_rule not in WIDTH_RULES:
            found.append(f"width_rule must be one of {WIDTH_RULES}")
        if self.num_classes < 0:
            found.append("num_classes must be >= 0")
        if self.norm_groups < 1 or self.final_norm_groups < 1:
            found.append("norm groups must be >= 1")
        if not found:
            for width in sorted({self.base_channels, *self.widths()}):
                if width % self.norm_groups:
                    found.append(f"channel width {width} is not divisible by norm_groups={self.norm_groups}")
            if self.base_channels % self.final_norm_groups:
                found.append(
                    f"base_channels {self.base_channels} is not divisible by final_norm_groups={self.final_norm_groups}"
                )
        return found

    def downsamplings(self) -> int:
        return len(self.channel_mults) - 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channel_mults"] = list(self.channel_mults)
        data["attention"] = list(self.attention)
        if not self.num_classes:
            del data["num_classes"]  # unconditional configs read as before
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


PRESETS: dict[str, UNetConfig] = {
    # The seed's network, exactly: 168,896,705 parameters, labml's state-dict layout.
    "labml": UNetConfig(),
    # A few million parameters: clean digits from a 2-core CPU run of an hour or two.
    "small": UNetConfig(
        base_channels=32,
        channel_mults=(1, 2, 2),
        attention=(False, False, True),
        blocks_per_resolution=1,
        norm_groups=8,
        final_norm_groups=8,
        dropout=0.0,  # no dropout: measured better for CPU-length runs (benchmarks/results/recipe-ablation.md)
        width_rule="compound",
    ),
    # For tests: a forward pass in milliseconds.
    "tiny": UNetConfig(
        base_channels=8,
        channel_mults=(1, 2),
        attention=(False, True),
        blocks_per_resolution=1,
        norm_groups=4,
        final_norm_groups=4,
        dropout=0.0,
        width_rule="base",
    ),
}


def preset(name: str, **overrides: Any) -> UNetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
