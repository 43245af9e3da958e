"""Checkpoints on the local S3 (SeaweedFS): each rank reads its files whole from storage, never through Ray's shared
download folder."""

import torch


def test_checkpoint_files_are_read_whole_from_storage_by_each_rank(stack, tmp_path):
    """Resume reads state.pt through the checkpoint's own filesystem into memory. Ray's `as_directory()` shares one
    download folder per node, and a rank taking its lock after another rank's download downloads again over the files
    that rank is still reading: a torn state.pt, seen on resume with 2 ranks on one node."""
    import io
    import os

    from ray.train import Checkpoint

    from srcluster.storage import StorageSettings
    from srcluster.train.state import GENERATOR_FILE, STATE_FILE, checkpoint_file, load_state_file

    state = {"iteration": 7, "w": torch.arange(50_000, dtype=torch.float32)}
    raw = io.BytesIO()
    torch.save(state, raw)
    fs = StorageSettings.resolve().pyarrow_filesystem()
    folder = "srcluster/parts/checkpoint_0000007"
    for name, data in ((STATE_FILE, raw.getvalue()), (GENERATOR_FILE, b"weights")):
        with fs.open_output_stream(f"{folder}/{name}") as out:
            out.write(data)
    local = tmp_path / "checkpoint_0000007"
    local.mkdir()
    (local / STATE_FILE).write_bytes(raw.getvalue())

    remote = Checkpoint(path=folder, filesystem=fs)
    for checkpoint in (remote, Checkpoint.from_directory(str(local))):
        loaded = load_state_file(checkpoint, torch.device("cpu"))
        assert loaded["iteration"] == 7 and torch.equal(loaded["w"], state["w"])
    assert checkpoint_file(remote, GENERATOR_FILE) == b"weights"
    assert not os.path.exists(remote._get_temporary_checkpoint_dir())  # no shared download folder was made
