"""SynthTalk portraits: a procedural renderer of stylised talking heads, with ground truth.

Shapes are signed-distance fields evaluated with torch on pixel grids (anti-aliased over one pixel) and
composited as premultiplied RGBA. For speed a clip is rendered in layers: the background, the body and the
parts of the head that do not move relative to it (ears, face with shading, nose, hair, glasses) are drawn
once; per frame only the eyes (blinks, expression), brows and mouth are drawn, each in a box that bounds it.
The head is warped by the pose (roll, yaw, pitch as an affine warp with parallax for the inner features)
from the one static canvas for all frames of a batch, the patches of the image that can see an eye or the
mouth are warped again from small per-frame canvases holding them, and the head is laid over the body, all
inside the box the head can reach. Every shortcut is exact: the picture is what drawing and warping the
whole canvas per frame gives (tests/fixtures/portrait_reference.npz holds frames of that renderer).
Coordinates: x right, y down, both in [-1, 1] over the image.
"""
from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.motion import FaceState

Colour = tuple[float, float, float]  # RGB in [0, 1]
Num = float | torch.Tensor  # a number, or one per frame [T, 1, 1]

HAIR_STYLES = ("bald", "short", "long", "bun", "fringe", "curly")
GLASSES = ("none", "round", "square")
COLLARS = ("round", "v", "shirt")
BACKGROUNDS = ("flat", "gradient", "room", "bokeh")
EYE_COLOURS = ((0.33, 0.2, 0.1), (0.18, 0.35, 0.6), (0.25, 0.45, 0.25), (0.45, 0.33, 0.2), (0.2, 0.2, 0.22),
               (0.5, 0.55, 0.6))
HAIR_COLOURS = ((0.1, 0.07, 0.05), (0.3, 0.18, 0.08), (0.55, 0.35, 0.15), (0.85, 0.7, 0.4), (0.6, 0.2, 0.08),
                (0.75, 0.75, 0.75), (0.22, 0.22, 0.25), (0.45, 0.3, 0.5))
SKIN_TONES = ((1.0, 0.87, 0.77), (0.98, 0.8, 0.68), (0.93, 0.74, 0.6), (0.87, 0.66, 0.5), (0.78, 0.57, 0.42),
              (0.68, 0.48, 0.34), (0.58, 0.4, 0.28), (0.47, 0.32, 0.22), (0.38, 0.25, 0.17), (0.3, 0.2, 0.14))
FRAME_COLOURS = ((0.1, 0.1, 0.1), (0.5, 0.3, 0.15), (0.75, 0.7, 0.6), (0.6, 0.1, 0.15))


# ----------------------------------------------------------------------------- identity

@dataclass(frozen=True)
class Identity:
    """Everything that makes one person. Discrete choices are indices into the tables above."""

    skin: int
    skin_jitter: float  # -1..1, lighter/darker within the tone
    face_width: float  # 0..1
    jaw: float  # 0 round .. 1 narrow chin
    eye_colour: int
    eye_size: float  # 0..1
    eye_spacing: float  # 0..1
    brow_thickness: float  # 0..1
    nose_size: float  # 0..1
    lip_thickness: float  # 0..1
    mouth_width: float  # 0..1
    lip_tint: float  # 0..1, pale .. red
    hair_style: int
    hair_colour: int
    hair_volume: float  # 0..1
    glasses: int
    frame_colour: int
    earrings: int  # 0/1
    collar: int
    cloth_hue: float  # 0..1
    cloth_value: float  # 0..1
    background: int
    bg_hue: float  # 0..1
    bg_value: float  # 0..1
    light: float  # -1..1, light from the left .. right

    @staticmethod
    def sample(rng: np.random.Generator) -> "Identity":
        u = lambda: float(rng.random())  # noqa: E731
        pick = lambda seq: int(rng.integers(len(seq)))  # noqa: E731
        drawn = Identity(pick(SKIN_TONES), u() * 2 - 1, u(), u(), pick(EYE_COLOURS), u(), u(), u(), u(), u(), u(), u(),
                        pick(HAIR_STYLES), pick(HAIR_COLOURS), u(), pick(GLASSES), pick(FRAME_COLOURS),
                        int(rng.random() < 0.3), pick(COLLARS), u(), u(), pick(BACKGROUNDS), u(), u(), u() * 2 - 1)
        return Identity.from_vector(drawn.vector())  # float32-exact, so vectors round-trip

    def vector(self) -> np.ndarray:
        return np.array(astuple(self), np.float32)

    @staticmethod
    def from_vector(v: np.ndarray) -> "Identity":
        kinds = [f.type for f in fields(Identity)]
        return Identity(*(int(round(float(x))) if k in (int, "int") else float(x)  # type: ignore[arg-type]
                          for x, k in zip(v, kinds)))

    @staticmethod
    def distinct_count() -> int:
        """Identities that differ in at least one discrete choice (continuous parameters not counted)."""
        return (len(SKIN_TONES) * len(EYE_COLOURS) * len(HAIR_STYLES) * len(HAIR_COLOURS) * len(GLASSES)
                * len(FRAME_COLOURS) * 2 * len(COLLARS) * len(BACKGROUNDS))


IDENTITY_DIM = len(fields(Identity))


# ----------------------------------------------------------------------------- drawing helpers

