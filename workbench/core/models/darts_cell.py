"""The DARTS search space (Liu, Simonyan & Yang, 2019), sized for a CPU: a cell of 4 intermediate nodes over
the outputs of the two previous cells, every edge a mixture of five operations (3x3 conv, 3x3 separable conv,
3x3 max pool, skip, zero) weighted by softmax(alpha); a backbone of a few such cells, normal and reduction.

:class:`SearchNetwork` is the continuous relaxation that the search trains; :func:`derive` turns its alphas into a
discrete :class:`Genotype` (each node keeps its two strongest incoming edges, each edge its strongest non-zero
operation, as in the paper); :class:`DiscreteNetwork` is that cell stacked into a network to retrain from scratch;
:func:`random_genotype` draws a cell from the same space (the baseline); :func:`draw_cell` renders a cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The operations of an edge, in the order of alpha's columns; "none" (zero) is never kept in a derived cell.
PRIMITIVES = ("none", "max_pool_3x3", "skip_connect", "conv_3x3", "sep_conv_3x3")
OP_TITLES = {"none": "zero", "max_pool_3x3": "max pool 3x3", "skip_connect": "skip", "conv_3x3": "conv 3x3",
             "sep_conv_3x3": "sep conv 3x3"}
NODES = 4  # intermediate nodes per cell
STEM_MULTIPLIER = 3  # the stem has 3C channels, as in DARTS


def edge_count(nodes: int = NODES) -> int:
    return sum(2 + i for i in range(nodes))  # node i reads the two cell inputs and the i nodes before it


def edge_names(nodes: int = NODES) -> list[str]:
    """'k-2 → 0', 'k-1 → 0', 'k-2 → 1', ... in the order of alpha's rows."""
    return [f"{input_name(j)} → {i}" for i in range(nodes) for j in range(2 + i)]


def input_name(j: int) -> str:
    return ("k-2", "k-1")[j] if j < 2 else str(j - 2)


def reduction_cells(cells: int) -> set[int]:
    """DARTS reduces at a third and two thirds of the depth; the first cell is always a normal one."""
    return {cells // 3, 2 * cells // 3} - {0} if cells >= 2 else set()


# --- operations -------------------------------------------------------------------------------------------------
class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    """Two depthwise-separable 3x3 convolutions, each ReLU-depthwise-pointwise-BN (DARTS' sep_conv)."""

    def __init__(self, c_in: int, c_out: int, stride: int, affine: bool):
        super().__init__(
            nn.ReLU(), nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(), nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride] * 0.0


class MaxPool3x3(nn.Module):
    """3x3 max pooling, padding 1, as two 1-D maxima: several times faster on a CPU than torch's max_pool2d at
    these small sizes, and the same numbers."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
        rows = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
        out = torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])
        return out[:, :, ::self.stride, ::self.stride] if self.stride > 1 else out


class FactorizedReduce(nn.Module):
    """Halves the resolution keeping every pixel: two stride-2 1x1 convolutions, one shifted by a pixel."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # odd sizes: the shifted view keeps the same output size
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def make_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":  # DARTS follows a pool by a parameter-free BN in the search, so scales compare
        pool = MaxPool3x3(stride)
        return pool if affine else nn.Sequential(pool, nn.BatchNorm2d(channels, affine=False))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine)
    if name == "conv_3x3":
        return ReLUConvBN(channels, channels, 3, stride, affine)
    if name == "sep_conv_3x3":
        return SepConv(channels, channels, stride, affine)
    raise ValueError(f"unknown DARTS operation {name!r}; known are {', '.join(PRIMITIVES)}")


