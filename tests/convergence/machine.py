"""The randomized convergence harness: a Hypothesis state machine over two or three
systems on virtual time (SQL tables, or the SaaS simulators of saas_world.py), with people
editing, faults, crashes, races and runs.

After every step it checks what needs no quiescence (the ID map is a bijection; a
completed run returned every row changed since the previous completed extraction began).
At the end it stops the people and the faults, runs until a run writes nothing, and checks
every invariant of the design: convergence, no echo, no lost update, no duplicate, no
resurrection. A failing sequence is printed as a case of test_regressions.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, invariant
from hypothesis.stateful import initialize as hypothesis_initialize
from hypothesis.stateful import rule as hypothesis_rule

from flows.steps import run_sync
from tests.convergence.world import FIELDS, Faults, PostgresSide, Side, SqlSide, World
from tests.crash import Crash, CrashAt
from twoway.engine import Runtime
from twoway.errors import AlreadyRunning
from twoway.report import RunReport
from twoway.state import conflicts

RUN_STEPS = [
    "extract s0",
    "extract s1",
    "map IDs",
    "compute field deltas",
    "load s0",
    "load s1",
    "commit state",
]
QUIESCE_RUNS = 5
#: the runs' lease, on the world's clock. The lease keeper renews on real time, while a
#: run's retry waits jump the world's clock by up to every endpoint's retry deadline
#: (900 s each): a lease shorter than that would lapse mid-run, on the replay's clock only
LEASE_TTL = 24 * 3600.0


class RunWatch(CrashAt):
    """What the harness learns of a run as it goes: each chunk's commit (its creates are
    known from then on), and whether the last one was committed; dies at a chosen point
    when ``at`` is given."""

    def __init__(self, world: World, at: str = "", after: bool = False, nth: int = 1):
        super().__init__(at, after, nth)
        self.world = world
        self.total = 0
        self.commits = 0

    def chunk(self, index: int, total: int, writes: int) -> None:
        self.total = total

    def step(self, name: str, ended: bool) -> None:
        if name == "commit state" and ended:
            self.commits += 1
            self.world.chunk_committed()
        super().step(name, ended)

    @property
    def all_committed(self) -> bool:
        return self.commits >= max(1, self.total)


fault_rates = st.sampled_from([0.0, 0.0, 0.1, 0.3])


def _logged(fn: Callable[..., None]) -> Callable[..., None]:
    """A rule that writes itself into the machine's steps, as a replay names it."""

    @functools.wraps(fn)
    def step(self: SyncMachine, **arguments: Any) -> None:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(arguments.items()))
        self.steps.append(f"{fn.__name__}({shown})")
        return fn(self, **arguments)

    return step


def rule(**arguments: Any) -> Callable[[Callable[..., None]], Any]:
    """A Hypothesis rule whose calls are kept for the replay printed on a failure."""
    return lambda fn: hypothesis_rule(**arguments)(_logged(fn))


def initialize(**arguments: Any) -> Callable[[Callable[..., None]], Any]:
    """A Hypothesis initialize rule whose call is kept for the replay."""
    return lambda fn: hypothesis_initialize(**arguments)(_logged(fn))


