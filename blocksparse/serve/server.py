"""Run the app on uvicorn, with a graceful SIGTERM.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections, answers the
requests it has (the batcher keeps running until they are done), closes
idle connections, then runs the app's shutdown, which drains the queue.
``/health`` answers 503 from the signal on, so a load balancer stops
sending work.  The process then exits with status 0.
"""
import signal
import socket

__all__ = ["bind", "run"]


def bind(host, port):
    """A listening TCP socket on (host, port); port 0 picks a free port.

    Parameters
    ----------
    host : str
        An address or name, IPv4 or IPv6 (``"127.0.0.1"``, ``"::1"``, ``"0.0.0.0"``).
    port : int

    Returns
    -------
    socket.socket
        Bound, with SO_REUSEADDR; ``sock.getsockname()[1]`` is the port.

    Raises
    ------
    OSError
        If the address cannot be bound (in use, not local).
    """
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run(app, sock, *, log_level="warning", access_log=False, graceful_timeout=30.0):
    """Serve `app` on `sock` until SIGTERM or SIGINT, then drain and return.

    Parameters
    ----------
    app : starlette.applications.Starlette
        From :func:`blocksparse.serve.create_app`.
    sock : socket.socket
        From :func:`bind`.
    log_level : str, optional
        uvicorn's log level.
    access_log : bool, optional
        Log one line per request (costs time at high request rates).
    graceful_timeout : float or None, optional
        Seconds to wait for open requests after the signal before
        cancelling them (None: wait as long as it takes).
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=graceful_timeout, lifespan="on")
    # uvicorn re-raises the signal it caught once it has shut down; a no-op
    # handler for SIGTERM makes a drained shutdown end with status 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
