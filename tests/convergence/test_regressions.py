"""Sequences the harness once found failing, replayed as named regression tests."""

from __future__ import annotations

import logging

import pytest

from tests.convergence.machine import (
    Checkpoints,
    MatchOnEmail,
    OneWayRuns,
    SyncMachine,
    ThreeSystems,
)
from tests.convergence.saas_world import (
    SalesforceAndSql,
    SharePointAndSql,
    SharePointSalesforceSql,
)


# these sequences were found with keys reused and a 60 s look-back window
class ThreeSystemsReusingKeys(ThreeSystems):
    reuse_keys = True
    overlap = 60.0


class MatchOnEmailReusingKeys(MatchOnEmail):
    reuse_keys = True
    overlap = 60.0


class TwoSystemsReusingKeys(SyncMachine):
    reuse_keys = True
    overlap = 60.0


class TwoSystemsWideWindow(SyncMachine):
    overlap = 60.0


class TwoSystemsMarked(SyncMachine):
    marked = ("s0", "s1")


# a person deletes a record, and before any run notices, a new record takes its key
KEY_REUSED_AFTER_DELETE = (
    ThreeSystemsReusingKeys,
    """
    start(seed=1711)
    person_creates(side=2)
    clock_skew(behind=0.0, side=2)
    two_runs_race()
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.0, edit_while_paging=0.1, error_before=0.3, partial=0.0)
    crash_run(after=True, step='extract s0')
    crash_after_write(step='load s0')
    person_creates(side=0)
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.0, edit_while_paging=0.3, error_before=0.1, partial=0.0)
    crash_run(after=False, step='extract s0')
    person_deletes(pick=5, side=0)
    two_runs_race()
    person_deletes(pick=33, side=1)
    crash_after_write(step='load s1')
    crash_after_write(step='commit state')
    run()
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.1, edit_while_paging=0.0, error_before=0.3, partial=0.1)
    clock_skew(behind=20.0, side=2)
    person_creates(side=1)
    crash_run(after=True, step='extract s0')
    clock_skew(behind=20.0, side=1)
    run()
    person_deletes(pick=44, side=1)
    run_again()
    run()
    run()
    person_creates(side=2)
    crash_after_write(step='commit state')
    set_faults(applied_then_timeout=0.1, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.0, partial=0.3)
    crash_after_write(step='commit state')
    """,
)

# our own create after a crash got the key of a record a person had deleted unnoticed
OWN_CREATE_REUSES_DELETED_KEY = (
    MatchOnEmailReusingKeys,
    """
    start(seed=58013)
    person_deletes(pick=7, side=0)
    clock_skew(behind=20.0, side=1)
    crash_after_write(step='load s1')
    two_runs_race()
    person_deletes(pick=49, side=1)
    set_faults(applied_then_timeout=0.1, concurrent_edit=0.0, edit_while_paging=0.1, error_before=0.3, partial=0.3)
    crash_after_write(step='commit state')
    crash_after_write(step='load s0')
    person_creates(side=1)
    crash_run(after=True, step='extract s0')
    clock_skew(behind=40.0, side=2)
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.1, edit_while_paging=0.0, error_before=0.3, partial=0.0)
    set_faults(applied_then_timeout=0.1, concurrent_edit=0.0, edit_while_paging=0.3, error_before=0.0, partial=0.0)
    two_runs_race()
    set_faults(applied_then_timeout=0.3, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.0, partial=0.3)
    crash_run(after=True, step='load s1')
    set_faults(applied_then_timeout=0.3, concurrent_edit=0.0, edit_while_paging=0.3, error_before=0.0, partial=0.1)
    person_deletes(pick=15, side=1)
    person_creates(side=2)
    person_deletes(pick=6, side=1)
    crash_after_write(step='load s1')
    two_runs_race()
    run_again()
    person_creates(side=1)
    set_faults(applied_then_timeout=0.3, concurrent_edit=0.0, edit_while_paging=0.3, error_before=0.1, partial=0.0)
    person_creates(side=2)
    two_runs_race()
    set_faults(applied_then_timeout=0.3, concurrent_edit=0.0, edit_while_paging=0.1, error_before=0.3, partial=0.3)
    person_deletes(pick=47, side=1)
    """,
)