def _grid(size: int, box: tuple[float, float, float, float] = (-1, 1, -1, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates of the part of the image inside box (x0, x1, y0, y1): X, Y [h, w]."""
    step = 2 / size
    xs = torch.arange(size) * step - 1 + step / 2
    x = xs[(xs >= box[0]) & (xs <= box[1])]
    y = xs[(xs >= box[2]) & (xs <= box[3])]
    return x[None, :].expand(len(y), -1), y[:, None].expand(-1, len(x))


def _box_slices(size: int, box: tuple[float, float, float, float]) -> tuple[slice, slice]:
    step = 2 / size
    idx = lambda lo, hi: slice(int(np.ceil((lo + 1) / step - 0.5)), int(np.floor((hi + 1) / step - 0.5)) + 1)  # noqa: E731
    return idx(box[2], box[3]), idx(box[0], box[1])


def ellipse(x: torch.Tensor, y: torch.Tensor, cx: Num, cy: Num, rx: Num, ry: Num) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse (negative inside), in coordinate units."""
    k = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return (k - 1) * torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry))


def cover(d: torch.Tensor, size: int) -> torch.Tensor:
    """Coverage in [0, 1] of a shape with signed distance d, anti-aliased over one pixel: 0.5 - d size / 2."""
    return (d * (-size / 2)).add_(0.5).clamp_(0, 1)


