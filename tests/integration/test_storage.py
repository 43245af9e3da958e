"""StorageSettings: where endpoint and keys come from, that secrets stay out of sight, and check()'s messages
against the session's real S3 server."""

from __future__ import annotations

import json
import uuid

import pytest

from helpers.free_ports import free_port_block
from srcluster import home
from srcluster.errors import StorageError
from srcluster.storage import StorageSettings

STACK_URL = "http://127.0.0.1:1"
SECRET = "sEcReT-" + "x" * 33


@pytest.fixture
def fake_stack(tmp_path, monkeypatch):
    """A $SRCLUSTER_HOME whose stack.json and credentials name a local stack (nothing needs to run)."""
    monkeypatch.setenv("SRCLUSTER_HOME", str(tmp_path / "home"))
    home.home().mkdir()
    home.stack_state_path().write_text(json.dumps({"s3": {"url": STACK_URL}}))
    home.credentials_path().write_text(
        "[srcluster]\naws_access_key_id = STACKKEY\naws_secret_access_key = stacksecret\n"
    )
    shared = tmp_path / "aws-credentials"
    shared.write_text("[other]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = profilesecret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    return monkeypatch


def test_credentials_env_beats_profile_beats_local_stack(fake_stack):
    settings = StorageSettings.resolve()
    assert (settings.endpoint_url, settings.access_key) == (STACK_URL, "STACKKEY")
    assert settings.credential_source.startswith("local stack")

    fake_stack.setenv("AWS_PROFILE", "other")
    assert StorageSettings.resolve().access_key == "PROFILEKEY"
    assert StorageSettings.resolve(profile="srcluster").access_key == "STACKKEY"  # explicit profile beats AWS_PROFILE

    fake_stack.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    fake_stack.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    settings = StorageSettings.resolve()
    assert settings.access_key == "ENVKEY" and settings.credential_source.startswith("environment")


def test_unknown_profile_is_an_error(fake_stack):
    fake_stack.setenv("AWS_PROFILE", "nope")
    with pytest.raises(StorageError, match=r"profile \[nope\] not found"):
        StorageSettings.resolve()


def test_endpoint_explicit_beats_env_beats_local_stack(fake_stack):
    fake_stack.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    settings = StorageSettings.resolve()
    assert settings.endpoint_url == "http://generic:1"
    assert settings.access_key is None  # the local stack's keys are only for the local stack's endpoint
    fake_stack.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:1")
    assert StorageSettings.resolve().endpoint_url == "http://s3-specific:1"
    assert StorageSettings.resolve(endpoint_url="http://explicit:1").endpoint_url == "http://explicit:1"


def test_no_stack_no_env_means_aws_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("SRCLUSTER_HOME", str(tmp_path / "empty"))
    settings = StorageSettings.resolve()
    assert settings.endpoint_url is None and settings.access_key is None
    assert settings.credential_source == "botocore default chain"


def test_secret_never_shown(fake_stack):
    fake_stack.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123456")
    fake_stack.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    settings = StorageSettings.resolve()
    assert settings.secret_key == SECRET
    for shown in (repr(settings), str(settings), settings.describe(), repr(settings.public_env())):
        assert SECRET not in shown and SECRET[:8] not in shown
    assert settings.secret_env()["AWS_SECRET_ACCESS_KEY"] == SECRET  # only for children we start ourselves


# --- check() against the running S3 server ----------------------------------------------------------------------------


def test_check_passes_for_existing_bucket_and_local_path(s3, tmp_path):
    StorageSettings.resolve().check("s3://srcluster/some/prefix")
    StorageSettings.resolve().check(str(tmp_path / "not-yet" / "there"))


def test_check_unreachable_endpoint(s3):
    closed = free_port_block(1)  # nothing listens there
    settings = StorageSettings(endpoint_url=f"http://127.0.0.1:{closed}", access_key="k", secret_key=SECRET)
    with pytest.raises(StorageError, match=rf"cannot reach S3 endpoint http://127.0.0.1:{closed}") as info:
        settings.check("s3://srcluster/x")
    assert SECRET not in str(info.value)


def test_check_wrong_credentials(s3):
    real = StorageSettings.resolve()
    for key, secret in [(real.access_key, SECRET), ("NOSUCHKEY00000000000", SECRET)]:
        wrong = StorageSettings(endpoint_url=s3.s3_url, access_key=key, secret_key=secret)
        with pytest.raises(StorageError, match="rejected the credentials for bucket 'srcluster'") as info:
            wrong.check("s3://srcluster/x")
        assert SECRET not in str(info.value) and real.secret_key not in str(info.value)


def test_check_missing_bucket(s3):
    bucket = f"no-such-{uuid.uuid4().hex[:12]}"
    settings = StorageSettings.resolve()
    with pytest.raises(StorageError, match=rf"bucket '{bucket}' does not exist at {s3.s3_url}"):
        settings.check(f"s3://{bucket}/x")
    settings.check(f"s3://{bucket}/x", create_bucket=True)
    settings.check(f"s3://{bucket}/x")