# a create parked with backoff must still be retried once its time comes
PARKED_CREATE_RETRIED_AFTER_BACKOFF = (
    TwoSystemsReusingKeys,
    """
    start(seed=825)
    person_edits(field='last_name', pick=13, side=0)
    crash_run(after=False, step='compute field deltas')
    crash_run(after=True, step='extract s0')
    person_deletes(pick=36, side=0)
    clock_skew(behind=5.0, side=2)
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.3, partial=0.0)
    run()
    two_runs_race()
    run_again()
    person_edits(field='first_name', pick=34, side=1)
    two_runs_race()
    person_edits(field='email', pick=21, side=2)
    run()
    person_creates(side=1)
    crash_run(after=False, step='load s1')
    run()
    person_creates(side=1)
    crash_after_write(step='commit state')
    crash_run(after=False, step='extract s0')
    run_again()
    person_creates(side=2)
    crash_after_write(step='commit state')
    person_deletes(pick=27, side=2)
    person_edits(field='email', pick=18, side=0)
    person_creates(side=0)
    person_creates(side=2)
    clock_skew(behind=20.0, side=2)
    clock_skew(behind=0.0, side=1)
    two_runs_race()
    """,
)


# a copy whose create answer was lost is edited by a person before the next run
LOST_ANSWER_COPY_EDITED = (
    TwoSystemsWideWindow,
    """
    start(seed=73055)
    crash_after_write(step='load s0')
    person_edits(field='first_name', pick=24, side=0)
    person_edits(field='first_name', pick=13, side=0)
    person_creates(side=0)
    person_edits(field='email', pick=26, side=1)
    clock_skew(behind=40.0, side=1)
    crash_run(after=False, step='extract s0')
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.3, edit_while_paging=0.3, error_before=0.0, partial=0.3)
    person_deletes(pick=32, side=1)
    set_faults(applied_then_timeout=0.1, concurrent_edit=0.3, edit_while_paging=0.0, error_before=0.1, partial=0.0)
    run_again()
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.1, edit_while_paging=0.0, error_before=0.3, partial=0.3)
    crash_run(after=False, step='map IDs')
    person_creates(side=2)
    person_edits(field='email', pick=46, side=1)
    person_creates(side=2)
    person_edits(field='first_name', pick=41, side=0)
    set_faults(applied_then_timeout=0.3, concurrent_edit=0.1, edit_while_paging=0.3, error_before=0.1, partial=0.0)
    crash_after_write(step='commit state')
    """,
)


# a create's answer is lost and a person edits the copy before the run reads it back: the
# run cannot know the copy as its own, so the copy's values are ambiguous (the harness
# once expected the run to recognise it)
COPY_EDITED_BEFORE_READ_BACK = (
    ThreeSystems,
    """
    start(records=11, seed=526)
    person_creates(side=2)
    clock_skew(behind=0.0, side=0)
    clock_skew(behind=0.0, side=0)
    crash_after_write(step='load s0')
    run_while_people_edit()
    run_again()
    run_again()
    clock_skew(behind=1.0, side=2)
    person_edits(field='first_name', pick=49, side=0)
    crash_run(after=False, step='load s0')
    clock_skew(behind=1.0, side=1)
    run_while_people_edit()
    clock_skew(behind=1.0, side=1)
    person_deletes(pick=5, side=0)
    run_while_people_edit()
    people_edit_one_record_on_both_sides(fields=['first_name', 'email', 'last_name'], pick=33)
    person_edits(field='email', pick=29, side=0)
    person_creates(side=1)
    person_creates(side=1)
    """,
)


# a run dies after overwriting a conflict's loser: the conflict log must survive it
CONFLICT_LOG_SURVIVES_A_CRASH = (
    SyncMachine,
    """
    start(records=4, seed=4505683)
    person_edits(field='first_name', pick=10, side=0)
    crash_run(after=True, step='commit state')
    person_edits(field='last_name', pick=44, side=1)
    person_edits(field='first_name', pick=11, side=0)
    person_edits(field='first_name', pick=19, side=0)
    crash_run(after=False, step='compute field deltas')
    person_edits(field='first_name', pick=44, side=1)
    crash_run(after=False, step='extract s1')
    crash_run(after=True, step='extract s1')
    person_edits(field='first_name', pick=8, side=2)
    person_edits(field='email', pick=31, side=2)
    person_edits(field='first_name', pick=29, side=1)
    crash_run(after=False, step='commit state')
    crash_run(after=False, step='extract s1')
    person_edits(field='email', pick=35, side=1)
    person_edits(field='first_name', pick=4, side=2)
    crash_run(after=False, step='load s0')
    crash_run(after=True, step='load s0')
    person_edits(field='first_name', pick=37, side=1)
    """,
)


