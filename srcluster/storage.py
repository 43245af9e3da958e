"""The one place that knows how to reach object storage.

Everything that touches S3 (shard writer and reader, Ray Train's checkpoint storage, the MLflow server, boto3 checks)
asks this module for its settings, so an endpoint or a credential is configured once and used the same way everywhere.

Resolution order
    endpoint     explicit argument (job config) > AWS_ENDPOINT_URL_S3 > AWS_ENDPOINT_URL > the local stack's S3 server
                 (if `srcluster stack up` is running) > AWS's default endpoint
    credentials  AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY > a named profile (argument or AWS_PROFILE) in the shared
                 credentials file > the local stack's `$SRCLUSTER_HOME/credentials` when the endpoint is the local
                 stack > botocore's default chain (instance roles, SSO, ...)

Secrets are held only in memory: `repr`, `describe()` and `public_env()` never contain them. Other processes (Ray
workers, submitted jobs) get `public_env()` and resolve the secret themselves from their own environment or files.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from srcluster import home
from srcluster.errors import StorageError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

DEFAULT_REGION = "us-east-1"


def mask(secret: str | None) -> str:
    """Show just enough of a key to tell two apart in an error message."""
    if not secret:
        return "<none>"
    return secret[:4] + "…" if len(secret) > 8 else "…"


def is_s3(url: str) -> bool:
    return url.startswith(("s3://", "s3a://"))


def split_s3(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    parsed = urlparse(url)
    if not parsed.netloc:
        raise StorageError(f"{url!r} names no bucket: expected s3://BUCKET/PREFIX")
    return parsed.netloc, parsed.path.lstrip("/")


def local_stack_endpoint() -> str | None:
    """The S3 URL of the local stack, when `srcluster stack up` has recorded one."""
    try:
        state = json.loads(home.stack_state_path().read_text())
    except (OSError, ValueError):
        return None
    return (state.get("s3") or {}).get("url")


def read_profile(path: Path, profile: str) -> tuple[str, str] | None:
    parser = configparser.ConfigParser()
    try:
        if not parser.read(path):
            return None
    except configparser.Error as exc:
        raise StorageError(f"cannot parse credentials file {path}: {exc.__class__.__name__}") from None
    if not parser.has_section(profile):
        return None
    section = parser[profile]
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key or not secret:
        raise StorageError(f"profile [{profile}] in {path} lacks aws_access_key_id or aws_secret_access_key")
    return key, secret


@dataclass(frozen=True)
class StorageSettings:
    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    profile: str | None = None
    credentials_file: str | None = None
    credential_source: str = "botocore default chain"
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, endpoint_url: str | None = None, profile: str | None = None) -> StorageSettings:
        env = os.environ
        stack_endpoint = local_stack_endpoint()
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or stack_endpoint
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        profile = profile or env.get("AWS_PROFILE")
        shared_file = env.get("AWS_SHARED_CREDENTIALS_FILE")
        common = cls(endpoint_url=endpoint, region=region, profile=profile, credentials_file=shared_file)

        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            return replace(
                common,
                credential_source="environment (AWS_ACCESS_KEY_ID)",
                access_key=env["AWS_ACCESS_KEY_ID"],
                secret_key=env["AWS_SECRET_ACCESS_KEY"],
            )
        if profile:
            candidates = [Path(shared_file or Path.home() / ".aws" / "credentials")]
            if profile == home.LOCAL_PROFILE:
                candidates.append(home.credentials_path())
            for path in candidates:
                found = read_profile(path, profile)
                if found:
                    # remember the file: botocore reads AWS_PROFILE itself and must find the profile there too
                    return replace(
                        common,
                        credentials_file=str(path),
                        credential_source=f"profile [{profile}] in {path}",
                        access_key=found[0],
                        secret_key=found[1],
                    )
            raise StorageError(f"AWS profile [{profile}] not found in {', '.join(map(str, candidates))}")
        if endpoint and endpoint == stack_endpoint:
            found = read_profile(home.credentials_path(), home.LOCAL_PROFILE)
            if found:
                return replace(
                    common,
                    credential_source=f"local stack ({home.credentials_path()})",
                    access_key=found[0],
                    secret_key=found[1],
                )
        return common

    # --- what each client needs -----------------------------------------------------------------------------------

    def botocore_config(self, connect_timeout: float = 10, read_timeout: float = 60, attempts: int = 8) -> dict:
        return {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"max_attempts": attempts, "mode": "standard"},
        }

    def s3fs_kwargs(self, **config: Any) -> dict:
        kwargs: dict[str, Any] = {
            "client_kwargs": {"region_name": self.region},
            "config_kwargs": self.botocore_config(**config),
        }
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.access_key:
            kwargs["key"], kwargs["secret"] = self.access_key, self.secret_key
        elif self.profile:
            kwargs["profile"] = self.profile
        if self.credentials_file:
            from aiobotocore.session import AioSession  # ~0.9 s: only where s3fs needs a session of its own

            session = AioSession()
            session.set_config_variable("credentials_file", self.credentials_file)
            kwargs["session"] = session
        return kwargs

    def filesystem(self, url: str, **config: Any) -> tuple[AbstractFileSystem, str]:
        """(fsspec filesystem, path inside it) for any URL: s3://, file://, a plain local path, memory://, ..."""
        # the job loader and the launchers import this module: the S3 client libraries (0.2-0.9 s each) load only
        # where a client is made
        import fsspec

        if is_s3(url):
            import s3fs

            # fsspec caches instances per process id, so a filesystem made before a fork is never reused after it.
            return s3fs.S3FileSystem(**self.s3fs_kwargs(**config)), url.split("://", 1)[1]
        fs, path = fsspec.core.url_to_fs(url)
        return fs, path

    def boto3_client(self, **config: Any):
        # boto3 (~0.4 s) loads only where a client is made: the job loader and the launchers import this module
        import botocore.session
        from boto3.session import Session
        from botocore.config import Config

        core = botocore.session.Session()
        if self.credentials_file:
            core.set_config_variable("credentials_file", self.credentials_file)
        session = Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            profile_name=None if self.access_key else self.profile,
            botocore_session=core,
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=Config(**self.botocore_config(**config)))

    def pyarrow_filesystem(self):
        from pyarrow import fs as pafs  # ~0.4 s, only for Ray Train's checkpoint storage

        kwargs: dict[str, Any] = {"region": self.region}
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            kwargs["endpoint_override"] = parsed.netloc or self.endpoint_url
            kwargs["scheme"] = parsed.scheme or "https"
        if self.access_key:
            kwargs["access_key"], kwargs["secret_key"] = self.access_key, self.secret_key
        return pafs.S3FileSystem(**kwargs)

    def ray_storage(self, url: str) -> tuple[str, Any]:
        """(storage_path, storage_filesystem) for Ray Train's RunConfig."""
        if is_s3(url):
            bucket, prefix = split_s3(url)
            return f"{bucket}/{prefix}".rstrip("/"), self.pyarrow_filesystem()
        return str(Path(url.removeprefix("file://")).expanduser().resolve()), None

    # --- environments for other processes ---------------------------------------------------------------------------

    def public_env(self) -> dict[str, str]:
        """Settings another process needs to resolve the same storage, with no secret in them."""
        env = {"AWS_REGION": self.region, "SRCLUSTER_HOME": str(home.home())}
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
            env["MLFLOW_S3_ENDPOINT_URL"] = self.endpoint_url
        if self.profile:
            env["AWS_PROFILE"] = self.profile
        if self.credentials_file:
            env["AWS_SHARED_CREDENTIALS_FILE"] = self.credentials_file
        return env

    def secret_env(self) -> dict[str, str]:
        """public_env plus the keys: only for a child process we start ourselves (the MLflow server)."""
        env = self.public_env()
        if self.access_key and self.secret_key:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = self.access_key, self.secret_key
        return env

    def describe(self) -> str:
        return (
            f"endpoint {self.endpoint_url or 'AWS default'}, region {self.region}, "
            f"credentials from {self.credential_source} (key {mask(self.access_key)})"
        )

    # --- checks -------------------------------------------------------------------------------------------------------

    def check(self, url: str, *, create_bucket: bool = False) -> None:
        """Fail fast, with one line that says what to do, when `url` cannot be used."""
        if not is_s3(url):
            path = Path(url.removeprefix("file://")).expanduser()
            parent = next((p for p in [path, *path.parents] if p.exists()), None)
            if parent is None or not os.access(parent, os.W_OK | os.R_OK):
                raise StorageError(f"local path {path} is not readable and writable")
            return
        bucket, _ = split_s3(url)
        endpoint = self.endpoint_url or "AWS S3"
        client = self.boto3_client(connect_timeout=3, read_timeout=10, attempts=2)
        try:
            client.head_bucket(Bucket=bucket)
        except NoCredentialsError:
            # no endpoint and no credentials at all: most often a new user who has not started the local stack yet
            stack_hint = "" if self.endpoint_url else ", or start the local stack with `srcluster stack up`"
            raise StorageError(
                f"no S3 credentials for {url} at {endpoint}: set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE{stack_hint}"
            ) from None
        except EndpointConnectionError:
            hint = " (start it with `srcluster stack up`)" if self.endpoint_url == local_stack_endpoint() else ""
            raise StorageError(f"cannot reach S3 endpoint {endpoint} for {url}{hint}") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                if create_bucket:
                    client.create_bucket(Bucket=bucket)
                    return
                raise StorageError(
                    f"bucket '{bucket}' does not exist at {endpoint} (for {url}); create it first"
                ) from None
            if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden"):
                raise StorageError(
                    f"S3 at {endpoint} rejected the credentials for bucket '{bucket}' "
                    f"(key {mask(self.access_key)} from {self.credential_source})"
                ) from None
            raise StorageError(f"S3 at {endpoint} answered {code} for bucket '{bucket}'") from None
        except BotoCoreError as exc:
            raise StorageError(f"S3 request to {endpoint} for {url} failed: {exc.__class__.__name__}") from None


def redact_url(url: str) -> str:
    """Hide the password of `scheme://user:password@host` URLs."""
    return re.sub(r"(://[^/:@]+):[^/@]+@", r"\1:***@", url)
