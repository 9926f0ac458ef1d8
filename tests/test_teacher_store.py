import hashlib
import io
import json
import re

import numpy as np
import pytest
import torch

from ensemble_distill.errors import UserError
from ensemble_distill.teacher_store import (
    TeacherStore,
    fingerprint_dataset,
    fingerprint_vocab,
    require_teachers,
    to_dense,
    write_store,
)

V = 40
VOCAB = [f"label{i}" for i in range(V)]
SOURCE_VOCAB = 25


def make_sentences(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, SOURCE_VOCAB, size=rng.integers(0, 9)) for _ in range(n)]


class Teacher:
    """Deterministic per token (so reruns agree), peaked like a trained model, no ties; counts its calls."""

    def __init__(self, fail_after_calls=None, packed=False, vocab_size=V):
        logits = np.random.default_rng(1).normal(size=(SOURCE_VOCAB, vocab_size)) * 3.0
        self.table = torch.softmax(torch.tensor(logits, dtype=torch.float32), -1)
        self.fail_after_calls, self.packed, self.calls, self.sentences_seen = fail_after_calls, packed, 0, 0

    def __call__(self, batch):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.sentences_seen += len(batch)
        dists = [self.table[torch.as_tensor(s, dtype=torch.int64)] for s in batch]
        return torch.cat(dists).numpy() if self.packed else dists


def write(path, sentences, teacher=None, **options):
    options = {"shard_sentences": 5, "batch_sentences": 2, "progress": False, **options}
    return write_store(path, sentences, teacher or Teacher(), vocab=VOCAB, fingerprint=fingerprint_dataset(sentences),
                       teachers=["member-1.pt", "member-2.pt"], **options)


def store_files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def true_distributions(sentences):
    return [Teacher().table[torch.as_tensor(s, dtype=torch.int64)].numpy() for s in sentences]


@pytest.mark.parametrize("probs_dtype", ["float16", "uint8"])
def test_top_k_keeps_the_true_top_entries_and_round_trips(tmp_path, probs_dtype):
    sentences = make_sentences()
    store = write(tmp_path, sentences, top_k=6, probs_dtype=probs_dtype)
    assert len(store) == len(sentences) and store.num_positions == sum(len(s) for s in sentences)
    for i, dist in enumerate(true_distributions(sentences)):
        ids, probs, remainder = store.sentence(i)
        expected_ids = np.argsort(-dist, axis=-1, kind="stable")[:, :6]
        expected = np.take_along_axis(dist, expected_ids, -1)
        assert ids.shape == (len(dist), 6)
        np.testing.assert_array_equal(ids.numpy(), expected_ids)
        if probs_dtype == "float16":
            np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-3, atol=3e-8)
            np.testing.assert_allclose(remainder.numpy(), 1 - expected.sum(-1), rtol=1e-3, atol=3e-8)
        else:
            assert np.abs(probs.numpy() - expected).max(initial=0) <= 1 / 510 + 1e-7
            np.testing.assert_allclose(remainder.numpy(), 1 - expected.sum(-1), rtol=1e-3, atol=1e-6)


def test_top_k_at_least_the_vocabulary_keeps_everything(tmp_path):
    sentences = make_sentences()
    store = write(tmp_path, sentences, top_k=V + 10)
    batch = store.batch(np.arange(len(sentences)))
    assert batch.ids.shape[-1] == V
    for i, dist in enumerate(true_distributions(sentences)):
        dense = to_dense(batch.ids[i, :len(dist)], batch.probs[i, :len(dist)], V).numpy()
        np.testing.assert_allclose(dense, dist, rtol=1e-3, atol=3e-8)
        assert np.abs(batch.remainder[i, :len(dist)].numpy()).max(initial=0) < 1e-6


def fewest_reaching(row, epsilon, cap):
    """Brute force: grow the kept set one entry (the next most probable) at a time."""
    order, mass = np.argsort(-row), 0.0
    for n, index in enumerate(order, start=1):
        mass += float(row[index])
        if mass >= 1 - epsilon or n == cap:
            return order[:n]


