"""Why a broker cannot be reached, in words a technician can act on.

paho retries a failed connect quietly and keeps the cause to itself; when the first connect
does not come, this tries the same thing by hand (TCP, then the TLS handshake with the same
context) and names what failed: nothing listening, a certificate our CA did not sign, a
host name the certificate does not cover, a client certificate the broker asks for.
"""

from __future__ import annotations

import socket
import ssl

from fleet.protocol.broker_url import BrokerAddress


def diagnose(address: BrokerAddress, timeout: float = 5.0) -> str | None:
    """What stops a connection to `address`, or None if TCP and TLS both succeed (the
    trouble, if any, is then in MQTT itself: credentials, protocol version)."""
    where = f"{address.host}:{address.port}"
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except TimeoutError:
        return (
            f"no answer from {where} within {timeout:.0f} s: check the host, and that the "
            f"firewall lets TCP {address.port} through"
        )
    except ConnectionRefusedError:
        return f"nothing listens on {where}: check the port, and that the broker runs"
    except OSError as exc:
        return f"cannot connect to {where}: {exc.strerror or exc}"
    with sock:
        if not address.tls:
            return None
        try:
            context = address.ssl_context()
        except (OSError, ssl.SSLError) as exc:
            return f"cannot load the TLS files named in the broker URL (ca=, cert=, key=): {exc}"
        try:
            with context.wrap_socket(sock, server_hostname=address.host) as tls:
                # TLS 1.3 tells a missing client certificate only after the handshake.
                tls.settimeout(min(timeout, 2.0))
                try:
                    tls.recv(1)
                except (TimeoutError, ssl.SSLWantReadError):
                    return None
                except ssl.SSLError as exc:
                    return _tls_failure(address, exc)
        except ssl.SSLCertVerificationError as exc:
            return _verify_failure(address, exc)
        except ssl.SSLError as exc:
            return _tls_failure(address, exc)
        except OSError as exc:
            return f"the TLS handshake with {where} failed: {exc}"
    return None


def _verify_failure(address: BrokerAddress, exc: ssl.SSLCertVerificationError) -> str:
    why = exc.verify_message or str(exc)
    if "hostname" in why.lower() or "ip address mismatch" in why.lower():
        return (
            f"the broker's certificate does not cover {address.host} ({why}): use the name "
            "the certificate was issued for in the broker URL"
        )
    trusted = f"the CA in ca={address.ca_file}" if address.ca_file else "the system's CAs"
    return (
        f"the broker's certificate is not trusted by {trusted} ({why}): set ca= in the "
        "broker URL to the CA file that signed the broker's certificate"
    )


def _tls_failure(address: BrokerAddress, exc: ssl.SSLError) -> str:
    reason = (exc.reason or str(exc)).lower()
    no_client_cert = "handshake_failure" in reason and not address.cert_file
    if "certificate_required" in reason or no_client_cert:
        return (
            "the broker asks for a client certificate and none was given: add cert= and key= "
            "to the broker URL (the site's certificate and key)"
        )
    if "unknown_ca" in reason or "bad_certificate" in reason or "certificate_unknown" in reason:
        return (
            f"the broker refused our client certificate (cert={address.cert_file}): "
            "it is not signed by a CA the broker trusts"
        )
    return f"the TLS handshake with {address.host}:{address.port} failed: {exc}"
