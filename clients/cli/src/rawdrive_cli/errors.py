"""Errors the CLI shows as one line that says what to do."""

from __future__ import annotations


class CliError(Exception):
    """Stops the command: printed as `rawdrive: <message>`, exit status 2."""


class GatewayProblem(Exception):
    """The gateway refused one request (RFC 9457 problem): it concerns one file or one asset."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} ({code}, HTTP {status})" if code else f"{detail} (HTTP {status})")
        self.status = status
        self.code = code
        self.detail = detail


def bad_token(detail: str) -> CliError:
    return CliError(
        f"the gateway refused the token ({detail}); get a new one with `rawdrive token` "
        "(dev stack) or set RAWDRIVE_TOKEN / --token"
    )


def unreachable(url: str, error: BaseException) -> CliError:
    reason = str(error) or type(error).__name__
    return CliError(
        f"cannot reach the gateway at {url} ({reason}); start the dev stack with `make dev` "
        "or point RAWDRIVE_PUBLIC_URL / --gateway at a running gateway"
    )