# Graph answered a create inside $batch with a gateway timeout after applying it; the
# SharePoint block sent the create again and the list held the record twice
GRAPH_CREATE_SENT_AGAIN_AFTER_LOST_ANSWER = (
    SharePointAndSql,
    """
    start(records=9, seed=10017)
    crash_after_write(step='load s0')
    """,
)

# the org answered a create collection with 504 after applying it; the Salesforce block
# sent the collection again and the object held the records twice
SALESFORCE_CREATE_SENT_AGAIN_AFTER_LOST_ANSWER = (
    SalesforceAndSql,
    """
    start(records=3, seed=1)
    crash_after_write(step='load s0')
    """,
)


# a one-way run settled the dead letter of a failed write to a system it does not write to
ONE_WAY_RUN_SETTLES_ANOTHER_SYSTEMS_LETTER = (
    OneWayRuns,
    """
    start(records=8, seed=851)
    run()
    run()
    run()
    run()
    run()
    run()
    run()
    run()
    run()
    run()
    run()
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.3, edit_while_paging=0.0, error_before=0.0, partial=0.1)
    run()
    run_while_people_edit()
    run()
    run()
    run()
    one_way_run(into=0, source=2)
    """,
)

# a one-way run carried a deletion to one system and forgot it before the third took it
ONE_WAY_RUN_FORGETS_A_DELETION = (
    OneWayRuns,
    """
    start(records=7, seed=0)
    run()
    run()
    person_deletes(pick=0, side=0)
    one_way_run(into=1, source=0)
    """,
)

# the deletes of a deleted link failed; a one-way run into the deleting system settled them
ONE_WAY_RUN_SETTLES_A_DELETED_LINKS_LETTERS = (
    OneWayRuns,
    """
    start(records=7, seed=0)
    run_again()
    crash_after_write(step='load s0')
    run_again()
    run_again()
    run_again()
    run_while_people_edit()
    run_again()
    run_again()
    run_again()
    run_again()
    run_again()
    person_deletes(pick=0, side=0)
    run_again()
    one_way_run(into=0, source=2)
    person_creates(side=0)
    """,
)


# a one-way run settled the letters of a link whose change sat in a system it does not read
ONE_WAY_RUN_SETTLES_A_CHANGE_IT_DOES_NOT_READ = (
    OneWayRuns,
    """
    start(records=7, seed=32624)
    run_while_people_edit()
    person_edits(field='email', pick=0, side=1)
    people_edit_one_record_on_both_sides(fields=['email', 'last_name', 'first_name'], pick=1)
    run_while_people_edit()
    run_again()
    person_edits(field='email', pick=42, side=2)
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.1, partial=0.0)
    run_again()
    person_creates(side=0)
    crash_after_write(step='load s0')
    run_while_people_edit()
    run_while_people_edit()
    run_while_people_edit()
    run_while_people_edit()
    one_way_run(into=2, source=1)
    crash_after_write(step='commit state')
    run_again()
    """,
)


# a one-way run created a new record in one system and never in the third
ONE_WAY_RUN_CREATES_IN_ONE_SYSTEM_ONLY = (
    OneWayRuns,
    """
    start(records=2, seed=0)
    one_way_run(into=0, source=1)
    """,
)


# a one-way run whose create into the third system lost its answer (applied, unknown to the
# state); the next one-way run, not reading that system, moved the merge base to a change it
# read. Once the created record was found it differed from the base, so its older values
# were taken for the newer change and written over the person's edit
ONE_WAY_RUN_MOVES_THE_BASE_PAST_AN_UNREAD_CREATE = (
    OneWayRuns,
    """
    start(seed=2_113_856_234, records=12)
    set_faults(applied_then_timeout=0.3, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.1, partial=0.1)
    one_way_run(into=0, source=2)
    one_way_run(into=2, source=1)
    someone_edits_as_the_integration_account(field='first_name', pick=31, side=1)
    one_way_run(into=2, source=1)
    """,
)


