"""Local DICOM peers for the demo, the benchmark and the tests: Orthanc, dcmtk, the node.

Each peer runs as a real process on a free port on the loopback interface and
is awaited by polling its port, never by sleeping a fixed time.
``TCP_NODELAY=1`` is set for dcmtk and Orthanc (without it they lose about
40 ms per image to delayed ACKs).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class PeerError(RuntimeError):
    """A peer could not be started or did not answer in time."""


def free_port() -> int:
    """A TCP port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0
) -> None:
    """Poll until ``port`` accepts connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PeerError(f"process exited with {proc.returncode} before opening port {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling interval, not a wait for readiness
    raise PeerError(f"nothing listened on port {port} within {timeout:.0f} s")


def tool_env() -> dict[str, str]:
    """Environment for dcmtk and Orthanc processes."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def find_tool(name: str) -> str:
    """The path of a peer program; a clear error naming the package if missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/usr/local/bin")
    if found is None:
        package = {"Orthanc": "orthanc", "dciodvfy": "dicom3tools"}.get(name, "dcmtk")
        raise PeerError(f"{name} not found; install the Debian package {package} (make install)")
    return found


@dataclass
class Process:
    """A started peer process and where it listens."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self, timeout: float = 20.0) -> int:
        """Terminate (SIGTERM, then SIGKILL) and return the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL: a crash, for recovery tests."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def spawn(cmd: Sequence[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with the peers' environment (:func:`tool_env`), output into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env=tool_env(), cwd=cwd
        )


@dataclass
class Orthanc(Process):
    """A real Orthanc PACS with its REST API on ``http_port``."""

    http_port: int = 0
    aet: str = "ORTHANC"

    def rest(self, path: str) -> Any:
        """GET a REST resource as JSON."""
        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=30) as rsp:
            return json.loads(rsp.read())

    def rest_bytes(self, path: str) -> bytes:
        """GET a REST resource as bytes (e.g. a DICOM file)."""
        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=30) as rsp:
            return bytes(rsp.read())

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        """Orthanc resources carrying a DICOM UID (``POST /tools/lookup``)."""
        url = f"http://{LOOPBACK}:{self.http_port}/tools/lookup"
        request = urllib.request.Request(url, data=uid.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as rsp:
            return list(json.loads(rsp.read()))

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """The series Orthanc holds in the study ``study_uid`` (expanded)."""
        studies = [r["ID"] for r in self.lookup(study_uid) if r["Type"] == "Study"]
        if not studies:
            return []
        return list(self.rest(f"/studies/{studies[0]}/series?expand"))

    def instance_file(self, instance_id: str) -> BytesIO:
        """An instance's DICOM file, ready for ``pydicom.dcmread``."""
        return BytesIO(self.rest_bytes(f"/instances/{instance_id}/file"))


def start_orthanc(
    workdir: Path,
    modalities: Mapping[str, tuple[str, int]] | None = None,
    aet: str = "ORTHANC",
    dicom_port: int | None = None,
    http_port: int | None = None,
    overwrite: bool = False,
) -> Orthanc:
    """Start Orthanc with its own storage under ``workdir`` (free ports by default).

    ``overwrite``: a repeated SOP Instance UID replaces the stored instance
    (Orthanc's ``OverwriteInstances``; by default it keeps the first copy).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config = {
        "Name": "radnode-peer",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "StorageCompression": False,
        "Plugins": [],
        "SaveJobs": False,
        "OverwriteInstances": overwrite,
        "DicomModalities": {
            name: [ae_title, LOOPBACK, port]
            for name, (ae_title, port) in (modalities or {}).items()
        },
    }
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    proc = spawn([find_tool("Orthanc"), str(cfg)], log)
    wait_for_port(http_port, proc)
    wait_for_port(dicom_port, proc)
    return Orthanc(proc=proc, port=dicom_port, log=log, http_port=http_port, aet=aet)


def start_storescp(workdir: Path, aet: str = "STORESCP") -> Process:
    """Start dcmtk's storescp writing every received file under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "storescp.log"
    proc = spawn(
        [find_tool("storescp"), "-aet", aet, "-od", str(workdir), "+xa", "-dhl", str(port)], log
    )
    wait_for_port(port, proc)
    return Process(proc=proc, port=port, log=log)


def node_settings_toml(
    workdir: Path,
    port: int,
    http_port: int,
    destinations: Sequence[Mapping[str, Any]],
    rules: Sequence[Mapping[str, Any]],
    quiet_seconds: float = 1.0,
    extra_node: Mapping[str, Any] | None = None,
    extra_tables: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """A settings.toml for a node under ``workdir`` (tests, demo, bench)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(type(v))

    node = {
        "ae_title": "RADNODE",
        "host": LOOPBACK,
        "port": port,
        "http_port": http_port,
        "data_dir": str(workdir / "var"),
        "database_url": f"sqlite:///{workdir / 'var' / 'radnode.db'}",
        **(extra_node or {}),
    }
    lines = ["[node]", *(f"{k} = {value(v)}" for k, v in node.items())]
    lines += ["", "[completion]", f"quiet_seconds = {quiet_seconds}", "sweep_seconds = 0.2"]
    for table, items in (extra_tables or {}).items():
        lines += ["", f"[{table}]", *(f"{k} = {value(v)}" for k, v in items.items())]
    for dest in destinations:
        lines += ["", "[[destinations]]", *(f"{k} = {value(v)}" for k, v in dest.items())]
    for rule in rules:
        lines += ["", "[[rules]]", *(f"{k} = {value(v)}" for k, v in rule.items())]
    return "\n".join(lines) + "\n"


def write_ct_node_settings(
    workdir: Path,
    port: int,
    http_port: int,
    pacs: Orthanc,
    quiet_seconds: float,
    warm_up: bool = True,
) -> Path:
    """settings.toml for a node sending ct-denoise outputs of CT series to ``pacs``.

    ``warm_up = False`` leaves the pipeline to be built at the first job
    (a receive benchmark must not share the cores with its build).
    """
    config = workdir / "settings.toml"
    config.write_text(
        node_settings_toml(
            workdir,
            port,
            http_port,
            [{"name": "pacs", "ae_title": pacs.aet, "host": LOOPBACK, "port": pacs.port}],
            [
                {
                    "name": "low-dose-ct",
                    "pipeline": "ct-denoise",
                    "destinations": ["pacs"],
                    "match": {"Modality": "CT"},
                }
            ],
            quiet_seconds=quiet_seconds,
            extra_node={"warm_up": warm_up},
        )
    )
    return config


def start_node(
    config: Path, log: Path, port: int, http_port: int, timeout: float = 120.0
) -> Process:
    """Start ``radnode serve`` with ``config`` and wait for its DICOM and HTTP ports."""
    cmd = [sys.executable, "-m", "node", "serve", "--config", str(config)]
    proc = spawn(cmd, log)
    wait_for_port(port, proc, timeout)
    if http_port:
        wait_for_port(http_port, proc, timeout)
    return Process(proc=proc, port=port, log=log)


def run_tool(args: Sequence[str], timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk/dicom3tools command with the peer environment; capture output."""
    return subprocess.run(
        [find_tool(args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=timeout,
        check=False,
    )


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate()`` until it returns a truthy value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)  # polling interval for an asynchronous outcome
    raise PeerError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