@pytest.mark.parametrize("epsilon,top_k", [(0.05, 20), (0.3, 20), (1e-4, 4)])
def test_adaptive_keeps_the_fewest_entries_reaching_one_minus_epsilon(tmp_path, epsilon, top_k):
    sentences = make_sentences()
    store = write(tmp_path, sentences, top_k=top_k, epsilon=epsilon)
    seen_counts = set()
    for i, dist in enumerate(true_distributions(sentences)):
        ids, probs, remainder = store.sentence(i)
        for t, row in enumerate(dist):
            kept = fewest_reaching(row, epsilon, top_k)
            seen_counts.add(len(kept))
            np.testing.assert_array_equal(ids[t, :len(kept)].numpy(), kept)
            assert (probs[t, len(kept):] == 0).all()
            np.testing.assert_allclose(probs[t, :len(kept)].numpy(), row[kept], rtol=1e-3, atol=3e-8)
            np.testing.assert_allclose(float(remainder[t]), 1 - row[kept].sum(), rtol=1e-3, atol=1e-6)
    assert len(seen_counts) > 1 if top_k > 4 else seen_counts == {4}  # rows really differ / the cap binds


def test_batch_is_padded_in_request_order_across_shards(tmp_path):
    sentences = make_sentences()
    store = write(tmp_path, sentences, top_k=30, epsilon=0.1)
    wanted = [22, 0, 7, 7, 3, 14]  # several shards, a repeat, out of order
    batch = store.batch(wanted)
    assert batch.lengths.tolist() == [len(sentences[i]) for i in wanted]
    assert batch.ids.shape[:2] == (len(wanted), max(len(sentences[i]) for i in wanted))
    for row, i in enumerate(wanted):
        ids, probs, remainder = store.sentence(i)
        n, k = ids.shape
        torch.testing.assert_close(batch.ids[row, :n, :k], ids)
        torch.testing.assert_close(batch.probs[row, :n, :k], probs)
        torch.testing.assert_close(batch.remainder[row, :n], remainder)
        assert (batch.probs[row, n:] == 0).all() and (batch.probs[row, :, k:] == 0).all()
        assert (batch.remainder[row, n:] == 0).all()
    streamed = [i for indices, _ in store.iter_batches(4) for i in indices]
    assert streamed == list(range(len(sentences)))


def test_packed_teacher_output_writes_the_same_store(tmp_path):
    sentences = make_sentences()
    write(tmp_path / "list", sentences, Teacher(), top_k=6)
    write(tmp_path / "packed", sentences, Teacher(packed=True), top_k=6)
    assert store_files(tmp_path / "list") == store_files(tmp_path / "packed")


def test_dtypes_and_bytes_per_token(tmp_path):
    sentences = make_sentences()
    store = write(tmp_path, sentences, top_k=6, probs_dtype="uint8")
    arrays = {name: np.load(tmp_path / f"shard-00000-{name}.npy") for name in
              ("lengths", "counts", "ids", "probs", "remainder")}
    assert {k: str(a.dtype) for k, a in arrays.items()} == {
        "lengths": "int32", "counts": "uint8", "ids": "uint16", "probs": "uint8", "remainder": "float16"}
    shard_bytes = sum(p.stat().st_size for p in tmp_path.glob("shard-*.npy"))
    assert store.bytes_per_token() == shard_bytes / store.num_positions


def test_a_vocabulary_beyond_uint16_stores_int32_ids(tmp_path):
    big = 70_000
    sentences = [np.array([0, 1, 2])]
    dist = torch.softmax(torch.linspace(0, 30, big), -1).repeat(3, 1)
    vocab = [str(i) for i in range(big)]
    store = write_store(tmp_path, sentences, lambda batch: dist, vocab=vocab, teachers=[], top_k=4,
                        fingerprint=fingerprint_dataset(sentences), progress=False)
    assert np.load(tmp_path / "shard-00000-ids.npy").dtype == np.int32
    assert store.sentence(0)[0][0].tolist() == [big - 1, big - 2, big - 3, big - 4]


