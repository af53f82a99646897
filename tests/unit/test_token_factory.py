"""The sidecar's token-client seam: which client, and the device constants it is built with."""

from __future__ import annotations

import asyncio

import pytest

from fast_manager.arbiter.model import ArbiterParams
from fast_manager.settings import sidecar_settings_from_env
from fast_manager.token_factory import arbiter_params, make_token_client
from fast_manager.tokens import TokenMode, UnmanagedTokens
from fastgshare.errors import ValidationError


@pytest.mark.parametrize(("env", "mode"), [
    ({}, TokenMode.UNMANAGED),
    ({"REDIS_URL": "redis://127.0.0.1:1/0", "FASTGSHARE_ARBITER": "off"}, TokenMode.UNMANAGED),
    ({"REDIS_URL": "redis://127.0.0.1:1/0"}, TokenMode.SHARED),
    ({"REDIS_URL": "redis://127.0.0.1:1/0", "FASTGSHARE_ARBITER": "on"}, TokenMode.SHARED),
])
def test_redis_url_and_opt_out_pick_the_client(env: dict[str, str], mode: TokenMode) -> None:
    async def build() -> TokenMode:  # inside a loop, as the sidecar does; nothing is sent yet
        client = make_token_client(sidecar_settings_from_env(env))
        got = client.mode
        if not isinstance(client, UnmanagedTokens):
            await client._redis.aclose()  # type: ignore[attr-defined]
        return got

    assert asyncio.run(build()) == mode


def test_bad_opt_out_value_names_the_variable() -> None:
    with pytest.raises(ValidationError, match="FASTGSHARE_ARBITER"):
        sidecar_settings_from_env({"FASTGSHARE_ARBITER": "maybe"})
    with pytest.raises(ValidationError, match="FASTGSHARE_MEM_ENFORCE"):
        sidecar_settings_from_env({"FASTGSHARE_MEM_ENFORCE": "hope"})


def test_device_constants_default_and_overrides() -> None:
    assert arbiter_params(sidecar_settings_from_env({})) == ArbiterParams()
    p = arbiter_params(sidecar_settings_from_env({
        "FASTGSHARE_ARBITER_WINDOW_S": "2.02", "FASTGSHARE_ARBITER_MAX_TOKEN_MS": "250"}))
    assert p.window_us == 2_000_000  # whole buckets
    assert (p.min_token_us, p.max_token_us) == (ArbiterParams().min_token_us, 250_000)
    p = arbiter_params(sidecar_settings_from_env({"FASTGSHARE_ARBITER_MAX_TOKEN_MS": "10"}))
    assert p.min_token_us == p.max_token_us == 10_000
