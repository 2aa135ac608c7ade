"""MNIST from IDX files into tensors, and the continual-learning task sequences built from it.

:func:`load_mnist` finds the four MNIST files (``.gz`` or uncompressed IDX), checks the md5 of their uncompressed
bytes, and returns the whole dataset as tensors, cached in memory for the life of the process.
:func:`permuted_mnist` and :func:`split_mnist` turn it into lists of :class:`Task` whose tensors already live on
the device, so that training loops only index them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .checks import nonnegative_int
from .devices import as_device

__all__ = [
    "MNIST",
    "Task",
    "MNISTNotFoundError",
    "MNISTFileError",
    "MNIST_FILES",
    "load_mnist",
    "read_idx",
    "permuted_mnist",
    "split_mnist",
    "SCENARIOS",
]

#: The four files, by their uncompressed names, with the md5 of their uncompressed bytes
#: (the official files; see ``../shared/data/mnist/README.md``).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_EXPECTED_SHAPES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}
#: Where a plain download looks, in order (the same mirror torchvision uses first).
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/")

SCENARIOS = ("task", "domain", "class")


class MNISTNotFoundError(FileNotFoundError):
    """None of the places searched holds the four MNIST files, and they could not be downloaded."""


class MNISTFileError(ValueError):
    """An MNIST file exists but is not what it should be (bad IDX header, wrong shape or md5)."""


# --------------------------------------------------------------------------------------------------- IDX files


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """The uncompressed content of ``path`` (gunzipped when the name ends in ``.gz``)."""
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            raise MNISTFileError(f"{path}: not a readable gzip file ({e}). Delete it and load again.") from e
    return path.read_bytes()


def _parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise MNISTFileError(
            f"{name}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; "
            "expected 0000 08 01 for labels or 0000 08 03 for images)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MNISTFileError(f"{name}: IDX header truncated ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise MNISTFileError(
            f"{name}: IDX header announces shape {shape} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike, md5: str | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or uncompressed) into a read-only numpy array.

    When ``md5`` is given, the md5 of the uncompressed bytes must equal it, else :class:`MNISTFileError`.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != md5:
            raise MNISTFileError(
                f"{path}: md5 of the uncompressed content is {got}, expected {md5}. The file is corrupt or not the "
                "official MNIST file; delete it (a fresh copy is downloaded on the next load) or point CL_DATA_DIR "
                "at good files."
            )
    return _parse_idx(raw, str(path))


# ----------------------------------------------------------------------------------------------- finding files


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The per-user cache where downloads go (``$XDG_CACHE_HOME/cl_utils/mnist``, default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cl_utils" / "mnist"


def _search_dirs(root: str | os.PathLike | None) -> list[tuple[str, Path]]:
    dirs: list[tuple[str, Path]] = []
    if root is not None:
        dirs.append(("root argument", Path(root).expanduser()))
    env = os.environ.get("CL_DATA_DIR")
    if env:
        dirs.append(("$CL_DATA_DIR", Path(env).expanduser()))
    dirs.append(("shared data beside the repository", _repo_root().parent / "shared" / "data" / "mnist"))
    dirs.append(("user cache", cache_dir()))
    return dirs


def _locate(directory: Path) -> dict[str, Path] | None:
    """The four files inside ``directory`` (also its torchvision layout ``MNIST/raw``), or None."""
    for base in (directory, directory / "MNIST" / "raw", directory / "raw"):
        found: dict[str, Path] = {}
        for name in MNIST_FILES:
            for candidate in (base / name, base / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


def _download(target: Path) -> None:
    """Download the four files into ``target``: torchvision when it imports, else plain HTTPS."""
    target.mkdir(parents=True, exist_ok=True)
    try:  # torchvision is optional and fails to import beside a CPU-only torch: import it lazily.
        from torchvision.datasets import MNIST as _TorchvisionMNIST  # noqa: N811
    except Exception:  # ImportError, or RuntimeError from a torch/torchvision mismatch
        _TorchvisionMNIST = None
    if _TorchvisionMNIST is not None:
        _TorchvisionMNIST(str(target), train=True, download=True)
        _TorchvisionMNIST(str(target), train=False, download=True)
        return
    for name in MNIST_FILES:
        dest = target / f"{name}.gz"
        if dest.is_file():
            continue
        errors = []
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name + ".gz", timeout=30) as r, tempfile.NamedTemporaryFile(
                    dir=target, delete=False
                ) as tmp:
                    shutil.copyfileobj(r, tmp)
                os.replace(tmp.name, dest)
                break
            except OSError as e:
                errors.append(f"{mirror}: {e}")
        else:
            raise OSError("; ".join(errors))


# ------------------------------------------------------------------------------------------------------ MNIST


@dataclass(frozen=True, repr=False)
class MNIST:
    """The whole MNIST dataset as tensors: images float32 in [0, 1] of shape N×784, labels int64."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    source: str

    def __repr__(self) -> str:
        return f"MNIST(train={len(self.train_y)}, test={len(self.test_y)}, source={self.source!r})"


