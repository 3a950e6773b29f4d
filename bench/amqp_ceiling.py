"""The broker's share of P2's ceiling: consume and ack with no other work (own process).

The dispatcher must consume and ack every message as well as send it, so its rate
is bounded by the slower of the raw HTTP loop and this. Two ways to ack:
``single`` acks each message as it is handled; ``batched`` acks with
``multiple=True`` once per 64 messages (or 5 ms), as a dispatcher may when it
acks completions in order.

    python -m bench.amqp_ceiling --url amqp://... --count 20000 --ack single
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aio_pika
import orjson

from postback_core.settings import DEFAULT_RETRY_DELAYS
from postback_core.topology import declare_topology

BATCH = 64


async def consume(url: str, count: int, ack: str, prefetch: int) -> dict[str, Any]:
    connection = await aio_pika.connect(url, timeout=15)
    done = asyncio.Event()
    received = 0
    first = last = 0.0
    pending: list[aio_pika.abc.AbstractIncomingMessage] = []
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        topology = await declare_topology(channel, DEFAULT_RETRY_DELAYS)

        async def flush() -> None:
            if pending:
                newest = pending[-1]
                pending.clear()
                await newest.ack(multiple=True)

        async def flusher() -> None:
            while not done.is_set():
                await asyncio.sleep(0.005)
                await flush()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal received, first, last
            orjson.loads(message.body)  # the dispatcher decodes every body
            received += 1
            now = time.perf_counter()
            if received == 1:
                first = now
            last = now
            if ack == "single":
                await message.ack()
            else:
                pending.append(message)
                if len(pending) >= BATCH:
                    await flush()
            if received >= count:
                await flush()
                done.set()

        task = asyncio.create_task(flusher()) if ack == "batched" else None
        await topology.work_queue.consume(on_message)
        await asyncio.wait_for(done.wait(), 300)
        if task is not None:
            task.cancel()
    finally:
        await connection.close()
    span = (last - first) or 1e-9
    return {
        "ack": ack,
        "prefetch": prefetch,
        "messages": received,
        "rate_per_s": round((received - 1) / span, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ack", choices=("single", "batched"), default="single")
    parser.add_argument("--prefetch", type=int, default=256)
    args = parser.parse_args()

    import uvloop

    result = uvloop.run(consume(args.url, args.count, args.ack, args.prefetch))
    print("AMQPCEILING " + orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
