"""Raw-socket servers on 127.0.0.1 that follow a script, for clients' handling of odd answers."""

import socket
import ssl
import threading


class ScriptedServer:
    """Accepts connections and runs `script(connection, number)` for each, in its own thread."""

    def __init__(self, script, ssl_context: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.listener.getsockname()[1]}"
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        try:
            if self.ssl_context:
                sock = self.ssl_context.wrap_socket(sock, server_side=True)
            self.script(Peer(sock, self), number)
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def close(self) -> None:
        self.listener.close()


class Peer:
    def __init__(self, sock: socket.socket, server: ScriptedServer) -> None:
        self.sock, self.server, self.pending = sock, server, b""

    def read_request(self) -> bytes | None:
        while b"\r\n\r\n" not in self.pending:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.pending += data
        head, _, rest = self.pending.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(rest) < length:
            rest += self.sock.recv(65536)
        request, self.pending = head + b"\r\n\r\n" + rest[:length], rest[length:]
        self.server.requests.append(request)
        return request

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def ok(body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