class SyncMachine(RuleBasedStateMachine):
    """People, faults and runs in any order; the invariants must hold throughout.

    ``sides`` names the systems' kinds (SQL tables unless a subclass says otherwise, as the
    SaaS machines of saas_world.py do); rules pick a system by index modulo their number.
    """

    systems = 2
    sides: tuple[type[Side], ...] = ()  # empty: ``systems`` SQL tables
    match_on = False
    reuse_keys = False
    overlap = 5.0
    marked: tuple[str, ...] = ()  # systems whose records carry twoway's link marker

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.chunk_size = 3  # records of a chunk: most runs commit in several
        self.prev_start: dict[str, datetime] = {}
        self.steps: list[str] = []

    def replay(self) -> str:
        """The steps so far as a case of test_regressions.py replays them."""
        lines = "".join(f"    {step}\n" for step in self.steps)
        return (
            "replay with tests/convergence/test_regressions.py:\n"
            f'NAME = (\n    {type(self).__name__},\n    """\n{lines}    """,\n)'
        )

    @initialize(seed=st.integers(0, 2**32 - 1), records=st.integers(0, 12))
    def start(self, seed: int, records: int = 0) -> None:
        self.world = World(
            seed,
            self.sides or (SqlSide,) * self.systems,
            match_on=self.match_on,
            reuse_keys=self.reuse_keys,
            overlap=self.overlap,
            marked=self.marked,
        )
        for i in range(records):  # records to start with: reads then span several pages
            self.world.create(self.world.names[i % self.world.systems])

    def teardown(self) -> None:
        with contextlib.suppress(InvalidArgument):  # outside Hypothesis (a replay): no notes
            note(self.replay())  # shown with the failing example only
        if self.world is None:
            return
        try:
            self._quiesce_and_check()
        finally:
            self.world.close()

    # -- people -------------------------------------------------------------------------

    def _system(self, index: int) -> str:
        return self.world.names[index % self.world.systems]

    @rule(side=st.integers(0, 2))
    def person_creates(self, side: int) -> None:
        self.world.clock.advance(1)
        self.world.create(self._system(side))

    @rule(side=st.integers(0, 2), pick=st.integers(0, 50), field=st.sampled_from(FIELDS))
    def person_edits(self, side: int, pick: int, field: str) -> None:
        system = self._system(side)
        keys = self.world.keys(system)
        if keys:
            self.world.clock.advance(1)
            self.world.edit(system, keys[pick % len(keys)], field)

    @rule(side=st.integers(0, 2), pick=st.integers(0, 50), field=st.sampled_from(FIELDS))
    def someone_edits_as_the_integration_account(self, side: int, pick: int, field: str) -> None:
        """An edit made with the integration account's credentials (a script, an admin):
        its values differ from what twoway wrote, so it is a change, never an echo."""
        system = self._system(side)
        keys = self.world.keys(system)
        if keys and self.world.sides[system].account_edits:
            self.world.clock.advance(1)
            self.world.edit(system, keys[pick % len(keys)], field, as_account=True)

    @rule(pick=st.integers(0, 50), fields=st.permutations(FIELDS))
    def people_edit_one_record_on_both_sides(self, pick: int, fields: list[str]) -> None:
        """Two people change different fields of the same record in two systems: a merge."""
        world = self.world
        links: dict[str, dict[str, str]] = {}
        for r in world.id_rows():
            if r.deleted_at is None:
                links.setdefault(r.link_id, {})[r.system] = r.external_id
        shared = sorted(k for k, members in links.items() if len(members) >= 2)
        if not shared:
            return
        members = links[shared[pick % len(shared)]]
        for (system, key), fname in zip(sorted(members.items()), fields, strict=False):
            world.clock.advance(1)
            world.edit(system, key, fname)

    @rule(side=st.integers(0, 2), pick=st.integers(0, 50))
    def person_deletes(self, side: int, pick: int) -> None:
        system = self._system(side)
        keys = self.world.keys(system)
        if keys:
            self.world.clock.advance(1)
            self.world.delete(system, keys[pick % len(keys)])

    @rule(side=st.integers(0, 2), behind=st.sampled_from([0.0, 1.0, 3.0, 4.5]))
    def clock_skew(self, side: int, behind: float) -> None:
        """A person's clock runs behind (or a commit lands late) by less than the overlap."""
        self.world.skew[self._system(side)] = behind

    # -- faults, runs, crashes, races ----------------------------------------------------

    @rule(
        error_before=fault_rates,
        applied_then_timeout=fault_rates,
        partial=fault_rates,
        concurrent_edit=fault_rates,
        edit_while_paging=fault_rates,
    )
    def set_faults(self, **rates: float) -> None:
        self.world.faults = Faults(**rates)

    def _run(
        self, watch: RunWatch | None = None, direction: tuple[str, str] | None = None
    ) -> RunReport | None:
        """A run (of one direction, ``(source, target)``, when given: it reads and moves the
        source's cursor of that direction only, so the extraction check follows two-way runs)."""
        world = self.world
        world.clock.advance(2)
        runtime = Runtime(
            clock=world.clock,
            rng=world.rng,
            sleep=lambda seconds: world.clock.advance(seconds),
            endpoints=world.endpoints,
            store=world.store,
            observer=watch or RunWatch(world),
            chunk_size=self.chunk_size,
            lease_ttl=LEASE_TTL,
        )
        watch = runtime.observer
        starts = {}
        for endpoint in world.endpoints.values():
            endpoint.arm()
        one_way = {"sources": {direction[0]}, "targets": {direction[1]}} if direction else {}
        try:
            report = run_sync(world.definition, runtime, **one_way)
        except Crash:
            if watch.all_committed:
                # died after its state was committed: for the state, the run is done
                world.committed()
                for name, endpoint in world.endpoints.items():
                    if endpoint.last_read_start is not None and not direction:
                        self.prev_start[name] = endpoint.last_read_start
            else:
                world.crashed()
            raise
        if report.status == "completed":
            world.committed(read={direction[0]} if direction else None)
        else:  # a run that failed after writing committed no state: as after a crash
            world.crashed()
        for name, endpoint in world.endpoints.items():
            starts[name] = endpoint.last_read_start
        if report.status == "completed" and not direction:
            self._check_extraction(starts)
        return report

    @rule()
    def run(self) -> None:
        self._run()

    @rule()
    def run_again(self) -> None:
        """A second rule for runs, so sequences hold more of them."""
        self._run()

    @rule()
    def run_while_people_edit(self) -> None:
        """A run whose reads page while people keep editing the records being read."""
        faults = self.world.faults
        self.world.faults = Faults(**{**vars(faults), "edit_while_paging": 0.7})
        try:
            self._run()
        finally:
            self.world.faults = faults

    @rule(step=st.sampled_from(RUN_STEPS), after=st.booleans())
    def crash_run(self, step: str, after: bool) -> None:
        with contextlib.suppress(Crash):
            self._run(RunWatch(self.world, step, after))

    @rule(step=st.sampled_from(["load s0", "load s1", "commit state"]))
    def crash_after_write(self, step: str) -> None:
        """Faults and crashes get a rule of their own: the bugs hide there."""
        self.world.faults = Faults(applied_then_timeout=0.3, partial=0.2)
        with contextlib.suppress(Crash):
            self._run(RunWatch(self.world, step, after=True))

    @rule(batches=st.integers(1, 3))
    def crash_mid_load(self, batches: int) -> None:
        """The process dies inside a load, right after its write batch number ``batches``
        (of any system) was applied: between batches, not between steps."""
        self.world.crash_after_batches = batches
        try:
            with contextlib.suppress(Crash):
                self._run()
        finally:
            self.world.crash_after_batches = None

    @rule()
    def two_runs_race(self) -> None:
        """A second run starts while the first one works: it must be refused by the lease.

        The second run starts from inside the first (between two of its steps), so the
        interleaving is the same on every replay; racing processes are tested with real
        ``twoway run`` processes in tests/integration/test_processes.py.
        """
        world = self.world
        refused: list[str] = []
        machine = self

        class SecondRunMidway(RunWatch):
            def step(self, name: str, ended: bool) -> None:
                # the first step after the reads (a run with nothing to work on commits
                # its cursors only)
                if name in ("map IDs", "commit state") and not ended and not refused:
                    try:
                        run_sync(world.definition, machine._quiet_runtime())
                        refused.append("ran")
                    except AlreadyRunning:
                        refused.append("already running")
                super().step(name, ended)

        report = self._run(SecondRunMidway(world))
        assert report is not None and report.status in ("completed", "failed")
        # a completed run passed its reads: its race ran there and was refused; a failed one
        # may have stopped before it (a read that failed)
        expected = (
            [["already running"]] if report.status == "completed" else [[], ["already running"]]
        )
        assert refused in expected, f"a second run was not refused as it should be: {refused}"

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def id_map_is_a_bijection(self) -> None:
        if self.world is None:
            return
        live = Counter((r.system, r.link_id) for r in self.world.id_rows() if r.deleted_at is None)
        doubled = [k for k, n in live.items() if n > 1]
        assert not doubled, f"links with two live records in one system: {doubled}"

    @invariant()
    def no_write_is_a_no_op(self) -> None:
        if self.world is None:
            return
        assert not self.world.no_op_writes, (
            f"a write set fields to the values the system held: {self.world.no_op_writes}"
        )

    def _check_extraction(self, starts: dict[str, datetime | None]) -> None:
        """A completed run returned every row changed since the previous completed extraction began."""
        for system, start in starts.items():
            previous = self.prev_start.get(system)
            if previous is not None and start is not None:
                expected = {
                    k
                    for (s, k), at in self.world.true_change.items()
                    if s == system and previous <= at < start and k in set(self.world.keys(system))
                }
                returned = self.world.endpoints[system].last_read_keys
                missed = expected - returned
                assert not missed, (
                    f"{system}: rows changed since the last extraction were not read: {missed}"
                )
            if start is not None:
                self.prev_start[system] = start

    def _quiesce_and_check(self) -> None:
        world = self.world
        world.faults = Faults()
        world.clock.advance(7 * 3600)  # past the longest dead-letter backoff: every retry is due
        for _ in range(QUIESCE_RUNS):
            world.clock.advance(5)
            before = sum(e.ops_sent for e in world.endpoints.values())
            for endpoint in world.endpoints.values():
                endpoint.arm()
            # the quiet runs carry whatever one-way runs left behind, often most records of
            # a system at once: the mass-change guard (tested on its own) would stop them
            report = run_sync(world.definition, self._quiet_runtime(), allow_mass_change=True)
            assert report.status == "completed", report.error
            world.committed()
            self._check_extraction({n: e.last_read_start for n, e in world.endpoints.items()})
            if sum(e.ops_sent for e in world.endpoints.values()) == before:
                break
        else:  # a sync that never goes quiet: name what it breaks meanwhile, if anything
            self._check_end_state()
            raise AssertionError(f"still writing after {QUIESCE_RUNS} quiet runs")
        # no echo: one more run after a run that wrote nothing writes nothing
        before = sum(e.ops_sent for e in world.endpoints.values())
        world.clock.advance(5)
        run_sync(world.definition, self._quiet_runtime(), allow_mass_change=True)
        assert sum(e.ops_sent for e in world.endpoints.values()) == before, "a quiet run wrote"
        self._check_end_state()

    def _quiet_runtime(self) -> Runtime:
        world = self.world
        return Runtime(
            clock=world.clock,
            rng=world.rng,
            sleep=lambda s: None,
            endpoints=world.endpoints,
            store=world.store,
            lease_ttl=LEASE_TTL,
        )

    def _check_end_state(self) -> None:
        world = self.world
        rows = {s: world.rows(s) for s in world.names}
        # the specific invariants first, so a failure names the one a bug breaks; systems
        # that differ for none of those reasons fail the convergence check at the end
        # no resurrection: a deleted record's values are nowhere. A list that answered Graph's
        # resyncChangesUploadDifferences asks for what it did not return: a deletion it lost
        # before the state took it comes back (``restorable``). One exception more, by design: when
        # a create's outcome was lost (a timeout after it applied, or a crash before the state
        # commit) and a person edits or deletes the copy before any run has seen it, twoway
        # cannot tell that copy from a new record (on a system without a link marker);
        # it keeps the data rather than risk losing it. Such values are left out of the
        # duplicate and resurrection checks; every other check still applies to them.
        for gone in world.deleted:
            if gone.restorable:
                continue  # its system lost the deletion and asked for the record again
            if gone.unconfirmed_copy or set(gone.values.values()) & world.ambiguous_values:
                continue
            values = set(gone.values.values()) - {None}
            for s, r in rows.items():
                back = [v for v in r.values() if set(v.values()) & values]
                assert not back, f"record deleted in {gone.system} came back in {s}: {back}"
        # no duplicate: a unique user value sits in at most one live record of a system
        for s, r in rows.items():
            seen = Counter(
                v
                for values in r.values()
                for v in values.values()
                if v and v not in world.ambiguous_values
            )
            dup = [v for v, n in seen.items() if n > 1]
            assert not dup, f"{s}: values in two records: {dup}"
        live_links = {
            (r.system, r.external_id): r.link_id for r in world.id_rows() if r.deleted_at is None
        }
        with world.store.engine.connect() as conn:
            losers = defaultdict(set)
            for row in conn.execute(
                sa.select(conflicts.c.link_id, conflicts.c.field, conflicts.c.candidates)
            ):
                for value in json.loads(row.candidates).values():
                    losers[(row.link_id, row.field)].add(json.dumps(value))
        deleted_rids = {d.rid for d in world.deleted}
        deleted_links = {d.link_id for d in world.deleted if d.link_id}
        by_link_live = defaultdict(dict)
        for (system, key), link in live_links.items():
            if key in rows[system]:
                by_link_live[link][system] = rows[system][key]
        link_of_rid = {rid: live_links.get(sk) for sk, rid in world.rid_of.items()}
        gone_with_link = set()  # records the engine deleted because a person deleted a twin
        all_rows = {(r.system, r.external_id): r for r in world.id_rows()}
        person_deleted_links = {d.link_id for d in world.deleted}
        gone = [(rid, sk) for sk, rid in world.rid_of.items() if sk[1] not in rows[sk[0]]]
        for rid, (system, key) in [*gone, *world.engine_deleted.items()]:
            tombstones = [
                r
                for (s, k), r in all_rows.items()
                if s == system
                and (k == key or k.startswith(key + "@"))
                and r.deleted_at is not None
            ]
            assert any(r.link_id in person_deleted_links for r in tombstones), (
                f"{system} {key} vanished, but no person deleted its link"
            )
            gone_with_link.add(rid)
        # no lost update
        for write in world.writes:
            if write.rid in deleted_rids or write.rid in gone_with_link:
                continue
            link = link_of_rid.get(write.rid)
            assert link is not None, f"a person's record never synced: {write}"
            if link in deleted_links:
                continue
            live = by_link_live.get(link, {})
            if any(values[write.field] == write.value for values in live.values()):
                continue
            later = any(
                w.seq > write.seq and w.field == write.field and link_of_rid.get(w.rid) == link
                for w in world.writes
            )
            if later or json.dumps(write.value) in losers[(link, write.field)]:
                continue
            related = [
                w for w in world.writes if w.field == write.field and link_of_rid.get(w.rid) == link
            ]
            raise AssertionError(
                f"lost update: {write} (link {link} holds {live}; writes: {related})"
            )
        # convergence: every system holds the same records
        as_sets = {
            s: Counter(tuple(v[f] for f in FIELDS) for v in r.values()) for s, r in rows.items()
        }
        first = world.names[0]
        for s in world.names[1:]:
            assert as_sets[s] == as_sets[first], (
                f"{s} and {first} differ:\n{as_sets[s]}\n{as_sets[first]}"
            )


