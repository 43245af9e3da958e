"""HiT-SIR, as traiNNer-redux builds it (`hit_sir`): HiT-SR with a plain MLP after each block's spatial-channel
correlation. The network is in `hit_common.py`; module names are redux's, so its state dicts load strictly."""

from __future__ import annotations

from srcluster.components.handwritten.hit_common import ReduxHiT


class HiTSIR(ReduxHiT):
    """HiT-SIR with redux's `hit_sir` options and defaults (`ReduxHiT`)."""

    VARIANT = "sir"


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {"hit_sir": ("HiTSIR", {})}