_MEMORY: dict[Path, MNIST] = {}


def load_mnist(root: str | os.PathLike | None = None, *, download: bool = True) -> MNIST:
    """Load MNIST (60,000 training and 10,000 test digits) as tensors on the CPU.

    Looks in ``root``, then ``$CL_DATA_DIR``, then ``../shared/data/mnist`` beside the repository, then the user
    cache; the first directory holding all four files wins (``.gz`` or uncompressed; the md5 of the uncompressed
    bytes is checked). When none does and ``download`` is true, the files are downloaded into the user cache.
    The result is cached in memory, so later calls return at once.

    Raises:
        MNISTNotFoundError: no directory holds the files and they could not be downloaded.
        MNISTFileError: a file is corrupt (bad IDX header, shape or md5).
    """
    searched = _search_dirs(root)
    if root is not None and not Path(root).expanduser().is_dir():
        raise MNISTNotFoundError(f"root={str(root)!r} is not a directory")
    for _, directory in searched:
        files = _locate(directory)
        if files is not None:
            return _load_files(directory, files)
    download_error = None
    if download:
        target = cache_dir()
        try:
            _download(target)
        except Exception as e:  # no network, a mirror down, a read-only home...
            download_error = e
        else:
            files = _locate(target)
            if files is not None:
                return _load_files(target, files)
            download_error = RuntimeError(f"download finished but {target} does not hold the four files")
    lines = [f"  - {what}: {path}" for what, path in searched]
    names = ", ".join(f"{n}[.gz]" for n in MNIST_FILES)
    msg = (
        "MNIST not found. Looked for the four files (" + names + ") in:\n" + "\n".join(lines) + "\n"
        + (f"Download into {cache_dir()} failed: {download_error}\n" if download else "download=False, so nothing was downloaded.\n")
        + "Fix: copy the four files into one of these directories, or set CL_DATA_DIR=/path/to/mnist, "
        "or pass load_mnist(root=...), or allow the download on a machine with internet."
    )
    raise MNISTNotFoundError(msg)


