"""Gridworld maze with a per-task goal (a task-as-parameter version of gymnax's MetaMaze).

The maze is a fixed grid of free cells and walls (``layout``: strings of ``.``
free, ``#`` wall, ``S`` the start cell). The agent's state is its free cell,
indexed ``0..N-1`` in row-major order; it starts at ``start``. Four actions
move up, right, down, left; a move into a wall or off the grid leaves the agent
in place.

A task is the goal cell (``MazeParams.goal``, uniform over the free cells other
than the start); it lives in ``EnvParams`` and is the same for every episode
(gymnax's MetaMaze draws the goal at reset into the state).

Reward and goal. Moving onto the goal pays ``1`` and *teleports the agent back
to the start* in the same step; the episode goes on (no natural termination),
so within one episode an agent can collect the reward repeatedly, which makes
remembering the goal after finding it pay off (as in Miconi et al. 2019). The
observation is the one-hot encoding of the agent's cell (float32, ``[N]``).

Exact optimum. The maze is a deterministic tabular MDP (:meth:`GridMaze.as_tabular`),
so finite-horizon value iteration solves it. In closed form: if ``d`` is the
shortest-path distance from start to goal, rewards can arrive at best at steps
``d, 2d, ...``, so

    R*(goal) = floor(H / d).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from metarl_jax.tasks import tabular_mdp
from metarl_jax.tasks.base import TaskFamily
from metarl_jax.tasks.tabular_mdp import TabularMDPParams
from metarl_jax.validation import check_int

#: Moves of the four actions as (d_row, d_col): up, right, down, left.
DIRECTIONS = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int32)

#: A small 5x5 maze with walls; every free cell is reachable from ``S``.
SMALL_MAZE_LAYOUT = (
    "S.#..",
    ".##.#",
    ".....",
    "#.##.",
    "...#.",
)


@struct.dataclass
class MazeState(environment.EnvState):
    """The agent's free-cell index and the step counter."""

    cell: jax.Array  # int32 scalar in [0, N)
    time: int


@struct.dataclass
class MazeParams(environment.EnvParams):
    """One maze task: the goal cell (and the start cell), as free-cell indices."""

    goal: jax.Array = struct.field(default_factory=lambda: jnp.array(1, jnp.int32))
    start: jax.Array = struct.field(default_factory=lambda: jnp.array(0, jnp.int32))
    max_steps_in_episode: int = 20


def open_layout(size: int) -> tuple[str, ...]:
    """A ``size x size`` grid without walls, start in the centre cell."""
    rows = ["." * size for _ in range(size)]
    centre = size // 2
    rows[centre] = "." * centre + "S" + "." * (size - centre - 1)
    return tuple(rows)


def _parse_layout(layout: Any) -> tuple[tuple[str, ...], np.ndarray, int]:
    """Validate ``layout``; return it as a tuple, the free cells ``[N, 2]`` and the start index."""
    if isinstance(layout, str) or not isinstance(layout, Sequence) or len(layout) == 0:
        raise ValueError(f"layout={layout!r} is invalid: must be a non-empty sequence of strings")
    rows = tuple(layout)
    if not all(isinstance(r, str) for r in rows) or len({len(r) for r in rows}) != 1:
        raise ValueError(f"layout={layout!r} is invalid: rows must be strings of equal length")
    bad = sorted({c for r in rows for c in r} - set(".#S"))
    if bad:
        raise ValueError(
            f"layout={layout!r} is invalid: characters {bad} found; must use only '.', '#', 'S'"
        )
    starts = [(i, j) for i, r in enumerate(rows) for j, c in enumerate(r) if c == "S"]
    if len(starts) > 1:
        raise ValueError(f"layout={layout!r} is invalid: at most one 'S' (found {len(starts)})")
    free = np.array([(i, j) for i, r in enumerate(rows) for j, c in enumerate(r) if c != "#"])
    if len(free) < 2:
        raise ValueError(f"layout={layout!r} is invalid: needs at least 2 free cells")
    index = {tuple(c): k for k, c in enumerate(free.tolist())}
    start = index[starts[0]] if starts else 0
    dist = _bfs_distances(_neighbour_table(rows, free), start)
    if np.any(dist < 0):
        unreachable = [tuple(c) for c in free[dist < 0].tolist()]
        raise ValueError(
            f"layout={layout!r} is invalid: cells {unreachable} are unreachable from the start; "
            "every free cell must be reachable"
        )
    return rows, free, start


def _neighbour_table(rows: tuple[str, ...], free: np.ndarray) -> np.ndarray:
    """``next_cell[k, a]``: the free cell reached from cell ``k`` by action ``a``; ``[N, 4]``."""
    index = {tuple(c): k for k, c in enumerate(free.tolist())}
    table = np.zeros((len(free), len(DIRECTIONS)), dtype=np.int32)
    for k, (i, j) in enumerate(free.tolist()):
        for a, (di, dj) in enumerate(DIRECTIONS.tolist()):
            table[k, a] = index.get((i + di, j + dj), k)
    return table


def _bfs_distances(next_cell: np.ndarray, source: int) -> np.ndarray:
    """Shortest-path step counts from ``source`` to every cell (-1 if unreachable); ``[N]``."""
    dist = np.full(next_cell.shape[0], -1, dtype=np.int64)
    dist[source] = 0
    queue = deque([source])
    while queue:
        k = queue.popleft()
        for n in next_cell[k]:
            if dist[n] < 0:
                dist[n] = dist[k] + 1
                queue.append(int(n))
    return dist


