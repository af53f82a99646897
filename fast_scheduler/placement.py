"""Where a replica goes: filters that reject a device with a reason, then scores on 0..100. Pure.

The snapshot of devices is passed in; ``place`` never mutates it (``Device.with_replica`` returns a
new device). Admission is the arbiter's spatio-temporal rule made checkable: a device's replicas
must be arrangeable in *bands*, each band a horizontal strip of the device's SMs as tall as its
widest member, whose members take turns (quota requests in a band sum to <= 1), while the bands run
side by side (their heights sum to <= 100 % of the SMs). Such an arrangement is a schedule that
gives every replica its request without the SM shares of concurrent holders ever exceeding 100;
"all replicas at once" (SM sum <= 100) and "pure time-sharing" (quota sum <= 1) are its two
extremes. The device keeps its bands as the witness, updated incrementally.

Memory counts each model's weights once per device (model sharing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from fast_scheduler.choices import STANDBY_MAX_REQUEST, ShareConfig, is_standby_quota

EPS = 1e-9


@dataclass(frozen=True)
class ReplicaRequest:
    """A replica to place."""

    replica_id: str
    function: str
    model: str
    sm_pct: int
    quota_request_frac: float
    mem_bytes: int
    """Device memory of the replica including its weights."""
    weight_bytes: int = 0
    """The part of ``mem_bytes`` that replicas of the same model share on one device."""
    quota_limit_frac: float = 1.0
    batch: int = 1
    device_type: str = ""
    """The device type its config was planned for (its table's); it goes only onto devices of that
    type (``fits_device_type``). "": any device."""

    @property
    def area(self) -> float:
        return self.sm_pct / 100 * self.quota_request_frac

    @property
    def config(self) -> ShareConfig:
        return ShareConfig(self.sm_pct, self.quota_request_frac, self.quota_limit_frac, self.batch)

    @property
    def standby(self) -> bool:
        """``choices.is_standby`` of its config."""
        return is_standby_quota(self.quota_request_frac, self.quota_limit_frac)


@dataclass(frozen=True)
class Band:
    height_pct: int
    quota_used_frac: float
    members: tuple[str, ...]


@dataclass(frozen=True)
class Device:
    """One device and what runs on it."""

    device_id: str
    node: str
    mem_bytes: int
    replicas: tuple[ReplicaRequest, ...] = ()
    bands: tuple[Band, ...] = ()
    sm_capacity_pct: int = 100
    stored_models: tuple[tuple[str, int], ...] = ()
    device_type: str = ""
    """Its type (a GPU model's name); "": untyped (takes any request)."""
    """(``fastgshare/model`` identity, weight bytes) the device's model store holds for live users,
    from the node agent's registry (``keys.device_models``); it may hold models of replicas this
    snapshot does not list (another namespace, a profiling shadow)."""

    @cached_property
    def kind(self) -> tuple[int, int, tuple[tuple[str, int], ...], str]:
        """What makes two empty devices interchangeable for placement."""
        return (self.mem_bytes, self.sm_capacity_pct, self.stored_models, self.device_type)

    @cached_property
    def area_used(self) -> float:
        return sum(r.area for r in self.replicas)

    @cached_property
    def height_used_pct(self) -> int:
        return sum(b.height_pct for b in self.bands)

    @cached_property
    def models(self) -> frozenset[str]:
        """Models whose weights are on the device: its replicas' and its store's."""
        return frozenset(r.model for r in self.replicas) | frozenset(m for m, _ in self.stored_models)

    @cached_property
    def mem_used_bytes(self) -> int:
        weights: dict[str, int] = dict(self.stored_models)
        act = 0
        for r in self.replicas:
            act += r.mem_bytes - r.weight_bytes
            weights[r.model] = max(weights.get(r.model, 0), r.weight_bytes)
        return act + sum(weights.values())

    def mem_needed_bytes(self, req: ReplicaRequest) -> int:
        """Extra memory ``req`` takes here: its weights are free when its model is already loaded."""
        return req.mem_bytes - (req.weight_bytes if req.model in self.models else 0)

    def with_replica(self, req: ReplicaRequest) -> Device | None:
        """This device with ``req`` added, or None when no band arrangement admits it."""
        bands = _admit(self.bands, req, self.sm_capacity_pct)
        if bands is None:
            return None
        return replace(self, replicas=self.replicas + (req,), bands=bands)

    def without(self, replica_id: str) -> Device:
        keep = tuple(r for r in self.replicas if r.replica_id != replica_id)
        by_id = {r.replica_id: r for r in keep}
        bands = []
        for b in self.bands:
            members = tuple(m for m in b.members if m != replica_id)
            if members:
                bands.append(
                    Band(
                        max(by_id[m].sm_pct for m in members),
                        sum(by_id[m].quota_request_frac for m in members),
                        members,
                    )
                )
        return replace(self, replicas=keep, bands=tuple(bands))


def _admit(bands: tuple[Band, ...], req: ReplicaRequest, capacity: int) -> tuple[Band, ...] | None:
    """Bands with ``req`` added, choosing (in order): a band tall enough with quota room (tightest
    first), a new band, a shorter band with quota room that may grow (least growth first)."""
    q, h = req.quota_request_frac, req.sm_pct
    used = sum(b.height_pct for b in bands)
    fit = [
        (1 - b.quota_used_frac - q, b.height_pct, i)
        for i, b in enumerate(bands)
        if b.height_pct >= h and b.quota_used_frac + q <= 1 + EPS
    ]
    if fit:
        i = min(fit)[2]
    elif used + h <= capacity:
        return bands + (Band(h, q, (req.replica_id,)),)
    else:
        grow = [
            (h - b.height_pct, i)
            for i, b in enumerate(bands)
            if b.quota_used_frac + q <= 1 + EPS and used + h - b.height_pct <= capacity
        ]
        if not grow:
            return None
        i = min(grow)[1]
    b = bands[i]
    nb = Band(max(b.height_pct, h), b.quota_used_frac + q, b.members + (req.replica_id,))
    return bands[:i] + (nb,) + bands[i + 1 :]


@dataclass(frozen=True)
class Snapshot:
    """The devices the scheduler may use, as it sees them now."""

    devices: tuple[Device, ...]
    _positions: Mapping[str, int] | None = field(default=None, compare=False, repr=False)
    """Index of each device id (shared by the snapshots derived with ``with_device``)."""

    def by_id(self) -> dict[str, Device]:
        return {d.device_id: d for d in self.devices}

    @cached_property
    def positions(self) -> Mapping[str, int]:
        if self._positions is not None:
            return self._positions
        return {d.device_id: i for i, d in enumerate(self.devices)}

    @cached_property
    def candidates(self) -> tuple[int, ...]:
        """Indices of the devices worth trying, in order: every used device, and the first empty
        device of each kind (empty devices of one kind are interchangeable)."""
        out, seen = [], set()
        for i, d in enumerate(self.devices):
            if d.replicas:
                out.append(i)
            elif d.kind not in seen:
                seen.add(d.kind)
                out.append(i)
        return tuple(out)

    def with_device(self, dev: Device) -> Snapshot:
        """This snapshot with ``dev`` in place of the device of the same id. 1,000 devices x hundreds
        of placements per tick: the tuple is sliced, not rebuilt, and the candidates carried over
        when the change is the usual one (a used device stays used, or the first empty device of a
        kind gets its first replica and the next empty one of that kind takes its place)."""
        i = self.positions.get(dev.device_id)
        if i is None:
            return self
        devices = self.devices[:i] + (dev,) + self.devices[i + 1 :]
        new = Snapshot(devices, self.positions)
        c = self.__dict__.get("candidates")
        old = self.devices[i]
        if c is not None and dev.replicas and old.kind == dev.kind:
            if old.replicas:
                new.__dict__["candidates"] = c
            elif i in c:
                nxt = next(
                    (j for j in range(i + 1, len(devices))
                     if not devices[j].replicas and devices[j].kind == old.kind),
                    None,
                )
                new.__dict__["candidates"] = c if nxt is None else tuple(sorted((*c, nxt)))
        return new

    @property
    def used_devices(self) -> int:
        return sum(1 for d in self.devices if d.replicas)


@dataclass(frozen=True)
class Placed:
    device_id: str
    node: str
    score: float
    scores: Mapping[str, float]
    device: Device
    """The device with the replica added (its new bands included)."""


@dataclass(frozen=True)
class Rejection:
    replica_id: str
    reasons: Mapping[str, int]
    """Why devices were refused: reason -> how many devices gave it."""

    @property
    def message(self) -> str:
        parts = ", ".join(f"{n} x {why}" for why, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return f"no device admits {self.replica_id}: {parts or 'no devices'}"


# ---- filters: None when the device passes, else the reason ----------------------------------

Filter = Callable[[ReplicaRequest, Device], str | None]
Score = Callable[[ReplicaRequest, Device, Device], float]


def fits_memory(req: ReplicaRequest, dev: Device) -> str | None:
    if dev.mem_used_bytes + dev.mem_needed_bytes(req) > dev.mem_bytes:
        return "memory"
    return None


def fits_sm_time(req: ReplicaRequest, dev: Device) -> str | None:
    """Necessary for any schedule: guaranteed SM-time (sum of sm x quota) within the device."""
    if dev.area_used + req.area > dev.sm_capacity_pct / 100 + EPS:
        return "SM-time area"
    return None


def fits_admission(req: ReplicaRequest, dev: Device) -> str | None:
    """The arbiter's rule (see the module docstring); its reason says which sum would break."""
    if _admit(dev.bands, req, dev.sm_capacity_pct) is None:
        return "admission: SM sum of bands > 100 or quota sum in a band > 1"
    return None


def fits_device_type(req: ReplicaRequest, dev: Device) -> str | None:
    """A replica planned with one device type's table goes onto that type (a mixed cluster)."""
    if req.device_type and dev.device_type and req.device_type != dev.device_type:
        return "device type"
    return None


DEFAULT_FILTERS: tuple[Filter, ...] = (fits_device_type, fits_memory, fits_sm_time, fits_admission)


def beside_holders(req: ReplicaRequest, dev: Device) -> str | None:
    """A standby replica (``autoscale.is_standby``) goes only where a planned replica runs, into a
    strip that already exists, is tall enough and has its token of quota free: it lives on the
    device's idle time, must never be the reason a device is in use, and never takes SM height a
    planned replica could use."""
    if not req.standby:
        return None
    if not any(not r.standby for r in dev.replicas):
        return "standby: no planned replica on the device"
    q = req.quota_request_frac
    # Only a strip whose free quota is a standby's token, no more (one of planned replicas that
    # left it, ``candidate_points(standby_room=True)``): quota a planned replica could use is theirs.
    if not any(b.height_pct >= req.sm_pct and q - EPS <= 1 - b.quota_used_frac <= STANDBY_MAX_REQUEST + EPS
               for b in dev.bands):
        return "standby: no strip with its token free"
    if dev.mem_used_bytes + dev.mem_needed_bytes(req) > STANDBY_MEM_FRAC * dev.mem_bytes:
        return "standby: memory kept for planned replicas"
    return None


STANDBY_MEM_FRAC = 0.5
"""Standby replicas go only where the device's memory stays under this share with them: the rest
is kept for planned replicas (a standby must not be why a planned one needs another device)."""


def evict_lone_standby(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` without standby replicas on devices where no planned replica runs."""
    for d in snapshot.devices:
        if d.replicas and all(r.standby for r in d.replicas):
            snapshot = snapshot.with_device(replace(d, replicas=(), bands=()))
    return snapshot


# ---- scores on 0..100 ------------------------------------------------------------------------


def most_allocated(req: ReplicaRequest, before: Device, after: Device) -> float:
    """Prefer fuller devices (Kubernetes MostAllocated): mean of SM-time, SM height and memory use."""
    return 100 * (after.area_used + after.height_used_pct / 100 + after.mem_used_bytes / after.mem_bytes) / 3


def model_affinity(req: ReplicaRequest, before: Device, after: Device) -> float:
    """Same model already on the device (a replica of it, or its weights in the device's model
    store): the new replica maps those weights instead of loading its own."""
    return 100.0 if req.model and req.model in before.models else 0.0


DEFAULT_SCORES: tuple[tuple[Score, float], ...] = ((most_allocated, 1.0), (model_affinity, 0.3))


def standby_room(req: ReplicaRequest, before: Device, after: Device) -> float:
    """For a standby: the device's SM-time not guaranteed to anyone (what it may borrow), less for
    each standby of the same function already there (they would borrow the same idle time)."""
    mine = sum(1 for r in before.replicas if r.standby and r.function == req.function)
    return 100 * (1 - after.area_used) / (1 + mine)


def place(
    req: ReplicaRequest,
    snapshot: Snapshot,
    filters: Sequence[Filter] = DEFAULT_FILTERS,
    scores: Sequence[tuple[Score, float]] = DEFAULT_SCORES,
    refusers: list[int] | None = None,
) -> Placed | Rejection:
    """The best device for ``req``: every filter passes, highest weighted score, ties to the lowest id.
    ``refusers``: the indices of the devices that refuse it are appended there."""
    reasons: dict[str, int] = {}
    best: Placed | None = None
    devices = snapshot.devices
    for i in snapshot.candidates:  # used devices, and the first empty device of each kind
        dev = devices[i]
        why = None
        for f in filters:
            why = f(req, dev)
            if why:
                break
        after = None if why else dev.with_replica(req)
        if after is None:
            why = why or "admission"
            reasons[why] = reasons.get(why, 0) + 1
            if refusers is not None:
                refusers.append(i)
            continue
        parts = {s.__name__: s(req, dev, after) for s, _ in scores}
        total = sum(parts[s.__name__] * w for s, w in scores)
        if best is None or total > best.score + EPS:
            best = Placed(dev.device_id, dev.node, total, parts, after)
    return best if best is not None else Rejection(req.replica_id, reasons)


# ---- standby placement that remembers refusals ------------------------------------------------

STANDBY_FILTERS: tuple[Filter, ...] = (*DEFAULT_FILTERS, beside_holders)
STANDBY_SCORES: tuple[tuple[Score, float], ...] = ((standby_room, 1.0),)

STANDBY_RETRY_S = 30.0
"""A refused standby request is tried on every device again after this long even when no device
changed (a safety net: a device's fingerprint covers all that placement reads of it)."""


@dataclass(frozen=True)
class RefusedStandby:
    """The devices that refused a standby request (all of them, or all but those that would take
    it)."""

    at_s: float
    """When it was last tried on every device."""
    devices: Mapping[str, _Seen]
    """Device id -> the device as it refused the request."""


class _Seen:
    """A device as it was seen, with its ``device_fingerprint`` computed when first asked: most
    devices are the very same object the next time (the simulator's snapshots keep unchanged
    devices), and an object is its own fingerprint."""

    __slots__ = ("device", "_fp")

    def __init__(self, device: Device) -> None:
        self.device = device
        self._fp: tuple[object, ...] | None = None

    def fingerprint(self) -> tuple[object, ...]:
        if self._fp is None:
            self._fp = device_fingerprint(self.device)
        return self._fp

    def same_as(self, other: _Seen) -> bool:
        return self.device is other.device or self.fingerprint() == other.fingerprint()


def device_fingerprint(dev: Device) -> tuple[object, ...]:
    """All that placement reads of a device: memory, capacity, stored models, strips (height and
    quota used) and its replicas, as multisets (a tick rebuilds the device from the provider's view
    in another order than the previous tick placed into it; replica ids are left out, since a
    group's replicas are renamed between ticks). Filters and scores are functions of (request,
    device) that read only these, so a device whose fingerprint is the one it had when it refused a
    request refuses it again."""
    return (
        dev.mem_bytes, dev.sm_capacity_pct, tuple(sorted(dev.stored_models)),
        tuple(sorted((b.height_pct, round(b.quota_used_frac, 9)) for b in dev.bands)),
        tuple(sorted((r.function, r.model, r.sm_pct, r.quota_request_frac, r.quota_limit_frac, r.batch,
                      r.mem_bytes, r.weight_bytes) for r in dev.replicas)),
    )


def place_standby(
    req: ReplicaRequest,
    snap: Snapshot,
    refused: dict[ReplicaRequest, RefusedStandby],
    now_s: float,
    retry_s: float = STANDBY_RETRY_S,
    filters: Sequence[Filter] = STANDBY_FILTERS,
) -> tuple[Placed | None, int]:
    """Place a standby ``req`` beside planned replicas, remembering in ``refused`` (updated in place)
    the devices that refused it, so that they are not scanned for it again while they are unchanged.

    A request seen before (same function, config, memory) is tried only on the devices that did
    not refuse it (one took it, or might have) or whose fingerprint changed since they refused it
    (a replica removed, a device added, memory freed, a planned replica added that opens a strip's
    token); when every device refused it and none changed it is not tried at all. Every ``retry_s``
    it is tried on every device again. The devices left out would refuse it, so the result is the
    placement a full scan gives (same device, same ties). ``filters`` (``beside_holders`` among
    them): one ``refused`` dict per set of filters, since refusals are remembered by request only.
    Returns (the placement or None, devices examined)."""
    key = replace(req, replica_id="")
    memo = refused.get(key)
    # Only the devices place() looks at: the used ones and the first empty one of each kind (the
    # other empty ones are like it; and a standby never goes onto an empty device).
    devices = [snap.devices[i] for i in snap.candidates]
    still: dict[str, _Seen] = {}  # devices that refused it before and are unchanged
    scope, since_s = snap, now_s
    if memo is not None and now_s - memo.at_s < retry_s:
        since_s = memo.at_s
        changed = []
        for d in devices:
            was = memo.devices.get(d.device_id)
            if was is not None and was.device is d:  # the simulator keeps unchanged devices
                still[d.device_id] = was
                continue
            now = _Seen(d)
            if was is not None and was.same_as(now):  # rebuilt as it was (the live loop's ticks)
                still[d.device_id] = now  # fingerprinted, and the object seen next time
            else:
                changed.append(d)
        if not changed:
            return None, 0
        scope = Snapshot(tuple(changed))
    no: list[int] = []
    p = place(req, scope, filters, STANDBY_SCORES, no)
    scanned = len(scope.candidates)
    for i in no:
        d = scope.devices[i]
        still[d.device_id] = _Seen(d)
    if still:
        refused[key] = RefusedStandby(since_s, still)
    else:
        refused.pop(key, None)
    return (None if isinstance(p, Rejection) else p), scanned


# ---- re-pack planning ------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    replica_id: str
    from_device: str
    to_device: str


@dataclass(frozen=True)
class RepackPlan:
    """Moves that empty ``freed`` devices. Apply make-before-break: start each replica at its
    destination, switch traffic, then stop the source, so no request is dropped."""

    moves: tuple[Move, ...]
    freed: tuple[str, ...]
    snapshot: Snapshot
    """The snapshot after the moves."""


def wasted_devices(snapshot: Snapshot) -> int:
    """Used devices beyond what their SM-time and memory would need if perfectly packed."""
    used = [d for d in snapshot.devices if d.replicas]
    if not used:
        return 0
    area = sum(d.area_used for d in used)
    mem = max(sum(d.mem_used_bytes / d.mem_bytes for d in used), 0.0)
    return len(used) - max(1, int(-(-max(area, mem) // 1)))


def plan_repack(snapshot: Snapshot, max_moves: int = 64, pinned: frozenset[str] = frozenset()) -> RepackPlan:
    """Evacuate the emptiest used devices into the others while some whole device is wasted.

    A device is evacuated only if all its replicas find a place elsewhere (placed with ``place``
    on the remaining devices); otherwise it is left as it was. ``pinned`` devices are never
    evacuated but still take replicas (the live loop's: a device with a replica that cannot move,
    such as a base replica the provider placed, which is often the emptiest one).
    """
    snap = snapshot
    moves: list[Move] = []
    freed: list[str] = []
    tried: set[str] = set(pinned)
    while wasted_devices(snap) > 0 and len(moves) < max_moves:
        used = sorted(
            (d for d in snap.devices if d.replicas and d.device_id not in tried),
            key=lambda d: (d.area_used, d.mem_used_bytes, d.device_id),
        )
        if not used:
            break
        src = used[0]
        tried.add(src.device_id)
        others = Snapshot(tuple(d for d in snap.devices if d.device_id != src.device_id and d.replicas))
        trial, trial_moves = others, []
        for r in sorted(src.replicas, key=lambda r: -r.area):
            p = place(r, trial)
            if isinstance(p, Rejection):
                break
            trial = trial.with_device(p.device)
            trial_moves.append(Move(r.replica_id, src.device_id, p.device_id))
        else:
            if len(moves) + len(trial_moves) > max_moves:
                break
            placed = trial.by_id()
            empty = replace(src, replicas=(), bands=(), stored_models=())
            snap = Snapshot(
                tuple(
                    empty if d.device_id == src.device_id else placed.get(d.device_id, d)
                    for d in snap.devices
                )
            )
            moves.extend(trial_moves)
            freed.append(src.device_id)
    return RepackPlan(tuple(moves), tuple(freed), snap)
