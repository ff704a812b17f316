"""Tests for gateway.cache.store and gateway.cache.entry: the on-disk cache."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.cache.entry import (
    HEADER_SIZE,
    CorruptEntry,
    EntryMeta,
    decode_meta,
    encode_meta,
    entry_name,
    unpack_header,
)
from gateway.cache.keys import vary_values
from gateway.cache.store import DiskStore, ICacheStore
from gateway.cache.writer import EntryWriter, WriterState

T = 1_700_000_000.0
MB = 1024 * 1024


def meta(key: bytes = b"http://h/a", **changes) -> EntryMeta:
    fields = dict(
        key=key,
        status=200,
        reason=b"OK",
        headers=[(b"Content-Type", b"text/plain"), (b"ETag", b'"1"')],
        request_time=T,
        response_time=T + 1,
    )
    fields.update(changes)
    return EntryMeta(**fields)  # type: ignore[arg-type]


def temp_dir(case: SynchronousTestCase) -> str:
    """A fresh directory removed after the test (not ``mktemp()``: under pytest that lands in the work tree)."""
    path = tempfile.mkdtemp(prefix="gateway-cache-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def files_under(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


class StoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T)
        self.directory = os.path.join(temp_dir(self), "cache")
        self.store = self.make_store()

    def make_store(self, **overrides) -> DiskStore:
        options = dict(max_size=10 * MB, max_object_size=MB)
        options.update(overrides)
        store = DiskStore(self.directory, self.clock, **options)  # type: ignore[arg-type]
        store.load()
        return store

    def put(self, store: DiskStore | None = None, body: bytes = b"hello", **changes):
        writer = (store or self.store).writer(meta(**changes))
        for i in range(0, len(body), 3):
            writer.write(body[i : i + 3])
        info = writer.commit()
        assert info is not None
        return info

    def body_of(self, info, store: DiskStore | None = None) -> bytes:
        entry = (store or self.store).open(info)
        assert entry is not None
        with entry:
            return entry.read(0, entry.body_length)


class FormatTests(SynchronousTestCase):
    def test_meta_round_trip(self) -> None:
        """The metadata codec keeps every field, including absent Vary values and infinity."""
        original = meta(vary_names=(b"accept", b"origin"), vary_values=(b"a", None), surrogate_keys=(b"k",),
                        body_crc=123, keep_until=float("inf"))  # fmt: skip
        self.assertEqual(decode_meta(encode_meta(original)), original)

    def test_truncated_meta(self) -> None:
        """Decoding never trusts a length: every cut of the metadata is detected."""
        encoded = encode_meta(meta())
        for cut in range(len(encoded)):
            self.assertRaises(CorruptEntry, decode_meta, encoded[:cut])

    def test_bad_header(self) -> None:
        """The header's own CRC and magic are checked."""
        self.assertRaises(CorruptEntry, unpack_header, b"\0" * HEADER_SIZE)
        self.assertRaises(CorruptEntry, unpack_header, b"short")


