"""The shortest path end to end: listen, connect, accept, bytes both ways."""

import arca_control


async def test_listen_connect_accept_roundtrip():
    async with arca_control.open_session() as session:
        listener = await session.listen("127.0.0.1", 0)
        client = await session.connect(*listener.local)
        server = await listener.accept()
        await client.send_all(b"ping")
        assert await server.receive_some() == b"ping"
        await server.send_all(b"pong")
        assert await client.receive_some() == b"pong"
        assert server.peer == client.local
        assert client.peer == server.local == listener.local
