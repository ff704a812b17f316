"""Tests for several processes on one cache directory (gateway.cache.peers, the journal side of gateway.cache.store).

Two :class:`SharedCache` instances on one directory and one Clock stand in for
two workers: each has its own index, journal reader and janitor lock file
descriptor, exactly as two processes would (``flock`` locks belong to an open
file, not a process). Time moves only with ``clock.advance``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cache import entry as entry_module
from gateway.cache.entry import EntryInfo, EntryMeta, read_entry_file
from gateway.cache.peers import JANITOR_INTERVAL, JOURNAL_INTERVAL, JanitorLock, Role
from gateway.cache.shared import SharedCache
from gateway.cache.store import DiskStore
from gateway.cache.writer import TEMP_MAX_AGE, WriterState, pid_alive, stale_temp, temp_owner
from gateway.config import GatewaySettings

T = 1_700_000_000.0
MB = 1024 * 1024
KEY = b"http://h/a"


def temp_dir(case: SynchronousTestCase) -> str:
    """A fresh directory removed after the test (not ``mktemp()``: under pytest that lands in the work tree)."""
    path = tempfile.mkdtemp(prefix="gateway-peers-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def meta(key: bytes = KEY, **changes: object) -> EntryMeta:
    fields: dict[str, object] = dict(
        key=key, status=200, reason=b"OK", headers=[(b"ETag", b'"1"')], request_time=T, response_time=T + 1
    )
    fields.update(changes)
    return EntryMeta(**fields)  # type: ignore[arg-type]


def no_such_pid() -> int:
    """A pid no process can have: one past the kernel's largest."""
    try:
        with open("/proc/sys/kernel/pid_max") as file:
            return int(file.read()) + 1
    except OSError:
        return 2**22 + 1


def entry_path(directory: str, name: str) -> str:
    return os.path.join(directory, name[:2], name[2:4], name)


class PairCase(SynchronousTestCase):
    """Two started caches, ``a`` (started first: it runs the janitor) and ``b``, on one directory."""

    max_size = 10 * MB
    max_object = MB

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T)
        self.directory = os.path.join(temp_dir(self), "cache")
        self.a = self.cache()
        self.b = self.cache()

    def cache(self) -> SharedCache:
        settings = GatewaySettings(cache_dir=self.directory, cache_max_size=self.max_size,
                                   cache_max_object=self.max_object)
        cache = SharedCache(self.clock, settings)
        cache.start()
        self.addCleanup(cache.stop)
        return cache

    def put(self, cache: SharedCache, body: bytes = b"hello", **changes: object) -> EntryInfo:
        writer = cache.store.writer(meta(**changes))
        writer.write(body)
        info = writer.commit()
        assert info is not None, writer.reason
        return info

    def body(self, store: DiskStore, info: EntryInfo) -> bytes:
        entry = store.open(info)
        assert entry is not None
        with entry:
            return entry.read(0, entry.body_length)

    def tick(self) -> None:
        self.clock.advance(JOURNAL_INTERVAL)


