"""A faster, pixel-identical drop-in for Gymnasium's ``CarRacing-v3``.

Gymnasium's CarRacing spends most of a step in rendering: every frame it
rotates ~800 road and grass polygons vertex by vertex in Python, fills a
playfield polygon that is several times larger than the window, allocates a
fresh 1000x800 surface and loads a font. :class:`FastCarRacing` keeps the
physics, the track generation and every drawing call that can change a pixel,
and only removes work whose result is provably invisible or constant:

* all polygons of an episode are transformed at once with numpy, using the
  same floating-point operations in the same order as ``pygame.math.Vector2``
  (see :func:`rotate_rad`), so the coordinates handed to ``pygame.gfxdraw`` are
  bit-identical;
* the original on-screen test is evaluated on those coordinates, and polygons
  whose bounding box lies wholly outside the surface (they draw no pixel) are
  not handed to pygame at all;
* when the playfield polygon provably covers the whole surface, it is drawn as
  one ``Surface.fill`` with the same pixel value;
* the rows under the indicator bar are neither filled nor drawn into, the
  surfaces are reused, and the rendered score text is cached;
* the 96x96 observation skips the vertical flip of the 1000x800 canvas:
  ``smoothscale`` shrinks rows first and columns second, so the canvas rows
  are shrunk unflipped and only the 96-pixel-wide result is flipped (see
  :meth:`FastCarRacing._state_pixels`); ``rgb_array`` and ``human`` frames
  still flip the full canvas;
* the car's vertices are transformed with numpy in float32, as Box2D does.

Every step of this is checked against Gymnasium by ``tests/test_car_racing.py``
(full episodes, pixel for pixel); the pygame and Box2D arithmetic it mirrors
is that of pygame-ce 2.5 and box2d 2.3.10, pinned in ``pyproject.toml``.

Physics, rewards, termination and ``info`` are those of the parent class.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pygame
from gymnasium.envs.box2d.car_dynamics import SIZE, WHEEL_R, WHEEL_W, WHEEL_WHITE
from gymnasium.envs.box2d.car_racing import (
    GRASS_DIM,
    MAX_SHAPE_DIM,
    PLAYFIELD,
    SCALE,
    STATE_H,
    STATE_W,
    VIDEO_H,
    VIDEO_W,
    WINDOW_H,
    WINDOW_W,
    ZOOM,
    CarRacing,
)
from pygame import gfxdraw

__all__ = ["CarRacingSignals", "FastCarRacing", "register_envs", "rotate_rad"]

ENV_ID = "worldlab/CarRacing-v3"

_TWO_PI = 2.0 * math.pi  # pygame-ce's TWO_PI
_HALF_PI = math.pi / 2.0  # M_PI_2
_VECTOR_EPSILON = 1e-6  # pygame-ce's default Vector2 epsilon

# First row of the indicator bar. ``_render_indicators`` paints every row from
# here to the bottom black before drawing the gauges and the score, so these
# rows of the flipped frame never need to be copied from the canvas.
_BAR_TOP = math.floor(WINDOW_H - 5 * (WINDOW_H / 40.0))
# Canvas rows that end up under the bar after the vertical flip.
_HIDDEN_ROWS = WINDOW_H - _BAR_TOP

# A polygon whose (truncated) vertices all lie this many pixels beyond one
# side of the surface cannot touch it: gfxdraw clips lines and spans there.
_OFFSCREEN_MARGIN = 4.0
# The playfield is drawn with one fill only if every corner of the surface is
# at least this far inside it (SDL_gfx scanline spans are within ~1 px of
# the exact edges) ...
_COVER_MARGIN = 3.0
# ... and no vertex exceeds this magnitude, which keeps SDL_gfx's 16.16
# fixed-point scanline arithmetic free of int32 overflow.
_COVER_MAX_COORD = 16000

# World coordinates of the 400 grass squares, built with the same expressions
# and in the same order as ``CarRacing._render_road``.
_GRASS_POLYS = np.array(
    [
        [
            (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + 0),
            (GRASS_DIM * x + 0, GRASS_DIM * y + 0),
            (GRASS_DIM * x + 0, GRASS_DIM * y + GRASS_DIM),
            (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + GRASS_DIM),
        ]
        for x in range(-20, 20, 2)
        for y in range(-20, 20, 2)
    ],
    dtype=np.float64,
)  # (400, 4, 2)
_N_GRASS = len(_GRASS_POLYS)

_FIELD = np.array(
    [
        (PLAYFIELD, PLAYFIELD),
        (PLAYFIELD, -PLAYFIELD),
        (-PLAYFIELD, -PLAYFIELD),
        (-PLAYFIELD, PLAYFIELD),
    ],
    dtype=np.float64,
)  # (4, 2)


def rotate_rad(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate points by ``angle`` radians exactly as ``pygame.math.Vector2.rotate_rad``.

    This mirrors pygame-ce's ``_vector2_rotate_helper``: the angle is reduced
    with ``fmod`` to ``[0, 2*pi)``; angles within ``1e-6`` of a multiple of
    ``pi/2`` are exact coordinate swaps; otherwise each coordinate is
    ``cos*x - sin*y`` / ``sin*x + cos*y`` with one rounding per operation, which
    numpy's element-wise float64 ufuncs reproduce bit for bit.

    Args:
        x: x coordinates, any shape, float64.
        y: y coordinates, same shape as ``x``.
        angle: rotation in radians.

    Returns:
        The rotated ``(x, y)`` arrays.
    """
    angle = math.fmod(angle, _TWO_PI)
    if angle < 0:
        angle += _TWO_PI
    if math.fmod(angle + _VECTOR_EPSILON, _HALF_PI) < 2 * _VECTOR_EPSILON:
        quadrant = int((angle + _VECTOR_EPSILON) / _HALF_PI)
        if quadrant in (0, 4):
            return x.copy(), y.copy()
        if quadrant == 1:
            return -y, x.copy()
        if quadrant == 2:
            return -x, -y
        return y.copy(), -x
    sin_value = math.sin(angle)
    cos_value = math.cos(angle)
    return cos_value * x - sin_value * y, sin_value * x + cos_value * y


