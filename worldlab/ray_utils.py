"""Ray helpers: one place that starts or joins Ray, with the dashboard kept on loopback and
errors that say how to fix a failed ``--address``."""

from __future__ import annotations

import os
from typing import Any

AUTH_HINT = ("if the cluster uses token authentication (Ray 2.60 turns it on for `ray start --head` "
             "where a token exists), export RAY_AUTH_MODE=token and the head's token as RAY_AUTH_TOKEN "
             "(or the file ~/.ray/auth_token / RAY_AUTH_TOKEN_PATH) before joining; else check the "
             "address with `ray status` on the head")


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
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # one clear line instead of retry warnings
        try:
            ray.init(address=address, **common, **kwargs)
            from worldlab.interrupt import reinstall

            reinstall()
        except Exception as e:  # noqa: BLE001 - turned into one actionable line
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            auth_error = "auth" in msg.lower() or "token" in msg.lower() or type(e).__name__ == "AuthenticationError"
            hint = AUTH_HINT if (auth_error or not has_auth_token()) else (
                "check the address with `ray status` on the head node (it must be the GCS address "
                "HOST:PORT that `ray start --head` printed) and that this machine holds the head's "
                "token (RAY_AUTH_TOKEN), or drop --address to run on a local Ray")
            raise ConnectionError(f"could not join the Ray cluster at {address}: {msg[:200]}; {hint}") from None
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 dashboard_host="127.0.0.1", **common, **kwargs)
    from worldlab.interrupt import reinstall

    reinstall()  # Ray's driver installs its own SIGTERM handler: a quiet interrupt stays in charge
    return ray.cluster_resources()


def has_auth_token() -> bool:
    """Whether this process would present a Ray auth token (env var, token path or ~/.ray/auth_token)."""
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()