class CommitTests(PairCase):
    """What one process commits, updates or replaces, the other sees."""

    def test_commit_seen_after_a_tick(self) -> None:
        """A's commit is in B's index after one journal tick, and B reads its body from disk."""
        info = self.put(self.a, b"from a")
        self.assertEqual(self.b.store.variants(KEY), [])
        self.tick()
        [seen] = self.b.store.variants(KEY)
        self.assertEqual(seen.entry_id, info.entry_id)
        self.assertEqual(self.body(self.b.store, seen), b"from a")

    def test_miss_catches_up_at_once(self) -> None:
        """A miss in B reads the journal first: A's commit of a moment ago is found without a tick."""
        info = self.put(self.a)
        found = self.b.store.lookup(KEY, [])
        assert found is not None
        self.assertEqual(found.entry_id, info.entry_id)

    def test_update_seen(self) -> None:
        """A's 304 update reaches B's index and B reads the new head."""
        info = self.put(self.a)
        self.tick()
        self.clock.advance(10)
        self.a.store.update(info, [(b"ETag", b'"1"'), (b"X", b"new")], T + 10, T + 11, float("inf"))
        self.tick()
        [seen] = self.b.store.variants(KEY)
        self.assertEqual(seen.response_time, T + 11)
        entry = self.b.store.open(seen)
        assert entry is not None
        with entry:
            self.assertIn((b"X", b"new"), entry.meta.headers)

    def test_removed_by_the_other_is_a_miss(self) -> None:
        """A file B removed, still in A's index (no tick yet), is a miss in A, which then forgets it."""
        self.put(self.a)
        self.tick()
        self.b.store.purge(KEY)
        [stale] = self.a.store.variants(KEY)
        self.assertIsNone(self.a.store.open(stale))
        self.assertEqual(self.a.store.variants(KEY), [])
        self.assertEqual(self.a.store.total_size, 0)

    def test_replaced_by_the_other_is_read_as_it_is(self) -> None:
        """A file B replaced, opened through A's older index info, is B's entry (indexed anew), not dropped."""
        old = self.put(self.a, b"one")
        self.tick()
        new = self.put(self.b, b"two")
        self.assertIs(self.a.store.lookup(KEY, []), old)
        entry = self.a.store.open(old)
        assert entry is not None
        with entry:
            self.assertEqual(entry.read(0, 10), b"two")
            self.assertEqual(entry.info.entry_id, new.entry_id)
        self.assertEqual(self.a.store.variants(KEY), [entry.info])

    def test_removal_spares_a_newer_replacement(self) -> None:
        """A removing its (stale) entry leaves the newer file B put in its place."""
        old = self.put(self.a, b"one")
        self.tick()
        new = self.put(self.b, b"two")
        self.a.store.remove(old)
        self.assertTrue(os.path.exists(entry_path(self.directory, new.name)))
        self.assertEqual(self.body(self.b.store, new), b"two")
        self.tick()
        self.assertEqual(self.b.store.variants(KEY), [new])


class StartTests(PairCase):
    """A process starting beside running ones: journal end first, then the scan, then the journal."""

    def test_commit_during_start_counted_once(self) -> None:
        """A commit between C marking the journal's end and C's scan is seen by the scan and again
        in the journal; C indexes it once."""
        settings = GatewaySettings(cache_dir=self.directory, cache_max_size=self.max_size,
                                   cache_max_object=self.max_object)  # fmt: skip
        late = SharedCache(self.clock, settings)
        self.addCleanup(late.stop)
        assert late.store.journal is not None
        late.store.journal.open()
        info = self.put(self.a)
        late.start()
        self.assertEqual([i.entry_id for i in late.store.variants(KEY)], [info.entry_id])
        self.assertEqual(late.store.total_size, info.size)
        self.assertFalse(late.store.catch_up())

    def test_missed_journal_files_rescan(self) -> None:
        """B, having slept through two journal rotations, rebuilds its index from the directory."""
        journal = self.a.peers.journal
        journal.limit = 100
        first = self.put(self.a, key=b"http://h/1")
        self.put(self.a, key=b"http://h/2")
        self.assertTrue(journal.rotate())
        self.a.store.remove(first)
        self.put(self.a, key=b"http://h/3")
        self.assertTrue(journal.rotate())
        self.assertTrue(self.b.store.catch_up())
        self.assertEqual(sorted(info.key for info in self.b.store._lru.values()), [b"http://h/2", b"http://h/3"])