# a crashed run applied a write again with a new version; the next read skipped it as an
# echo without learning that version, so every later update of the record was deferred by
# the compare-and-set on the old one, run after run
ECHO_KEEPS_AN_OLD_VERSION = (
    ThreeSystems,
    """
    start(records=8, seed=851)
    person_edits(field='email', pick=37, side=0)
    run()
    run()
    run()
    two_runs_race()
    run()
    run()
    run()
    run()
    run()
    run()
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.3, edit_while_paging=0.0, error_before=0.0, partial=0.1)
    person_edits(field='email', pick=21, side=2)
    run_while_people_edit()
    run()
    crash_after_write(step='load s0')
    run_while_people_edit()
    crash_after_write(step='load s1')
    run_while_people_edit()
    """,
)


# a run died after its creates were applied; a person edited every copy before the next run:
# without a link marker the copies no longer matched the creates' values and were created
# again (a duplicate); the marker each copy carries rejoins it to its link
LOST_CREATE_FOUND_BY_ITS_MARKER = (
    TwoSystemsMarked,
    """
    start(records=4, seed=7)
    crash_run(step='load s1', after=True)
    person_edits(field='email', pick=0, side=1)
    person_edits(field='email', pick=1, side=1)
    person_edits(field='last_name', pick=2, side=1)
    person_edits(field='email', pick=3, side=1)
    run()
    """,
)


# a run died after creating records in s0 and s1; a one-way run from s1 into s2 found s2's
# original by the intent, knew it by key only, and wrote it the values it already held
ONE_WAY_RUN_WRITES_A_RECORD_IT_KNOWS_BY_KEY_ONLY = (
    OneWayRuns,
    """
    start(records=10, seed=1468508)
    crash_after_write(step='load s1')
    one_way_run(into=2, source=1)
    """,
)

# the same crash; a one-way run from s1 into s0 created again in s0 the records the dead run
# had created there (s0 unread, their intents open): duplicates
ONE_WAY_RUN_CREATES_AGAIN_WHAT_A_DEAD_RUN_CREATED = (
    OneWayRuns,
    """
    start(records=10, seed=0)
    crash_after_write(step='load s1')
    one_way_run(into=0, source=1)
    """,
)


# the same with a Salesforce object: its External ID field carries the link id
SALESFORCE_LOST_CREATE_FOUND_BY_ITS_EXTERNAL_ID = (
    SalesforceAndSql,
    """
    start(records=6, seed=5)
    crash_run(step='load s0', after=True)
    person_edits(field='email', pick=0, side=0)
    person_edits(field='email', pick=1, side=0)
    person_edits(field='email', pick=2, side=0)
    person_edits(field='email', pick=3, side=0)
    person_edits(field='email', pick=4, side=0)
    person_edits(field='email', pick=5, side=0)
    run()
    """,
)


# the same with a SharePoint list: a list column carries the link id
SHAREPOINT_LOST_CREATE_FOUND_BY_ITS_LINK_COLUMN = (
    SharePointAndSql,
    SALESFORCE_LOST_CREATE_FOUND_BY_ITS_EXTERNAL_ID[1],
)


# a crashed run found a lost create by its intent and updated it; the crash left the
# update uncommitted, so the record no longer matched the intent's values and a one-way run
# took it for a new record (a duplicate). Records found by their intent now join the ID
# map before any write goes out.
RECOVERED_CREATE_UPDATED_BEFORE_A_CRASH = (
    OneWayRuns,
    """
    start(records=11, seed=31231982)
    one_way_run(into=1, source=2)
    someone_edits_as_the_integration_account(field='email', pick=5, side=1)
    crash_mid_load(batches=1)
    someone_edits_as_the_integration_account(field='last_name', pick=4, side=1)
    one_way_run(into=1, source=2)
    someone_edits_as_the_integration_account(field='email', pick=32, side=1)
    one_way_run(into=0, source=2)
    crash_mid_load(batches=1)
    one_way_run(into=1, source=0)
    """,
)