class MixedOp(nn.Module):
    """An edge of the relaxed cell: the softmax(alpha)-weighted sum of every operation."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList(make_op(name, channels, stride, affine=False) for name in PRIMITIVES)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self.ops))


# --- cells -----------------------------------------------------------------------------------------------------
class _CellBase(nn.Module):
    def __init__(self, c_pp: int, c_p: int, channels: int, reduction: bool, reduction_prev: bool, affine: bool):
        super().__init__()
        self.reduction = reduction
        self.pre0 = (FactorizedReduce(c_pp, channels, affine) if reduction_prev
                     else ReLUConvBN(c_pp, channels, 1, 1, affine))
        self.pre1 = ReLUConvBN(c_p, channels, 1, 1, affine)


class SearchCell(_CellBase):
    def __init__(self, c_pp, c_p, channels, reduction, reduction_prev):
        super().__init__(c_pp, c_p, channels, reduction, reduction_prev, affine=False)
        self.edges = nn.ModuleList(MixedOp(channels, 2 if reduction and j < 2 else 1)
                                   for i in range(NODES) for j in range(2 + i))

    def forward(self, s0, s1, weights):
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for i in range(NODES):
            states.append(sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)


@dataclass(frozen=True)
class Genotype:
    """A discrete cell pair: per intermediate node two (operation, input) pairs; inputs 0 and 1 are the cells
    k-2 and k-1, input j >= 2 is node j-2. Every intermediate node is concatenated into the output."""

    normal: tuple[tuple[str, int], ...]
    reduce: tuple[tuple[str, int], ...]

    def to_dict(self) -> dict:
        return {"normal": [list(edge) for edge in self.normal], "reduce": [list(edge) for edge in self.reduce]}

    @classmethod
    def from_dict(cls, data: dict) -> "Genotype":
        try:
            cells = [tuple((str(op), int(j)) for op, j in data[key]) for key in ("normal", "reduce")]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a DARTS genotype ({error}): {data!r}") from None
        for cell in cells:
            if len(cell) != 2 * NODES or any(op not in PRIMITIVES[1:] for op, _ in cell):
                raise ValueError(f"a DARTS cell has {2 * NODES} edges of {', '.join(PRIMITIVES[1:])}: {cell!r}")
        return cls(*cells)

    @staticmethod
    def cell_text(cell) -> str:
        return "; ".join(f"{i} = " + " + ".join(f"{OP_TITLES[op]}({input_name(j)})" for op, j in cell[2 * i:2 * i + 2])
                         for i in range(NODES))

    def text(self) -> str:
        return f"normal: {self.cell_text(self.normal)} | reduction: {self.cell_text(self.reduce)}"


class DiscreteCell(_CellBase):
    def __init__(self, cell, c_pp, c_p, channels, reduction, reduction_prev):
        super().__init__(c_pp, c_p, channels, reduction, reduction_prev, affine=True)
        self.inputs = [j for _, j in cell]
        self.ops = nn.ModuleList(make_op(op, channels, 2 if reduction and j < 2 else 1, affine=True)
                                 for op, j in cell)

    def forward(self, s0, s1):
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(NODES):
            states.append(sum(self.ops[e](states[self.inputs[e]]) for e in (2 * i, 2 * i + 1)))
        return torch.cat(states[2:], dim=1)


# --- networks --------------------------------------------------------------------------------------------------
class _Backbone(nn.Module):
    """Stem, cells, global average pooling: ``forward(x)`` gives features [N, out_dim]; ``forward(x, head=True)``
    the linear head's logits when the network has one (``classes`` > 0)."""

    def __init__(self, in_channels: int, channels: int, cells: int, classes: int, make_cell, stem_stride: int):
        super().__init__()
        stem = STEM_MULTIPLIER * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(stem))
        c_pp, c_p, c = stem, stem, channels
        reductions = reduction_cells(cells)
        self.reductions = sorted(reductions)
        self.cells = nn.ModuleList()
        reduction_prev = False
        for index in range(cells):
            reduction = index in reductions
            c = 2 * c if reduction else c
            self.cells.append(make_cell(c_pp, c_p, c, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, NODES * c
        self.out_dim = c_p
        self.head = nn.Linear(c_p, classes) if classes else None

    def features(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, self._cell(cell, s0, s1)
        return F.adaptive_avg_pool2d(s1, 1).flatten(1)

    def forward(self, x, head: bool = False):
        features = self.features(x)
        if head:
            if self.head is None:
                raise ValueError("this network has no linear head (the few-shot task uses prototypes)")
            return self.head(features)
        return features


class SearchNetwork(_Backbone):
    """The relaxed network: shared alphas (``alpha_normal``, ``alpha_reduce``: [edges, operations]) for every
    normal and every reduction cell. ``arch_parameters()`` are the alphas, ``weight_parameters()`` the rest."""

    def __init__(self, in_channels: int = 1, channels: int = 8, cells: int = 3, classes: int = 0,
                 stem_stride: int = 1):
        super().__init__(in_channels, channels, cells, classes, SearchCell, stem_stride)
        shape = (edge_count(), len(PRIMITIVES))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape))  # near-uniform start, as in the paper
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(shape))

    def _cell(self, cell, s0, s1):
        alpha = self.alpha_reduce if cell.reduction else self.alpha_normal
        return cell(s0, s1, alpha.softmax(dim=-1))

    def arch_names(self) -> tuple[str, str]:
        return ("alpha_normal", "alpha_reduce")

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name not in self.arch_names()]

    def op_weights(self) -> dict[str, np.ndarray]:
        """softmax(alpha) per edge, [edges, operations], for the normal and the reduction cell."""
        return {"normal": self.alpha_normal.detach().softmax(-1).cpu().numpy(),
                "reduce": self.alpha_reduce.detach().softmax(-1).cpu().numpy()}

    def genotype(self) -> Genotype:
        weights = self.op_weights()
        return Genotype(derive(weights["normal"]), derive(weights["reduce"]))


