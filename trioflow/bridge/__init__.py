"""trioflow.bridge: watch and drive a runtime's runs remotely over websockets.

Needs the ``bridge`` extra (trio-websocket). The server::

    port = await nursery.start(partial(trioflow.bridge.serve, runtime, port=0,
                                       tokens={"s3cret": "control"}))

and the client::

    async with trioflow.bridge.connect(f"ws://127.0.0.1:{port}", token="s3cret") as client:
        run_id = await client.start("order", {"id": "o1"})
        async for chunk in client.subscribe(run_id):
            print(chunk.seq, chunk.type)

The wire protocol (one JSON object per text frame) is documented in docs/bridge.md, so a
client can be written in any language. The core never imports this package.
"""

from ._client import BridgeClient as BridgeClient
from ._client import connect as connect
from ._protocol import SUBPROTOCOL as SUBPROTOCOL
from ._server import serve as serve
from ._subscription import BridgeAuthError as BridgeAuthError
from ._subscription import BridgeConnectionError as BridgeConnectionError
from ._subscription import BridgeError as BridgeError
from ._subscription import BridgeSubscription as BridgeSubscription