# the same cause, found through crashes after a write and deletions
RECOVERED_CREATE_UPDATED_BEFORE_A_CRASH_WITH_DELETES = (
    OneWayRuns,
    """
    start(records=11, seed=31231982)
    one_way_run(into=1, source=2)
    crash_after_write(step='load s0')
    person_deletes(pick=34, side=0)
    one_way_run(into=2, source=2)
    people_edit_one_record_on_both_sides(fields=['last_name', 'first_name', 'email'], pick=19)
    crash_after_write(step='load s0')
    person_edits(field='email', pick=21, side=1)
    person_edits(field='last_name', pick=6, side=2)
    person_deletes(pick=50, side=0)
    person_deletes(pick=3, side=2)
    crash_after_write(step='commit state')
    people_edit_one_record_on_both_sides(fields=['last_name', 'email', 'first_name'], pick=28)
    person_edits(field='email', pick=15, side=2)
    person_edits(field='first_name', pick=10, side=0)
    person_deletes(pick=44, side=0)
    one_way_run(into=2, source=0)
    """,
)


# a run of one-record chunks dies after the state of its second chunk was committed: the
# first two are settled, the cursors have not moved; the next run reads everything again
CRASH_AFTER_A_CHUNKS_COMMIT = (
    Checkpoints,
    """
    start(seed=7, records=6)
    run()
    chunk_size_is(size=1)
    person_creates(side=0)
    person_creates(side=1)
    person_edits(field='email', pick=1, side=0)
    person_edits(field='first_name', pick=2, side=1)
    person_deletes(pick=3, side=0)
    crash_between_chunks(nth=2, written=False)
    person_edits(field='last_name', pick=0, side=1)
    run()
    """,
)

# the same, dying after the second chunk's writes were applied and before its commit, with
# some answers lost: its creates are found again by their intents, nothing is made twice
CRASH_BEFORE_A_CHUNKS_COMMIT = (
    Checkpoints,
    """
    start(seed=11, records=6)
    run()
    chunk_size_is(size=1)
    person_creates(side=0)
    person_creates(side=1)
    person_creates(side=1)
    person_edits(field='email', pick=4, side=1)
    person_deletes(pick=2, side=1)
    set_faults(applied_then_timeout=0.3, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.0, partial=0.0)
    crash_between_chunks(nth=2, written=True)
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.0, partial=0.0)
    person_edits(field='first_name', pick=0, side=0)
    crash_between_chunks(nth=1, written=False)
    run()
    """,
)


# a one-way run read a person's change in s1 that it could not carry to s2; the state kept
# s1's old values for it, so the next run into s1 wrote s1 the value s1 already held, and
# (once s1's values were kept as read) wrote s0's older value over s1's change
ONE_WAY_RUN_WRITES_OVER_A_CHANGE_IT_DOES_NOT_READ = (
    OneWayRuns,
    """
    start(records=9, seed=1506869)
    someone_edits_as_the_integration_account(field='first_name', pick=38, side=0)
    crash_after_write(step='commit state')
    run_while_people_edit()
    one_way_run(into=0, source=2)
    one_way_run(into=0, source=1)
    one_way_run(into=1, source=0)
    """,
)


# a record read unchanged but with a new version had its ID-map row rewritten from the
# read's light copy, without the values seen: later runs took it for empty and wrote it
# fields it already held
UNCHANGED_RECORD_WITH_A_NEW_VERSION_KEEPS_ITS_VALUES = (
    OneWayRuns,
    """
    start(records=5, seed=471)
    crash_mid_load(batches=2)
    crash_run(after=True, step='load s0')
    run()
    someone_edits_as_the_integration_account(field='email', pick=0, side=2)
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.1, edit_while_paging=0.1, error_before=0.3, partial=0.0)
    people_edit_one_record_on_both_sides(fields=['email', 'last_name', 'first_name'], pick=28)
    people_edit_one_record_on_both_sides(fields=['email', 'first_name', 'last_name'], pick=47)
    run()
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.0, edit_while_paging=0.3, error_before=0.0, partial=0.1)
    person_edits(field='first_name', pick=47, side=2)
    run()
    person_edits(field='email', pick=2, side=2)
    two_runs_race()
    crash_after_write(step='load s1')
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.1, edit_while_paging=0.1, error_before=0.1, partial=0.0)
    people_edit_one_record_on_both_sides(fields=['email', 'first_name', 'last_name'], pick=3)
    crash_run(after=True, step='map IDs')
    one_way_run(into=0, source=1)
    crash_mid_load(batches=2)
    people_edit_one_record_on_both_sides(fields=['email', 'last_name', 'first_name'], pick=39)
    clock_skew(behind=3.0, side=0)
    run_again()
    crash_after_write(step='load s1')
    person_edits(field='last_name', pick=7, side=1)
    crash_run(after=False, step='map IDs')
    people_edit_one_record_on_both_sides(fields=['first_name', 'email', 'last_name'], pick=41)
    two_runs_race()
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.0, edit_while_paging=0.1, error_before=0.3, partial=0.0)
    crash_mid_load(batches=2)
    someone_edits_as_the_integration_account(field='last_name', pick=2, side=2)
    run_while_people_edit()
    run()
    person_creates(side=1)
    crash_after_write(step='load s0')
    crash_mid_load(batches=3)
    person_creates(side=1)
    run_while_people_edit()
    crash_after_write(step='load s1')
    person_creates(side=2)
    set_faults(applied_then_timeout=0.1, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.0, partial=0.1)
    crash_after_write(step='commit state')
    crash_mid_load(batches=3)
    crash_after_write(step='commit state')
    crash_run(after=False, step='commit state')
    two_runs_race()
    two_runs_race()
    """,
)


