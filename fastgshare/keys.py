"""Every Redis key this project uses, built in one place. All start with ``fastgshare:``."""

PREFIX = "fastgshare"


def function(namespace: str, name: str) -> str:
    """Hash field value: the stored FunctionDeployment (JSON) plus metadata, under ``functions``."""
    return f"{PREFIX}:fn:{namespace}:{name}"


def functions_index() -> str:
    """Hash: ``<namespace>/<name>`` -> stored function record (JSON). Desired state of the provider."""
    return f"{PREFIX}:functions"


def secrets(namespace: str) -> str:
    """Hash: secret name -> value (base64 of the raw bytes)."""
    return f"{PREFIX}:secrets:{namespace}"


def images() -> str:
    """Hash: image name -> JSON {handler_dir, template_dir, lang}: the local build registry."""
    return f"{PREFIX}:images"


def replicas(namespace: str, name: str) -> str:
    """Hash: replica id -> JSON record (pid, port, device, cores) of running replica processes."""
    return f"{PREFIX}:replicas:{namespace}:{name}"


def devices() -> str:
    """Hash: device id -> JSON DeviceInfo, written by node agents."""
    return f"{PREFIX}:devices"


def device_heartbeat(device_id: str) -> str:
    """String with expiry: present while the node agent that owns ``device_id`` is alive."""
    return f"{PREFIX}:device:{device_id}:alive"


def arbiter(device_id: str, part: str) -> str:
    """Keys of one device's token arbiter (``part`` names the structure, e.g. ``holders``)."""
    return f"{PREFIX}:arb:{{{device_id}}}:{part}"


def metrics(namespace: str, name: str) -> str:
    """Hash of per-function counters the scheduler reads (requests, busy time)."""
    return f"{PREFIX}:metrics:{namespace}:{name}"


def profile(name: str, device_type: str) -> str:
    """String: the function's profile table (JSON) on one device type."""
    return f"{PREFIX}:profile:{device_type}:{name}"


def profile_detail(name: str, device_type: str) -> str:
    """String: how the profile table was made (JSON: per-point source, busy fraction, error rate, run)."""
    return f"{PREFIX}:profile-detail:{device_type}:{name}"


def profile_status(namespace: str, name: str) -> str:
    """Hash: the profiler's progress on one function (state, measured, planned, current, message)."""
    return f"{PREFIX}:profile-status:{namespace}:{name}"


def device_models(device_id: str) -> str:
    """Hash: model identity -> JSON {bytes, users, files}: the weights a device's store holds."""
    return f"{PREFIX}:device:{device_id}:models"


def device_faults(device_id: str) -> str:
    """Pub/sub channel, and a list of the last faults: fatal device errors reported by the replicas
    of one device (JSON {device, replica, reason, at_s}); every MPS client of a faulted GPU restarts."""
    return f"{PREFIX}:device:{device_id}:faults"


def scheduler_decisions() -> str:
    """Hash: ``<namespace>/<name>`` -> JSON of the scheduler's latest decision for that function
    (replicas by config, reason, target and observed rps, predicted utilisation and p99, at_s)."""
    return f"{PREFIX}:scheduler:decisions"


def local_version() -> str:
    """Integer: bumped on every change to local desired state or to a replica record, so that
    provider workers reload their routing table only when something changed."""
    return f"{PREFIX}:local:version"


def supervisor_wake() -> str:
    """List: pushed to when desired state changes; the node agent's replica supervisor waits on it
    (BLPOP) between passes so that a deploy or a scale is acted on at once."""
    return f"{PREFIX}:local:wake"


def function_uids() -> str:
    """Hash: ``<namespace>/<name>`` (or a shared identity such as ``*gpu-mps``) -> the numeric
    uid its workers run as when the platform runs as root (handed out machine-wide by
    ``fast_manager.function_users.assign_uid``; recorded here for status and tests)."""
    return f"{PREFIX}:local:uids"


def start_failures() -> str:
    """Hash: ``<namespace>/<name>`` -> JSON ``{generation, failures, reason, at_s}``: the replica
    starts of a function's current spec that failed in a row (written by the node agent's
    supervisor, read by the provider's routing to refuse invocations at once)."""
    return f"{PREFIX}:local:start-failures"