class WriteReadTests(StoreTestCase):
    def test_interface(self) -> None:
        """DiskStore provides ICacheStore, the cache's storage plug point."""
        self.assertTrue(verifyObject(ICacheStore, self.store))

    def test_round_trip(self) -> None:
        """A committed entry is found by key and reads back its metadata and body."""
        info = self.put(body=b"hello world")
        found = self.store.lookup(b"http://h/a", [])
        self.assertIs(found, info)
        entry = self.store.open(info)
        assert entry is not None
        with entry:
            self.assertEqual(entry.meta.headers, meta().headers)
            self.assertEqual(entry.meta.status, 200)
            self.assertEqual(entry.read(0, 100), b"hello world")
            self.assertEqual(entry.read(6, 3), b"wor")
        self.assertEqual(self.store.total_size, info.size)
        self.assertEqual(os.path.getsize(os.path.join(self.directory, info.name[:2], info.name[2:4], info.name)),
                         info.size)  # fmt: skip

    def test_layout(self) -> None:
        """Entries are named by a hash in fan-out directories: ab/cd/<32 hex>."""
        info = self.put()
        self.assertEqual(files_under(self.directory), [os.path.join(info.name[:2], info.name[2:4], info.name)])
        self.assertEqual(info.name, entry_name(b"http://h/a", b""))

    def test_hostile_keys_never_become_paths(self) -> None:
        """No byte of a request reaches the filesystem: ../, NUL and huge URLs are only hashed."""
        keys = [b"http://h/../../../../etc/passwd", b"http://h/a\x00b", b"http://h/" + b"x" * 100_000,
                b"http://h/%2e%2e/%2F", b"/", b""]  # fmt: skip
        for key in keys:
            self.put(key=key, body=key[:10])
        outside = os.path.dirname(os.path.abspath(self.directory))
        self.assertEqual(sorted(os.listdir(outside)), [os.path.basename(self.directory)])
        names = files_under(self.directory)
        self.assertEqual(len(names), len(keys))
        for name in names:
            self.assertRegex(name, r"^[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{32}$")
        for key in keys:
            info = self.store.lookup(key, [])
            assert info is not None
            self.assertEqual(self.body_of(info), key[:10])

    def test_vary_variants(self) -> None:
        """RFC 9111 §4.1: variants of one URI are stored apart and selected by the request."""
        names = (b"accept-encoding",)
        gzip = vary_values(names, [(b"Accept-Encoding", b"gzip")])
        plain = vary_values(names, [])
        self.put(body=b"zipped", vary_names=names, vary_values=gzip)
        self.put(body=b"plain", vary_names=names, vary_values=plain)
        self.assertEqual(len(self.store.variants(b"http://h/a")), 2)
        zipped = self.store.lookup(b"http://h/a", [(b"accept-encoding", b"gzip")])
        self.assertEqual(self.body_of(zipped), b"zipped")
        self.assertEqual(self.body_of(self.store.lookup(b"http://h/a", [])), b"plain")
        self.assertIsNone(self.store.lookup(b"http://h/a", [(b"Accept-Encoding", b"br")]))

    def test_most_recent_variant(self) -> None:
        """RFC 9111 §4.1: of several matching responses the most recent is used."""
        self.put(body=b"old", response_time=T)
        self.put(body=b"new", response_time=T + 5, vary_names=(b"origin",), vary_values=(None,))
        self.assertEqual(self.body_of(self.store.lookup(b"http://h/a", [])), b"new")

    def test_replacement(self) -> None:
        """A new response for the same key and variant replaces the old; size is counted once."""
        first = self.put(body=b"a" * 100)
        second = self.put(body=b"b" * 10)
        self.assertEqual(len(self.store), 1)
        self.assertEqual(self.store.total_size, second.size)
        self.assertIsNone(self.store.open(first))
        self.assertEqual(self.body_of(second), b"b" * 10)

    def test_reader_survives_removal(self) -> None:
        """An entry purged while it streams stays readable through the open file."""
        info = self.put(body=b"still here")
        entry = self.store.open(info)
        assert entry is not None
        self.store.purge(b"http://h/a")
        with entry:
            self.assertEqual(entry.read(0, 100), b"still here")