class GridMaze(TaskFamily):
    """Fixed-layout gridworld; a task is a goal cell; reward 1 and teleport to start on reaching it.

    Headroom (3x3 open grid, ``H=10``, 100 held-out goals): the exact optimum gets 7.55, the best
    single (multi-task) policy about 2.9: the goal is not observed (``docs/benchmarks.md``).

    Args:
      size: side of an open grid (used when ``layout`` is None), >= 2.
      layout: optional wall layout (strings of ``.``, ``#``, ``S``), e.g.
        :data:`SMALL_MAZE_LAYOUT`; all free cells must be reachable from the start.
      horizon: episode length, >= 1.
    """

    has_optimum = True

    def __init__(self, size: int = 5, layout: Sequence[str] | None = None, horizon: int = 20):
        super().__init__()
        if layout is None:
            layout = open_layout(check_int("size", size, minimum=2))
        self.horizon = check_int("horizon", horizon, minimum=1)
        self.layout, self.cell_coords, self.start = _parse_layout(layout)
        self.num_cells = int(self.cell_coords.shape[0])
        self.next_cell = _neighbour_table(self.layout, self.cell_coords)  # [N, 4] numpy constant

    # Equal configs compare and hash equal, so jit caches keyed on the family are shared.
    def _config(self) -> tuple:
        return (type(self), self.layout, self.horizon)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GridMaze) and self._config() == other._config()

    def __hash__(self) -> int:
        return hash(self._config())

    @property
    def default_params(self) -> MazeParams:
        """Goal = the first free cell other than the start."""
        goal = 1 if self.start == 0 else 0
        return MazeParams(
            goal=jnp.array(goal, jnp.int32),
            start=jnp.array(self.start, jnp.int32),
            max_steps_in_episode=self.horizon,
        )

    def sample_params(self, key: jax.Array) -> MazeParams:
        """Goal uniform over the ``N - 1`` free cells other than the start."""
        j = jax.random.randint(key, (), 0, self.num_cells - 1, dtype=jnp.int32)
        goal = j + (j >= self.start).astype(jnp.int32)
        return MazeParams(
            goal=goal, start=jnp.array(self.start, jnp.int32), max_steps_in_episode=self.horizon
        )

    def _transition(self, cell: jax.Array, action: jax.Array, params: MazeParams):
        """Deterministic move; returns ``(next cell, reward)`` (teleport to start on the goal)."""
        moved = jnp.asarray(self.next_cell)[cell, action]
        reached = moved == params.goal
        return jnp.where(reached, params.start, moved), reached.astype(jnp.float32)

    def as_tabular(self, params: MazeParams) -> TabularMDPParams:
        """The task as a deterministic tabular MDP (for the solvers in :mod:`tabular_mdp`).

        ``P[s, a] = one_hot(s')`` with ``s'`` the move's cell, or the start when
        that cell is the goal; ``R[s, a] = 1[move lands on the goal]``;
        ``mu = one_hot(start)``. Shapes ``[N, 4, N]``, ``[N, 4]``, ``[N]``.
        """
        cells = jnp.arange(self.num_cells)[:, None]
        actions = jnp.arange(len(DIRECTIONS))[None, :]
        next_cell, reward = self._transition(cells, actions, params)
        return TabularMDPParams(
            transitions=jax.nn.one_hot(next_cell, self.num_cells, dtype=jnp.float32),
            rewards=reward,
            init_dist=jax.nn.one_hot(params.start, self.num_cells, dtype=jnp.float32),
            max_steps_in_episode=self.horizon,
        )

    def optimal_return(self, params: MazeParams, horizon: int | None = None) -> jax.Array:
        """Finite-horizon value iteration on :meth:`as_tabular` (equals ``floor(H / d)``)."""
        horizon = self.horizon if horizon is None else horizon
        return tabular_mdp.optimal_return(self.as_tabular(params), horizon)

    def distances_from_start(self) -> np.ndarray:
        """Shortest-path step counts from the start to every free cell (numpy, ``[N]``)."""
        return _bfs_distances(self.next_cell, self.start)

    def step_env(
        self, key: jax.Array, state: MazeState, action: jax.Array, params: MazeParams
    ) -> tuple[jax.Array, MazeState, jax.Array, jax.Array, dict[str, Any]]:
        """Move; on the goal, reward 1 and back to the start."""
        del key
        cell, reward = self._transition(state.cell, action, params)
        state = MazeState(cell=cell, time=state.time + 1)
        terminated = jnp.zeros((), dtype=bool)
        return self.get_obs(state, params), state, reward, terminated, {}

    def reset_env(self, key: jax.Array, params: MazeParams) -> tuple[jax.Array, MazeState]:
        """Start at ``params.start`` (deterministic; the goal comes from ``params``)."""
        del key
        state = MazeState(cell=jnp.asarray(params.start, jnp.int32), time=0)
        return self.get_obs(state, params), state

    def get_obs(self, state: MazeState, params=None, key=None) -> jax.Array:
        """One-hot of the agent's cell, float32 ``[N]``."""
        return jax.nn.one_hot(state.cell, self.num_cells, dtype=jnp.float32)

    def is_terminated(self, state: MazeState, params: MazeParams) -> jax.Array:
        return jnp.zeros((), dtype=bool)

    @property
    def name(self) -> str:
        rows, cols = len(self.layout), len(self.layout[0])
        return f"GridMaze-{rows}x{cols}"

    @property
    def num_actions(self) -> int:
        return len(DIRECTIONS)

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(len(DIRECTIONS))

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.num_cells,), jnp.float32)