# (found by the soak)
PARKED_RECORD_READ_AGAIN_NEVER_SYNCS = (
    MatchOnEmail,
    """
    start(records=6, seed=6094)
    crash_run(after=False, step='load s1')
    person_edits(field='first_name', pick=10, side=0)
    person_edits(field='last_name', pick=50, side=1)
    person_creates(side=2)
    person_edits(field='last_name', pick=22, side=0)
    person_edits(field='first_name', pick=50, side=2)
    crash_run(after=True, step='load s0')
    person_creates(side=0)
    person_creates(side=1)
    crash_run(after=True, step='extract s1')
    person_edits(field='email', pick=40, side=1)
    person_creates(side=0)
    crash_run(after=True, step='load s0')
    crash_run(after=False, step='load s1')
    person_edits(field='last_name', pick=25, side=2)
    person_creates(side=0)
    crash_run(after=True, step='extract s1')
    crash_run(after=True, step='extract s1')
    person_edits(field='first_name', pick=9, side=1)
    crash_run(after=False, step='compute field deltas')
    crash_run(after=False, step='compute field deltas')
    person_creates(side=1)
    person_edits(field='first_name', pick=42, side=2)
    person_creates(side=1)
    crash_run(after=True, step='compute field deltas')
    person_creates(side=0)
    person_creates(side=0)
    crash_run(after=True, step='compute field deltas')
    person_creates(side=2)
    crash_run(after=True, step='compute field deltas')
    person_edits(field='first_name', pick=47, side=0)
    person_edits(field='last_name', pick=44, side=1)
    crash_run(after=False, step='load s1')
    person_edits(field='first_name', pick=37, side=2)
    person_creates(side=2)
    crash_run(after=True, step='map IDs')
    person_edits(field='email', pick=48, side=2)
    person_edits(field='email', pick=34, side=2)
    crash_run(after=True, step='load s0')
    crash_run(after=True, step='extract s1')
    person_creates(side=2)
    person_creates(side=1)
    person_edits(field='last_name', pick=8, side=1)
    person_creates(side=2)
    crash_run(after=True, step='compute field deltas')
    crash_run(after=False, step='compute field deltas')
    person_edits(field='email', pick=22, side=1)
    person_creates(side=1)
    crash_run(after=True, step='load s1')
    """,
)