class AtomicityTests(StoreTestCase):
    def test_abort_leaves_nothing(self) -> None:
        """A writer aborted mid-body leaves no entry and no temporary file."""
        writer = self.store.writer(meta())
        writer.write(b"partial")
        writer.abort()
        self.assertEqual(writer.state, WriterState.ABORTED)
        self.assertIsNone(self.store.lookup(b"http://h/a", []))
        self.assertEqual(files_under(self.directory), [])
        self.assertFalse(writer.write(b"more"))
        self.assertIsNone(writer.commit())

    def test_nothing_visible_before_commit(self) -> None:
        """Until commit the entry exists only as a temporary sibling, invisible to lookups."""
        writer = self.store.writer(meta())
        writer.write(b"abc")
        self.assertIsNone(self.store.lookup(b"http://h/a", []))
        [temp] = files_under(self.directory)
        self.assertRegex(temp, rf"\.tmp-{os.getpid()}-[0-9a-f]+$")  # the writer's pid, then a counter
        writer.commit()
        self.assertEqual(len(files_under(self.directory)), 1)

    def test_crash_temp_swept(self) -> None:
        """A temporary file left by a crash is removed on start and never indexed."""
        writer = self.store.writer(meta())
        writer.write(b"abc")  # the process "dies" here
        restarted = self.make_store()
        self.assertEqual(len(restarted), 0)
        self.assertEqual(files_under(self.directory), [])

    def test_object_size_limit_while_writing(self) -> None:
        """max_object_size is enforced as chunks arrive: past it the write aborts."""
        store = self.make_store(max_object_size=10)
        writer = store.writer(meta())
        self.assertTrue(writer.write(b"x" * 10))
        self.assertFalse(writer.write(b"x"))
        self.assertEqual((writer.state, writer.reason), (WriterState.ABORTED, "too large"))
        self.assertEqual(files_under(self.directory), [])

    def test_object_size_limit_up_front(self) -> None:
        """A Content-Length over max_object_size is refused before any byte is written."""
        store = self.make_store(max_object_size=10)
        writer = store.writer(meta(), expected_length=11)
        self.assertEqual(writer.state, WriterState.ABORTED)
        self.assertEqual(files_under(self.directory), [])

    def test_short_body_not_committed(self) -> None:
        """A body shorter than its Content-Length (upstream cut off) is never committed."""
        writer = self.store.writer(meta(), expected_length=10)
        writer.write(b"12345")
        self.assertIsNone(writer.commit())
        self.assertEqual((writer.state, writer.reason), (WriterState.ABORTED, "short body"))
        self.assertEqual(files_under(self.directory), [])

    def test_writer_class(self) -> None:
        """The store hands out EntryWriter objects."""
        self.assertIsInstance(self.store.writer(meta()), EntryWriter)


class CorruptionTests(StoreTestCase):
    def path(self, info) -> str:
        return os.path.join(self.directory, info.name[:2], info.name[2:4], info.name)

    def test_truncated_detected(self) -> None:
        """A truncated entry file is detected, dropped and counted as a miss."""
        info = self.put(body=b"x" * 1000)
        with open(self.path(info), "r+b") as f:
            f.truncate(info.size - 1)
        self.assertIsNone(self.store.open(info))
        self.assertIsNone(self.store.lookup(b"http://h/a", []))
        self.assertFalse(os.path.exists(self.path(info)))

    def test_truncated_inside_body_detected(self) -> None:
        """A file cut inside the body fails the length check too."""
        info = self.put(body=b"x" * 1000)
        with open(self.path(info), "r+b") as f:
            f.truncate(HEADER_SIZE + 500)
        self.assertIsNone(self.store.open(info))

    def test_corrupted_metadata_detected(self) -> None:
        """A flipped metadata byte fails the metadata checksum."""
        info = self.put(body=b"x" * 100)
        with open(self.path(info), "r+b") as f:
            f.seek(info.size - 3)
            byte = f.read(1)
            f.seek(info.size - 3)
            f.write(bytes([byte[0] ^ 0xFF]))
        self.assertIsNone(self.store.open(info))
        self.assertEqual(len(self.store), 0)

    def test_corrupted_header_detected(self) -> None:
        """A flipped header byte (e.g. the body length) fails the header checksum."""
        info = self.put(body=b"x" * 100)
        with open(self.path(info), "r+b") as f:
            f.seek(10)
            f.write(b"\x7f")
        self.assertIsNone(self.store.open(info))

    def test_corrupt_dropped_on_load(self) -> None:
        """Corrupted and truncated entries are removed while the index is rebuilt."""
        good = self.put(key=b"http://h/good")
        bad = self.put(key=b"http://h/bad", body=b"y" * 50)
        with open(self.path(bad), "r+b") as f:
            f.truncate(20)
        restarted = self.make_store()
        self.assertEqual(len(restarted), 1)
        self.assertIsNotNone(restarted.lookup(b"http://h/good", []))
        self.assertEqual(files_under(self.directory), [os.path.relpath(self.path(good), self.directory)])

    def test_misplaced_file_dropped(self) -> None:
        """An entry whose name is not the digest of its own keys is removed on load."""
        info = self.put()
        wrong = os.path.join(self.directory, "00", "00", "0" * 32)
        os.makedirs(os.path.dirname(wrong))
        os.rename(self.path(info), wrong)
        self.assertEqual(len(self.make_store()), 0)
        self.assertFalse(os.path.exists(wrong))

    def test_foreign_files_left_alone(self) -> None:
        """Files that are not ours are neither indexed nor deleted."""
        self.put()
        foreign = os.path.join(self.directory, "README")
        with open(foreign, "w") as f:
            f.write("operator notes")
        self.assertEqual(len(self.make_store()), 1)
        self.assertTrue(os.path.exists(foreign))


