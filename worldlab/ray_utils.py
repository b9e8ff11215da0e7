"""Ray helpers: one place that starts or joins Ray, a local Ray on loopback only, and errors that
say how to fix a failed ``--address``."""

from __future__ import annotations

import os
from typing import Any

AUTH_HINT = ("if the cluster uses token authentication (Ray 2.60 turns it on for `ray start --head` "
             "where a token exists), export RAY_AUTH_MODE=token and the head's token as RAY_AUTH_TOKEN "
             "(or the file ~/.ray/auth_token / RAY_AUTH_TOKEN_PATH) before joining; else check the "
             "address with `ray status` on the head")

LOCAL_WORKER_NICENESS = 0
"""Niceness added to a local Ray's worker processes (Ray's own default is 15)."""

LOCAL_START_TRIES = 2
"""How many times a local Ray is started before giving up with one line (Ray waits 30 s for its node)."""


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
             quiet: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Start a local Ray (no ``address``) or join a running cluster (``address="HOST:PORT"`` or "auto").

    Reuses a Ray session that is already initialised in this process. A local Ray listens on
    127.0.0.1 only (:func:`local_ray_on_loopback`) and starts with no dashboard (one, if started,
    is bound to 127.0.0.1); a cluster binds where its nodes were started (``ray start
    --node-ip-address``). Returns the cluster's resources. A failed join, or a local Ray that did
    not start in :data:`LOCAL_START_TRIES` tries, raises ``ConnectionError`` with one line that
    names the fix.

    A local Ray's workers run at the driver's priority (:data:`LOCAL_WORKER_NICENESS`): Ray
    renices its workers to 15, and this run's workers are its work (collection, evaluation, real
    fitness), so beside any other busy process (a second run, a training job) they crawled at a
    tenth of a core. ``_system_config`` passed here still wins.
    """
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    common: dict[str, Any] = {"log_to_driver": not quiet, "configure_logging": True,
                              "logging_level": "ERROR" if quiet else "INFO"}
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    local_ray_on_loopback(not address)
    if address:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # one clear line instead of retry warnings
        try:
            ray.init(address=address, **common, **kwargs)
            from worldlab.interrupt import reinstall

            reinstall()
        except Exception as e:  # noqa: BLE001 - turned into one actionable line
            msg = _first_line(e)
            auth_error = "auth" in msg.lower() or "token" in msg.lower() or type(e).__name__ == "AuthenticationError"
            hint = AUTH_HINT if (auth_error or not has_auth_token()) else (
                "check the address with `ray status` on the head node (it must be the GCS address "
                "HOST:PORT that `ray start --head` printed) and that this machine holds the head's "
                "token (RAY_AUTH_TOKEN), or drop --address to run on a local Ray")
            raise ConnectionError(f"could not join the Ray cluster at {address}: {msg[:200]}; {hint}") from None
    else:
        system = {"worker_niceness": LOCAL_WORKER_NICENESS, **kwargs.pop("_system_config", {})}
        for attempt in range(LOCAL_START_TRIES):
            try:
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                         dashboard_host="127.0.0.1", _system_config=system, **common, **kwargs)
                break
            except Exception as e:  # noqa: BLE001 - a busy machine: once more, then one actionable line
                ray.shutdown()  # what the failed start left (its GCS, a half-started raylet)
                if attempt + 1 < LOCAL_START_TRIES:
                    continue
                raise ConnectionError(
                    f"a local Ray did not start ({LOCAL_START_TRIES} tries): {_first_line(e)[:160]}; Ray gives its node 30 s, "
                    f"which a machine busy with other jobs can exceed: run again when it is less loaded (a run "
                    f"folder goes on where it stopped with --resume), or run without Ray: --backend processes"
                ) from None
    from worldlab.interrupt import reinstall

    reinstall()  # Ray's driver installs its own SIGTERM handler: a quiet interrupt stays in charge
    return ray.cluster_resources()


def _first_line(e: BaseException) -> str:
    """An exception's first line (its type's name when it says nothing): Ray's errors run to pages."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def local_ray_on_loopback(on: bool) -> None:
    """Make the next Ray this process starts a single-machine one (``on``), or a Ray that other
    machines may join (the Linux default; before joining a cluster).

    On Linux, Ray 2.60 gives a local node the machine's routable address (``127.0.0.1`` passed as
    the node IP is resolved to it on purpose) and its GCS, raylet, workers and agents listen
    there or on every interface. A single-machine Ray (Ray's own default on macOS and Windows, its
    switch ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``) takes the loopback as the node address instead,
    and then every one of its servers binds to 127.0.0.1: nothing of a local run is reachable from
    the network. Only this process's copy of the switch is set (the node address is decided here
    and handed to the processes Ray starts); the environment is left alone, so a ``ray start`` run
    from this process (a test's cluster, a user's script) still makes a joinable node.
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False if on else ray_constants.env_bool(
        ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, not ray_constants.IS_WINDOWS_OR_OSX)


def has_auth_token() -> bool:
    """Whether this process would present a Ray auth token (env var, token path or ~/.ray/auth_token)."""
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()