@pytest.mark.parametrize(
    "case",
    [
        KEY_REUSED_AFTER_DELETE,
        OWN_CREATE_REUSES_DELETED_KEY,
        PARKED_CREATE_RETRIED_AFTER_BACKOFF,
        LOST_ANSWER_COPY_EDITED,
        CONFLICT_LOG_SURVIVES_A_CRASH,
        COPY_EDITED_BEFORE_READ_BACK,
        GRAPH_CREATE_SENT_AGAIN_AFTER_LOST_ANSWER,
        SALESFORCE_CREATE_SENT_AGAIN_AFTER_LOST_ANSWER,
        ONE_WAY_RUN_SETTLES_ANOTHER_SYSTEMS_LETTER,
        ONE_WAY_RUN_FORGETS_A_DELETION,
        ONE_WAY_RUN_SETTLES_A_DELETED_LINKS_LETTERS,
        ONE_WAY_RUN_SETTLES_A_CHANGE_IT_DOES_NOT_READ,
        ONE_WAY_RUN_CREATES_IN_ONE_SYSTEM_ONLY,
        ONE_WAY_RUN_MOVES_THE_BASE_PAST_AN_UNREAD_CREATE,
        ECHO_KEEPS_AN_OLD_VERSION,
        LOST_CREATE_FOUND_BY_ITS_MARKER,
        ONE_WAY_RUN_WRITES_A_RECORD_IT_KNOWS_BY_KEY_ONLY,
        ONE_WAY_RUN_CREATES_AGAIN_WHAT_A_DEAD_RUN_CREATED,
        SALESFORCE_LOST_CREATE_FOUND_BY_ITS_EXTERNAL_ID,
        SHAREPOINT_LOST_CREATE_FOUND_BY_ITS_LINK_COLUMN,
        RECOVERED_CREATE_UPDATED_BEFORE_A_CRASH,
        RECOVERED_CREATE_UPDATED_BEFORE_A_CRASH_WITH_DELETES,
        CRASH_AFTER_A_CHUNKS_COMMIT,
        CRASH_BEFORE_A_CHUNKS_COMMIT,
        ONE_WAY_RUN_WRITES_OVER_A_CHANGE_IT_DOES_NOT_READ,
        UNCHANGED_RECORD_WITH_A_NEW_VERSION_KEEPS_ITS_VALUES,
        PARKED_RECORD_READ_AGAIN_NEVER_SYNCS,
    ],
    ids=[
        "key-reused-after-delete",
        "own-create-reuses-deleted-key",
        "parked-create-retried",
        "lost-answer-copy-edited",
        "conflict-log-survives-a-crash",
        "copy-edited-before-read-back",
        "graph-create-sent-again-after-lost-answer",
        "salesforce-create-sent-again-after-lost-answer",
        "one-way-run-settles-another-systems-letter",
        "one-way-run-forgets-a-deletion",
        "one-way-run-settles-a-deleted-links-letters",
        "one-way-run-settles-a-change-it-does-not-read",
        "one-way-run-creates-in-one-system-only",
        "one-way-run-moves-the-base-past-an-unread-create",
        "echo-keeps-an-old-version",
        "lost-create-found-by-its-marker",
        "one-way-run-writes-a-record-it-knows-by-key-only",
        "one-way-run-creates-again-what-a-dead-run-created",
        "salesforce-lost-create-found-by-its-external-id",
        "sharepoint-lost-create-found-by-its-link-column",
        "recovered-create-updated-before-a-crash",
        "recovered-create-updated-before-a-crash-with-deletes",
        "crash-after-a-chunks-commit",
        "crash-before-a-chunks-commit",
        "one-way-run-writes-over-a-change-it-does-not-read",
        "unchanged-record-with-a-new-version-keeps-its-values",
        "parked-record-read-again-never-syncs",
    ],
)
def test_replay(case, caplog):
    caplog.set_level(logging.CRITICAL)
    machine_class, steps = case
    machine = machine_class()
    try:
        for line in filter(None, (s.strip() for s in steps.splitlines())):
            eval(f"machine.{line}")  # noqa: S307 - the steps above, written by us
            for invariant in machine.invariants:  # as Hypothesis checks them, after each step
                invariant.function(machine)
    except BaseException:
        if machine.world:
            machine.world.close()
        raise
    machine.teardown()


# -- the services' own faults (purges, commit lag, long Retry-After, Graph's 410 codes) ----


# a person's second edit of a record whose first edit was still in an open transaction:
# the simulator applied it, then the first transaction's commit overwrote it
LONG_TRANSACTION_LOCKS_ITS_RECORD = (
    SalesforceAndSql,
    """
    start(records=2, seed=0)
    run()
    person_edits_in_a_long_transaction(field='first_name', lag=3.0, pick=0)
    person_edits_in_a_long_transaction(field='email', lag=3.0, pick=0)
    """,
)

# a deletion in the list, then a 410 resyncChangesUploadDifferences before any run read it:
# the full read after it inferred no deletion and the new delta token started past it, so
# the record stayed in the other system and the two differed for good. Graph asks for the
# items it did not return to be uploaded: the link creates the record in the list again
SHAREPOINT_DELETION_LOST_ON_UPLOAD_DIFFERENCES = (
    SharePointAndSql,
    """
    start(records=2, seed=0)
    run()
    person_deletes(pick=0, side=0)
    delta_token_expires(code='resyncChangesUploadDifferences', while_paging=False)
    run()
    """,
)