class HotEntryTests(StoreTestCase):
    """``hot_entries``: the most recently opened entries keep their metadata decoded, and no more."""

    def path(self, info) -> str:
        return os.path.join(self.directory, info.name[:2], info.name[2:4], info.name)

    def opened(self, store: DiskStore, info):
        entry = store.open(info)
        assert entry is not None
        entry.close()
        return entry.decoded

    def flip_metadata_byte(self, info) -> None:
        with open(self.path(info), "r+b") as f:
            f.seek(info.size - 3)
            byte = f.read(1)
            f.seek(info.size - 3)
            f.write(bytes([byte[0] ^ 0xFF]))

    def test_hot_entry_not_decoded_again(self) -> None:
        """A second open takes the decoded head; a metadata byte flipped since is never read, so never served."""
        store = self.make_store(hot_entries=2)
        info = self.put(store, body=b"x" * 100)
        first = self.opened(store, info)
        self.flip_metadata_byte(info)
        entry = store.open(info)
        assert entry is not None
        with entry:
            self.assertIs(entry.decoded, first)
            self.assertEqual((entry.meta.key, entry.meta.headers), (meta().key, meta().headers))
            self.assertEqual(entry.read(0, 200), b"x" * 100)

    def test_zero_decodes_every_open(self) -> None:
        """With ``hot_entries = 0`` every open reads the metadata, so the flipped byte is found."""
        store = self.make_store(hot_entries=0)
        info = self.put(store, body=b"x" * 100)
        self.opened(store, info)
        self.flip_metadata_byte(info)
        self.assertIsNone(store.open(info))
        self.assertEqual(len(store), 0)

    def test_bound(self) -> None:
        """At the bound the least recently opened entry's head is dropped; the others stay."""
        store = self.make_store(hot_entries=2)
        a, b, c = (self.put(store, key=b"http://h/%d" % n) for n in range(3))
        kept = {name: self.opened(store, info) for name, info in (("a", a), ("b", b))}
        self.assertIs(self.opened(store, b), kept["b"])
        self.assertIs(self.opened(store, a), kept["a"])  # a is now the most recent; b the least
        third = self.opened(store, c)
        self.assertIs(self.opened(store, a), kept["a"])
        self.assertIs(self.opened(store, c), third)
        self.assertIsNot(self.opened(store, b), kept["b"])

    def test_lowered_bound(self) -> None:
        """A bound lowered by a reload empties the table at the next open."""
        store = self.make_store(hot_entries=2)
        a, b = self.put(store, key=b"http://h/a"), self.put(store, key=b"http://h/b")
        first_a, first_b = self.opened(store, a), self.opened(store, b)
        store.hot_entries = 0
        self.opened(store, a)
        self.assertIsNot(self.opened(store, a), first_a)
        self.assertIsNot(self.opened(store, b), first_b)

    def test_update_elsewhere_decoded_again(self) -> None:
        """Another process freshening the entry in place changes its metadata CRC: the new head is read."""
        store = self.make_store(hot_entries=2)
        info = self.put(store, body=b"payload")
        self.opened(store, info)
        other = self.make_store()
        found = other.lookup(b"http://h/a", [])
        assert found is not None
        other.update(found, [(b"X", b"new")], T + 100, T + 101, keep_until=float("inf"))
        entry = store.open(info)  # this store has not learnt of the update yet
        assert entry is not None
        with entry:
            self.assertEqual(entry.meta.headers, [(b"X", b"new")])
            self.assertEqual(entry.read(0, 100), b"payload")

    def test_replaced_elsewhere_decoded_again(self) -> None:
        """Another process replacing the entry gives it a new id: its own head is read, not the old one."""
        store = self.make_store(hot_entries=2)
        info = self.put(store, body=b"old")
        self.opened(store, info)
        self.put(self.make_store(), body=b"new", headers=[(b"X", b"replaced")])
        entry = store.open(info)
        assert entry is not None
        with entry:
            self.assertEqual(entry.meta.headers, [(b"X", b"replaced")])
            self.assertEqual(entry.read(0, 100), b"new")

    def test_negative_refused(self) -> None:
        self.assertRaises(ValueError, self.make_store, hot_entries=-1)


