"""Ray helpers: one place that starts or joins Ray, with the dashboard kept on loopback and
errors that say how to fix a failed ``--address``."""

from __future__ import annotations

import os
from typing import Any

AUTH_HINT = ("the cluster uses token authentication (Ray 2.60's default for `ray start --head`): "
             "export RAY_AUTH_MODE=token and the head's token as RAY_AUTH_TOKEN (or the file "
             "~/.ray/auth_token / RAY_AUTH_TOKEN_PATH) before joining")


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
             quiet: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Start a local Ray (no ``address``) or join a running cluster (``address="HOST:PORT"`` or "auto").

    Reuses a Ray session that is already initialised in this process. A local Ray starts with
    no dashboard; a dashboard, if one is started, is bound to 127.0.0.1. Returns the cluster's
    resources. A failed join raises ``ConnectionError`` with one line that names the fix.
    """
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    common: dict[str, Any] = {"log_to_driver": not quiet, "configure_logging": True,
                              "logging_level": "ERROR" if quiet else "INFO"}
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    if address:
        try:
            ray.init(address=address, **common, **kwargs)
        except Exception as e:  # noqa: BLE001 - turned into one actionable line
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            hint = AUTH_HINT if ("auth" in msg.lower() or "token" in msg.lower() or
                                 type(e).__name__ == "AuthenticationError") else (
                "check the address with `ray status` on the head node (it must be the GCS address "
                "HOST:PORT that `ray start --head` printed), or drop --address to run on a local Ray")
            raise ConnectionError(f"could not join the Ray cluster at {address}: {msg[:200]}; {hint}") from None
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 dashboard_host="127.0.0.1", **common, **kwargs)
    return ray.cluster_resources()


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