class PurgeTests(PairCase):
    """A purge made in one process reaches every index through the journal."""

    def test_purge_reaches_the_other_index(self) -> None:
        """A prefix purge in A empties B's index of what it covers, after a tick."""
        for path in (b"/p/1", b"/p/2", b"/q"):
            self.put(self.a, key=b"http://h" + path)
        self.tick()
        self.assertEqual(len(self.b.store), 3)
        self.assertEqual(self.a.store.purge_prefix(b"http://h/p/"), 2)
        self.tick()
        self.assertEqual([info.key for info in self.b.store._lru.values()], [b"http://h/q"])

    def test_purge_counts_the_others_recent_commit(self) -> None:
        """A purge catches up first: B's commit of a moment ago is dropped and counted by A, and B forgets it."""
        info = self.put(self.b)
        self.assertEqual(self.a.store.purge(KEY), 1)
        self.assertFalse(os.path.exists(entry_path(self.directory, info.name)))
        self.tick()
        self.assertEqual(self.b.store.variants(KEY), [])

    def test_purge_covers_what_only_the_other_knew(self) -> None:
        """An entry of B's that A has not heard of (its record not yet readable) goes when B learns of A's purge."""
        self.patch(self.b.store, "journal", None)  # B's commit record is not there yet
        info = self.put(self.b)
        self.patch(self.b.store, "journal", self.b.peers.journal)
        self.assertEqual(self.a.store.purge(KEY), 0)
        self.tick()
        self.assertEqual(self.b.store.variants(KEY), [])
        self.assertFalse(os.path.exists(entry_path(self.directory, info.name)))

    def test_learnt_purge_aborts_earlier_writers_only(self) -> None:
        """B's writer for a request sent before A's purge is aborted; one sent after it goes on."""
        early = self.b.store.writer(meta(request_time=self.clock.seconds() - 1))
        self.clock.advance(1)
        self.a.store.purge(KEY)
        self.clock.advance(1)
        late = self.b.store.writer(meta(request_time=self.clock.seconds(), vary_names=(b"x",), vary_values=(b"1",)))
        self.tick()
        self.assertEqual((early.state, early.reason), (WriterState.ABORTED, "purged"))
        self.assertIs(late.state, WriterState.OPEN)

    def test_commit_catches_up_first(self) -> None:
        """A purge in A while B's body streamed aborts B's commit even before any tick."""
        writer = self.b.store.writer(meta(request_time=self.clock.seconds()))
        writer.write(b"stale")
        self.clock.advance(0.01)
        self.a.store.purge(KEY)
        self.assertIsNone(writer.commit())
        self.assertEqual(writer.reason, "purged")
        self.assertEqual(self.b.store.lookup(KEY, []), None)


class JanitorTests(PairCase):
    """One process evicts and expires; the other follows, and takes over when it goes."""

    def test_one_janitor(self) -> None:
        """The first started holds the janitor lock; the second follows."""
        self.assertIs(self.a.peers.role, Role.JANITOR)
        self.assertIs(self.b.peers.role, Role.FOLLOWER)

    def test_only_the_janitor_runs_it(self) -> None:
        """An expired entry is dropped by A's janitor; B never runs one, and forgets the entry from the journal."""
        runs: list[int] = []
        real = self.b.store.janitor
        self.patch(self.b.store, "janitor", lambda limit=1000: runs.append(limit) or real(limit))
        self.put(self.a, keep_until=T + 5)
        self.tick()
        self.assertEqual(len(self.b.store), 1)
        for _ in range(10):
            self.clock.advance(JANITOR_INTERVAL)
        self.assertEqual(runs, [])
        self.assertEqual((len(self.a.store), len(self.b.store)), (0, 0))

    def test_takeover_when_the_janitor_stops(self) -> None:
        """When A stops (or dies: the kernel drops its lock), B's next janitor tick takes the lock."""
        self.a.stop()
        self.assertIs(self.a.peers.role, Role.IDLE)
        self.clock.advance(JANITOR_INTERVAL)
        self.assertIs(self.b.peers.role, Role.JANITOR)

    def test_rotation_while_the_other_tails(self) -> None:
        """The janitor rotates a journal past its limit; B, holding the old file, still learns every commit."""
        self.a.peers.journal.limit = 200
        infos = [self.put(self.a, key=b"http://h/%d" % n) for n in range(5)]
        self.a.peers._sweep()
        self.assertLess(os.path.getsize(self.a.peers.journal.path), 200)
        later = self.put(self.a, key=b"http://h/later")
        self.assertTrue(self.b.store.catch_up())
        self.assertEqual({info.name for info in self.b.store._lru.values()},
                         {info.name for info in [*infos, later]})  # fmt: skip

    def test_followers_do_not_rotate(self) -> None:
        """A journal past a follower's limit stays as it is: only the janitor (A, limit 1 MiB) rotates."""
        journal = self.b.peers.journal
        journal.limit = 100
        self.put(self.b)
        self.put(self.b, key=b"http://h/b")
        size = os.path.getsize(journal.path)
        self.assertGreater(size, 100)
        self.clock.advance(JANITOR_INTERVAL)
        self.assertIs(self.b.peers.role, Role.FOLLOWER)
        self.assertEqual(os.path.getsize(journal.path), size)

    def test_stop_releases_the_lock(self) -> None:
        """A stopped cache gives up the janitor lock at once."""
        self.a.stop()
        lock = JanitorLock(os.path.join(self.directory, "janitor.lock"))
        self.addCleanup(lock.release)
        self.assertTrue(lock.acquire())


