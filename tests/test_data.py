"""MNIST loading (IDX, md5, search order, errors) and the task sequences built from it."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
from pathlib import Path

import pytest
import torch

from cl_utils import data as D

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
COUNTS_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
COUNTS_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------------------------------------ the real files


def test_md5_table_matches_shared_readme():
    readme = SHARED / "README.md"
    if not readme.is_file():
        pytest.skip("no ../shared/data/mnist/README.md beside the repository")
    table = dict(re.findall(r"\|\s*([\w-]+)\.gz\s*\|\s*([0-9a-f]{32})\s*\|", readme.read_text()))
    assert table == D.MNIST_FILES


def test_real_files_shapes_counts_and_range(mnist):
    assert mnist.train_x.shape == (60000, 784) and mnist.train_x.dtype == torch.float32
    assert mnist.test_x.shape == (10000, 784) and mnist.test_y.dtype == torch.int64
    assert mnist.train_x.min() == 0 and mnist.train_x.max() == 1
    assert mnist.train_y.bincount().tolist() == COUNTS_TRAIN
    assert mnist.test_y.bincount().tolist() == COUNTS_TEST
    # pixel 0 is the top-left corner: always blank in MNIST; the centre is often ink
    assert mnist.train_x[:, 0].max() == 0 and mnist.train_x[:, 14 * 28 + 14].mean() > 0.3


def test_read_idx_checks_md5_of_uncompressed_bytes(mnist):
    src = Path(mnist.source) / "train-labels-idx1-ubyte.gz"
    if not src.is_file():
        pytest.skip("the loaded MNIST is not gzipped")
    raw = gzip.decompress(src.read_bytes())
    assert hashlib.md5(raw).hexdigest() == D.MNIST_FILES["train-labels-idx1-ubyte"]
    labels = D.read_idx(src, md5=D.MNIST_FILES["train-labels-idx1-ubyte"])
    assert labels.shape == (60000,) and labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_memory_cache_returns_the_same_object(mnist):
    assert D.load_mnist() is mnist


# ------------------------------------------------------------------------------------- search order and errors


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No shared folder, no $CL_DATA_DIR, an empty cache, and a clean memory cache."""
    monkeypatch.setattr(D, "_repo_root", lambda: tmp_path / "repo")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CL_DATA_DIR", raising=False)
    monkeypatch.setattr(D, "_MEMORY", {})
    return tmp_path


def _copy_files(mnist, dest: Path, *, uncompress: bool = False) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in D.MNIST_FILES:
        src = Path(mnist.source) / f"{name}.gz"
        if src.is_file() and not uncompress:
            shutil.copyfile(src, dest / src.name)
            continue
        if not src.is_file():
            src = Path(mnist.source) / name
        raw = D._read_bytes(src)
        if uncompress:
            (dest / name).write_bytes(raw)
        else:
            (dest / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    return dest


def test_uncompressed_files_load_identically(mnist, isolated):
    root = _copy_files(mnist, isolated / "plain", uncompress=True)
    plain = D.load_mnist(root, download=False)
    assert plain.source == str(root.resolve())
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(plain, field), getattr(mnist, field))


def test_search_order_root_then_env_then_shared_then_cache(mnist, isolated, monkeypatch):
    env_dir = _copy_files(mnist, isolated / "env")
    root_dir = _copy_files(mnist, isolated / "root")
    monkeypatch.setenv("CL_DATA_DIR", str(env_dir))
    assert D.load_mnist(root_dir, download=False).source == str(root_dir.resolve())
    assert D.load_mnist(download=False).source == str(env_dir.resolve())
    monkeypatch.delenv("CL_DATA_DIR")
    shared = _copy_files(mnist, isolated / "shared" / "data" / "mnist")
    assert D.load_mnist(download=False).source == str(shared.resolve())
    shutil.rmtree(shared)
    cache = _copy_files(mnist, D.cache_dir())
    assert D.load_mnist(download=False).source == str(cache.resolve())


def test_torchvision_layout_is_found(mnist, isolated):
    root = isolated / "tv"
    _copy_files(mnist, root / "MNIST" / "raw", uncompress=True)
    assert D.load_mnist(root, download=False).train_y.bincount().tolist() == COUNTS_TRAIN


def test_missing_files_error_says_where_and_how(isolated):
    empty = isolated / "empty"
    empty.mkdir()
    with pytest.raises(D.MNISTNotFoundError) as e:
        D.load_mnist(empty, download=False)
    msg = str(e.value)
    assert str(empty) in msg and str(isolated / "shared" / "data" / "mnist") in msg and str(D.cache_dir()) in msg
    assert "CL_DATA_DIR" in msg and "download=False" in msg


def test_failed_download_is_reported_never_faked(isolated, monkeypatch):
    def offline(target):
        raise OSError("network is unreachable")

    monkeypatch.setattr(D, "_download", offline)
    with pytest.raises(D.MNISTNotFoundError, match="network is unreachable"):
        D.load_mnist()


def test_download_goes_to_the_cache(mnist, isolated, monkeypatch):
    calls = []

    def fake_download(target):
        calls.append(target)
        _copy_files(mnist, target)

    monkeypatch.setattr(D, "_download", fake_download)
    got = D.load_mnist()
    assert calls == [D.cache_dir()] and got.source == str(D.cache_dir().resolve())