class UpdateTests(StoreTestCase):
    def test_update_replaces_head_keeps_body(self) -> None:
        """RFC 9111 §4.3.4: a 304 refreshes the stored head; the body is unchanged."""
        info = self.put(body=b"payload")
        new_headers = [(b"Content-Type", b"text/plain"), (b"ETag", b'"1"'), (b"Cache-Control", b"max-age=99")]
        updated = self.store.update(info, new_headers, T + 100, T + 101, keep_until=T + 500)
        assert updated is not None
        entry = self.store.open(updated)
        assert entry is not None
        with entry:
            self.assertEqual(entry.meta.headers, new_headers)
            self.assertEqual((entry.meta.request_time, entry.meta.response_time), (T + 100, T + 101))
            self.assertEqual(entry.read(0, 100), b"payload")
        self.assertEqual(self.store.total_size, updated.size)
        self.assertIsNone(self.store.open(info))  # the old info is no longer indexed

    def test_update_survives_restart(self) -> None:
        """A freshened entry is read back after a restart."""
        info = self.put(body=b"payload")
        self.store.update(info, [(b"X", b"new")], T + 100, T + 101, keep_until=float("inf"))
        restarted = self.make_store()
        found = restarted.lookup(b"http://h/a", [])
        assert found is not None
        entry = restarted.open(found)
        assert entry is not None
        with entry:
            self.assertEqual(entry.meta.headers, [(b"X", b"new")])
            self.assertEqual(entry.read(0, 100), b"payload")

    def test_torn_update_detected(self) -> None:
        """A crash between the metadata write and the header write leaves a detectably bad entry."""
        info = self.put(body=b"payload")
        path = os.path.join(self.directory, info.name[:2], info.name[2:4], info.name)
        with open(path, "r+b") as f:  # new metadata written, header not yet
            f.seek(HEADER_SIZE + 7)
            f.write(encode_meta(meta(headers=[(b"X", b"torn")])))
            f.truncate()
        self.assertEqual(len(self.make_store()), 0)


