"""Mutation testing of the core modules, module by module: ``python -m benchmarks.mutation``.

Tool: cosmic-ray (``dev`` extra). Chosen over mutmut 3.x because cosmic-ray applies one mutation to
the source file on disk and runs an arbitrary test command in a fresh process, so each mutant is
compiled by JAX exactly as in production (mutmut 3 rewrites every function into a trampoline, which
changes the functions that ``jax.jit``/flax/``struct.dataclass`` see, and forks a process that has
already initialised JAX's thread pools), and restricting a run to one module and a hand-picked list
of tests is two lines of config. Its session database also makes an honest sample easy: every
mutant is generated, then all but a seeded random sample are marked skipped before execution.

Per module this driver:

1. copies the working tree (``git ls-files --cached --others --exclude-standard``, so uncommitted
   tests are included) into ``.mutation/work/<module>-<shard>/``: mutations are applied to the
   copy, never to your checkout, and an interrupted run cannot leave a mutant behind;
2. runs the module's tests (the :data:`TESTS` table: the fastest tests that exercise it) once
   unmutated; they must pass (and must import the copy's ``metarl_jax``), and their time sets the
   per-mutant timeout (``--timeout-factor`` x baseline + 30 s);
3. ``cosmic-ray init`` generates every mutant of the module; then four kinds are left out, and
   counted in ``left_out``: mutants on lines marked ``# pragma: no mutate`` (``cr-filter-pragma``;
   for mutants triaged as equivalent), mutants inside annotations (every core module has
   ``from __future__ import annotations``, so annotations are never evaluated: ``int | bool`` ->
   ``int & bool`` is equivalent by construction), and :data:`EXCLUDED_OPERATORS` (arithmetic ->
   bitwise/shift replacements: on float arrays they only raise ``TypeError``, so they are killed by
   construction and would only inflate the score; ``--all-operators`` keeps them), and mutants
   that are not valid Python (cosmic-ray turns the bare ``*`` of a signature into ``**``);
4. ``--sample N --seed S`` keeps a uniform random sample of N of the remaining mutants
   (``random.Random(S).sample`` over the mutants sorted by operator and occurrence, so the sample
   depends only on the module's source, N and S); without ``--sample`` every mutant runs;
5. ``cosmic-ray exec`` runs each mutant with ``pytest -x -q -p no:cacheprovider -n 0 <tests>``
   (``--jobs J`` splits the sample over J copies run side by side). JAX's persistent compilation
   cache (``.mutation/jax-cache``) is on: the programs a mutant does not change are loaded, not
   recompiled (a cache key is the lowered program, so a changed program is always recompiled);
6. prints one JSON line (module, mutants generated, left out, eligible, sampled, killed, survived,
   timeout, incompetent, score, seconds, seconds per mutant, tests, seed), appends it to
   ``.mutation/results.jsonl`` and writes the survivors (file:line, original -> mutated line,
   operator, diff) and a table of every sampled mutant with the test that killed it to
   ``.mutation/<module>.md``.

Score = (killed + timeout) / (killed + timeout + survived) over the sampled mutants; a timeout
(the tests ran longer than the limit) counts as killed, as in cosmic-ray; an incompetent mutant
(cosmic-ray could not run the tests at all) is reported and left out of the score.

Usage::

    python -m benchmarks.mutation                                  # all core modules, full runs
    python -m benchmarks.mutation --module metarl_jax/losses.py --sample 40 --seed 0
    python -m benchmarks.mutation --list                           # the module -> tests table
    make mutation [MODULE=metarl_jax/losses.py] [SAMPLE=40] [SEED=0] [JOBS=2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Module -> the tests that cover it, fastest and most direct first (pytest -x stops at the first
# failure, so most mutants die in the first file). Chosen by grepping the tests' imports and timing
# the candidates with ``pytest --durations`` on 2 CPU cores (warm JAX cache, wall seconds under load:
# test_losses_numpy 3, test_networks 7, test_rollout_semantics 7, test_losses_rlax 9, test_preprocessing
# 17, the five hand-computed test_maml tests below 17, test_estimators 21, test_checkpoint 24,
# test_actor_critic 25, test_rollout_unroll + test_float64_rollouts 27, test_q_learning 36). The slow
# end-to-end files (the whole of test_maml.py: 5 min; test_pipeline.py, test_train.py) are left out or
# reduced to single tests. Entries are pytest node ids; an entry whose file or test function does not
# exist is dropped with a warning (tests are being added), and the JSON line lists the tests used.
_MAML_DIRECT = [
    "tests/test_maml.py::test_meta_sgd_inner_steps_are_theta_minus_rate_times_gradient",
    "tests/test_maml.py::test_meta_sgd_meta_gradient_matches_the_hand_computed_chain_rule",
    "tests/test_maml.py::test_optax_sgd_inner_optimizer_equals_plain_sgd_by_hand",
    "tests/test_maml.py::test_optax_adam_inner_optimizer_equals_adam_by_hand",
    "tests/test_maml.py::test_pg_dice_score_term_is_weighed_by_the_standardised_objective_estimate",
]
TESTS: dict[str, list[str]] = {
    "metarl_jax/losses.py": [
        "tests/test_losses_numpy.py",
        "tests/test_losses_rlax.py",
        "tests/test_estimators.py",
        "tests/test_actor_critic.py",  # value_loss, entropy_bonus, gae_advantages in use
    ],
    "metarl_jax/rollout.py": [
        "tests/test_rollout_semantics.py",
        "tests/test_rollout_unroll.py",
        "tests/test_float64_rollouts.py",
    ],
    "metarl_jax/networks.py": [
        "tests/test_networks.py",
        "tests/test_float64_rollouts.py",
        "tests/test_estimators.py",
        "tests/test_rollout_unroll.py",
    ],
    "metarl_jax/learners/pg.py": [
        "tests/test_learners_numpy.py",
        "tests/test_maml.py::test_pg_dice_score_term_is_weighed_by_the_standardised_objective_estimate",
        "tests/test_estimators.py",
        "tests/test_rollout_unroll.py",
    ],
    "metarl_jax/algorithms/maml.py": [
        *_MAML_DIRECT,
        "tests/test_estimators.py",
        "tests/test_maml.py::test_second_order_meta_gradient_matches_finite_differences[1]",
        "tests/test_maml.py::test_first_order_is_second_order_without_the_inner_hessian",
        "tests/test_maml.py::test_leave_one_out_score_baseline_by_hand_and_zero_for_a_single_task",
        "tests/test_maml.py::test_task_metrics_report_the_first_inner_steps_loss_and_return",
        "tests/test_maml.py::test_config_validation_names_the_field",
        "tests/test_benchmark_speed.py",  # auto_task_chunk
        "tests/test_maml.py::test_accumulated_chunks_equal_the_whole_batch_gradient",  # chunked accumulation
        "tests/test_train.py::test_iteration_count_not_a_multiple_of_the_chunk_is_exact",  # the train step
    ],
    "metarl_jax/algorithms/outer.py": [
        "tests/test_outer.py",
    ],
    "metarl_jax/algorithms/inner.py": [  # the one inner step: adapt, adapt_on_data, sgd / meta_sgd
        *_MAML_DIRECT,
        "tests/test_estimators.py",
        "tests/test_maml.py::test_second_order_meta_gradient_matches_finite_differences[1]",
        "tests/test_maml.py::test_first_order_is_second_order_without_the_inner_hessian",
        "tests/test_outer.py::test_meta_batch_reproduces_maml_adapt",
        "tests/test_algorithms.py",
    ],
    "metarl_jax/learners/q_learning.py": [
        "tests/test_q_learning.py",
    ],
    "metarl_jax/learners/actor_critic.py": [
        "tests/test_actor_critic.py",
    ],
    "metarl_jax/preprocessing.py": [
        "tests/test_preprocessing.py",
    ],
    "metarl_jax/training/checkpoint.py": [
        "tests/test_checkpoint.py",
    ],
    "metarl_jax/validation.py": [
        "tests/test_validation.py",
    ],
    "metarl_jax/walk_forward.py": [  # the finance experiment end to end is left out (25 s)
        "tests/test_walk_forward.py::test_window_metrics_follow_their_formulas",
        "tests/test_walk_forward.py::test_each_evaluation_window_adapts_on_the_window_just_before_it_inside_the_period",
        "tests/test_walk_forward.py::test_walk_forward_rows_and_the_hindsight_bound",
        "tests/test_walk_forward.py::test_adaptation_reads_no_price_of_the_window_it_is_evaluated_on",
        "tests/test_walk_forward.py::test_metric_and_family_edges_a_mutation_run_found_untested",
    ],
    "metarl_jax/tasks/finance/risk_control.py": [
        "tests/test_finance.py",
        "tests/test_walk_forward.py::test_metric_and_family_edges_a_mutation_run_found_untested",
    ],
    "metarl_jax/tasks/finance/data.py": [
        "tests/test_finance.py",
    ],
    "metarl_jax/explain.py": [
        "tests/test_explain.py",
    ],
}

# The core modules `make mutation` runs (outer.py and validation.py are in the table for one-off runs).
CORE = [
    "metarl_jax/losses.py",
    "metarl_jax/rollout.py",
    "metarl_jax/networks.py",
    "metarl_jax/learners/pg.py",
    "metarl_jax/algorithms/maml.py",
    "metarl_jax/learners/q_learning.py",
    "metarl_jax/learners/actor_critic.py",
    "metarl_jax/preprocessing.py",
    "metarl_jax/training/checkpoint.py",
]

# Arithmetic -> bitwise/shift replacements (``a + b`` -> ``a << b``, ``a * b`` -> ``a ^ b``): on the
# float arrays of this code they raise TypeError at trace time, i.e. they are killed by construction.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_(Add|Sub|Mul|Div|FloorDiv|Mod|Pow|MatMult)_(LShift|RShift|BitOr|BitAnd|BitXor)$",
]

PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-n", "0"]
OUT = REPO / ".mutation"


def _log(msg: str) -> None:
    print(f"[mutation {datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _tool(name: str) -> str:
    """A console script of the running interpreter's environment (cosmic-ray, cr-filter-pragma)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        sys.exit(f"{name} not found next to {sys.executable}: install the dev extra (pip install -e '.[dev]')")
    return str(path)