class BoundTests(PairCase):
    """The disk bound holds across processes: a commit counts what the others committed."""

    max_size = 5000
    max_object = 1000

    def test_commit_makes_room_for_the_others_entries(self) -> None:
        """B commits after A filled the store: B evicts first, so the files on disk stay within max_size."""
        for n in range(8):
            self.put(self.a, b"z" * 900, key=b"http://h/%d" % n)
        self.put(self.b, b"y" * 900, key=b"http://h/b")
        on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(self.directory)
                      for f in fs if len(f) == 32)  # fmt: skip
        self.assertLessEqual(on_disk, self.max_size)


class LockTests(SynchronousTestCase):
    """The janitor lock: exclusive between open files, never waited for."""

    def test_exclusive_until_released(self) -> None:
        """Two locks on one file: one holds it; after its release the other takes it."""
        path = os.path.join(temp_dir(self), "janitor.lock")
        one, two = JanitorLock(path), JanitorLock(path)
        self.addCleanup(one.release)
        self.addCleanup(two.release)
        self.assertTrue(one.acquire())
        self.assertTrue(one.acquire())
        self.assertFalse(two.acquire())
        one.release()
        self.assertFalse(one.held)
        self.assertTrue(two.acquire())


    def test_deleted_lock_file_is_not_held_twice(self) -> None:
        """A holder whose lock file was deleted (and locked anew by another) no longer counts itself holder."""
        path = os.path.join(temp_dir(self), "janitor.lock")
        one, two = JanitorLock(path), JanitorLock(path)
        self.addCleanup(one.release)
        self.addCleanup(two.release)
        self.assertTrue(one.acquire())
        os.unlink(path)
        self.assertTrue(two.acquire())
        self.assertFalse(one.acquire())
        self.assertFalse(one.held)


class TornReadTests(SynchronousTestCase):
    """An entry that reads as torn is read again under a shared lock before it is called corrupt."""

    def test_reread_under_lock(self) -> None:
        """A first failed read (an update in progress elsewhere) is retried holding LOCK_SH, then released."""
        directory = temp_dir(self)
        store = DiskStore(directory, Clock(), max_size=MB, max_object_size=MB)
        store.load()
        writer = store.writer(meta())
        writer.write(b"x")
        info = writer.commit()
        assert info is not None
        real_read = entry_module._read
        failures = [entry_module.CorruptEntry("torn")]

        def read(fd: int, known: entry_module.Decoded | None) -> entry_module.EntryRead:
            if failures:
                raise failures.pop()
            return real_read(fd, known)

        locks: list[int] = []
        real_flock = fcntl.flock
        self.patch(entry_module, "_read", read)
        self.patch(entry_module.fcntl, "flock", lambda fd, op: locks.append(op) or real_flock(fd, op))
        with open(entry_path(directory, info.name), "rb") as file:
            self.assertEqual(read_entry_file(file.fileno()).entry_id, info.entry_id)
        self.assertEqual(locks, [fcntl.LOCK_SH, fcntl.LOCK_UN])


