"""The listing's closing hint is a command that reads the same results as the listing did."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tuner.driver.browse_view import format_listing
from tuner.driver.experiments import Experiment


@pytest.mark.parametrize(
    ("given", "repeated"),
    [
        (None, None),  # the default storage path needs no flag
        ("s3://acc/ray", "s3://acc/ray"),
        ("/data/ray results", "/data/ray results"),  # quoted for the shell
    ],
)
def test_the_details_hint_repeats_the_storage_path_given(
    given: str | None, repeated: str | None
) -> None:
    listing = format_listing("somewhere", [Experiment("exp", Path("exp"), ())], given)
    words = shlex.split(listing.splitlines()[-1])
    assert words[:4] == ["details:", "python", "-m", "tuner.browse"]
    if repeated is None:
        assert "--storage-path" not in words
    else:
        assert words[4:6] == ["--storage-path", repeated]
    assert "--experiment" in words


def test_an_empty_listing_names_where_it_looked() -> None:
    assert format_listing("s3://acc/ray", []) == "no experiments in s3://acc/ray"