class ThreeSystems(SyncMachine):
    systems = 3


class OneWayRuns(ThreeSystems):
    """Three systems, and runs of the one-way flow among the two-way ones."""

    @rule(source=st.integers(0, 2), into=st.integers(0, 2))
    def one_way_run(self, source: int, into: int) -> None:
        """One system's changes into one other; the third takes them from a later run."""
        if self._system(source) != self._system(into):
            self._run(direction=(self._system(source), self._system(into)))


class MatchOnEmail(SyncMachine):
    match_on = True


class TwoSystemsOnPostgres(SyncMachine):
    """Two tables in PostgreSQL: its timestamps, types and transactions under the same
    faults, crashes and races (the state store stays SQLite)."""

    sides = (PostgresSide, PostgresSide)


class LinkMarkers(ThreeSystems):
    """Three systems, two of which carry twoway's link marker: a create whose answer was
    lost is found there even after a person edited the copy (no ambiguity excused); the
    third, without one, keeps the documented limit."""

    marked = ("s0", "s2")


def profile(examples: int) -> settings:
    """CI: few hundred derandomized sequences; TWOWAY_SOAK=N: N random ones, seeds printed."""
    soak = int(os.environ.get("TWOWAY_SOAK", "0"))
    return settings(
        max_examples=soak or examples,
        stateful_step_count=50 if soak else 20,
        deadline=None,
        derandomize=not soak,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )


class Checkpoints(SyncMachine):
    """Runs whose chunks hold one record, a few or all of them, and processes that die
    between two chunks' commits."""

    @rule(size=st.sampled_from([1, 3, 50_000]))
    def chunk_size_is(self, size: int) -> None:
        """How many records a run's chunks hold: one, a few, or all of them."""
        self.chunk_size = size

    @rule(nth=st.integers(1, 3), written=st.booleans())
    def crash_between_chunks(self, nth: int, written: bool = False) -> None:
        """The process dies right after the state of chunk ``nth`` was committed (the chunks
        before are settled, the cursors have not moved) or, ``written``, right before: its
        writes applied, its state not committed."""
        with contextlib.suppress(Crash):
            self._run(RunWatch(self.world, "commit state", after=not written, nth=nth))
