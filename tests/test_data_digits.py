"""The digits test split shipped with the package is scikit-learn's, split as load_digits splits it."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress import data


def test_packaged_digits_test_split_equals_scikit_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn")
    packaged = data.load_digits("test")
    assert data.DIGITS_TEST_NPZ.stat().st_size < 100_000
    monkeypatch.setattr(data, "DIGITS_TEST_NPZ", data.DIGITS_TEST_NPZ.with_name("absent.npz"))
    computed = data.load_digits("test")  # from scikit-learn
    assert packaged.x.dtype == computed.x.dtype == np.float32 and packaged.y.dtype == computed.y.dtype == np.int64
    np.testing.assert_array_equal(packaged.x, computed.x)
    np.testing.assert_array_equal(packaged.y, computed.y)
    assert packaged.name == computed.name == "digits:test" and len(packaged) == 360