def _copy_tree(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree but still in the index
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _existing(tests: list[str]) -> list[str]:
    """The entries of ``tests`` whose file (and test function, for a ``file::name`` node id) exist."""
    import ast

    kept = []
    for entry in tests:
        path, _, name = entry.partition("::")
        ok = (REPO / path).is_file()
        if ok and name:
            tree = ast.parse((REPO / path).read_text())
            funcs = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            ok = name.split("[")[0].split("::")[-1] in funcs
        if ok:
            kept.append(entry)
        else:
            _log(f"warning: {entry} does not exist; left out")
    return kept


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(OUT / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("PYTHONPATH", None)  # the copy's metarl_jax must win (cwd is first on sys.path)
    return env


def _test_command(tests: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests]


def _baseline(work: Path, module: str, tests: list[str]) -> float:
    """Run the unmutated tests in the copy; return their wall time. Exits if they fail."""
    probe = subprocess.run(
        [sys.executable, "-c", "import metarl_jax, sys; sys.stdout.write(metarl_jax.__file__)"],
        cwd=work, env=_env(), capture_output=True, text=True, check=True,
    ).stdout
    if not Path(probe).resolve().is_relative_to(work.resolve()):
        raise RuntimeError(f"the copy imports metarl_jax from {probe}, not from {work}: mutants would not be tested")
    t0 = time.perf_counter()
    proc = subprocess.run(_test_command(tests), cwd=work, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"baseline tests for {module} fail unmutated (rc {proc.returncode}):\n{tail}")
    return seconds


def _write_config(work: Path, module: str, tests: list[str], timeout: float) -> Path:
    cfg = work / "cosmic-ray.toml"
    command = " ".join(shlex.quote(a) for a in _test_command(tests))
    cfg.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout:.1f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    return cfg


def _sort_key(item):
    m = item.mutations[0]
    return (m.operator_name, m.occurrence)


def _annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions, as cosmic-ray counts them (line from 1, column in characters), of every
    annotation of a module with ``from __future__ import annotations``, where annotations are never
    evaluated: a mutant inside one is equivalent by construction. Empty for other modules."""
    import ast

    source = path.read_text()
    tree = ast.parse(source)
    future = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    if not future:
        return []
    lines = source.splitlines()

    def chars(line: int, byte_col: int) -> int:  # ast counts UTF-8 bytes, parso characters
        return len(lines[line - 1].encode()[:byte_col].decode(errors="ignore"))

    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            ann = node.annotation
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            ann = node.returns
        elif isinstance(node, ast.AnnAssign):
            ann = node.annotation
        else:
            continue
        if ann is not None:
            spans.append(((ann.lineno, chars(ann.lineno, ann.col_offset)),
                          (ann.end_lineno, chars(ann.end_lineno, ann.end_col_offset))))
    return spans


def _compiles(source: Path, mutation) -> bool:
    """Whether the mutant is valid Python. cosmic-ray's operators can write invalid code (the bare
    ``*`` of a keyword-only signature becomes ``**``; ``x ** -1`` becomes ``x ** not 1``): such a
    mutant is killed by construction at import, so it is left out, like the excluded operators."""
    import warnings

    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code

    operator = cosmic_ray.plugins.get_operator(mutation.operator_name)(**(mutation.operator_args or {}))
    code = mutate_code(_read(source), operator, mutation.occurrence)
    if code is None:  # no such occurrence: cosmic-ray reports it (as incompetent), not us
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(code, str(source), "exec")
    except SyntaxError:
        return False
    return True


_SOURCES: dict[Path, str] = {}


def _read(path: Path) -> str:
    if path not in _SOURCES:
        _SOURCES[path] = path.read_text()
    return _SOURCES[path]


def _select(session: Path, source: Path, sample: int | None, seed: int, exclude: list[str]) -> dict:
    """Skip annotation mutants and excluded operators, then all but a seeded random sample.

    Returns the counts (``mutants``: all generated; ``pragma``, ``annotation``, ``operator``: left
    out for each reason; ``eligible``: the rest) and ``chosen``, the sampled job ids.
    """
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    pattern = re.compile("|".join(f"(?:{e})" for e in exclude)) if exclude else None
    spans = _annotation_spans(source)

    def in_annotation(m) -> bool:
        return any(a <= tuple(m.start_pos) and tuple(m.end_pos) <= b for a, b in spans)

    with use_db(str(session), WorkDB.Mode.open) as db:
        items = sorted(db.work_items, key=_sort_key)
        pending = {item.job_id for item in db.pending_work_items}  # not skipped by the pragma filter
        counts = dict(mutants=len(items), pragma=len(items) - len(pending), annotation=0, operator=0, syntax=0)
        eligible = []
        for i in items:
            if i.job_id not in pending:
                continue
            if in_annotation(i.mutations[0]):
                counts["annotation"] += 1
            elif pattern and pattern.match(i.mutations[0].operator_name):
                counts["operator"] += 1
            elif not _compiles(source, i.mutations[0]):
                counts["syntax"] += 1
            else:
                eligible.append(i)
        if sample is not None and sample < len(eligible):
            chosen = random.Random(seed).sample(eligible, sample)
        else:
            chosen = list(eligible)
        chosen_ids = {i.job_id for i in chosen}
        skip = [i.job_id for i in items if i.job_id in pending and i.job_id not in chosen_ids]
        if skip:
            db.set_multiple_results(skip, WorkResult(output="not sampled", worker_outcome=WorkerOutcome.SKIPPED))
        return dict(counts, eligible=len(eligible), chosen=[i.job_id for i in sorted(chosen, key=_sort_key)])


def _restrict(session: Path, keep: set[str]) -> None:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        skip = [i.job_id for i in db.pending_work_items if i.job_id not in keep]
        if skip:
            db.set_multiple_results(skip, WorkResult(output="other shard", worker_outcome=WorkerOutcome.SKIPPED))


def _results(session: Path, ids: set[str]):
    from cosmic_ray.work_db import WorkDB, use_db

    with use_db(str(session), WorkDB.Mode.open) as db:
        items = {i.job_id: i for i in db.work_items}
        return [
            (items[job_id], result) for job_id, result in db.results
            if job_id in ids and result.worker_outcome.value != "skipped"  # other shards' share
        ]


def _changed_lines(diff: str) -> tuple[str, str]:
    lines = diff.splitlines()
    minus = [l[1:].strip() for l in lines if l.startswith("-") and not l.startswith("---") and l[1:].strip()]
    plus = [l[1:].strip() for l in lines if l.startswith("+") and not l.startswith("+++") and l[1:].strip()]
    return " / ".join(minus), " / ".join(plus)


def run_module(module: str, tests: list[str], sample: int | None, seed: int, jobs: int,
               timeout_factor: float, exclude: list[str]) -> dict:
    t_start = time.perf_counter()
    stem = Path(module).stem
    works = [OUT / "work" / f"{stem}-{k}" for k in range(jobs)]
    _log(f"{module}: copying the working tree to {works[0].parent}/{stem}-*")
    for work in works:
        _copy_tree(work)
    _log(f"{module}: baseline run of {' '.join(tests)}")
    base = _baseline(works[0], module, tests)
    timeout = timeout_factor * base + 30.0
    _log(f"{module}: baseline passed in {base:.1f} s; per-mutant timeout {timeout:.0f} s")

    session0 = works[0] / "session.sqlite"
    cfgs = [_write_config(w, module, tests, timeout) for w in works]
    subprocess.run([_tool("cosmic-ray"), "init", str(cfgs[0]), str(session0)], cwd=works[0], check=True)
    subprocess.run([_tool("cr-filter-pragma"), str(session0)], cwd=works[0], check=True)
    sel = _select(session0, works[0] / module, sample, seed, exclude)
    eligible, chosen = sel["eligible"], sel["chosen"]
    _log(f"{module}: {sel['mutants']} mutants; left out: {sel['annotation']} in annotations, {sel['operator']}"
         f" excluded operators, {sel['syntax']} invalid Python, {sel['pragma']} on '# pragma: no mutate' lines;"
         f" {eligible} eligible,"
         f" running {len(chosen)}"
         + (f" (random sample, seed {seed})" if len(chosen) < eligible else ""))

    sessions = [w / "session.sqlite" for w in works]
    for k, session in enumerate(sessions):
        if k:
            shutil.copy2(session0, session)
    if jobs > 1:
        for k, session in enumerate(sessions):
            _restrict(session, set(chosen[k::jobs]))

    procs = []
    try:
        for work, cfg, session in zip(works, cfgs, sessions):
            procs.append(subprocess.Popen(
                [_tool("cosmic-ray"), "exec", str(cfg), str(session)],
                cwd=work, env=_env(), start_new_session=True,
            ))
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()

    done = []
    for session in sessions:
        done += _results(session, set(chosen))
    counts = dict(killed=0, survived=0, timeout=0, incompetent=0, not_run=len(chosen) - len(done))
    survivors = []
    for item, result in done:
        outcome = result.test_outcome.value if result.test_outcome else None
        if result.worker_outcome.value != "normal" or outcome == "incompetent":
            counts["incompetent"] += 1
        elif outcome == "survived":
            counts["survived"] += 1
            survivors.append((item, result))
        elif result.output == "timeout":
            counts["timeout"] += 1
        else:
            counts["killed"] += 1
    scored = counts["killed"] + counts["timeout"] + counts["survived"]
    seconds = time.perf_counter() - t_start
    line = dict(
        module=module, mutants=sel["mutants"],
        left_out=dict(annotation=sel["annotation"], operator=sel["operator"], syntax_error=sel["syntax"],
                      pragma=sel["pragma"]),
        eligible=eligible, sampled=len(chosen),
        sample=("all" if len(chosen) == eligible else f"random {len(chosen)}/{eligible}, seed {seed}"),
        **counts,
        score=round((counts["killed"] + counts["timeout"]) / scored, 3) if scored else None,
        seconds=round(seconds, 1),
        seconds_per_mutant=round((seconds - base) / max(len(done), 1), 1),
        baseline_seconds=round(base, 1), timeout_s=round(timeout),
        tests=tests, jobs=jobs, excluded_operators=exclude,
    )
    _write_report(module, line, survivors, done)
    return line


def _killer(result) -> str:
    """The first failing test named in pytest's short summary (``-ra``), or why the mutant died."""
    if result.output == "timeout":
        return "timeout"
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", result.output or "", re.MULTILINE)
    if found:
        test = found.group(1)
        return test if "::" in test else f"an error collecting {test} (the mutant breaks an import)"
    return "no test failed: import/collection error" if (result.output or "").strip() else "(no output)"


def _write_report(module: str, line: dict, survivors, done) -> None:
    report = OUT / f"{Path(module).stem}.md"
    out = [f"# Surviving mutants: {module}", "", "```json", json.dumps(line, indent=1), "```", ""]
    survivors = sorted(survivors, key=lambda ir: (ir[0].mutations[0].start_pos, ir[0].mutations[0].operator_name))
    for item, result in survivors:
        m = item.mutations[0]
        before, after = _changed_lines(result.diff or "")
        out += [
            f"## {module}:{m.start_pos[0]}  {m.operator_name.removeprefix('core/')} (occurrence {m.occurrence},"
            f" in {m.definition_name})",
            f"`{before}` -> `{after}`",
            "", "```diff", *(result.diff or "").splitlines()[1:], "```", "",
        ]
    if not survivors:
        out.append("No surviving mutants.")
    out += ["", "## Every sampled mutant", "", "| line | operator | mutation | outcome |", "|---|---|---|---|"]
    for item, result in sorted(done, key=lambda ir: (ir[0].mutations[0].start_pos, ir[0].mutations[0].operator_name)):
        m = item.mutations[0]
        before, after = _changed_lines(result.diff or "")
        outcome = result.test_outcome.value if result.test_outcome else result.worker_outcome.value
        if outcome == "killed":
            outcome = f"killed by {_killer(result)}"
        change = f"`{before}` -> `{after}`".replace("|", "\\|")
        out.append(f"| {m.start_pos[0]} | {m.operator_name.removeprefix('core/')} | {change} | {outcome} |")
    report.write_text("\n".join(out) + "\n")
    _log(f"{module}: report in {report.relative_to(REPO)}")
    for item, result in survivors:
        m = item.mutations[0]
        before, after = _changed_lines(result.diff or "")
        _log(f"  survived {module}:{m.start_pos[0]} {m.operator_name.removeprefix('core/')}: {before}  ->  {after}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", help="module path (repeatable); default: the core modules")
    parser.add_argument("--tests", nargs="+", help="override the test table (pytest node ids) for --module")
    parser.add_argument("--sample", type=int, default=None, help="run a seeded random sample of N mutants per module")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="copies run side by side (each runs its share of mutants)")
    parser.add_argument("--timeout-factor", type=float, default=2.0,
                        help="per-mutant timeout = factor x baseline seconds + 30")
    parser.add_argument("--all-operators", action="store_true", help="keep the excluded arithmetic->bitwise operators")
    parser.add_argument("--list", action="store_true", help="print the module -> tests table and exit")
    args = parser.parse_args(argv)

    if args.list:
        for module, tests in TESTS.items():
            print(f"{module}{'' if module in CORE else ' (not in make mutation)'}: {' '.join(tests)}")
        return 0
    modules = args.module or CORE
    for module in modules:
        if not (REPO / module).is_file():
            parser.error(f"no such module: {module}")
        if module not in TESTS and not args.tests:
            parser.error(f"{module} has no entry in the TESTS table: pass --tests")
    if args.tests and len(modules) != 1:
        parser.error("--tests needs exactly one --module")
    if args.sample is not None and args.sample < 1:
        parser.error("--sample must be positive")

    OUT.mkdir(exist_ok=True)
    exclude = [] if args.all_operators else EXCLUDED_OPERATORS
    status = 0
    for module in modules:
        tests = args.tests or _existing(TESTS[module])
        if not tests:
            parser.error(f"none of the tests listed for {module} exist")
        try:
            line = run_module(module, tests, args.sample, args.seed, max(1, args.jobs), args.timeout_factor, exclude)
        except RuntimeError as exc:
            _log(str(exc))
            line = dict(module=module, error=str(exc).splitlines()[0])
            status = 1
        print(json.dumps(line), flush=True)
        with open(OUT / "results.jsonl", "a") as fh:
            fh.write(json.dumps(dict(line, date=datetime.datetime.now().isoformat(timespec="seconds"))) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