def test_store_for_another_dataset_or_vocabulary_is_refused(tmp_path):
    sentences = make_sentences()
    write(tmp_path, sentences)
    fingerprint = fingerprint_dataset(sentences)
    other_data = fingerprint_dataset(make_sentences(seed=5))
    with pytest.raises(UserError, match=f"{tmp_path}.*dataset {fingerprint}.*not the dataset being trained"):
        TeacherStore.open(tmp_path, expect_fingerprint=other_data, expect_vocab=VOCAB)
    with pytest.raises(UserError, match=f"{tmp_path}.*another vocabulary"):
        TeacherStore.open(tmp_path, expect_fingerprint=fingerprint, expect_vocab=VOCAB[::-1])
    TeacherStore.open(tmp_path, expect_fingerprint=fingerprint, expect_vocab=VOCAB)


def test_fingerprint_sees_ids_lengths_and_columns():
    sentences = [np.array([1, 2, 3]), np.array([4, 5])]
    fingerprint = fingerprint_dataset(sentences)
    assert fingerprint == fingerprint_dataset([[1, 2, 3], [4, 5]])
    assert fingerprint != fingerprint_dataset([np.array([1, 2]), np.array([3, 4, 5])])  # same ids, split elsewhere
    assert fingerprint != fingerprint_dataset([np.array([1, 2, 3]), np.array([4, 6])])
    assert fingerprint != fingerprint_dataset(sentences, [np.array([0, 0, 1]), np.array([1, 0])])
    assert fingerprint_vocab(["O", "B-PER"]) != fingerprint_vocab(["B-PER", "O"])
    with pytest.raises(UserError, match="integer ids"):
        fingerprint_dataset([np.array([0.5, 1.0])])


@pytest.mark.parametrize("verify", ["open", "lazy"])
def test_corrupted_shard_is_refused(tmp_path, verify):
    sentences = make_sentences()
    write(tmp_path, sentences)
    shard = tmp_path / "shard-00001-probs.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    open_store = lambda: TeacherStore.open(tmp_path, expect_fingerprint=fingerprint_dataset(sentences),
                                           expect_vocab=VOCAB, verify=verify)
    if verify == "open":
        with pytest.raises(UserError, match="shard-00001-probs.npy.*fails its checksum"):
            open_store()
    else:
        store = open_store()
        store.batch([0, 4])  # shard 0 is intact
        with pytest.raises(UserError, match="shard-00001-probs.npy.*fails its checksum"):
            store.batch([0, 5])


def test_missing_manifest_is_refused(tmp_path):
    sentences = make_sentences()
    write(tmp_path, sentences)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(UserError, match=f"{tmp_path}: not a finished teacher store"):
        TeacherStore.open(tmp_path, expect_fingerprint=fingerprint_dataset(sentences), expect_vocab=VOCAB)


def reseal(manifest_path, edit):
    """Edit a manifest and recompute its checksum as documented: the sha256 of the JSON (sorted keys, indent 1,
    a final newline) of every field but manifest_sha256."""
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("manifest_sha256")
    edit(manifest)
    manifest["manifest_sha256"] = hashlib.sha256((json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
                                                 ).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def open_store(path, sentences, verify="open"):
    return TeacherStore.open(path, expect_fingerprint=fingerprint_dataset(sentences), expect_vocab=VOCAB,
                             verify=verify)


def test_the_manifest_checksum_is_its_documented_sha256(tmp_path):
    sentences = make_sentences()
    write(tmp_path, sentences)
    reseal(tmp_path / "manifest.json", lambda manifest: None)  # recomputed independently: the same bytes
    assert (tmp_path / "manifest.json").read_bytes() == write(tmp_path / "again", sentences).path.joinpath(
        "manifest.json").read_bytes()


@pytest.mark.parametrize("field", ["num_sentences", "teachers", "shards"])
def test_an_edited_manifest_fails_its_checksum(tmp_path, field):
    sentences = make_sentences()
    write(tmp_path, sentences)
    manifest = tmp_path / "manifest.json"
    text = manifest.read_text()
    edited = {"num_sentences": text.replace('"num_sentences": 23', '"num_sentences": 30'),
              "teachers": text.replace("member-2.pt", "member-9.pt"),
              "shards": text.replace('"first_sentence": 5', '"first_sentence": 6')}[field]
    assert edited != text
    manifest.write_text(edited)
    message = f"{manifest}: the manifest fails its checksum"
    with pytest.raises(UserError, match=re.escape(message)):
        open_store(tmp_path, sentences, verify="lazy")
    with pytest.raises(UserError, match=re.escape(message)):
        write(tmp_path, sentences)  # a rerun of the writer does not trust it either


def test_an_edited_partial_manifest_is_refused_on_resume(tmp_path):
    sentences = make_sentences()
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, sentences, Teacher(fail_after_calls=7))
    partial = tmp_path / "manifest.partial.json"
    partial.write_text(partial.read_text().replace('"num_sentences": 5', '"num_sentences": 4', 1))
    with pytest.raises(UserError, match=re.escape(f"{partial}: the manifest fails its checksum")):
        write(tmp_path, sentences)


