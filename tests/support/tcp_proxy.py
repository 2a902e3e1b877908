"""A TCP proxy that can make every open connection die the way a vanished server's does.

After `drop_open_connections()`, each connection opened before it is reset (RST) when its client
next sends anything: the client's socket looked alive until then, as after a Redis failover or a
server whose host went away without closing its connections. Connections opened afterwards are
forwarded as usual.
"""

from __future__ import annotations

import socket
import struct
import threading

from tests.support.procs import free_port


class DroppingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.generation = 0
        self.resets = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def drop_open_connections(self) -> None:
        with self._lock:
            self.generation += 1

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            born = self.generation
            threading.Thread(target=self._forward, args=(client, upstream, born),
                             daemon=True).start()
            threading.Thread(target=self._backward, args=(upstream, client), daemon=True).start()

    def _forward(self, client: socket.socket, upstream: socket.socket, born: int) -> None:
        try:
            while data := client.recv(65536):
                if born != self.generation:
                    with self._lock:
                        self.resets += 1
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                upstream.sendall(data)
        except OSError:
            pass
        client.close()
        upstream.close()

    @staticmethod
    def _backward(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