class DiscreteNetwork(_Backbone):
    """A derived (or random) cell stacked like the search network, with affine batch norm, trained from scratch."""

    def __init__(self, genotype: Genotype, in_channels: int = 1, channels: int = 16, cells: int = 3,
                 classes: int = 0, stem_stride: int = 1):
        def make_cell(c_pp, c_p, c, reduction, reduction_prev):
            cell = genotype.reduce if reduction else genotype.normal
            return DiscreteCell(cell, c_pp, c_p, c, reduction, reduction_prev)

        super().__init__(in_channels, channels, cells, classes, make_cell, stem_stride)
        self.genotype = genotype

    def _cell(self, cell, s0, s1):
        return cell(s0, s1)


def derive(weights: np.ndarray) -> tuple[tuple[str, int], ...]:
    """The paper's discretization: for each node, the two incoming edges whose strongest non-zero operation
    weighs most, each with that operation."""
    weights = np.asarray(weights)
    zero = PRIMITIVES.index("none")
    cell, offset = [], 0
    for i in range(NODES):
        rows = weights[offset:offset + 2 + i]
        strength = [max(w for k, w in enumerate(row) if k != zero) for row in rows]
        for j in sorted(sorted(range(2 + i), key=lambda j: -strength[j])[:2]):
            best = max((k for k in range(len(PRIMITIVES)) if k != zero), key=lambda k: rows[j][k])
            cell.append((PRIMITIVES[best], j))
        offset += 2 + i
    return tuple(cell)


def random_genotype(seed: int) -> Genotype:
    """A cell pair drawn uniformly from the same space: per node two distinct inputs, each a non-zero operation."""
    rng = np.random.default_rng(seed)

    def cell():
        edges = []
        for i in range(NODES):
            for j in sorted(rng.choice(2 + i, size=2, replace=False)):
                edges.append((PRIMITIVES[1 + int(rng.integers(len(PRIMITIVES) - 1))], int(j)))
        return tuple(edges)

    return Genotype(cell(), cell())


def stem_stride(image_size: int) -> int:
    """Images of 24 pixels or more start at half resolution: a quarter of the search's cost on a CPU."""
    return 2 if image_size >= 24 else 1


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- drawing ---------------------------------------------------------------------------------------------------
OP_COLOURS = {"max_pool_3x3": (230, 120, 20), "skip_connect": (110, 110, 110), "conv_3x3": (40, 90, 200),
              "sep_conv_3x3": (30, 150, 70)}
