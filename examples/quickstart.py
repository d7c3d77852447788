"""Connect, subscribe, publish, receive, print.

Against AWS IoT Core:

    python examples/quickstart.py --endpoint abc123-ats.iot.us-west-2.amazonaws.com \
        --cert device.pem.crt --key private.pem.key

Against a local broker (what ``make demo`` does) add ``--port`` and ``--ca``.
"""

from __future__ import annotations

import argparse
import asyncio

import awsiot_rs


async def main(args: argparse.Namespace) -> None:
    client = awsiot_rs.Client(
        args.endpoint,
        port=args.port,
        client_id=args.client_id,
        auth=awsiot_rs.MtlsAuth(args.cert, args.key),
        ca=args.ca,
    )
    async with client:
        print(f"connected to {args.endpoint} as {client.client_id}")
        sub = await client.subscribe("Sensor/+/room1", qos=1)
        await client.publish("Sensor/moisture/room1", {"temp": 10}, qos=1)
        async for msg in sub:
            print(f"received on {msg.topic}: {msg.json()}")
            break
        print("stats:", client.stats())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True, help="AWS IoT data endpoint (or a local host name)")
    p.add_argument("--port", type=int, default=None, help="default 8883")
    p.add_argument("--client-id", default="quickstart")
    p.add_argument("--cert", required=True, help="device certificate (PEM)")
    p.add_argument("--key", required=True, help="private key (PEM)")
    p.add_argument("--ca", default=None, help="CA file; default: Amazon Root CA 1 and 3 + system roots")
    asyncio.run(asyncio.wait_for(main(p.parse_args()), 30))