class BoundsTests(StoreTestCase):
    def test_total_size_bound_after_every_commit(self) -> None:
        """The store never holds more than max_size after a commit (LRU eviction)."""
        store = self.make_store(max_size=5000, max_object_size=1000)
        for i in range(50):
            self.put(store, body=b"z" * 900, key=b"http://h/%d" % i)
            self.assertLessEqual(store.total_size, 5000)
        self.assertLess(len(store), 50)
        self.assertEqual(store.total_size, sum(os.path.getsize(os.path.join(d, f))
                                               for d, _, fs in os.walk(self.directory) for f in fs))  # fmt: skip

    def test_room_made_before_rename(self) -> None:
        """The committed files on disk never add up to more than max_size, even during a commit."""
        store = self.make_store(max_size=5000, max_object_size=1000)
        for i in range(5):
            self.put(store, body=b"z" * 900, key=b"http://h/%d" % i)
        writer = store.writer(meta(key=b"http://h/new"))
        writer.write(b"y" * 900)
        real_replace = os.replace
        seen: list[int] = []

        def replace(src: str, dst: str) -> None:
            committed = [os.path.join(d, f) for d, _, fs in os.walk(self.directory) for f in fs
                         if ".tmp-" not in f]  # fmt: skip
            seen.append(sum(os.path.getsize(p) for p in committed) + os.path.getsize(src))
            real_replace(src, dst)

        self.patch(os, "replace", replace)
        self.assertIsNotNone(writer.commit())
        self.assertLessEqual(seen[0], 5000)

    def test_replacing_an_entry_evicts_nothing_else(self) -> None:
        """A new response for a stored key takes the old one's room, not another entry's."""
        store = self.make_store(max_size=3200, max_object_size=1000)  # room for three
        for i in range(3):
            self.put(store, body=b"z" * 900, key=b"http://h/%d" % i)
        self.put(store, body=b"w" * 900, key=b"http://h/0")
        self.assertEqual(len(store), 3)

    def test_lru_keeps_recently_used(self) -> None:
        """Eviction removes the least recently used entry first; a hit refreshes an entry."""
        store = self.make_store(max_size=3200, max_object_size=1000)  # room for three
        first = self.put(store, body=b"a" * 900, key=b"http://h/1")
        self.put(store, body=b"b" * 900, key=b"http://h/2")
        self.put(store, body=b"c" * 900, key=b"http://h/3")
        hit = store.open(first)  # a hit on /1
        assert hit is not None
        hit.close()
        self.put(store, body=b"d" * 900, key=b"http://h/4")
        self.assertIsNotNone(store.lookup(b"http://h/1", []))
        self.assertIsNone(store.lookup(b"http://h/2", []))

    def test_janitor_low_water(self) -> None:
        """The janitor evicts down to low_water * max_size."""
        store = self.make_store(max_size=10_000, max_object_size=1000, low_water=0.5)
        for i in range(10):
            self.put(store, body=b"z" * 900, key=b"http://h/%d" % i)
        self.assertGreater(store.total_size, 5000)
        store.janitor()
        self.assertLessEqual(store.total_size, 5000)

    def test_janitor_limit(self) -> None:
        """One janitor run removes at most ``limit`` entries."""
        store = self.make_store(max_size=10_000, max_object_size=1000, low_water=0.1)
        for i in range(10):
            self.put(store, body=b"z" * 900, key=b"http://h/%d" % i)
        self.assertEqual(store.janitor(limit=3), 3)

    def test_janitor_drops_expired_first(self) -> None:
        """Entries past keep_until go before any LRU eviction."""
        self.put(key=b"http://h/old", keep_until=T + 10)
        self.put(key=b"http://h/forever")
        self.clock.advance(11)
        self.assertEqual(self.store.janitor(), 1)
        self.assertIsNone(self.store.lookup(b"http://h/old", []))
        self.assertIsNotNone(self.store.lookup(b"http://h/forever", []))

    def test_limits_checked(self) -> None:
        """Bounds are validated at construction."""
        self.assertRaises(ValueError, DiskStore, "x", self.clock, max_size=10, max_object_size=20)
        self.assertRaises(ValueError, DiskStore, "x", self.clock, max_size=0, max_object_size=0)
        self.assertRaises(ValueError, DiskStore, "x", self.clock, max_size=10, max_object_size=5, low_water=0)