def set_path(manifest, dotted, value):
    *parents, last = dotted.split(".")
    node = manifest
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value


@pytest.mark.parametrize("dotted, value, message", [
    ("num_sentences", 30, "num_sentences is 30, expected 23"),  # was an IndexError when reading
    ("num_positions", 1, "num_positions is 1, expected"),
    ("num_entries", 1, "num_entries is 1, expected"),
    ("shards.1.first_sentence", 4, "shards[1].first_sentence is 4, expected 5"),
    ("shards.1.num_sentences", 6, "num_sentences is 23, expected 24"),  # the total is not the shards' sum
    ("truncation.width", 7, "truncation.width is 7, expected 6"),
    ("dtypes.ids", "int32", "dtypes is {"),
    ("dtypes.probs", "float32", "dtypes.probs is 'float32', expected one of float16, uint8, log_uint8"),
    ("shards.0.files.ids.name", "../elsewhere.npy", "shards[0].files is {"),
    ("shards.0.files.ids.bytes", 3, "shards[0].files.ids.bytes is 3, expected"),
])
def test_manifest_fields_that_disagree_with_the_shards_are_refused_naming_the_field(tmp_path, dotted, value,
                                                                                     message):
    sentences = make_sentences()
    write(tmp_path, sentences, top_k=6)
    reseal(tmp_path / "manifest.json", lambda manifest: set_path(manifest, dotted, value))
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'manifest.json'}: the manifest does not match its "
                                                  f"shards: {message}")):
        open_store(tmp_path, sentences, verify="lazy")


def test_a_malformed_or_old_manifest_is_refused(tmp_path):
    sentences = make_sentences()
    write(tmp_path, sentences)
    reseal(tmp_path / "manifest.json", lambda manifest: manifest.pop("shards"))
    with pytest.raises(UserError, match="malformed manifest"):
        open_store(tmp_path, sentences)
    reseal(tmp_path / "manifest.json", lambda manifest: manifest.update(version=1))
    with pytest.raises(UserError, match="of version 1, not one of 2, 3, 4 .*delete the folder and memoize again"):
        open_store(tmp_path, sentences)


