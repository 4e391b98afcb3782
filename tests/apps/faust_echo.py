"""A minimal faust app for the smoke test: upper-cases values from one topic onto another.

Configured by environment so the test can run it as a real worker subprocess.
"""

import os

import faust

app = faust.App(
    os.environ["ECHO_APP_ID"],
    broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP']}",
    web_enabled=False,
    store="memory://",
    topic_partitions=2,
)
source = app.topic(os.environ["ECHO_SOURCE"], value_serializer="raw", key_serializer="raw")
sink = app.topic(os.environ["ECHO_SINK"], value_serializer="raw", key_serializer="raw")


@app.agent(source)
async def echo(stream):
    async for key, value in stream.items():
        await sink.send(key=key, value=value.upper())


if __name__ == "__main__":
    app.main()
