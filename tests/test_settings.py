"""Settings validation: every wrong value is named with its key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from node.errors import ConfigError
from node.settings import (
    DicomDestination,
    FolderDestination,
    RangeMatch,
    RegexMatch,
    config_path,
    load_settings,
    parse_settings,
)
from pipelines.registry import default_registry

BASE: dict[str, Any] = {
    "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}],
    "rules": [
        {
            "name": "ct",
            "pipeline": "ct-denoise",
            "destinations": ["pacs"],
            "match": {"Modality": "CT"},
        }
    ],
}


def error_for(change: Any) -> str:
    data = copy.deepcopy(BASE)
    change(data)
    with pytest.raises(ConfigError) as info:
        parse_settings(data, registry=default_registry())
    return str(info.value)


def test_shipped_settings_file_is_valid() -> None:
    settings = load_settings(Path("settings.toml"), default_registry())
    assert settings.node.ae_title == "RADNODE"
    assert settings.node.port == 11112
    assert settings.completion.quiet_seconds == 5
    assert [r.pipeline for r in settings.rules] == ["ct-denoise", "mr-accel"]
    assert settings.node.data_dir.is_absolute()


def test_match_forms_are_typed() -> None:
    data = copy.deepcopy(BASE)
    data["rules"][0]["match"] = {
        "Modality": ["CT", "PT"],
        "SeriesDescription": {"regex": "(?i)low ?dose"},
        "CTDIvol": {"max": 5},
        "SliceThickness": 2.5,
    }
    data["destinations"].append({"type": "folder", "name": "share", "path": "/srv/out"})
    settings = parse_settings(data, registry=default_registry())
    match = settings.rules[0].match
    assert isinstance(match["SeriesDescription"], RegexMatch)
    assert isinstance(match["CTDIvol"], RangeMatch) and match["CTDIvol"].max == 5
    assert isinstance(settings.destinations[0], DicomDestination)
    assert isinstance(settings.destinations[1], FolderDestination)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["destinations"][0].update(port=70000), "destinations[0].port = 70000"),
        (lambda d: d["destinations"][0].update(port=0), "destinations[0].port = 0"),
        (
            lambda d: d["rules"][0].update(pipeline="ct-denoize"),
            "rules[0].pipeline = 'ct-denoize': Unknown pipeline 'ct-denoize'; known: ct-denoise, "
            "mr-accel. Did you mean 'ct-denoise'?",
        ),
        (
            lambda d: d["rules"][0].update(destinations=["pac"]),
            "rules[0].destinations[0] = 'pac': Unknown destination 'pac'",
        ),
        (
            lambda d: d["rules"][0]["match"].update(SeriesDescription={"regex": "(low"}),
            "rules[0].match.SeriesDescription = {'regex': '(low'}: not a valid regular expression",
        ),
        (
            lambda d: d["rules"][0]["match"].update(CTDIvol={"min": 9, "max": 5}),
            "rules[0].match.CTDIvol = {'min': 9, 'max': 5}: min 9.0 is greater than max 5.0",
        ),
        (
            lambda d: d["rules"][0]["match"].update(Modalty="CT"),
            "rules[0].match.Modalty = 'CT': 'Modalty' is not a DICOM keyword",
        ),
        (
            lambda d: d.update(node={"ae_title": "A_TITLE_FAR_TOO_LONG"}),
            "node.ae_title = 'A_TITLE_FAR_TOO_LONG'",
        ),
        (lambda d: d.update(node={"prot": 1}), "node.prot: unknown key"),
        (lambda d: d.update(node={"database_url": "mysql://x"}), "node.database_url = 'mysql://x'"),
        (lambda d: d.update(node={"database_url": "sqlite://"}), "in-memory database"),
        (lambda d: d.update(completion={"quiet_seconds": 0}), "completion.quiet_seconds = 0"),
        (lambda d: d["destinations"][0].update(type="ftp"), "destinations[0]"),
        (
            lambda d: d["destinations"].append(dict(d["destinations"][0])),
            "destinations[1].name = 'pacs': duplicate destination name",
        ),
        (lambda d: d["rules"][0].update(output="jpeg"), "rules[0].output = 'jpeg'"),
        (
            lambda d: d["rules"][0].update(params={"methd": "model"}),
            "rules[0].params (ct): Unknown ct-denoise parameter 'methd'; known: method, weights, "
            "weights_sha256, device, backend, batch_size. Did you mean 'method'?",
        ),
        (
            lambda d: d["rules"][0].update(params={"batch_size": 0}),
            "rules[0].params (ct): ct-denoise batch_size must be at least 1. Found 0.",
        ),
        (
            lambda d: d["rules"][0].update(pipeline="mr-accel", params={"phase_coverage": 2}),
            "rules[0].params (ct): mr-accel: 'phase_coverage'",
        ),
        (
            lambda d: d.update(node={"uid_root": "1.2.x."}),
            "node.uid_root = '1.2.x.': '1.2.x.' is not a UID root",
        ),
    ],
)
def test_errors_name_key_and_value(change: Any, expected: str) -> None:
    assert expected in error_for(change)


def test_config_path_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADNODE_CONFIG", str(tmp_path / "site.toml"))
    assert config_path() == tmp_path / "site.toml"
    assert config_path("explicit.toml") == Path("explicit.toml")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nport = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_settings(bad)


def test_relative_paths_follow_the_settings_file(tmp_path: Path) -> None:
    cfg = tmp_path / "site" / "settings.toml"
    cfg.parent.mkdir()
    cfg.write_text('[node]\ndata_dir = "state"\ndatabase_url = "sqlite:///state/r.db"\n')
    settings = load_settings(cfg)
    assert settings.node.data_dir == cfg.parent / "state"
    assert settings.node.database_url == f"sqlite:///{cfg.parent / 'state' / 'r.db'}"


def test_weights_a_rule_names_are_verified_at_start_up(tmp_path: Path) -> None:
    weights = tmp_path / "site-model.pt"
    weights.write_bytes(b"not the pinned file")
    pinned = "0" * 64

    def site_weights(d: dict[str, Any]) -> None:
        d["rules"][0]["params"] = {"weights": str(weights), "weights_sha256": pinned}

    message = error_for(site_weights)
    assert "rules[0].params (ct):" in message
    assert f"expected {pinned}; refusing to load it" in message

    def missing(d: dict[str, Any]) -> None:
        d["rules"][0]["params"] = {"weights": str(tmp_path / "gone.pt"), "weights_sha256": pinned}

    assert "gone.pt' does not exist" in error_for(missing)
    # The classical method loads no weights: nothing to verify.
    data = copy.deepcopy(BASE)
    data["rules"][0]["params"] = {"method": "classical"}
    assert parse_settings(data, registry=default_registry()).rules[0].params == {
        "method": "classical"
    }


def test_site_weights_are_found_beside_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.base import sha256_file
    from pipelines.ct_denoise.inference import shipped_weights

    site = tmp_path / "site"
    (site / "models").mkdir(parents=True)
    weights = site / "models" / "ct.pt"
    weights.write_bytes(shipped_weights()[0].read_bytes())
    cfg = site / "settings.toml"
    cfg.write_text(
        '[[destinations]]\nname = "pacs"\nae_title = "X"\nhost = "127.0.0.1"\nport = 4242\n\n'
        '[[rules]]\nname = "ct"\npipeline = "ct-denoise"\ndestinations = ["pacs"]\n'
        'match = {Modality = "CT"}\n'
        f'params = {{weights = "models/ct.pt", weights_sha256 = "{sha256_file(weights)}"}}\n'
    )
    monkeypatch.chdir(tmp_path)  # not the settings file's folder
    settings = load_settings(cfg, default_registry())
    assert settings.rules[0].params["weights"] == str(weights)


def test_a_receive_only_node_does_not_need_the_weights(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["rules"][0]["params"] = {
        "weights": str(tmp_path / "elsewhere.pt"),
        "weights_sha256": "0" * 64,
    }
    data["node"] = {"workers": 0}
    # No pipeline runs here: the weights are another replica's business ...
    assert parse_settings(data, registry=default_registry()).node.workers == 0
    # ... but the parameters are still checked.
    data["rules"][0]["params"]["batch_size"] = 0
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        parse_settings(data, registry=default_registry())
    data["node"] = {"workers": 1}
    del data["rules"][0]["params"]["batch_size"]
    with pytest.raises(ConfigError, match=r"elsewhere\.pt' does not exist"):
        parse_settings(data, registry=default_registry())


def test_check_command_validates_without_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli import main

    assert main(["check", "--config", "settings.toml"]) == 0
    out = capsys.readouterr().out
    assert "settings.toml: valid" in out and "low-dose-ct (ct-denoise)" in out
    bad = tmp_path / "site.toml"
    bad.write_text(
        '[[destinations]]\nname = "pacs"\nae_title = "X"\nhost = "127.0.0.1"\nport = 4242\n\n'
        '[[rules]]\nname = "ct"\npipeline = "ct-denoise"\ndestinations = ["pacs"]\n'
        'match = {Modality = "CT"}\nparams = {batch_size = 0}\n'
    )
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "site.toml: rules[0].params (ct): ct-denoise batch_size must be at least 1" in err
    # A valid file is only read: no data folder, index or keys appear beside it.
    bad.write_text(bad.read_text().replace("params = {batch_size = 0}", ""))
    assert main(["check", "--config", str(bad)]) == 0
    assert f"data in {tmp_path / 'var'}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.toml"]


def test_check_command_reads_the_signing_and_tls_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli import main

    base = '[[destinations]]\nname = "pacs"\nae_title = "X"\nhost = "127.0.0.1"\nport = 4242\n'
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        '[node]\nsigning_key = "keys/site-key.pem"\nsigning_cert = "keys/site-cert.pem"\n\n' + base
    )
    assert main(["check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "node.signing_key / node.signing_cert:" in err and "site-key.pem" in err
    cfg.write_text(
        '[node]\nport = 11112\n[node.tls]\nport = 2762\ncert = "tls/node.crt"\n'
        'key = "tls/node.key"\n\n' + base
    )
    assert main(["check", "--config", str(cfg)]) == 2
    assert "cannot load TLS certificate" in capsys.readouterr().err
    # A managed certificate without its key would stop serve: check says so.
    (tmp_path / "var" / "keys").mkdir(parents=True)
    (tmp_path / "var" / "keys" / "signing-cert.pem").write_text("-")
    cfg.write_text(base)
    assert main(["check", "--config", str(cfg)]) == 2
    assert "signing-key.pem is missing" in capsys.readouterr().err
