"""Fixtures: real peers (Orthanc, dcmtk, the node itself) on free loopback ports."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from node.peers import (
    LOOPBACK,
    Orthanc,
    Process,
    free_port,
    node_settings_toml,
    start_node,
    start_orthanc,
)


def encode_explicit_le(ds: Dataset) -> bytes:
    """``ds`` encoded as a C-STORE carries it: Explicit VR Little Endian, no file meta."""
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, False
    write_dataset(raw, ds)
    return bytes(raw.getvalue())


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A real Orthanc PACS, empty, on free ports."""
    peer = start_orthanc(tmp_path / "orthanc")
    yield peer
    peer.stop()


@dataclass
class NodeRunner:
    """Starts, kills and restarts a real ``radnode serve`` process."""

    workdir: Path
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: Process | None = None
    starts: int = 0

    @property
    def config(self) -> Path:
        return self.workdir / "settings.toml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "var"

    def configure(
        self,
        destinations: list[Mapping[str, Any]],
        rules: list[Mapping[str, Any]],
        quiet_seconds: float = 1.0,
        extra_node: Mapping[str, Any] | None = None,
        extra_tables: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            node_settings_toml(
                self.workdir,
                self.port,
                self.http_port,
                destinations,
                rules,
                quiet_seconds=quiet_seconds,
                extra_node=extra_node,
                extra_tables=extra_tables,
            )
        )

    def configure_receive_only(self, extra_node: Mapping[str, Any] | None = None) -> None:
        """Settings whose only rule matches nothing: the node receives and indexes only."""
        self.configure(
            [{"name": "pacs", "ae_title": "NOWHERE", "host": LOOPBACK, "port": 9}],
            [ct_rule("never", match={"Modality": "XX"})],
            quiet_seconds=30,
            extra_node=extra_node,
        )

    def start(self) -> Process:
        self.starts += 1
        self.process = start_node(
            self.config, self.workdir / f"node-{self.starts}.log", self.port, self.http_port
        )
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None

    def http_text(self, path: str) -> str:
        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=30) as rsp:
            return str(rsp.read().decode())

    def http(self, path: str) -> Any:
        body = self.http_text(path)
        if path.startswith("/audit"):
            return [json.loads(line) for line in body.splitlines() if line]
        return json.loads(body)

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob("node-*.log"))
        )


@pytest.fixture
def node_runner(tmp_path: Path) -> Iterator[NodeRunner]:
    """A node to configure and start; stopped (and its log shown on failure) at the end."""
    runner = NodeRunner(tmp_path / "node")
    yield runner
    runner.stop()


def ct_rule(name: str = "low-dose-ct", **extra: Any) -> dict[str, Any]:
    """A rule sending CT series through ct-denoise to the destination ``pacs``."""
    rule: dict[str, Any] = {
        "name": name,
        "pipeline": "ct-denoise",
        "destinations": ["pacs"],
        "match": {"Modality": "CT"},
    }
    rule.update(extra)
    return rule


def pacs_destination(orthanc: Orthanc) -> dict[str, Any]:
    """The Orthanc fixture as the destination ``pacs``."""
    return {"name": "pacs", "ae_title": orthanc.aet, "host": LOOPBACK, "port": orthanc.port}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty index: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.db'}"
        return
    import uuid

    import psycopg

    name = f"radnode_test_{uuid.uuid4().hex[:12]}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
