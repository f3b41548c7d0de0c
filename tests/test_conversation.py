"""The vertical slice: a returning user is greeted with what they told the bot last time."""

from __future__ import annotations

from tests.conftest import RunningGateway


async def test_returning_user_is_greeted_with_what_they_said_last_time(gateway: RunningGateway) -> None:
    first = await gateway.connect(user_id="u1")
    await first.ready()
    assert "nice to meet you" in (await first.bot_turn()).lower()
    reply = await first.say("My name is Ada and I sail on weekends")
    assert reply == "I heard: My name is Ada and I sail on weekends"
    await first.ws.close()
    await gateway.settle()

    second = await gateway.connect(user_id="u1")
    greeting = await second.bot_turn()
    assert "Ada" in greeting and "sail" in greeting


async def test_new_user_gets_the_generic_greeting(gateway: RunningGateway) -> None:
    await gateway.tell("My name is Ada and I sail on weekends", user_id="u1")

    other = await gateway.connect(user_id="u2")
    greeting = await other.bot_turn()
    assert "Ada" not in greeting and "sail" not in greeting
    assert "nice to meet you" in greeting.lower()


async def test_a_reply_too_big_to_write_at_once_keeps_its_messages_in_order(gateway: RunningGateway) -> None:
    """RTVI messages go out on the task that produced them when the socket takes them at once; a big
    one waits in the output transport's queue, and the small ones after it (``bot-llm-stopped``) must
    wait behind it rather than overtake it."""
    client = await gateway.connect(user_id="bulky")
    await client.bot_turn()
    big = "0 " + "x" * 100_000

    reply = await client.say(big)

    assert reply == f"I heard: {big}"