# a run crashed after deleting a list item whose twin a person had deleted; the run after it
# read the list after a 410 resyncChangesUploadDifferences, found the item missing and took
# it for lost while the link was being deleted: its ID-map row was removed, not kept as the
# link's tombstone, so the item vanished with no trace of the deletion that took it
SHAREPOINT_ITEM_LOST_WITH_A_DELETED_LINK = (
    SharePointSalesforceSql,
    """
    start(seed=625261, records=6)
    crash_run(after=True, step='load s0')
    run_again()
    delta_token_expires(code='resyncChangesUploadDifferences', while_paging=False)
    recycle_bin_purged(delete=5, everything=True)
    crash_run(after=True, step='load s0')
    """,
)


# throttled runs waited minutes out, so the org's clock ran ahead of ours: getDeleted's
# window, ended a minute past our clock, held the cursor 55 s a run behind and a deletion
# made later was not found before the quiet runs ended
SALESFORCE_DELETE_WINDOW_FOLLOWS_THE_ORGS_CLOCK = (
    SalesforceAndSql,
    """
    start(records=10, seed=28659)
    run_while_throttled(rate=0.1, seconds=25)
    run_while_throttled(rate=0.3, seconds=180)
    run_again()
    person_deletes(pick=20, side=0)
    run()
    """,
)


# the full read after a purged Recycle Bin set its cursor to the org's clock while a
# person's transaction, stamped before it, was still open: once committed, the change sat
# below the next read's window and was never read
SALESFORCE_FULL_READ_PASSES_AN_OPEN_TRANSACTION = (
    SharePointSalesforceSql,
    """
    start(records=0, seed=2564465)
    person_creates(side=2)
    person_creates(side=1)
    crash_mid_load(batches=1)
    crash_run(after=True, step='load s0')
    person_creates(side=1)
    person_edits_in_a_long_transaction(field='email', lag=200.0, pick=23)
    person_deletes(pick=38, side=2)
    run_while_people_edit()
    crash_after_write(step='load s0')
    recycle_bin_purged(delete=None, everything=True)
    run_while_people_edit()
    """,
)

# a run throttled for minutes (waited out on the world's clock) outlived its 60 s lease on
# that clock, and the second run it starts midway took the lease
RUN_THROTTLED_FOR_MINUTES_KEEPS_ITS_LEASE = (
    SalesforceAndSql,
    """
    start(records=4, seed=4)
    service_asks_to_wait(seconds=300)
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.3, partial=0.0)
    two_runs_race()
    """,
)


# throttling scaled the world's fault rates to add up to one, and the sum rounded just over
# it: the simulator's fault plan refused the rates
THROTTLED_RATES_THAT_ROUND_OVER_ONE = (
    SharePointAndSql,
    """
    start(records=0, seed=0)
    set_faults(applied_then_timeout=0.0, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.0, partial=0.0)
    run_again()
    run_again()
    run_again()
    run_again()
    run_again()
    set_faults(applied_then_timeout=0.3, concurrent_edit=0.0, edit_while_paging=0.0, error_before=0.3, partial=0.1)
    run_while_throttled(rate=0.6, seconds=25)
    """,
)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(LONG_TRANSACTION_LOCKS_ITS_RECORD, id="long-transaction-locks-its-record"),
        pytest.param(
            SALESFORCE_FULL_READ_PASSES_AN_OPEN_TRANSACTION,
            id="salesforce-full-read-passes-an-open-transaction",
        ),
        pytest.param(
            RUN_THROTTLED_FOR_MINUTES_KEEPS_ITS_LEASE,
            id="run-throttled-for-minutes-keeps-its-lease",
        ),
        pytest.param(THROTTLED_RATES_THAT_ROUND_OVER_ONE, id="throttled-rates-that-round-over-one"),
        pytest.param(
            SALESFORCE_DELETE_WINDOW_FOLLOWS_THE_ORGS_CLOCK,
            id="salesforce-delete-window-follows-the-orgs-clock",
        ),
        pytest.param(
            SHAREPOINT_DELETION_LOST_ON_UPLOAD_DIFFERENCES,
            id="sharepoint-deletion-lost-on-upload-differences",
        ),
        pytest.param(
            SHAREPOINT_ITEM_LOST_WITH_A_DELETED_LINK,
            id="sharepoint-item-lost-with-a-deleted-link",
        ),
    ],
)
def test_service_fault_replay(case, caplog):
    test_replay(case, caplog)
