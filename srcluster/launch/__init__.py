"""Launching a job file on clusters users already have: Ray's Job Submission API (`srcluster submit`, `srcluster jobs`),
Slurm (`srcluster render slurm`) and Kubernetes with KubeRay (`srcluster render k8s`).

Every path validates the job file on the user's machine first and ships only endpoints to the cluster; credentials
come from the cluster's own environment (or a Kubernetes Secret), never from the file we send or render.
"""
