"""Which environment variables may travel from this machine to other processes and clusters (job specs, sbatch
scripts, pod manifests, Ray runtime environments), which anyone who can read those may see."""

from __future__ import annotations

import re

# Names that hold secrets: srcluster never ships them, and refuses them where a user asks it to
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|SESSION_KEY|PRIVATE|CREDENTIAL|ACCESS_KEY_ID", re.IGNORECASE)
# Settings that name things on this machine (its srcluster home, AWS profile and credentials file): a cluster's nodes
# resolve their own, so launchers never ship these
LOCAL_ONLY = ("SRCLUSTER_HOME", "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE")
VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