def _to_screen(
    points: np.ndarray, zoom: float, translation: tuple[float, float], angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """World ``(..., 2)`` points -> screen x, y arrays, as ``_draw_colored_polygon`` does."""
    rx, ry = rotate_rad(points[..., 0], points[..., 1], angle)
    return rx * zoom + translation[0], ry * zoom + translation[1]


class _CarShape:
    """Body-frame vertices of a car's drawlist, in ``Car.draw`` order (constant per car)."""

    def __init__(self, car: Any) -> None:
        self.car = car
        local: list[np.ndarray] = []
        body: list[np.ndarray] = []
        # (first vertex, end vertex, body index) of each fixture polygon
        self.polygons: list[tuple[int, int, int]] = []
        # (body index, fixture polygon index) of fixtures followed by a wheel stripe
        self.striped: list[tuple[int, int]] = []
        start = 0
        for body_index, obj in enumerate(car.drawlist):
            for fixture in obj.fixtures:
                vertices = np.array(fixture.shape.vertices, dtype=np.float32)  # (k, 2)
                local.append(vertices)
                body.append(np.full(len(vertices), body_index))
                self.polygons.append((start, start + len(vertices), body_index))
                if "phase" in obj.__dict__:
                    self.striped.append((body_index, len(self.polygons) - 1))
                start += len(vertices)
        self.local = np.concatenate(local)  # (K, 2) float32
        self.body = np.concatenate(body)  # (K,) int


class FastCarRacing(CarRacing):
    """Gymnasium's ``CarRacing-v3``, rendered several times faster, pixel for pixel.

    ## Description

    A faster drop-in for ``gymnasium.envs.box2d.CarRacing`` (Gymnasium 1.2.2):
    the same top-down racing task on a random track, with the same Box2D
    physics, track generation, rewards, termination and ``info``. For the same
    seed and actions, observations, ``rgb_array`` frames, rewards and flags
    are bit-identical to ``gymnasium.make("CarRacing-v3")``; only the
    rendering does less work (see the module docstring). Registered as
    ``worldlab/CarRacing-v3`` by :func:`register_envs`.

    ## Action Space

    If ``continuous=True``: ``Box([-1, 0, 0], [1, 1, 1], float32)``, i.e.
    steering (-1 full left, +1 full right), gas and brake.

    If ``continuous=False``: ``Discrete(5)``: do nothing, steer right, steer
    left, gas, brake.

    ## Observation Space

    ``Box(0, 255, (96, 96, 3), uint8)``: a top-down RGB image of the car and
    the track around it, with the speed, ABS, steering and gyroscope gauges
    and the score in a black bar at the bottom.

    ## Rewards

    -0.1 every frame and +1000/N for every track tile visited, where N is the
    number of tiles in the track. Leaving the playfield gives -100 and ends
    the episode.

    ## Starting State

    The car starts at rest in the middle of the road at the first tile.

    ## Episode End

    Terminated when all tiles are visited (``info["lap_finished"] = True``)
    or when the car leaves the playfield (``info["lap_finished"] = False``);
    truncated after 1000 steps by the ``TimeLimit`` that ``gymnasium.make``
    adds.

    ## Arguments

    ```python
    >>> import gymnasium as gym
    >>> from envs.car_racing import register_envs
    >>> register_envs()
    >>> env = gym.make("worldlab/CarRacing-v3", render_mode="rgb_array",
    ...                lap_complete_percent=0.95, domain_randomize=False, continuous=True)

    ```

    The arguments and ``reset(options={"randomize": ...})`` behave exactly as
    in Gymnasium's ``CarRacing``.
    """

    def __init__(
        self,
        render_mode: str | None = None,
        verbose: bool = False,
        lap_complete_percent: float = 0.95,
        domain_randomize: bool = False,
        continuous: bool = True,
    ) -> None:
        """Build the environment; arguments as in Gymnasium's ``CarRacing``."""
        super().__init__(
            render_mode=render_mode,
            verbose=verbose,
            lap_complete_percent=lap_complete_percent,
            domain_randomize=domain_randomize,
            continuous=continuous,
        )
        # Reused window-sized surfaces: drawn (unflipped) and shown (flipped).
        self._canvas: pygame.Surface | None = None
        self._frame: pygame.Surface | None = None
        self._canvas_rows: pygame.Surface | None = None
        self._bar_rows: pygame.Surface | None = None
        self._narrow_canvas: pygame.Surface | None = None
        self._narrow_bar: pygame.Surface | None = None
        self._narrow_frame: pygame.Surface | None = None
        self._font: pygame.font.Font | None = None
        self._score_cache: dict[str, pygame.Surface] = {}
        self._fill_cache: dict[tuple[float, ...], int] = {}
        # World coordinates of grass + road polygons, in drawing order.
        self._polys: np.ndarray | None = None  # (N, 4, 2) float64
        self._polys_key: tuple[int, int] | None = None
        self._car_cache: _CarShape | None = None

    # ------------------------------------------------------------------ API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode; see Gymnasium's ``CarRacing.reset``."""
        self._polys = None
        self._polys_key = None
        self._fill_cache.clear()
        self._car_cache = None
        return super().reset(seed=seed, options=options)

    def close(self) -> None:
        """Release the cached pygame objects and close the window if any."""
        self._canvas = None
        self._frame = None
        self._font = None
        self._score_cache.clear()
        self._fill_cache.clear()
        super().close()

    # ------------------------------------------------------------ rendering

    def _render(self, mode: str) -> np.ndarray | bool | None:
        """Draw one frame; same output as ``CarRacing._render`` for every mode."""
        assert mode in self.metadata["render_modes"]

        if self.screen is None and mode == "human":
            pygame.display.init()  # not pygame.init(): no mixer, so no ALSA lines where there is no sound card
            pygame.font.init()
            self.screen = pygame.display.set_mode((WINDOW_W, WINDOW_H))
        if self.clock is None:
            self.clock = pygame.time.Clock()

        if "t" not in self.__dict__:
            return None  # reset() not called yet

        if self._canvas is None or self._frame is None:
            self._make_surfaces()
        assert self._canvas is not None and self._frame is not None
        self.surf = self._canvas

        assert self.car is not None
        # computing transformations (verbatim from CarRacing._render)
        angle = -self.car.hull.angle
        # Animating first second zoom.
        zoom = 0.1 * SCALE * max(1 - self.t, 0) + ZOOM * SCALE * min(self.t, 1)
        scroll_x = -(self.car.hull.position[0]) * zoom
        scroll_y = -(self.car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        trans = (WINDOW_W / 2 + trans[0], WINDOW_H / 4 + trans[1])

        self._render_road(zoom, trans, angle)
        if mode == "state_pixels":
            self._draw_car(self.surf, zoom, trans, angle)
        else:  # with the tyre particles: the reference, slower code
            self.car.draw(self.surf, zoom, trans, angle, True)

        text = self._score_surface("%04i" % self.reward)  # noqa: UP031 (as the reference)
        text_rect = text.get_rect()
        text_rect.center = (60, WINDOW_H - WINDOW_H * 2.5 / 40.0)

        if mode == "state_pixels" and text_rect.top >= _BAR_TOP:
            # Leave the canvas unflipped: shrink it and the bar separately.
            self.surf = self._frame
            if self._draw_bar_below(text, text_rect):
                return self._state_pixels()

        self.surf = self._flip_canvas()
        # showing stats
        self._render_indicators(WINDOW_W, WINDOW_H)
        self.surf.blit(text, text_rect)

        if mode == "human":
            pygame.event.pump()
            self.clock.tick(self.metadata["render_fps"])
            assert self.screen is not None
            self.screen.fill(0)
            self.screen.blit(self.surf, (0, 0))
            pygame.display.flip()
        elif mode == "rgb_array":
            return self._create_image_array(self.surf, (VIDEO_W, VIDEO_H))
        elif mode == "state_pixels":
            return self._create_image_array(self.surf, (STATE_W, STATE_H))
        else:
            return self.isopen
        return None

    def _render_road(self, zoom: float, translation: tuple[float, float], angle: float) -> None:
        """Draw playfield, grass and road onto ``self.surf`` (the canvas).

        Same pixels as ``CarRacing._render_road`` drawing onto a fresh black
        surface; see the module docstring for what is skipped and why.
        """
        surf = self.surf
        assert surf is not None
        polys = self._episode_polys()
        if polys is None:  # road_poly not made of quads: use the reference path
            surf.fill(0)
            super()._render_road(zoom, translation, angle)
            return

        self._render_field(surf, zoom, translation, angle)

        sx, sy = _to_screen(polys, zoom, translation, angle)  # (N, 4) each
        # The reference on-screen test, evaluated on the same coordinates ...
        inside = (
            (-MAX_SHAPE_DIM <= sx)
            & (sx <= WINDOW_W + MAX_SHAPE_DIM)
            & (-MAX_SHAPE_DIM <= sy)
            & (sy <= WINDOW_H + MAX_SHAPE_DIM)
        )  # (N, 4)
        visible = inside[:, 0] | inside[:, 1] | inside[:, 2] | inside[:, 3]
        # ... and, of those, skip polygons wholly beyond one side of the surface
        # or wholly in the rows that the indicator bar will cover.
        width, height = surf.get_size()
        m = _OFFSCREEN_MARGIN
        x_lo, x_hi = _min4(sx), _max4(sx)
        y_lo, y_hi = _min4(sy), _max4(sy)
        onscreen = (
            (x_hi >= -m)
            & (x_lo <= width - 1 + m)
            & (y_hi >= _HIDDEN_ROWS - m)
            & (y_lo <= height - 1 + m)
        )
        drawn = np.flatnonzero(visible & onscreen)
        if drawn.size == 0:
            return
        points = np.stack((sx[drawn], sy[drawn]), axis=-1).tolist()  # (K, 4, 2)
        grass_color = self.grass_color
        road_poly = self.road_poly
        for index, poly in zip(drawn.tolist(), points, strict=True):
            if index < _N_GRASS:
                color = grass_color
            else:
                color = [int(c) for c in road_poly[index - _N_GRASS][1]]
            gfxdraw.aapolygon(surf, poly, color)
            gfxdraw.filled_polygon(surf, poly, color)

    def _render_field(
        self,
        surf: pygame.Surface,
        zoom: float,
        translation: tuple[float, float],
        angle: float,
    ) -> None:
        """Clear ``surf`` and draw the playfield (the background polygon)."""
        fx, fy = _to_screen(_FIELD, zoom, translation, angle)  # (4,) each
        xs = fx.tolist()
        ys = fy.tolist()
        if _covers_surface(xs, ys, surf.get_size()):
            # SDL_gfx would paint every pixel with this colour; the anti-aliased
            # outline it draws first lies outside and is overwritten anyway.
            width, height = surf.get_size()
            visible_rows = (0, _HIDDEN_ROWS, width, height - _HIDDEN_ROWS)
            surf.fill(self._mapped_color(surf, self.bg_color), visible_rows)
            return
        surf.fill(0)
        field = list(zip(xs, ys, strict=True))
        gfxdraw.aapolygon(surf, field, self.bg_color)
        gfxdraw.filled_polygon(surf, field, self.bg_color)

    def _draw_car(
        self,
        surf: pygame.Surface,
        zoom: float,
        translation: tuple[float, float],
        angle: float,
    ) -> None:
        """``Car.draw(..., draw_particles=False)`` with the vertex math in numpy.

        Box2D's ``transform * vertex`` is float32 ``(c*x - s*y) + p``, one
        rounding per operation, which numpy's float32 ufuncs reproduce; the
        rotation to the screen then follows :func:`rotate_rad`. Polygons are
        drawn in the reference order: each body's fixtures, each wheel's white
        stripe right after its tyre.
        """
        car = self.car
        assert car is not None
        shape = self._car_shape()
        drawlist = car.drawlist
        frames = [
            (t.q.c, t.q.s, t.position[0], t.position[1])
            for t in (obj.transform for obj in drawlist)
        ]
        colors = [[int(c * 255) for c in obj.color] for obj in drawlist]

        # Wheel stripes (verbatim arithmetic from Car.draw), each drawn after
        # the fixture of its wheel.
        stripes: list[tuple[float, float]] = []
        stripe_after: dict[int, int] = {}  # fixture polygon index -> stripe index
        stripe_bodies: list[int] = []
        for body_index, fixture_index in shape.striped:
            obj = drawlist[body_index]
            a1 = obj.phase
            a2 = obj.phase + 1.2  # radians
            s1 = math.sin(a1)
            s2 = math.sin(a2)
            c1 = math.cos(a1)
            c2 = math.cos(a2)
            if s1 > 0 and s2 > 0:
                continue
            if s1 > 0:
                c1 = np.sign(c1)
            if s2 > 0:
                c2 = np.sign(c2)
            stripe_after[fixture_index] = len(stripe_after)
            stripes += [
                (-WHEEL_W * SIZE, +WHEEL_R * c1 * SIZE),
                (+WHEEL_W * SIZE, +WHEEL_R * c1 * SIZE),
                (+WHEEL_W * SIZE, +WHEEL_R * c2 * SIZE),
                (-WHEEL_W * SIZE, +WHEEL_R * c2 * SIZE),
            ]
            stripe_bodies.append(body_index)

        frame = np.array(frames, dtype=np.float32)  # (B, 4): c, s, px, py
        if stripes:
            local = np.concatenate((shape.local, np.array(stripes, dtype=np.float32)))
            body = np.concatenate((shape.body, np.repeat(stripe_bodies, 4)))
        else:
            local, body = shape.local, shape.body
        c, s, px, py = frame[body].T  # (K,) each, float32
        wx = (c * local[:, 0] - s * local[:, 1]) + px  # as b2Mul(transform, v)
        wy = (s * local[:, 0] + c * local[:, 1]) + py
        world = np.stack((wx, wy), axis=-1).astype(np.float64)
        sx, sy = _to_screen(world, zoom, translation, angle)
        points = np.stack((sx, sy), axis=-1).tolist()  # (K, 2)

        n_base = len(shape.local)
        for index, (start, stop, body_index) in enumerate(shape.polygons):
            pygame.draw.polygon(surf, color=colors[body_index], points=points[start:stop])
            stripe = stripe_after.get(index)
            if stripe is not None:
                first = n_base + 4 * stripe
                pygame.draw.polygon(surf, color=WHEEL_WHITE, points=points[first : first + 4])

    def _car_shape(self) -> _CarShape:
        """The constant geometry of ``self.car``'s drawlist (built once per car)."""
        car = self.car
        shape = self._car_cache
        if shape is None or shape.car is not car:
            shape = self._car_cache = _CarShape(car)
        return shape

    def _mapped_color(self, surf: pygame.Surface, color: Any) -> int:
        """The pixel value ``gfxdraw.filled_polygon`` writes for ``color`` on ``surf``."""
        key = (*np.asarray(color, dtype=np.float64).tolist(), surf.get_bitsize())
        mapped = self._fill_cache.get(key)
        if mapped is None:
            probe = pygame.Surface((4, 4), 0, surf)
            probe.fill(0)
            gfxdraw.filled_polygon(probe, [(0, 0), (3, 0), (3, 3), (0, 3)], color)
            mapped = probe.get_at_mapped((1, 1))
            self._fill_cache[key] = mapped
        return mapped

    def _episode_polys(self) -> np.ndarray | None:
        """Grass + road polygons of this episode as a ``(N, 4, 2)`` array (cached)."""
        key = (id(self.road_poly), len(self.road_poly))
        if self._polys is None or self._polys_key != key:
            if any(len(poly) != 4 for poly, _ in self.road_poly):
                return None
            road = np.array(
                [[(p[0], p[1]) for p in poly] for poly, _ in self.road_poly],
                dtype=np.float64,
            ).reshape(-1, 4, 2)
            self._polys = np.concatenate((_GRASS_POLYS, road), axis=0)
            self._polys_key = key
        return self._polys

    def _make_surfaces(self) -> None:
        """Allocate the reused surfaces (all in the canvas's pixel format)."""
        canvas = self._canvas = pygame.Surface((WINDOW_W, WINDOW_H))
        self._frame = pygame.Surface((WINDOW_W, WINDOW_H), 0, canvas)
        # Canvas rows that stay visible, the bar rows of the frame, both shrunk
        # horizontally to the state width, and stacked in frame order.
        self._canvas_rows = canvas.subsurface((0, _HIDDEN_ROWS, WINDOW_W, _BAR_TOP))
        self._bar_rows = self._frame.subsurface((0, _BAR_TOP, WINDOW_W, _HIDDEN_ROWS))
        self._narrow_canvas = pygame.Surface((STATE_W, _BAR_TOP), 0, canvas)
        self._narrow_bar = pygame.Surface((STATE_W, _HIDDEN_ROWS), 0, canvas)
        self._narrow_frame = pygame.Surface((STATE_W, WINDOW_H), 0, canvas)

    def _draw_bar_below(self, text: pygame.Surface, text_rect: pygame.Rect) -> bool:
        """Draw the gauges and score on the frame; whether all of it stayed in the bar rows.

        A gauge that grows past the bar (a very fast spinning wheel) crosses the
        row just above it, which is first set to a value no drawing produces.
        """
        assert self._frame is not None
        r_mask, g_mask, b_mask, a_mask = self._frame.get_masks()
        if self._frame.get_bytesize() != 4 or (r_mask | g_mask | b_mask | a_mask) >> 24:
            return False  # no spare byte for the sentinel: use the reference path
        sentinel = np.uint32(self._frame.map_rgb((1, 2, 3)) | 0x5A000000)
        row = pygame.surfarray.pixels2d(self._frame)[:, _BAR_TOP - 1]
        row[:] = sentinel
        del row
        self._render_indicators(WINDOW_W, WINDOW_H)
        self._frame.blit(text, text_rect)
        row = pygame.surfarray.pixels2d(self._frame)[:, _BAR_TOP - 1]
        clean = bool((row == sentinel).all())
        del row
        return clean

    def _state_pixels(self) -> np.ndarray:
        """The 96x96 observation, from the unflipped canvas and the frame's bar rows.

        ``smoothscale`` shrinks each row horizontally, row by row, and then the
        columns vertically, so shrinking the rows first, flipping their order,
        and then shrinking vertically gives exactly
        ``smoothscale(flip(canvas) with the bar drawn, (96, 96))`` without
        copying the full-size canvas.
        """
        assert self._canvas_rows is not None and self._bar_rows is not None
        assert self._narrow_canvas is not None and self._narrow_bar is not None
        assert self._narrow_frame is not None
        smoothscale = pygame.transform.smoothscale
        smoothscale(self._canvas_rows, (STATE_W, _BAR_TOP), self._narrow_canvas)
        smoothscale(self._bar_rows, (STATE_W, _HIDDEN_ROWS), self._narrow_bar)
        frame = pygame.surfarray.pixels2d(self._narrow_frame)  # (96, H)
        frame[:, :_BAR_TOP] = pygame.surfarray.pixels2d(self._narrow_canvas)[:, ::-1]
        frame[:, _BAR_TOP:] = pygame.surfarray.pixels2d(self._narrow_bar)
        del frame  # unlock before smoothscale reads it
        return self._create_image_array(self._narrow_frame, (STATE_W, STATE_H))

    def _flip_canvas(self) -> pygame.Surface:
        """``pygame.transform.flip(canvas, False, True)`` into the reused frame.

        Rows from ``_BAR_TOP`` down are left stale: ``_render_indicators``
        paints them black before anything reads them.
        """
        assert self._canvas is not None and self._frame is not None
        height = self._canvas.get_height()
        if self._canvas.get_bytesize() == 3:  # no 2D pixel view of 24-bit surfaces
            return pygame.transform.flip(self._canvas, False, True)
        src = pygame.surfarray.pixels2d(self._canvas)  # (W, H)
        dst = pygame.surfarray.pixels2d(self._frame)
        dst[:, :_BAR_TOP] = src[:, height - 1 : height - 1 - _BAR_TOP : -1]
        del src, dst  # unlock both surfaces
        return self._frame

    def _score_surface(self, label: str) -> pygame.Surface:
        """The rendered score ``label``, as the reference font would draw it."""
        text = self._score_cache.get(label)
        if text is None:
            text = self._render_text(label)
            if len(self._score_cache) >= 512:
                self._score_cache.clear()
            self._score_cache[label] = text
        return text

    def _render_text(self, label: str) -> pygame.Surface:
        """Render ``label`` with the default font at size 42, white on black."""
        for _ in range(2):
            if self._font is None:
                pygame.font.init()
                self._font = pygame.font.Font(pygame.font.get_default_font(), 42)
            try:
                return self._font.render(label, True, (255, 255, 255), (0, 0, 0))
            except pygame.error:  # font module was quit since: make a new font
                self._font = None
        raise RuntimeError("could not render the score text")


def _min4(a: np.ndarray) -> np.ndarray:
    """Row-wise minimum of an ``(N, 4)`` array (faster than ``a.min(axis=1)`` here)."""
    return np.minimum(np.minimum(a[:, 0], a[:, 1]), np.minimum(a[:, 2], a[:, 3]))


def _max4(a: np.ndarray) -> np.ndarray:
    """Row-wise maximum of an ``(N, 4)`` array."""
    return np.maximum(np.maximum(a[:, 0], a[:, 1]), np.maximum(a[:, 2], a[:, 3]))


def _covers_surface(xs: list[float], ys: list[float], size: tuple[int, int]) -> bool:
    """Whether ``gfxdraw.filled_polygon`` of this convex quad paints every pixel.

    gfxdraw truncates the coordinates to integers; SDL_gfx then fills each
    scanline between edge intersections rounded in 16.16 fixed point (within
    about one pixel of the exact edges). So the quad covers a ``W x H``
    surface if every surface corner is at least ``_COVER_MARGIN`` pixels
    inside every edge of the truncated quad, and no coordinate is large enough
    to overflow that fixed-point arithmetic.
    """
    vx = [int(x) for x in xs]
    vy = [int(y) for y in ys]
    if max(map(abs, vx + vy)) > _COVER_MAX_COORD:
        return False
    width, height = size
    corners = ((0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1))
    sign = 0.0
    n = len(vx)
    for i in range(n):
        x0, y0 = vx[i], vy[i]
        ex, ey = vx[(i + 1) % n] - x0, vy[(i + 1) % n] - y0
        length = math.hypot(ex, ey)
        if length == 0:
            return False
        for cx, cy in corners:
            distance = (ex * (cy - y0) - ey * (cx - x0)) / length
            if sign == 0.0:
                sign = 1.0 if distance > 0 else -1.0
            if distance * sign < _COVER_MARGIN:
                return False
    return True


class CarRacingSignals(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds what a frame does not carry to ``step``'s ``info``: ``speed`` (the car's speed, the
    speedometer's unit: about 3 for a crawl, 60 on a long straight at full gas), ``off_road`` (True
    when no wheel touches a road tile: on the grass or beyond), ``tiles`` (tiles reached so far this
    episode) and ``track_tiles`` (tiles of the track).

    Observations, rewards and flags are untouched; it wraps gymnasium's ``CarRacing`` or
    :class:`FastCarRacing` alike (``envs.make("car_racing")`` adds it; ``gym.make`` of the bare ids
    does not, so those stay identical to gymnasium's, info included). Collection records these
    signals per step (``agents.rollout``) for the data's coverage (``agents.coverage``).
    """

    def __init__(self, env: gym.Env) -> None:
        if not isinstance(env.unwrapped, CarRacing):
            raise ValueError(f"CarRacingSignals wraps a CarRacing env, not {env.unwrapped}")
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, **car_signals(self.env.unwrapped)}


def car_signals(env: CarRacing) -> dict[str, Any]:
    """``speed``, ``off_road``, ``tiles`` and ``track_tiles`` of a CarRacing env now (see
    :class:`CarRacingSignals`)."""
    car = env.car
    vx, vy = car.hull.linearVelocity
    return {"speed": math.hypot(vx, vy), "off_road": not any(w.tiles for w in car.wheels),
            "tiles": int(env.tile_visited_count), "track_tiles": len(env.track)}


def register_envs() -> None:
    """Register ``worldlab/CarRacing-v3`` with Gymnasium (idempotent)."""
    if ENV_ID in gym.envs.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="envs.car_racing:FastCarRacing",
        max_episode_steps=1000,
        reward_threshold=900,
    )
