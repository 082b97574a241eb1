"""fashion-cnn: IDX parsing, the apt hint when the Debian data set is missing, and the real task when cached."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from mpsearch.errors import MpsearchError
from mpsearch.tasks import fashion
from mpsearch.tasks.fashion import APT_HINT, DATA_DIR


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_read_idx_exact(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(fashion.read_idx(tmp_path / "x.gz"), arr)


def test_missing_data_names_the_apt_package(tmp_path):
    with pytest.raises(MpsearchError, match="apt-get install dataset-fashion-mnist"):
        fashion.load_fashion_mnist(tmp_path)


def test_missing_data_through_the_task_factory(tmp_path):
    with pytest.raises(MpsearchError, match="dataset-fashion-mnist"):
        fashion.fashion_cnn(data_dir=tmp_path)


@pytest.mark.parametrize(
    "payload, match",
    [(b"not gzip at all", "cannot read"), (gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00"), "unsigned-byte IDX"),
     (gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02"), "truncated")],
)
def test_corrupt_idx_is_one_line_error(tmp_path, payload, match):
    p = tmp_path / "bad.gz"
    p.write_bytes(payload)
    with pytest.raises(MpsearchError, match=match) as e:
        fashion.read_idx(p)
    assert "\n" not in str(e.value) and APT_HINT in str(e.value)


def test_tiny_fake_layout_loads(tmp_path):
    """A well-formed directory in the Debian layout loads with the documented shapes and scaling."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        img, lbl = fashion._FILES[split]
        _write_idx(tmp_path / img, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / lbl, rng.integers(0, 10, (n,)))
    data = fashion.load_fashion_mnist(tmp_path)
    x, y = data["train"]
    assert x.shape == (6, 1, 28, 28) and y.shape == (6,)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    raw = fashion.read_idx(tmp_path / fashion._FILES["train"][0])
    np.testing.assert_allclose(x[:, 0].numpy(), raw / 255.0, rtol=0, atol=1e-7)


@pytest.mark.skipif(not (DATA_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="Debian package dataset-fashion-mnist is not installed")
def test_real_dataset_shapes():
    data = fashion.load_fashion_mnist()
    assert data["train"][0].shape == (60000, 1, 28, 28)
    assert data["test"][0].shape == (10000, 1, 28, 28)
    assert sorted(set(data["test"][1].tolist())) == list(range(10))


@pytest.mark.skipif(
    not (DATA_DIR / "train-images-idx3-ubyte.gz").is_file() or not fashion.fashion_weights_cached(),
    reason="needs dataset-fashion-mnist and cached weights (train once: python -c \"from mpsearch.task import load_task; load_task('fashion-cnn')\")",
)
def test_cached_task_is_accurate():
    task = fashion.fashion_cnn(test_size=2000).validate()
    assert task.metadata["train_size"] == 55000 and task.metadata["calib_size"] == 5000
    assert sum(len(b[0]) for b in task.calib_batches) == 5000
    assert task.evaluate(task.model) > 0.85  # 91% on the full 10k test set after 2 epochs
