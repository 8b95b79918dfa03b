"""A local SMTP-over-TLS server that prints every email it receives: try alerts without a mail account.

python tools/smtp_sink.py [--port 8465] [--ca-file smtp-sink-ca.pem]   (or `make smtp-sink`)

It speaks implicit TLS, as Ping Listener does, on 127.0.0.1 only, with a certificate from its own CA:
made up at the first start, written to --ca-file (the certificate: point the service's SSL_CERT_FILE at
it) and --ca-file with `.key` added (its private key, readable by you alone), and read back from those
two files at every later start, so a service that trusts the sink goes on trusting it across restarts.
Delete both files to get a new CA.
It accepts any login (or none) and every message, and writes each one to stdout. Needs aiosmtpd and
trustme (requirements-dev.txt).
"""

import argparse
import asyncio
import email
import email.policy
import logging
import os
import ssl
import sys
import warnings

import trustme
from aiosmtpd.smtp import SMTP, AuthResult

HOST = "127.0.0.1"


class PrintingHandler:
    """aiosmtpd handler: accepts every message and prints it to `out`."""

    def __init__(self, out=sys.stdout):
        self._out = out

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        print(f"--- email from {envelope.mail_from} to {', '.join(envelope.rcpt_tos)}", file=self._out)
        for header in ("From", "To", "Subject", "Date", "Message-ID"):
            print(f"{header}: {message[header]}", file=self._out)
        print(file=self._out)
        print(message.get_content().rstrip("\n"), file=self._out)
        print("---", file=self._out, flush=True)
        return "250 Message accepted"


def _accept_any_login(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=True)


def load_or_make_ca(ca_file):
    """The sink's CA: read from `ca_file` and its key file (`ca_file` + ".key") if both exist, else made up
    and written to them (the key created readable by its owner alone)."""
    key_file = f"{ca_file}.key"
    if os.path.exists(ca_file) and os.path.exists(key_file):
        with open(ca_file, "rb") as cert, open(key_file, "rb") as key:
            return trustme.CA.from_pem(cert.read(), key.read())
    ca = trustme.CA()
    # The key first: a certificate without its key would be made up again at the next start.
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as key:
        key.write(ca.private_key_pem.bytes())
    ca.cert_pem.write_to_path(ca_file)
    return ca


def tls_context(ca_file):
    """A server TLS context for 127.0.0.1 and localhost, signed by the sink's CA (load_or_make_ca)."""
    ca = load_or_make_ca(ca_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(context)
    return context


async def serve(port, ca_file, out=sys.stdout):
    """Listen on 127.0.0.1:`port` (0: one the OS chooses) until cancelled; print the listening line first."""
    loop = asyncio.get_running_loop()

    def session():
        # aiosmtpd counts only STARTTLS as TLS; this connection is TLS from its first byte, so AUTH over it
        # is safe. LOGIN is left out: aiosmtpd mishandles smtplib's fallback to it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SMTP(
                PrintingHandler(out),
                hostname="smtp-sink.localhost",
                authenticator=_accept_any_login,
                auth_require_tls=False,
                auth_exclude_mechanism=["LOGIN"],
                loop=loop,
            )

    server = await loop.create_server(session, HOST, port, ssl=tls_context(ca_file))
    bound = server.sockets[0].getsockname()[1]
    print(
        f"SMTP sink listening on {HOST}:{bound} (implicit TLS); it trusts any login and prints every email.\n"
        f"Its CA is {ca_file}. In another terminal:\n"
        f"  export SMTP_HOST={HOST} SMTP_PORT={bound} SMTP_LOGIN=me@example.com SMTP_PASSWORD=any"
        f" SSL_CERT_FILE={ca_file}\n"
        f"  make test-email TO=you@example.com",
        file=out,
        flush=True,
    )
    async with server:
        await server.serve_forever()


def main(argv=None):
    """Run the sink until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8465, help="port on 127.0.0.1 (default 8465; 0: any)")
    parser.add_argument(
        "--ca-file", default="smtp-sink-ca.pem", help="its CA certificate (kept, with its key in CA_FILE.key)"
    )
    args = parser.parse_args(argv)
    # aiosmtpd warns about its own deprecated attributes on every login.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    try:
        asyncio.run(serve(args.port, args.ca_file))
    except KeyboardInterrupt:
        pass
    except OSError as error:
        print(f"cannot listen on {HOST}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