class PurgeTests(StoreTestCase):
    def test_purge_key_removes_all_variants(self) -> None:
        """Purging a URL removes every Vary variant stored for it."""
        self.put(vary_names=(b"origin",), vary_values=(b"a",))
        self.put(vary_names=(b"origin",), vary_values=(b"b",))
        self.put(key=b"http://h/other")
        self.assertEqual(self.store.purge(b"http://h/a"), 2)
        self.assertEqual(len(self.store), 1)
        self.assertEqual(len(files_under(self.directory)), 1)

    def test_purge_prefix(self) -> None:
        """Purging a URL prefix removes every key that starts with it."""
        for path in (b"/img/a", b"/img/b?x", b"/imgx", b"/css/a"):
            self.put(key=b"http://h" + path)
        self.assertEqual(self.store.purge_prefix(b"http://h/img/"), 2)
        self.assertEqual(sorted(i.key for k in (b"http://h/imgx", b"http://h/css/a") for i in self.store.variants(k)),
                         [b"http://h/css/a", b"http://h/imgx"])  # fmt: skip

    def test_purge_aborts_writers_in_flight(self) -> None:
        """RFC 9111 §4.4: a response still being stored when its URL is purged is not committed."""
        writer = self.store.writer(meta())
        writer.write(b"old")
        other = self.store.writer(meta(key=b"http://h/b"))
        self.store.purge(b"http://h/a")
        self.assertEqual((writer.state, writer.reason), (WriterState.ABORTED, "purged"))
        self.assertFalse(writer.write(b"more"))
        self.assertIsNone(writer.commit())
        self.assertIsNotNone(other.commit())

    def test_prefix_and_surrogate_purges_abort_writers(self) -> None:
        """Prefix and surrogate-key purges abort the writers they cover."""
        by_prefix = self.store.writer(meta(key=b"http://h/img/1"))
        by_tag = self.store.writer(meta(key=b"http://h/x", surrogate_keys=(b"t",)))
        self.store.purge_prefix(b"http://h/img/")
        self.store.purge_surrogate(b"t")
        self.assertEqual((by_prefix.state, by_tag.state), (WriterState.ABORTED, WriterState.ABORTED))
        self.assertEqual(files_under(self.directory), [])

    def test_purge_surrogate(self) -> None:
        """Purging a surrogate key removes the entries tagged with it."""
        self.put(key=b"http://h/1", surrogate_keys=(b"product-7", b"all"))
        self.put(key=b"http://h/2", surrogate_keys=(b"all",))
        self.assertEqual(self.store.purge_surrogate(b"product-7"), 1)
        self.assertEqual(self.store.purge_surrogate(b"all"), 1)
        self.assertEqual(len(self.store), 0)


class RestartTests(StoreTestCase):
    def test_rebuild_finds_entries(self) -> None:
        """A new store over the same directory finds every committed entry."""
        names = (b"accept",)
        for i in range(20):
            self.put(key=b"http://h/%d" % i, body=b"%d" % i, vary_names=names, vary_values=(b"text/html",))
        restarted = self.make_store()
        self.assertEqual(len(restarted), 20)
        self.assertEqual(restarted.total_size, self.store.total_size)
        info = restarted.lookup(b"http://h/7", [(b"Accept", b"text/html")])
        self.assertEqual(self.body_of(info, restarted), b"7")

    def test_rebuild_keeps_surrogates_and_expiry(self) -> None:
        """Surrogate keys and keep_until come back from the entry metadata."""
        self.put(key=b"http://h/1", surrogate_keys=(b"s",), keep_until=T + 5)
        restarted = self.make_store()
        self.assertEqual(restarted.purge_surrogate(b"s"), 1)
        self.put(restarted, key=b"http://h/2", keep_until=T + 5)
        again = self.make_store()
        self.clock.advance(6)
        self.assertEqual(again.janitor(), 1)

    def test_rebuild_enforces_a_smaller_limit(self) -> None:
        """A restart with a smaller max_size evicts down to it."""
        for i in range(10):
            self.put(key=b"http://h/%d" % i, body=b"z" * 900)
        smaller = self.make_store(max_size=3000, max_object_size=1000)
        self.assertLessEqual(smaller.total_size, 3000)