def replace_shard_array(store_dir, index, name, array):
    """Swap a shard file for `array` and update its sha256 and size in a resealed manifest, so that only the
    consistency checks can tell."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    (store_dir / f"shard-{index:05d}-{name}.npy").write_bytes(data)

    def edit(manifest):
        manifest["shards"][index]["files"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    reseal(store_dir / "manifest.json", edit)


@pytest.mark.parametrize("name, change, message", [
    ("ids", lambda a: a.astype(np.int32), "holds int32 [30], the manifest says 1-d uint16"),
    ("ids", lambda a: a + V, f"does not hold 30 ids below the vocabulary size {V}"),
    ("ids", lambda a: a[:-6], "does not hold 30 ids"),
    ("counts", lambda a: np.where(np.arange(len(a)) == 0, a - 1, a).astype(a.dtype),
     "does not hold 5 entry counts of at most 6, summing to 30"),
    ("lengths", lambda a: a + 1, "does not hold 5 sentence lengths summing to 5 positions"),
    ("probs", lambda a: a.reshape(-1, 6), "holds float16 [5, 6], the manifest says 1-d float16"),
])
def test_shard_arrays_that_disagree_with_the_manifest_are_refused(tmp_path, name, change, message):
    # one shard of 5 sentences holding 5 positions of 6 entries
    sentences = [np.array([1]), np.array([2, 3]), np.array([], dtype=np.int64), np.array([4]), np.array([5])]
    write(tmp_path, sentences, top_k=6)
    original = np.load(tmp_path / f"shard-00000-{name}.npy")
    replace_shard_array(tmp_path, 0, name, change(original))
    with pytest.raises(UserError, match=re.escape(f"shard-00000-{name}.npy: teacher store shard {message}")):
        open_store(tmp_path, sentences)


def test_require_teachers_names_the_first_difference(tmp_path):
    sentences = make_sentences()
    store = write(tmp_path, sentences)  # teachers member-1.pt, member-2.pt
    require_teachers(store, ["member-1.pt", "member-2.pt"], "the claimed ensemble")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path}: the store was memoized from other teachers than "
                                                  "the claimed ensemble (2 teachers in the store, 1 expected)")):
        require_teachers(store, ["member-1.pt"], "the claimed ensemble")
    with pytest.raises(UserError, match=re.escape("(teachers[1]: 'member-2.pt' in the store, 'member-3.pt' "
                                                  "expected)")):
        require_teachers(store, ["member-1.pt", "member-3.pt"], "the claimed ensemble")


def test_resume_after_a_kill_is_byte_identical(tmp_path):
    sentences = make_sentences()
    options = {"top_k": 12, "epsilon": 0.02}
    write(tmp_path / "whole", sentences, **options)

    killed = Teacher(fail_after_calls=7)  # 3 calls a shard of 5 sentences: dies inside the third shard
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "resumed", sentences, killed, **options)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    with pytest.raises(UserError, match="writing did not finish"):
        TeacherStore.open(tmp_path / "resumed", expect_fingerprint=fingerprint_dataset(sentences), expect_vocab=VOCAB)
    (tmp_path / "resumed" / ".shard-00002-ids.npy.k1ll3d.tmp").write_bytes(b"half")  # as if killed mid-write

    rerun = Teacher()
    write(tmp_path / "resumed", sentences, rerun, **options)
    assert rerun.sentences_seen == len(sentences) - 10  # the two finished shards were not recomputed
    assert store_files(tmp_path / "resumed") == store_files(tmp_path / "whole")

    again = Teacher()
    write(tmp_path / "resumed", sentences, again, **options)  # a finished store is only reopened
    assert again.calls == 0


def test_resume_with_other_settings_is_refused(tmp_path):
    sentences = make_sentences()
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, sentences, Teacher(fail_after_calls=4), top_k=12)
    with pytest.raises(UserError, match="manifest.partial.json.*different truncation"):
        write(tmp_path, sentences, top_k=16)


def test_teacher_output_that_is_not_a_distribution_is_refused(tmp_path):
    sentences = make_sentences()
    unnormalised = lambda batch: [torch.ones(len(s), V) for s in batch]
    with pytest.raises(UserError, match="sentence 0: .*not a probability distribution"):
        write(tmp_path / "a", sentences, unnormalised)
    with pytest.raises(UserError, match=r"shape \(3, 7\), expected"):
        write(tmp_path / "b", [np.array([1, 2, 3])], lambda batch: torch.full((3, 7), 1 / 7))


def test_a_teacher_that_drops_positions_is_refused(tmp_path):
    """One row a sentence for sentences of 4, 6 and 3 positions (`positions`: the pipeline's sentences are ids)
    is refused at the first short sentence; so is a sentence one row short, and a stacked output of other size."""
    sentences = [np.arange(4), np.arange(6), np.arange(3)]
    one_row = lambda batch: [torch.full((1, V), 1 / V) for _ in batch]  # noqa: E731
    with pytest.raises(UserError, match="sentence 0: the teacher returned 1 positions, the sentence has 4"):
        write(tmp_path / "a", sentences, one_row, positions=[4, 6, 3])
    ids, positions = list(range(3)), [4, 6, 3]

    def write_ids(path, teacher, **options):
        return write_store(path, ids, teacher, vocab=VOCAB, fingerprint=fingerprint_dataset(sentences),
                           teachers=["member-1.pt"], batch_sentences=2, progress=False, **options)

    rows = lambda batch: [torch.full((positions[i] - (i == 2), V), 1 / V) for i in batch]  # noqa: E731
    with pytest.raises(UserError, match="sentence 2: the teacher returned 2 positions, the sentence has 3"):
        write_ids(tmp_path / "b", rows, positions=positions)
    with pytest.raises(UserError, match=r"shape \(9, 40\), expected \(10, 40\)"):  # sentences 0 and 1: 4 + 6
        write_ids(tmp_path / "c", lambda batch: torch.full((9, V), 1 / V), positions=positions)
    store = write_ids(tmp_path / "d", lambda batch: [torch.full((positions[i], V), 1 / V) for i in batch],
                      positions=positions)
    assert store.num_positions == 13




# ----------------------------------------------------------------------------------------------------------------
# The compact layout: log_uint8 probabilities on a per-position log grid, bit-packed ids

FLOAT16 = np.sort(np.arange(1 << 16, dtype=np.uint16).view(np.float16)[
    np.isfinite(np.arange(1 << 16, dtype=np.uint16).view(np.float16))].astype(np.float64))


def log_uint8_read_back(rows):
    """The documented quantisation, computed here from its definition: for each row of kept probabilities
    (descending, zeros allowed), log_max = the smallest float16 >= ln p_1, log_min = the largest float16 <=
    max(ln of the smallest nonzero p, log_max - 16), s = (log_max - log_min) / 254 in float32, code
    q = 255 - min(round((log_max - ln p) / s), 255) (0 for p = 0), read back as exp(log_max - (255 - q) s) or 0.
    Returns the read-back values and each row's step s."""
    values, steps = [], []
    for row in rows:
        row = np.asarray(row, np.float64)
        log_p = np.log(row, where=row > 0, out=np.full(len(row), -np.inf))
        log_max = FLOAT16[np.searchsorted(FLOAT16, log_p[0], side="left")]
        log_min = FLOAT16[np.searchsorted(FLOAT16, max(log_p[row > 0].min(), log_max - 16.0), side="right") - 1]
        step = (np.float32(log_max) - np.float32(log_min)) / np.float32(254)
        codes = np.zeros(len(row))
        for k, lp in enumerate(log_p):
            if np.isfinite(lp):
                codes[k] = 255 - min(np.rint((log_max - lp) / step) if step > 0 else 0, 255)
        read = np.where(codes > 0, np.exp(np.float32(log_max) - (255 - codes).astype(np.float32) * step), 0)
        values.append(read)
        steps.append(float(step))
    return values, steps


@pytest.mark.parametrize("epsilon", [None, 0.05])
def test_log_uint8_reads_back_its_documented_quantisation(tmp_path, epsilon):
    sentences = make_sentences()
    store = write(tmp_path, sentences, top_k=12, epsilon=epsilon, probs_dtype="log_uint8")
    assert store.manifest["version"] == 3 and store.manifest["dtypes"]["ids"] == "packed6"  # 40 ids: 6 bits
    for i, dist in enumerate(true_distributions(sentences)):
        ids, probs, remainder = store.sentence(i)
        for t, row in enumerate(dist):
            kept = fewest_reaching(row, epsilon, 12) if epsilon else np.argsort(-row, kind="stable")[:12]
            (expected,), (step,) = log_uint8_read_back([row[kept]])
            np.testing.assert_array_equal(ids[t, :len(kept)].numpy(), kept)
            np.testing.assert_allclose(probs[t, :len(kept)].numpy(), expected, rtol=1e-6)
            assert (probs[t, len(kept):] == 0).all()
            np.testing.assert_allclose(float(remainder[t]), 1 - row[kept].sum(), rtol=1e-3, atol=1e-6)
            # the documented bound: every entry within half a step of its log; steps at most (16 + 1/32)/254
            assert np.abs(np.log(probs[t, :len(kept)].numpy() / row[kept])).max() <= step / 2 + 1e-6
            assert step <= (16 + 1 / 32) / 254


def adversarial_rows():
    """Rows that stress the grid (each sums to 1 over 40 labels): a single 1; ties everywhere; ties inside;
    tiny entries far below the largest (some past the 16-nat grid, one a float32 subnormal); a row spanning
    just under 16 nats; equal entries at the grid's bottom."""
    rows = []
    rows.append(np.eye(V)[3])
    rows.append(np.full(V, 1 / V))
    rows.append(np.r_[0.4, 0.2, 0.2, 0.2, np.zeros(V - 4)])
    tiny = np.r_[1e-30, 1e-38, 1e-44, 1e-8, 3e-7, 1e-7, np.zeros(V - 7)]
    rows.append(np.r_[1 - tiny.sum(), tiny])
    span = np.exp(-np.linspace(0, 15.9, V))
    rows.append(span / span.sum())
    rows.append(np.r_[0.5, 0.5 - 4e-6, 1e-6, 1e-6, 1e-6, 1e-6, np.zeros(V - 6)])
    return [np.asarray(row, np.float32) for row in rows]


def test_log_uint8_error_bound_and_mass_on_adversarial_rows(tmp_path):
    rows = adversarial_rows()
    sentences = [np.arange(len(rows))]
    store = write_store(tmp_path, sentences, lambda batch: [np.stack(rows)], vocab=VOCAB, teachers=[],
                        fingerprint=fingerprint_dataset(sentences), top_k=V, probs_dtype="log_uint8",
                        progress=False)
    ids, probs, remainder = (x.numpy() for x in store.sentence(0))
    true = np.take_along_axis(np.stack(rows).astype(np.float64), ids, -1)  # the stored order (ties: any)
    expected, steps = log_uint8_read_back(true)
    np.testing.assert_allclose(probs, np.stack(expected), rtol=1e-6)
    for row, read, step, rest in zip(true, probs, steps, remainder):
        on_grid = row >= row[0] * np.exp(-16.0)
        bound = np.exp(step / 2) - 1 + 1e-6
        assert (np.abs(read[on_grid] / row[on_grid] - 1) <= bound).all() and bound <= 3.21e-2
        assert (np.abs(read[~on_grid] - row[~on_grid]) <= 1.13e-7 * row[0]).all()
        assert ((read == 0) == (row == 0) | ~on_grid).all()  # zeros stay zeros; only the grid's far tail reads 0
        # the stored mass plus the remainder: 1, within the bound on the kept mass and float16's on the remainder
        assert abs(read.sum() + rest - 1) <= bound * row.sum() + V * 1.13e-7 + 2 ** -11 * rest + 1e-6
    assert probs[0, 0] == 1 and (probs[0, 1:] == 0).all()  # p = 1 reads back exactly
    assert np.all(probs[1] == probs[1, 0]) and abs(probs[1, 0] * V - 1) < 2 ** -10  # ties read alike
    assert probs[2, 1] == probs[2, 2] == probs[2, 3]


def pack_by_definition(ids, bits):
    """The documented packed<bits> stream, built with Python integers: entry i in bits [i bits, (i + 1) bits) of a
    little-endian number, then 4 zero bytes."""
    number = sum(int(v) << (i * bits) for i, v in enumerate(ids))
    return number.to_bytes(-(-len(ids) * bits // 8), "little") + bytes(4)


@pytest.mark.parametrize("vocab_size, bits", [(2, 1), (40, 6), (8192, 13), (8193, 14), (70_000, 17)])
def test_packed_ids_are_the_documented_bit_stream(tmp_path, vocab_size, bits):
    rng = np.random.default_rng(vocab_size)
    sentences = [np.arange(start, stop) for start, stop in ((0, 3), (3, 3), (3, 8), (8, 9))]  # by position
    logits = rng.normal(size=(9, vocab_size)) * 4
    logits[0, vocab_size - 1] = 100  # the largest id is kept
    dist = torch.softmax(torch.tensor(logits, dtype=torch.float32), -1)
    teacher = lambda batch: dist[np.concatenate(batch)]
    store = write_store(tmp_path, sentences, teacher, vocab=[str(i) for i in range(vocab_size)],
                        teachers=[], fingerprint=fingerprint_dataset(sentences), top_k=3, probs_dtype="log_uint8",
                        shard_sentences=2, progress=False)
    assert store.manifest["dtypes"]["ids"] == f"packed{bits}"
    top = torch.topk(dist, min(3, vocab_size), -1).indices.numpy()
    first = 0
    for shard, size in enumerate((3, 6)):  # positions of the two shards
        stream = np.load(tmp_path / f"shard-{shard:05d}-ids.npy")
        assert stream.tobytes() == pack_by_definition(top[first:first + size].reshape(-1), bits)
        first += size
    batch = store.batch(np.arange(len(sentences)))
    stored = batch.ids[torch.arange(batch.ids.shape[1])[None] < batch.lengths[:, None]]
    np.testing.assert_array_equal(stored.numpy(), top)


def test_log_uint8_layout_costs_its_documented_bytes(tmp_path):
    """At V' = 64 of an 8K vocabulary: 13-bit ids (104 bytes), 64 one-byte codes, and per position a count, a
    remainder and the grid's two float16 ends; npy headers of 128 bytes a file."""
    vocab_size, sentences = 8192, [np.arange(n) for n in (20, 30, 25)]
    positions = sum(len(s) for s in sentences)
    dist = torch.softmax(torch.randn(positions, vocab_size, generator=torch.Generator().manual_seed(0)) * 3, -1)
    store = write_store(tmp_path, sentences, lambda batch: dist, vocab=[str(i) for i in range(vocab_size)],
                        teachers=[], fingerprint=fingerprint_dataset(sentences), top_k=64, probs_dtype="log_uint8",
                        progress=False)
    data_bytes = positions * (64 * 13 // 8 + 64 + 1 + 2 + 2 + 2) + 4 + 4 * len(sentences)
    assert store.bytes_per_token() == (data_bytes + 7 * 128) / positions
    assert (data_bytes / positions) < 176


def test_a_float16_store_keeps_format_version_2_and_versions_must_match_the_layout(tmp_path):
    sentences = make_sentences()
    assert write(tmp_path / "f16", sentences).manifest["version"] == 2
    write(tmp_path / "log", sentences, probs_dtype="log_uint8")
    for folder, version in (("f16", 3), ("log", 2)):
        reseal(tmp_path / folder / "manifest.json", lambda manifest: manifest.update(version=version))
        with pytest.raises(UserError, match=re.escape(f"the manifest does not match its shards: version is "
                                                      f"{version}, expected {5 - version}")):
            open_store(tmp_path / folder, sentences)


@pytest.mark.parametrize("name, change, message", [
    ("ids", lambda a: a[:-1], "does not hold 30 ids below the vocabulary size 40"),
    ("ids", lambda a: np.r_[a[:-5], np.uint8(0xFF), a[-4:]].astype(np.uint8),  # the last id: 60 or more
     "does not hold 30 ids below the vocabulary size 40"),
    ("log_min", lambda a: a + np.float16(100), "holds a grid bottom above its top (log_max)"),
    ("log_max", lambda a: a[:-1], "does not hold 5 finite values"),
    ("probs", lambda a: a.astype(np.float16), "holds float16 [30], the manifest says 1-d uint8"),
])
def test_compact_shard_arrays_that_disagree_with_the_manifest_are_refused(tmp_path, name, change, message):
    sentences = [np.array([1]), np.array([2, 3]), np.array([], dtype=np.int64), np.array([4]), np.array([5])]
    write(tmp_path, sentences, top_k=6, probs_dtype="log_uint8")  # 30 entries of 6 bits: 23 bytes, then 4 zeros
    original = np.load(tmp_path / f"shard-00000-{name}.npy")
    replace_shard_array(tmp_path, 0, name, change(original))
    with pytest.raises(UserError, match=re.escape(f"shard-00000-{name}.npy: teacher store shard {message}")):
        open_store(tmp_path, sentences)


def test_log_uint8_store_resumes_byte_identically(tmp_path):
    sentences = make_sentences()
    options = {"top_k": 12, "epsilon": 0.02, "probs_dtype": "log_uint8"}
    write(tmp_path / "whole", sentences, **options)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "resumed", sentences, Teacher(fail_after_calls=7), **options)
    write(tmp_path / "resumed", sentences, **options)
    assert store_files(tmp_path / "resumed") == store_files(tmp_path / "whole")
    with pytest.raises(UserError, match="manifest.json.*different dtypes"):
        write(tmp_path / "resumed", sentences, top_k=12, epsilon=0.02)  # the float16 layout of the same store