def test_corrupt_file_fails_its_md5(mnist, isolated):
    root = _copy_files(mnist, isolated / "bad", uncompress=True)
    path = root / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(D.MNISTFileError, match="md5"):
        D.load_mnist(root, download=False)


def test_bad_magic_number_and_truncation(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(D.MNISTFileError, match="magic"):
        D.read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + bytes(10))
    with pytest.raises(D.MNISTFileError, match="truncated"):
        D.read_idx(short)
    notgz = tmp_path / "x.gz"
    notgz.write_bytes(b"not gzip at all")
    with pytest.raises(D.MNISTFileError, match="gzip"):
        D.read_idx(notgz)


def test_root_that_is_not_a_directory(tmp_path):
    with pytest.raises(D.MNISTNotFoundError, match="not a directory"):
        D.load_mnist(tmp_path / "nope", download=False)


# ------------------------------------------------------------------------------------------------------ tasks


def test_permuted_tasks_are_reproducible_permutations(mnist):
    tasks = D.permuted_mnist(3, seed=7, data=mnist, device="cpu")
    again = D.permuted_mnist(3, seed=7, data=mnist, device="cpu")
    other = D.permuted_mnist(3, seed=8, data=mnist, device="cpu")
    assert torch.equal(tasks[0].info["permutation"], torch.arange(784))
    for t, a, o in zip(tasks, again, other):
        p = t.info["permutation"]
        assert torch.equal(p.sort().values, torch.arange(784))
        assert torch.equal(p, a.info["permutation"])
        assert torch.equal(t.train_x, mnist.train_x[:, p]) and torch.equal(t.test_x, mnist.test_x[:, p])
        assert torch.equal(t.train_y, mnist.train_y) and t.n_outputs == 10 and t.head is None
    assert not torch.equal(tasks[1].info["permutation"], other[1].info["permutation"])
    assert len({tuple(t.info["permutation"][:20].tolist()) for t in tasks}) == 3
    # task t does not depend on whether task 0 is the identity
    shifted = D.permuted_mnist(3, seed=7, data=mnist, device="cpu", identity_first=False)
    assert torch.equal(shifted[2].info["permutation"], tasks[2].info["permutation"])


@pytest.mark.parametrize("scenario", D.SCENARIOS)
def test_split_tasks_hold_exactly_their_digits(mnist, scenario):
    pairs = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    tasks = D.split_mnist(pairs, scenario=scenario, data=mnist, device="cpu")
    assert [t.info["digits"] for t in tasks] == list(pairs)
    for t, pair in enumerate(pairs):
        task = tasks[t]
        for split, y_all, x_all in (("train", mnist.train_y, mnist.train_x), ("test", mnist.test_y, mnist.test_x)):
            x, y = getattr(task, f"{split}_x"), getattr(task, f"{split}_y")
            keep = torch.isin(y_all, torch.tensor(pair))
            assert torch.equal(x, x_all[keep])  # exactly the images of these digits, in the original order
            original = y_all[keep]
            if scenario == "class":
                assert torch.equal(y, original)
            else:
                assert torch.equal(y, (original == pair[1]).long())
        assert task.head == (t if scenario == "task" else None)
        assert task.n_outputs == (10 if scenario == "class" else 2)
    assert sum(len(t.train_y) for t in tasks) == 60000 and sum(len(t.test_y) for t in tasks) == 10000


def test_split_input_errors(mnist):
    with pytest.raises(ValueError, match="unknown scenario"):
        D.split_mnist(scenario="online", data=mnist)
    with pytest.raises(ValueError, match="one group only"):
        D.split_mnist(((0, 1), (1, 2)), data=mnist)
    with pytest.raises(ValueError, match="0..9"):
        D.split_mnist(((0, 10),), data=mnist)
    with pytest.raises(ValueError, match="equal size"):
        D.split_mnist(((0, 1), (2, 3, 4)), scenario="domain", data=mnist)
    with pytest.raises(ValueError, match="non-empty"):
        D.split_mnist((), data=mnist)
    with pytest.raises(ValueError, match="digit groups"):
        D.split_mnist(5, data=mnist)
    with pytest.raises(ValueError, match="not a device"):
        D.split_mnist(data=mnist, device="warp")
    with pytest.raises(ValueError, match="seed"):
        D.permuted_mnist(2, seed="a", data=mnist)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_permuted_needs_a_positive_task_count(mnist, n):
    with pytest.raises(ValueError, match="n_tasks"):
        D.permuted_mnist(n, data=mnist)


def test_task_checks_shapes_and_subsets(mnist):
    x, y = mnist.test_x[:10], mnist.test_y[:10]
    with pytest.raises(ValueError, match="N×D"):
        D.Task("t", x, y[:5], x, y)
    with pytest.raises(ValueError, match="empty"):
        D.Task("t", x[:0], y[:0], x, y)
    t = D.Task("t", mnist.train_x, mnist.train_y, mnist.test_x, mnist.test_y)
    s = t.subset(1000, 100, seed=3)
    assert len(s.train_y) == 1000 and len(s.test_y) == 100
    assert torch.equal(s.train_x, t.subset(1000, 100, seed=3).train_x)
    assert "train=1000" in repr(s)
