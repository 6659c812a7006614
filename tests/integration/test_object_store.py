"""The object-store seam against a real S3 server on loopback: settings from the environment,
no credentials in anything pickled, objects read back, and a preflight that names the URI."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

from checkpointing import object_store
from checkpointing.errors import ConfigError, ObjectStoreError
from checkpointing.locations import StoreURI
from checkpointing.object_store import ObjectStore, S3Settings
from tests.s3 import S3Server, closed_port

URI = StoreURI("s3", "acc", "models")


def test_the_endpoint_comes_from_the_service_variable_first() -> None:
    both = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000/", "AWS_ENDPOINT_URL": "http://x:1"}
    settings = S3Settings.from_environment(both)
    assert settings.endpoint == "http://127.0.0.1:9000"
    assert settings.endpoint_source == "AWS_ENDPOINT_URL_S3"
    assert S3Settings.from_environment({"AWS_ENDPOINT_URL": "https://s3.example:8443"}).endpoint
    assert S3Settings.from_environment({}).endpoint is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1:9000", "must be an http:// or https:// URL"),
        ("ftp://host", "must be an http:// or https:// URL"),
        ("http://user:pw-secret@127.0.0.1:9000", "has a user or password in it"),
    ],
)
def test_a_bad_endpoint_is_refused_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL_S3") as caught:
        S3Settings.from_environment({"AWS_ENDPOINT_URL_S3": value})
    assert message in str(caught.value)
    assert "pw-secret" not in str(caught.value)


def test_the_file_system_works_with_credentials_it_never_holds(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "canary-" + hashlib.sha256(b"seam").hexdigest()[:24]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    s3.create_bucket("acc")
    store = ObjectStore(URI)
    store.preflight()  # the keys of the environment were used
    pickled = pickle.dumps(store.settings.filesystem())  # what Ray Tune would store
    assert canary.encode() not in pickled
    assert b"AKIATESTS3SERVER" not in pickled
    assert s3.endpoint.encode() in pickled  # the endpoint is passed: pyarrow ignores the env
    assert canary not in repr(store.settings)


def test_put_reads_back_the_bytes_and_delete_is_idempotent(s3: S3Server, tmp_path: Path) -> None:
    s3.create_bucket("acc")
    store = ObjectStore(URI)
    local = tmp_path / "x.zip"
    local.write_bytes(b"\x00zip bytes" * 1000)
    sent = store.put(local, "phase1/NQ/checkpoints/x.zip")
    assert sent == (10000, hashlib.sha256(local.read_bytes()).hexdigest())
    assert store.compare("phase1/NQ/checkpoints/x.zip", local) == (10000, None)
    assert s3.read("acc", "models/phase1/NQ/checkpoints/x.zip") == local.read_bytes()
    assert store.sizes("phase1/NQ/checkpoints") == {"x.zip": 10000}
    assert store.sizes("phase9") == {}
    assert store.delete("phase1/NQ/checkpoints/x.zip") is True
    assert store.sizes("phase1/NQ/checkpoints") == {}
    with pytest.raises(FileNotFoundError):
        store.compare("phase1/NQ/checkpoints/x.zip", local)


@pytest.mark.parametrize(("piece", "read"), [(7, 1000), (8 << 20, 64 << 20)])
def test_compare_finds_the_first_byte_the_object_and_the_file_disagree_on(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int, read: int
) -> None:
    # Small pieces of the file and small reads of the object (each a ranged GET): the
    # boundaries of both fall inside the data.
    monkeypatch.setattr(object_store, "_COMPARE", piece)
    monkeypatch.setattr(object_store, "_READ", read)
    s3.create_bucket("acc")
    store = ObjectStore(URI)
    data = bytes(range(256)) * 40
    local = tmp_path / "x.zip"
    local.write_bytes(data)
    store.put(local, "x.zip")
    assert store.compare("x.zip", local) == (len(data), None)
    flipped = bytearray(data)
    flipped[5001] ^= 0x10
    local.write_bytes(flipped)
    assert store.compare("x.zip", local) == (len(data), 5001)
    local.write_bytes(data[:6000])  # the object goes on past the file
    assert store.compare("x.zip", local) == (len(data), 6000)
    local.write_bytes(data + b"more")  # the file goes on past the object
    assert store.compare("x.zip", local) == (len(data), len(data))
    with pytest.raises(FileNotFoundError):
        store.compare("y.zip", local)


def test_preflight_leaves_no_object_behind(s3: S3Server) -> None:
    s3.create_bucket("acc")
    s3.client().put_object(Bucket="acc", Key="models/keep.txt", Body=b"x")
    ObjectStore(URI).preflight()
    assert any(r.key.startswith("models/.preflight-") for r in s3.requests if r.method == "DELETE")
    # pyarrow marks the folder of a deleted file with an empty "models/" object; no file stays
    assert [k for k in s3.keys("acc") if not k.endswith("/")] == ["models/keep.txt"]


def test_preflight_names_a_missing_bucket(s3: S3Server) -> None:
    with pytest.raises(ObjectStoreError) as caught:
        ObjectStore(URI).preflight()
    assert str(caught.value).startswith("s3://acc/models: bucket 'acc' does not exist")


def test_preflight_names_an_endpoint_that_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    with pytest.raises(ObjectStoreError) as caught:
        ObjectStore(URI).preflight()
    message = str(caught.value)
    assert message.startswith("s3://acc/models: cannot reach endpoint http://127.0.0.1:")
    assert f":{port} (from AWS_ENDPOINT_URL_S3)" in message


def test_preflight_names_credentials_that_are_denied(s3: S3Server) -> None:
    s3.create_bucket("acc")
    with s3.denying_credentials(), pytest.raises(ObjectStoreError) as caught:
        ObjectStore(URI).preflight()
    assert str(caught.value).startswith("s3://acc/models: the credentials are denied")