class TempSweepTests(SynchronousTestCase):
    """Temporary files: a restarted worker removes crashed writers' files, never a live one's."""

    def test_owner_from_name(self) -> None:
        """The pid is read from ``.tmp-<pid>-<n>``; the older ``.tmp-<n>`` names none; entries are no temporaries."""
        self.assertEqual(temp_owner("a" * 32 + ".tmp-1234-1f"), 1234)
        self.assertEqual(temp_owner("a" * 32 + ".tmp-1f"), 0)
        self.assertIsNone(temp_owner("a" * 32))
        self.assertIsNone(temp_owner("journal.tmp-1-2"))

    def test_stale_rules(self) -> None:
        """Stale: no pid, a dead pid, our pid without our writer, or older than TEMP_MAX_AGE; else kept."""
        alive = {10}.__contains__
        rules = dict(own_pid=5, mine=False, alive=alive)
        self.assertTrue(stale_temp(0, 1.0, **rules))  # type: ignore[arg-type]
        self.assertFalse(stale_temp(10, 1.0, **rules))  # type: ignore[arg-type]
        self.assertTrue(stale_temp(11, 1.0, **rules))  # type: ignore[arg-type]
        self.assertTrue(stale_temp(5, 1.0, **rules))  # type: ignore[arg-type]
        self.assertFalse(stale_temp(5, 1.0, own_pid=5, mine=True, alive=alive))
        self.assertFalse(stale_temp(10, TEMP_MAX_AGE, **rules))  # type: ignore[arg-type]
        self.assertTrue(stale_temp(10, TEMP_MAX_AGE + 1, **rules))  # type: ignore[arg-type]
        self.assertFalse(stale_temp(10, 60.0, max_age=60.0, **rules))  # type: ignore[arg-type]
        self.assertTrue(stale_temp(10, 60.5, max_age=60.0, **rules))  # type: ignore[arg-type]

    def test_pid_alive(self) -> None:
        """Our parent lives; a pid past pid_max does not; 0 is never taken for a process."""
        self.assertTrue(pid_alive(os.getppid()))
        self.assertFalse(pid_alive(no_such_pid()))
        self.assertFalse(pid_alive(0))

    def test_load_spares_a_live_pid_and_removes_a_dead_one(self) -> None:
        """At load, a live process's recent temporary file stays; dead, old, pid-less and our stale ones go."""
        clock = Clock()
        clock.advance(T)
        directory = temp_dir(self)
        fan = os.path.join(directory, "ab", "cd")
        os.makedirs(fan)
        name = "abcd" + "0" * 28
        files = {
            "live": f"{name}.tmp-{os.getppid()}-1",
            "dead": f"{name}.tmp-{no_such_pid()}-1",
            "old": f"{name}.tmp-{os.getppid()}-2",
            "ours": f"{name}.tmp-{os.getpid()}-1",
            "pidless": f"{name}.tmp-3",
        }
        for kind, file in files.items():
            path = os.path.join(fan, file)
            with open(path, "wb") as out:
                out.write(b"partial")
            age = TEMP_MAX_AGE + 1 if kind == "old" else 1.0
            os.utime(path, (T - age, T - age))
        DiskStore(directory, clock, max_size=MB, max_object_size=MB).load()
        self.assertEqual(os.listdir(fan), [files["live"]])

    def test_rescan_spares_own_writers(self) -> None:
        """A rescan while this store writes (after a journal gap) leaves its own temporary files."""
        clock = Clock()
        clock.advance(T)
        store = DiskStore(temp_dir(self), clock, max_size=MB, max_object_size=MB)
        store.load()
        writer = store.writer(meta())
        writer.write(b"abc")
        store._scan()
        self.assertTrue(os.path.exists(writer.temp))
        self.assertIsNotNone(writer.commit())