OP_SHORT = {"max_pool_3x3": "pool", "skip_connect": "skip", "conv_3x3": "conv", "sep_conv_3x3": "sep"}


def _node_positions(size: int) -> dict[int, tuple[float, float]]:
    """Inputs on the left, the four nodes zig-zagging rightwards, the output on the right (pixels), between the
    title and the legend (two rows of it in small drawings)."""
    unit = size / 100.0
    top, bottom = (17, 80) if size >= 200 else (20, 68)
    spots = {0: (9, 22), 1: (9, 68), 2: (33, 12), 3: (45, 80), 4: (60, 30), 5: (74, 66), "out": (91, 45)}
    return {key: (x * unit, (top + (y - 12) * (bottom - top) / 68) * unit) for key, (x, y) in spots.items()}


def draw_cell(cell, title: str = "", size: int = 128) -> np.ndarray:
    """A derived cell as an RGB image [size, size, 3] in [0, 1]: nodes as circles, each kept edge an arrow coloured
    (and, from 200 pixels, labelled) by its operation, the concatenation into the output in light grey, a legend
    beneath. 128 pixels by default: the size the image-grid view shows, so its text is drawn, not shrunk."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, size // 22))
    position = _node_positions(size)
    radius = size * 0.055
    for node in range(2, 2 + NODES):  # concatenation edges first: under everything
        draw.line([position[node], position["out"]], fill=(205, 205, 205), width=max(1, size // 128))
    for edge, (op, j) in enumerate(cell):
        _arrow(draw, position[j], position[2 + edge // 2], radius, OP_COLOURS[op], max(2, size // 64))
    for edge, (op, j) in enumerate(cell if size >= 200 else ()):  # small drawings: colours and the legend only
        (x0, y0), (x1, y1) = position[j], position[2 + edge // 2]
        label_at = (x0 + 0.55 * (x1 - x0), y0 + 0.55 * (y1 - y0))
        draw.text(label_at, OP_SHORT[op], fill=OP_COLOURS[op], font=font, anchor="mm", stroke_width=2,
                  stroke_fill=(255, 255, 255))
    for key, (x, y) in position.items():
        name = "out" if key == "out" else input_name(key)
        fill = (250, 235, 200) if key in (0, 1) else (225, 235, 250) if key != "out" else (235, 235, 235)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(40, 40, 40))
        draw.text((x, y), name, fill=(0, 0, 0), font=font, anchor="mm")
    if title:
        draw.text((size / 2, size * 0.01), title, fill=(0, 0, 0), font=font, anchor="ma")
    _legend(draw, size, font)
    return np.asarray(image, dtype=np.float32) / 255.0


def _arrow(draw, start, end, radius: float, colour, width: int) -> None:
    (x0, y0), (x1, y1) = start, end
    length = max(float(np.hypot(x1 - x0, y1 - y0)), 1e-6)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    a = (x0 + ux * radius, y0 + uy * radius)
    b = (x1 - ux * radius, y1 - uy * radius)
    draw.line([a, b], fill=colour, width=width)
    head = 2.2 * radius / 2
    left = (b[0] - ux * head - uy * head * 0.6, b[1] - uy * head + ux * head * 0.6)
    right = (b[0] - ux * head + uy * head * 0.6, b[1] - uy * head - ux * head * 0.6)
    draw.polygon([b, left, right], fill=colour)


def _legend(draw, size: int, font) -> None:
    per_row = len(OP_SHORT) if size >= 200 else 2
    step = size / per_row
    for index, (op, short) in enumerate(OP_SHORT.items()):
        rows_below = (len(OP_SHORT) - 1) // per_row - index // per_row
        y = size * 0.95 - rows_below * size * 0.08
        x = step * (index % per_row) + size * 0.03
        box = size * 0.04
        draw.rectangle([x, y - box / 2, x + box, y + box / 2], fill=OP_COLOURS[op])
        draw.text((x + box * 1.4, y), short, fill=(0, 0, 0), font=font, anchor="lm")
