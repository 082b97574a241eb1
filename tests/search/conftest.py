"""Fixtures for search tests: the hand-made table (see tables.py)."""

from __future__ import annotations

import pytest
from tests.search.tables import HAND, HAND_CUTS, make_tables


@pytest.fixture
def hand():
    return make_tables(HAND, HAND_CUTS)