def over(canvas: torch.Tensor, rgb: Sequence[float] | torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Lay a colour (3-vector or [..., 3, h, w]) with coverage alpha [..., h, w] over a premultiplied RGBA
    canvas [..., 4, h, w], in place where shapes allow; returns the canvas. Premultiplied "over" of an opaque
    colour is a blend towards (r, g, b, 1) by the coverage, so it is one lerp."""
    a = alpha.unsqueeze(-3)
    if canvas.shape[:-3] != torch.broadcast_shapes(canvas.shape[:-3], a.shape[:-3]):
        canvas = canvas.expand(*a.shape[:-3], *canvas.shape[-3:]).clone()
    if isinstance(rgb, torch.Tensor) and rgb.ndim > 1:  # a colour per pixel
        target = torch.cat([rgb, torch.ones_like(rgb[..., :1, :, :])], -3)
    else:
        target = torch.tensor([*rgb, 1.0])[:, None, None]
    return canvas.lerp_(target, a)


def _tone(rgb: Sequence[float], factor: float) -> Colour:
    return tuple(float(np.clip(c * factor, 0, 1)) for c in rgb)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- static layers

def _background(ident: Identity, size: int) -> torch.Tensor:
    x, y = _grid(size)
    base = torch.tensor(colorsys.hsv_to_rgb(ident.bg_hue, 0.35, 0.35 + 0.5 * ident.bg_value))
    kind = BACKGROUNDS[ident.background]
    img = base[:, None, None].expand(3, size, size).clone()
    if kind == "gradient":
        img = img * (1.15 - 0.35 * (y + 1) / 2)
    elif kind == "room":
        floor = (y > 0.55).float()
        img = img * (1 - 0.35 * floor)
        window = cover(torch.maximum((x + 0.55).abs() - 0.25, (y + 0.45).abs() - 0.3), size)
        img = img * (1 - window) + torch.tensor([0.85, 0.9, 0.95])[:, None, None] * window
    elif kind == "bokeh":
        rng = np.random.default_rng(int(ident.bg_hue * 1e6))
        for _ in range(7):
            cx, cy, r = rng.uniform(-1, 1), rng.uniform(-1, 0.5), rng.uniform(0.08, 0.22)
            blob = torch.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (r * r)))
            img = img + 0.25 * blob * torch.tensor(colorsys.hsv_to_rgb(rng.random(), 0.3, 1.0))[:, None, None]
    return torch.cat([img.clamp(0, 1), torch.ones(1, size, size)])


def _body(ident: Identity, size: int, skin: Colour) -> torch.Tensor:
    x, y = _grid(size)
    layer = torch.zeros(4, size, size)
    neck = cover(torch.maximum(x.abs() - 0.19, (y - 0.8).abs() - 0.4), size)
    layer = over(layer, _tone(skin, 0.85), neck)
    cloth = torch.tensor(colorsys.hsv_to_rgb(ident.cloth_hue, 0.55, 0.25 + 0.6 * ident.cloth_value))
    shoulders = cover(ellipse(x, y, 0, 1.45, 1.0, 0.7), size)
    collar = COLLARS[ident.collar]
    if collar == "v":
        cut = cover(x.abs() - 0.8 * (1.02 - y), size)  # a triangle opening upwards, apex at y = 1.02
        shoulders = shoulders * (1 - cut)
    elif collar == "round":
        shoulders = shoulders * (1 - cover(ellipse(x, y, 0, 0.8, 0.22, 0.12), size))
    shade = 1.0 - 0.25 * ((x - 0.4 * ident.light).abs())
    layer = over(layer, cloth[:, None, None] * shade, shoulders)
    if collar == "shirt":  # a light collar band around the neck
        band = cover((ellipse(x, y, 0, 0.8, 0.26, 0.1)).abs() - 0.025, size) * (y > 0.74).float()
        layer = over(layer, (0.95, 0.95, 0.93), band * shoulders)
    return layer


def _head(ident: Identity, size: int,
          skin: Colour) -> tuple[tuple[Colour, torch.Tensor], torch.Tensor, torch.Tensor, dict]:
    """Static head layers in head-local coordinates: behind (hair at the back, one colour: that colour and its
    coverage [S, S]), face (ears, skin, nose), front (hair in front, glasses); and the feature geometry the
    per-frame parts need."""
    x, y = _grid(size)
    fw = 0.42 + 0.1 * ident.face_width
    fh = 0.58
    g = {"face_w": fw, "face_h": fh, "cy": -0.12, "eye_y": -0.17, "eye_dx": 0.15 + 0.05 * ident.eye_spacing,
         "eye_r": 0.055 + 0.02 * ident.eye_size, "mouth_y": 0.2, "mouth_w": 0.12 + 0.04 * ident.mouth_width,
         "lip": 0.018 + 0.018 * ident.lip_thickness}
    cy = g["cy"]
    hair = HAIR_COLOURS[ident.hair_colour]
    style = HAIR_STYLES[ident.hair_style]
    vol = 1 + 0.12 * ident.hair_volume
    behind = torch.zeros(size, size)
    if style == "long":
        behind = cover(torch.maximum(ellipse(x, y, 0, cy + 0.25, fw * 1.35 * vol, 0.85), y - 0.75), size)
    # face outline: an ellipse whose half-width narrows towards the chin
    yy = ((y - cy) / fh).clamp(-1, 1)
    half_w = fw * (1 - (0.18 + 0.22 * ident.jaw) * yy.clamp(min=0) ** 2)
    d_face = (torch.sqrt((x / half_w) ** 2 + ((y - cy) / fh) ** 2) - 1) * fw
    face = torch.zeros(4, size, size)
    for side in (-1, 1):
        face = over(face, _tone(skin, 0.9), cover(ellipse(x, y, side * fw * 0.98, cy - 0.02, 0.07, 0.12), size))
    # Lambert shading from an ellipsoid normal, light from the upper left or right
    nz = (1 - (x / half_w) ** 2 - ((y - cy) / fh) ** 2).clamp(min=0).sqrt()
    light = np.array([0.5 * ident.light, -0.4, 0.8])
    light /= np.linalg.norm(light)
    lam = (light[0] * x / half_w + light[1] * (y - cy) / fh + light[2] * nz).clamp(min=0)
    skin_t = torch.tensor(skin)[:, None, None]
    shaded = skin_t * (0.62 + 0.45 * lam)
    blush = torch.exp(-(((x.abs() - fw * 0.55) / 0.1) ** 2 + ((y - 0.05) / 0.07) ** 2))
    shaded = shaded * (1 - 0.12 * blush) + torch.tensor([0.9, 0.4, 0.4])[:, None, None] * 0.12 * blush
    face = over(face, shaded.clamp(0, 1), cover(d_face, size))
    # nose: a soft shadow on the lit side's opposite, nostrils, a highlight on the tip
    ns = 0.8 + 0.4 * ident.nose_size
    shade_x = (float(-np.sign(ident.light)) or 1.0) * 0.025 * ns
    ridge = torch.exp(-(((x - shade_x) / (0.025 * ns)) ** 2) - ((y - 0.0) / (0.12 * ns)) ** 2)
    face = over(face, _tone(skin, 0.7), 0.35 * ridge * (face[3] > 0.5).float())
    for s in (-1, 1):
        face = over(face, _tone(skin, 0.45), cover(ellipse(x, y, s * 0.035 * ns, 0.09, 0.018 * ns, 0.011 * ns), size))
    face = over(face, (1.0, 1.0, 1.0), 0.25 * torch.exp(-((x / 0.02) ** 2) - (((y - 0.06) / 0.02) ** 2)))
    front = torch.zeros(4, size, size)
    top = y - (cy - fh * 0.55)  # below the hairline
    cap = cover(torch.maximum(ellipse(x, y, 0, cy - 0.08, fw * 1.08 * vol, fh * 1.0 * vol), top), size)
    hair_shade = torch.tensor(hair)[:, None, None] * (0.8 + 0.35 * (1 - ((x / fw) ** 2)).clamp(0, 1))
    if style in ("short", "long", "bun", "fringe", "curly"):
        if style == "curly":
            bumps = 0.03 * torch.sin(12 * torch.atan2(y - cy, x)) * vol
            cap = cover(torch.maximum(ellipse(x, y, 0, cy - 0.08, fw * 1.12 * vol, fh * 1.02 * vol) + bumps, top), size)
        front = over(front, hair_shade.clamp(0, 1), cap)
    if style == "bun":
        front = over(front, hair_shade.clamp(0, 1), cover(ellipse(x, y, 0, cy - fh * 1.12, 0.15, 0.12), size))
    if style == "fringe":
        wave = 0.025 * torch.sin(x * 40)
        bangs = cover(torch.maximum(ellipse(x, y, 0, cy - 0.1, fw * 1.02, fh * 0.95), y - (g["eye_y"] - 0.1) - wave), size)
        front = over(front, hair_shade.clamp(0, 1), bangs)
    glasses = GLASSES[ident.glasses]
    if glasses != "none":
        colour = FRAME_COLOURS[ident.frame_colour]
        r = g["eye_r"] * 1.9
        for s in (-1, 1):
            cx = s * g["eye_dx"]
            if glasses == "round":
                d = ellipse(x, y, cx, g["eye_y"], r, r * 0.85)
            else:
                d = torch.maximum((x - cx).abs() - r, (y - g["eye_y"]).abs() - r * 0.7) - 0.0
            front = over(front, (0.85, 0.9, 1.0), 0.12 * cover(d, size))
            front = over(front, colour, cover(d.abs() - 0.008, size))
        bridge = torch.maximum(x.abs() - (g["eye_dx"] - r), (y - g["eye_y"] + 0.02).abs() - 0.007)
        front = over(front, colour, cover(bridge, size))
    if ident.earrings:
        for s in (-1, 1):
            front = over(front, (0.95, 0.8, 0.3), cover(ellipse(x, y, s * fw * 0.98, cy + 0.12, 0.022, 0.022), size))
    return (_tone(hair, 0.8), behind), face, front, g


# ----------------------------------------------------------------------------- per-frame parts
#
# The eyes and the mouth change every frame, so they are drawn only inside boxes that bound them. A shape of
# signed distance d covers nothing where d >= 1/size (half a pixel; see `cover`), so a box is the shape's
# extent grown by that reach and by the frames' parallax shifts, plus a pixel, and clipped to the part's
# fixed frame in the head (features that slide past it are cut there). Outside its box a part is exactly
# zero, so boxes change no pixel. For `ellipse`, d = (k - 1) min(rx, ry) < reach means k < 1 + reach /
# min(rx, ry), so the shape stays within k rx of its centre across and k ry along.

EXPR_BROW = {0: (0.0, 0.0), 1: (0.02, 0.0), 2: (0.01, 0.06), 3: (0.07, 0.0), 4: (-0.03, -0.08)}  # raise, tilt
EXPR_EYE = {0: 1.0, 1: 0.8, 2: 0.9, 3: 1.3, 4: 0.85}  # eye opening
EXPR_SMILE = {0: 0.0, 1: 1.0, 2: -0.8, 3: 0.0, 4: -0.4}  # mouth corner curvature
EXPR_OPEN = {0: 0.0, 1: 0.05, 2: 0.0, 3: 0.25, 4: 0.0}  # extra jaw drop


PARALLAX = (0.3, 0.25)  # inner features move this far (head-local units per radian of yaw, pitch) past the outline

Box = tuple[slice, slice]  # rows, cols of a size×size canvas


def _centres(size: int) -> torch.Tensor:
    """Pixel-centre coordinates along either axis [size], the values `_grid` uses."""
    step = 2 / size
    return torch.arange(size) * step - 1 + step / 2


def _span(lo: float, hi: float, size: int, within: slice) -> slice:
    """Indices of the pixels whose centres may lie in [lo, hi], one more on each side, clipped to `within`."""
    step = 2 / size
    start = max(int(np.floor((lo + 1) / step - 0.5)) - 1, within.start)
    stop = min(int(np.ceil((hi + 1) / step - 0.5)) + 2, within.stop)
    return slice(start, max(stop, start))


def _union(a: Box, b: Box) -> Box:
    return (slice(min(a[0].start, b[0].start), max(a[0].stop, b[0].stop)),
            slice(min(a[1].start, b[1].start), max(a[1].stop, b[1].stop)))


def _union_all(boxes: list[Box]) -> Box:
    out = boxes[0]
    for box in boxes[1:]:
        out = _union(out, box)
    return out


def _clip(box: Box, outer: Box) -> Box:
    rows = slice(max(box[0].start, outer[0].start), min(box[0].stop, outer[0].stop))
    cols = slice(max(box[1].start, outer[1].start), min(box[1].stop, outer[1].stop))
    return slice(rows.start, max(rows.stop, rows.start)), slice(cols.start, max(cols.stop, cols.start))


def _meets(a: Box, b: Box) -> bool:
    return not _empty(_clip(a, b))


def _within(box: Box, outer: Box) -> Box:
    """box in the coordinates of outer, which contains it."""
    return (slice(box[0].start - outer[0].start, box[0].stop - outer[0].start),
            slice(box[1].start - outer[1].start, box[1].stop - outer[1].start))


def _empty(box: Box) -> bool:
    return box[0].stop <= box[0].start or box[1].stop <= box[1].start


class _Shift:
    """The frames' parallax shifts: per frame [T, 1, 1] tensors and their ranges, for boxes."""

    def __init__(self, state: FaceState):
        self.dx = torch.as_tensor(state.yaw, dtype=torch.float32)[:, None, None] * PARALLAX[0]
        self.dy = torch.as_tensor(state.pitch, dtype=torch.float32)[:, None, None] * PARALLAX[1]
        self.x_range = (float(self.dx.min()), float(self.dx.max()))
        self.y_range = (float(self.dy.min()), float(self.dy.max()))

    def box(self, x0: float, x1: float, y0: float, y1: float, size: int, within: Box) -> Box:
        """Pixels a shape within (x0, x1, y0, y1) in shifted coordinates may touch in any frame."""
        return (_span(y0 + self.y_range[0], y1 + self.y_range[1], size, within[0]),
                _span(x0 + self.x_range[0], x1 + self.x_range[1], size, within[1]))

    def grid(self, xs: torch.Tensor, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
        """Shifted coordinates of the box's pixel centres: x [T, 1, w], y [T, h, 1] (they broadcast to
        [T, h, w])."""
        return xs[box[1]][None, None, :] - self.dx, xs[box[0]][None, :, None] - self.dy


def _per_frame(table: dict, expression: np.ndarray, column: int | None = None) -> torch.Tensor:
    values = [table[int(e)] if column is None else table[int(e)][column] for e in expression]
    return torch.tensor(values)[:, None, None]


def _eyes(ident: Identity, g: dict, size: int, state: FaceState, skin: Colour, xs: torch.Tensor,
          shift: _Shift) -> list[tuple[torch.Tensor, Box]]:
    """Eyes with lids and brows for T frames: premultiplied RGBA layers [T, 4, h, w] and the head-canvas boxes
    they fill (one per eye, or one for both where their boxes meet)."""
    frame = _box_slices(size, (-g["eye_dx"] - 0.22, g["eye_dx"] + 0.22, g["eye_y"] - 0.28, g["eye_y"] + 0.16))
    T = len(state.blink)
    strength = torch.as_tensor(state.expression_strength, dtype=torch.float32)[:, None, None]
    opening = 1 + (_per_frame(EXPR_EYE, state.expression) - 1) * strength
    blink = torch.as_tensor(state.blink, dtype=torch.float32)[:, None, None]
    brow_raise = _per_frame(EXPR_BROW, state.expression, 0) * strength
    brow_tilt = _per_frame(EXPR_BROW, state.expression, 1) * strength
    hair = HAIR_COLOURS[ident.hair_colour]
    r, cy = g["eye_r"], g["eye_y"]
    ry = r * 0.62 * opening  # [T, 1, 1]
    # extents about the eye centre: the socket shadow (the almond grown by 0.006) bounds every shape of the
    # eye; the brow arc, above it, gets a box of its own
    reach = 1 / size
    ry_n = ry.flatten().double().numpy()
    k = 1 + (0.006 + reach) / np.minimum(r * 1.25, ry_n)
    ex, ey = float((r * 1.25 * k).max()), float((ry_n * k).max())
    thick = 0.008 + 0.012 * ident.brow_thickness
    kb = 1 + (thick + reach) / min(r * 1.6, 0.06)
    bw = r * 1.5 + reach
    b0 = cy - r * 1.9 - brow_raise.flatten().double().numpy()
    tilt = np.abs(brow_tilt.flatten().double().numpy()) * bw
    brow_y = (float((b0 - tilt).min()) + 0.04 - 0.06 * kb, float((b0 + tilt).max()) + reach)
    parts = []
    for s in (-1, 1):
        cx = s * g["eye_dx"]
        eye = shift.box(cx - ex, cx + ex, cy - ey, cy + ey, size, frame)
        brow = shift.box(cx - bw, cx + bw, *brow_y, size, frame)
        parts.append((s, eye, brow))
    boxes = [_union(p[1], p[2]) for p in parts]
    if boxes[0][1].stop > boxes[1][1].start:  # the eyes' boxes meet: draw both in one layer, in order
        boxes = [_union(*boxes)]
        groups = [parts]
    else:
        groups = [[p] for p in parts]
    out = []
    for box, group in zip(boxes, groups):
        layer = torch.zeros(T, 4, box[0].stop - box[0].start, box[1].stop - box[1].start)
        for s, eye, brow in group:
            cx = s * g["eye_dx"]
            if not _empty(eye):
                x, y = shift.grid(xs, eye)
                view = layer[(slice(None), slice(None)) + _within(eye, box)]
                almond = ellipse(x, y, cx, cy, r * 1.25, ry)
                lid = cy - ry + 2 * ry * blink  # the upper lid comes down as the eye closes
                visible = torch.maximum(almond, lid - y)
                over(view, _tone(skin, 0.8), cover(almond - 0.006, size))  # eye socket shadow
                over(view, (0.96, 0.96, 0.94), cover(visible, size))
                iris = torch.maximum(ellipse(x, y, cx, cy, r * 0.62, r * 0.62), visible)
                over(view, EYE_COLOURS[ident.eye_colour], cover(iris, size))
                pupil = torch.maximum(ellipse(x, y, cx, cy, r * 0.28, r * 0.28), visible)
                over(view, (0.02, 0.02, 0.02), cover(pupil, size))
                glint = torch.maximum(ellipse(x, y, cx - r * 0.2, cy - r * 0.2, r * 0.1, r * 0.1), visible)
                over(view, (1.0, 1.0, 1.0), cover(glint, size))
                lid_skin = torch.maximum(almond, y - lid)  # the lid itself, skin coloured, above the line
                over(view, _tone(skin, 0.92), cover(lid_skin, size))
                lash = torch.maximum(almond - 0.004, (y - lid).abs() - 0.006)
                over(view, (0.08, 0.06, 0.05), cover(lash, size))
            if not _empty(brow):
                # brow: a thick arc above the eye, raised and tilted by the expression
                x, y = shift.grid(xs, brow)
                view = layer[(slice(None), slice(None)) + _within(brow, box)]
                by = cy - r * 1.9 - brow_raise + brow_tilt * (x - cx) * s * -1
                arc = torch.maximum(ellipse(x, y, cx, by + 0.04, r * 1.6, 0.06).abs() - thick, y - by - 0.0)
                arc = torch.maximum(arc, (x - cx).abs() - r * 1.5)
                over(view, _tone(hair, 0.7), cover(arc, size))
        out.append((layer, box))
    return out


def _mouth(ident: Identity, g: dict, size: int, state: FaceState, skin: Colour, xs: torch.Tensor,
           shift: _Shift) -> tuple[torch.Tensor, torch.Tensor, Box]:
    """Lips, cavity, teeth and tongue for T frames: the RGBA layer [T, 4, h, w], the ground truth [T, 2, h, w]
    (cavity coverage, mouth coverage) and the head-canvas box they fill."""
    w0, my, lip = g["mouth_w"], g["mouth_y"], g["lip"]
    frame = _box_slices(size, (-w0 * 1.9 - 0.08, w0 * 1.9 + 0.08, my - 0.18, my + 0.26))
    expr = state.expression
    strength = torch.as_tensor(state.expression_strength, dtype=torch.float32)[:, None, None]
    smile = _per_frame(EXPR_SMILE, expr) * strength
    jaw = _per_frame(EXPR_OPEN, expr) * strength
    op = (torch.as_tensor(state.mouth_open, dtype=torch.float32)[:, None, None] + jaw).clamp(0, 1)
    wd = torch.as_tensor(state.mouth_width, dtype=torch.float32)[:, None, None]
    rd = torch.as_tensor(state.mouth_round, dtype=torch.float32)[:, None, None]
    half_w = w0 * (0.75 + 0.6 * wd + 0.15 * smile.clamp(min=0)) * (1 - 0.35 * rd)
    gap = 0.13 * op  # the opening, top to bottom
    outer_ry = gap / 2 + lip * (1 + 0.3 * rd)
    # the lips' outline bounds every part but the cavity, whose edge reaches far past the lips when it is a
    # thin slit (its distance is scaled by its tiny height); the corners bend by 0.06 (x/half_w)^2 with a
    # smile
    hw, ro, sm, gp = (t.flatten().double().numpy() for t in (half_w, outer_ry, smile, gap))
    reach = 1 / size
    k = 1 + reach / np.minimum(hw, ro)
    rc = gp / 2 + 1e-4
    kc = np.where(gp > 0.004, 1 + reach / np.minimum(hw * 0.86, rc), 0)
    ext_x = np.maximum(hw * k, hw * 0.86 * kc)
    ext_y = np.maximum(ro * k, rc * kc)
    bend = sm * 0.06 * (ext_x / hw) ** 2
    ex = float(ext_x.max())
    up, down = float((ext_y + np.maximum(bend, 0)).max()), float((ext_y + np.maximum(-bend, 0)).max())
    box = shift.box(-ex, ex, my - up, my + down, size, frame)
    x, y = shift.grid(xs, box)
    yc = y - my + smile * 0.06 * (x / half_w) ** 2  # corners up for a smile, down for a frown
    T = len(state.mouth_open)
    layer = torch.zeros(T, 4, box[0].stop - box[0].start, box[1].stop - box[1].start)
    tint = ident.lip_tint
    lip_colour = tuple(float(c) for c in np.clip(np.array(_tone(skin, 0.78)) * (1 - 0.4 * tint)
                                                  + np.array([0.75, 0.25, 0.3]) * 0.4 * tint, 0, 1))
    outer = ellipse(x, yc, 0, 0, half_w, outer_ry)
    over(layer, lip_colour, cover(outer, size))
    cavity = ellipse(x, yc, 0, 0, half_w * 0.86, gap / 2 + 1e-4)
    cav = cover(cavity, size) * (gap > 0.004).float()
    over(layer, (0.25, 0.05, 0.07), cav)
    teeth_top = torch.maximum(cavity, yc - (-gap / 2 + 0.02 * op.clamp(max=0.6) / 0.6 + 0.004))
    over(layer, (0.97, 0.96, 0.92), cover(teeth_top, size) * (op > 0.12).float())
    teeth_low = torch.maximum(cavity, (gap / 2 - 0.012) - yc)
    over(layer, (0.93, 0.92, 0.88), cover(teeth_low, size) * (op > 0.35).float())
    tongue = torch.maximum(ellipse(x, yc, 0, gap / 2, half_w * 0.5, gap * 0.35 + 1e-4), cavity)
    over(layer, (0.75, 0.3, 0.35), cover(tongue, size) * (op > 0.2).float())
    line = torch.maximum(outer, yc.abs() - 0.004)  # the dark line between closed lips
    over(layer, _tone(lip_colour, 0.55), cover(line, size) * (gap <= 0.02).float())
    return layer, torch.stack([cav.expand(T, *layer.shape[2:]), layer[:, 3]], 1), box


# ----------------------------------------------------------------------------- render a clip

@dataclass
class RenderOutput:
    frames: np.ndarray  # uint8 [T, S, S, 3]
    face_mask: np.ndarray  # uint8 [T, S, S], 255 on the face
    mouth_mask: np.ndarray  # uint8 [T, S, S], 255 on lips and mouth
    mouth_open_px: np.ndarray  # float [T] opening drawn, in pixels
    mouth_open: np.ndarray  # float [T] opening drawn / face height


HEAD_SCALE, HEAD_DY = 1.12, 0.1  # the head is drawn at unit scale, then enlarged and lowered onto the body


def _pose(state: FaceState) -> np.ndarray:
    """Affine maps [T, 2, 3] from image to head-local coordinates, float64 (the inverse of the pose: roll
    about the neck, yaw and pitch as foreshortening and a shift, then the head's scale and place)."""
    roll, yaw, pitch = (np.asarray(v, np.float64) for v in (state.roll, state.yaw, state.pitch))
    tx = np.asarray(state.tx, np.float64) * 2
    ty = np.asarray(state.ty, np.float64) * 2 + HEAD_DY
    sx = (1 - 0.25 * np.abs(yaw)) * HEAD_SCALE
    sy = (1 - 0.15 * np.abs(pitch)) * HEAD_SCALE
    c, s = np.cos(roll), np.sin(roll)
    pivot = 0.45  # the head turns about the neck
    # x_local = S^-1 R^-1 (x_img - t - p) + p, with p = (0, pivot)
    return np.stack([np.stack([c / sx, s / sx, (-(c * tx) - s * (ty + pivot)) / sx], -1),
                     np.stack([-s / sy, c / sy, (s * tx - c * (ty + pivot)) / sy + pivot], -1)], -2)


def _carry(box: Box, A: np.ndarray, b: np.ndarray, size: int, within: Box) -> Box:
    """Pixels (within `within`) near the image of box, grown by a pixel, under p -> A p + b of every frame
    (A [T, 2, 2], b [T, 2, 1], in normalised coordinates)."""
    step = 2 / size
    x = np.array([box[1].start - 1, box[1].stop + 1] * 2) * step - 1
    y = np.array([box[0].start - 1] * 2 + [box[0].stop + 1] * 2) * step - 1
    p = A @ np.stack([x, y])[None] + b  # [T, 2, 4]
    return (_span(p[:, 1].min(), p[:, 1].max(), size, within[0]),
            _span(p[:, 0].min(), p[:, 0].max(), size, within[1]))


def _sample(src: torch.Tensor, at: Box, out: Box, theta: np.ndarray, size: int,
            xs: torch.Tensor) -> torch.Tensor:
    """The pose warp (bilinear, zero outside; theta [T, 2, 3] from `_pose`) of a head-canvas box `at` holding
    src [T or 1, C, h, w], at the pixels of image box `out`: [T, C, H, W]. It samples exactly where
    grid_sample over the whole canvas would."""
    T = len(theta)
    h, w = at[0].stop - at[0].start, at[1].stop - at[1].start
    # grid_sample's coordinates inside `at` (align_corners=False): u = ((g + 1) size - 2 start) / extent - 1
    scale = np.array([size / w, size / h])[None, :, None]  # [1, 2, 1]
    coef = theta * scale
    starts = np.array([at[1].start / w, at[0].start / h])
    coef[:, :, 2] = (theta[:, :, 2] + 1) * scale[:, :, 0] - 2 * starts - 1
    c = torch.from_numpy(coef).float()[:, :, :, None, None]  # [T, 2, 3, 1, 1]
    X, Y = xs[out[1]][None, None, :], xs[out[0]][None, :, None]
    H, W = out[0].stop - out[0].start, out[1].stop - out[1].start
    grid = torch.empty(T, H, W, 2)  # each coordinate written in place (cheaper than building pairs)
    for i in range(2):
        torch.add(c[:, i, 1] * Y + c[:, i, 2], c[:, i, 0] * X, out=grid[..., i])
    if len(src) == 1 and T > 1:  # one canvas for all frames: sample it once with the frames' grids stacked
        one = F.grid_sample(src, grid.view(1, T * H, W, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return one.view(src.shape[1], T, H, W).transpose(0, 1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _over_premultiplied(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Both [..., 4, h, w] premultiplied; src over dst."""
    return src + dst * (1 - src[..., 3:4, :, :])


def _u8(a: torch.Tensor) -> torch.Tensor:
    return (a.clamp(0, 1) * 255).round().to(torch.uint8)


def _extent(drawn: torch.Tensor) -> slice:
    idx = torch.nonzero(drawn).flatten()
    return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)


def _bands(rows: np.ndarray, first: np.ndarray, last: np.ndarray, A: np.ndarray, b: np.ndarray, size: int,
           out: Box, height: int) -> list[Box]:
    """Split the image box `out` into bands `height` rows tall, each cut to the columns the warped canvas can
    reach in it. The canvas draws in rows `rows` from column `first` to `last` (pixels); a sample within a
    pixel of a drawn one lands in that row's rectangle grown by a pixel, so a band's columns are those of the
    images (under p -> A p + b, every frame) of the rectangles that meet the band."""
    step = 2 / size
    x = np.stack([first - 1, last + 1, first - 1, last + 1], -1) * step - 1 + step / 2  # [M, 4] corners
    y = np.stack([rows - 1, rows - 1, rows + 1, rows + 1], -1) * step - 1 + step / 2
    px = A[:, 0, 0, None, None] * x + A[:, 0, 1, None, None] * y + b[:, 0, 0, None, None]  # [T, M, 4]
    py = A[:, 1, 0, None, None] * x + A[:, 1, 1, None, None] * y + b[:, 1, 0, None, None]
    x0, x1, y0, y1 = px.min((0, 2)), px.max((0, 2)), py.min((0, 2)), py.max((0, 2))  # [M]
    bands = []
    for r in range(out[0].start, out[0].stop, height):
        band = slice(r, min(r + height, out[0].stop))
        top, bottom = -1 + (band.start - 1) * step, -1 + (band.stop + 1) * step
        meet = (y1 >= top) & (y0 <= bottom)
        if meet.any():
            bands.append((band, _span(float(x0[meet].min()), float(x1[meet].max()), size, out[1])))
    return bands


def _patches(features: list[tuple], A: np.ndarray, b: np.ndarray, theta: np.ndarray, size: int, out: Box,
             head_box: Box) -> list[tuple[list[tuple], Box, Box]]:
    """Group features (tuples whose first item is their head-canvas box) into patches, each with the image box
    that can see its features and the head-canvas box that image box samples. Features whose patches would
    sample each other's boxes share one, so every sample reads a canvas holding everything it can see."""
    groups = [[f] for f in features]
    while True:
        boxes = []
        for group in groups:
            seen = _carry(_union_all([f[0] for f in group]), A, b, size, out)
            boxes.append((seen, _carry(seen, theta[:, :, :2], theta[:, :, 2:], size, head_box)))
        meet = [(i, j) for i in range(len(groups)) for j in range(i) if _meets(boxes[i][1], boxes[j][1])]
        if not meet:
            return [(group, seen, source) for group, (seen, source) in zip(groups, boxes)]
        i, j = meet[0]
        groups[j] += groups.pop(i)


def render(identity: Identity, state: FaceState, size: int, batch: int = 16) -> RenderOutput:
    """Render a clip of len(state) frames at size×size, `batch` frames at a time."""
    skin = _tone(SKIN_TONES[identity.skin], 1 + 0.06 * identity.skin_jitter)
    background = _background(identity, size)
    body = _body(identity, size, skin)
    (behind_rgb, behind), face, front, g = _head(identity, size, skin)
    long_hair = bool(behind.any())
    backdrop = _over_premultiplied(background, body)[:3]  # the picture wherever the head is not
    # head-local canvas: RGBA of the whole head, face alpha, and the coverage of long hair behind (5 or 6
    # channels), cut to the box where anything is drawn (the canvas is zero around it). Colours and the face
    # alpha are kept in 0..255, so that the composite is the frame's pixel values.
    canvas = torch.cat([_over_premultiplied(face, front), face[3:4]] + ([behind[None]] if long_hair else []))
    canvas[:3] *= 255
    canvas[4] *= 255
    C = len(canvas)
    drawn = canvas[3] > 0
    if long_hair:
        drawn |= behind > 0
    head_box = (_extent(drawn.any(1)), _extent(drawn.any(0)))
    canvas = canvas[(slice(None),) + head_box]
    drawn_rows = torch.nonzero(drawn.any(1)).flatten()  # and in each, the first and last drawn column
    rows = drawn_rows.numpy()
    first = drawn.int().argmax(1)[drawn_rows].numpy()
    last = size - 1 - drawn.flip(1).int().argmax(1)[drawn_rows].numpy()
    xs = _centres(size)
    whole = (slice(0, size), slice(0, size))
    theta = _pose(state)
    n = len(state)
    frames = np.empty((n, size, size, 3), np.uint8)
    frames[:] = _u8(backdrop).permute(1, 2, 0).contiguous().numpy()
    backdrop = backdrop * 255
    if long_hair:  # one colour, so its warp is that colour times the warped coverage c, and hair, body and
        # background make backdrop + c (hair - background)(1 - body alpha)
        hair_over = (torch.tensor(behind_rgb)[:, None, None] * 255 - background[:3] * 255) * (1 - body[3:4])
    face_mask = np.zeros((n, size, size), np.uint8)
    mouth_mask = np.zeros((n, size, size), np.uint8)
    open_px = torch.zeros(n)

    def lay(warped: torch.Tensor, frame: slice, box: Box, mask: bool) -> None:
        """The warped head [T, C, h, w] over what is behind it, into the frames (and the face mask) at box."""
        base = backdrop[(None, slice(None)) + box]
        if long_hair:
            base = torch.addcmul(base, warped[:, 5:6], hair_over[(None, slice(None)) + box])
        img = torch.addcmul(warped[:, :3], base, 1 - warped[:, 3:4])
        img.clamp_(0, 255).round_()
        dst = torch.from_numpy(frames)[frame, box[0], box[1]]
        for c in range(3):  # a channel at a time: twice as fast as one copy that also transposes
            dst[..., c].copy_(img[:, c])
        if mask:
            torch.from_numpy(face_mask)[frame, box[0], box[1]].copy_(warped[:, 4].clamp(0, 255).round_())

    for start in range(0, n, batch):
        part = state.slice(start, start + batch)
        T, th, shift, frame = len(part), theta[start:start + batch], _Shift(part), slice(start, start + batch)
        A = np.linalg.inv(th[:, :, :2])
        b = -A @ th[:, :, 2:]  # image from head-local coordinates
        # the head as drawn without eyes and mouth, warped once for all frames, in bands cut to where it is
        out = _carry(head_box, A, b, size, whole)
        if _empty(head_box) or _empty(out):
            continue
        for box in _bands(rows, first, last, A, b, size, out, max(8, size // 8)):
            lay(_sample(canvas[None], head_box, box, th, size, xs), frame, box, True)
        # the frame's eyes and mouth, laid on the face under the front hair and glasses, in boxes; each patch
        # of the image that can see a box is warped again from a canvas box holding it (patches that would
        # see each other's features are merged, so every sample reads the right canvas)
        mouth, mouth_gt, mouth_box = _mouth(identity, g, size, part, skin, xs, shift)
        features = []
        eyes = [(layer, box, None) for layer, box in _eyes(identity, g, size, part, skin, xs, shift)]
        for layer, box, gt in eyes + [(mouth, mouth_box, mouth_gt)]:
            inside = _clip(box, head_box)
            if _empty(inside):
                continue
            cut = (slice(None), slice(None)) + _within(inside, box)
            fa = face[(slice(3, 4),) + inside]
            on_face = layer[cut] * fa  # features never leave the skin
            under = _over_premultiplied(face[(slice(None),) + inside], on_face)
            comp = _over_premultiplied(under, front[(slice(None),) + inside])
            comp[:, :3] *= 255
            features.append((inside, comp, None if gt is None else gt[cut] * fa))
        for p, seen, source in _patches(features, A, b, th, size, out, head_box):
            if _empty(seen) or _empty(source):
                continue
            gts = [f for f in p if f[2] is not None]
            src = canvas[(slice(None),) + _within(source, head_box)][None].repeat(T, 1, 1, 1)
            if gts:  # the mouth's ground truth (cavity, mouth coverage) rides along as two more channels
                src = torch.cat([src, src.new_zeros(T, 2, *src.shape[2:])], 1)
            for inside, comp, gt in p:
                at = _within(inside, source)
                src[(slice(None), slice(0, 4)) + at] = comp
                if gt is not None:
                    src[(slice(None), slice(C, C + 2)) + at] = gt
            patch = _sample(src, source, seen, th, size, xs)
            lay(patch, frame, seen, False)  # the face alpha is the static one, already laid
            if gts:
                mouth_mask[frame, seen[0], seen[1]] = _u8(patch[:, C + 1]).numpy()
                open_px[frame] = (patch[:, C] > 0.5).float().sum(1).amax(1)  # tallest cavity column
    face_h = g["face_h"] * HEAD_SCALE * size
    return RenderOutput(frames, face_mask, mouth_mask, open_px.numpy(), (open_px / face_h).numpy())