def _load_files(directory: Path, files: dict[str, Path]) -> MNIST:
    key = directory.resolve()
    if key in _MEMORY:
        return _MEMORY[key]
    arrays = {}
    for name, path in files.items():
        arr = read_idx(path, md5=MNIST_FILES[name])
        if arr.shape != _EXPECTED_SHAPES[name]:
            raise MNISTFileError(f"{path}: shape {arr.shape}, expected {_EXPECTED_SHAPES[name]}")
        arrays[name] = arr

    def images(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.reshape(len(a), -1).astype(np.float32)).div_(255.0)

    def labels(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    data = MNIST(
        train_x=images(arrays["train-images-idx3-ubyte"]),
        train_y=labels(arrays["train-labels-idx1-ubyte"]),
        test_x=images(arrays["t10k-images-idx3-ubyte"]),
        test_y=labels(arrays["t10k-labels-idx1-ubyte"]),
        source=str(key),
    )
    _MEMORY[key] = data
    return data


# ------------------------------------------------------------------------------------------------------- tasks


@dataclass(repr=False)
class Task:
    """One task of a continual-learning sequence: its data already on the device.

    ``head`` is the output head the task uses in the task-incremental scenario (None: a single shared head);
    ``n_outputs`` is how many output units (per head) its labels need. ``info`` holds what made the task (its
    permutation, its digits...).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    n_outputs: int = 10
    head: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(
                    f"task {self.name!r}: {split}_x must be N×D and {split}_y of length N, "
                    f"got {tuple(x.shape)} and {tuple(y.shape)}"
                )
            if len(y) == 0:
                raise ValueError(f"task {self.name!r}: the {split} split is empty")

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> Task:
        """The same task with its tensors on ``device``."""
        return Task(
            self.name, self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
            self.test_y.to(device), self.n_outputs, self.head, dict(self.info),
        )

    def subset(self, n_train: int | None = None, n_test: int | None = None, *, seed: int = 0) -> Task:
        """A random subset of the training and/or test split (fixed by ``seed``), e.g. for fast mode."""

        def take(x: Tensor, y: Tensor, n: int | None) -> tuple[Tensor, Tensor]:
            if n is None or n >= len(y):
                return x, y
            if n < 1:
                raise ValueError(f"subset sizes must be >= 1, got {n}")
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(y), generator=g)[:n].to(y.device)
            return x[idx], y[idx]

        tx, ty = take(self.train_x, self.train_y, n_train)
        vx, vy = take(self.test_x, self.test_y, n_test)
        return Task(self.name, tx, ty, vx, vy, self.n_outputs, self.head, dict(self.info))

    def __repr__(self) -> str:
        head = "" if self.head is None else f", head={self.head}"
        return (
            f"Task({self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"n_outputs={self.n_outputs}{head}, device={self.device})"
        )


def _resolve(data: MNIST | None, device: torch.device | str | None) -> tuple[MNIST, torch.device]:
    if data is None:
        data = load_mnist()
    return data, as_device(device)


def permuted_mnist(
    n_tasks: int,
    *,
    seed: int = 0,
    data: MNIST | None = None,
    device: torch.device | str | None = None,
    identity_first: bool = True,
) -> list[Task]:
    """``n_tasks`` tasks, each MNIST with its pixels shuffled by one fixed permutation.

    Task 0 keeps the original pixel order when ``identity_first`` (the usual choice); the other permutations are
    drawn from ``seed``, so the same seed gives the same tasks everywhere. All ten classes in every task, one head.
    """
    if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks < 1:
        raise ValueError(f"n_tasks must be an integer >= 1, got {n_tasks!r}")
    nonnegative_int("seed", seed)
    data, device = _resolve(data, device)
    g = torch.Generator().manual_seed(seed)
    d = data.train_x.shape[1]
    train_x, test_x = data.train_x.to(device), data.test_x.to(device)
    train_y, test_y = data.train_y.to(device), data.test_y.to(device)
    tasks = []
    for t in range(n_tasks):
        perm = torch.randperm(d, generator=g)  # drawn for every t, so task t is the same whatever identity_first
        if t == 0 and identity_first:
            perm = torch.arange(d)
        p = perm.to(device)
        tasks.append(
            Task(f"permuted-{t}", train_x[:, p], train_y, test_x[:, p], test_y, n_outputs=10,
                 info={"permutation": perm, "seed": seed})
        )
    return tasks


def split_mnist(
    pairs: Sequence[Sequence[int]] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
    *,
    scenario: str = "task",
    data: MNIST | None = None,
    device: torch.device | str | None = None,
) -> list[Task]:
    """MNIST split into tasks by digit, for the three scenarios of van de Ven & Tolias / Hsu et al. (2018).

    - ``"task"`` (task-incremental): task ``t`` has its own head ``t``; labels are positions within the group
      (0 for the first digit of a pair, 1 for the second).
    - ``"domain"`` (domain-incremental): one shared head, the same within-group labels, no task identity.
    - ``"class"`` (class-incremental): one shared head over all digits; labels are the digits themselves.

    ``pairs`` may hold groups of any size ≥ 1 (equal sizes for ``"domain"``); digits must be 0–9 and distinct.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {SCENARIOS}")
    groups = [tuple(int(d) for d in g) for g in _as_groups(pairs)]
    flat = [d for g in groups for d in g]
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError(f"pairs must be a non-empty list of non-empty digit groups, got {pairs!r}")
    if any(not 0 <= d <= 9 for d in flat):
        raise ValueError(f"digits must lie in 0..9, got {pairs!r}")
    if len(set(flat)) != len(flat):
        raise ValueError(f"each digit may appear in one group only, got {pairs!r}")
    if scenario == "domain" and len({len(g) for g in groups}) != 1:
        raise ValueError(f"the domain scenario needs groups of equal size, got {pairs!r}")
    data, device = _resolve(data, device)
    width = max(len(g) for g in groups)
    tasks = []
    for t, group in enumerate(groups):
        split = {}
        for name, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
            digits = torch.tensor(group)
            keep = torch.isin(y, digits)
            xs, ys = x[keep], y[keep]
            if scenario != "class":  # position of each label within its group
                ys = (ys.unsqueeze(1) == digits.unsqueeze(0)).int().argmax(1)
            split[name] = (xs.to(device), ys.to(device))
        tasks.append(
            Task(
                f"{scenario}-" + "/".join(map(str, group)),
                *split["train"], *split["test"],
                n_outputs=10 if scenario == "class" else width,
                head=t if scenario == "task" else None,
                info={"digits": group, "scenario": scenario},
            )
        )
    return tasks


def _as_groups(pairs: Iterable[Any]) -> list[Sequence[int]]:
    try:
        return [list(g) for g in pairs]
    except TypeError:
        raise ValueError(f"pairs must be a sequence of digit groups such as ((0, 1), (2, 3)), got {pairs!r}") from None
