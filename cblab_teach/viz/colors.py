"""One colour per request, the same in every view of a run.

The colour is a function of the request id alone (not of which requests a view
happens to show), so request 3 is the same colour in the budget bar, the mask,
the block map and the timeline.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

# plotly's "Dark24" then "Light24" qualitative palettes: 48 distinct colours
PALETTE: tuple[str, ...] = (
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86",
    "#EB663B", "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE",
    "#862A16", "#A777F1", "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038",
    "#FD3216", "#00FE35", "#6A76FC", "#FED4C4", "#FE00CE", "#0DF9FF", "#F6F926", "#FF9616",
    "#479B55", "#EEA6FB", "#DC587D", "#D626FF", "#6E899C", "#00B5F7", "#B68E00", "#C9FBE5",
    "#FF0092", "#22FFA7", "#E3EE9E", "#86CE00", "#BC7196", "#7E7DCD", "#FC6955", "#E48F72",
)  # fmt: skip
FREE_COLOR = "#e8e8e8"
UNUSED_COLOR = "#d0d0d0"
WAITING_COLOR = "#bdbdbd"
PADDING_COLOR = "#7f7f7f"


def request_color(request_id: Hashable) -> str:
    """The colour of one request (ints index the palette; anything else is hashed stably)."""
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        index = request_id
    else:
        index = sum(ord(ch) * 31**i for i, ch in enumerate(str(request_id)))
    return PALETTE[index % len(PALETTE)]


def request_colors(ids: Iterable[Hashable]) -> dict:
    """``{request id: css colour}`` for every id given."""
    return {rid: request_color(rid) for rid in ids}


def lighten(color: str, amount: float = 0.55) -> str:
    """Mix a ``#rrggbb`` colour with white: the pale twin used for cached keys and part-filled blocks."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    mix = [round(c + (255 - c) * amount) for c in (r, g, b)]
    return "#{:02x}{:02x}{:02x}".format(*mix)


def discrete_colorscale(colors: list[str]) -> list[list]:
    """A heatmap colorscale where integer ``z = i`` (with ``zmin=-0.5, zmax=len-0.5``) shows ``colors[i]``."""
    n = len(colors)
    if n == 1:
        return [[0.0, colors[0]], [1.0, colors[0]]]
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale
